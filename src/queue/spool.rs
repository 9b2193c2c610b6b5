//! A local spool in front of a network queue (RabbitMQ, Redis streams), so an unreachable broker costs webhook
//! senders nothing: a publish the broker cannot take goes, with its deduplication key and
//! fingerprint, to the embedded queue in this replica's own file (topic `spool/{topic}`) and
//! is accepted; a drainer per topic moves spooled messages to the broker once it answers.
//!
//! Why nothing accepted is lost: a spooled message is durable in the file before `publish`
//! returns, and the drainer acks it only after the broker confirmed its copy. A crash between
//! the two leaves both, a duplicate that consumers apply once; and a keyed copy is not even
//! that, because the broker's publish records the key after the confirm and the next drain
//! finds it.
//!
//! Deduplication: a key spooled is recorded in the spool's own table in the same step as the
//! spooled message, so a redelivery is refused as a duplicate whether the first copy still
//! waits in the spool or was drained (the spool's keys are kept for the same retention). A
//! drained message whose key the broker's keys already hold (another replica published the
//! same delivery meanwhile, when keys are shared in Redis) is dropped as the duplicate it is.

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::rabbitmq::DedupeKeys;
use super::sqlite::SqliteQueue;
use super::{Dedupe, Delivery, Error, Published, Queue, TopicStats};

/// A network queue a spool can stand in front of.
#[async_trait]
pub trait Broker: Queue + Clone + 'static {
    /// Whether the broker answers now (a cheap probe, bounded in time).
    async fn reachable(&self) -> bool;
    /// [`Queue::publish_with`] keeping the message's original publication time (Unix
    /// seconds), so queue age stays true for a message that waited in the spool.
    async fn publish_at(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
        published_at: f64,
    ) -> Result<Published, Error>;
}

/// Spool topics are named `{SPOOL_PREFIX}{topic}`.
pub const SPOOL_PREFIX: &str = "spool/";
const DRAIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
const ENVELOPE_V1: u8 = 1;
const HAS_KEY: u8 = 1;
const HAS_FINGERPRINT: u8 = 2;

/// The spool topic of `topic`.
pub fn spool_topic(topic: &str) -> String {
    format!("{SPOOL_PREFIX}{topic}")
}

/// Whether a failed broker publish may be spooled: it may succeed later. A name the broker
/// can never take (too long) or a broken URL would wait in the spool forever.
fn spoolable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { kind, .. } if !matches!(*kind, "name" | "config"))
}

