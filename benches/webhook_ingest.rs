//! Durable webhook ingest: signed ~10 KB `workflow_job` deliveries posted to the real
//! service (receiver → SQLite queue with group commit → 202) over 1, 16 and 64 keep-alive
//! connections. Prints accepted deliveries/s and p50/p99 latency per level; the figures go in
//! docs/performance.md. Run: `cargo bench --bench webhook_ingest` (release).
//!
//! Environment: `INGEST_SECONDS` per level (default 10), `INGEST_LEVELS` (default 1,16,64),
//! `INGEST_DIR` for the database (default a temp dir; put it on the disk you measure).

use devmetrics::sim::webhooks::{Generator, signature};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let secs: u64 = std::env::var("INGEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let levels: Vec<usize> = std::env::var("INGEST_LEVELS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("INGEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "DEVMETRICS_STORAGE__PATH".into(),
        dir.join("ingest.db").display().to_string(),
    );
    env.insert("DEVMETRICS_WEBHOOKS__GITHUB__SECRET".into(), SECRET.into());
    env.insert("DEVMETRICS_LOG__LEVEL".into(), "warn".into());
    let cfg = devmetrics::config::load(None, &env, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let launched = devmetrics::app::launch(cfg, vec![listener], shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://{}/webhooks/github", launched.addrs[0]);

    // Pre-generated and pre-signed, so the load generator spends its CPU on HTTP only.
    let mut g = Generator::new(42);
    let bodies: Vec<(bytes::Bytes, String)> = (0..512)
        .map(|i| {
            let plan = g.run_plan(1_700_000_000.0 + i as f64, 1).remove(0);
            let b = g.job_payload(&plan, "completed", false);
            let s = signature(SECRET, &b);
            (bytes::Bytes::from(b), s)
        })
        .collect();
    let avg = bodies.iter().map(|b| b.0.len()).sum::<usize>() / bodies.len();
    let bodies = Arc::new(bodies);
    println!("payload: {avg} bytes on average (signed workflow_job, completed)");
    println!("| connections | accepted/s | p50 ms | p99 ms | non-202 |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let mut seq = 0u64;
    for c in levels {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for conn in 0..c {
            let (url, bodies) = (url.clone(), bodies.clone());
            let base = seq + conn as u64 * 10_000_000;
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut lat = Vec::new();
                let mut bad = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let (body, sig) = &bodies[(base + i) as usize % bodies.len()];
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "workflow_job")
                        .header("x-github-delivery", format!("bench-{}", base + i))
                        .header("x-hub-signature-256", sig.as_str())
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => {
                            lat.push(t.elapsed().as_secs_f64());
                        }
                        _ => bad += 1,
                    }
                    i += 1;
                }
                (lat, bad)
            }));
        }
        let started = Instant::now();
        let mut lat = Vec::new();
        let mut bad = 0;
        for t in tasks {
            let (l, b) = t.await.unwrap();
            lat.extend(l);
            bad += b;
        }
        let elapsed = started.elapsed().as_secs_f64();
        seq += 1_000_000_000;
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1000.0;
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {bad} |",
            lat.len() as f64 / elapsed,
            q(0.50),
            q(0.99)
        );
    }
    shutdown.cancel();
    launched.wait().await;
}
