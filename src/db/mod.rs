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

mod schema;

use crate::metrics;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
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
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA busy_timeout=5000;
                 PRAGMA wal_autocheckpoint=0;
                 PRAGMA journal_size_limit=67108864;",
            )
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

        // Checkpoints run on their own connection and thread: done by the writer (SQLite's
        // default) they stall every producer waiting on the group commit.
        let checkpointer = Connection::open(path).map_err(open_err)?;
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("devmetrics-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, weak))
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

fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>) {
    let _ = conn.execute_batch("PRAGMA busy_timeout=5000;");
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // PASSIVE never blocks the writer; a failure (e.g. the file was removed in a test)
        // ends the thread, since nothing can be checkpointed any more.
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        if let Err(e) = r {
            tracing::debug!(error = %e, "checkpoint thread stopping");
            return;
        }
        if alive.upgrade().is_none() {
            return;
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    stats: Arc<Stats>,
    injected: Arc<AtomicBool>,
) {
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
}
