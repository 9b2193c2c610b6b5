//! The queue on Redis streams, for deployments that run Redis and nothing else. Every topic is
//! a stream `{prefix}:q:{topic}` read through one consumer group; a nacked message waits in
//! the sorted set `…:delayed` until it is due and is then added to the stream again; dead
//! letters are the stream `…:dead`. Every step that touches more than one key is one Lua
//! script, so a publish, its deduplication key and its fingerprint are recorded together
//! (there is no crash window between them, unlike on RabbitMQ). docs/ha.md describes the
//! keys and the semantics.

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Dedupe, Delivery, Error, MAX_UNSETTLED_DELIVERIES, Published, Queue, Retry, RetryPolicy,
    Settle, TopicStats,
};
use crate::clock::now_unix;

/// The consumer group every process reads through.
const GROUP: &str = "devmetrics";
/// Every command gives up after this; the caller sees `Unavailable` and retries later.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a blocking read waits before the receiver looks again for released, stale and
/// due messages (which a blocking read does not see).
const BLOCK: Duration = Duration::from_secs(1);
/// Due retries moved back to a stream per script call, so Redis is never held for long.
const PROMOTE_BATCH: usize = 100;
/// Deduplication keys forgotten per script call.
const GC_BATCH: usize = 1_000;
/// Consumers of the group (one per process that ever consumed) that hold nothing and have
/// been idle this long are removed by `gc`, so restarts do not pile them up.
const CONSUMER_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The idle time a released entry is given: longer than any visibility timeout, so the next
/// claim by any consumer takes it at once.
const RELEASED_IDLE_MS: u64 = 1_000_000_000;
const REASON_MAX_CHARS: usize = 1024;
/// `queue.redis.visibility_timeout` when not set.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// KEYS: stream, dedupe times (zset), fingerprints (hash), delayed (zset), topics (set).
/// ARGV: topic, key id ('' for none), fingerprint ('' for none), payload, max depth,
/// publication time in ms ('' for now).
/// Returns {outcome, entry id}. The check, the XADD and the key's record are one step.
const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local key, fp = ARGV[2], ARGV[3]
if key ~= '' and redis.call('ZSCORE', KEYS[2], key) then
  local seen = redis.call('HGET', KEYS[3], key)
  if seen and fp ~= '' and seen ~= fp then return {'conflict', ''} end
  return {'duplicate', ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'devmetrics', '0', 'MKSTREAM')
  redis.call('SADD', KEYS[5], ARGV[1])
elseif redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then
  return {'full', ''}
end
local at = now
if ARGV[6] ~= '' then at = tonumber(ARGV[6]) end
local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[4], 'at', at, 'n', 0)
if key ~= '' then
  redis.call('ZADD', KEYS[2], now, key)
  if fp ~= '' then redis.call('HSET', KEYS[3], key, fp) end
end
return {'published', id}
"#;

/// Field lookup and dead-lettering shared by the consumer-side scripts.
/// KEYS: stream, delayed (zset), retries (hash), dead letters (stream), topics (set).
const HELPERS: &str = r#"
local stream, delayed, retries, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function bury(id, fields, attempts, reason)
  redis.call('XADD', dead, '*', 'p', field(fields, 'p') or '', 'at', field(fields, 'at') or now,
    'n', attempts, 'reason', reason, 'dead_at', now, 'id', id)
  redis.call('XACK', stream, 'devmetrics', id)
  redis.call('XDEL', stream, id)
end
local function owner(id)
  local p = redis.call('XPENDING', stream, 'devmetrics', id, id, 1)
  if #p == 0 then return nil, 0 end
  return p[1][2], tonumber(p[1][4])
end
"#;

/// ARGV: topic, consumer, visibility ms, max unsettled deliveries, autoclaim cursor, released
/// entry id ('' for none).
/// Moves due retries to the stream, then takes one entry: the released one named, else one
/// pending longer than the visibility timeout, else a new one. A claimed entry delivered more
/// often than the poison rule allows goes to the dead letters instead. Returns {status,
/// cursor, next due ms (-1 for none), dead-lettered, id, payload, published at ms, attempts}.
const TAKE: &str = r#"
local me, idle, max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local cursor, hint = ARGV[5], ARGV[6]
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, 'devmetrics', '0', 'MKSTREAM')
  redis.call('SADD', KEYS[5], ARGV[1])
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))) do
  local f = redis.call('HMGET', retries, id .. ':p', id .. ':at', id .. ':n')
  if f[1] then redis.call('XADD', stream, '*', 'p', f[1], 'at', f[2], 'n', f[3]) end
  redis.call('ZREM', delayed, id)
  redis.call('HDEL', retries, id .. ':p', id .. ':at', id .. ':n')
end
local buried = 0
local function out(e, count)
  local fields = e[2]
  local attempts = tonumber(field(fields, 'n') or '0')
  if count - 1 >= max then
    bury(e[1], fields, attempts, 'poison: delivered ' .. (count - 1) ..
      ' times without being settled (the consumer or the process stopped while handling it)')
    buried = buried + 1
    return nil
  end
  return {'entry', cursor, -1, buried, e[1], field(fields, 'p') or '',
    tonumber(field(fields, 'at') or now), attempts}
