//! The replaced tools' own Grafana dashboards keep working: every metric and label their
//! queries (and template variables) read is in `demo`'s `/metrics`, apart from an explicit
//! list of families whose source is not part of this build.

use super::*;

/// Families the dashboards read that this build does not serve, and why. The test fails when
/// one of them appears (move it out) or when anything else is missing.
const NOT_YET: &[(&str, &str)] = &[];

/// Label matchers the replaced exporter never satisfied either, so a dashboard query using
/// them matches nothing by design: (metric, label, why).
const NEVER_MATCHED: &[(&str, &str, &str)] = &[(
    "jira_incidents",
    "environment",
    "dora-exporter's jira_incidents never had it: the DORA v2 team variable takes its teams from deployments",
)];

const DASHBOARDS: &[&str] = &[
    "spacelift/example-dashboard.json",
    "dora/mprokopov-dora-exporter/dora-v2.grafana-dashboard.json",
    "copilot/seed-exporter/grafana-dashboard.json",
];

/// Grafana's variables replaced by values PromQL parses.
fn instantiate(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "5m")
        .replace("$__range", "1d");
    while let Some(i) = out.find('$') {
        let end = out[i + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{' || c == '}'))
            .map_or(out.len(), |e| i + 1 + e);
        out.replace_range(i..end, "x");
    }
    out
}

/// Every (metric, labels) a dashboard's queries and `label_values` variables read.
pub fn dashboard_needs(json: &serde_json::Value) -> Vec<(String, BTreeSet<String>)> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        ("definition" | "query", serde_json::Value::String(e))
                            if e.trim_start().starts_with("label_values(") =>
                        {
                            out.push(e.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(json, &mut exprs);
    let mut needs = Vec::new();
    for e in exprs {
        let e = instantiate(e.trim());
        if let Some(inner) = e
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (selector, label) = match inner.rsplit_once(',') {
                Some((s, l)) => (s.trim().to_string(), Some(l.trim().to_string())),
                None => (inner.to_string(), None),
            };
            for (m, mut ls) in promql_needs(&selector) {
                ls.extend(label.clone());
                needs.push((m, ls));
            }
        } else {
            needs.extend(promql_needs(&e));
        }
    }
    needs
}

#[tokio::test]
async fn replaced_dashboards_find_their_metrics_in_demo() {
    let mut needs = Vec::new();
    for d in DASHBOARDS {
        let Some(path) = devmetrics::sim::research_dir(d) else {
            return;
        };
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let n = dashboard_needs(&json);
        assert!(!n.is_empty(), "{d} has no queries");
        needs.extend(n.into_iter().map(|(m, mut ls)| {
            for (metric, label, _) in NEVER_MATCHED {
                if m == *metric {
                    ls.remove(*label);
                }
            }
            (m, ls)
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    // A real port, so the demo's webhook and Jira senders reach the receivers.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cfg = crate::support::config_with(
        dir.path(),
        &[("web.listen_addresses", serde_yaml::Value::String(listen))],
    );
    let demo = devmetrics::sim::demo::Demo::start(&mut cfg, 3)
        .await
        .unwrap();
    let running = crate::support::start(cfg, "http").await;
    let not_yet: BTreeSet<&str> = NOT_YET.iter().map(|(m, _)| *m).collect();
    let found = |s: &[(String, BTreeSet<String>)], m: &str, ls: &BTreeSet<String>| {
        s.iter().any(|(n, have)| n == m && ls.is_subset(have))
    };
    let mut text = String::new();
    let mut om = String::new();
    for _ in 0..300 {
        text = get(&format!("{}/metrics", running.base), None)
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        om = get(&format!("{}/metrics", running.base), Some(OPENMETRICS))
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        let (st, so) = (samples(&text), samples(&om));
        if needs
            .iter()
            .filter(|(m, _)| !not_yet.contains(m.as_str()))
            .all(|(m, ls)| found(&st, m, ls) && found(&so, m, ls))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
    drop(demo);
    let mut missing = BTreeSet::new();
    for (format, body) in [("text", &text), ("OpenMetrics", &om)] {
        let s = samples(body);
        for (m, ls) in &needs {
            if !found(&s, m, ls) {
                assert!(
                    not_yet.contains(m.as_str()),
                    "{m} with {ls:?} missing from demo's {format} /metrics"
                );
                missing.insert(m.as_str());
            }
        }
    }
    assert_eq!(
        missing, not_yet,
        "the not-yet list is exactly what is missing"
    );
}
