//! The embedded database: one SQLite file in WAL mode, written by one thread.
//!
//! Every mutation (store updates, queue publishes and acks, key-value writes) is a [`Job`]
//! sent to the writer thread. The writer drains whatever jobs are waiting, runs each in its
//! own savepoint inside one transaction and commits once with `synchronous=FULL`: concurrent
//! writers share one fsync (group commit). A job's in-memory effects and its reply run only
//! after the commit succeeded, so memory never shows what the disk does not have.
//!
//! Reads that cannot be served from memory use a separate read-only connection; WAL lets
//! them run beside the writer.
//!
//! The WAL is kept bounded by two checkpointers (see [`rewind_wal`]): a thread of its own
//! copies frames into the database in the background, and the writer, once the WAL holds
//! [`REWIND_AFTER_FRAMES`], copies what is left between two groups so that its next
//! transaction starts the WAL over.

mod schema;

use crate::metrics;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

use crate::telemetry::Histogram;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("creating directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("the database writer is too far behind to take more work now")]
    Busy,
    #[error("database {path} is in use by another devmetrics process")]
    Locked { path: PathBuf },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Open { .. } | Error::CreateDir { .. } => "open",
            Error::Sql(_) => "sql",
            Error::Commit(_) => "commit",
            Error::WriterGone => "writer_gone",
            Error::Busy => "busy",
            Error::Locked { .. } => "locked",
        }
    }
}

/// Called once the group a job belonged to has been committed (`Ok`) or not (`Err`).
pub type Finish = Box<dyn FnOnce(Result<(), &Error>) + Send>;

/// A unit of work for the writer: runs inside a savepoint and returns what to do after the
/// commit. `Err(finish)` rolls the job's savepoint back (the job already knows why) while the
/// rest of the group still commits.
pub type Job = Box<dyn FnOnce(&Connection) -> Result<Finish, Finish> + Send>;

/// Upper bound on jobs grouped into one commit: large enough to amortise the fsync, small
/// enough that one commit stays in the low milliseconds.
const MAX_GROUP: usize = 1024;
/// Jobs that may wait for the writer before producers wait for room.
pub const MAX_WAITING: usize = 16 * MAX_GROUP;

/// What the WAL file is cut back to once it has been checkpointed and rewound.
pub const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;
/// WAL frames (16 MiB of 4 KiB pages) after which the writer checkpoints and rewinds the WAL
/// itself. A quarter of [`JOURNAL_SIZE_LIMIT`]: the rest is headroom for frames written while
/// a reader briefly keeps the WAL from being rewound, so the file rarely grows past the limit.
const REWIND_AFTER_FRAMES: i32 = 4096;
/// How often the checkpoint thread copies WAL frames into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Stats {
    pub commits: AtomicU64,
    /// The error of the last commit when it failed; cleared by the next success.
    pub last_error: Mutex<Option<String>>,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            commits: AtomicU64::new(0),
            last_error: Mutex::new(None),
            commit_seconds: Histogram::for_family(
                metrics::DEVMETRICS_STORE_COMMIT_DURATION_SECONDS,
            ),
            batch_size: Histogram::for_family(metrics::DEVMETRICS_STORE_COMMIT_BATCH_SIZE),
        }
    }
}

