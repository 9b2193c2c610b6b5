//! Durable publish rate of the embedded queue with concurrent producers: every publish has
//! returned only after its fsync'd commit.
//!
//! Run: `cargo bench --bench queue`. Prints publishes/s for 1, 16 and 64 producers with 1 KB
//! and 10 KB JSON-like payloads.
//!
//! `cargo bench --bench queue -- redis` measures the queue on Redis streams at
//! `REDIS_URL` (default `redis://127.0.0.1:6379/0`) instead, on a throwaway prefix it deletes
//! afterwards: a keyed publish one at a time, 16 concurrent publishers, 4 consumers receiving
//! and acking, and `stats`.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devmetrics::db::Db;
use devmetrics::queue::{Queue, RetryPolicy, sqlite::SqliteQueue};

fn payload(size: usize) -> Bytes {
    // JSON-shaped text, so compression sees what it would see in production.
    let mut s = String::from("{\"action\":\"completed\",\"workflow_job\":{");
    let mut i = 0;
    while s.len() < size - 2 {
        s.push_str(&format!(
            "\"field_{i}\":\"value-{}-{}\",",
            i * 7919 % 1000,
            i % 13
        ));
        i += 1;
    }
    s.truncate(size - 2);
    s.push_str("}}");
    Bytes::from(s)
}

async fn run(producers: usize, size: usize, secs: u64) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("q.db")).unwrap();
    let q = Arc::new(SqliteQueue::open(db.clone(), RetryPolicy::default()).unwrap());
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let body = payload(size);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for p in 0..producers {
        let (q, done, body) = (q.clone(), done.clone(), body.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("{p}-{i}");
                q.publish("bench", Some(&key), body.clone()).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed);
    let commits = db.stats.commits.load(Ordering::Relaxed);
    let hist = db.stats.commit_seconds.value();
    (
        n as f64 / started.elapsed().as_secs_f64(),
        n as f64 / commits as f64,
        hist.sum / commits as f64 * 1000.0,
    )
}

/// The queue on Redis streams: keyed publishes one at a time and concurrently, then
/// consumers draining what was published.
async fn redis() {
    use devmetrics::queue::redis::{DEFAULT_VISIBILITY_TIMEOUT, RedisQueue, Settings};
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("devmetrics-bench-{:08x}", rand::random::<u32>());
    let settings = Settings {
        redis: devmetrics::config::RedisConfig {
            url: devmetrics::config::Secret::new(url.clone()),
            key_prefix: prefix.clone(),
            sentinel: None,
            ca_pem: None,
        },
        url_key: "REDIS_URL".into(),
        policy: RetryPolicy::default(),
        max_depth: 10_000_000,
        visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
    };
    let q = Arc::new(RedisQueue::open(settings).await.unwrap());
    let body = payload(1024);
    let n = 2_000;
    let started = Instant::now();
    for i in 0..n {
        q.publish("bench", Some(&format!("one-{i}")), body.clone())
            .await
            .unwrap();
    }
    let one = started.elapsed() / n;
    println!("redis streams: keyed publish one at a time, 1 KB: {one:?} each");
    for producers in [16] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..producers {
            let (q, done, body) = (q.clone(), done.clone(), body.clone());
            tasks.spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    q.publish("bench", Some(&format!("{producers}-{p}-{i}")), body.clone())
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!("redis streams: {producers} publishers, 1 KB keyed: {rate:.0} publishes/s");
    }
    let started = Instant::now();
    let s = q.stats().await.unwrap();
    println!("redis streams: stats: {:?}", started.elapsed());
    let queued = s[0].1.depth;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (q, done) = (q.clone(), done.clone());
        tasks.spawn(async move {
            while let Ok(Ok(d)) =
                tokio::time::timeout(Duration::from_millis(500), q.receive("bench")).await
            {
                d.ack().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let took = started.elapsed().saturating_sub(Duration::from_millis(500));
    let n = done.load(Ordering::Relaxed);
    assert_eq!(n, queued, "every message consumed");
    println!(
        "redis streams: 4 consumers received and acked {n} in {took:.1?}: {:.0}/s",
        n as f64 / took.as_secs_f64()
    );
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut c)
        .await
        .unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "redis") {
        rt.block_on(redis());
        return;
    }
    for size in [1024, 10 * 1024] {
        for producers in [1, 16, 64] {
            let (rate, batch, commit_ms) = rt.block_on(run(producers, size, 5));
            println!(
                "payload {size:>5} B  producers {producers:>2}  {rate:>9.0} durable publishes/s  (mean group {batch:.1}, mean commit {commit_ms:.2} ms)"
            );
        }
    }
}
