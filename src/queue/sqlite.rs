//! The embedded queue: messages are rows of the SQLite file; the schedule of what is ready,
//! delayed or in flight is kept in memory and rebuilt from the rows on start (every row not
//! acked is delivered again: at-least-once).

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::params;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

use super::{Delivery, Error, Published, Queue, RetryPolicy, Settle, TopicStats};
use crate::clock::now_unix;
use crate::db::{Db, Finish};

/// Payloads at least this large are stored LZ4-compressed: webhook bodies are JSON that
/// shrinks 4–6×, and durable ingest is bound by bytes written (design.md §7).
const COMPRESS_FROM: usize = 512;
const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

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

fn decode_payload(stored: &[u8]) -> Option<Vec<u8>> {
    match stored.split_first()? {
        (&CODEC_RAW, rest) => Some(rest.to_vec()),
        (&CODEC_LZ4, rest) => lz4_flex::decompress_size_prepended(rest).ok(),
        _ => None,
    }
}

#[derive(Clone)]
struct Msg {
    id: i64,
    payload: Bytes,
    attempts: u32,
    published_at: f64,
}

#[derive(Default)]
struct Topic {
    ready: VecDeque<Msg>,
    /// Keyed by (due time in ms since the epoch, id).
    delayed: BTreeMap<(u64, i64), Msg>,
    inflight: HashMap<i64, Msg>,
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
}

struct Inner {
    db: Db,
    policy: RetryPolicy,
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

#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

impl SqliteQueue {
    pub fn open(db: Db, policy: RetryPolicy) -> Result<SqliteQueue, Error> {
        let inner = Arc::new(Inner {
            db: db.clone(),
            policy,
            topics: Mutex::new(HashMap::new()),
        });
        let (rows, dead) = db.read_blocking(|c| {
            let mut stmt = c.prepare(
                "SELECT id, topic, payload, attempts, available_at, published_at FROM queue ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, f64>(4)?,
                        r.get::<_, f64>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = c.prepare("SELECT topic, count(*) FROM dead_letters GROUP BY topic")?;
            let dead = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((rows, dead))
        })?;
        let now_ms = (now_unix() * 1000.0) as u64;
        for (id, topic, payload, attempts, available_at, published_at) in rows {
            let Some(payload) = decode_payload(&payload) else {
                tracing::error!(
                    id,
                    topic,
                    "queued message has an unreadable payload; left in place"
                );
                continue;
            };
            let msg = Msg {
                id,
                payload: Bytes::from(payload),
                attempts,
                published_at,
            };
            let due = (available_at * 1000.0) as u64;
            inner.with_topic(&topic, |t| {
                if due <= now_ms {
                    t.ready.push_back(msg)
                } else {
                    t.delayed.insert((due, id), msg);
                }
            });
        }
        for (topic, n) in dead {
            inner.with_topic(&topic, |t| t.stats.dead_letters = n);
        }
        Ok(SqliteQueue { inner })
    }

    fn submit<T: Send + 'static>(
        &self,
        run: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
        effect: impl FnOnce(&T) + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner.db.submit(Box::new(move |conn| match run(conn) {
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
        }))?;
        Ok(rx)
    }
}

async fn wait<T>(rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
    rx.await.map_err(|_| crate::db::Error::WriterGone)?
}

impl From<crate::db::Error> for Error {
    fn from(e: crate::db::Error) -> Self {
        Error::Unavailable {
            kind: e.kind(),
            message: e.to_string(),
        }
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
            .nack(&self.topic, self.id, attempts, reason)
            .await
    }

