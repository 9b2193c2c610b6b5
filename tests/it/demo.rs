//! The README's first command: `devmetrics demo` serves metrics from every simulated
//! upstream that an independent OpenMetrics parser accepts, and they keep changing.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

/// Families each source must show in the demo, by source.
const EXPECTED: &[&str] = &[
    "devmetrics_build_info",
    "devmetrics_source_up",
    "devmetrics_source_last_success_timestamp_seconds",
    "gh_activity_commits_24h",
    "gh_activity_loc_added_weekly",
    "gh_activity_last_event_unixtime",
    "devmetrics_github_rate_limit_remaining",
    "spacelift_worker_pool_workers",
    "spacelift_current_stacks_count_by_state",
];

fn parse_names(py: &std::path::Path, body: &str) -> Vec<String> {
    let v = support::parse_exposition(py, "openmetrics", body);
    v["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn demo_binary_serves_parseable_live_metrics() {
    let Some(py) = support::python_with_parser() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["demo", "--web.listen-address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let fetch = || async {
            client
                .get(&url)
                .header("accept", "application/openmetrics-text;version=1.0.0")
                .send()
                .await?
                .text()
                .await
        };
        // Wait until every source has produced its first scrape.
        let mut body = String::new();
        for _ in 0..200 {
            if let Ok(b) = fetch().await
                && EXPECTED.iter().all(|f| b.contains(&format!("\n{f}")))
            {
                body = b;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let later = fetch().await.unwrap_or_default();
        (body, later)
    });
    let _ = child.kill();
    let _ = child.wait();
    let (body, later) = result;
    assert!(!body.is_empty(), "demo never showed every expected family");
    let names = parse_names(&py, &body);
    for f in EXPECTED {
        assert!(
            names.iter().any(|n| n == f),
            "{f} missing from demo: {names:?}"
        );
    }
    parse_names(&py, &later);
    // Live activity: the simulated upstreams changed something within a few seconds.
    let values = |b: &str| -> Vec<String> {
        b.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("devmetrics_"))
            .map(str::to_string)
            .collect()
    };
    assert_ne!(values(&body), values(&later), "demo values did not change");
}
