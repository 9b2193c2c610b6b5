//! Every family pushed over OTLP (HTTP/protobuf and gRPC) to a local collector that decodes
//! the requests with its own protobuf reader: each family `/metrics` shows is in the export,
//! and the CI families' values, attributes, counts, sums and buckets equal `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use devmetrics::sim::sinks::{DecodedPoint, otlp_metrics_grpc_receiver, otlp_metrics_receiver};
use devmetrics::sim::webhooks::{Generator, Sender};

/// `name{labels} value` lines as (name, labels, value), label values unescaped.
fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').to_string(), v);
            rest = &after[end..];
        }
        out.push((name.to_string(), map, value));
    }
    out
}

fn without_empty(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn pushes_every_family(protocol: &str) {
    let (collector, got) = match protocol {
        "grpc" => otlp_metrics_grpc_receiver(1).await.unwrap(),
        _ => otlp_metrics_receiver(1).await.unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = |s: String| serde_yaml::from_str::<serde_yaml::Value>(&s).unwrap();
    let cfg = crate::support::config_with(
        dir.path(),
        &[
            (
                "webhooks",
                yaml("{github: {secrets: [{value: push-test-secret}]}}".into()),
            ),
            (
                "push",
                yaml(format!(
                    "{{otlp: {{endpoint: '{}', protocol: {protocol}, interval: 1s}}}}",
                    collector.base_url()
                )),
            ),
        ],
    );
    let running = crate::support::start(cfg, "http").await;
    let base = running.base.clone();
    let sender = Sender::new(format!("{base}/webhooks/github"), "push-test-secret");
    let mut g = Generator::new(5);
    let plans = g.run_plan(1_700_000_000.0, 6);
    for (i, p) in plans.iter().enumerate() {
        let body = g.job_payload(p, "completed", true);
        assert_eq!(
            sender
                .send("workflow_job", &format!("d-{i}"), body)
                .await
                .unwrap(),
            202
        );
    }
    let jobs = |text: &str| -> f64 {
        parse(text)
            .iter()
            .filter(|(n, _, _)| n == "devmetrics_workflow_jobs_total")
            .map(|(_, _, v)| v)
            .sum()
    };
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics(&base).await;
        if jobs(&text) == 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(jobs(&text), 6.0);
    // An export sent after this scrape holds everything it showed.
    let seen = got.exports.lock().len();
    let mut export = Vec::new();
    for _ in 0..100 {
        if got.exports.lock().len() > seen {
            export = got.exports.lock().last().cloned().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!export.is_empty(), "no export after the scrape");
    assert_eq!(*got.undecodable.lock(), 0);
    let by_name: BTreeMap<&str, Vec<&DecodedPoint>> =
        export.iter().fold(BTreeMap::new(), |mut m, p| {
            m.entry(p.name.as_str()).or_default().push(p);
            m
        });
    // Every family /metrics showed, under its OTLP name.
    let shown: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for family in &shown {
        let def = devmetrics::metrics::FAMILIES
            .iter()
            .find(|f| f.name == *family)
            .unwrap();
        let name = devmetrics::exposition::otlp_metrics::otlp_name(def.name, def.kind);
        let points = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{family} is not in the export as {name}"));
        for p in points {
            assert_eq!(p.service_name, "devmetrics");
            assert!(p.time_unix_nano > 0);
            match def.kind {
                devmetrics::metrics::Kind::Gauge => assert_eq!(p.kind, "gauge"),
                devmetrics::metrics::Kind::Histogram => {
                    assert_eq!((p.kind, p.temporality), ("histogram", 2));
                    assert_eq!(p.explicit_bounds, def.buckets);
                    assert!(p.start_unix_nano > 0 && p.start_unix_nano <= p.time_unix_nano);
                }
                _ => {
                    assert_eq!(
                        (p.kind, p.monotonic, p.temporality),
                        ("sum", true, 2),
                        "{family}"
                    );
                    assert!(p.start_unix_nano > 0 && p.start_unix_nano <= p.time_unix_nano);
                }
            }
        }
    }
    // The CI families (still once drained) agree with /metrics series by series.
    let series = parse(&text);
    let point = |name: &str, labels: &BTreeMap<String, String>| -> &DecodedPoint {
        by_name[name]
            .iter()
            .find(|p| p.attributes == without_empty(labels))
            .unwrap_or_else(|| panic!("{name}{labels:?} is not in the export"))
    };
    let mut checked = 0;
    for (name, labels, value) in &series {
        if name == "devmetrics_workflow_jobs_total" {
            assert_eq!(point("devmetrics_workflow_jobs", labels).value, *value);
            checked += 1;
        }
        if let Some(h) = name.strip_suffix("_count")
            && h.starts_with("devmetrics_workflow_job")
        {
            let p = point(h, labels);
            assert_eq!(p.count as f64, *value, "{name}");
            let sum = series
                .iter()
                .find(|(n, l, _)| *n == format!("{h}_sum") && l == labels)
                .unwrap()
                .2;
            assert!((p.sum - sum).abs() < 1e-9, "{name}");
            assert_eq!(p.unit, "s");
            // Buckets: /metrics is cumulative, OTLP per bucket.
            let mut cumulative = 0;
            for (i, c) in p.bucket_counts.iter().enumerate() {
                cumulative += c;
                let bound = p.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY);
                let want = series
                    .iter()
                    .find(|(n, l, _)| {
                        *n == format!("{h}_bucket")
                            && l.get("le").and_then(|le| le.parse::<f64>().ok()) == Some(bound)
                            && l.iter().filter(|(k, _)| *k != "le").eq(labels.iter())
                    })
                    .unwrap_or_else(|| panic!("{h}_bucket le={bound} {labels:?}"))
                    .2;
                assert_eq!(cumulative as f64, want, "{h} bucket {i}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} CI series compared");
    running.stop().await;
}

#[tokio::test]
async fn every_family_is_pushed_over_otlp_http() {
    pushes_every_family("http/protobuf").await;
}

#[tokio::test]
async fn every_family_is_pushed_over_otlp_grpc() {
    pushes_every_family("grpc").await;
}
