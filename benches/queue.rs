//! Durable publish rate of the embedded queue with concurrent producers: every publish has
//! returned only after its fsync'd commit.
//!
//! Run: `cargo bench --bench queue`. Prints publishes/s for 1, 16 and 64 producers with 1 KB
//! and 10 KB JSON-like payloads.

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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for size in [1024, 10 * 1024] {
        for producers in [1, 16, 64] {
            let (rate, batch, commit_ms) = rt.block_on(run(producers, size, 5));
            println!(
                "payload {size:>5} B  producers {producers:>2}  {rate:>9.0} durable publishes/s  (mean group {batch:.1}, mean commit {commit_ms:.2} ms)"
            );
        }
    }
}
