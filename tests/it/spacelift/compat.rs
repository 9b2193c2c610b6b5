//! The replaced exporter's interface: environment, flags, dashboards, golden output, the example section.

use super::*;

#[test]
fn replaced_exporter_env_vars_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "abc\n").unwrap();
    let env: BTreeMap<String, String> = [
        (
            "SPACELIFT_PROMEX_API_ENDPOINT",
            "https://acme.app.spacelift.io/",
        ),
        ("SPACELIFT_PROMEX_API_KEY_ID", "01KEY"),
        (
            "SPACELIFT_PROMEX_API_KEY_SECRET_FILE",
            secret.to_str().unwrap(),
        ),
        ("SPACELIFT_PROMEX_SCRAPE_TIMEOUT", "7s"),
        ("SPACELIFT_PROMEX_LISTEN_ADDRESS", ":9953"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = devmetrics::config::load(None, &env, &Default::default()).unwrap();
    let s = c.spacelift.unwrap();
    assert_eq!(s.api_endpoint, "https://acme.app.spacelift.io/");
    assert_eq!(s.api_key_id, "01KEY");
    assert_eq!(s.scrape_timeout, Duration::from_secs(7));
    assert!(matches!(s.api_key_secret, SecretSource::File(_)));
    assert_eq!(
        c.web.listen_addresses,
        vec!["0.0.0.0:9953".parse().unwrap()]
    );

    let mut env2 = env.clone();
    env2.remove("SPACELIFT_PROMEX_API_KEY_SECRET_FILE");
    env2.insert("SPACELIFT_PROMEX_API_KEY_SECRET".into(), "zzsecret".into());
    env2.insert("SPACELIFT_PROMEX_SCRAPE_TIMEOUT".into(), "0s".into());
    let e = devmetrics::config::load(None, &env2, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("spacelift.scrape_timeout"), "{e}");
    assert!(e.contains("SPACELIFT_PROMEX_SCRAPE_TIMEOUT"), "{e}");
    assert!(!e.contains("zzsecret"));
}

#[test]
fn serve_flags_reach_the_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args([
            "check-config",
            "--spacelift.api-endpoint",
            "not a url",
            "--spacelift.api-key-id",
            "k",
            "--spacelift.api-key-secret",
            "flagsecret",
            "--spacelift.scrape-timeout",
            "3s",
        ])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("spacelift.api_endpoint"), "{msg}");
    assert!(msg.contains("flag --spacelift.api-endpoint"), "{msg}");
    assert!(!msg.contains("flagsecret"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in [
        "--spacelift.api-endpoint",
        "--spacelift.api-key-id",
        "--spacelift.api-key-secret",
        "--spacelift.api-key-secret-file",
        "--spacelift.scrape-timeout",
    ] {
        assert!(help.contains(f), "{f} missing from serve --help");
    }
}

#[test]
fn owned_dashboard_queries_match_the_replaced_dashboard() {
    let Some(p) = shared("spacelift/example-dashboard.json") else {
        return;
    };
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.insert(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = BTreeSet::new();
    walk(&d, &mut exprs);
    assert_eq!(exprs, owned_queries());
}

#[tokio::test]
async fn demo_metrics_serve_every_dashboard_query_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config_with(dir.path(), &[]);
    let demo = devmetrics::sim::demo::Demo::start(&mut cfg, 3)
        .await
        .unwrap();
    assert!(cfg.spacelift.is_some(), "demo points spacelift at the fake");
    let running = crate::support::start(cfg, "http").await;
    let c = reqwest::Client::new();
    let mut body = String::new();
    for _ in 0..100 {
        body = c
            .get(format!("{}/metrics", running.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("spacelift_scrape_collector_supported{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let series: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    // The demo's account grants per-stack data, so the demo shows those families too.
    assert!(
        series.contains(&"spacelift_scrape_collector_supported{collector=\"stacks\"} 1"),
        "{body}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.starts_with("spacelift_stack_state{")),
        "{body}"
    );
    let queries = owned_queries();
    assert!(queries.len() >= 14);
    for q in &queries {
        let needed = needs(q);
        assert!(!needed.is_empty(), "{q}");
        for (name, labels) in needed {
            let found = series.iter().any(|l| {
                let (n, rest) = l.split_at(l.find([' ', '{']).unwrap_or(l.len()));
                n == name && labels.iter().all(|lab| rest.contains(&format!("{lab}=\"")))
            });
            assert!(
                found,
                "{name} with {labels:?} (for `{q}`) missing from demo /metrics"
            );
        }
    }
    // The same, read by an independent OpenMetrics parser when one is installed.
    if let Some(py) = crate::support::python_with_parser() {
        let om = c
            .get(format!("{}/metrics", running.base))
            .header("Accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let parsed = parse_independently(&py, &om);
        for q in &queries {
            for (name, labels) in needs(q) {
                let fam = parsed["families"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|f| f["name"] == name.as_str())
                    .unwrap_or_else(|| panic!("{name} missing from the parsed OpenMetrics"));
                let sample = &fam["samples"][0];
                for l in &labels {
                    assert!(sample[1].get(l).is_some(), "{name} lacks {l}");
                }
            }
        }
    }
    let health = c
        .get(format!("{}/health", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), spacelift::HEALTH_BODY);
    running.stop().await;
    drop(demo);
}

/// The replaced exporter's golden output for its SaaS fixture, reproduced by our
/// conversions and encoder (scrape duration and build info excepted: they differ by nature).
#[test]
fn golden_output_of_the_replaced_exporter_is_reproduced() {
    let (Some(fixture), Some(golden)) = (
        shared("spacelift/index-fixtures/testdata/fixtures/saas.json"),
        shared("spacelift/index-fixtures/testdata/golden/saas.main-branch-derived.prom"),
    ) else {
        return;
    };
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let d = &v["data"];
    let mut samples = Vec::new();
    samples.extend(spacelift::public_worker_pool_samples(
        &serde_json::from_value(d["publicWorkerPool"].clone()).unwrap(),
    ));
    samples.extend(spacelift::worker_pool_samples(
        &serde_json::from_value::<Vec<_>>(d["workerPools"].clone()).unwrap(),
    ));
    samples.extend(spacelift::usage_samples(
        &serde_json::from_value(d["usage"].clone()).unwrap(),
    ));
    samples.extend(spacelift::aggregate_samples(
        &serde_json::from_value(d["metrics"].clone()).unwrap(),
    ));
    let mut scope = devmetrics::metrics::ScopeData {
        name: "t".into(),
        ..Default::default()
    };
    for s in samples {
        scope
            .families
            .entry(s.family)
            .or_default()
            .insert(s.labels, s.value);
    }
    let mut out = Vec::new();
    devmetrics::exposition::render(
        &[Arc::new(scope)],
        devmetrics::exposition::Format::Text,
        &mut out,
    )
    .unwrap();
    let ours = parse(&String::from_utf8(out).unwrap());
    let theirs: BTreeMap<String, f64> = parse(&std::fs::read_to_string(golden).unwrap())
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("spacelift_build_info") && !k.starts_with("spacelift_scrape_duration")
        })
        .collect();
    assert!(theirs.len() >= 24, "golden file parsed: {theirs:?}");
    assert_eq!(ours, theirs);
}

/// The commented spacelift section of `config example`, uncommented, is a valid config.
#[test]
fn example_spacelift_section_is_valid_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let out = crate::support::example_with_section(
        "spacelift",
        &[("/etc/devmetrics/spacelift-secret", secret.to_str().unwrap())],
    );
    assert!(out.contains("spacelift:\n  api_endpoint:"), "{out}");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, out).unwrap();
    let c = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("uncommented example loads");
    let s = c.spacelift.expect("section enabled");
    assert_eq!(s.stacks.series_budget, 10_000);
    assert!(s.collectors.attention && s.stacks.enabled);
}
