//! The configuration reference (`docs/config-reference.md`), generated. The keys come from the
//! config types themselves: every section refuses unknown keys, and serde names the fields it
//! expected when it does, so probing each section with an unknown key lists what the types
//! accept, nested sections and lists of sections included. Descriptions and defaults come from
//! the annotated example (`example.yaml`), and a test fails when the types accept a key the
//! example does not describe. Written by hand because no schema crate reads serde's
//! `deserialize_with` fields without annotating each of them twice.

use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

const PROBE: &str = "zz_reference_probe";

/// Keys the example leaves out on purpose (secret values, which it never shows in clear;
/// another tool's keys that are accepted and ignored; rarely needed ones), described here.
pub const NOT_IN_EXAMPLE: &[(&str, &str)] = &[
    (
        "storage.redis.url_file",
        "A file holding `storage.redis.url` (which may carry the password).",
    ),
    ("queue.redis.url_file", "A file holding `queue.redis.url`."),
    (
        "queue.redis.tls",
        "TLS of `queue.redis`'s own `rediss://` url.",
    ),
    (
        "queue.redis.tls.ca_file",
        "PEM certificates trusted for `queue.redis`'s `rediss://` url (a private CA).",
    ),
    (
        "queue.rabbitmq.test_queue_expiry",
        "Tests only: the broker deletes queues unused this long, so throwaway prefixes do not pile up.",
    ),
    (
        "github.graphql",
        "Cold scrapes of a repo's pull requests and reviews use one GraphQL query per 50 pull requests (default true; false: REST only).",
    ),
    (
        "github.orgs[].api_base_url",
        "This org's API base, when it differs from `github.api_base_url`.",
    ),
    (
        "github.orgs[].private_key_env",
        "Name of an environment variable holding the App's PEM key (instead of `private_key_path`).",
    ),
    (
        "github.orgs[].token",
        "A token instead of the App keys; the value itself (prefer `token_file` or the environment).",
    ),
    ("github.orgs[].token_file", "A file holding the token."),
    (
        "github.activity.enabled",
        "false: the orgs' clients only serve Copilot, runners and DORA lookups, and activity is not polled (default true).",
    ),
    (
        "github.activity.user_label_secret",
        "The HMAC key of hashed user labels, the value itself (prefer `user_label_secret_file`).",
    ),
    (
        "github.retry.jitter",
        "github-stats-exporter's key: accepted and ignored (backoff always has jitter).",
    ),
    (
        "github.loc.source",
        "github-stats-exporter's key: accepted and ignored.",
    ),
    (
        "github.loc.fallback_enabled",
        "Commit-level line counts for repos whose `/stats/contributors` has none (GitHub zeroes them for very large repos); default false.",
    ),
    (
        "github.loc.fallback_max_commits_per_repo_per_week",
        "Commits of one repo read by the fallback per week (default 500).",
    ),
    (
        "github.loc.fallback_max_commit_detail_calls_per_org_per_hour",
        "Commit-detail requests of one org per hour for the fallback (default 1000); repos it cannot cover are postponed.",
    ),
    (
        "github.loc.large_repo_zero_detection_windows",
        "Consecutive `/stats/contributors` answers with commits but no line counts before a repo switches to the fallback.",
    ),
    (
        "github.loc.large_repo_cooldown",
        "How long a repo stays on the fallback before `/stats/contributors` is asked again.",
    ),
    (
        "github.backfill.enabled",
        "github-stats-exporter's key: accepted and ignored (backfill is always on).",
    ),
    (
        "github.backfill.requeue_delays",
        "github-stats-exporter's key: accepted and ignored (the queue retries with backoff).",
    ),
    (
        "github.backfill.coalesce_window",
        "github-stats-exporter's key: accepted and ignored.",
    ),
    (
        "github.backfill.dedup_ttl",
        "github-stats-exporter's key: accepted and ignored (jobs are deduplicated per exact window).",
    ),
    (
        "webhooks.github.secret",
        "One webhook secret, the value itself (prefer `secrets[].value_file` or `DEVMETRICS_WEBHOOKS__GITHUB__SECRET`).",
    ),
    (
        "webhooks.github.secret_file",
        "A file holding one webhook secret.",
    ),
    (
        "webhooks.github.recovery[].app_hook",
        "Recover the GitHub App's own webhook instead of an org webhook (no `hook_id`).",
    ),
    (
        "webhooks.sinks.otlp.headers",
        "Headers sent with every export (e.g. a SaaS backend's API key).",
    ),
    (
        "webhooks.sinks.appinsights.connection_string",
        "The connection string itself (prefer `connection_string_file`).",
    ),
    (
        "spacelift.enabled",
        "false turns the section off without removing it.",
    ),
    (
        "spacelift.api_key_secret",
        "The API key secret itself (prefer `api_key_secret_file`).",
    ),
    (
        "dora.enabled",
        "false turns the section off without removing it.",
    ),
    (
        "dora.jira.secret",
        "The Jira webhook secret itself (prefer `secret_file`).",
    ),
    (
        "dora.jira.url_token",
        "The URL token itself (prefer `url_token_file`).",
    ),
    (
        "dora.import_snapshot",
        "A dora-exporter snapshot (Prometheus text) imported once, so its counters continue.",
    ),
    (
        "dora.deployments_api.token",
        "The bearer token itself (prefer `token_file`).",
    ),
    (
        "dora.catalog.token",
        "The Backstage token itself (prefer `token_file`, or `BACKSTAGE_TOKEN`).",
    ),
    (
        "copilot.request_timeout",
        "Timeout of one report-link or seats request (default 30s).",
    ),
    (
        "copilot.download_timeout",
        "Timeout of one report file's download (default 90s).",
    ),
    (
        "copilot.user_label_secret",
        "The HMAC key itself (prefer `user_label_secret_file`).",
    ),
    (
        "copilot.emit_day_label",
        "github-stats-exporter's key: accepted and ignored (each window is summed into one series).",
    ),
    (
        "copilot.refresh_if_report_unchanged",
        "github-stats-exporter's key: accepted; every report is read each interval.",
    ),
    (
        "copilot.enterprise.app_id",
        "github-stats-exporter's separate enterprise App: accepted; give its installation as an org of the `github` section and name it in `via_org`.",
    ),
    (
        "copilot.enterprise.installation_id",
        "As `copilot.enterprise.app_id`.",
    ),
    (
        "copilot.enterprise.private_key_path",
        "As `copilot.enterprise.app_id`.",
    ),
];

