//! The replaced tools' interfaces, conformance-tested. Each tool's table in
//! `devmetrics::compat` is checked against its README (`../shared/seeds/`), and the real
//! binary, started under the tool's name with the README's own command lines, is checked
//! against the table: flags, environment, endpoints with status and body, the default port,
//! and every documented family's name, type and label set in both exposition formats.

mod copilot_metrics;
pub mod dashboards;
mod dora_exporter;
mod github_stats;
mod github_telemetry;
pub mod rules;
mod spacelift;
mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use devmetrics::compat::{Body, Family, Kind, Status, Tool};

/// A link named `name` to the devmetrics binary, in `dir`.
pub fn persona(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devmetrics"), &link).unwrap();
    link
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Held by the tests that try a tool's default port (two tools share 8080).
pub static DEFAULT_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `port` can be bound on every interface (a default-port test skips otherwise).
pub fn port_free(port: u16) -> bool {
    let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
    if !free {
        eprintln!(
            "SKIPPED: port {port} is taken on this machine, so the default port is not tried"
        );
    }
    free
}

/// A persona process, killed when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Status and body of `GET url` (with `accept` when given), or `None` while nothing listens.
pub async fn get(url: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let c = reqwest::Client::new();
    let mut r = c.get(url).timeout(Duration::from_secs(5));
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    let r = r.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The first answer of `GET url` once something listens, within 10 s.
pub async fn answer_when_listening(url: &str) -> Option<(u16, String)> {
    for _ in 0..100 {
        if let Some(a) = get(url, None).await {
            return Some(a);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// Polls `base/metrics` until every served family of `tool` has a sample, for up to `secs`.
pub async fn wait_for_families(base: &str, tool: &Tool, secs: u64) -> String {
    let mut body = String::new();
    for _ in 0..secs * 10 {
        if let Some((200, b)) = get(&format!("{base}/metrics"), None).await {
            body = b;
            let samples = samples(&body);
            if served(tool).all(|f| samples.iter().any(|(n, _)| belongs(f, n))) {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    body
}

fn served(tool: &Tool) -> impl Iterator<Item = &Family> {
    tool.families.iter().filter(|f| f.served_name().is_some())
}

/// Whether a sample called `name` belongs to family `f` as devmetrics serves it (or, for a
/// family not served, as documented).
fn belongs(f: &Family, name: &str) -> bool {
    let family = f.served_name().unwrap_or(f.name);
    match f.kind {
        Kind::Gauge => name == family,
        Kind::Counter => {
            name == family || name == format!("{}_total", family.trim_end_matches("_total"))
        }
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name == format!("{family}{s}")),
    }
}

/// Every sample line as (name, label names).
pub fn samples(body: &str) -> Vec<(String, BTreeSet<String>)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            let name = l[..end].to_string();
            let mut labels = BTreeSet::new();
            if l[end..].starts_with('{') {
                // label="value" pairs; values may hold escaped quotes, commas and braces.
                let mut chars = l[end + 1..].chars().peekable();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    let key = key.trim_start_matches(',').trim().to_string();
                    if key.is_empty() || key.starts_with('}') {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'), "malformed labels in {l}");
                    let mut escaped = false;
                    for c in chars.by_ref() {
                        match (escaped, c) {
                            (false, '\\') => escaped = true,
                            (false, '"') => break,
                            _ => escaped = false,
                        }
                    }
                    labels.insert(key);
                    if chars.peek() == Some(&'}') {
                        break;
                    }
                }
            }
            labels.remove("le");
            (name, labels)
        })
        .collect()
}

/// `# TYPE` lines: family name → type.
fn types(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

/// Every served family of `tool` is in both bodies with its documented type and exactly its
/// documented label set on every sample; no family the table says is not served appears.
pub fn check_exposition(tool: &Tool, text: &str, om: &str) {
    assert!(om.trim_end().ends_with("# EOF"), "not OpenMetrics:\n{om}");
    for (format, body) in [("text", text), ("OpenMetrics", om)] {
        let types = types(body);
        let samples = samples(body);
        for f in served(tool) {
            // OpenMetrics names a counter family without its `_total`.
            let name = f.served_name().unwrap();
            let family = if format == "OpenMetrics" && f.kind == Kind::Counter {
                name.trim_end_matches("_total")
            } else {
                name
            };
            // OpenMetrics counters end in `_total`; one whose documented name does not is
            // typed unknown there and keeps its name.
            let want = if format == "OpenMetrics"
                && f.kind == Kind::Counter
                && !name.ends_with("_total")
            {
                "unknown"
            } else {
                f.kind.as_str()
            };
            assert_eq!(
                types.get(family).map(String::as_str),
                Some(want),
                "{}: {format} TYPE of {family}",
                tool.name
            );
            let mine: Vec<_> = samples.iter().filter(|(n, _)| belongs(f, n)).collect();
            assert!(
                !mine.is_empty(),
                "{}: {format} has no sample of {}",
                tool.name,
                f.name
            );
            let want: BTreeSet<String> = f.labels.iter().map(|l| l.to_string()).collect();
            for (n, labels) in mine {
                assert_eq!(labels, &want, "{}: {format} labels of {n}", tool.name);
            }
        }
        for f in tool.families.iter().filter(|f| f.served_name().is_none()) {
            assert!(
                !samples.iter().any(|(n, _)| belongs(f, n)),
                "{}: {} is listed as not served but appears in {format}",
                tool.name,
                f.name
            );
        }
    }
}

/// Every GET endpoint of `tool` answers its first documented (normal) response at `base`.
pub async fn check_get_endpoints(tool: &Tool, base: &str) {
    for e in tool.endpoints.iter().filter(|e| e.method == "GET") {
        let want = &e.responses[0];
        let (status, body) = get(&format!("{base}{}", e.path), None)
            .await
            .unwrap_or_else(|| panic!("{}: GET {} unanswered", tool.name, e.path));
        assert_eq!(
            status, want.status,
            "{}: GET {} → {body}",
            tool.name, e.path
        );
        check_body(tool, e.path, &want.body, &body);
    }
}

pub fn check_body(tool: &Tool, path: &str, want: &Body, body: &str) {
    match want {
        Body::Text(t) => assert_eq!(body.trim(), *t, "{}: body of {path}", tool.name),
        Body::Prefix(p) => assert!(body.starts_with(p), "{}: body of {path}: {body}", tool.name),
        Body::Json(j) => {
            let have: serde_json::Value = serde_json::from_str(body).unwrap();
            let want: serde_json::Value = serde_json::from_str(j).unwrap();
            assert_eq!(have, want, "{}: body of {path}", tool.name);
        }
        Body::JsonHas(j) => {
            let have: serde_json::Value = serde_json::from_str(body).unwrap();
            let want: serde_json::Value = serde_json::from_str(j).unwrap();
            for (k, v) in want.as_object().unwrap() {
                assert_eq!(&have[k], v, "{}: {k} of {path}: {body}", tool.name);
            }
        }
        Body::JsonKeys(keys) => {
            let have: serde_json::Value = serde_json::from_str(body).unwrap();
            for k in *keys {
                assert!(
                    have.get(k).is_some(),
                    "{}: {path} lacks {k}: {body}",
                    tool.name
                );
            }
        }
        Body::Exposition => assert!(body.contains("# TYPE "), "{}: {path}: {body}", tool.name),
    }
}

/// The README of `tool`, when the shared folder is present.
pub fn readme(tool: &Tool) -> Option<String> {
    let dir = devmetrics::sim::research_dir("../seeds")?;
    Some(std::fs::read_to_string(dir.join(tool.readme)).unwrap())
}

/// Each metric a PromQL expression reads, with the labels it matches on or groups by.
pub fn promql_needs(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    use promql_parser::parser::{Expr, LabelModifier};
    fn walk(e: &Expr, grouping: &BTreeSet<String>, out: &mut Vec<(String, BTreeSet<String>)>) {
        let with = |m: &Option<LabelModifier>| {
            let mut g = grouping.clone();
            if let Some(LabelModifier::Include(l)) = m {
                g.extend(l.labels.iter().cloned());
            }
            g
        };
        match e {
            Expr::Aggregate(a) => walk(&a.expr, &with(&a.modifier), out),
            Expr::Unary(u) => walk(&u.expr, grouping, out),
            Expr::Binary(b) => {
                let g = with(&b.modifier.as_ref().and_then(|m| m.matching.clone()));
                walk(&b.lhs, &g, out);
                walk(&b.rhs, &g, out);
            }
            Expr::Paren(p) => walk(&p.expr, grouping, out),
            Expr::Subquery(s) => walk(&s.expr, grouping, out),
            Expr::VectorSelector(v) => selector(v, grouping, out),
            Expr::MatrixSelector(m) => selector(&m.vs, grouping, out),
            Expr::Call(c) => {
                for a in &c.args.args {
                    walk(a, grouping, out);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    fn selector(
        v: &promql_parser::parser::VectorSelector,
        grouping: &BTreeSet<String>,
        out: &mut Vec<(String, BTreeSet<String>)>,
    ) {
        let mut labels = grouping.clone();
        labels.extend(
            v.matchers
                .matchers
                .iter()
                .map(|m| m.name.clone())
                .filter(|n| n != "__name__"),
        );
        match &v.name {
            Some(name) => out.push((name.clone(), labels)),
            // `{__name__=~"a|b"}`: each alternative.
            None => {
                let names = v
                    .matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
                    .unwrap_or_default();
                for n in names.split('|').filter(|n| !n.is_empty()) {
                    let mut ls = labels.clone();
                    ls.remove("__name__");
                    out.push((n.trim().to_string(), ls));
                }
            }
        }
    }
    let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut out = Vec::new();
    walk(&parsed, &BTreeSet::new(), &mut out);
    out
}
