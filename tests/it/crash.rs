//! SIGKILL at an arbitrary point loses nothing that was reported durable and applies nothing
//! twice. The load generators are the real binary (`devmetrics debug ...`), printing each
//! operation after it committed.

use crate::support::Backend;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use devmetrics::db::Db;
use devmetrics::metrics::Labels;
use devmetrics::metrics::Value;
use devmetrics::queue::{Queue, RetryPolicy, sqlite::SqliteQueue};
use devmetrics::store::{Store, sqlite::SqliteStore};

/// Runs `devmetrics debug <args>`, SIGKILLs it after `kill_after` lines (or lets it finish
/// with `None`), and returns the keys it reported as done.
fn run_load(
    args: &[&str],
    db: &Path,
    kill_after: Option<usize>,
) -> (HashSet<String>, HashSet<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .arg("debug")
        .args(args)
        .arg("--storage.path")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut done = HashSet::new();
    let mut dups = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let (what, key) = line.split_once(' ').unwrap();
        match what {
            "applied" | "published" => {
                assert!(done.insert(key.to_string()), "{key} reported twice")
            }
            "duplicate" => {
                dups.insert(key.to_string());
            }
            other => panic!("unexpected line {other}"),
        }
        if kill_after.is_some_and(|n| done.len() + dups.len() >= n) {
            // std's kill() sends SIGKILL on Unix: no destructor, no flush, no checkpoint.
            child.kill().unwrap();
            break;
        }
    }
    let status = child.wait().unwrap();
    if kill_after.is_none() {
        assert!(status.success());
    }
    (done, dups)
}

#[test]
fn store_sigkill_loses_no_applied_update_and_applies_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let keys = 20_000;
    let (first, _) = run_load(
        &["store-load", "--keys", &keys.to_string()],
        &db,
        Some(3_000),
    );
    assert!(first.len() >= 3_000 - 64);

    let read = || {
        let store = SqliteStore::open(Db::open(&db).unwrap()).unwrap();
        match store.snapshot().get(
            "crash-test",
            devmetrics::metrics::DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL,
            &Labels::empty(),
        ) {
            Some(Value::Number(v)) => *v as usize,
            other => panic!("{other:?}"),
        }
    };
    let after_kill = read();
    // Every update reported applied survived; any applied but unreported (killed between
    // commit and print) still counts once.
    assert!(after_kill >= first.len(), "{after_kill} < {}", first.len());

    // Re-running all keys: those already applied are duplicates, the rest apply once.
    let (second, dups) = run_load(&["store-load", "--keys", &keys.to_string()], &db, None);
    assert!(
        first.is_disjoint(&second),
        "a key applied before the crash applied again"
    );
    assert!(first.is_subset(&dups));
    assert_eq!(second.len() + dups.len(), keys);
    assert_eq!(
        read(),
        keys,
        "final counter must equal the number of distinct keys"
    );
}

#[tokio::test]
async fn queue_sigkill_loses_no_published_message_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let n = 20_000;
    let db2 = db.clone();
    let (first, _) = tokio::task::spawn_blocking(move || {
        run_load(
            &["queue-load", "--messages", &n.to_string()],
            &db2,
            Some(3_000),
        )
    })
    .await
    .unwrap();
    let db2 = db.clone();
    let (second, dups) = tokio::task::spawn_blocking(move || {
        run_load(&["queue-load", "--messages", &n.to_string()], &db2, None)
    })
    .await
    .unwrap();
    assert!(first.is_disjoint(&second));
    assert!(first.is_subset(&dups));

    // Drain: every message exactly once.
    let queue = SqliteQueue::open(Db::open(&db).unwrap(), RetryPolicy::default()).unwrap();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let d = queue.receive("crash-test").await.unwrap();
        let key = String::from_utf8(d.payload.to_vec()).unwrap();
        assert!(seen.insert(key.clone()), "{key} delivered twice");
        d.ack().await.unwrap();
    }
    assert_eq!(seen.len(), n);
    assert!(first.iter().all(|k| seen.contains(k)));
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats[0].1.depth, 0);
}

#[test]
fn a_second_process_cannot_open_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args([
            "debug",
            "store-load",
            "--keys",
            "100000000",
            "--storage.path",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has applied something, it holds the database.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let err = Db::open(&db).err();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(err, Some(devmetrics::db::Error::Locked { .. })),
        "{err:?}"
    );
    // Released with the process.
    Db::open(&db).expect("lock released when the holder died");
}

