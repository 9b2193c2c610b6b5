//! `/metrics` output checked by an independent parser (Python prometheus_client), for every
//! family in the catalog, in both formats, plain and gzipped.

use std::collections::BTreeMap;
use std::io::Read;

use std::sync::Arc;

use devmetrics::exposition::{self, Format};
use devmetrics::metrics::{FAMILIES, FamilyId, Kind, Labels};
use devmetrics::metrics::{HistogramValue, Sample, ScopeData, Value};

use crate::support;

/// Label values that exercise escaping: quote, backslash, newline, non-ASCII.
const NASTY: &str = "a\"b\\c\nd é";

fn sample_for(i: usize) -> Sample {
    let def = &FAMILIES[i];
    let fid = FamilyId(i as u16);
    let values: Vec<String> = def
        .labels
        .iter()
        .enumerate()
        .map(|(j, _)| {
            if j == 0 {
                NASTY.to_string()
            } else {
                format!("v{j}")
            }
        })
        .collect();
    let labels = Labels::new(fid, &values).unwrap();
    let value = match def.kind {
        Kind::Histogram => {
            let mut h = HistogramValue::new(def.buckets);
            h.observe(def.buckets, def.buckets[0] / 2.0);
            h.observe(def.buckets, def.buckets[def.buckets.len() - 1] * 2.0);
            Value::Histogram(Box::new(h))
        }
        _ => Value::Number(42.5),
    };
    Sample {
        family: fid,
        labels,
        value,
    }
}

fn parse(py: &std::path::Path, format: &str, body: &str) -> serde_json::Value {
    support::parse_exposition(py, format, body)
}

fn scopes_with_every_family() -> Vec<Arc<ScopeData>> {
    // Each family in its own scope, as sources do.
    (0..FAMILIES.len())
        .map(|i| {
            let s = sample_for(i);
            let mut families = BTreeMap::new();
            families.insert(s.family, BTreeMap::from([(s.labels, s.value)]));
            Arc::new(ScopeData {
                name: Arc::from(format!("test/{i}").as_str()),
                updated_at: 0.0,
                version: 0,
                families,
                ..Default::default()
            })
        })
        .collect()
}

