//! The queue on a RabbitMQ broker (AMQP 0.9.1). Every topic is a durable quorum queue
//! `{prefix}.{topic}` on the default exchange; a nacked message waits in a TTL retry queue
//! that dead-letters it back to its topic; dead letters are the queue `{prefix}.{topic}.dead`.
//! Publishes are persistent and return once the broker confirmed them. RabbitMQ has no
//! deduplication, so keys live in [`DedupeKeys`] (beside the store: its SQLite file, or
//! Redis), written only after the broker confirmed the message. docs/ha.md describes the
//! topology.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Dedupe, Delivery, Error, MAX_UNSETTLED_DELIVERIES, Published, Queue, Retry, RetryPolicy,
    Settle, TopicStats,
};
use crate::clock::now_unix;
use crate::store::SharedStore;

/// Unacknowledged messages the broker hands one topic's consumer ahead of `receive`: enough
/// to keep several handlers busy without a round trip each, few enough that a stopping
/// process hands little back.
pub const PREFETCH: u16 = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds one publish and its confirm, and one settle.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// `stats` is read by scrapes, which must not hang on a slow broker.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Retry delays are rounded down to a ladder of this many steps per doubling (see
/// [`retry_bucket_ms`]).
const BUCKET_STEPS_PER_DOUBLING: f64 = 2.0;
const REASON_MAX_CHARS: usize = 1024;

const HEADER_ATTEMPTS: &str = "devmetrics-attempts";
const HEADER_REASON: &str = "devmetrics-reason";
const HEADER_DEAD_AT: &str = "devmetrics-dead-at";
/// Set by quorum queues: how often the broker got this message back unsettled.
const HEADER_DELIVERY_COUNT: &str = "x-delivery-count";
/// Store kv namespace: message id → hand-outs of it, after its first delivery, that nobody
/// settled yet.
const UNSETTLED_NS: &str = "queue.rabbitmq.unsettled";
/// Longer than any message waits for its next delivery.
const UNSETTLED_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Where a queue without deduplication of its own keeps publishes' keys. The queue records a
/// key only after the broker confirmed its message (see [`RabbitMqQueue`]).
#[async_trait]
pub trait DedupeKeys: Send + Sync {
    /// `None` for a key not seen; else the fingerprint it was recorded with, if any.
    async fn seen(&self, topic: &str, key: &str) -> Result<Option<Option<i64>>, Error>;
    /// Records `key` as seen at `at` (Unix seconds) with the content's `fingerprint`;
    /// recording it again changes nothing.
    async fn record(
        &self,
        topic: &str,
        key: &str,
        at: i64,
        fingerprint: Option<i64>,
    ) -> Result<(), Error>;
    /// Forgets keys seen before `cutoff` (Unix seconds); returns how many went.
    async fn forget_before(&self, cutoff: i64) -> Result<u64, Error>;
}

/// Checks `queue.rabbitmq.url` without connecting. The problem never quotes the URL: it
/// holds the password.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri = AMQPUri::from_str(url).map_err(|_| {
        "not an AMQP URL: expected amqp://USER:PASSWORD@HOST:PORT/VHOST (the vhost / is written %2f)"
            .to_string()
    })?;
    if uri.authority.host.is_empty() {
        return Err("names no host".into());
    }
    Ok(())
}

/// Checks `queue.rabbitmq.prefix`: it starts every queue name.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if prefix.starts_with("amq.") {
        return Err("names starting with amq. are reserved by the broker".into());
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err("may hold letters, digits and - _ . : / only".into());
    }
    Ok(())
}

/// How the queue reaches the broker and names its queues.
#[derive(Clone)]
pub struct Settings {
    pub url: crate::config::Secret,
    pub prefix: String,
    pub policy: RetryPolicy,
    /// Tests only: `x-expires` on every queue, so throwaway prefixes clean up after themselves.
    pub queue_expiry: Option<Duration>,
    /// PEM certificates trusted for `amqps://` besides the system's roots (a private CA).
    pub ca_pem: Option<String>,
}

/// The queue kinds of one topic; each is declared with its own arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Topic,
    Dead,
    /// Messages wait here this many milliseconds, then go back to the topic.
    Retry(u64),
}

/// The retry queue a delay goes to. RabbitMQ expires messages only at the head of a queue, so
/// one queue holding different delays would keep a short one waiting behind a long one.
/// Delays are therefore rounded down to a ladder (two steps per doubling) and each step is
/// its own queue, whose messages all carry the same expiration and so leave in order. Per
/// backoff step would not do: with jitter one step's delays differ by up to twice. The
/// rounding keeps most of the jitter (a jittered range spans two or three steps) and bounds
/// the queues per topic (about 20 between 0.5 s and 5 min), declared only once used.
fn retry_bucket_ms(delay: Duration) -> u64 {
    let ms = delay.as_millis().max(1) as f64;
    let step = (ms.log2() * BUCKET_STEPS_PER_DOUBLING).floor();
    (2f64.powf(step / BUCKET_STEPS_PER_DOUBLING).round() as u64).max(1)
}

