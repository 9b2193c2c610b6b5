//! What ships in `deploy/` works: every rule file passes `promtool` and its unit tests, reads
//! only families and labels of the catalog, and every alert has its runbook section; every
//! Grafana dashboard takes its datasource as a variable and queries only the catalog.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::compat::dashboards::dashboard_needs;
use crate::compat::promql_needs;
use crate::compat::rules::rules;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir` ending in `ext`, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    out.sort();
    out
}

/// A tool the test needs: `None` (skip) when absent, a failure under
/// `DEVMETRICS_REQUIRE_SERVICES=1`.
fn tool(name: &str, version_arg: &str, install: &str) -> Option<()> {
    if std::process::Command::new(name)
        .arg(version_arg)
        .output()
        .is_ok()
    {
        return Some(());
    }
    let msg = format!("{name} is not installed ({install})");
    if std::env::var("DEVMETRICS_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{msg} and DEVMETRICS_REQUIRE_SERVICES=1");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The catalog family a metric name of a query belongs to, and the labels it adds
/// (`le` of a histogram's buckets).
fn family_of(metric: &str) -> Option<(&'static devmetrics::metrics::FamilyDef, Vec<&'static str>)> {
    use devmetrics::metrics::{FAMILIES, Kind};
    if let Some(f) = FAMILIES.iter().find(|f| f.name == metric) {
        return Some((f, Vec::new()));
    }
    for (suffix, extra) in [
        ("_bucket", vec!["le"]),
        ("_sum", vec![]),
        ("_count", vec![]),
    ] {
        if let Some(base) = metric.strip_suffix(suffix)
            && let Some(f) = FAMILIES
                .iter()
                .find(|f| f.name == base && f.kind == Kind::Histogram)
        {
            return Some((f, extra));
        }
    }
    None
}

/// Every (metric, labels) read is a catalog family with those labels, or a recorded series.
fn check_needs(what: &str, needs: &[(String, BTreeSet<String>)], recorded: &BTreeSet<String>) {
    for (metric, labels) in needs {
        if recorded.contains(metric) {
            continue;
        }
        let (def, extra) = family_of(metric)
            .unwrap_or_else(|| panic!("{what} reads {metric}, not in the catalog"));
        for l in labels {
            assert!(
                def.labels.contains(&l.as_str())
                    || extra.contains(&l.as_str())
                    || l == "instance"
                    || l == "job",
                "{what}: {metric} has no label {l}"
            );
        }
    }
}

fn recorded() -> BTreeSet<String> {
    files("deploy/prometheus", ".yaml")
        .iter()
        .flat_map(|p| rules(&std::fs::read_to_string(p).unwrap()))
        .filter(|r| r.0 == "record")
        .map(|r| r.1)
        .collect()
}

#[test]
fn our_rules_read_only_the_catalog_and_every_alert_has_its_runbook() {
    let text =
        std::fs::read_to_string(root().join("deploy/prometheus/devmetrics-rules.yaml")).unwrap();
    let all = rules(&text);
    let recorded = recorded();
    let alerts: Vec<_> = all.iter().filter(|r| r.0 == "alert").collect();
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    for (_, name, expr, _) in &all {
        check_needs(name, &promql_needs(expr), &recorded);
    }
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for group in v["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            let anchor = alert.to_ascii_lowercase();
            assert!(
                sections.contains(&anchor),
                "docs/runbook.md has no section {alert}"
            );
            assert_eq!(
                r["annotations"]["runbook"].as_str(),
                Some(format!("docs/runbook.md#{anchor}").as_str()),
                "{alert}'s runbook annotation"
            );
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{alert} has a severity"
            );
        }
    }
    // No section without its alert.
    let names: BTreeSet<String> = alerts.iter().map(|a| a.1.to_ascii_lowercase()).collect();
    for s in &sections {
        assert!(
            names.contains(s),
            "docs/runbook.md section {s} has no alert"
        );
    }
}

#[test]
fn promtool_checks_every_rule_file_and_runs_its_unit_tests() {
    let Some(()) = tool("promtool", "--version", "Debian: apt install prometheus") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    let rule_files = files("deploy/prometheus", ".yaml");
    let tests = files("deploy/prometheus/tests", ".test.yaml");
    assert!(
        rule_files.len() >= 2 && tests.len() == rule_files.len(),
        "{rule_files:?} {tests:?}"
    );
    let mut runs: Vec<Vec<String>> = Vec::new();
    for f in &rule_files {
        runs.push(vec![
            "check".into(),
            "rules".into(),
            f.display().to_string(),
        ]);
    }
    for t in &tests {
        runs.push(vec!["test".into(), "rules".into(), t.display().to_string()]);
    }
    for args in runs {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `datasource` object of a dashboard names the `${datasource}` variable.
fn datasources_are_the_variable(path: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "datasource" {
                    let uid = x.get("uid").and_then(|u| u.as_str());
                    assert!(
                        uid == Some("${datasource}") || x.as_str() == Some("${datasource}"),
                        "{path}: datasource {x} is not the ${{datasource}} variable"
                    );
                } else {
                    datasources_are_the_variable(path, x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| datasources_are_the_variable(path, x)),
        _ => {}
    }
}

#[test]
fn dashboards_take_the_datasource_as_a_variable_and_query_only_the_catalog() {
    let dashboards = files("deploy/grafana/dashboards", ".json");
    assert!(dashboards.len() >= 6, "{dashboards:?}");
    let recorded = recorded();
    let mut uids = BTreeSet::new();
    for p in &dashboards {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let uid = json["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} twice");
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name} title"
        );
        let vars = json["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name} has no prometheus datasource variable"
        );
        for v in vars.iter().filter(|v| v["name"] != "datasource") {
            datasources_are_the_variable(&name, v);
        }
        for panel in json["panels"].as_array().unwrap() {
            datasources_are_the_variable(&name, panel);
        }
        let needs = dashboard_needs(&json);
        assert!(needs.len() >= 5, "{name} queries little: {needs:?}");
        check_needs(&name, &needs, &recorded);
    }
}