#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    pub stats: Arc<Stats>,
    path: Arc<PathBuf>,
    /// Dropped with the last `Db` clone, which stops the checkpoint thread.
    _alive: Arc<()>,
    /// Held for the life of the process's last `Db` clone.
    _lock: Arc<std::fs::File>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // One process per database: two would each deliver the same queue rows and keep
        // diverging in-memory mirrors. The lock is released when the process exits.
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::CreateDir {
                path: lock_path.clone(),
                source,
            })?;
        match lock_process_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(Error::CreateDir {
                    path: lock_path,
                    source,
                });
            }
        }
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let writer = Connection::open(path).map_err(open_err)?;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA busy_timeout=5000;
                 PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT};"
            ))
            .map_err(open_err)?;
        schema::migrate(&writer).map_err(open_err)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        reader
            .execute_batch("PRAGMA busy_timeout=5000;")
            .map_err(open_err)?;

        // The bulk of checkpointing runs on its own connection and thread: done by the
        // writer (SQLite's default) it stalls every producer waiting on the group commit.
        let checkpointer = Connection::open(path).map_err(open_err)?;
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let wal = wal_path(path);
        std::thread::Builder::new()
            .name("devmetrics-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, wal, weak))
            .expect("spawning the checkpoint thread");

        let stats = Arc::new(Stats::default());
        // A bounded channel applies back-pressure to producers when the disk falls behind;
        // producers wait for room asynchronously, so a stalled disk never blocks a runtime
        // thread (the HTTP server keeps answering and publishers hit their own deadlines).
        let (tx, rx) = mpsc::channel::<Job>(MAX_WAITING);
        let thread_stats = stats.clone();
        let injected = injected_failures(path);
        std::thread::Builder::new()
            .name("devmetrics-db-writer".into())
            .spawn(move || writer_loop(writer, rx, thread_stats, injected))
            .expect("spawning the database writer thread");
        Ok(Db {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            stats,
            path: Arc::new(path.to_path_buf()),
            _alive: alive,
            _lock: Arc::new(lock),
        })
    }

    /// A plain connection for administration from another process (`devmetrics queue`),
    /// beside a running service or without one. It takes no process lock: SQLite's own
    /// locking orders its writes with the service's writer.
    pub fn open_admin(path: &Path) -> Result<Connection, Error> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            return Err(Error::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch("PRAGMA busy_timeout=10000;")
            .map_err(open_err)?;
        schema::migrate(&conn).map_err(open_err)?;
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a job; its `Finish` reports the outcome. While `MAX_WAITING` jobs wait, this
    /// waits (asynchronously) for room.
    pub async fn submit(&self, job: Job) -> Result<(), Error> {
        self.tx.send(job).await.map_err(|_| Error::WriterGone)
    }

    /// Queues a job without waiting: [`Error::Busy`] when the writer is that far behind. For
    /// code that cannot wait (a `Drop`, start-up).
    pub fn try_submit(&self, job: Job) -> Result<(), Error> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy,
            mpsc::error::TrySendError::Closed(_) => Error::WriterGone,
        })
    }

    /// Queues a job from a thread of its own (not a runtime thread), waiting for room.
    pub fn submit_blocking(&self, job: Job) -> Result<(), Error> {
        self.tx.blocking_send(job).map_err(|_| Error::WriterGone)
    }

    /// Runs `f` in the writer's transaction and waits for the commit. For callers that have no
    /// in-memory effects to order after the commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |conn| match f(conn) {
            Ok(v) => Ok(Box::new(move |r: Result<(), &Error>| {
                let _ = tx.send(r.map(|()| v).map_err(|e| Error::Commit(e.to_string())));
            }) as Finish),
            Err(e) => Err(Box::new(move |_: Result<(), &Error>| {
                let _ = tx.send(Err(Error::Sql(e)));
            }) as Finish),
        }))
        .await?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Runs a read on the read-only connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock()).map_err(Error::Sql))
            .await
            .map_err(|_| Error::WriterGone)?
    }

    /// Synchronous read, for start-up loading.
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        f(&self.reader.lock()).map_err(Error::Sql)
    }
}

/// Per database file: whether commits fail as on a full disk (fault-injection tests).
static INJECTED: LazyLock<Mutex<HashMap<PathBuf, Arc<AtomicBool>>>> =
    LazyLock::new(Default::default);

fn injected_failures(path: &Path) -> Arc<AtomicBool> {
    INJECTED
        .lock()
        .entry(path.to_path_buf())
        .or_default()
        .clone()
}

/// Makes every commit to the database at `path` fail as a full disk does (`on`), or succeed
/// again: for tests of what the service does when it cannot write. Takes effect on the next
/// commit, for databases opened before or after the call.
pub fn inject_write_failures(path: &Path, on: bool) {
    injected_failures(path).store(on, Ordering::Relaxed);
}

