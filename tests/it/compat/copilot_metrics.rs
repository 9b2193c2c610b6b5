//! copilot-metrics-exporter: its README's `docker run` (GHC_TOKEN, ORG, CACHE_TTL_SECONDS,
//! port 8000) through the real binary, against the GitHub fake's Copilot reports.

use super::*;
use devmetrics::sim::github::copilot::{CopilotData, day_of};
use devmetrics::sim::github::{GithubSim, OrgSpec};

fn tool() -> &'static Tool {
    devmetrics::compat::tool("copilot-metrics-exporter").unwrap()
}

const TOKEN: &str = "ghp_copilotMetricsExporterToken";

#[tokio::test]
async fn copilot_metrics_exporter_serves_its_port_counters_and_gauges() {
    let _ports = DEFAULT_PORTS.lock().await;
    if !port_free(tool().default_port) {
        return;
    }
    let now = devmetrics::clock::now_secs();
    let sim = GithubSim::new(
        9,
        devmetrics::clock::Clock::system(),
        &[OrgSpec::small("acme")],
    );
    *sim.pat.lock() = Some(TOKEN.into());
    let data = CopilotData::generate(4, now, 6, 30);
    sim.copilot.data.lock().insert("acme".into(), data.clone());
    let downloads = devmetrics::sim::FakeServer::start(
        "copilot-downloads",
        sim.copilot.downloads.router(),
        devmetrics::sim::Faults::new(9),
    )
    .await
    .unwrap();
    *sim.copilot.download_base.lock() = downloads.base_url();
    let api =
        devmetrics::sim::FakeServer::start("github", sim.router(), devmetrics::sim::Faults::new(9))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "copilot-metrics-exporter");
    let log = dir.path().join("stderr.log");
    let _p = Proc(
        std::process::Command::new(bin)
            .current_dir(dir.path())
            .env("GHC_TOKEN", TOKEN)
            .env("ORG", "acme")
            .env("CACHE_TTL_SECONDS", "3600")
            .env("DEVMETRICS_GITHUB__API_BASE_URL", api.base_url())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{}", tool().default_port);
    answer_when_listening(&format!("{base}/metrics")).await;
    // Its /test_metrics moves the failure counter, which has no series before a failure.
    check_get_endpoints(tool(), &base).await;
    let text = wait_for_families(&base, tool(), 20).await;
    let om = get(&format!("{base}/metrics"), Some(OPENMETRICS))
        .await
        .unwrap()
        .1;
    check_exposition(tool(), &text, &om);
    // The gauges are the fake's latest complete day.
    let yesterday = day_of(now - now.rem_euclid(86_400) - 86_400);
    let active = data.rows.iter().filter(|r| r.day == yesterday).count();
    let line = format!(
        "total_active_users{{editor=\"\",language=\"\",stream=\"\",org=\"acme\"}} {active}"
    );
    assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    let text = get(&format!("{base}/metrics"), None).await.unwrap().1;
    assert!(
        text.contains("copilot_exporter_requests_failed_total{status_code=\"test\"} 1"),
        "{text}"
    );
    // Only reports were asked of GitHub (the org's activity is not polled), never with the
    // token at the download host.
    assert!(
        api.requests.all().keys().all(|k| k.contains("copilot")),
        "{:?}",
        api.requests.all()
    );
    assert_eq!(
        sim.copilot
            .downloads
            .with_authorization
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains(TOKEN), "{log}");
}

#[test]
fn copilot_metrics_exporter_needs_its_token_and_org() {
    let env: std::collections::BTreeMap<String, String> =
        [("ORG".to_string(), "acme".to_string())].into();
    let e = devmetrics::compat::invoke(tool().name, &[], &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GHC_TOKEN"), "{e}");
}