fn unavailable(kind: &'static str, message: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        kind,
        message: message.to_string(),
    }
}

/// One connection and its publishing channel (publisher confirms on).
struct Link {
    conn: Connection,
    channel: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

#[derive(Default)]
struct LinkState {
    link: Option<Arc<Link>>,
    failures: u32,
    /// No connection attempt before this: an outage is answered at once, not by a
    /// connection attempt per operation.
    next_attempt: Option<Instant>,
    last_error: String,
}

/// What this process holds of a topic.
struct Topic {
    name: Arc<str>,
    stats: Mutex<TopicStats>,
    /// Deliveries this process holds unsettled (prefetched or handed out): local id → publish
    /// time. The broker counts them neither as ready nor, to a passive declare, at all.
    held: Mutex<HashMap<u64, f64>>,
    pump: Mutex<Pump>,
    notify: Notify,
    retry_buckets: Mutex<BTreeSet<u64>>,
}

/// The consumer side of a topic: prefetched deliveries waiting for `receive`.
#[derive(Default)]
struct Pump {
    started: bool,
    up: bool,
    error: Option<String>,
    buffer: VecDeque<(u64, lapin::message::Delivery)>,
}

struct Inner {
    uri: AMQPUri,
    /// `host:port/vhost`, for messages (the URL holds the password).
    display: String,
    prefix: String,
    policy: RetryPolicy,
    queue_expiry: Option<Duration>,
    ca_pem: Option<String>,
    keys: Arc<dyn DedupeKeys>,
    /// Hand-outs of redelivered messages that were not settled (see [`RabbitMqQueue::deliver`]).
    store: SharedStore,
    link: tokio::sync::Mutex<LinkState>,
    /// Queues declared on the current connection.
    declared: Mutex<HashSet<String>>,
    topics: Mutex<HashMap<Arc<str>, Arc<Topic>>>,
    next_local_id: AtomicU64,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let (Ok(rt), Some(link)) = (
            tokio::runtime::Handle::try_current(),
            self.link.get_mut().link.take(),
        ) {
            rt.spawn(async move {
                let _ = link.conn.close(200, "closing".into()).await;
            });
        }
    }
}

/// The RabbitMQ queue. Dedupe order: a keyed publish checks the key, publishes and waits for
/// the broker's confirm, and only then records the key. A crash between the confirm and the
/// record leaves the message queued and the key unrecorded, so a redelivery of the same
/// event is published again: a duplicate, which every consumer tolerates. Recording first
/// would turn a crash before the publish into a redelivery refused as a duplicate of a
/// message that never reached the broker: an event lost.
#[derive(Clone)]
pub struct RabbitMqQueue {
    inner: Arc<Inner>,
}

impl RabbitMqQueue {
    /// Connects (so a wrong URL or credentials stop the start) and returns the queue.
    pub async fn open(
        settings: Settings,
        keys: Arc<dyn DedupeKeys>,
        store: SharedStore,
    ) -> Result<RabbitMqQueue, Error> {
        let uri = AMQPUri::from_str(settings.url.expose())
            .map_err(|_| unavailable("config", "queue.rabbitmq.url is not an AMQP URL"))?;
        let display = format!(
            "{}:{}/{}",
            uri.authority.host, uri.authority.port, uri.vhost
        );
        let queue = RabbitMqQueue {
            inner: Arc::new(Inner {
                uri,
                display,
                prefix: settings.prefix,
                policy: settings.policy,
                queue_expiry: settings.queue_expiry,
                ca_pem: settings.ca_pem,
                keys,
                store,
                link: tokio::sync::Mutex::new(LinkState::default()),
                declared: Mutex::new(HashSet::new()),
                topics: Mutex::new(HashMap::new()),
                next_local_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
            }),
        };
        queue.link().await?;
        Ok(queue)
    }

    fn queue_name(&self, topic: &str, kind: Kind) -> String {
        let p = &self.inner.prefix;
        match kind {
            Kind::Topic => format!("{p}.{topic}"),
            Kind::Dead => format!("{p}.{topic}.dead"),
            Kind::Retry(ms) => format!("{p}.{topic}.retry.{ms}ms"),
        }
    }

