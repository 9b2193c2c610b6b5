//! Soak, under webhook load and scrapes every 200 ms, sampled every few seconds: resident
//! memory, open file descriptors, the WAL's size and scrape latency must stay flat. Two
//! runs: `demo` (every fake upstream in the process, with its live CI, DORA and Copilot),
//! and `devmetrics serve` alone against live fakes in the test's process, which measures
//! the service without the simulators' growing worlds. `DEVMETRICS_SOAK_SECS` (default 90)
//! and `DEVMETRICS_SERVE_SOAK_SECS` (default 60) set their lengths; longer runs are recorded
//! in `docs/reliability.md`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    rss_kb: u64,
    fds: usize,
    wal: u64,
}

fn sample(pid: u32, wal: &std::path::Path) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let wal = std::fs::metadata(wal).map_or(0, |m| m.len());
    Sample { rss_kb, fds, wal }
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64) * 0.99) as usize)
        .or(v.last())
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn demo_under_load_stays_flat() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc to sample");
        return;
    }
    let secs = secs("DEVMETRICS_SOAK_SECS", 90);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("soak.db");
    let port = crate::compat::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["demo", "--seed", "1", "--web.listen-address"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--storage.path")
        .arg(&db)
        .env("DEVMETRICS_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(t.elapsed() < Duration::from_secs(60), "demo did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Extra deliveries on demo's own receiver and secret.
    let sender =
        devmetrics::sim::webhooks::Sender::new(format!("{base}/webhooks/github"), "demo-secret-1");
    let run = soak(
        child.id(),
        &base,
        &db.with_extension("db-wal"),
        secs,
        sender,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    run.check("demo", secs);
}

/// The service alone: GitHub activity and Copilot, Spacelift, DORA with its Backstage
/// catalog, and both sinks, each fake live in this process; demo's live CI (runs, pushes,
/// pull requests, deployments) and Jira incidents; and the same extra load as above.
#[tokio::test]
async fn serve_under_load_stays_flat() {
    use devmetrics::sim::{backstage, sinks, spacelift::SpaceliftFake};
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc to sample");
        return;
    }
    let secs = secs("DEVMETRICS_SERVE_SOAK_SECS", 60);
    let github = crate::faults::GithubRig::start(41).await;
    let live = github.sim.clone();
    let ticking = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            live.live_tick();
        }
    });
    let spacelift = SpaceliftFake::start(42, 24).await.unwrap();
    spacelift.sim.gate_stacks(false);
    spacelift.animate(Duration::from_secs(2));
    let catalog = backstage::start("", None, &[("acme/repo-000", "group:payments")])
        .await
        .unwrap();
    let (otlp, _spans) = sinks::otlp_receiver(43).await.unwrap();
    let (ai, _events) = sinks::appinsights_receiver(44).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("spacelift-secret");
    std::fs::write(&secret, devmetrics::sim::spacelift::KEY_SECRET).unwrap();
    let config = format!(
        "{github}\
         spacelift:\n  api_endpoint: {spacelift}\n  api_key_id: {key}\n  api_key_secret_file: {secret}\n  interval: 5s\n\
         dora:\n  teams: [{{name: Payments, github_repositories: [acme/api, acme/web], jira_projects: [PAY]}}, {{name: Platform, github_repositories: [acme/infra], jira_projects: [OPS]}}]\n  \
         four_keys_interval: 5s\n  jira: {{secret: soak-jira-secret, issue_types: [Incident]}}\n  \
         catalog: {{mode: backstage, endpoint: '{catalog}', refresh_interval: 30s}}\n\
         webhooks:\n  github:\n    secrets: [{{value: soak-secret}}]\n  sinks:\n    otlp: {{endpoint: '{otlp}'}}\n    \
         appinsights: {{connection_string: 'InstrumentationKey=soak;IngestionEndpoint={ai}/'}}\n",
        github = github
            .config(dir.path())
            .replace("scrape_interval: 1s", "scrape_interval: 15s"),
        spacelift = spacelift.base_url(),
        key = devmetrics::sim::spacelift::KEY_ID,
        secret = secret.display(),
        catalog = catalog.endpoint,
        otlp = otlp.base_url(),
        ai = ai.base_url(),
    );
    let mut service = crate::faults::Service::start(dir, &config).await;
    let sender = devmetrics::sim::webhooks::Sender::new(
        format!("{}/webhooks/github", service.base),
        "soak-secret",
    );
    let live = tokio_util::sync::CancellationToken::new();
    tokio::spawn(devmetrics::sim::webhooks::drive(
        sender.clone(),
        45,
        Duration::from_secs(4),
        live.clone(),
    ));
    tokio::spawn(devmetrics::sim::jira::drive(
        devmetrics::sim::jira::Sender::new(
            format!("{}/webhooks/jira", service.base),
            "soak-jira-secret",
        ),
        vec!["PAY".into(), "OPS".into()],
        Duration::from_secs(5),
        live.clone(),
    ));
    let run = soak(service.pid(), &service.base, &service.wal(), secs, sender).await;
    service.alive();
    live.cancel();
    ticking.abort();
    run.check("serve", secs);
}

