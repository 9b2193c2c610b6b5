//! github-stats-exporter: its manifests' command line (`--config=…`) and its own config file,
//! through the real binary.

use super::*;
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};

fn tool() -> &'static Tool {
    devmetrics::compat::tool("github-stats-exporter").unwrap()
}

/// The author's `config/local.yaml`, every section as shipped, pointed at the fake: the
/// API URL, one org with the fake's App, the in-memory store and no broker.
fn legacy_config(api: &str, listen: Option<&str>) -> String {
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
    let listen = listen
        .map(|l| format!("  listen_addr: \"{l}\"\n"))
        .unwrap_or_default();
    format!(
        r#"---
server:
{listen}  log_level: "info"
metrics:
  topology: "single_service_target"
  scrape_service_dns: "localhost:8080"
leader_election:
  enabled: false
  namespace: "github-stats-exporter"
  lease_name: "github-stats-exporter-leader"
  lease_duration: "30s"
  renew_deadline: "20s"
  retry_period: "5s"
github:
  api_base_url: "{api}"
  request_timeout: "20s"
  unhealthy_failure_threshold: 6
  unhealthy_cooldown: "2m"
  orgs:
    - org: "acme"
      app_id: {APP_ID}
      installation_id: {INSTALLATION_ID}
      private_key_path: "{key}"
      scrape_interval: "5m"
      repo_allowlist: ["*"]
      per_org_concurrency: 4
rate_limit:
  min_remaining_threshold: 200
  min_reset_buffer: "10s"
  secondary_limit_backoff: "60s"
retry:
  max_attempts: 5
  initial_backoff: "2s"
  max_backoff: "30s"
  jitter: true
loc:
  source: "stats_contributors"
  refresh_interval: "24h"
  fallback_enabled: true
  fallback_max_commits_per_repo_per_week: 250
  fallback_max_commit_detail_calls_per_org_per_hour: 1000
  large_repo_zero_detection_windows: 2
  large_repo_cooldown: "7d"
copilot:
  enabled: true
  scrape_interval: "6h"
  include_org_28d: true
  include_org_users_28d: true
  include_pull_request_activity: true
  user_label_mode: "hashed"
  max_records_per_report: 0
  max_users_per_report: 0
  enterprise:
    enabled: false
backfill:
  enabled: true
  max_message_age: "24h"
  consumer_count: 2
  requeue_delays: ["1m", "5m", "30m", "2h"]
  coalesce_window: "15m"
  dedup_ttl: "12h"
  max_enqueues_per_org_per_minute: 100
amqp:
  url: ""
  exchange: "gh.backfill"
  queue: "gh.backfill.jobs"
  dlq: "gh.backfill.dlq"
store:
  backend: "memory"
  redis_mode: "standalone"
  retention: "30d"
  metric_refresh_interval: "30s"
  index_shards: 64
  export_cache_mode: "incremental"
  max_series_budget: 500000
health:
  github_probe_interval: "30s"
  github_recover_success_threshold: 3
telemetry:
  otel_enabled: false
  otel_exporter_otlp_endpoint: ""
  otel_trace_mode: "off"
  otel_trace_sample_ratio: 0.05
"#,
        key = key.display()
    )
}

/// The GitHub fake with Copilot reports for acme, and the signed-URL host serving them.
async fn github_fake() -> (devmetrics::sim::FakeServer, devmetrics::sim::FakeServer) {
    let sim = GithubSim::new(
        5,
        devmetrics::clock::Clock::system(),
        &[OrgSpec::small("acme")],
    );
    let data = devmetrics::sim::github::copilot::CopilotData::generate(
        3,
        devmetrics::clock::now_secs(),
        4,
        30,
    );
    sim.copilot.data.lock().insert("acme".into(), data);
    let downloads = devmetrics::sim::FakeServer::start(
        "copilot-downloads",
        sim.copilot.downloads.router(),
        devmetrics::sim::Faults::new(5),
    )
    .await
    .unwrap();
    *sim.copilot.download_base.lock() = downloads.base_url();
    let api =
        devmetrics::sim::FakeServer::start("github", sim.router(), devmetrics::sim::Faults::new(5))
            .await
            .unwrap();
    (api, downloads)
}

fn start(dir: &Path, args: &[&str]) -> (Proc, PathBuf) {
    let bin = persona(dir, "github-stats-exporter");
    let log = dir.join("stderr.log");
    let child = std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("GITHUB_STATS_INITIAL_ROLE", "leader")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), log)
}

/// The Deployment's `args: ["--config=…"]` with the tool's own config file: its endpoints,
/// port and `gh_activity_*` families with exactly `org`, `repo`, `user`, in both formats.
#[tokio::test]
async fn github_stats_exporter_serves_its_endpoints_and_families() {
    let (fake, _downloads) = github_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        legacy_config(&fake.base_url(), Some(&format!("127.0.0.1:{port}"))),
    )
    .unwrap();
    let (_p, log) = start(dir.path(), &[&format!("--config={}", file.display())]);
    let base = format!("http://127.0.0.1:{port}");
    let text = wait_for_families(&base, tool(), 30).await;
    let (_, om) = get(&format!("{base}/metrics"), Some(OPENMETRICS))
        .await
        .unwrap();
    check_exposition(tool(), &text, &om);
    check_get_endpoints(tool(), &base).await;
    let (_, healthz) = get(&format!("{base}/healthz"), None).await.unwrap();
    let h: serde_json::Value = serde_json::from_str(&healthz).unwrap();
    assert_eq!(h["role"], "leader", "{h}");
    assert_eq!(h["mode"], "healthy", "{h}");
    assert_eq!(h["ready"], true, "{h}");
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.matches("GITHUB_STATS_INITIAL_ROLE").count(),
        1,
        "one warning for the static role:\n{log}"
    );
}

/// `-config file` (Go's other spelling) and a file without `server.listen_addr`: the
/// tool's port, 8080.
#[tokio::test]
async fn github_stats_exporter_listens_on_8080_by_default() {
    let _port = DEFAULT_PORTS.lock().await;
    if !port_free(tool().default_port) {
        return;
    }
    let (fake, _downloads) = github_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.yaml");
    std::fs::write(&file, legacy_config(&fake.base_url(), None)).unwrap();
    let (_p, _) = start(dir.path(), &["-config", file.to_str().unwrap()]);
    let base = format!("http://127.0.0.1:{}", tool().default_port);
    let text = wait_for_families(&base, tool(), 30).await;
    assert!(text.contains("gh_activity_commits_24h{"), "{text}");
}

#[test]
fn github_stats_exporter_help_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "github-stats-exporter");
    let out = std::process::Command::new(&bin).arg("-h").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("GITHUB_STATS_INITIAL_ROLE"), "{help}");
    // The default file, config/local.yaml, is missing here: the error names it.
    let out = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config/local.yaml"));
    let out = std::process::Command::new(&bin)
        .arg("-listen")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("flag provided but not defined: -listen")
    );
}