    fn topic(&self, topic: &str) -> Arc<Topic> {
        let mut topics = self.inner.topics.lock();
        if let Some(t) = topics.get(topic) {
            return t.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        let t = Arc::new(Topic {
            name: name.clone(),
            stats: Mutex::new(TopicStats::default()),
            held: Mutex::new(HashMap::new()),
            pump: Mutex::new(Pump::default()),
            notify: Notify::new(),
            retry_buckets: Mutex::new(BTreeSet::new()),
        });
        topics.insert(name, t.clone());
        t
    }

    /// The live connection, reconnecting when it was lost, at most once per backoff step.
    async fn link(&self) -> Result<Arc<Link>, Error> {
        let mut st = self.inner.link.lock().await;
        if let Some(link) = &st.link {
            if link.alive() {
                return Ok(link.clone());
            }
            st.link = None;
            st.last_error = "the connection to the broker was lost".into();
            self.inner.declared.lock().clear();
        }
        if let Some(at) = st.next_attempt
            && Instant::now() < at
        {
            return Err(unavailable(
                "connect",
                format!(
                    "RabbitMQ at {} unreachable: {}",
                    self.inner.display, st.last_error
                ),
            ));
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await;
        let result = match attempt {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        };
        match result {
            Ok(link) => {
                let link = Arc::new(link);
                if st.failures > 0 {
                    tracing::info!(broker = %self.inner.display, "reconnected to RabbitMQ");
                }
                *st = LinkState {
                    link: Some(link.clone()),
                    ..LinkState::default()
                };
                self.inner.declared.lock().clear();
                Ok(link)
            }
            Err(e) => {
                st.failures += 1;
                let backoff = RECONNECT_MIN
                    .saturating_mul(1 << (st.failures - 1).min(10))
                    .min(RECONNECT_MAX);
                st.next_attempt = Some(Instant::now() + backoff);
                st.last_error = e.clone();
                tracing::warn!(broker = %self.inner.display, error = %e, retry_in = ?backoff, "cannot connect to RabbitMQ");
                Err(unavailable(
                    "connect",
                    format!("RabbitMQ at {} unreachable: {e}", self.inner.display),
                ))
            }
        }
    }

    async fn connect(&self) -> Result<Link, String> {
        let props = ConnectionProperties::default().with_connection_name("devmetrics".into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.inner.ca_pem.clone(),
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let conn = Connection::connect_uri_with_config(self.inner.uri.clone(), props, tls, runtime)
            .await
            .map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Link { conn, channel })
    }

    /// Declares `kind`'s queue of `topic` once per connection (idempotent on the broker).
    async fn declare(&self, link: &Link, topic: &str, kind: Kind) -> Result<String, Error> {
        let name = self.queue_name(topic, kind);
        if self.inner.declared.lock().contains(&name) {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Kind::Retry(_) = kind {
            // Expired messages go back to the topic through the default exchange. Quorum
            // queues move them at least once (the alternative drops one if the broker fails
            // mid-move), which needs publishes refused, not heads dropped, when full.
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.queue_name(topic, Kind::Topic).into()),
            );
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        if let Some(e) = self.inner.queue_expiry {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(e.as_millis() as i64),
            );
        }
        link.channel
            .queue_declare(short(&name)?, QueueDeclareOptions::durable(), args)
            .await
            .map_err(|e| unavailable("declare", format!("declaring queue {name}: {e}")))?;
        self.inner.declared.lock().insert(name.clone());
        Ok(name)
    }

    /// Publishes persistently to `kind`'s queue of `topic` and waits for the broker's
    /// confirm. `mandatory` turns a queue deleted behind our back into an error, not a
    /// message silently dropped; it is declared again and the publish repeated once.
    async fn send(
        &self,
        topic: &str,
        kind: Kind,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), Error> {
        let work = async {
            for _ in 0..2 {
                let link = self.link().await?;
                let name = self.declare(&link, topic, kind).await?;
                let confirm = link
                    .channel
                    .basic_publish(
                        "".into(),
                        short(&name)?,
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        payload,
                        props.clone(),
                    )
                    .await
                    .map_err(|e| unavailable("publish", e))?
                    .await
                    .map_err(|e| unavailable("publish", e))?;
                match confirm {
                    Confirmation::Ack(None) => return Ok(()),
                    Confirmation::Ack(Some(_)) => {
                        self.inner.declared.lock().remove(&name);
                        continue;
                    }
                    Confirmation::Nack(_) => {
                        return Err(unavailable(
                            "nacked",
                            format!("the broker refused the message for {name}"),
                        ));
                    }
                    Confirmation::NotRequested => {
                        return Err(unavailable(
                            "unconfirmed",
                            "the publishing channel lost publisher confirms",
                        ));
                    }
                }
            }
            Err(unavailable(
                "unroutable",
                format!("queue {} vanished twice", self.queue_name(topic, kind)),
            ))
        };
        tokio::time::timeout(OPERATION_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(
                    "timeout",
                    format!("no confirm within {OPERATION_TIMEOUT:?}"),
                ))
            })
    }

    /// Publishes a new message first accepted at `published_at` and waits for the confirm,
    /// without its key: [`RabbitMqQueue::publish_at`] records the key afterwards.
    async fn publish_confirmed(
        &self,
        topic: &str,
        payload: &[u8],
        published_at: f64,
    ) -> Result<(), Error> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(published_at as u64)
            .with_message_id(message_id().into());
        self.send(topic, Kind::Topic, payload, props).await
    }

    /// Starts `topic`'s consumer once.
    fn start_pump(&self, t: &Arc<Topic>) {
        {
            let mut p = t.pump.lock();
            if p.started {
                return;
            }
            p.started = true;
        }
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(pump(weak, t.clone(), shutdown));
    }

    /// Turns a broker delivery into ours, or dead-letters it as poison (`None`).
    async fn deliver(
        &self,
        t: &Arc<Topic>,
        local: u64,
        d: lapin::message::Delivery,
    ) -> Result<Option<Delivery>, Error> {
        let headers = d.properties.headers().clone().unwrap_or_default();
        let attempts = header_u32(&headers, HEADER_ATTEMPTS).unwrap_or(0);
        let published_at = d
            .properties
            .timestamp()
            .map_or_else(now_unix, |ts| ts as f64);
        let message_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string());
        let mut handle = Handle {
            queue: self.clone(),
            topic: t.clone(),
            acker: d.acker,
            local,
            message_id: message_id.clone(),
            payload: Bytes::from(d.data),
            published_at,
            recorded: None,
        };
        // The poison rule. Quorum queues count in `x-delivery-count` every time the broker got
        // a message back unsettled, but that includes releases and messages that were only
        // prefetched by a process that stopped cleanly: counting those, a message near the
        // head of a backlog would be dead-lettered by three rolling restarts. So hand-outs are
        // recorded durably instead, before the handler sees the message, and taken back when
        // it is settled or released; what is left were handlers that never finished. A first
        // delivery (not `redelivered`) is not recorded: most messages are settled on it and a
        // write each would double the cost of a delivery; when the message comes back it
        // counts as one unsettled hand-out, and the broker's count caps the total.
        if d.redelivered
            && let Some(id) = &message_id
        {
            let returned = header_u32(&headers, HEADER_DELIVERY_COUNT).unwrap_or(1);
            let recorded = match self.inner.store.kv_get(UNSETTLED_NS, id).await {
                Ok(v) => v
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0),
                Err(e) => {
                    handle.release();
                    return Err(unavailable("store", e));
                }
            };
            let unsettled = (recorded + 1).min(returned.max(1));
            if unsettled >= MAX_UNSETTLED_DELIVERIES {
                let reason = format!(
                    "poison: delivered {unsettled} times without being settled (the consumer or the process stopped while handling it)"
                );
                // As if recorded, so a failed dead-lettering hands it back with the count as is.
                handle.recorded = Some(recorded + 1);
                handle.fail(attempts, &reason, true).await?;
                return Ok(None);
            }
            let value = (recorded + 1).to_string().into_bytes();
            if let Err(e) = self
                .inner
                .store
                .kv_put(UNSETTLED_NS, id, value, Some(UNSETTLED_TTL))
                .await
            {
                handle.release();
                return Err(unavailable("store", e));
            }
            handle.recorded = Some(recorded + 1);
        }
        let id = message_id.unwrap_or_else(|| format!("tag-{}", d.delivery_tag));
        Ok(Some(Delivery::new(
            id,
            t.name.clone(),
            handle.payload.clone(),
            attempts,
            published_at,
            Box::new(handle),
        )))
    }

    async fn stats_now(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        let link = self.link().await?;
        let channel = link
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("stats", e))?;
        let topics: Vec<Arc<Topic>> = self.inner.topics.lock().values().cloned().collect();
        let declared = self.inner.declared.lock().clone();
        let now = now_unix();
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let count = |name: String| {
                let channel = &channel;
                let known = declared.contains(&name);
                async move {
                    // A passive declare of a queue that does not exist closes the channel:
                    // only queues this connection declared are asked about.
                    if !known {
                        return Ok::<u64, Error>(0);
                    }
                    let q = channel
                        .queue_declare(
                            short(&name)?,
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| unavailable("stats", format!("queue {name}: {e}")))?;
                    Ok(u64::from(q.message_count()))
                }
            };
            let ready = count(self.queue_name(&t.name, Kind::Topic)).await?;
            let dead = count(self.queue_name(&t.name, Kind::Dead)).await?;
            let buckets: Vec<u64> = t.retry_buckets.lock().iter().copied().collect();
            let mut waiting = 0;
            for ms in buckets {
                waiting += count(self.queue_name(&t.name, Kind::Retry(ms))).await?;
            }
            let mut s = t.stats.lock().clone();
            let held = t.held.lock();
            s.depth = ready + waiting + held.len() as u64;
            s.dead_letters = dead;
            s.oldest_age_seconds = held
                .values()
                .copied()
                .reduce(f64::min)
                .map_or(0.0, |at| (now - at).max(0.0));
            drop(held);
            out.push((t.name.to_string(), s));
        }
        let _ = channel.close(200, "stats read".into()).await;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn short(s: &str) -> Result<ShortString, Error> {
    ShortString::try_new(s).map_err(|_| unavailable("name", format!("queue name too long: {s}")))
}

