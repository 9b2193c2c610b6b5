//! The SQLite WAL stays bounded while writes never stop and readers come and go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use devmetrics::db::{self, Db};
use devmetrics::queue::{Queue, RetryPolicy, sqlite::SqliteQueue};
use devmetrics::store::{Store, sqlite::SqliteStore};
use rand::RngCore;

const TOPIC: &str = "test/wal";
/// GitHub's typical webhook body.
const PAYLOAD: usize = 10 * 1024;
/// Payload bytes to write: several WALs' worth, so a WAL that is never rewound shows.
const TO_WRITE: u64 = 3 * db::JOURNAL_SIZE_LIMIT;
const PRODUCERS: usize = 8;
const CONSUMERS: usize = 16;
/// The file outgrows `journal_size_limit` only while the WAL cannot be rewound. The writer
/// tries after every group once the WAL holds `REWIND_AFTER_FRAMES` (16 MiB) and succeeds in
/// the first pause of the readers here (every 150 ms), which leaves 48 MiB below the limit;
/// the margin above it is one more group that may be written before that pause comes: up to
/// 1,024 publishes of 10 KB (10 MiB of frames, plus b-tree pages), rounded up.
const BOUND: u64 = db::JOURNAL_SIZE_LIMIT + (16 << 20);

/// The WAL's size, sampled every millisecond on a thread of its own (the runtime is busy).
struct Sampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(wal: PathBuf) -> Sampler {
        let (max, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(wal_size(&wal), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Sampler { max, stop, thread }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

fn wal_size(wal: &Path) -> u64 {
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Another process's reader (`devmetrics queue dead-letters`, a backup): a read transaction
/// held for 100 ms, then none for 50 ms, over and over. While it is open, nothing newer than
/// its snapshot can be checkpointed.
fn long_reader(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut held = 0;
        while !stop.load(Ordering::Relaxed) {
            conn.execute_batch("BEGIN").unwrap();
            let _: i64 = conn
                .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            conn.execute_batch("COMMIT").unwrap();
            held += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        held
    })
}

/// 3 × `journal_size_limit` of 10 KB payloads published and acked through the real queue (each
/// reaches the WAL several times: published, counted as delivered, deleted), with key-value
/// writes beside them, while the service's own reader (`kv_get`) and another process's reader
/// keep taking read transactions: the WAL file stays within `BOUND`, sampled every millisecond
/// during the run and after it, and within `journal_size_limit` once idle. Checkpoints that
/// only race the writer let it pass 600 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_under_continuous_writes_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let wal = dir.path().join("wal.db-wal");
    let db = Db::open(&path).unwrap();
    let queue = Arc::new(SqliteQueue::open(db.clone(), RetryPolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(db.clone()).unwrap());
    let sampler = Sampler::start(wal.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = long_reader(path.clone(), stop.clone());
    let started = Instant::now();

    let written = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (queue, store, written) = (queue.clone(), store.clone(), written.clone());
        producers.push(tokio::spawn(async move {
            // Random bytes: LZ4 leaves them as they are, so every byte reaches the WAL.
            let mut body = vec![0u8; PAYLOAD];
            rand::rng().fill_bytes(&mut body);
            let body = Bytes::from(body);
            let mut n = 0u64;
            while written.fetch_add(PAYLOAD as u64, Ordering::Relaxed) < TO_WRITE {
                let key = format!("{p}-{n}");
                queue
                    .publish(TOPIC, Some(&key), body.clone())
                    .await
                    .unwrap();
                if n.is_multiple_of(16) {
                    store
                        .kv_put("wal", &format!("{p}"), body.to_vec(), None)
                        .await
                        .unwrap();
                }
                n += 1;
            }
        }));
    }
    // Consumers are stopped by aborting them once the topic is empty: a receive given up
    // half-way would strand its message in flight.
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let (queue, acked) = (queue.clone(), acked.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let d = queue.receive(TOPIC).await.unwrap();
                d.ack().await.unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let kv_reader = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                store.kv_get("wal", "0").await.unwrap();
                reads += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };

    for p in producers {
        p.await.unwrap();
    }
    let writing = started.elapsed();
    // Consumers drain what is left, so acks keep writing a little longer.
    while queue.stats().await.unwrap()[0].1.depth > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = sampler.max();
    stop.store(true, Ordering::Relaxed);
    for c in &consumers {
        c.abort();
    }
    let acked = acked.load(Ordering::Relaxed);
    let kv_reads = kv_reader.await.unwrap();
    let held = reader.join().unwrap();
    // Idle: nothing may leave the file larger than the limit now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = wal_size(&wal);
    let max = sampler.stop();
    eprintln!(
        "wrote {:.0} MiB of payloads ({acked} messages) in {writing:?}, {:?} in all; \
         {kv_reads} kv reads, {held} long read transactions; WAL max {:.1} MiB during, \
         {:.1} MiB after",
        mib(written.load(Ordering::Relaxed).min(TO_WRITE)),
        started.elapsed(),
        mib(during),
        mib(after),
    );
    assert!(
        max <= BOUND,
        "the WAL reached {:.1} MiB (bound {:.1} MiB)",
        mib(max),
        mib(BOUND)
    );
    assert!(
        after <= db::JOURNAL_SIZE_LIMIT,
        "WAL {after} bytes once idle"
    );
}