    fn release(&self) {
        self.queue.release(&self.topic, self.id)
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn publish(
        &self,
        topic: &str,
        dedupe_key: Option<&str>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let topic_name = self.inner.topic_name(topic);
        let stored = encode_payload(&payload);
        let key = dedupe_key.map(str::to_string);
        let now = now_unix();
        let inner = self.inner.clone();
        let t = topic_name.clone();
        let rx = self.submit(
            move |c| {
                if let Some(key) = &key {
                    let fresh = c
                        .prepare_cached(
                            "INSERT OR IGNORE INTO queue_dedupe (topic, key, seen_at) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![&*t, key, now as i64])?;
                    if fresh == 0 {
                        return Ok(None);
                    }
                }
                c.prepare_cached(
                    "INSERT INTO queue (topic, payload, attempts, available_at, published_at) VALUES (?1, ?2, 0, ?3, ?3)",
                )?
                .execute(params![&*t, stored, now])?;
                Ok(Some(c.last_insert_rowid()))
            },
            move |outcome| {
                inner.with_topic(&topic_name, |t| match outcome {
                    Some(id) => {
                        t.stats.published += 1;
                        t.ready.push_back(Msg {
                            id: *id,
                            payload,
                            attempts: 0,
                            published_at: now,
                        });
                        t.notify.notify_one();
                    }
                    None => t.stats.duplicates += 1,
                })
            },
        )?;
        Ok(match wait(rx).await? {
            Some(_) => Published::Published,
            None => Published::Duplicate,
        })
    }

    async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
        let topic_name = self.inner.topic_name(topic);
        loop {
            let now_ms = (now_unix() * 1000.0) as u64;
            let (msg, notify, next_due) = self.inner.with_topic(topic, |t| {
                t.promote_due(now_ms);
                let msg = t.ready.pop_front();
                if let Some(m) = &msg {
                    t.inflight.insert(m.id, m.clone());
                }
                (msg, t.notify.clone(), t.delayed.keys().next().map(|k| k.0))
            });
            if let Some(m) = msg {
                let handle = Handle {
                    queue: self.clone(),
                    topic: topic_name.clone(),
                    id: m.id,
                };
                return Ok(Delivery::new(
                    m.id.to_string(),
                    topic_name,
                    m.payload,
                    m.attempts,
                    m.published_at,
                    Box::new(handle),
                ));
            }
            let sleep = next_due
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms).max(1)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        let now = now_unix();
        let topics = self.inner.topics.lock();
        let mut out: Vec<_> = topics
            .iter()
            .map(|(name, t)| {
                let mut s = t.stats.clone();
                s.depth = (t.ready.len() + t.delayed.len() + t.inflight.len()) as u64;
                let oldest = t
                    .ready
                    .iter()
                    .chain(t.delayed.values())
                    .chain(t.inflight.values())
                    .map(|m| m.published_at)
                    .fold(f64::INFINITY, f64::min);
                s.oldest_age_seconds = if oldest.is_finite() {
                    (now - oldest).max(0.0)
                } else {
                    0.0
                };
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
        let rx = self.submit(
            move |c| {
                c.prepare_cached("DELETE FROM queue WHERE id = ?1")?
                    .execute([id])
                    .map(|_| ())
            },
            move |_| {
                inner.with_topic(&t, |t| {
                    t.inflight.remove(&id);
                    t.stats.acked += 1;
                })
            },
        );
        let r = match rx {
            Ok(rx) => wait(rx).await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.release(topic, id);
        }
        r
    }

    async fn nack(&self, topic: &str, id: i64, attempts: u32, reason: &str) -> Result<(), Error> {
        let reason: String = reason.chars().take(1024).collect();
        let dead = attempts >= self.inner.policy.max_attempts;
        let now = now_unix();
        let due = now + self.inner.policy.backoff(attempts).as_secs_f64();
        let (inner, t) = (self.inner.clone(), topic.to_string());
        let rx = self.submit(
            move |c| {
                if dead {
                    c.prepare_cached(
                        "INSERT INTO dead_letters (id, topic, payload, attempts, published_at, dead_at, last_error)
                         SELECT id, topic, payload, ?2, published_at, ?3, ?4 FROM queue WHERE id = ?1",
                    )?
                    .execute(params![id, attempts, now, reason])?;
                    c.prepare_cached("DELETE FROM queue WHERE id = ?1")?.execute([id])?;
                } else {
                    c.prepare_cached(
                        "UPDATE queue SET attempts = ?2, available_at = ?3, last_error = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, attempts, due, reason])?;
                }
                Ok(())
            },
            move |_| {
                inner.with_topic(&t, |tp| {
                    let Some(mut m) = tp.inflight.remove(&id) else { return };
                    if dead {
                        tp.stats.dead_lettered += 1;
                        tp.stats.dead_letters += 1;
                        tracing::warn!(topic = %t, id, attempts, "message dead-lettered");
                    } else {
                        tp.stats.retried += 1;
                        m.attempts = attempts;
                        tp.delayed.insert(((due * 1000.0) as u64, id), m);
                        tp.notify.notify_one();
                    }
                })
            },
        );
        let r = match rx {
            Ok(rx) => wait(rx).await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.release(topic, id);
        }
        r
    }

    fn release(&self, topic: &str, id: i64) {
        self.inner.with_topic(topic, |t| {
            if let Some(m) = t.inflight.remove(&id) {
                t.ready.push_front(m);
                t.notify.notify_one();
            }
        });
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
        }
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

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
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
