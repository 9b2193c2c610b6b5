//! The embedded queue: messages are rows of the SQLite file. Memory holds only each message's
//! id and schedule (ready, delayed or in flight); payloads stay on disk and are read when
//! delivered, in the same write that counts the delivery. Every row not acked is delivered
//! again after a restart (at-least-once).

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{OptionalExtension, params};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

use super::{
    Dedupe, Delivery, Error, Handled, MAX_UNSETTLED_DELIVERIES, Published, Queue, Retry,
    RetryPolicy, Settle, TopicStats,
};
use crate::clock::now_unix;
use crate::db::{Db, Finish, Job};
use crate::store::sqlite::{SeriesWrite, SqliteStore};

/// Payloads at least this large are stored LZ4-compressed: webhook bodies are JSON that
/// shrinks 4–6×, and durable ingest is bound by bytes written (design.md §7).
const COMPRESS_FROM: usize = 512;
const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// How often replays asked for by `devmetrics queue replay` are taken in, and dead letters
/// purged by it are recounted, while the service runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);

/// Messages per topic when no cap is configured.
pub const DEFAULT_MAX_DEPTH: u64 = 1_000_000;

fn encode_payload(p: &[u8]) -> Vec<u8> {
    if p.len() >= COMPRESS_FROM {
        let mut out = vec![CODEC_LZ4];
        out.extend_from_slice(&lz4_flex::compress_prepend_size(p));
        out
    } else {
        let mut out = Vec::with_capacity(p.len() + 1);
        out.push(CODEC_RAW);
        out.extend_from_slice(p);
        out
    }
}

pub(crate) fn decode_payload(stored: &[u8]) -> Option<Vec<u8>> {
    match stored.split_first()? {
        (&CODEC_RAW, rest) => Some(rest.to_vec()),
        (&CODEC_LZ4, rest) => lz4_flex::decompress_size_prepended(rest).ok(),
        _ => None,
    }
}

/// What memory keeps of a message: its schedule, not its payload.
#[derive(Clone, Copy)]
struct Msg {
    id: i64,
    attempts: u32,
}

#[derive(Default)]
struct Topic {
    ready: VecDeque<Msg>,
    /// Keyed by (due time in ms since the epoch, id).
    delayed: BTreeMap<(u64, i64), Msg>,
    inflight: HashMap<i64, Msg>,
    /// Every live message: id → publish time. Ids grow with publish order, so the first entry
    /// is the oldest message and depth and age cost no walk over the messages.
    live: BTreeMap<i64, f64>,
    stats: TopicStats,
    notify: Arc<Notify>,
}

impl Topic {
    fn promote_due(&mut self, now_ms: u64) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn schedule(&mut self, msg: Msg, due: f64, now: f64) {
        if due <= now {
            self.ready.push_back(msg);
        } else {
            self.delayed.insert(((due * 1000.0) as u64, msg.id), msg);
        }
    }

    fn forget(&mut self, id: i64) {
        self.inflight.remove(&id);
        self.live.remove(&id);
    }

    /// A message published at `at` (committed as row `id`) is ready for a consumer.
    fn published(&mut self, id: i64, at: f64) {
        self.stats.published += 1;
        self.live.insert(id, at);
        self.ready.push_back(Msg { id, attempts: 0 });
        self.notify.notify_one();
    }

    /// A publish [`record_key`] refused.
    fn refused(&mut self, seen: &Outcome) {
        match seen {
            Outcome::Conflict => self.stats.conflicts += 1,
            _ => self.stats.duplicates += 1,
        }
    }
}

struct Inner {
    db: Db,
    policy: RetryPolicy,
    max_depth: u64,
    topics: Mutex<HashMap<Arc<str>, Topic>>,
}

impl Inner {
    fn with_topic<T>(&self, topic: &str, f: impl FnOnce(&mut Topic) -> T) -> T {
        let mut topics = self.topics.lock();
        if !topics.contains_key(topic) {
            topics.insert(Arc::from(topic), Topic::default());
        }
        f(topics.get_mut(topic).expect("inserted above"))
    }

    fn topic_name(&self, topic: &str) -> Arc<str> {
        let mut topics = self.topics.lock();
        if let Some((k, _)) = topics.get_key_value(topic) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(topic);
        topics.insert(k.clone(), Topic::default());
        k
    }
}

/// A row as scheduling needs it (read through an index, never touching payloads).
struct Row {
    id: i64,
    topic: String,
    attempts: u32,
    available_at: f64,
    published_at: f64,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        topic: r.get(1)?,
        attempts: r.get(2)?,
        available_at: r.get(3)?,
        published_at: r.get(4)?,
    })
}

#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
    /// The store in the same database, whose writes a handled publish commits with its own.
    store: Option<Arc<SqliteStore>>,
}

impl SqliteQueue {
    pub fn open(db: Db, policy: RetryPolicy) -> Result<SqliteQueue, Error> {
        Self::open_with_depth(db, policy, DEFAULT_MAX_DEPTH)
    }