fn secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    samples: Vec<Sample>,
    latencies: Vec<Vec<f64>>,
    sent: u64,
    accepted: u64,
}

/// About 40 workflow_job deliveries a second through `sender`, a scrape of `base` every
/// 200 ms, and the process `pid` sampled every 5 s, for `secs`.
async fn soak(
    pid: u32,
    base: &str,
    wal: &std::path::Path,
    secs: u64,
    sender: devmetrics::sim::webhooks::Sender,
) -> Run {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut g = devmetrics::sim::webhooks::Generator::new(77);
            let (mut sent, mut accepted) = (0u64, 0u64);
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let plans = g.run_plan(1_700_000_000.0 + i as f64, 5);
                for p in &plans {
                    let body = g.job_payload(p, "completed", false);
                    i += 1;
                    sent += 1;
                    if let Ok(202) = sender
                        .send("workflow_job", &format!("soak-{i}"), body)
                        .await
                    {
                        accepted += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (sent, accepted)
        }
    });
    let mut samples = Vec::new();
    let mut latencies: Vec<Vec<f64>> = Vec::new();
    let started = Instant::now();
    let mut window = Vec::new();
    let mut next_sample = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        window.push(t.elapsed().as_secs_f64());
        if Instant::now() >= next_sample {
            samples.push(sample(pid, wal));
            latencies.push(std::mem::take(&mut window));
            next_sample += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let (sent, accepted) = load.await.unwrap();
    Run {
        samples,
        latencies,
        sent,
        accepted,
    }
}

impl Run {
    fn check(&self, what: &str, secs: u64) {
        let (samples, latencies) = (&self.samples, &self.latencies);
        assert!(samples.len() >= 6, "{} samples", samples.len());
        let third = samples.len() / 3;
        let (early, late) = (&samples[third..2 * third], &samples[2 * third..]);
        let max_rss = |s: &[Sample]| s.iter().map(|x| x.rss_kb).max().unwrap_or(0);
        let max_fds = |s: &[Sample]| s.iter().map(|x| x.fds).max().unwrap_or(0);
        let lat = |ls: &[Vec<f64>]| p99(&mut ls.concat());
        let (lat_early, lat_late) = (
            lat(&latencies[..third.max(1)]),
            lat(&latencies[2 * third..]),
        );
        let wal_max = samples.iter().map(|s| s.wal).max().unwrap_or(0);
        eprintln!(
            "soak of {what}, {secs}s: {} deliveries ({} accepted); RSS {} → {} → {} KiB; fds {} → {}; WAL max {} KiB; scrape p99 {:.1} → {:.1} ms",
            self.sent,
            self.accepted,
            samples[0].rss_kb,
            max_rss(early),
            max_rss(late),
            max_fds(early),
            max_fds(late),
            wal_max / 1024,
            lat_early * 1e3,
            lat_late * 1e3
        );
        assert!(self.accepted > self.sent / 2, "the load was mostly refused");
        // Flat: the last third grows no more than a tenth (plus 16 MiB of slack) over the middle.
        assert!(
            max_rss(late) <= max_rss(early) + max_rss(early) / 10 + 16 * 1024,
            "memory grows"
        );
        assert!(
            max_fds(late) <= max_fds(early) + 16,
            "file descriptors leak"
        );
        assert!(
            wal_max < 64 * 1024 * 1024,
            "the WAL grew to {wal_max} bytes"
        );
        assert!(
            lat_late <= lat_early * 4.0 + 0.1,
            "scrape latency grew: p99 {lat_early} → {lat_late} s"
        );
    }
}
