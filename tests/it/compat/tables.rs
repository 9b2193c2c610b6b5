//! The tables against the READMEs they were written from, the catalog, and the generated
//! migration pages.

use super::*;
use devmetrics::compat::{Launch, TOOLS};

#[test]
fn migration_pages_are_current() {
    for t in TOOLS {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("docs/migrate/{}.md", t.name));
        let want = t.migration_page();
        if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run `UPDATE_DOCS=1 cargo test --test it compat::tables`",
            path.display()
        );
    }
}

/// A served family is in the catalog with the documented type and labels (extra labels
/// would change every series' identity); nothing else claims the name.
#[test]
fn served_families_are_in_the_catalog_as_documented() {
    use devmetrics::metrics::{FAMILIES, Kind as CatalogKind};
    for t in TOOLS {
        for f in t.families {
            let def = FAMILIES.iter().find(|d| Some(d.name) == f.served_name());
            match f.status {
                Status::Served | Status::ServedAs(..) => {
                    let def =
                        def.unwrap_or_else(|| panic!("{}: {} not in the catalog", t.name, f.name));
                    let kind = match def.kind {
                        CatalogKind::Gauge => Kind::Gauge,
                        CatalogKind::Counter | CatalogKind::LegacyCounter => Kind::Counter,
                        CatalogKind::Histogram => Kind::Histogram,
                    };
                    assert_eq!(kind, f.kind, "{}: {}", t.name, f.name);
                    let mut have: Vec<_> = def.labels.to_vec();
                    let mut want: Vec<_> = f.labels.to_vec();
                    have.sort();
                    want.sort();
                    assert_eq!(have, want, "{}: labels of {}", t.name, f.name);
                }
                Status::Pending(_) | Status::Impossible(_) => {
                    let def = FAMILIES.iter().find(|d| d.name == f.name);
                    assert!(
                        def.is_none(),
                        "{}: {} is in the catalog; mark it served",
                        t.name,
                        f.name
                    )
                }
            }
        }
    }
}

