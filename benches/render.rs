//! `/metrics` render time and peak RSS for 10k, 100k and 1M series with labels
//! {org, repo, user}, in both formats, through the real HTTP server.
//!
//! Run: `cargo bench --bench render` (all sizes) or `cargo bench --bench render -- 1000000`.
//! Each (size, format) runs in a fresh child process so its peak RSS (VmHWM) is its own. The
//! figure covers the whole exporter process: SQLite store, in-memory state and the scrape.
//!
//! `RENDER_STORE=redis` measures a replica of the Redis store on 127.0.0.1:6379 instead: one
//! child process writes the series into a throwaway key prefix, then each (size, format)
//! child starts a replica on it (its start-up loads the mirror from Redis, timed as `load`)
//! and scrapes it; the prefix is deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devmetrics::metrics::Sample;
use devmetrics::metrics::{self, Labels};
use devmetrics::store::Store;

const REPOS_PER_ORG: usize = 100;
const USERS_PER_SCOPE: usize = 100;

fn family() -> metrics::FamilyId {
    metrics::GH_ACTIVITY_COMMITS_24H
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

async fn child(series: usize, format: &str, redis_prefix: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = devmetrics::config::Overrides::default();
    if let Some(prefix) = redis_prefix {
        o.set("storage.backend", "redis".into(), "bench");
        o.set("storage.redis.url", REDIS_URL.into(), "bench");
        o.set("storage.redis.key_prefix", prefix.into(), "bench");
    }
    o.set(
        "storage.path",
        dir.path().join("b.db").display().to_string().into(),
        "bench",
    );
    o.set("web.listen_addresses", "127.0.0.1:0".into(), "bench");
    o.set("log.level", "warn".into(), "bench");
    let cfg = devmetrics::config::load(None, &Default::default(), &o).unwrap();
    let listeners = devmetrics::app::bind(&cfg).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let load_started = Instant::now();
    let launched = devmetrics::app::launch(cfg, listeners, shutdown.clone())
        .await
        .unwrap();
    let addr = launched.addrs[0];
    let store = launched.state.store.clone();
    if redis_prefix.is_some() && format != "load" {
        // A replica: its start-up loaded every series Redis holds.
        let held = store
            .snapshot()
            .scopes
            .iter()
            .map(|s| s.series_count())
            .sum::<usize>();
        assert!(
            held >= series,
            "the replica holds {held} of {series} series"
        );
        scrape(addr, series, format, load_started.elapsed().as_secs_f64()).await;
        shutdown.cancel();
        launched.wait().await;
        return;
    }
    let fid = family();
    let scopes = series.div_ceil(USERS_PER_SCOPE);
    let load_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let store: Arc<dyn Store> = store;
    for s in 0..scopes {
        let store = store.clone();
        tasks.spawn(async move {
            let org = format!("org-{:02}", s / REPOS_PER_ORG);
            let repo = format!("repo-{:05}", s);
            let samples = (0..USERS_PER_SCOPE)
                .map(|u| {
                    let user = format!("user-{:06}", (s * 7 + u) % 200_000);
                    Sample::number(
                        fid,
                        Labels::new(fid, &[&org, &repo, &user]).unwrap(),
                        (u % 17) as f64,
                    )
                })
                .collect();
            store
                .replace_scope(&format!("bench/{org}/{repo}"), samples)
                .await
                .unwrap();
        });
        if tasks.len() >= 64 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let load_secs = load_started.elapsed().as_secs_f64();
    if format != "load" {
        scrape(addr, series, format, load_secs).await;
    } else {
        println!("{series:>9} series written to Redis in {load_secs:.1} s");
    }
    shutdown.cancel();
    launched.wait().await;
}

async fn scrape(addr: std::net::SocketAddr, series: usize, format: &str, load_secs: f64) {
    let accept = match format {
        "openmetrics" => "application/openmetrics-text;version=1.0.0",
        _ => "text/plain;version=0.0.4",
    };
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut times = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..5 {
        let started = Instant::now();
        let mut resp = client
            .get(format!("http://{addr}/metrics"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        bytes = 0;
        // Stream and discard: the scraper must not inflate this process's RSS.
        while let Some(chunk) = resp.chunk().await.unwrap() {
            bytes += chunk.len();
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{series:>9} series  {format:<11}  render+transfer min {:>8.1} ms  median {:>8.1} ms  body {:>6.1} MB  peak RSS {:>6.1} MB  (load {load_secs:.1} s)",
        ms(times[0]),
        ms(times[2]),
        bytes as f64 / 1e6,
        vm_hwm_kib() as f64 / 1024.0,
    );
}

/// Deletes every key under `prefix` (the hash tag the store puts around it included).
fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query(&mut c)
        .unwrap();
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK").arg(chunk).query(&mut c).unwrap();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let series: usize = args[1].parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(series, &args[2], args.get(3).map(String::as_str)));
        return;
    }
    let redis = std::env::var("RENDER_STORE").is_ok_and(|s| s == "redis");
    let sizes: Vec<usize> = if args.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        args.iter().filter_map(|a| a.parse().ok()).collect()
    };
    println!("family {}", metrics::family(family()).name);
    for size in sizes {
        let prefix = format!("devmetrics-bench-render-{}-{size}", std::process::id());
        let mut formats = vec!["text", "openmetrics"];
        if redis {
            formats.insert(0, "load");
        }
        for format in formats {
            let mut args = vec!["--child".to_string(), size.to_string(), format.to_string()];
            if redis {
                args.push(prefix.clone());
            }
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success());
        }
        if redis {
            delete_prefix(&prefix);
        }
    }
}