end
if hint ~= '' then
  local c = redis.call('XCLAIM', stream, 'devmetrics', me, idle, hint)
  if #c > 0 and c[1][2] then
    local _, count = owner(hint)
    local r = out(c[1], count)
    if r then return r end
  end
end
for _ = 1, 10 do
  local r = redis.call('XAUTOCLAIM', stream, 'devmetrics', me, idle, cursor, 'COUNT', 1)
  cursor = r[1]
  local e = r[2][1]
  if e and e[2] then
    local _, count = owner(e[1])
    local o = out(e, count)
    if o then return o end
  end
  if cursor == '0-0' then break end
end
local r = redis.call('XREADGROUP', 'GROUP', 'devmetrics', me, 'COUNT', 1, 'STREAMS', stream, '>')
if r then
  local o = out(r[1][2][1], 1)
  if o then return o end
end
local next_due = -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(tonumber(first[2]) - now, 0) end
return {'none', cursor, next_due, buried, '', '', 0, 0}
"#;

/// ARGV: topic, consumer, entry id, mode ('retry' or 'dead'), attempts, delay ms, reason.
/// Returns 1, or 0 when the entry is no longer this consumer's (settled, or claimed by
/// another consumer after the visibility timeout): that consumer settles it.
const FAIL: &str = r#"
local me, id, attempts = ARGV[2], ARGV[3], ARGV[5]
local who = owner(id)
if who ~= me then return 0 end
local e = redis.call('XRANGE', stream, id, id)
if #e == 0 then
  redis.call('XACK', stream, 'devmetrics', id)
  return 0
end
local fields = e[1][2]
if ARGV[4] == 'retry' then
  redis.call('HSET', retries, id .. ':p', field(fields, 'p') or '', id .. ':at',
    field(fields, 'at') or now, id .. ':n', attempts)
  redis.call('ZADD', delayed, now + tonumber(ARGV[6]), id)
  redis.call('XACK', stream, 'devmetrics', id)
  redis.call('XDEL', stream, id)
else
  bury(id, fields, attempts, ARGV[7])
end
return 1
"#;

/// KEYS: stream. ARGV: entry id.
const ACK: &str = r#"
local n = redis.call('XACK', KEYS[1], 'devmetrics', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return n
"#;

/// ARGV: topic, consumer, entry id. Takes this hand-out back from the delivery counter and
/// makes the entry claimable at once.
const RELEASE: &str = r#"
local who, count = owner(ARGV[3])
if who ~= ARGV[2] then return 0 end
redis.call('XCLAIM', stream, 'devmetrics', ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4],
  'RETRYCOUNT', math.max(count - 1, 0), 'JUSTID')
return 1
"#;

/// ARGV: topic, consumer, entry ids. Resets the idle time of the entries this consumer still
/// holds, so a live process keeps what it is handling however long that takes.
const KEEP: &str = r#"
local kept = 0
for i = 3, #ARGV do
  if owner(ARGV[i]) == ARGV[2] then
    redis.call('XCLAIM', stream, 'devmetrics', ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"#;

/// KEYS: stream, dedupe times (zset), fingerprints (hash). ARGV: retention ms, limit,
/// consumer expiry ms. Forgets keys recorded before now - retention (Redis's clock) and
/// removes idle consumers that hold nothing.
const GC: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local keys = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[1])),
  'LIMIT', 0, tonumber(ARGV[2]))
for _, k in ipairs(keys) do
  redis.call('ZREM', KEYS[2], k)
  redis.call('HDEL', KEYS[3], k)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'devmetrics')
  if ok then
    for _, c in ipairs(consumers) do
      local name, pending, idle
      for i = 1, #c, 2 do
        if c[i] == 'name' then name = c[i + 1]
        elseif c[i] == 'pending' then pending = c[i + 1]
        elseif c[i] == 'idle' then idle = c[i + 1] end
      end
      if pending == 0 and idle > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'devmetrics', name)
      end
    end
  end
end
return #keys
"#;

struct Scripts {
    publish: Script,
    take: Script,
    fail: Script,
    ack: Script,
    release: Script,
    keep: Script,
    gc: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_helpers = |s: &str| Script::new(&format!("{HELPERS}\n{s}"));
        Scripts {
            publish: Script::new(PUBLISH),
            take: with_helpers(TAKE),
            fail: with_helpers(FAIL),
            ack: Script::new(ACK),
            release: with_helpers(RELEASE),
            keep: with_helpers(KEEP),
            gc: Script::new(GC),
        }
    }
}

/// How the queue reaches Redis and names its keys.
#[derive(Clone)]
pub struct Settings {
    pub redis: crate::config::RedisConfig,
    /// The config key the URL came from, for errors (`queue.redis.url` or
    /// `storage.redis.url`).
    pub url_key: String,
    pub policy: RetryPolicy,
    pub max_depth: u64,
    /// An entry a consumer took and has not settled nor kept alive for this long is taken
    /// over by another consumer: its process is presumed dead.
    pub visibility_timeout: Duration,
}