    /// Opens the queue; a topic holding `max_depth` messages refuses more with
    /// [`Error::Full`] until consumers catch up.
    pub fn open_with_depth(
        db: Db,
        policy: RetryPolicy,
        max_depth: u64,
    ) -> Result<SqliteQueue, Error> {
        let inner = Arc::new(Inner {
            db: db.clone(),
            policy,
            max_depth,
            topics: Mutex::new(HashMap::new()),
        });
        // Straight into the per-topic schedules, row by row: a backlog of millions must not
        // cost a copy of every row (or a topic name each) on the way.
        let now = now_unix();
        let topics = db.read_blocking(|c| {
            let mut topics: HashMap<Arc<str>, Topic> = HashMap::new();
            let mut stmt = c.prepare(
                "SELECT id, topic, attempts, available_at, published_at FROM queue INDEXED BY queue_schedule ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            let mut last: Option<Arc<str>> = None;
            while let Some(r) = rows.next()? {
                let name = r.get_ref(1)?.as_str()?;
                let key = match &last {
                    Some(k) if &**k == name => k.clone(),
                    _ => {
                        let k: Arc<str> = Arc::from(name);
                        last = Some(k.clone());
                        k
                    }
                };
                let t = topics.entry(key).or_default();
                let id: i64 = r.get(0)?;
                t.live.insert(id, r.get(4)?);
                let msg = Msg {
                    id,
                    attempts: r.get(2)?,
                };
                t.schedule(msg, r.get(3)?, now);
            }
            Ok(topics)
        })?;
        *inner.topics.lock() = topics;
        let queue = SqliteQueue { inner, store: None };
        queue.maintain_blocking()?;
        let weak = Arc::downgrade(&queue.inner);
        std::thread::Builder::new()
            .name("devmetrics-queue-maintenance".into())
            .spawn(move || maintenance_loop(weak))
            .expect("spawning the queue maintenance thread");
        Ok(queue)
    }

    /// Lets [`Queue::publish_handled`] commit `store`'s writes with the publish; `store` must
    /// write to this queue's database, or it is ignored.
    pub fn handling_into(mut self, store: Arc<SqliteStore>) -> SqliteQueue {
        if store.writes_to(&self.inner.db) {
            self.store = Some(store);
        }
        self
    }

    /// Runs `run` on the writer (waiting asynchronously for room) and returns once it is
    /// committed; `effect` changes memory after the commit succeeded.
    async fn write<T: Send + 'static>(
        &self,
        run: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
        effect: impl FnOnce(&T) + Send + 'static,
    ) -> Result<T, Error> {
        let (job, rx) = job(run, effect);
        self.inner.db.submit(job).await?;
        rx.await.map_err(|_| crate::db::Error::WriterGone)?
    }

    /// Takes in replays asked for from outside the process and recounts the dead letters,
    /// and waits for it (at start-up, so stats are right from the first scrape).
    fn maintain_blocking(&self) -> Result<(), Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        // Start-up: the writer's channel is as good as empty, so this does not wait.
        self.inner.db.try_submit(self.maintenance(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.recv()
            .map_err(|_| Error::from(crate::db::Error::WriterGone))?
    }

    fn maintenance(&self, done: impl FnOnce(Result<(), Error>) + Send + 'static) -> Job {
        let inner = self.inner.clone();
        let job = |c: &rusqlite::Connection| -> rusqlite::Result<Maintained> {
            let now = now_unix();
            let replayed = c
                .prepare_cached(
                    "INSERT INTO queue (topic, payload, attempts, deliveries, available_at, published_at)
                     SELECT topic, payload, 0, 0, ?1, ?1 FROM dead_letters
                     WHERE id IN (SELECT id FROM queue_replays) ORDER BY id
                     RETURNING id, topic, attempts, available_at, published_at",
                )?
                .query_map([now], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if !replayed.is_empty() {
                c.execute(
                    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM queue_replays)",
                    [],
                )?;
            }
            c.execute("DELETE FROM queue_replays", [])?;
            let dead = c
                .prepare_cached("SELECT topic, count(*) FROM dead_letters GROUP BY topic")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Maintained { replayed, dead })
        };
        Box::new(move |conn| match job(conn) {
            Ok(m) => Ok(Box::new(move |r: Result<(), &crate::db::Error>| match r {
                Ok(()) => {
                    inner.apply_maintenance(m);
                    done(Ok(()));
                }
                Err(e) => done(Err(Error::Unavailable {
                    kind: "commit",
                    message: e.to_string(),
                })),
            }) as Finish),
            Err(e) => Err(Box::new(move |_: Result<(), &crate::db::Error>| {
                done(Err(crate::db::Error::Sql(e).into()))
            }) as Finish),
        })
    }
}