/// What is documented but not served, per tool. A change here is a change to the contract.
#[test]
fn the_families_not_served_are_exactly_these() {
    let not_served: BTreeMap<&str, Vec<&str>> = TOOLS
        .iter()
        .map(|t| {
            (
                t.name,
                t.families
                    .iter()
                    .filter(|f| f.served_name().is_none())
                    .map(|f| f.name)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(not_served["spacelift-promex"], Vec::<&str>::new());
    assert_eq!(not_served["github-telemetry"], Vec::<&str>::new());
    assert_eq!(not_served["dora-exporter"], Vec::<&str>::new());
    assert_eq!(not_served["github-stats-exporter"], Vec::<&str>::new());
}

/// Backticked words of `text` that look like names of metric families with `prefixes`.
fn documented_families(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|w| w.split('{').next().unwrap_or(w))
        .filter(|w| prefixes.iter().any(|p| w.starts_with(p)))
        .filter(|w| {
            w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Upper-case words with an underscore: the environment variables a README names.
fn documented_variables(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.contains('_')
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|w| prefixes.is_empty() || prefixes.iter().any(|p| w.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The README's own command lines for the tool (placeholders filled), with their binary name.
fn documented_commands(text: &str, starts: &[&str]) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches("$ "))
        .filter(|l| starts.iter().any(|s| l.starts_with(s)))
        // Lines of the README's help output (`NAME - what`, `USAGE [options]`), not commands.
        .filter(|l| !l.contains(" - ") && !l.contains('[') && !l.contains(" version "))
        .map(|l| {
            let l = l
                .replace("<account>", "acme")
                .replace("<API Key ID>", "id")
                .replace("<API Key Secret>", "secret");
            l.split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect()
        })
        .collect()
}

struct ReadmeFacts {
    tool: &'static str,
    family_prefixes: &'static [&'static str],
    variable_prefixes: &'static [&'static str],
    /// How the README's commands start, and how many words name the program.
    commands: &'static [(&'static str, usize)],
    /// Whether the README lists every family (else the table may name more, from the
    /// tool's code and snapshot examples).
    exhaustive: bool,
}

const FACTS: &[ReadmeFacts] = &[
    ReadmeFacts {
        tool: "spacelift-promex",
        family_prefixes: &["spacelift_"],
        variable_prefixes: &["SPACELIFT_PROMEX_"],
        commands: &[("spacelift-promex ", 1)],
        exhaustive: true,
    },
    ReadmeFacts {
        tool: "github-stats-exporter",
        family_prefixes: &["gh_activity_", "gh_copilot_usage_"],
        variable_prefixes: &["GITHUB_STATS_"],
        commands: &[],
        exhaustive: true,
    },
    ReadmeFacts {
        tool: "github-telemetry",
        family_prefixes: &[],
        variable_prefixes: &[],
        commands: &[("python -m uvicorn ", 1), ("python -m src.backend.app", 1)],
        exhaustive: true,
    },
    ReadmeFacts {
        tool: "dora-exporter",
        family_prefixes: &["github_deployments_", "jira_incidents"],
        variable_prefixes: &["GITHUB_"],
        commands: &[("dora-exporter ", 1)],
        exhaustive: false,
    },
];

/// Every family, variable and command line of each README is in its tool's table, and each
/// documented command parses as that tool's command line.
#[test]
fn every_documented_name_is_in_its_table() {
    for facts in FACTS {
        let t = devmetrics::compat::tool(facts.tool).unwrap();
        let Some(text) = readme(t) else { return };
        let table: BTreeSet<String> = t.families.iter().map(|f| f.name.to_string()).collect();
        if !facts.family_prefixes.is_empty() {
            let documented = documented_families(&text, facts.family_prefixes);
            assert!(!documented.is_empty(), "{}", t.name);
            if facts.exhaustive {
                assert_eq!(documented, table, "{}: README families vs table", t.name);
            } else {
                assert!(
                    documented.is_subset(&table),
                    "{}: {documented:?} not all in the table",
                    t.name
                );
            }
        }
        let vars: BTreeSet<String> = t.env.iter().map(|m| m.old.to_string()).collect();
        let mut documented = documented_variables(&text, facts.variable_prefixes);
        // Words in github-telemetry's README that are not variables.
        documented.retain(|v| !["WEBHOOK_SECRET"].contains(&v.as_str()));
        for v in &documented {
            assert!(
                vars.contains(v),
                "{}: {v} documented but not in the table",
                t.name
            );
        }
        let flags: String = t.flags.iter().map(|m| m.old).collect::<Vec<_>>().join(" ");
        for (start, program_words) in facts.commands {
            let commands = documented_commands(&text, &[start]);
            assert!(!commands.is_empty(), "{}: no `{start}` line", t.name);
            for words in commands {
                let args = &words[*program_words..];
                for w in args.iter().filter(|w| w.starts_with('-')) {
                    let name = w.split('=').next().unwrap();
                    assert!(
                        flags.split([' ', ',']).any(|f| f == name),
                        "{}: flag {name} documented but not in the table",
                        t.name
                    );
                }
                let env: BTreeMap<String, String> =
                    [("GITHUB_WEBHOOK_SECRET".to_string(), "s".to_string())].into();
                match devmetrics::compat::invoke(t.name, args, &env) {
                    Ok(Launch::Serve(_)) | Ok(Launch::Print(_)) => {}
                    // The command line parsed; the config file it names is not here.
                    Err(e) if e.to_string().contains(": reading ") => {}
                    Err(e) => panic!("{}: `{}` does not parse: {e}", t.name, words.join(" ")),
                }
            }
        }
    }
}

#[test]
fn github_telemetry_reads_its_environment() {
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let plan = |e: BTreeMap<String, String>, args: &[&str]| match devmetrics::compat::invoke(
        "github-telemetry",
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &e,
    ) {
        Ok(Launch::Serve(p)) => p,
        other => panic!("{other:?}"),
    };
    let load = |p: &devmetrics::compat::Plan| {
        devmetrics::config::load(None, &p.env, &p.overrides).unwrap()
    };
    let p = plan(
        env(&[
            ("GITHUB_WEBHOOK_SECRET", "s3cret"),
            ("HOST", "127.0.0.1"),
            ("PORT", "9123"),
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("BACKEND_POLL_INTERVAL_SECONDS", "5"),
            (
                "BACKEND_APPLICATIONINSIGHTS_CONNECTION_STRING",
                "InstrumentationKey=k;IngestionEndpoint=http://127.0.0.1:1/",
            ),
            ("SPACELIFT_PROMEX_API_KEY_ID", "not mine"),
        ]),
        &[],
    );
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("AZURE_STORAGE_ACCOUNT_NAME, BACKEND_POLL_INTERVAL_SECONDS"));
    let c = load(&p);
    assert_eq!(
        c.web.listen_addresses,
        vec!["127.0.0.1:9123".parse().unwrap()]
    );
    assert!(c.webhooks.github.is_some());
    assert!(c.webhooks.sinks.appinsights.is_some());
    assert!(
        c.spacelift.is_none(),
        "another tool's variable enables nothing"
    );
    // The README's uvicorn arguments win over HOST and PORT; defaults are 0.0.0.0:8080.
    let p = plan(
        env(&[("FRONTEND_GITHUB_WEBHOOK_SECRET", "s"), ("PORT", "1")]),
        &[
            "-m",
            "uvicorn",
            "src.frontend.app:app",
            "--host",
            "127.0.0.2",
            "--port",
            "8081",
        ],
    );
    assert_eq!(
        load(&p).web.listen_addresses,
        vec!["127.0.0.2:8081".parse().unwrap()]
    );
    let p = plan(env(&[("GITHUB_WEBHOOK_SECRET", "s")]), &[]);
    assert_eq!(
        load(&p).web.listen_addresses,
        vec!["0.0.0.0:8080".parse().unwrap()]
    );
    let e =
        devmetrics::compat::invoke("github-telemetry", &[], &env(&[("PORT", "80")])).unwrap_err();
    assert!(e.to_string().contains("GITHUB_WEBHOOK_SECRET"), "{e}");
    let e = devmetrics::compat::invoke(
        "github-telemetry",
        &[],
        &env(&[("GITHUB_WEBHOOK_SECRET", "s"), ("PORT", "http")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("PORT \"http\""), "{e}");
}