/// One key the configuration accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Dotted path; `[]` marks an entry of a list (`github.orgs[].org`).
    pub path: String,
    /// Whether it holds further keys.
    pub section: bool,
}

fn tree_at(parts: &[String], leaf: Value) -> Value {
    match parts.split_first() {
        None => leaf,
        Some((head, rest)) => {
            let (name, list) = match head.strip_suffix("[]") {
                Some(n) => (n, true),
                None => (head.as_str(), false),
            };
            let inner = tree_at(rest, leaf);
            let inner = if list {
                Value::Sequence(vec![inner])
            } else {
                inner
            };
            let mut m = Mapping::new();
            m.insert(Value::String(name.to_string()), inner);
            Value::Mapping(m)
        }
    }
}

/// The fields the types accept at `parts` (a section), or `None` (a value).
fn fields_at(parts: &[String]) -> Option<Vec<String>> {
    let mut probe = Mapping::new();
    probe.insert(Value::String(PROBE.into()), Value::Number(0.into()));
    let tree = tree_at(parts, Value::Mapping(probe));
    let err = match serde_path_to_error::deserialize::<_, super::raw::RawConfig>(tree) {
        Ok(_) => return None,
        Err(e) => e,
    };
    let message = err.inner().to_string();
    let rest = message.strip_prefix(&format!("unknown field `{PROBE}`"))?;
    Some(
        rest.split("expected")
            .nth(1)
            .map(|e| {
                e.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Every key the configuration types accept, depth first in declaration order.
pub fn keys() -> Vec<Key> {
    fn walk(parts: &mut Vec<String>, out: &mut Vec<Key>) {
        let Some(fields) = fields_at(parts) else {
            return;
        };
        for f in fields {
            // A field holding a section, a list of sections, or a value.
            let mut found = false;
            for name in [f.clone(), format!("{f}[]")] {
                parts.push(name.clone());
                if parts.len() < 8 && fields_at(parts).is_some() {
                    out.push(Key {
                        path: parts.join("."),
                        section: true,
                    });
                    walk(parts, out);
                    found = true;
                }
                parts.pop();
                if found {
                    break;
                }
            }
            if !found {
                parts.push(f);
                out.push(Key {
                    path: parts.join("."),
                    section: false,
                });
                parts.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), &mut out);
    out
}

/// What the annotated example says of a key: its value there and the comments about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    pub value: String,
    pub text: String,
}

/// The keys of the annotated example, commented-out sections included, by dotted path.
pub fn described(example: &str) -> BTreeMap<String, Described> {
    let mut out = BTreeMap::new();
    // (indent, path part) of the keys enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    for raw in example.lines() {
        // A commented-out block is YAML behind "# " (at any indentation), and an optional key
        // inside one is commented once more; other comments are prose.
        let mut line = raw.to_string();
        for _ in 0..3 {
            let lead = line.len() - line.trim_start().len();
            let Some(rest) = line[lead..].strip_prefix('#') else {
                break;
            };
            let next = format!(
                "{}{}",
                &line[..lead],
                rest.strip_prefix(' ').unwrap_or(rest)
            );
            let is_key = |l: &str| {
                let b = l.trim_start();
                let b = b.strip_prefix("- ").unwrap_or(b);
                b.split_once(':').is_some_and(|(k, _)| key_like(k))
            };
            // A block commented out at the top level is uncommented once whatever it holds.
            if (line == raw && lead == 0) || is_key(&next) {
                line = next;
            } else {
                break;
            }
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if body.is_empty() {
            comments.clear();
            continue;
        }
        if let Some(c) = body.strip_prefix('#') {
            comments.push(c.trim().to_string());
            continue;
        }
        let (item, body, indent) = match body.strip_prefix("- ") {
            Some(b) => (true, b, indent + 2),
            None => (false, body, indent),
        };
        let Some((key, value)) = body.split_once(':') else {
            comments.clear();
            continue;
        };
        if !key_like(key) {
            comments.clear();
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        if item
            && let Some(last) = stack.last_mut()
            && !last.1.ends_with("[]")
        {
            last.1.push_str("[]");
        }
        let (value, trailing) = match value.split_once(" #") {
            Some((v, c)) => (v.trim(), Some(c.trim())),
            None => (value.trim(), None),
        };
        let mut text = comments.join(" ");
        if let Some(t) = trailing {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(t);
        }
        comments.clear();
        let path: Vec<&str> = stack.iter().map(|(_, p)| p.as_str()).chain([key]).collect();
        let entry = Described {
            value: value.to_string(),
            text,
        };
        out.entry(path.join(".")).or_insert(entry);
        stack.push((indent, key.to_string()));
    }
    out
}

/// Keys the types accept that the example does not describe (aliases aside).
pub fn undescribed() -> Vec<String> {
    let d = described(super::EXAMPLE);
    keys()
        .into_iter()
        .filter(|k| {
            lookup(&d, &k.path).is_none() && !NOT_IN_EXAMPLE.iter().any(|(a, _)| *a == k.path)
        })
        .map(|k| k.path)
        .collect()
}

fn key_like(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A list's own key is written without its `[]` in the example.
fn lookup<'a>(d: &'a BTreeMap<String, Described>, path: &str) -> Option<&'a Described> {
    d.get(path)
        .or_else(|| path.strip_suffix("[]").and_then(|p| d.get(p)))
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `docs/config-reference.md`.
pub fn markdown() -> String {
    let d = described(super::EXAMPLE);
    let mut s = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration types (every key they accept) and the annotated example\n\
         `src/config/example.yaml` (values and descriptions) by `devmetrics docs config`; a test\n\
         fails when it is stale or when the types accept a key the example does not describe.\n\
         How the file, environment variables and flags combine is in\n\
         [configuration.md](configuration.md). A value shown is the default, or an example\n\
         where the key has none (a commented-out section of the example).\n",
    );
    let mut section = String::new();
    for k in keys() {
        let top = k.path.split('.').next().unwrap_or_default().to_string();
        if top != section {
            section = top.clone();
            s.push_str(&format!(
                "\n## `{top}`\n\n| key | value | description |\n| --- | --- | --- |\n"
            ));
        }
        let (value, text) = match lookup(&d, &k.path) {
            Some(x) => (x.value.clone(), x.text.clone()),
            None => (
                String::new(),
                NOT_IN_EXAMPLE
                    .iter()
                    .find(|(a, _)| *a == k.path)
                    .map(|(_, w)| w.to_string())
                    .unwrap_or_default(),
            ),
        };
        let value = if k.section || value.is_empty() {
            String::new()
        } else {
            format!("`{}`", cell(&value))
        };
        s.push_str(&format!("| `{}` | {} | {} |\n", k.path, value, cell(&text)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_name_their_sections_and_lists() {
        let k = keys();
        let has = |p: &str, section: bool| k.iter().any(|x| x.path == p && x.section == section);
        assert!(has("web", true));
        assert!(has("web.listen_addresses", false));
        assert!(has("github.orgs[]", true));
        assert!(has("github.orgs[].org", false));
        assert!(has("copilot.enterprise", true));
        assert!(!k.iter().any(|x| x.path.contains(PROBE)));
    }

    #[test]
    fn every_key_is_described_and_every_exception_is_a_key() {
        assert_eq!(undescribed(), Vec::<String>::new());
        let k = keys();
        let d = described(super::super::EXAMPLE);
        for (path, _) in NOT_IN_EXAMPLE {
            assert!(k.iter().any(|x| x.path == *path), "{path} is not a key");
            assert!(lookup(&d, path).is_none(), "{path} is in the example now");
        }
    }

    /// A typo in a commented-out section of the example is caught too: every key it shows
    /// is one the types accept (or inside a value the types read whole, like a secret list).
    #[test]
    fn the_example_shows_only_keys_the_types_accept() {
        let k = keys();
        let known = |p: &str| k.iter().any(|x| x.path == p || x.path == format!("{p}[]"));
        let inside_a_value = |p: &str| {
            k.iter().any(|x| {
                !x.section
                    && p.strip_prefix(x.path.as_str())
                        .is_some_and(|r| r.starts_with(['.', '[']))
            })
        };
        for p in described(super::super::EXAMPLE).keys() {
            assert!(
                known(p) || inside_a_value(p),
                "the example shows {p}, which no type accepts"
            );
        }
    }

    #[test]
    fn the_example_is_read_with_its_comments() {
        let d = described(
            "web:\n  # Where it listens.\n  listen_addresses: [\":1\"]\n# github:\n#   orgs:\n#     # The org.\n#     - org: acme\n#       app_id: 1  # the App\n",
        );
        assert_eq!(d["web.listen_addresses"].text, "Where it listens.");
        assert_eq!(d["web.listen_addresses"].value, "[\":1\"]");
        assert_eq!(d["github.orgs[].org"].text, "The org.");
        assert_eq!(d["github.orgs[].app_id"].text, "the App");
        assert_eq!(d["github.orgs[].app_id"].value, "1");
    }
}