fn unavailable(kind: &'static str, message: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        kind,
        message: message.to_string(),
    }
}

fn redis_error(e: redis::RedisError) -> Error {
    let kind = if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        "redis_connection"
    } else {
        "redis"
    };
    unavailable(kind, e)
}

fn timed_out() -> Error {
    unavailable(
        "redis_timeout",
        format!("no answer from Redis within {}s", TIMEOUT.as_secs()),
    )
}

/// Runs `f` within [`TIMEOUT`].
async fn run<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(redis_error),
        Err(_) => Err(timed_out()),
    }
}

/// The keys of one topic. All start with the hash tag `{prefix}`, like the store's, so a
/// script touching a topic's keys (and the topic list) stays in one cluster slot.
struct Keys {
    stream: String,
    delayed: String,
    retries: String,
    dead: String,
    dedupe: String,
    fingerprints: String,
}

/// What this process holds of a topic.
struct Topic {
    name: Arc<str>,
    keys: Keys,
    stats: Mutex<TopicStats>,
    /// Entries handed out and not settled: kept alive while this process runs.
    held: Mutex<HashSet<String>>,
    /// Entries this process released, to be claimed again first.
    released: Mutex<VecDeque<String>>,
    /// Where the scan for entries pending past the visibility timeout goes on.
    cursor: Mutex<String>,
    notify: Notify,
}

