//! The replaced tools' own interfaces. Each tool has one table, written from its README: its
//! flags, environment variables, config keys, endpoints and metric families, and where each
//! lands in devmetrics. The same table parses the tool's command line (the binary started
//! under the tool's name, or `devmetrics compat <tool> …`), prints its `--help` mapping,
//! generates `docs/migrate/<tool>.md`, and drives the conformance tests.

mod copilot_metrics;
mod dora_exporter;
mod github_stats;
mod github_telemetry;
mod spacelift;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::Overrides;

/// One replaced tool's documented interface.
pub struct Tool {
    /// The binary (or image entrypoint) name the persona answers to.
    pub name: &'static str,
    /// What users call it, and where it comes from.
    pub title: &'static str,
    /// Its README in `../shared/seeds/`.
    pub readme: &'static str,
    /// The port it listens on when told nothing.
    pub default_port: u16,
    /// `--help` of the persona, before the mapping tables.
    pub usage: &'static str,
    pub flags: &'static [Mapping],
    pub env: &'static [Mapping],
    pub config_keys: &'static [Mapping],
    pub endpoints: &'static [Endpoint],
    pub families: &'static [Family],
    /// Telemetry events other than metric families (Application Insights custom events).
    pub events: &'static [Event],
    /// What changed on the way, and why (markdown paragraphs for the migration page).
    pub changes: &'static str,
    parse: Parse,
}

/// A tool's command-line reader: its arguments (without the program) and the environment.
type Parse = fn(&[String], &BTreeMap<String, String>) -> Result<Launch, Error>;

/// An old name (flag, variable or key) and where it lands.
pub struct Mapping {
    pub old: &'static str,
    /// The devmetrics key (or flag) it sets; empty when it is accepted and ignored.
    pub new: &'static str,
    pub note: &'static str,
}

pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub responses: &'static [Response],
}

pub struct Response {
    pub status: u16,
    pub when: &'static str,
    pub body: Body,
}

/// `GET /metrics`, which every tool serves.
pub const METRICS: Endpoint = Endpoint {
    method: "GET",
    path: "/metrics",
    responses: &[Response {
        status: 200,
        when: "always",
        body: Body::Exposition,
    }],
};