/// Takes a POSIX record lock (`fcntl(F_SETLK)`) on the whole file. Unlike `flock`, these
/// locks belong to the process, so a restart inside one process (tests, `demo`) may reopen
/// the database while another process is refused. std offers only `flock`, hence libc.
#[cfg(unix)]
fn lock_process_exclusive(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed `flock` is a valid value; fcntl reads it and touches nothing else.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: the descriptor is open for the duration of the call; `fl` outlives it.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(unix))]
fn lock_process_exclusive(_: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

/// The WAL file of the database at `path`, as SQLite names it.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// `PRAGMA wal_checkpoint(mode)`: whether it was kept from finishing (by the writer, a reader
/// or another checkpoint), the frames in the WAL and how many of them are in the database.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?))
    })
}

fn checkpoint_loop(conn: Connection, wal: PathBuf, alive: std::sync::Weak<()>) {
    // Never wait: a checkpoint that would have to wait for the writer or a reader gives up
    // and is tried again on the next round.
    let _ = conn.execute_batch("PRAGMA busy_timeout=0;");
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if alive.upgrade().is_none() {
            return;
        }
        // PASSIVE never blocks the writer; a failure (e.g. the file was removed in a test)
        // ends the thread, since nothing can be checkpointed any more.
        let (busy, frames, copied) = match checkpoint(&conn, "PASSIVE") {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint thread stopping");
                return;
            }
        };
        // The WAL outgrew the limit (a reader kept it from being rewound) and the writer has
        // gone quiet since, everything copied: nothing would cut the file back before the next
        // write, so it is emptied now. TRUNCATE takes the write lock only if it is free and
        // gives up at once if a reader still uses the WAL.
        let oversized = std::fs::metadata(&wal).is_ok_and(|m| m.len() > JOURNAL_SIZE_LIMIT);
        if !busy && frames > 0 && frames == copied && oversized {
            match checkpoint(&conn, "TRUNCATE") {
                Ok((false, _, _)) => tracing::debug!("idle WAL truncated"),
                Ok((true, _, _)) => {}
                Err(e) => tracing::debug!(error = %e, "truncating the idle WAL failed"),
            }
        }
    }
}