struct Inner {
    conn: ConnectionManager,
    client: redis::Client,
    base: String,
    consumer: String,
    policy: RetryPolicy,
    max_depth: u64,
    visibility: Duration,
    scripts: Scripts,
    topics: Mutex<HashMap<Arc<str>, Arc<Topic>>>,
    /// Connections for blocking reads, one per receiver blocked at the same time: a blocking
    /// read would hold up every command behind it on the shared connection.
    idle_readers: Mutex<Vec<MultiplexedConnection>>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The queue on Redis streams.
///
/// Delivery: a receiver takes, in one script, a message this process released, else one
/// pending past the visibility timeout in any consumer (its process died), else a new one;
/// with none it blocks on the stream for up to a second on a connection of its own. A
/// process keeps the idle time of what it holds at zero, so only a dead process's messages
/// are taken over. Release gives the delivery back to the counter, so releases never count
/// towards the poison rule.
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

/// An entry taken from a stream.
struct Entry {
    id: String,
    payload: Vec<u8>,
    published_ms: i64,
    attempts: u32,
}

enum Taken {
    Entry(Entry),
    /// Nothing to take; the next delayed message of the topic is due in this long.
    None(Option<Duration>),
}

impl RedisQueue {
    /// Connects (so a wrong URL or an unreachable server stops the start) and starts the
    /// task that keeps held entries alive.
    pub async fn open(settings: Settings) -> Result<RedisQueue, Error> {
        let client = crate::store::redis::client(
            settings.redis.url.expose(),
            settings.redis.ca_pem.as_deref(),
        )
        .map_err(|_| unavailable("config", format!("{} is not a Redis URL", settings.url_key)))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), cfg),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(redis_error)?;
        let queue = RedisQueue {
            inner: Arc::new(Inner {
                conn,
                client,
                base: format!("{{{}}}", settings.redis.key_prefix),
                consumer: format!(
                    "{}-{}-{:08x}",
                    hostname(),
                    std::process::id(),
                    rand::random::<u32>()
                ),
                policy: settings.policy,
                max_depth: settings.max_depth,
                visibility: settings.visibility_timeout.max(Duration::from_millis(10)),
                scripts: Scripts::new(),
                topics: Mutex::new(HashMap::new()),
                idle_readers: Mutex::new(Vec::new()),
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(keep_alive(
            Arc::downgrade(&queue.inner),
            queue.inner.visibility / 3,
            queue.inner.shutdown.clone(),
        ));
        Ok(queue)
    }

    fn topics_key(&self) -> String {
        format!("{}:q:topics", self.inner.base)
    }

    fn topic(&self, topic: &str) -> Arc<Topic> {
        let mut topics = self.inner.topics.lock();
        if let Some(t) = topics.get(topic) {
            return t.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        let stream = format!("{}:q:{topic}", self.inner.base);
        let t = Arc::new(Topic {
            name: name.clone(),
            keys: Keys {
                delayed: format!("{stream}:delayed"),
                retries: format!("{stream}:retries"),
                dead: format!("{stream}:dead"),
                dedupe: format!("{stream}:dedupe"),
                fingerprints: format!("{stream}:fingerprints"),
                stream,
            },
            stats: Mutex::new(TopicStats::default()),
            held: Mutex::new(HashSet::new()),
            released: Mutex::new(VecDeque::new()),
            cursor: Mutex::new("0-0".into()),
            notify: Notify::new(),
        });
        topics.insert(name, t.clone());
        t
    }

    /// A script invocation with the consumer-side keys of `t` and its first arguments.
    fn consumer_invocation<'a>(
        &self,
        script: &'a Script,
        t: &Topic,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&t.keys.stream)
            .key(&t.keys.delayed)
            .key(&t.keys.retries)
            .key(&t.keys.dead)
            .key(self.topics_key())
            .arg(&*t.name)
            .arg(&self.inner.consumer);
        inv
    }

    async fn take(&self, t: &Topic) -> Result<Taken, Error> {
        let hint = t.released.lock().pop_front().unwrap_or_default();
        let cursor = t.cursor.lock().clone();
        let mut inv = self.consumer_invocation(&self.inner.scripts.take, t);
        inv.arg(self.inner.visibility.as_millis() as u64)
            .arg(MAX_UNSETTLED_DELIVERIES)
            .arg(cursor)
            .arg(hint)
            .arg(PROMOTE_BATCH);
        let mut c = self.inner.conn.clone();
        let (status, cursor, next_due, buried, id, payload, published_ms, attempts): (
            String,
            String,
            i64,
            u64,
            String,
            Vec<u8>,
            i64,
            u32,
        ) = run(inv.invoke_async(&mut c)).await?;
        *t.cursor.lock() = cursor;
        if buried > 0 {
            t.stats.lock().dead_lettered += buried;
            tracing::warn!(topic = %t.name, count = buried, "poison messages dead-lettered");
        }
        Ok(if status == "entry" {
            Taken::Entry(Entry {
                id,
                payload,
                published_ms,
                attempts,
            })
        } else {
            Taken::None((next_due >= 0).then(|| Duration::from_millis(next_due as u64)))
        })
    }

    /// Waits up to `wait` for a new entry of `t`, on a connection of its own. The read runs
    /// in a task of its own: a receiver cancelled meanwhile leaves it to release what it got.
    async fn block(&self, t: &Arc<Topic>, wait: Duration) -> Result<Option<Entry>, Error> {
        let pooled = self.inner.idle_readers.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(BLOCK + TIMEOUT));
                run(self
                    .inner
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg))
                .await?
            }
        };
        let (tx, rx) = oneshot::channel();
        let queue = self.clone();
        let t2 = t.clone();
        let ms = wait.as_millis().clamp(1, BLOCK.as_millis()) as u64;
        tokio::spawn(async move {
            let read = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&queue.inner.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(ms)
                .arg("STREAMS")
                .arg(&t2.keys.stream)
                .arg(">")
                .query_async::<Value>(&mut conn)
                .await;
            let r = match read {
                Ok(v) => {
                    queue.inner.idle_readers.lock().push(conn);
                    Ok(parse_read(v))
                }
                // A failed connection is not pooled again.
                Err(e) => Err(redis_error(e)),
            };
            if let Err(Ok(Some(entry))) = tx.send(r) {
                // Nobody waits for it any more: back for the next receiver.
                queue.release(&t2, entry.id).await;
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(unavailable("redis", "the blocking read was lost")))
    }

    fn deliver(&self, t: &Arc<Topic>, e: Entry) -> Delivery {
        t.held.lock().insert(e.id.clone());
        let published_at = e.published_ms as f64 / 1000.0;
        let handle = Handle {
            queue: self.clone(),
            topic: t.clone(),
            id: e.id.clone(),
            published_at,
        };
        Delivery::new(
            e.id,
            t.name.clone(),
            Bytes::from(e.payload),
            e.attempts,
            published_at,
            Box::new(handle),
        )
    }

    /// Hands `id` back: its delivery is taken back from the counter and it is claimable at
    /// once, first of all by this process's next receive.
    async fn release(&self, t: &Arc<Topic>, id: String) {
        t.held.lock().remove(&id);
        let mut inv = self.consumer_invocation(&self.inner.scripts.release, t);
        inv.arg(&id).arg(RELEASED_IDLE_MS);
        let mut c = self.inner.conn.clone();
        match run(inv.invoke_async::<i64>(&mut c)).await {
            Ok(_) => {
                t.released.lock().push_back(id);
                t.notify.notify_waiters();
            }
            // It comes back after the visibility timeout instead, one delivery more.
            Err(e) => tracing::debug!(topic = %t.name, error = %e, "releasing a delivery failed"),
        }
    }

    async fn keep(&self, t: &Topic) -> Result<(), Error> {
        let ids: Vec<String> = t.held.lock().iter().cloned().collect();
        for chunk in ids.chunks(500) {
            let mut inv = self.consumer_invocation(&self.inner.scripts.keep, t);
            for id in chunk {
                inv.arg(id);
            }
            let mut c = self.inner.conn.clone();
            let _: i64 = run(inv.invoke_async(&mut c)).await?;
        }
        Ok(())
    }

    async fn stats_now(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        let mut c = self.inner.conn.clone();
        let names: Vec<String> = run(redis::cmd("SMEMBERS")
            .arg(self.topics_key())
            .query_async(&mut c))
        .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        let topics: Vec<Arc<Topic>> = names.iter().map(|n| self.topic(n)).collect();
        for t in &topics {
            pipe.cmd("XLEN")
                .arg(&t.keys.stream)
                .cmd("ZCARD")
                .arg(&t.keys.delayed)
                .cmd("XLEN")
                .arg(&t.keys.dead)
                .cmd("XRANGE")
                .arg(&t.keys.stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = run(pipe.query_async(&mut c)).await?;
        let mut replies = replies.into_iter();
        let (secs, micros): (i64, i64) = replies
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let now_ms = secs * 1000 + micros / 1000;
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let mut next = || -> i64 {
                replies
                    .next()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or(0)
            };
            let (stream, delayed, dead) = (next(), next(), next());
            let oldest = replies.next().and_then(parse_first).map(|e| e.published_ms);
            let mut s = t.stats.lock().clone();
            s.depth = (stream + delayed) as u64;
            s.dead_letters = dead as u64;
            s.oldest_age_seconds =
                oldest.map_or(0.0, |at| ((now_ms - at) as f64 / 1000.0).max(0.0));
            out.push((t.name.to_string(), s));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "devmetrics".into())
}

fn key_id(key: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())[..16].to_vec()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// An entry `[id, [field, value, …]]`.
fn parse_entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = text(parts.first()?)?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let mut e = Entry {
        id,
        payload: Vec::new(),
        published_ms: 0,
        attempts: 0,
    };
    for pair in fields.chunks_exact(2) {
        match (text(&pair[0]).as_deref(), &pair[1]) {
            (Some("p"), Value::BulkString(b)) => e.payload = b.clone(),
            (Some("at"), v) => e.published_ms = text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
            (Some("n"), v) => e.attempts = text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    Some(e)
}

/// The first entry of an XRANGE reply.
fn parse_first(v: Value) -> Option<Entry> {
    match v {
        Value::Array(entries) => entries.first().and_then(parse_entry),
        _ => None,
    }
}

/// The entry of an `XREADGROUP … COUNT 1` reply: `[[stream, [entry]]]` (a map in RESP3).
fn parse_read(v: Value) -> Option<Entry> {
    let entries = match v {
        Value::Array(streams) => match streams.into_iter().next()? {
            Value::Array(mut s) if s.len() == 2 => s.pop()?,
            _ => return None,
        },
        Value::Map(streams) => streams.into_iter().next()?.1,
        _ => return None,
    };
    parse_first(entries)
}

/// Keeps the entries this process holds from being taken over while it runs.
async fn keep_alive(inner: Weak<Inner>, every: Duration, shutdown: CancellationToken) {
    let every = every.max(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let queue = RedisQueue { inner };
        let topics: Vec<Arc<Topic>> = queue.inner.topics.lock().values().cloned().collect();
        for t in topics {
            if t.held.lock().is_empty() {
                continue;
            }
            if let Err(e) = queue.keep(&t).await {
                tracing::debug!(topic = %t.name, error = %e, "keeping held deliveries failed");
            }
        }
    }
}

/// A delivery's handle: the stream entry it came from.
struct Handle {
    queue: RedisQueue,
    topic: Arc<Topic>,
    id: String,
    published_at: f64,
}

impl Handle {
    async fn fail(&self, attempts: u32, reason: &str, permanent: bool) -> Result<(), Error> {
        let q = &self.queue;
        let reason: String = reason.chars().take(REASON_MAX_CHARS).collect();
        let age = Duration::from_secs_f64((now_unix() - self.published_at).max(0.0));
        let decision = if permanent {
            Retry::DeadLetter
        } else {
            q.inner.policy.decide(attempts, age)
        };
        let mut inv = q.consumer_invocation(&q.inner.scripts.fail, &self.topic);
        inv.arg(&self.id);
        match decision {
            Retry::After(delay) => inv.arg("retry").arg(attempts).arg(delay.as_millis() as u64),
            Retry::DeadLetter => inv.arg("dead").arg(attempts).arg(0),
        };
        inv.arg(&reason);
        let mut c = q.inner.conn.clone();
        let done: i64 = match run(inv.invoke_async(&mut c)).await {
            Ok(d) => d,
            Err(e) => {
                // Not stranded until the visibility timeout: handed back for another try.
                q.release(&self.topic, self.id.clone()).await;
                return Err(e);
            }
        };
        self.topic.held.lock().remove(&self.id);
        if done == 0 {
            tracing::debug!(topic = %self.topic.name, id = %self.id, "a failed delivery was taken over meanwhile");
            return Ok(());
        }
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
        let q = &self.queue;
        let mut inv = q.inner.scripts.ack.prepare_invoke();
        inv.key(&self.topic.keys.stream).arg(&self.id);
        let mut c = q.inner.conn.clone();
        if let Err(e) = run(inv.invoke_async::<i64>(&mut c)).await {
            // Handed back rather than kept alive for as long as this process runs: handled
            // again, which its idempotency keys make harmless.
            q.release(&self.topic, self.id.clone()).await;
            return Err(e);
        }
        self.topic.held.lock().remove(&self.id);
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
        let (queue, topic, id) = (self.queue.clone(), self.topic.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { queue.release(&topic, id).await });
        }
    }
}

impl RedisQueue {
    /// The publish script, with the message's publication time (`at`, Unix seconds) when it
    /// is not now: a message that waited in the spool keeps its age.
    async fn publish_inner(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
        at: Option<f64>,
    ) -> Result<Published, Error> {
        let t = self.topic(topic);

        let mut inv = self.inner.scripts.publish.prepare_invoke();
        inv.key(&t.keys.stream)
            .key(&t.keys.dedupe)
            .key(&t.keys.fingerprints)
            .key(&t.keys.delayed)
            .key(self.topics_key())
            .arg(topic)
            .arg(dedupe.map(|d| key_id(d.key)).unwrap_or_default())
            .arg(
                dedupe
                    .and_then(|d| d.fingerprint)
                    .map(|f| f.to_string())
                    .unwrap_or_default(),
            )
            .arg(&payload[..])
            .arg(self.inner.max_depth)
            .arg(
                at.map(|a| ((a * 1000.0) as i64).to_string())
                    .unwrap_or_default(),
            );
        let mut c = self.inner.conn.clone();
        let (outcome, _id): (String, String) = run(inv.invoke_async(&mut c)).await?;
        let mut s = t.stats.lock();
        Ok(match outcome.as_str() {
            "published" => {
                s.published += 1;
                Published::Published
            }
            "duplicate" => {
                s.duplicates += 1;
                Published::Duplicate
            }
            "conflict" => {
                s.conflicts += 1;
                Published::Conflict
            }
            _ => {
                s.rejected_full += 1;
                return Err(Error::Full {
                    topic: topic.to_string(),
                });
            }
        })
    }
}

#[async_trait]
impl super::spool::Broker for RedisQueue {
    async fn reachable(&self) -> bool {
        let mut c = self.inner.conn.clone();
        run(redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .is_ok()
    }

    async fn publish_at(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
        published_at: f64,
    ) -> Result<Published, Error> {
        self.publish_inner(topic, dedupe, payload, Some(published_at))
            .await
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn publish_with(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        self.publish_inner(topic, dedupe, payload, None).await
    }

    async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
        let t = self.topic(topic);
        loop {
            let notified = t.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.take(&t).await? {
                Taken::Entry(e) => return Ok(self.deliver(&t, e)),
                Taken::None(due) => due.map_or(BLOCK, |d| d.min(BLOCK)),
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                r = self.block(&t, wait) => {
                    if let Some(e) = r? {
                        return Ok(self.deliver(&t, e));
                    }
                }
                _ = notified => {}
            }
        }
    }

    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
        self.stats_now().await
    }

    async fn gc(&self, dedupe_retention: Duration) -> Result<u64, Error> {
        let mut c = self.inner.conn.clone();
        let names: Vec<String> = run(redis::cmd("SMEMBERS")
            .arg(self.topics_key())
            .query_async(&mut c))
        .await?;
        let mut total = 0;
        for name in names {
            let t = self.topic(&name);
            loop {
                let mut inv = self.inner.scripts.gc.prepare_invoke();
                inv.key(&t.keys.stream)
                    .key(&t.keys.dedupe)
                    .key(&t.keys.fingerprints)
                    .arg(dedupe_retention.as_millis() as u64)
                    .arg(GC_BATCH)
                    .arg(CONSUMER_EXPIRY.as_millis() as u64);
                let n: u64 = run(inv.invoke_async(&mut c)).await?;
                total += n;
                if (n as usize) < GC_BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_services::{REDIS, redis as redis_up};
    use std::time::Instant;

    /// A throwaway key prefix; [`Cleanup`] deletes its keys when the test ends.
    struct Cleanup(String);

    impl Cleanup {
        fn new() -> Cleanup {
            Cleanup(format!("devmetrics-unit-{:016x}", rand::random::<u64>()))
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let Ok(client) = redis::Client::open(format!("redis://{REDIS}/0")) else {
                return;
            };
            let Ok(mut c) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{}}}:*", self.0))
                .query(&mut c)
                .unwrap_or_default();
            for k in keys {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(k).query(&mut c);
            }
        }
    }

    fn settings(addr: &str, prefix: &str, visibility: Duration) -> Settings {
        Settings {
            redis: crate::config::RedisConfig {
                url: crate::config::Secret::new(format!("redis://{addr}/0")),
                key_prefix: prefix.to_string(),
                sentinel: None,
                ca_pem: None,
            },
            url_key: "queue.redis.url".into(),
            policy: crate::queue::contract::policy(),
            max_depth: 1_000,
            visibility_timeout: visibility,
        }
    }

    /// A process: its own connections and consumer name.
    async fn open(prefix: &str, visibility: Duration) -> RedisQueue {
        RedisQueue::open(settings(REDIS, prefix, visibility))
            .await
            .unwrap()
    }

    /// The process dies: it stops keeping what it holds alive and settles nothing more
    /// (`forget` the deliveries in hand first).
    fn crash(q: RedisQueue) {
        q.inner.shutdown.cancel();
    }

    async fn receive(q: &RedisQueue, topic: &str) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), q.receive(topic))
            .await
            .expect("a message within 5 s")
            .expect("receive")
    }

    async fn topic_stats(q: &RedisQueue, topic: &str) -> TopicStats {
        q.stats()
            .await
            .unwrap()
            .into_iter()
            .find(|(t, _)| t == topic)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    async fn raw() -> MultiplexedConnection {
        redis::Client::open(format!("redis://{REDIS}/0"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The contract on Redis streams alone, timed (the factory's run in
    /// `tests/it/contract.rs` covers it too, beside the other backends).
    #[tokio::test]
    async fn the_redis_queue_passes_the_contract() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let q = open(&prefix.0, DEFAULT_VISIBILITY_TIMEOUT).await;
        let started = Instant::now();
        crate::queue::contract::run(Arc::new(q)).await;
        eprintln!("queue contract on Redis streams: {:?}", started.elapsed());
    }

    /// The key check, the XADD and the key's record are one script: Redis runs it whole or
    /// not at all, so no crash leaves a message without its key or a key without its
    /// message. Two replicas racing with the same key queue it once.
    #[tokio::test]
    async fn publish_and_its_key_are_one_atomic_step_across_replicas() {
        if !redis_up() {
            return;
        }
        for step in ["ZSCORE", "XADD", "ZADD", "HSET"] {
            assert!(
                PUBLISH.contains(step),
                "{step} is part of the publish script"
            );
        }
        let prefix = Cleanup::new();
        let (a, b) = (
            open(&prefix.0, DEFAULT_VISIBILITY_TIMEOUT).await,
            open(&prefix.0, DEFAULT_VISIBILITY_TIMEOUT).await,
        );
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let q = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                let dedupe = Dedupe {
                    key: "delivery-1",
                    fingerprint: Some(7),
                };
                q.publish_with("t", Some(dedupe), Bytes::from_static(b"event"))
                    .await
                    .unwrap()
            });
        }
        let mut published = 0;
        while let Some(r) = tasks.join_next().await {
            if r.unwrap() == Published::Published {
                published += 1;
            }
        }
        assert_eq!(published, 1);
        let mut c = raw().await;
        let len: u64 = redis::cmd("XLEN")
            .arg(format!("{{{}}}:q:t", prefix.0))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(len, 1, "one message queued");
        let d = receive(&a, "t").await;
        d.ack().await.unwrap();
    }

    /// A process dies holding a delivery: after the visibility timeout another process takes
    /// it over, without counting an attempt. A live process keeps what it holds however long
    /// it takes.
    #[tokio::test]
    async fn a_dead_consumers_delivery_is_taken_over_after_the_visibility_timeout() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let visibility = Duration::from_millis(300);
        let a = open(&prefix.0, visibility).await;
        let b = open(&prefix.0, visibility).await;
        a.publish("t", None, Bytes::from_static(b"slow"))
            .await
            .unwrap();
        let held = receive(&a, "t").await;
        assert!(
            tokio::time::timeout(visibility * 4, b.receive("t"))
                .await
                .is_err(),
            "a live holder keeps its delivery"
        );
        std::mem::forget(held);
        crash(a);
        let started = Instant::now();
        let d = receive(&b, "t").await;
        assert_eq!((&d.payload[..], d.attempts), (&b"slow"[..], 0));
        assert!(
            started.elapsed() >= visibility / 2,
            "{:?}",
            started.elapsed()
        );
        d.ack().await.unwrap();
        assert_eq!(topic_stats(&b, "t").await.depth, 0);
    }

    /// A nack waits in the delayed set (still counted in the depth), comes back when due
    /// with its attempt counted, and leaves nothing behind.
    #[tokio::test]
    async fn delayed_retries_come_back_when_due() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let mut s = settings(REDIS, &prefix.0, DEFAULT_VISIBILITY_TIMEOUT);
        s.policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(400),
            max_backoff: Duration::from_millis(400),
            horizon: Duration::from_secs(3600),
        };
        let q = RedisQueue::open(s).await.unwrap();
        q.publish("t", None, Bytes::from_static(b"again"))
            .await
            .unwrap();
        receive(&q, "t").await.nack("boom").await.unwrap();
        let nacked = Instant::now();
        let st = topic_stats(&q, "t").await;
        assert_eq!(
            (st.depth, st.retried),
            (1, 1),
            "the delayed message is queued"
        );
        let d = receive(&q, "t").await;
        let waited = nacked.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_millis(1500),
            "{waited:?}"
        );
        assert_eq!((&d.payload[..], d.attempts), (&b"again"[..], 1));
        d.ack().await.unwrap();
        let mut c = raw().await;
        let stream = format!("{{{}}}:q:t", prefix.0);
        let (delayed, retries): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(format!("{stream}:delayed"))
            .cmd("HLEN")
            .arg(format!("{stream}:retries"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!((delayed, retries), (0, 0));
        assert_eq!(topic_stats(&q, "t").await.depth, 0);
    }

    /// A message whose consumer dies with it, again and again, is dead-lettered instead of
    /// killing every process that takes it; the message behind it is delivered.
    #[tokio::test]
    async fn a_message_that_keeps_killing_its_consumer_is_dead_lettered_not_looped() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let visibility = Duration::from_millis(200);
        let q = open(&prefix.0, visibility).await;
        for p in [&b"poison"[..], b"fine"] {
            q.publish("t", None, Bytes::copy_from_slice(p))
                .await
                .unwrap();
        }
        for crash_no in 1..=MAX_UNSETTLED_DELIVERIES {
            let q = open(&prefix.0, visibility).await;
            let d = receive(&q, "t").await;
            assert_eq!(&d.payload[..], b"poison", "crash {crash_no}");
            std::mem::forget(d);
            crash(q);
            tokio::time::sleep(visibility + Duration::from_millis(50)).await;
        }
        let q = open(&prefix.0, visibility).await;
        let d = receive(&q, "t").await;
        assert_eq!(
            &d.payload[..],
            b"fine",
            "the poison message is not delivered again"
        );
        d.ack().await.unwrap();
        let s = topic_stats(&q, "t").await;
        assert_eq!((s.dead_lettered, s.dead_letters, s.depth), (1, 1, 0));
        let mut c = raw().await;
        let dead: Value = redis::cmd("XRANGE")
            .arg(format!("{{{}}}:q:t:dead", prefix.0))
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        let Value::Array(entries) = &dead else {
            panic!("{dead:?}")
        };
        let Value::Array(entry) = &entries[0] else {
            panic!("{dead:?}")
        };
        let Value::Array(fields) = &entry[1] else {
            panic!("{dead:?}")
        };
        let reason = fields
            .chunks_exact(2)
            .find(|f| text(&f[0]).as_deref() == Some("reason"))
            .and_then(|f| text(&f[1]))
            .unwrap();
        assert!(reason.starts_with("poison"), "{reason}");
    }

    /// Releases (a cancelled consumer) come back at once and never count towards the
    /// poison rule, however many there are.
    #[tokio::test]
    async fn releases_come_back_at_once_and_are_not_taken_for_a_poison_message() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let q = open(&prefix.0, DEFAULT_VISIBILITY_TIMEOUT).await;
        q.publish("t", None, Bytes::from_static(b"m"))
            .await
            .unwrap();
        let started = Instant::now();
        for _ in 0..MAX_UNSETTLED_DELIVERIES + 3 {
            drop(receive(&q, "t").await);
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let d = receive(&q, "t").await;
        assert_eq!((&d.payload[..], d.attempts), (&b"m"[..], 0));
        d.ack().await.unwrap();
        assert_eq!(topic_stats(&q, "t").await.dead_letters, 0);
    }

    /// While Redis cannot be reached every operation answers `Unavailable` within the
    /// timeout; once it can, the queue carries on by itself and nothing published was lost,
    /// nor any key forgotten.
    #[tokio::test]
    async fn an_outage_answers_unavailable_and_the_queue_recovers() {
        if !redis_up() {
            return;
        }
        let prefix = Cleanup::new();
        let proxy = crate::sim::chaos::Proxy::start(REDIS.parse().unwrap())
            .await
            .unwrap();
        let q = RedisQueue::open(settings(
            &proxy.addr.to_string(),
            &prefix.0,
            DEFAULT_VISIBILITY_TIMEOUT,
        ))
        .await
        .unwrap();
        q.publish("t", Some("k"), Bytes::from_static(b"before"))
            .await
            .unwrap();
        proxy.cut();
        let started = Instant::now();
        let e = q
            .publish("t", None, Bytes::from_static(b"during"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(
            started.elapsed() <= TIMEOUT + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(q.stats().await.is_err());
        assert!(matches!(
            q.receive("t").await,
            Err(Error::Unavailable { .. })
        ));
        proxy.heal();
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
        assert_eq!(
            q.publish("t", Some("k"), Bytes::from_static(b"before"))
                .await
                .unwrap(),
            Published::Duplicate
        );
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = receive(&q, "t").await;
            seen.push(String::from_utf8(d.payload.to_vec()).unwrap());
            d.ack().await.unwrap();
        }
        seen.sort();
        assert_eq!(seen, ["after", "before"]);
        assert_eq!(topic_stats(&q, "t").await.depth, 0);
    }

    #[test]
    fn stream_replies_parse() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"p".to_vec()),
                Value::BulkString(b"x".to_vec()),
                Value::BulkString(b"at".to_vec()),
                Value::BulkString(b"1500".to_vec()),
                Value::BulkString(b"n".to_vec()),
                Value::BulkString(b"2".to_vec()),
            ]),
        ]);
        let read = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"{p}:q:t".to_vec()),
            Value::Array(vec![entry]),
        ])]);
        let e = parse_read(read).unwrap();
        assert_eq!(
            (e.id.as_str(), &e.payload[..], e.published_ms, e.attempts),
            ("1-0", &b"x"[..], 1500, 2)
        );
        assert!(parse_read(Value::Nil).is_none());
    }
}
