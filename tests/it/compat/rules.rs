//! github-stats-exporter's rule file keeps working: its recording rules read families served
//! as they were, and its alerts, translated in `deploy/prometheus/`, read devmetrics'
//! families, pass `promtool check rules` and fire in `promtool test rules` (run with every
//! rule file in `tests/it/deploy.rs`).

use super::*;

const TRANSLATED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/github-stats-exporter-rules.yaml"
);

/// (kind, name, expr, labels) of every rule in a rule file.
pub fn rules(text: &str) -> Vec<(String, String, String, serde_yaml::Value)> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    v["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .map(|r| {
            let (kind, name) = match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(n), _) => ("record", n),
                (_, Some(n)) => ("alert", n),
                _ => panic!("{r:?}"),
            };
            (
                kind.to_string(),
                name.to_string(),
                r["expr"].as_str().unwrap().to_string(),
                r["labels"].clone(),
            )
        })
        .collect()
}

fn original() -> Option<String> {
    let dir = devmetrics::sim::research_dir("seed0/prometheus")?;
    Some(std::fs::read_to_string(dir.join("github-stats-alert-rules.yaml")).unwrap())
}

/// The same recording rules, and an alert of the same name and labels for every old one.
#[test]
fn the_translation_keeps_every_rule() {
    let Some(old) = original() else { return };
    let old = rules(&old);
    let new = rules(&std::fs::read_to_string(TRANSLATED).unwrap());
    assert_eq!(old.len(), new.len());
    for ((ok, on, oe, ol), (nk, nn, ne, nl)) in old.iter().zip(&new) {
        assert_eq!((ok, on, ol), (nk, nn, nl), "rule {on}");
        if ok == "record" {
            assert_eq!(oe, ne, "recording rule {on} unchanged");
        }
    }
    // What the old expressions read: gh_activity_* as served, gh_exporter_* translated.
    for (_, name, expr, _) in &old {
        for (metric, _) in promql_needs(expr) {
            let served = devmetrics::metrics::FAMILIES
                .iter()
                .any(|f| f.name == metric);
            assert!(
                served || metric.starts_with("gh_exporter_"),
                "{name} reads {metric}, neither served nor translated"
            );
        }
    }
}

/// Every metric and label the translated file reads is in the catalog.
#[test]
fn translated_rules_read_only_catalog_families_and_labels() {
    let new = rules(&std::fs::read_to_string(TRANSLATED).unwrap());
    let recorded: BTreeSet<&str> = new
        .iter()
        .filter(|r| r.0 == "record")
        .map(|r| r.1.as_str())
        .collect();
    for (_, name, expr, _) in &new {
        for (metric, labels) in promql_needs(expr) {
            if recorded.contains(metric.as_str()) {
                continue;
            }
            let def = devmetrics::metrics::FAMILIES
                .iter()
                .find(|f| f.name == metric)
                .unwrap_or_else(|| panic!("{name} reads {metric}, not in the catalog"));
            for l in &labels {
                assert!(
                    def.labels.contains(&l.as_str()),
                    "{name}: {metric} has no label {l}"
                );
            }
        }
    }
}

/// The old recording rules find their families, with the labels they group by, in `demo`.
#[tokio::test]
async fn the_old_recording_rules_find_their_series_in_demo() {
    let Some(old) = original() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config_with(dir.path(), &[]);
    let demo = devmetrics::sim::demo::Demo::start(&mut cfg, 3)
        .await
        .unwrap();
    let running = crate::support::start(cfg, "http").await;
    let needs: Vec<_> = rules(&old)
        .into_iter()
        .filter(|r| r.0 == "record")
        .flat_map(|r| promql_needs(&r.2))
        .collect();
    assert!(!needs.is_empty());
    let mut body = String::new();
    for _ in 0..200 {
        body = get(&format!("{}/metrics", running.base), Some(OPENMETRICS))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let s = samples(&body);
        if needs
            .iter()
            .all(|(m, ls)| s.iter().any(|(n, have)| n == m && ls.is_subset(have)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = samples(&body);
    for (m, ls) in &needs {
        assert!(
            s.iter().any(|(n, have)| n == m && ls.is_subset(have)),
            "{m} with {ls:?} missing from demo"
        );
    }
    running.stop().await;
    drop(demo);
}
