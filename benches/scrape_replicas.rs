//! GitHub scrape throughput with 1, 2 and 3 replicas sharing Redis (store, lease) and
//! RabbitMQ (queue): every replica runs in this process on its own listener, the leader
//! spreads the org's cold cycle over `github/scrape` jobs, and the bench times the cycle.
//! Prints repos per minute per replica count; the figures go in docs/performance.md.
//! Run: `cargo bench --bench scrape_replicas` (release; needs Redis on 127.0.0.1:6379 and
//! RabbitMQ on 127.0.0.1:5672, guest/guest).
//!
//! Environment: `SCRAPE_REPOS` (default 120), `SCRAPE_DELAY_MS` added to every answer of the
//! fake, as GitHub's own latency (default 50), `SCRAPE_REPLICAS` (default 1,2,3),
//! `SCRAPE_BATCH` repos per job (default 5), `SCRAPE_CONCURRENCY` per job (default 4).

use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::{FakeServer, Faults};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let repos: usize = env("SCRAPE_REPOS", 120);
    let delay: u64 = env("SCRAPE_DELAY_MS", 50);
    let batch: usize = env("SCRAPE_BATCH", 5);
    let concurrency: usize = env("SCRAPE_CONCURRENCY", 4);
    let levels: Vec<usize> = std::env::var("SCRAPE_REPLICAS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/test-app-key.pem");
    println!(
        "org of {repos} repos, {delay} ms per answer, jobs of {batch} repos, {concurrency} at a time per job"
    );
    println!("| replicas | cold cycle | repos/min | requests | jobs per replica |");
    println!("| ---: | ---: | ---: | ---: | --- |");
    for n in levels {
        // A fresh org, fake and key prefix per level: every level scrapes cold.
        let mut spec = OrgSpec::small("acme");
        spec.repos = repos;
        spec.active = repos / 2;
        spec.users = 40;
        spec.prs_max = 60;
        let sim = GithubSim::new(21, devmetrics::clock::Clock::system(), &[spec]);
        let faults = Faults::new(21);
        faults.delay_ms.store(delay, Ordering::Relaxed);
        let fake = FakeServer::start("github", sim.router(), faults)
            .await
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let prefix = format!("devmetrics-bench-scrape-{}-{n}", std::process::id());
        let shutdown = CancellationToken::new();
        let mut launched = Vec::new();
        for i in 0..n {
            let yaml = format!(
                "log: {{level: warn}}\n\
                 ha: {{lease_ttl: 10s, replica_id: r{i}}}\n\
                 storage:\n  backend: redis\n  path: {}\n  redis: {{url: 'redis://127.0.0.1:6379/0', key_prefix: {prefix}}}\n\
                 queue:\n  backend: rabbitmq\n  rabbitmq: {{url: 'amqp://guest:guest@127.0.0.1:5672/%2f', prefix: {prefix}, test_queue_expiry: 5m}}\n\
                 github:\n  api_base_url: {}\n  scrape_jobs: {{batch_size: {batch}}}\n  orgs:\n    - org: acme\n      app_id: {APP_ID}\n      installation_id: {INSTALLATION_ID}\n      private_key_path: {}\n      scrape_interval: 1h\n      per_org_concurrency: {concurrency}\n",
                tmp.path().join(format!("r{i}.db")).display(),
                fake.base_url(),
                key.display()
            );
            let file = tmp.path().join(format!("r{i}.yaml"));
            std::fs::write(&file, yaml).unwrap();
            let cfg =
                devmetrics::config::load(Some(&file), &Default::default(), &Default::default())
                    .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            launched.push(
                devmetrics::app::launch(cfg, vec![listener], shutdown.clone())
                    .await
                    .unwrap(),
            );
        }
        let started = Instant::now();
        let cycle = loop {
            // The leader's own record of its first cycle.
            let health = launched
                .iter()
                .filter(|l| l.state.leadership.is_leader())
                .filter_map(|l| l.state.telemetry.sources().get("github/acme").cloned())
                .find(|h| h.scrapes > 0);
            if let Some(h) = health {
                break h.last_duration_seconds;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "no cycle finished in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut jobs = Vec::new();
        for l in &launched {
            let stats = l.state.queue.stats().await.unwrap_or_default();
            jobs.push(
                stats
                    .iter()
                    .find(|(t, _)| t == "github/scrape")
                    .map_or(0, |(_, s)| s.acked),
            );
        }
        println!(
            "| {n} | {cycle:.1} s | {:.0} | {} | {jobs:?} |",
            repos as f64 / cycle * 60.0,
            sim.counted()
        );
        shutdown.cancel();
        for l in launched {
            l.wait().await;
        }
    }
}