fn message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    let v = match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    Some(v.clamp(0, i64::from(u32::MAX)) as u32)
}

/// Keeps one topic's consumer running: prefetched deliveries go to the topic's buffer; a lost
/// channel or connection is re-established with backoff, and its buffered deliveries, which
/// the broker hands out again, are dropped.
async fn pump(weak: Weak<Inner>, t: Arc<Topic>, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        let subscribed = {
            let Some(inner) = weak.upgrade() else { return };
            let queue = RabbitMqQueue { inner };
            subscribe(&queue, &t.name).await
        };
        let error = match subscribed {
            Ok((channel, mut consumer)) => {
                failures = 0;
                {
                    let mut p = t.pump.lock();
                    p.up = true;
                    p.error = None;
                }
                let error = loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = channel.close(200, "closing".into()).await;
                            return;
                        }
                        next = consumer.next() => match next {
                            Some(Ok(d)) => {
                                let Some(inner) = weak.upgrade() else { return };
                                let local = inner.next_local_id.fetch_add(1, Ordering::Relaxed);
                                let published_at = d.properties.timestamp().map_or_else(now_unix, |ts| ts as f64);
                                t.held.lock().insert(local, published_at);
                                t.pump.lock().buffer.push_back((local, d));
                                t.notify.notify_waiters();
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "the broker cancelled the consumer".to_string(),
                        }
                    }
                };
                let _ = channel.close(200, "resubscribing".into()).await;
                error
            }
            Err(e) => e.to_string(),
        };
        failures += 1;
        tracing::warn!(topic = %t.name, error = %error, "RabbitMQ consumer lost; resubscribing");
        {
            let mut p = t.pump.lock();
            p.up = false;
            p.error = Some(error);
            let mut held = t.held.lock();
            for (local, _) in p.buffer.drain(..) {
                held.remove(&local);
            }
        }
        t.notify.notify_waiters();
        let backoff = RECONNECT_MIN
            .saturating_mul(1 << (failures - 1).min(10))
            .min(RECONNECT_MAX);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