thread_local! {
    /// Frames in the WAL after the last commit on this thread that wrote any, as SQLite
    /// reports it to [`wal_committed`]; taken by the writer after each group.
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's WAL hook, called on the committing thread (for the writer's connection, only the
/// writer thread) once a commit that wrote frames is durable. Registering it also replaces
/// SQLite's own automatic checkpoint, which would run inside the commit, before any reply.
fn wal_committed(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// Lets the writer's next transaction start the WAL over, once it holds
/// [`REWIND_AFTER_FRAMES`]. Run by the writer between two groups, after the replies.
///
/// A checkpoint only copies frames into the database. SQLite writes the WAL from its start
/// again (after which `journal_size_limit` cuts the file back) only when a write transaction
/// begins with every frame copied and no reader using one. The checkpoint thread's passes
/// cannot bring that about under continuous writes: a commit always lands between the end of
/// a pass and the next transaction, so the WAL is never rewound and grows without bound, with
/// or without readers (past 600 MiB in
/// `wal::the_wal_stays_bounded_under_continuous_writes_and_readers`). Here no commit can come
/// in between. Since the checkpoint thread has copied most frames already, this usually copies
/// only the last few groups'. While a reader still uses frames it cannot finish; it is tried
/// again after the next commit that writes, so the WAL grows only while one reader holds on.
fn rewind_wal(conn: &Connection) {
    if WAL_FRAMES.replace(0) < REWIND_AFTER_FRAMES {
        return;
    }
    match checkpoint(conn, "PASSIVE") {
        Ok((false, frames, copied)) if frames == copied => {}
        Ok((_, frames, copied)) => {
            tracing::debug!(
                frames,
                copied,
                "WAL not rewound yet: a reader or checkpoint in the way"
            );
        }
        Err(e) => tracing::debug!(error = %e, "checkpoint by the writer failed"),
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    stats: Arc<Stats>,
    injected: Arc<AtomicBool>,
) {
    conn.wal_hook(Some(wal_committed));
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = group.len();
        let mut finishes: Vec<Finish> = Vec::with_capacity(n);
        let result = (|| -> Result<(), Error> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let failing = injected.load(Ordering::Relaxed);
            for job in group.drain(..) {
                // Cached statements: parsing these three per job showed up in the queue bench.
                tx.prepare_cached("SAVEPOINT job")?.execute([])?;
                // A panicking job is rolled back alone (its caller sees its reply channel
                // close); the writer thread, which every write depends on, survives it.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&tx))) {
                    Ok(Ok(finish)) => finishes.push(finish),
                    Ok(Err(finish)) => {
                        tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
                        finishes.push(finish);
                    }
                    Err(_) => {
                        tracing::error!("a database job panicked; rolled back");
                        tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
                    }
                }
                tx.prepare_cached("RELEASE job")?.execute([])?;
            }
            if failing {
                // As SQLite reports a full disk: the whole group rolls back.
                return Err(Error::Commit("database or disk is full (injected)".into()));
            }
            tx.commit()?;
            Ok(())
        })();
        // Jobs not reached because the transaction failed early are dropped with the group;
        // their callers see their reply channel close and report WriterGone.
        group.clear();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        stats.batch_size.observe(n as f64);
        *stats.last_error.lock() = result.as_ref().err().map(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = n, "database commit failed");
        }
        for f in finishes {
            let r = result.as_ref().map(|_| ());
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err() {
                tracing::error!("a post-commit step panicked");
            }
        }
        rewind_wal(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    fn noop() -> Job {
        Box::new(|_| Ok(Box::new(|_: Result<(), &Error>| {}) as Finish))
    }

    /// One runtime thread, a writer stuck as on a hung disk, and more producers than the
    /// channel holds: the producers wait for room without blocking the thread (a timer on it
    /// keeps firing), `try_submit` says busy at once, and all goes on once the disk moves.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_writer_makes_producers_wait_without_blocking_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let (unstall, stalled) = std::sync::mpsc::channel::<()>();
        db.try_submit(Box::new(move |_| {
            let _ = stalled.recv();
            Ok(Box::new(|_: Result<(), &Error>| {}) as Finish)
        }))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..MAX_WAITING {
            db.try_submit(noop()).unwrap();
        }
        assert!(matches!(db.try_submit(noop()), Err(Error::Busy)));

        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let waited = tokio::time::timeout(Duration::from_millis(300), db.submit(noop())).await;
        assert!(waited.is_err(), "no room while the writer is stuck");
        assert!(
            ticks.load(Ordering::Relaxed) >= 5,
            "the runtime thread kept running"
        );

        unstall.send(()).unwrap();
        let one: i64 = tokio::time::timeout(
            Duration::from_secs(30),
            db.write(|c| c.query_row("SELECT 1", [], |r| r.get(0))),
        )
        .await
        .expect("the writer drains once the disk moves")
        .unwrap();
        assert_eq!(one, 1);
        ticker.abort();
    }

    /// A reader holding one snapshot keeps the WAL from being rewound, so it grows past the
    /// limit while writes go on; once the reader lets go and the writes stop, the checkpoint
    /// thread empties the file within a second instead of leaving it at its peak.
    #[tokio::test]
    async fn an_oversized_wal_is_truncated_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path).unwrap();
        let wal_size = || std::fs::metadata(wal_path(&path)).map_or(0, |m| m.len());
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
            .unwrap();
        let mib = 1 << 20;
        for i in 0..(JOURNAL_SIZE_LIMIT / mib + 8) {
            db.write(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO kv (ns, key, value) VALUES ('t', ?1, randomblob(?2))",
                    rusqlite::params![i % 4, mib],
                )
            })
            .await
            .unwrap();
        }
        let peak = wal_size();
        assert!(
            peak > JOURNAL_SIZE_LIMIT,
            "the WAL grew to {peak} bytes only"
        );

        reader.execute_batch("COMMIT").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while wal_size() > JOURNAL_SIZE_LIMIT {
            assert!(
                Instant::now() < deadline,
                "the WAL stayed at {}",
                wal_size()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let one: Option<Vec<u8>> = db
            .read(|c| {
                c.query_row("SELECT value FROM kv WHERE key = '1'", [], |r| r.get(0))
                    .map(Some)
            })
            .await
            .unwrap();
        assert_eq!(one.map(|v| v.len() as u64), Some(mib), "nothing was lost");
    }
}