impl Inner {
    fn apply_maintenance(&self, m: Maintained) {
        let now = now_unix();
        for t in self.topics.lock().values_mut() {
            t.stats.dead_letters = 0;
        }
        for (topic, n) in &m.dead {
            self.with_topic(topic, |t| t.stats.dead_letters = *n);
        }
        for r in &m.replayed {
            tracing::info!(topic = %r.topic, id = r.id, "dead letter replayed");
            self.with_topic(&r.topic, |t| {
                t.live.insert(r.id, r.published_at);
                t.stats.replayed += 1;
                let msg = Msg {
                    id: r.id,
                    attempts: r.attempts,
                };
                t.schedule(msg, r.available_at, now);
                t.notify.notify_one();
            });
        }
    }
}

struct Maintained {
    replayed: Vec<Row>,
    dead: Vec<(String, u64)>,
}

fn maintenance_loop(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(MAINTENANCE_EVERY);
        let Some(inner) = inner.upgrade() else { return };
        let queue = SqliteQueue { inner, store: None };
        let (tx, rx) = std::sync::mpsc::channel();
        let job = queue.maintenance(move |r| {
            let _ = tx.send(r);
        });
        if queue.inner.db.submit_blocking(job).is_err() {
            return;
        }
        drop(queue);
        if let Ok(Err(e)) = rx.recv() {
            tracing::warn!(error = %e, "queue maintenance failed");
        }
    }
}

/// A writer job running `run`, whose reply reports the commit and whose `effect` changes
/// memory once it succeeded.
fn job<T: Send + 'static>(
    run: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    effect: impl FnOnce(&T) + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T, Error>>) {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |conn| match run(conn) {
        Ok(v) => Ok(Box::new(move |r: Result<(), &crate::db::Error>| {
            let _ = tx.send(match r {
                Ok(()) => {
                    effect(&v);
                    Ok(v)
                }
                Err(e) => Err(Error::Unavailable {
                    kind: "commit",
                    message: e.to_string(),
                }),
            });
        }) as Finish),
        Err(e) => Err(Box::new(move |_: Result<(), &crate::db::Error>| {
            let _ = tx.send(Err(crate::db::Error::Sql(e).into()));
        }) as Finish),
    });
    (job, rx)
}

impl From<crate::db::Error> for Error {
    fn from(e: crate::db::Error) -> Self {
        Error::Unavailable {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// The file's table of deduplication keys, for a queue whose messages live elsewhere (the
/// RabbitMQ queue): the same table this queue uses, so keys carry over a change of backend.
pub struct DedupeTable {
    db: Db,
}

impl DedupeTable {
    pub fn new(db: Db) -> Self {
        DedupeTable { db }
    }
}

#[async_trait]
impl super::rabbitmq::DedupeKeys for DedupeTable {
    async fn seen(&self, topic: &str, key: &str) -> Result<Option<Option<i64>>, Error> {
        let (topic, key) = (topic.to_string(), key.to_string());
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT fingerprint FROM queue_dedupe WHERE topic = ?1 AND key = ?2",
                )?
                .query_row(params![topic, key], |r| r.get(0))
                .optional()
            })
            .await?)
    }

    async fn record(
        &self,
        topic: &str,
        key: &str,
        at: i64,
        fingerprint: Option<i64>,
    ) -> Result<(), Error> {
        let (topic, key) = (topic.to_string(), key.to_string());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO queue_dedupe (topic, key, seen_at, fingerprint) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![topic, key, at, fingerprint])
            })
            .await?;
        Ok(())
    }

    async fn forget_before(&self, cutoff: i64) -> Result<u64, Error> {
        Ok(self
            .db
            .write(move |c| c.execute("DELETE FROM queue_dedupe WHERE seen_at < ?1", [cutoff]))
            .await? as u64)
    }
}

/// A delivery's handle: the row it came from.
struct Handle {
    queue: SqliteQueue,
    topic: Arc<str>,
    id: i64,
}

#[async_trait]
impl Settle for Handle {
    async fn ack(&self) -> Result<(), Error> {
        self.queue.ack(&self.topic, self.id).await
    }

    async fn nack(&self, attempts: u32, reason: &str) -> Result<(), Error> {
        self.queue
            .fail(&self.topic, self.id, attempts, reason, false)
            .await
    }

    async fn dead_letter(&self, attempts: u32, reason: &str) -> Result<(), Error> {
        self.queue
            .fail(&self.topic, self.id, attempts, reason, true)
            .await
    }

    fn release(&self) {
        self.queue.release(&self.topic, self.id)
    }
}

/// What a publish did, for the step after its commit.
enum Outcome {
    Queued(i64),
    Duplicate,
    Conflict,
}