async fn subscribe(
    queue: &RabbitMqQueue,
    topic: &str,
) -> Result<(Channel, lapin::Consumer), Error> {
    let link = queue.link().await?;
    let name = queue.declare(&link, topic, Kind::Topic).await?;
    let channel = link
        .conn
        .create_channel()
        .await
        .map_err(|e| unavailable("consume", e))?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| unavailable("consume", e))?;
    let consumer = channel
        .basic_consume(
            short(&name)?,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable("consume", e))?;
    Ok((channel, consumer))
}

/// A delivery's handle: the broker's delivery tag (in its acker) and what a retry or dead
/// letter republishes.
struct Handle {
    queue: RabbitMqQueue,
    topic: Arc<Topic>,
    acker: lapin::Acker,
    local: u64,
    message_id: Option<String>,
    payload: Bytes,
    published_at: f64,
    /// Unsettled hand-outs recorded in the store, this one included, when this is a
    /// redelivery (see [`RabbitMqQueue::deliver`]).
    recorded: Option<u32>,
}

impl Handle {
    /// The message leaves this process's hands (settled, released or lost with its channel).
    fn unhold(&self) {
        self.topic.held.lock().remove(&self.local);
    }

    /// Takes this hand-out back from the store's record: settled (`all`), nothing of it is
    /// needed any more; released, it no longer counts. Best effort: a record left behind
    /// expires, and until then only makes the message look closer to poison.
    fn take_back(&self, all: bool) {
        let (Some(n), Some(id)) = (self.recorded, self.message_id.clone()) else {
            return;
        };
        let store = self.queue.inner.store.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let r = match n.saturating_sub(1) {
                left if !all && left > 0 => {
                    let value = left.to_string().into_bytes();
                    store
                        .kv_put(UNSETTLED_NS, &id, value, Some(UNSETTLED_TTL))
                        .await
                }
                _ => store.kv_delete(UNSETTLED_NS, &id).await,
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not take back a delivery's hand-out record");
            }
        });
    }

    async fn ack_original(&self) -> Result<(), Error> {
        let r = tokio::time::timeout(
            OPERATION_TIMEOUT,
            self.acker.ack(BasicAckOptions::default()),
        )
        .await;
        self.unhold();
        match r {
            Ok(Ok(_)) => {
                self.take_back(true);
                Ok(())
            }
            // The channel is gone: the broker hands the message out again.
            Ok(Err(e)) => Err(unavailable("ack", e)),
            Err(_) => Err(unavailable("ack", "no answer in time")),
        }
    }

    /// A failed attempt: the copy goes to a retry queue or the dead letters and is
    /// confirmed, then the original is acked. A crash between the two leaves both (the
    /// original comes back): a duplicate, never a loss.
    async fn fail(&self, attempts: u32, reason: &str, permanent: bool) -> Result<(), Error> {
        let q = &self.queue;
        let reason: String = reason.chars().take(REASON_MAX_CHARS).collect();
        let age = Duration::from_secs_f64((now_unix() - self.published_at).max(0.0));
        let decision = if permanent {
            Retry::DeadLetter
        } else {
            q.inner.policy.decide(attempts, age)
        };
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_ATTEMPTS.into(),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        headers.insert(
            HEADER_REASON.into(),
            AMQPValue::LongString(LongString::from(reason.as_bytes())),
        );
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(self.published_at as u64);
        if let Some(m) = &self.message_id {
            props = props.with_message_id(m.as_str().into());
        }
        let kind = match decision {
            Retry::After(delay) => {
                let ms = retry_bucket_ms(delay);
                self.topic.retry_buckets.lock().insert(ms);
                // Every message of a bucket carries the same expiration, so they leave in order.
                props = props.with_expiration(ms.to_string().into());
                Kind::Retry(ms)
            }
            Retry::DeadLetter => {
                headers.insert(
                    HEADER_DEAD_AT.into(),
                    AMQPValue::LongLongInt(now_unix() as i64),
                );
                Kind::Dead
            }
        };
        props = props.with_headers(headers);
        if let Err(e) = q.send(&self.topic.name, kind, &self.payload, props).await {
            // Not stranded in flight: handed back for another try.
            self.release();
            return Err(e);
        }
        self.ack_original().await?;
        self.topic
            .stats
            .lock()
            .count_failure(&self.topic.name, decision, attempts, &reason);
        Ok(())
    }
}

