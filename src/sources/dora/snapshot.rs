//! dora-exporter's snapshot file (its whole registry in Prometheus text), imported once so
//! its counters continue: `github_deployments_total` and `jira_incidents` add their values,
//! the `_duration_sum` gauges their sums, `github_deployments_duration` its last value. A
//! duration of 9.22e9 s is the old exporter's zero-date overflow, not a measurement: such
//! series are left out. Each part is applied under one idempotency key, so
//! a restart, or a second replica, imports nothing again.

use std::collections::BTreeMap;
use std::path::Path;

use crate::metrics::{self, Labels, Op, Update};
use crate::store::{Applied, Store};

/// What an import did.
#[derive(Debug, Default, PartialEq)]
pub struct Imported {
    pub series: usize,
    /// Families in the file that are not imported, with their series counts.
    pub skipped: BTreeMap<String, usize>,
    pub already: bool,
}

/// `name{a="x",b="y"} value` → (name, labels, value); `None` for comments and lines that do
/// not parse.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, q) = chars.next()?;
                    if q != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The updates a snapshot's text makes, by store scope, and what it leaves out.
pub fn updates(text: &str) -> (BTreeMap<&'static str, Vec<Update>>, BTreeMap<String, usize>) {
    let mut out: BTreeMap<&'static str, Vec<Update>> = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for line in text.lines() {
        let Some((name, l, v)) = sample(line) else {
            continue;
        };
        // Durations beyond 30 years are the old exporter's overflow of a missing date.
        let overflow = name.contains("duration") && v > 1e9;
        if !v.is_finite() || v < 0.0 || overflow {
            *skipped.entry(name.to_string()).or_default() += 1;
            continue;
        }
        let get = |k: &str| l.get(k).map(String::as_str).unwrap_or("");
        let deployment = || {
            vec![
                get("repo"),
                get("environment"),
                get("team"),
                get("status"),
                get("redeployment"),
            ]
        };
        let (scope, family, values, op) = match name {
            "github_deployments_total" => (
                super::deployments::SCOPE,
                metrics::GITHUB_DEPLOYMENTS_TOTAL,
                deployment(),
                Op::Inc(v),
            ),
            "github_deployments_duration" => (
                super::deployments::SCOPE,
                metrics::GITHUB_DEPLOYMENTS_DURATION,
                deployment(),
                Op::Set(v),
            ),
            "github_deployments_duration_sum" => (
                super::deployments::SCOPE,
                metrics::GITHUB_DEPLOYMENTS_DURATION_SUM,
                deployment(),
                Op::Add(v),
            ),
            "jira_incidents" => (
                super::incidents::SCOPE,
                metrics::JIRA_INCIDENTS,
                vec![get("project"), get("team")],
                Op::Inc(v),
            ),
            "jira_incidents_duration_sum" => (
                super::incidents::SCOPE,
                metrics::JIRA_INCIDENTS_DURATION_SUM,
                vec![get("project"), get("team")],
                Op::Add(v),
            ),
            other => {
                *skipped.entry(other.to_string()).or_default() += 1;
                continue;
            }
        };
        let Ok(labels) = Labels::new(family, &values) else {
            *skipped.entry(name.to_string()).or_default() += 1;
            continue;
        };
        out.entry(scope)
            .or_default()
            .push(Update { family, labels, op });
    }
    (out, skipped)
}

/// Imports `path` once per store. A missing file is nothing to import.
pub async fn import(store: &dyn Store, path: &Path) -> Result<Imported, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Imported::default()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let (by_scope, skipped) = updates(&text);
    let mut done = Imported {
        skipped,
        ..Imported::default()
    };
    for (scope, updates) in by_scope {
        let n = updates.len();
        let key = format!("import:dora-exporter:{scope}");
        match store.apply_once(&key, scope, updates).await {
            Ok(Applied::Applied) => done.series += n,
            Ok(Applied::Duplicate) => done.already = true,
            Err(e) => return Err(format!("applying {}: {e}", path.display())),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_escapes() {
        let (n, l, v) = sample(r#"jira_incidents{project="A\"B",team="x,y"} 3"#).unwrap();
        assert_eq!((n, v), ("jira_incidents", 3.0));
        assert_eq!(l["project"], "A\"B");
        assert_eq!(l["team"], "x,y");
        assert_eq!(sample("# HELP x y"), None);
        assert_eq!(sample("go_goroutines 7").unwrap().2, 7.0);
    }

    #[test]
    fn only_the_continuing_families_are_imported() {
        let text = "github_deployments_total{environment=\"production\",repo=\"a\",status=\"success\",team=\"T\"} 2\n\
                    github_deployments_duration{environment=\"production\",repo=\"a\",status=\"success\",team=\"T\"} 9.223372036854776e+09\n\
                    jira_incidents{team=\"T\"} 4\n\
                    jira_incidents_duration_sum{project=\"P\",team=\"T\"} 10.5\n\
                    go_goroutines 12\n";
        let (u, skipped) = updates(text);
        assert_eq!(u[super::super::deployments::SCOPE].len(), 1);
        assert_eq!(u[super::super::incidents::SCOPE].len(), 2);
        // The zero-date overflow is not carried over.
        assert_eq!(skipped["github_deployments_duration"], 1);
        assert_eq!(skipped["go_goroutines"], 1);
        let (u, _) = updates("github_deployments_duration_sum{repo=\"a\"} 5294.1\n");
        assert_eq!(u[super::super::deployments::SCOPE].len(), 1);
    }
}