/// Records a deduplication key in the open transaction; when it was recorded before, says
/// whether this is a duplicate or a conflict, and nothing is recorded.
fn record_key(
    c: &rusqlite::Connection,
    topic: &str,
    key: &str,
    fingerprint: Option<i64>,
    now: f64,
) -> rusqlite::Result<Option<Outcome>> {
    let fresh = c
        .prepare_cached(
            "INSERT OR IGNORE INTO queue_dedupe (topic, key, seen_at, fingerprint) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![topic, key, now as i64, fingerprint])?;
    if fresh > 0 {
        return Ok(None);
    }
    // Read in the same job as the insert, so no publish of the key can come in between.
    let seen: Option<i64> = c
        .prepare_cached("SELECT fingerprint FROM queue_dedupe WHERE topic = ?1 AND key = ?2")?
        .query_row(params![topic, key], |r| r.get(0))?;
    Ok(Some(match (seen, fingerprint) {
        (Some(seen), Some(this)) if seen != this => Outcome::Conflict,
        _ => Outcome::Duplicate,
    }))
}

/// Inserts a message (its payload as stored) in the open transaction; returns its row id.
fn insert_message(
    c: &rusqlite::Connection,
    topic: &str,
    stored: &[u8],
    now: f64,
) -> rusqlite::Result<i64> {
    c.prepare_cached(
        "INSERT INTO queue (topic, payload, attempts, available_at, published_at) VALUES (?1, ?2, 0, ?3, ?3)",
    )?
    .execute(params![topic, stored, now])?;
    Ok(c.last_insert_rowid())
}

/// What a handled publish did, and what memory takes once it is committed.
enum HandledOutcome {
    Seen(Outcome),
    Handled {
        /// The store's series, for its mirror.
        values: std::cell::Cell<Vec<SeriesWrite>>,
        applied: Vec<crate::store::Applied>,
        /// Forwarded messages queued: (topic, id); those already forwarded are absent.
        forwarded: Vec<(Arc<str>, i64)>,
    },
}

/// A row fetched for delivery: its payload as stored and its counts after this delivery.
struct Fetched {
    payload: Vec<u8>,
    attempts: u32,
    deliveries: u32,
    published_at: f64,
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn publish_with(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let topic_name = self.inner.topic_name(topic);
        let depth = self.inner.with_topic(topic, |t| t.live.len() as u64);
        if depth >= self.inner.max_depth {
            self.inner.with_topic(topic, |t| t.stats.rejected_full += 1);
            return Err(Error::Full {
                topic: topic.to_string(),
            });
        }
        let stored = encode_payload(&payload);
        drop(payload);
        let dedupe = dedupe.map(|d| (d.key.to_string(), d.fingerprint));
        let now = now_unix();
        let inner = self.inner.clone();
        let t = topic_name.clone();
        let outcome = self
            .write(
                move |c| {
                    if let Some((key, fingerprint)) = &dedupe
                        && let Some(seen) = record_key(c, &t, key, *fingerprint, now)?
                    {
                        return Ok(seen);
                    }
                    Ok(Outcome::Queued(insert_message(c, &t, &stored, now)?))
                },
                move |outcome| {
                    inner.with_topic(&topic_name, |t| match *outcome {
                        Outcome::Queued(id) => t.published(id, now),
                        ref seen => t.refused(seen),
                    })
                },
            )
            .await?;
        Ok(match outcome {
            Outcome::Queued(_) => Published::Published,
            Outcome::Duplicate => Published::Duplicate,
            Outcome::Conflict => Published::Conflict,
        })
    }

    fn handles_in_publish(&self) -> bool {
        self.store.is_some()
    }

    async fn publish_handled(
        &self,
        topic: &str,
        dedupe: Dedupe<'_>,
        handled: Handled,
    ) -> Result<Published, Error> {
        let Some(store) = self.store.clone() else {
            return Err(Error::Unavailable {
                kind: "unsupported",
                message: "the store is not in the queue's database".into(),
            });
        };
        crate::store::sqlite::validate(&handled.batches).map_err(|e| Error::Unavailable {
            kind: "invalid",
            message: e.to_string(),
        })?;
        let mut forward = Vec::with_capacity(handled.forward.len());
        for f in handled.forward {
            let name = self.inner.topic_name(&f.topic);
            let depth = self.inner.with_topic(&name, |t| t.live.len() as u64);
            if depth >= self.inner.max_depth {
                return Err(Error::Full { topic: f.topic });
            }
            forward.push((name, f.key, encode_payload(&f.payload)));
        }
        let topic_name = self.inner.topic_name(topic);
        let (key, fingerprint) = (dedupe.key.to_string(), dedupe.fingerprint);
        let batches = handled.batches;
        let now = now_unix();
        let (inner, t) = (self.inner.clone(), topic_name.clone());
        let effect_store = store.clone();
        let outcome = self
            .write(
                move |c| {
                    if let Some(seen) = record_key(c, &t, &key, fingerprint, now)? {
                        return Ok(HandledOutcome::Seen(seen));
                    }
                    let (applied, values) = crate::store::sqlite::apply_in(c, batches)?;
                    let mut forwarded = Vec::with_capacity(forward.len());
                    for (topic, key, stored) in forward {
                        if record_key(c, &topic, &key, None, now)?.is_some() {
                            continue;
                        }
                        let id = insert_message(c, &topic, &stored, now)?;
                        forwarded.push((topic, id));
                    }
                    Ok(HandledOutcome::Handled {
                        values: std::cell::Cell::new(values),
                        applied,
                        forwarded,
                    })
                },
                move |outcome| match outcome {
                    HandledOutcome::Seen(seen) => {
                        inner.with_topic(&topic_name, |t| t.refused(seen))
                    }
                    HandledOutcome::Handled {
                        values, forwarded, ..
                    } => {
                        effect_store.mirror(values.take());
                        inner.with_topic(&topic_name, |t| {
                            t.stats.published += 1;
                            t.stats.acked += 1;
                            t.stats.handled_at_publish += 1;
                        });
                        for (topic, id) in forwarded {
                            inner.with_topic(topic, |t| t.published(*id, now));
                        }
                    }
                },
            )
            .await?;
        Ok(match outcome {
            HandledOutcome::Seen(Outcome::Conflict) => Published::Conflict,
            HandledOutcome::Seen(_) => Published::Duplicate,
            HandledOutcome::Handled { applied, .. } => {
                store.count_duplicates(&applied);
                Published::Published
            }
        })
    }

    async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
        let topic_name = self.inner.topic_name(topic);
        loop {
            let now_ms = (now_unix() * 1000.0) as u64;
            let (msg, notify, next_due) = self.inner.with_topic(topic, |t| {
                t.promote_due(now_ms);
                let msg = t.ready.pop_front();
                if let Some(m) = msg {
                    t.inflight.insert(m.id, m);
                }
                (msg, t.notify.clone(), t.delayed.keys().next().map(|k| k.0))
            });
            let Some(m) = msg else {
                let sleep = next_due
                    .map(|due| Duration::from_millis(due.saturating_sub(now_ms).max(1)))
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
                continue;
            };
            // The delivery is counted durably before anyone handles it: a message that kills
            // the process is recognised by its deliveries outnumbering its settled attempts.
            let id = m.id;
            let fetched = self
                .write(
                    move |c| {
                        c.prepare_cached(
                            "UPDATE queue SET deliveries = deliveries + 1 WHERE id = ?1
                         RETURNING payload, attempts, deliveries, published_at",
                        )?
                        .query_row([id], |r| {
                            Ok(Fetched {
                                payload: r.get(0)?,
                                attempts: r.get(1)?,
                                deliveries: r.get(2)?,
                                published_at: r.get(3)?,
                            })
                        })
                        .optional()
                    },
                    |_| {},
                )
                .await;
            let f = match fetched {
                Ok(Some(f)) => f,
                Ok(None) => {
                    // Gone from disk (purged while queued): forget it.
                    self.inner.with_topic(topic, |t| t.forget(id));
                    continue;
                }
                Err(e) => {
                    self.release_quietly(topic, id);
                    return Err(e);
                }
            };
            let unsettled = f.deliveries.saturating_sub(f.attempts);
            if unsettled > MAX_UNSETTLED_DELIVERIES {
                let reason = format!(
                    "poison: delivered {} times without being settled (the consumer or the process stopped while handling it)",
                    unsettled - 1
                );
                self.fail(topic, id, f.attempts, &reason, true).await?;
                continue;
            }
            let Some(payload) = decode_payload(&f.payload) else {
                self.fail(
                    topic,
                    id,
                    f.attempts,
                    "unreadable: the stored payload does not decode",
                    true,
                )
                .await?;
                continue;
            };
            let handle = Handle {
                queue: self.clone(),
                topic: topic_name.clone(),
                id,
            };
            return Ok(Delivery::new(
                id.to_string(),
                topic_name,
                Bytes::from(payload),
                f.attempts,
                f.published_at,
                Box::new(handle),
            ));
        }
    }

    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        let now = now_unix();
        let topics = self.inner.topics.lock();
        let mut out: Vec<_> = topics
            .iter()
            .map(|(name, t)| {
                let mut s = t.stats.clone();
                s.depth = t.live.len() as u64;
                s.oldest_age_seconds = t
                    .live
                    .first_key_value()
                    .map_or(0.0, |(_, at)| (now - at).max(0.0));
                (name.to_string(), s)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn gc(&self, dedupe_retention: Duration) -> Result<u64, Error> {
        let cutoff = now_unix() as i64 - dedupe_retention.as_secs() as i64;
        Ok(self
            .inner
            .db
            .write(move |c| c.execute("DELETE FROM queue_dedupe WHERE seen_at < ?1", [cutoff]))
            .await? as u64)
    }
}

/// Acks and nacks change memory in the post-commit step of their own write, so a dropped
/// future cannot leave memory and disk disagreeing; a write that fails releases the message
/// for redelivery instead of stranding it in flight.
impl SqliteQueue {
    async fn ack(&self, topic: &str, id: i64) -> Result<(), Error> {
        let (inner, t) = (self.inner.clone(), topic.to_string());
        let r = self
            .write(
                move |c| {
                    c.prepare_cached("DELETE FROM queue WHERE id = ?1")?
                        .execute([id])
                        .map(|_| ())
                },
                move |_| {
                    inner.with_topic(&t, |t| {
                        t.forget(id);
                        t.stats.acked += 1;
                    })
                },
            )
            .await;
        if r.is_err() {
            self.release_quietly(topic, id);
        }
        r
    }

    /// A failed attempt: retried as the policy says, or dead-lettered (at once when `permanent`).
    async fn fail(
        &self,
        topic: &str,
        id: i64,
        attempts: u32,
        reason: &str,
        permanent: bool,
    ) -> Result<(), Error> {
        let reason: String = reason.chars().take(1024).collect();
        let now = now_unix();
        let published_at = self
            .inner
            .with_topic(topic, |t| t.live.get(&id).copied())
            .unwrap_or(now);
        let age = Duration::from_secs_f64((now - published_at).max(0.0));
        let decision = if permanent {
            Retry::DeadLetter
        } else {
            self.inner.policy.decide(attempts, age)
        };
        let (inner, t) = (self.inner.clone(), topic.to_string());
        let r = self.write(
            move |c| {
                match decision {
                    Retry::DeadLetter => {
                        c.prepare_cached(
                            "INSERT INTO dead_letters (id, topic, payload, attempts, published_at, dead_at, last_error)
                             SELECT id, topic, payload, ?2, published_at, ?3, ?4 FROM queue WHERE id = ?1",
                        )?
                        .execute(params![id, attempts, now, reason])?;
                        c.prepare_cached("DELETE FROM queue WHERE id = ?1")?.execute([id])?;
                    }
                    Retry::After(delay) => {
                        c.prepare_cached(
                            "UPDATE queue SET attempts = ?2, available_at = ?3, last_error = ?4 WHERE id = ?1",
                        )?
                        .execute(params![id, attempts, now + delay.as_secs_f64(), reason])?;
                    }
                }
                Ok(())
            },
            move |_| {
                inner.with_topic(&t, |tp| {
                    let Some(mut m) = tp.inflight.remove(&id) else { return };
                    match decision {
                        Retry::DeadLetter => {
                            tp.live.remove(&id);
                            tp.stats.dead_lettered += 1;
                            tp.stats.dead_letters += 1;
                            tracing::warn!(topic = %t, id, attempts, "message dead-lettered");
                        }
                        Retry::After(delay) => {
                            tp.stats.retried += 1;
                            m.attempts = attempts;
                            tp.schedule(m, now + delay.as_secs_f64(), now);
                            tp.notify.notify_one();
                        }
                    }
                })
            },
        )
        .await;
        if r.is_err() {
            self.release_quietly(topic, id);
        }
        r
    }

    /// Hands an unfinished delivery back; the delivery it counted is taken back too, so a
    /// cancelled consumer is not mistaken for a message that stops the process.
    fn release(&self, topic: &str, id: i64) {
        if self.release_quietly(topic, id) {
            let (uncount, _) = job(
                move |c| {
                    c.prepare_cached(
                        "UPDATE queue SET deliveries = max(deliveries - 1, 0) WHERE id = ?1",
                    )?
                    .execute([id])
                },
                |_| {},
            );
            // Best effort: a writer too far behind to take it only makes this delivery
            // count towards the poison limit.
            if let Err(e) = self.inner.db.try_submit(uncount) {
                tracing::debug!(error = %e, "could not take back a released delivery's count");
            }
        }
    }

    /// Puts an in-flight message back at the front; `false` when it was not in flight.
    fn release_quietly(&self, topic: &str, id: i64) -> bool {
        self.inner
            .with_topic(topic, |t| match t.inflight.remove(&id) {
                Some(m) => {
                    t.ready.push_front(m);
                    t.notify.notify_one();
                    true
                }
                None => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir, policy: RetryPolicy) -> SqliteQueue {
        SqliteQueue::open(Db::open(&dir.path().join("q.db")).unwrap(), policy).unwrap()
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            horizon: Duration::from_secs(3600),
        }
    }

    /// A handled publish commits the key, the store's batches and its forwards at once;
    /// the key is shared with plain publishes, and nothing waits in the topic.
    #[tokio::test]
    async fn a_handled_publish_applies_forwards_and_dedupes_in_one_commit() {
        use crate::metrics::{self, Labels, Op, Update, Value};
        use crate::store::{Batch, Store};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("q.db")).unwrap();
        let store = Arc::new(SqliteStore::open(db.clone()).unwrap());
        let plain = SqliteQueue::open(db.clone(), fast()).unwrap();
        assert!(!plain.handles_in_publish());
        let other_dir = tempfile::tempdir().unwrap();
        let other = Db::open(&other_dir.path().join("o.db")).unwrap();
        assert!(
            !SqliteQueue::open(other, fast())
                .unwrap()
                .handling_into(store.clone())
                .handles_in_publish(),
            "a store in another database cannot commit with this queue"
        );
        let q = plain.handling_into(store.clone());
        assert!(q.handles_in_publish());
        let labels = Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &["/x", "200"]).unwrap();
        let handled = |key: &str| Handled {
            batches: vec![Batch {
                key: key.into(),
                scope: "s".into(),
                updates: vec![Update {
                    family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
                    labels: labels.clone(),
                    op: Op::Inc(1.0),
                }],
            }],
            forward: vec![super::super::Forward {
                topic: "sink".into(),
                key: "item-1".into(),
                payload: Bytes::from_static(b"item"),
            }],
        };
        let dedupe = |key, fp| Dedupe {
            key,
            fingerprint: Some(fp),
        };
        let value = || {
            store
                .snapshot()
                .get("s", metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &labels)
                .cloned()
        };
        assert_eq!(
            q.publish_handled("t", dedupe("d1", 1), handled("k1"))
                .await
                .unwrap(),
            Published::Published
        );
        assert_eq!(
            value(),
            Some(Value::Number(1.0)),
            "in the mirror when it returns"
        );
        // The same key: a redelivery or a reuse, whichever way it comes.
        assert_eq!(
            q.publish_handled("t", dedupe("d1", 1), handled("k2"))
                .await
                .unwrap(),
            Published::Duplicate
        );
        assert_eq!(
            q.publish_with("t", Some(dedupe("d1", 2)), Bytes::from_static(b"x"))
                .await
                .unwrap(),
            Published::Conflict
        );
        // Another delivery of the same item: applied under its own key, forwarded once.
        assert_eq!(
            q.publish_handled("t", dedupe("d2", 3), handled("k1"))
                .await
                .unwrap(),
            Published::Published
        );
        assert_eq!(
            value(),
            Some(Value::Number(1.0)),
            "batch key k1 applied once"
        );
        let stats: HashMap<_, _> = q.stats().await.unwrap().into_iter().collect();
        let t = &stats["t"];
        assert_eq!(
            (t.depth, t.published, t.acked, t.handled_at_publish),
            (0, 2, 2, 2)
        );
        assert_eq!((t.duplicates, t.conflicts), (1, 1));
        assert_eq!((stats["sink"].depth, stats["sink"].published), (1, 1));
        let d = q.receive("sink").await.unwrap();
        assert_eq!(&d.payload[..], b"item");
        d.ack().await.unwrap();
        // Reopened, the forward is gone (acked) and nothing of the handled ones is queued.
        drop(q);
        let stored: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM queue", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(stored, 0);
    }

    #[tokio::test]
    async fn publish_dedupes_and_delivers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        assert!(matches!(
            q.publish("t", Some("a"), Bytes::from_static(b"1"))
                .await
                .unwrap(),
            Published::Published
        ));
        assert_eq!(
            q.publish("t", Some("a"), Bytes::from_static(b"1"))
                .await
                .unwrap(),
            Published::Duplicate
        );
        let big = Bytes::from(vec![b'x'; 10_000]);
        q.publish("t", None, big.clone()).await.unwrap();
        let d = q.receive("t").await.unwrap();
        assert_eq!(&d.payload[..], b"1");
        d.ack().await.unwrap();
        let d = q.receive("t").await.unwrap();
        assert_eq!(d.payload, big);
        d.ack().await.unwrap();
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!((s.published, s.duplicates, s.acked, s.depth), (2, 1, 2, 0));
    }

    #[tokio::test]
    async fn nack_retries_with_backoff_then_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"bad"))
            .await
            .unwrap();
        for attempt in 0..3 {
            let d = q.receive("t").await.unwrap();
            assert_eq!(d.attempts, attempt);
            d.nack("boom").await.unwrap();
        }
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!(
            (s.retried, s.dead_lettered, s.dead_letters, s.depth),
            (2, 1, 1, 0)
        );
        let dead: (u32, String) = q
            .inner
            .db
            .read(|c| {
                c.query_row("SELECT attempts, last_error FROM dead_letters", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .await
            .unwrap();
        assert_eq!(dead, (3, "boom".to_string()));
        // Reopening keeps the dead-letter count.
        drop(q);
        let q = open(&dir, fast());
        assert_eq!(q.stats().await.unwrap()[0].1.dead_letters, 1);
    }

    #[tokio::test]
    async fn unacked_and_dropped_deliveries_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"a"))
            .await
            .unwrap();
        let d = q.receive("t").await.unwrap();
        drop(d); // released, not an attempt
        let d = q.receive("t").await.unwrap();
        assert_eq!(d.attempts, 0);
        // The process "dies" mid-processing: the files as they are now are what a restart
        // finds (the lock file is not copied; the dying process would have released it).
        for f in ["q.db", "q.db-wal"] {
            let from = dir.path().join(f);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(f.replace("q.db", "r.db"))).unwrap();
            }
        }
        let q2 = SqliteQueue::open(Db::open(&dir.path().join("r.db")).unwrap(), fast()).unwrap();
        let d2 = q2.receive("t").await.unwrap();
        assert_eq!(&d2.payload[..], b"a");
        d2.ack().await.unwrap();
        drop(d);
    }

    /// The files as they are now, as a restart after a crash would find them (the lock file
    /// is not copied; the dying process would have released it).
    fn crash_copy(dir: &tempfile::TempDir, from: &str, to: &str) -> Db {
        for f in ["", "-wal"] {
            let src = dir.path().join(format!("{from}{f}"));
            if src.exists() {
                std::fs::copy(&src, dir.path().join(format!("{to}{f}"))).unwrap();
            }
        }
        Db::open(&dir.path().join(to)).unwrap()
    }

    #[tokio::test]
    async fn a_message_that_keeps_killing_its_consumer_is_dead_lettered_not_looped() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"poison"))
            .await
            .unwrap();
        q.publish("t", None, Bytes::from_static(b"fine"))
            .await
            .unwrap();
        drop(q);
        let mut name = "q.db".to_string();
        for crash in 1..=MAX_UNSETTLED_DELIVERIES {
            let q = SqliteQueue::open(Db::open(&dir.path().join(&name)).unwrap(), fast()).unwrap();
            let d = q.receive("t").await.unwrap();
            assert_eq!(&d.payload[..], b"poison", "crash {crash}");
            // The process dies while handling it: nothing settles the delivery.
            let next = format!("crash{crash}.db");
            std::mem::forget(d);
            drop(crash_copy(&dir, &name, &next));
            name = next;
        }
        let q = SqliteQueue::open(Db::open(&dir.path().join(&name)).unwrap(), fast()).unwrap();
        let d = q.receive("t").await.unwrap();
        assert_eq!(
            &d.payload[..],
            b"fine",
            "the poison message is not delivered again"
        );
        d.ack().await.unwrap();
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!((s.dead_lettered, s.dead_letters, s.depth), (1, 1, 0));
        let reason: String = q
            .inner
            .db
            .read(|c| c.query_row("SELECT last_error FROM dead_letters", [], |r| r.get(0)))
            .await
            .unwrap();
        assert!(reason.starts_with("poison"), "{reason}");
    }

    #[tokio::test]
    async fn a_cancelled_consumer_is_not_taken_for_a_poison_message() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"m"))
            .await
            .unwrap();
        for _ in 0..=MAX_UNSETTLED_DELIVERIES + 2 {
            drop(q.receive("t").await.unwrap());
        }
        let d = q.receive("t").await.unwrap();
        assert_eq!(&d.payload[..], b"m");
        d.ack().await.unwrap();
        assert_eq!(q.stats().await.unwrap()[0].1.dead_letters, 0);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_dead_lettered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"bad"))
            .await
            .unwrap();
        let d = q.receive("t").await.unwrap();
        d.dead_letter("decode: not JSON").await.unwrap();
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!((s.retried, s.dead_lettered, s.depth), (0, 1, 0));
    }

    #[tokio::test]
    async fn an_unreadable_row_is_dead_lettered_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        q.publish("t", None, Bytes::from_static(b"x"))
            .await
            .unwrap();
        q.publish("t", None, Bytes::from_static(b"y"))
            .await
            .unwrap();
        q.inner
            .db
            .write(|c| c.execute("UPDATE queue SET payload = x'09' WHERE id = 1", []))
            .await
            .unwrap();
        let d = q.receive("t").await.unwrap();
        assert_eq!(&d.payload[..], b"y");
        d.ack().await.unwrap();
        let reason: String = q
            .inner
            .db
            .read(|c| {
                c.query_row(
                    "SELECT last_error FROM dead_letters WHERE id = 1",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap();
        assert!(reason.starts_with("unreadable"), "{reason}");
    }

    #[tokio::test]
    async fn a_full_topic_refuses_publishes_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let q =
            SqliteQueue::open_with_depth(Db::open(&dir.path().join("q.db")).unwrap(), fast(), 2)
                .unwrap();
        for m in [&b"1"[..], b"2"] {
            q.publish("t", None, Bytes::copy_from_slice(m))
                .await
                .unwrap();
        }
        let err = q
            .publish("t", None, Bytes::from_static(b"3"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "full");
        q.publish("other", None, Bytes::from_static(b"o"))
            .await
            .unwrap();
        q.receive("t").await.unwrap().ack().await.unwrap();
        q.publish("t", None, Bytes::from_static(b"3"))
            .await
            .unwrap();
        let stats = q.stats().await.unwrap();
        let t = &stats.iter().find(|(n, _)| n == "t").unwrap().1;
        assert_eq!((t.rejected_full, t.depth, t.published), (1, 2, 3));
    }

    #[tokio::test]
    async fn stats_come_from_the_schedule_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, fast());
        for i in 0..100u32 {
            q.publish("t", None, Bytes::from(i.to_string()))
                .await
                .unwrap();
        }
        let d = q.receive("t").await.unwrap();
        d.nack("later").await.unwrap();
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!(s.depth, 100);
        assert!(s.oldest_age_seconds >= 0.0);
        drop(q);
        let q = open(&dir, fast());
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!(s.depth, 100);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            horizon: Duration::from_secs(86_400),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1));
            let b4 = p.backoff(4);
            assert!(b4 >= Duration::from_secs(4) && b4 <= Duration::from_secs(8));
            assert!(p.backoff(30) <= Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod contract_tests {
    #[tokio::test]
    async fn the_sqlite_queue_passes_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("c.db")).unwrap();
        let queue = super::SqliteQueue::open(db, crate::queue::contract::policy()).unwrap();
        crate::queue::contract::run(std::sync::Arc::new(queue)).await;
    }
}