#[async_trait]
impl Settle for Handle {
    async fn ack(&self) -> Result<(), Error> {
        self.ack_original().await?;
        self.topic.stats.lock().acked += 1;
        Ok(())
    }

    async fn nack(&self, attempts: u32, reason: &str) -> Result<(), Error> {
        self.fail(attempts, reason, false).await
    }

    async fn dead_letter(&self, attempts: u32, reason: &str) -> Result<(), Error> {
        self.fail(attempts, reason, true).await
    }

    fn release(&self) {
        self.unhold();
        self.take_back(false);
        let acker = self.acker.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                // A failure means the channel is gone, which hands the message back too.
                let _ = acker.nack(requeue).await;
            });
        }
    }
}

impl RabbitMqQueue {
    /// [`Queue::publish_with`] for a message first accepted at `published_at` (Unix
    /// seconds), which becomes its publication `timestamp`: a message moved from the local
    /// spool keeps its age, so the retry horizon and the queue's age figures count from when
    /// it was accepted.
    pub async fn publish_at(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
        published_at: f64,
    ) -> Result<Published, Error> {
        let t = self.topic(topic);
        if let Some(d) = &dedupe
            && let Some(seen) = self.inner.keys.seen(topic, d.key).await?
        {
            return Ok(match (seen, d.fingerprint) {
                (Some(seen), Some(this)) if seen != this => {
                    t.stats.lock().conflicts += 1;
                    Published::Conflict
                }
                _ => {
                    t.stats.lock().duplicates += 1;
                    Published::Duplicate
                }
            });
        }
        // Confirmed first, recorded second (see the type's documentation).
        self.publish_confirmed(topic, &payload, published_at)
            .await?;
        t.stats.lock().published += 1;
        if let Some(d) = &dedupe
            && let Err(e) = self
                .inner
                .keys
                .record(topic, d.key, now_unix() as i64, d.fingerprint)
                .await
        {
            // The message is queued; only a redelivery of it would be queued again.
            tracing::warn!(topic, error = %e, "a published message's deduplication key was not recorded");
        }
        Ok(Published::Published)
    }

    /// Whether the broker can be reached now; at most one connection attempt per backoff
    /// step, as every operation.
    pub async fn reachable(&self) -> bool {
        self.link().await.is_ok()
    }
}

#[async_trait]
impl super::spool::Broker for RabbitMqQueue {
    async fn reachable(&self) -> bool {
        RabbitMqQueue::reachable(self).await
    }

    async fn publish_at(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
        published_at: f64,
    ) -> Result<Published, Error> {
        RabbitMqQueue::publish_at(self, topic, dedupe, payload, published_at).await
    }
}

#[async_trait]
impl Queue for RabbitMqQueue {
    async fn publish_with(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        self.publish_at(topic, dedupe, payload, now_unix()).await
    }

