//! SIGKILL at an arbitrary point loses nothing that was reported durable and applies nothing
//! twice. The load generators are the real binary (`devmetrics debug ...`), printing each
//! operation after it committed.

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