/// A spooled message: its key and fingerprint travel with it, since the drainer publishes
/// it to the broker under them.
fn encode(dedupe: Option<Dedupe<'_>>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 64);
    out.put_u8(ENVELOPE_V1);
    let mut flags = 0;
    if let Some(d) = dedupe {
        flags |= HAS_KEY;
        if d.fingerprint.is_some() {
            flags |= HAS_FINGERPRINT;
        }
    }
    out.put_u8(flags);
    if let Some(d) = dedupe {
        out.put_u32(d.key.len() as u32);
        out.put_slice(d.key.as_bytes());
        if let Some(f) = d.fingerprint {
            out.put_i64(f);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A decoded envelope: key, fingerprint and payload.
struct Envelope {
    key: Option<String>,
    fingerprint: Option<i64>,
    payload: Bytes,
}

impl Envelope {
    fn dedupe(&self) -> Option<Dedupe<'_>> {
        self.key.as_deref().map(|key| Dedupe {
            key,
            fingerprint: self.fingerprint,
        })
    }
}

fn decode(stored: &Bytes) -> Option<Envelope> {
    let (&version, rest) = stored.split_first()?;
    if version != ENVELOPE_V1 {
        return None;
    }
    let (&flags, mut rest) = rest.split_first()?;
    let mut key = None;
    let mut fingerprint = None;
    if flags & HAS_KEY != 0 {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let k = rest.get(4..4 + len)?;
        key = Some(String::from_utf8(k.to_vec()).ok()?);
        rest = &rest[4 + len..];
        if flags & HAS_FINGERPRINT != 0 {
            fingerprint = Some(i64::from_be_bytes(rest.get(..8)?.try_into().ok()?));
            rest = &rest[8..];
        }
    }
    let offset = stored.len() - rest.len();
    Some(Envelope {
        key,
        fingerprint,
        payload: stored.slice(offset..),
    })
}

struct Inner<B: Broker> {
    broker: B,
    spool: SqliteQueue,
    /// The spool's own key table, read before a publish goes to the broker.
    spool_keys: Arc<dyn DedupeKeys>,
    /// Topics whose drainer runs.
    draining: Mutex<HashSet<String>>,
    shutdown: CancellationToken,
}

impl<B: Broker> Drop for Inner<B> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A network queue with a local spool for outages (see the module documentation).
pub struct Spooled<B: Broker> {
    inner: Arc<Inner<B>>,
}

impl<B: Broker> Clone for Spooled<B> {
    fn clone(&self) -> Self {
        Spooled {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Broker> Spooled<B> {
    /// `spool` is the embedded queue in this replica's file and `spool_keys` its key table
    /// (the same file's). Messages spooled before a restart start draining at once.
    pub async fn open(
        broker: B,
        spool: SqliteQueue,
        spool_keys: Arc<dyn DedupeKeys>,
    ) -> Result<Spooled<B>, Error> {
        let queue = Spooled {
            inner: Arc::new(Inner {
                broker,
                spool,
                spool_keys,
                draining: Mutex::new(HashSet::new()),
                shutdown: CancellationToken::new(),
            }),
        };
        for (name, s) in queue.inner.spool.stats().await? {
            if let Some(topic) = name.strip_prefix(SPOOL_PREFIX)
                && s.depth > 0
            {
                tracing::info!(
                    topic,
                    spooled = s.depth,
                    "draining messages spooled before the restart"
                );
                queue.drain(topic);
            }
        }
        Ok(queue)
    }

    /// Starts `topic`'s drainer once; it runs until the queue is dropped.
    fn drain(&self, topic: &str) {
        if !self.inner.draining.lock().insert(topic.to_string()) {
            return;
        }
        let broker = self.inner.broker.clone();
        let spool = self.inner.spool.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(drain(broker, spool, topic.to_string(), shutdown));
    }
}

/// Sleeps `backoff` (then doubles it) unless the queue closes first: `false` then.
async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(DRAIN_BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Moves `topic`'s spooled messages to the broker, oldest first: a confirmed publish, then
/// the spooled copy's ack. A message is taken from the spool only once the broker answers,
/// so an outage does not hold one in hand (where a crash would count it towards the
/// spool's poison rule); a publish that fails on the way releases it at shutdown.
async fn drain<B: Broker>(
    broker: B,
    spool: SqliteQueue,
    topic: String,
    shutdown: CancellationToken,
) {
    let from = spool_topic(&topic);
    let mut backoff = DRAIN_BACKOFF_MIN;
    loop {
        if !broker.reachable().await {
            if !pause(&mut backoff, &shutdown).await {
                return;
            }
            continue;
        }
        let d: Delivery = tokio::select! {
            _ = shutdown.cancelled() => return,
            d = spool.receive(&from) => match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "reading the spool failed");
                    if !pause(&mut backoff, &shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let Some(envelope) = decode(&d.payload) else {
            let _ = d
                .dead_letter("unreadable: not a spooled message envelope")
                .await;
            continue;
        };
        let published = loop {
            let r = broker
                .publish_at(
                    &topic,
                    envelope.dedupe(),
                    envelope.payload.clone(),
                    d.published_at,
                )
                .await;
            match r {
                Err(e) if spoolable(&e) => {
                    tracing::debug!(topic, error = %e, "the broker did not take a spooled message yet");
                    // Dropping the delivery on shutdown hands it back to the spool.
                    if !pause(&mut backoff, &shutdown).await {
                        return;
                    }
                }
                other => break other,
            }
        };
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                let _ = d.dead_letter(&e.to_string()).await;
                continue;
            }
        };
        backoff = DRAIN_BACKOFF_MIN;
        if published != Published::Published {
            tracing::info!(topic, outcome = ?published, "a spooled message's key was already on the broker; dropped");
        }
        if let Err(e) = d.ack().await {
            // It comes back from the spool; its key, recorded on the broker side, makes the
            // next drain drop it (an unkeyed one is queued twice, which consumers tolerate).
            tracing::warn!(topic, error = %e, "a drained message stays in the spool");
        }
    }
}

#[async_trait]
impl<B: Broker> Queue for Spooled<B> {
    async fn publish_with(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let spooled_topic = spool_topic(topic);
        // A key spooled (waiting or drained) refuses its redelivery: the spool's own publish
        // refuses it and counts it, against the key recorded in the same file.
        let spooled_key = match &dedupe {
            Some(d) => self.inner.spool_keys.seen(&spooled_topic, d.key).await?,
            None => None,
        };
        if spooled_key.is_none() {
            match self
                .inner
                .broker
                .publish_with(topic, dedupe, payload.clone())
                .await
            {
                Err(e) if spoolable(&e) => {
                    tracing::debug!(topic, error = %e, "broker unavailable; spooling locally");
                }
                other => return other,
            }
        }
        let envelope = encode(dedupe, &payload);
        let r = self
            .inner
            .spool
            .publish_with(&spooled_topic, dedupe, envelope)
            .await?;
        if r == Published::Published {
            self.drain(topic);
        }
        Ok(r)
    }

    async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
        self.inner.broker.receive(topic).await
    }

    /// The broker's topics and, as their own rows (`spool/{topic}`), the spool's: its depth
    /// is what waits for the broker. While the broker cannot be reached the spool's rows
    /// alone are shown.
    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        let mut out = self.inner.spool.stats().await?;
        match self.inner.broker.stats().await {
            Ok(rows) => out.extend(rows),
            Err(e) => tracing::debug!(error = %e, "broker figures unavailable; spool figures only"),
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn gc(&self, dedupe_retention: Duration) -> Result<u64, Error> {
        let spool = self.inner.spool.gc(dedupe_retention).await?;
        Ok(spool + self.inner.broker.gc(dedupe_retention).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_key_fingerprint_and_payload() {
        for (key, fingerprint) in [
            (None, None),
            (Some("delivery-1"), None),
            (Some("delivery-2"), Some(-42i64)),
            (Some(""), Some(7)),
        ] {
            let dedupe = key.map(|key| Dedupe { key, fingerprint });
            let stored = encode(dedupe, b"{\"x\":1}");
            let e = decode(&stored).expect("decodes");
            assert_eq!(e.key.as_deref(), key);
            assert_eq!(e.fingerprint, fingerprint.filter(|_| key.is_some()));
            assert_eq!(&e.payload[..], b"{\"x\":1}");
        }
        assert!(decode(&Bytes::from_static(b"")).is_none());
        assert!(decode(&Bytes::from_static(&[9, 0])).is_none());
        assert!(decode(&Bytes::from_static(&[1, 1, 0, 0, 0, 9, b'a'])).is_none());
    }

    #[test]
    fn only_failures_that_may_pass_are_spooled() {
        let e = |kind| Error::Unavailable {
            kind,
            message: String::new(),
        };
        assert!(spoolable(&e("connect")));
        assert!(spoolable(&e("timeout")));
        assert!(!spoolable(&e("name")));
        assert!(!spoolable(&Error::Full { topic: "t".into() }));
    }

    use crate::db::Db;
    use crate::queue::rabbitmq::Settings;
    use crate::queue::sqlite::DedupeTable;
    use crate::queue::test_services::{RABBITMQ as BROKER, rabbitmq as broker};
    use crate::sim::chaos::Proxy;
    use std::collections::BTreeMap;

    /// A process on the file in `dir`, reaching the broker at `addr`.
    async fn open(
        dir: &tempfile::TempDir,
        addr: std::net::SocketAddr,
        prefix: &str,
    ) -> Spooled<crate::queue::rabbitmq::RabbitMqQueue> {
        let db = Db::open(&dir.path().join("spool.db")).unwrap();
        let keys = Arc::new(DedupeTable::new(db.clone()));
        let store = Arc::new(crate::store::sqlite::SqliteStore::open(db.clone()).unwrap());
        let settings = Settings {
            url: crate::config::Secret::new(format!("amqp://guest:guest@{addr}/%2f")),
            prefix: prefix.to_string(),
            policy: crate::queue::contract::policy(),
            queue_expiry: Some(Duration::from_secs(300)),
            ca_pem: None,
        };
        let broker = crate::queue::rabbitmq::RabbitMqQueue::open(settings, keys.clone(), store)
            .await
            .unwrap();
        let spool = SqliteQueue::open(db, crate::queue::contract::policy()).unwrap();
        Spooled::open(broker, spool, keys).await.unwrap()
    }

    fn prefix() -> String {
        format!("devmetrics-unit-{:016x}", rand::random::<u64>())
    }

    async fn spool_depth<B: Broker>(q: &Spooled<B>, topic: &str) -> u64 {
        q.stats()
            .await
            .unwrap()
            .into_iter()
            .find(|(t, _)| *t == spool_topic(topic))
            .map_or(0, |(_, s)| s.depth)
    }

    /// Receives until `n` messages came, then checks that no more come.
    async fn receive_all<B: Broker>(
        q: &Spooled<B>,
        topic: &str,
        n: usize,
    ) -> BTreeMap<String, (usize, f64)> {
        let mut seen: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        let mut got = 0;
        while got < n {
            let d = tokio::time::timeout(Duration::from_secs(20), q.receive(topic))
                .await
                .unwrap_or_else(|_| panic!("{got} of {n} messages arrived: {seen:?}"));
            let Ok(d) = d else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let e = seen
                .entry(String::from_utf8(d.payload.to_vec()).unwrap())
                .or_default();
            e.0 += 1;
            e.1 = d.published_at;
            d.ack().await.unwrap();
            got += 1;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), q.receive(topic))
                .await
                .is_err(),
            "no more messages than published"
        );
        seen
    }

    const N: usize = 20;

    async fn publish_keyed<B: Broker>(q: &Spooled<B>, topic: &str, from: usize) {
        for i in from..from + N {
            let key = format!("delivery-{i}");
            let body = Bytes::from(format!("event-{i}"));
            let dedupe = Dedupe {
                key: &key,
                fingerprint: Some(crate::queue::fingerprint(&body)),
            };
            let r = q.publish_with(topic, Some(dedupe), body.clone()).await;
            assert_eq!(r.unwrap(), Published::Published, "{key}");
        }
    }

    /// The broker cut off: every keyed publish is accepted (spooled), its redelivery refused
    /// as a duplicate; once the broker is back every message arrives on its topic exactly
    /// once, with its original publication time, and the keys still refuse redeliveries.
    #[tokio::test]
    async fn publishes_during_an_outage_are_spooled_and_arrive_once_after_it() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(BROKER.parse().unwrap()).await.unwrap();
        let q = open(&dir, proxy.addr, &prefix()).await;
        outage_then_recovery(&q, &proxy).await;
    }

    /// The same with the queue on Redis streams: Redis cut off, publishes spooled, then
    /// drained once Redis answers again.
    #[tokio::test]
    async fn publishes_during_a_redis_outage_are_spooled_and_arrive_once_after_it() {
        use crate::queue::test_services::{REDIS, redis};
        if !redis() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(REDIS.parse().unwrap()).await.unwrap();
        let db = Db::open(&dir.path().join("spool.db")).unwrap();
        let keys = Arc::new(DedupeTable::new(db.clone()));
        let settings = crate::queue::redis::Settings {
            redis: crate::config::RedisConfig {
                url: crate::config::Secret::new(format!("redis://{}/0", proxy.addr)),
                key_prefix: prefix(),
                sentinel: None,
                ca_pem: None,
            },
            url_key: "queue.redis.url".into(),
            policy: crate::queue::contract::policy(),
            max_depth: 10_000,
            visibility_timeout: Duration::from_secs(30),
        };
        let broker = crate::queue::redis::RedisQueue::open(settings)
            .await
            .unwrap();
        let spool = SqliteQueue::open(db, crate::queue::contract::policy()).unwrap();
        let q = Spooled::open(broker, spool, keys).await.unwrap();
        outage_then_recovery(&q, &proxy).await;
    }

    async fn outage_then_recovery<B: Broker>(q: &Spooled<B>, proxy: &Proxy) {
        let q = q.clone();
        let t = "webhooks/github";
        publish_keyed(&q, t, 0).await;
        proxy.cut();
        let started = std::time::Instant::now();
        publish_keyed(&q, t, N).await;
        let spooling = started.elapsed();
        let mut respooled = 0;
        for i in [0, N, N + 1] {
            let key = format!("delivery-{i}");
            let body = Bytes::from(format!("event-{i}"));
            let dedupe = Dedupe {
                key: &key,
                fingerprint: Some(crate::queue::fingerprint(&body)),
            };
            let r = q.publish_with(t, Some(dedupe), body).await.unwrap();
            if i == 0 && r == Published::Published {
                // A key the broker holds beside its messages (Redis streams) cannot be read
                // during the outage: the redelivery is spooled, and dropped as a duplicate
                // when drained.
                respooled += 1;
                continue;
            }
            assert_eq!(r, Published::Duplicate, "{key} again during the outage");
        }
        assert_eq!(spool_depth(&q, t).await, N as u64 + respooled);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let healed_at = crate::clock::now_unix();
        proxy.heal();
        let healed = std::time::Instant::now();
        let seen = receive_all(&q, t, 2 * N).await;
        eprintln!(
            "{N} keyed publishes spooled in {spooling:?}; {} messages received {:?} after healing",
            2 * N,
            healed.elapsed()
        );
        assert_eq!(seen.len(), 2 * N);
        for (body, (count, published_at)) in &seen {
            assert_eq!(*count, 1, "{body}");
            assert!(
                *published_at < healed_at,
                "{body} keeps its publication time"
            );
        }
        for _ in 0..50 {
            if spool_depth(&q, t).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(spool_depth(&q, t).await, 0);
        assert_eq!(
            q.publish(
                t,
                Some(&format!("delivery-{}", N + 3)),
                Bytes::from("again")
            )
            .await
            .unwrap(),
            Published::Duplicate,
            "a drained key still refuses its redelivery"
        );
    }

    /// The process stops with messages in the spool: the next process on the same file
    /// drains them, and nothing is lost or doubled.
    #[tokio::test]
    async fn a_restart_with_messages_spooled_loses_nothing() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let prefix = prefix();
        let proxy = Proxy::start(BROKER.parse().unwrap()).await.unwrap();
        let q = open(&dir, proxy.addr, &prefix).await;
        let t = "webhooks/github";
        proxy.cut();
        publish_keyed(&q, t, 0).await;
        q.publish(t, None, Bytes::from("unkeyed")).await.unwrap();
        drop(q);
        // Let its writer finish before the next "process" opens the file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.heal();
        let q = open(&dir, proxy.addr, &prefix).await;
        let seen = receive_all(&q, t, N + 1).await;
        assert_eq!(seen.len(), N + 1);
        assert!(seen.values().all(|(count, _)| *count == 1), "{seen:?}");
        assert!(seen.contains_key("unkeyed"));
    }
}