/// Every family of the catalog, with hostile label values, rendered by our encoder and read
/// back by prometheus_client in both formats: types, units, values and labels must survive.
#[test]
fn every_family_parses_in_both_formats() {
    let Some(py) = support::python_with_parser() else {
        return;
    };
    let scopes = scopes_with_every_family();
    for (format, fmt) in [("openmetrics", Format::OpenMetrics), ("text", Format::Text)] {
        let mut out = Vec::new();
        exposition::render(&scopes, fmt, &mut out).unwrap();
        let body = String::from_utf8(out).unwrap();
        let parsed = parse(&py, format, &body);
        let families: BTreeMap<String, &serde_json::Value> = parsed["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_string(), f))
            .collect();
        assert_eq!(families.len(), FAMILIES.len(), "{format}: {body}");
        for def in FAMILIES {
            // prometheus_client names counter families without `_total` in both parsers.
            let key = match def.kind {
                Kind::Counter => def.name.trim_end_matches("_total").to_string(),
                _ => def.name.to_string(),
            };
            let fam = families
                .get(&key)
                .unwrap_or_else(|| panic!("{format}: {key} missing"));
            let samples = fam["samples"].as_array().unwrap();
            let first_label = def.labels.first().copied();
            match def.kind {
                Kind::Histogram => {
                    assert_eq!(fam["type"], "histogram");
                    // buckets + +Inf + _sum + _count
                    assert_eq!(samples.len(), def.buckets.len() + 3, "{key}");
                    let count = samples
                        .iter()
                        .find(|s| s[0].as_str().unwrap().ends_with("_count"))
                        .unwrap();
                    assert_eq!(count[2].as_f64(), Some(2.0));
                    let inf = samples.iter().find(|s| s[1]["le"] == "+Inf").unwrap();
                    assert_eq!(inf[2].as_f64(), Some(2.0));
                }
                _ => {
                    assert_eq!(samples.len(), 1, "{key}: {samples:?}");
                    // prometheus_client's text parser files a counter's sample under
                    // `<name>_total` even when the exposition (like Go's) has no suffix.
                    let legacy_text = def.kind == Kind::LegacyCounter && format == "text";
                    let want = if legacy_text {
                        format!("{}_total", def.name)
                    } else {
                        def.name.to_string()
                    };
                    assert_eq!(samples[0][0].as_str(), Some(want.as_str()), "{key}");
                    if legacy_text {
                        assert!(body.contains(&format!("\n{}{{", def.name)), "{key}");
                    }
                    assert_eq!(samples[0][2].as_f64(), Some(42.5), "{key}");
                    let expected_type = match (def.kind, format) {
                        (Kind::LegacyCounter, "openmetrics") => "unknown",
                        (Kind::LegacyCounter | Kind::Counter, _) => "counter",
                        _ => "gauge",
                    };
                    assert_eq!(fam["type"], expected_type, "{key}");
                }
            }
            if let Some(l) = first_label {
                assert_eq!(samples[0][1][l].as_str(), Some(NASTY), "{key} label {l}");
            }
            if format == "openmetrics" {
                assert_eq!(
                    fam["unit"].as_str().unwrap_or(""),
                    def.unit.unwrap_or(""),
                    "{key}"
                );
            }
        }
    }
}

/// The live endpoint: negotiation, content types, gzip, and output the parser accepts.
#[tokio::test]
async fn live_endpoint_negotiates_and_compresses() {
    let Some(py) = support::python_with_parser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let store = running.launched.as_ref().unwrap().state.store.clone();
    for (i, def) in FAMILIES.iter().enumerate() {
        if def.source != "core" {
            store
                .replace_scope(&format!("test/{i}"), vec![sample_for(i)])
                .await
                .unwrap();
        }
    }
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    client
        .get(format!("{}/metrics", running.base))
        .send()
        .await
        .unwrap();
    for (format, accept) in [
        (
            "openmetrics",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ),
        ("text", "text/plain;version=0.0.4"),
    ] {
        for gzip in [false, true] {
            let mut req = client
                .get(format!("{}/metrics", running.base))
                .header("accept", accept);
            if gzip {
                req = req.header("accept-encoding", "gzip");
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            let encoding = resp
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            let raw = resp.bytes().await.unwrap();
            let body = if gzip {
                assert_eq!(encoding.as_deref(), Some("gzip"));
                let mut s = String::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_string(&mut s)
                    .unwrap();
                s
            } else {
                assert_eq!(encoding, None);
                String::from_utf8(raw.to_vec()).unwrap()
            };
            if format == "openmetrics" {
                assert!(
                    ct.starts_with("application/openmetrics-text; version=1.0.0"),
                    "{ct}"
                );
                assert!(body.ends_with("# EOF\n"));
            } else {
                assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
            }
            let parsed = parse(&py, format, &body);
            let names: Vec<&str> = parsed["families"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert!(names.contains(&"devmetrics_build_info"), "{body}");
            assert!(names.contains(&"devmetrics_http_requests"), "{body}");
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn own_telemetry_parses_and_counts_requests() {
    let Some(py) = support::python_with_parser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        client
            .get(format!("{}/livez", running.base))
            .send()
            .await
            .unwrap();
    }
    client
        .get(format!("{}/nope", running.base))
        .send()
        .await
        .unwrap();
    let body = client
        .get(format!("{}/metrics", running.base))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed = parse(&py, "openmetrics", &body);
    let reqs = parsed["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "devmetrics_http_requests")
        .expect("request counter");
    let count = |route: &str, code: &str| {
        reqs["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s[0] == "devmetrics_http_requests_total"
                    && s[1]["route"] == route
                    && s[1]["code"] == code
            })
            .and_then(|s| s[2].as_f64())
    };
    assert_eq!(count("/livez", "200"), Some(3.0));
    assert_eq!(count("other", "404"), Some(1.0));
    assert!(body.contains("devmetrics_build_info{version=\""));
    running.stop().await;
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn prometheus_value(client: &reqwest::Client, base: &str, query: &str) -> Option<f64> {
    let v: serde_json::Value = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A real Prometheus scrapes with its own negotiation (OpenMetrics first, gzip) and stores
/// every series of the compressed body, before and after a scope changes; its scrapes of
/// unchanged scopes reuse their kept parts.
#[tokio::test]
async fn a_real_prometheus_ingests_the_compressed_scrape() {
    let Some(()) = support::tool("prometheus", "--version", "Debian: apt install prometheus")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let store = running.launched.as_ref().unwrap().state.store.clone();
    let fid = devmetrics::metrics::GH_ACTIVITY_COMMITS_24H;
    let write = |repo: usize, bump: f64| {
        let store = store.clone();
        async move {
            let samples = (0..100)
                .map(|u| {
                    let labels =
                        Labels::new(fid, &["org", &format!("r{repo}"), &format!("u{u}")]).unwrap();
                    Sample::number(fid, labels, u as f64 + bump)
                })
                .collect();
            store
                .replace_scope(&format!("test/r{repo}"), samples)
                .await
                .unwrap();
        }
    };
    for r in 0..200 {
        write(r, 0.0).await;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = running.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: devmetrics\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let prometheus = Child(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let wait_for = |query: &'static str, want: f64| {
        let client = client.clone();
        let prom = prom.clone();
        async move {
            let mut last = None;
            for _ in 0..600 {
                last = prometheus_value(&client, &prom, query).await;
                if last == Some(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("Prometheus answers {query} = {last:?}, not {want}");
        }
    };
    wait_for("count(gh_activity_commits_24h)", 20_000.0).await;
    wait_for("sum(gh_activity_commits_24h)", 200.0 * 4950.0).await;
    wait_for("min(up)", 1.0).await;
    write(7, 1000.0).await;
    wait_for(
        "sum(gh_activity_commits_24h)",
        200.0 * 4950.0 + 100.0 * 1000.0,
    )
    .await;
    wait_for("count(gh_activity_commits_24h)", 20_000.0).await;
    // Stopped first, so no scrape of its is half counted below.
    drop(prometheus);

    let own = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(format!("{}/metrics", running.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The series of `family` whose labels hold every one of `labels`.
    let value = |family: &str, labels: [&str; 2]| {
        support::series(&own, family)
            .into_iter()
            .find(|(k, _)| labels.iter().all(|l| k.contains(l)))
            .map(|(_, v)| v)
    };
    let gzip = "devmetrics_exposition_gzip_scopes_total";
    let counts = support::series(&own, gzip);
    let reused = value(gzip, ["format=\"openmetrics\"", "result=\"reused\""]).unwrap_or(0.0);
    let encoded = value(gzip, ["format=\"openmetrics\"", "result=\"encoded\""]).unwrap_or(0.0);
    // This scrape's own request is counted after its telemetry was read, so the count is
    // Prometheus' scrapes, all compressed. The first compressed the 200 scopes, each
    // compressed the exporter's own scope, and the first after the change compressed the
    // changed scope again; every other scope was reused.
    let scrapes = value(
        "devmetrics_http_requests_total",
        ["route=\"/metrics\"", "code=\"200\""],
    )
    .unwrap();
    assert!(scrapes >= 2.0, "{scrapes}");
    assert_eq!(
        encoded,
        200.0 + scrapes + 1.0,
        "{counts:?} after {scrapes} scrapes"
    );
    assert_eq!(
        reused,
        200.0 * (scrapes - 1.0) - 1.0,
        "{counts:?} after {scrapes} scrapes"
    );
    running.stop().await;
}