    async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
        let t = self.topic(topic);
        self.start_pump(&t);
        loop {
            let notified = t.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut p = t.pump.lock();
                match p.buffer.pop_front() {
                    Some(d) => Some(Ok(d)),
                    None if !p.up => p.error.clone().map(Err),
                    None => None,
                }
            };
            match next {
                Some(Ok((local, d))) => {
                    if let Some(delivery) = self.deliver(&t, local, d).await? {
                        return Ok(delivery);
                    }
                }
                Some(Err(e)) => return Err(unavailable("consume", e)),
                None => notified.await,
            }
        }
    }

    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        tokio::time::timeout(STATS_TIMEOUT, self.stats_now())
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(
                    "timeout",
                    format!("queue figures not read within {STATS_TIMEOUT:?}"),
                ))
            })
    }

    async fn gc(&self, dedupe_retention: Duration) -> Result<u64, Error> {
        let cutoff = now_unix() as i64 - dedupe_retention.as_secs() as i64;
        self.inner.keys.forget_before(cutoff).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::queue::test_services::{RABBITMQ as BROKER, rabbitmq as broker};

    fn settings(addr: &str, prefix: &str) -> Settings {
        Settings {
            url: crate::config::Secret::new(format!("amqp://guest:guest@{addr}/%2f")),
            prefix: prefix.to_string(),
            policy: crate::queue::contract::policy(),
            queue_expiry: Some(Duration::from_secs(300)),
            ca_pem: None,
        }
    }

    fn prefix() -> String {
        format!("devmetrics-unit-{:016x}", rand::random::<u64>())
    }

    /// A process: its own connection, on the SQLite file in `dir` (kept across "restarts").
    async fn open(dir: &tempfile::TempDir, addr: &str, prefix: &str) -> RabbitMqQueue {
        let db = Db::open(&dir.path().join("keys.db")).unwrap();
        let keys = Arc::new(crate::queue::sqlite::DedupeTable::new(db.clone()));
        let store = Arc::new(crate::store::sqlite::SqliteStore::open(db).unwrap());
        RabbitMqQueue::open(settings(addr, prefix), keys, store)
            .await
            .unwrap()
    }

    /// The process dies: its consumers stop and its connection goes, leaving whatever it
    /// held unsettled (`forget` the deliveries in hand first) and its SQLite file as it is.
    async fn crash(q: RabbitMqQueue) {
        q.inner.shutdown.cancel();
        let link = q.inner.link.lock().await.link.clone().unwrap();
        link.conn.close(320, "crash".into()).await.unwrap();
        // Let its writer finish what it was given before the next "process" opens the file.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn receive(q: &RabbitMqQueue, topic: &str) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), q.receive(topic))
            .await
            .expect("a message within 5 s")
            .expect("receive")
    }

    /// The process dies after the broker confirmed a keyed message and before its key was
    /// recorded: the redelivered event is published again (two messages, both delivered),
    /// never refused as a duplicate of something lost.
    #[tokio::test]
    async fn a_crash_between_the_confirm_and_the_key_record_duplicates_and_loses_nothing() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, BROKER, &prefix()).await;
        q.publish_confirmed("t", b"event", now_unix())
            .await
            .unwrap();
        assert_eq!(
            q.publish("t", Some("delivery-1"), Bytes::from_static(b"event"))
                .await
                .unwrap(),
            Published::Published
        );
        assert_eq!(
            q.publish("t", Some("delivery-1"), Bytes::from_static(b"event"))
                .await
                .unwrap(),
            Published::Duplicate,
            "recorded once confirmed"
        );
        for _ in 0..2 {
            let d = receive(&q, "t").await;
            assert_eq!(&d.payload[..], b"event");
            d.ack().await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), q.receive("t"))
                .await
                .is_err()
        );
    }

    /// A message whose consumer dies with it unsettled, again and again, is dead-lettered
    /// instead of killing every process that takes it; the message behind it, prefetched by
    /// each of those processes and handed back by each crash, is not.
    #[tokio::test]
    async fn a_message_that_keeps_killing_its_consumer_is_dead_lettered_not_looped() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let prefix = prefix();
        let q = open(&dir, BROKER, &prefix).await;
        for p in [&b"poison"[..], b"fine"] {
            q.publish("t", None, Bytes::copy_from_slice(p))
                .await
                .unwrap();
        }
        for crash_no in 1..=MAX_UNSETTLED_DELIVERIES {
            let q = open(&dir, BROKER, &prefix).await;
            let d = receive(&q, "t").await;
            assert_eq!(&d.payload[..], b"poison", "crash {crash_no}");
            std::mem::forget(d);
            crash(q).await;
        }
        let q = open(&dir, BROKER, &prefix).await;
        let d = receive(&q, "t").await;
        assert_eq!(
            &d.payload[..],
            b"fine",
            "the poison message is not delivered again"
        );
        d.ack().await.unwrap();
        let s = &q.stats().await.unwrap()[0].1;
        assert_eq!((s.dead_lettered, s.dead_letters, s.depth), (1, 1, 0));
    }

    /// Releases (a cancelled consumer) and clean stops with the message in hand or
    /// prefetched are not mistaken for a message that stops the process, though the broker
    /// counts each of them as a delivery that came back.
    #[tokio::test]
    async fn releases_and_clean_restarts_are_not_taken_for_a_poison_message() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let prefix = prefix();
        let q = open(&dir, BROKER, &prefix).await;
        q.publish("t", None, Bytes::from_static(b"m"))
            .await
            .unwrap();
        for _ in 0..MAX_UNSETTLED_DELIVERIES + 2 {
            drop(receive(&q, "t").await);
        }
        drop(q);
        for _ in 0..MAX_UNSETTLED_DELIVERIES + 2 {
            let q = open(&dir, BROKER, &prefix).await;
            // Dropped as the consumer runner does on shutdown, then the queue closes.
            drop(receive(&q, "t").await);
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(q);
        }
        let q = open(&dir, BROKER, &prefix).await;
        let d = receive(&q, "t").await;
        assert_eq!((&d.payload[..], d.attempts), (&b"m"[..], 0));
        d.ack().await.unwrap();
        assert_eq!(q.stats().await.unwrap()[0].1.dead_letters, 0);
    }

    /// The contract on RabbitMQ alone, timed (the factory's run in `tests/it/contract.rs`
    /// covers it too, beside SQLite).
    #[tokio::test]
    async fn the_rabbitmq_queue_passes_the_contract() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir, BROKER, &prefix()).await;
        let started = Instant::now();
        crate::queue::contract::run(Arc::new(q)).await;
        eprintln!("queue contract on RabbitMQ: {:?}", started.elapsed());
    }

    /// A proxy between the queue and the broker that the test can cut and restore.
    struct Proxy {
        addr: String,
        cut: CancellationToken,
    }

    async fn proxy(listener: tokio::net::TcpListener) -> Proxy {
        let addr = listener.local_addr().unwrap().to_string();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = listener.accept() => c.unwrap(),
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(BROKER).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// While the broker cannot be reached every operation answers `Unavailable` at once;
    /// once it can, the queue reconnects by itself and nothing confirmed was lost.
    #[tokio::test]
    async fn an_outage_answers_unavailable_and_the_queue_reconnects() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = proxy(listener).await;
        let q = open(&dir, &p.addr, &prefix()).await;
        q.publish("t", Some("k"), Bytes::from_static(b"before"))
            .await
            .unwrap();
        p.cut.cancel();
        let started = Instant::now();
        let mut outage = None;
        while started.elapsed() < Duration::from_secs(5) {
            match q.publish("t", None, Bytes::from_static(b"during")).await {
                Err(e) => {
                    outage = Some(e);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let e = outage.expect("publishing fails while the broker is cut off");
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(!e.to_string().contains("guest:guest"), "{e}");
        assert!(q.stats().await.is_err());
        assert!(matches!(
            q.receive("t").await,
            Err(Error::Unavailable { .. })
        ));
        // The broker is back on the same address.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let _p = proxy(listener).await;
        let mut published = false;
        for _ in 0..100 {
            if q.publish("t", None, Bytes::from_static(b"after"))
                .await
                .is_ok()
            {
                published = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(published, "the queue reconnected");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(15), q.receive("t")).await {
                Ok(Ok(d)) => {
                    seen.push(String::from_utf8(d.payload.to_vec()).unwrap());
                    d.ack().await.unwrap();
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => panic!("no delivery after reconnecting; seen {seen:?}"),
            }
        }
        seen.sort();
        assert_eq!(seen, ["after", "before"]);
    }

    /// `amqps://` to a port that speaks plain AMQP: the TLS handshake fails, and opening
    /// the queue answers `Unavailable` naming the broker, without the password.
    #[tokio::test]
    async fn amqps_to_a_plain_port_fails_as_unavailable_without_the_password() {
        if !broker() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keys.db")).unwrap();
        let keys = Arc::new(crate::queue::sqlite::DedupeTable::new(db.clone()));
        let store = Arc::new(crate::store::sqlite::SqliteStore::open(db).unwrap());
        let mut s = settings(BROKER, &prefix());
        s.url = crate::config::Secret::new(format!("amqps://guest:s3cret@{BROKER}/%2f"));
        let started = Instant::now();
        let e = match RabbitMqQueue::open(s, keys, store).await {
            Ok(_) => panic!("a plain port does not speak TLS"),
            Err(e) => e,
        };
        assert!(
            matches!(
                e,
                Error::Unavailable {
                    kind: "connect",
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("127.0.0.1:5672"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
        eprintln!("amqps to a plain port: {msg} ({:?})", started.elapsed());
    }

    #[test]
    fn delays_fall_on_a_ladder_of_two_steps_per_doubling() {
        assert_eq!(retry_bucket_ms(Duration::from_millis(1000)), 724);
        assert_eq!(retry_bucket_ms(Duration::from_millis(1023)), 724);
        assert_eq!(retry_bucket_ms(Duration::from_millis(1024)), 1024);
        assert_eq!(retry_bucket_ms(Duration::from_millis(1500)), 1448);
        assert_eq!(retry_bucket_ms(Duration::ZERO), 1);
        // Never longer than asked, and never shorter than 1/√2 of it.
        for ms in [3u64, 17, 250, 999, 40_000, 300_000] {
            let b = retry_bucket_ms(Duration::from_millis(ms));
            assert!(
                b <= ms && b as f64 >= ms as f64 / 2f64.sqrt() - 1.0,
                "{ms} → {b}"
            );
        }
        // The default policy (0.5 s to 5 min) uses about 20 queues per topic.
        let buckets: BTreeSet<u64> = (500..=300_000)
            .step_by(50)
            .map(|ms| retry_bucket_ms(Duration::from_millis(ms)))
            .collect();
        assert!(buckets.len() <= 20, "{}", buckets.len());
    }

    #[test]
    fn urls_are_checked_without_showing_them() {
        assert!(check_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        let e = check_url("not a url with s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(check_url("amqps://u:p@host/%2f").is_ok());
        assert!(check_prefix("devmetrics-test-1a2b").is_ok());
        assert!(check_prefix("amq.x").is_err());
        assert!(check_prefix("a b").is_err());
    }
}