/// The real service killed with SIGKILL at random points while webhooks arrive and Prometheus
/// scrapes, fifty times over one SQLite file: after each kill the file passes
/// `integrity_check`, and at the end, with GitHub's redelivery of what was never answered
/// 202, every job is counted exactly once.
#[tokio::test]
async fn fifty_kills_under_webhook_load_lose_and_double_nothing() {
    let kills: usize = std::env::var("DEVMETRICS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    crash_loop(Backend::Sqlite, kills).await;
}

/// The same crash loop with the store and the queue in Redis (streams), and with the queue
/// on RabbitMQ: what a replica answered 202 for is in the broker or its local spool, and
/// nothing is counted twice however the kills fall.
#[tokio::test]
async fn kills_on_redis_and_rabbitmq_lose_and_double_nothing() {
    let kills: usize = std::env::var("DEVMETRICS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        / 2;
    if crate::support::service("redis", crate::support::REDIS_ADDR) {
        crash_loop(Backend::RedisStreams, kills).await;
    }
    if crate::support::service("rabbitmq", "127.0.0.1:5672") {
        crash_loop(Backend::RabbitMq, kills).await;
    }
}

async fn crash_loop(backend: Backend, kills: usize) {
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};

    const SECRET: &str = "crash-loop-secret";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let port = crate::compat::free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "web:\n  listen_addresses: ['127.0.0.1:{port}']\nstorage:\n  path: {}\nwebhooks:\n  github:\n    secrets: [{{value: {SECRET}}}]\n",
            db.display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // The backend's keys as `DEVMETRICS_SECTION__KEY` variables, over the file.
    let env: Vec<(String, String)> = backend
        .keys(dir.path())
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                serde_yaml::Value::String(s) => s,
                other => serde_yaml::to_string(&other).unwrap().trim().to_string(),
            };
            (
                format!("DEVMETRICS_{}", k.replace('.', "__").to_ascii_uppercase()),
                value,
            )
        })
        .collect();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(["serve", "--config.file"])
            .arg(&config)
            .envs(env.iter().cloned())
            .env("DEVMETRICS_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = |client: reqwest::Client, base: String| async move {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the service did not become ready");
    };
    let sender = std::sync::Arc::new(devmetrics::sim::webhooks::Sender::new(
        format!("{base}/webhooks/github"),
        SECRET,
    ));
    let mut g = devmetrics::sim::webhooks::Generator::new(9);
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    // (delivery id, body, answered 202)
    let mut sent: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for round in 0..kills {
        let mut child = start();
        ready(client.clone(), base.clone()).await;
        // Deliveries and scrapes in flight when the kill lands.
        let mut tasks = Vec::new();
        let plans = g.run_plan(1_700_000_000.0 + round as f64 * 600.0, 8);
        for (i, p) in plans.iter().enumerate() {
            let id = format!("r{round}-{i}");
            let body = g.job_payload(p, "completed", true);
            let s = sender.clone();
            let b = body.clone();
            let id2 = id.clone();
            tasks.push(tokio::spawn(async move {
                matches!(s.send("workflow_job", &id2, b).await, Ok(202))
            }));
            sent.push((id, body, false));
        }
        let c = client.clone();
        let scrapes = tokio::spawn({
            let base = base.clone();
            async move {
                for _ in 0..5 {
                    let _ = c.get(format!("{base}/metrics")).send().await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..120))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let first = sent.len() - tasks.len();
        for (k, t) in tasks.into_iter().enumerate() {
            sent[first + k].2 = t.await.unwrap_or(false);
        }
        scrapes.abort();
        // The local file: the store and queue, or the network queue's spool.
        if db.exists() {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok", "{backend:?} after kill {round}");
        }
    }
    // A last start: GitHub redelivers what was never answered 202 (and the sender repeats
    // some that were, which must count once).
    let mut child = start();
    ready(client.clone(), base.clone()).await;
    for (id, body, accepted) in &sent {
        if !*accepted || id.ends_with("-0") {
            let status = sender.send("workflow_job", id, body.clone()).await.unwrap();
            assert!(
                status == 202 || status == 200,
                "redelivery of {id}: {status}"
            );
        }
    }
    let want = sent.len() as f64;
    let mut got = 0.0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        got = crate::support::series(&text, "devmetrics_workflow_jobs_total")
            .values()
            .sum();
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let accepted = sent.iter().filter(|s| s.2).count();
    backend.clean_up(dir.path());
    eprintln!(
        "{backend:?}: {kills} kills: {} deliveries, {accepted} answered 202 before a kill, all {got} counted once",
        sent.len()
    );
    assert!(accepted > 0, "no delivery was accepted between kills");
    assert_eq!(
        got,
        want,
        "{backend:?}: {kills} kills, {} deliveries ({accepted} answered 202 before a kill)",
        sent.len()
    );
}