/// What a documented response body is, as the conformance test checks it.
pub enum Body {
    /// Exactly this text, surrounding white space aside.
    Text(&'static str),
    /// This JSON value, compared as values.
    Json(&'static str),
    /// Text starting with this.
    Prefix(&'static str),
    /// A JSON object holding every key of this object, with the same values.
    JsonHas(&'static str),
    /// A JSON object holding at least these top-level keys.
    JsonKeys(&'static [&'static str]),
    /// A metrics exposition.
    Exposition,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// A documented metric family.
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Served with this name, type and label set.
    Served,
    /// Documented under this name, but the tool itself served the first name (which
    /// dashboards use); devmetrics serves that one. The second says why.
    ServedAs(&'static str, &'static str),
    /// Documented, but produced by a devmetrics source that is not part of this build.
    Pending(&'static str),
    /// Documented, but impossible to produce: the upstream it came from is gone.
    Impossible(&'static str),
}

impl Family {
    /// The name devmetrics serves this family under, if it does.
    pub fn served_name(&self) -> Option<&'static str> {
        match self.status {
            Status::Served => Some(self.name),
            Status::ServedAs(name, _) => Some(name),
            Status::Pending(_) | Status::Impossible(_) => None,
        }
    }
}

/// A documented telemetry event: name, properties and measurements.
pub struct Event {
    pub name: &'static str,
    pub properties: &'static [&'static str],
    pub measurements: &'static [&'static str],
}

/// Every persona, in the order the docs list them.
pub static TOOLS: &[&Tool] = &[
    &spacelift::TOOL,
    &github_stats::TOOL,
    &copilot_metrics::TOOL,
    &github_telemetry::TOOL,
    &dora_exporter::TOOL,
];

/// The tool called `name`.
pub fn tool(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().copied().find(|t| t.name == name)
}

/// What the persona was asked to do.
#[derive(Debug)]
pub enum Launch {
    /// Print this on standard output and exit successfully (help, version).
    Print(String),
    /// Serve with this configuration.
    Serve(Plan),
}

/// The configuration a persona serves with: devmetrics' own loader takes it from here.
#[derive(Debug, Default)]
pub struct Plan {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
    /// The environment the loader reads: the process's, without the variables of the other
    /// replaced tools, so a persona enables just its own source.
    pub env: BTreeMap<String, String>,
    /// Accepted but meaningless settings, each said once at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool}: {message}")]
    Usage { tool: &'static str, message: String },
    #[error(
        "devmetrics compat: {0:?} is not a tool devmetrics speaks for; known: {known}",
        known = TOOLS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
    )]
    Unknown(String),
}

/// Parses `args` (without the program name) as `tool`'s own command line.
pub fn invoke(
    tool_name: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Launch, Error> {
    let t = tool(tool_name).ok_or_else(|| Error::Unknown(tool_name.to_string()))?;
    (t.parse)(args, env)
}

impl Tool {
    /// The environment for this persona: every variable that belongs to another replaced
    /// tool is left out.
    fn own_env(&self, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let others: Vec<&str> = TOOLS
            .iter()
            .filter(|t| t.name != self.name)
            .flat_map(|t| t.env.iter().map(|m| m.old))
            .filter(|v| !self.env.iter().any(|m| m.old == *v))
            .collect();
        env.iter()
            .filter(|(k, _)| !others.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The persona's `--help`: its usage, then where each old flag and variable lands.
    pub fn help(&self) -> String {
        let mut out = String::from(self.usage.trim_end());
        out.push_str("\n\n");
        out.push_str(&self.mapping_text());
        out
    }

    /// The flag and variable mappings as plain text, for `--help`.
    pub fn mapping_text(&self) -> String {
        let mut out = String::new();
        for (title, rows) in [("Flags", self.flags), ("Environment", self.env)] {
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{title} (served by devmetrics; old → devmetrics):");
            let width = rows.iter().map(|m| m.old.len()).max().unwrap_or(0);
            for m in rows {
                let new = if m.new.is_empty() { "(ignored)" } else { m.new };
                let _ = writeln!(out, "  {:width$}  → {new}", m.old);
                if !m.note.is_empty() {
                    let _ = writeln!(out, "  {:width$}    {}", "", m.note);
                }
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "Default port {}. Every devmetrics setting is in `devmetrics config example`; the migration guide is docs/migrate/{}.md.",
            self.default_port, self.name
        );
        out
    }

    /// `docs/migrate/<tool>.md`.
    pub fn migration_page(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Migrating from {}\n", self.title);
        let _ = writeln!(
            out,
            "<!-- Generated from `src/compat/` by `devmetrics docs migrate {0}`; a test fails when it is stale. -->\n",
            self.name
        );
        let _ = writeln!(
            out,
            "Change the image (or put a link named `{0}` to the `devmetrics` binary on the `PATH`) and keep the command: started as `{0}`, or as `devmetrics compat {0} …`, devmetrics reads this tool's own command line, environment and defaults, listens on its port ({1}) and enables just its source. The conformance suite (`tests/it/compat/`) starts the real binary with the README's own commands and checks every row below.\n",
            self.name, self.default_port
        );
        let _ = writeln!(
            out,
            "devmetrics keeps its state in an SQLite file (`storage.path`, default `./data/devmetrics.db`), so the container needs one writable directory: mount a volume (an `emptyDir` is enough for a single replica without history) where `storage.path` points.\n"
        );
        for (title, rows) in [
            ("Flags", self.flags),
            ("Environment variables", self.env),
            ("Configuration keys", self.config_keys),
        ] {
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "## {title}\n");
            out.push_str("| old | devmetrics | notes |\n| --- | --- | --- |\n");
            for m in rows {
                let new = if m.new.is_empty() {
                    "accepted, ignored".to_string()
                } else {
                    format!("`{}`", m.new)
                };
                let _ = writeln!(out, "| `{}` | {new} | {} |", m.old, m.note);
            }
            out.push('\n');
        }
        if !self.endpoints.is_empty() {
            out.push_str("## Endpoints\n\n| method | path | status | when | body |\n| --- | --- | --- | --- | --- |\n");
            for e in self.endpoints {
                for r in e.responses {
                    let body = match &r.body {
                        Body::Text(t) => format!("`{t}`"),
                        Body::Prefix(t) => format!("`{t}…`"),
                        Body::Json(j) => format!("`{j}`"),
                        Body::JsonHas(j) => format!("JSON with `{j}`"),
                        Body::JsonKeys(k) => format!(
                            "JSON with {}",
                            k.iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Body::Exposition => "Prometheus text or OpenMetrics".into(),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | {} | {} | {body} |",
                        e.method, e.path, r.status, r.when
                    );
                }
            }
            out.push('\n');
        }
        if !self.families.is_empty() {
            out.push_str("## Metric families\n\nNames, types and labels as the README documents them, in both exposition formats.\n\n| family | type | labels | in devmetrics |\n| --- | --- | --- | --- |\n");
            for f in self.families {
                let status = match f.status {
                    Status::Served => "served as documented".to_string(),
                    Status::ServedAs(name, why) => format!("served as `{name}`: {why}"),
                    Status::Pending(why) => format!("not yet: {why}"),
                    Status::Impossible(why) => format!("never: {why}"),
                };
                let labels = f
                    .labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {labels} | {status} |",
                    f.name,
                    f.kind.as_str()
                );
            }
            out.push('\n');
        }
        if !self.events.is_empty() {
            out.push_str("## Application Insights events\n\nThe custom events keep the README's names, properties and measurements (devmetrics adds more properties beside them).\n\n| event | properties | measurements |\n| --- | --- | --- |\n");
            for e in self.events {
                let list = |xs: &[&str]| {
                    xs.iter()
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} |",
                    e.name,
                    list(e.properties),
                    list(e.measurements)
                );
            }
            out.push('\n');
        }
        let _ = writeln!(out, "## What changed, and why\n\n{}", self.changes.trim());
        out
    }
}

/// Go's `flag` syntax: `-name value`, `-name=value`, `--name value`, `--name=value`, and bare
/// booleans. clap has no single-dash long options, so the handful of Go tools' flags are read
/// here. Returns the flags by name; `-h`/`-help` comes back as `help`.
fn go_flags(
    tool: &'static str,
    args: &[String],
    valued: &[&str],
    boolean: &[&str],
) -> Result<BTreeMap<String, String>, Error> {
    let usage = |message: String| Error::Usage { tool, message };
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(usage(format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if matches!(name, "h" | "help") {
            out.insert("help".into(), String::new());
        } else if boolean.contains(&name) {
            out.insert(name.into(), inline.unwrap_or_else(|| "true".into()));
        } else if valued.contains(&name) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("flag needs an argument: -{name}")))?,
            };
            out.insert(name.into(), v);
        } else {
            return Err(usage(format!("flag provided but not defined: -{name}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_flags_take_every_spelling() {
        for a in [
            &["--config=/x.yaml"][..],
            &["-config=/x.yaml"],
            &["--config", "/x.yaml"],
            &["-config", "/x.yaml"],
        ] {
            let f = go_flags("t", &args(a), &["config"], &[]).unwrap();
            assert_eq!(f["config"], "/x.yaml");
        }
        let f = go_flags("t", &args(&["-log", "-h"]), &[], &["log"]).unwrap();
        assert_eq!(f["log"], "true");
        assert!(f.contains_key("help"));
        let e = go_flags("t", &args(&["-nope"]), &["config"], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("flag provided but not defined: -nope")
        );
        let e = go_flags("t", &args(&["-config"]), &["config"], &[]).unwrap_err();
        assert!(e.to_string().contains("needs an argument"));
    }

    #[test]
    fn a_persona_drops_the_other_tools_variables() {
        let env: BTreeMap<String, String> = [
            ("SPACELIFT_PROMEX_API_KEY_ID", "k"),
            ("GITHUB_WEBHOOK_SECRET", "s"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let own = spacelift::TOOL.own_env(&env);
        assert!(own.contains_key("SPACELIFT_PROMEX_API_KEY_ID"));
        assert!(own.contains_key("PATH"));
        assert!(!own.contains_key("GITHUB_WEBHOOK_SECRET"));
        let own = github_telemetry::TOOL.own_env(&env);
        assert!(!own.contains_key("SPACELIFT_PROMEX_API_KEY_ID"));
        assert!(own.contains_key("GITHUB_WEBHOOK_SECRET"));
    }

    #[test]
    fn every_tool_has_a_help_mapping_for_each_flag_and_variable() {
        for t in TOOLS {
            let help = t.help();
            for m in t.flags.iter().chain(t.env) {
                assert!(help.contains(m.old), "{}: {} missing", t.name, m.old);
            }
        }
    }
}
