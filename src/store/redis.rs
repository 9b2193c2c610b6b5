//! The shared store: series, idempotency keys, gauge members, kv and leases in Redis, so any
//! number of replicas keep one truth.
//!
//! Every write is one Lua script, atomic on the server. Every key starts with the hash tag
//! `{prefix}`, so a Redis Cluster keeps all of them in one slot and a script may touch keys
//! it computes (a gauge member's scope) without crossing slots.
//!
//! Each replica mirrors the series in memory ([`State`]) so a scrape never waits on Redis:
//! its own writes update the mirror from the script's answer, and a refresher reloads every
//! scope whose generation (bumped by every write to it) differs from the one it holds, so
//! the writes of other replicas appear within [`REFRESH`] and all replicas converge to the
//! same output.
//!
//! Layout under `{prefix}`: `:s:<scope>` hash of `family\nlabels` → value; `:generation`, `:upd`,
//! `:ver` hashes of scope → generation, update time, version; `:changes` a counter every write
//! moves, so an idle refresh is one `GET`; `:keys` sorted set of applied
//! idempotency keys (16 bytes of their SHA-256) by time; `:m:<member>` a gauge member's
//! `scope\nfamily\nlabels`, `:members` members by entry time, `:ms:<scope>` a scope's
//! members; `:kv:<ns>:<key>` kv entries with their TTL and `:kvidx:<ns>` a namespace's keys by
//! expiry time (for `kv_scan`); `:lease:<name>` lease holders;
//! `:dd` hash and `:dd:at` sorted set of the queue's deduplication keys (16 bytes of the
//! SHA-256 of `topic\nkey` → fingerprint, and by time), see [`DEDUPE_RECORD`].

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Applied, Batch, Error, Grant, Lease, Retention, State, Store, Written};
use crate::clock::now_unix;
use crate::config::RedisConfig;
use crate::metrics::{
    self, FamilyId, HistogramValue, Labels, Op, Sample, ScopeData, Snapshot, Value, family,
};

/// How often a replica looks for scopes other replicas changed.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Every command gives up after this; the caller sees `Unavailable` and retries later.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Members expired and keys forgotten per script call, so Redis is never held for long.
const GC_BATCH: usize = 1_000;

/// Number and histogram encoding shared by every script.
const HELPERS: &str = r#"
local base = ARGV[1]
local writes, touched = {}, {}
local function num(s)
  if s == 'inf' then return math.huge elseif s == '-inf' then return -math.huge
  elseif s == 'NaN' then return 0 / 0 end
  return tonumber(s) or 0
end
local function fmt(v)
  if v ~= v then return 'NaN' elseif v == math.huge then return 'inf'
  elseif v == -math.huge then return '-inf' end
  return string.format('%.17g', v)
end
local function put(scope, field, v)
  redis.call('HSET', base .. ':s:' .. scope, field, v)
  writes[#writes + 1] = scope
  writes[#writes + 1] = field
  writes[#writes + 1] = v
  touched[scope] = true
end
local function add(scope, field, d)
  local cur = redis.call('HGET', base .. ':s:' .. scope, field)
  put(scope, field, fmt((cur and num(cur) or 0) + d))
end
local function observe(scope, field, x, bounds)
  local cur = redis.call('HGET', base .. ':s:' .. scope, field)
  local counts, sum = {}, 0
  if cur and string.sub(cur, 1, 2) == 'h;' then
    local rest = string.sub(cur, 3)
    local semi = string.find(rest, ';', 1, true)
    sum = num(string.sub(rest, 1, semi - 1))
    for c in string.gmatch(string.sub(rest, semi + 1), '[^,]+') do
      counts[#counts + 1] = tonumber(c)
    end
  end
  for j = #counts + 1, #bounds + 1 do counts[j] = 0 end
  local idx = #bounds + 1
  for j = 1, #bounds do
    if x <= bounds[j] then idx = j break end
  end
  counts[idx] = counts[idx] + 1
  put(scope, field, 'h;' .. fmt(sum + x) .. ';' .. table.concat(counts, ','))
end
local function leave(member)
  local mk = base .. ':m:' .. member
  local rec = redis.call('GET', mk)
  if not rec then return end
  redis.call('DEL', mk)
  redis.call('ZREM', base .. ':members', member)
  local nl = string.find(rec, '\n', 1, true)
  local scope = string.sub(rec, 1, nl - 1)
  redis.call('SREM', base .. ':ms:' .. scope, member)
  add(scope, string.sub(rec, nl + 1), -1)
end
local function finish(now)
  local gens = {}
  if next(touched) ~= nil then redis.call('INCR', base .. ':changes') end
  for scope, _ in pairs(touched) do
    gens[#gens + 1] = scope
    gens[#gens + 1] = tostring(redis.call('HINCRBY', base .. ':generation', scope, 1))
    redis.call('HSET', base .. ':upd', scope, now)
  end
  return gens
end
"#;

/// ARGV: base, now, batches; per batch: key id, scope, updates; per update: op, field, arg,
/// bound count, bounds. Returns applied flags, the series written, touched scopes' generations.
const APPLY: &str = r#"
local now = ARGV[2]
local nb = tonumber(ARGV[3])
local i = 4
local flags = {}
for b = 1, nb do
  local kid, scope, nu = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local fresh = redis.call('ZADD', base .. ':keys', 'NX', now, kid) == 1
  flags[b] = fresh and 1 or 0
  for u = 1, nu do
    local op, field, arg, nbounds = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local bounds = {}
    for j = 1, nbounds do bounds[j] = tonumber(ARGV[i + 3 + j]) end
    i = i + 4 + nbounds
    if fresh then
      if op == 'add' then add(scope, field, num(arg))
      elseif op == 'set' then put(scope, field, fmt(num(arg)))
      elseif op == 'observe' then observe(scope, field, num(arg), bounds)
      elseif op == 'enter' then
        if redis.call('SET', base .. ':m:' .. arg, scope .. '\n' .. field, 'NX') then
          redis.call('ZADD', base .. ':members', now, arg)
          redis.call('SADD', base .. ':ms:' .. scope, arg)
          add(scope, field, 1)
        end
      elseif op == 'leave' then leave(arg)
      end
    end
  end
end
return {flags, writes, finish(now)}
"#;

/// ARGV: base, scope, now, version ('' for none), then field and value pairs.
const REPLACE: &str = r#"
local scope, now, version = ARGV[2], ARGV[3], ARGV[4]
local cur = tonumber(redis.call('HGET', base .. ':ver', scope) or '0')
if version ~= '' and tonumber(version) <= cur then
  return {0, '0', tostring(cur)}
end
local k = base .. ':s:' .. scope
redis.call('DEL', k)
-- Pairs start at an odd index; chunks of an even length keep each pair whole.
for j = 5, #ARGV, 1000 do
  redis.call('HSET', k, unpack(ARGV, j, math.min(j + 999, #ARGV)))
end
if version ~= '' then cur = tonumber(version) end
redis.call('HSET', base .. ':ver', scope, cur)
redis.call('HSET', base .. ':upd', scope, now)
local generation = redis.call('HINCRBY', base .. ':generation', scope, 1)
redis.call('INCR', base .. ':changes')
return {1, tostring(generation), tostring(cur)}
"#;

/// ARGV: base, scopes.
const DROP: &str = r#"
redis.call('INCR', base .. ':changes')
for j = 2, #ARGV do
  local scope = ARGV[j]
  redis.call('DEL', base .. ':s:' .. scope)
  redis.call('HDEL', base .. ':generation', scope)
  redis.call('HDEL', base .. ':upd', scope)
  redis.call('HDEL', base .. ':ver', scope)
  for _, m in ipairs(redis.call('SMEMBERS', base .. ':ms:' .. scope)) do
    redis.call('DEL', base .. ':m:' .. m)
    redis.call('ZREM', base .. ':members', m)
  end
  redis.call('DEL', base .. ':ms:' .. scope)
end
return 1
"#;

/// ARGV: base, now, member cutoff, key cutoff, limit. Expires members, forgets keys.
const GC: &str = r#"
local limit = tonumber(ARGV[5])
local members = redis.call('ZRANGEBYSCORE', base .. ':members', '-inf', '(' .. ARGV[3],
  'LIMIT', 0, limit)
for _, m in ipairs(members) do leave(m) end
local keys = redis.call('ZRANGEBYSCORE', base .. ':keys', '-inf', '(' .. ARGV[4], 'LIMIT', 0, limit)
for _, k in ipairs(keys) do redis.call('ZREM', base .. ':keys', k) end
return {#members, #keys, writes, finish(ARGV[2])}
"#;

/// KEYS: the lease. ARGV: holder, ttl ms. Server time, so replicas' clocks do not matter.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'exp')
local fence = tonumber(h[2] or '0')
if h[1] and tonumber(h[3]) > now then
  if h[1] ~= ARGV[1] then return false end
else
  fence = fence + 1
end
local exp = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', fence, 'exp', exp)
return {fence, exp}
"#;

/// KEYS: the lease. ARGV: holder, fence, ttl ms (0 releases).
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'exp')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or tonumber(h[3]) <= now then return false end
local exp = now + tonumber(ARGV[3])
if tonumber(ARGV[3]) == 0 then exp = 0 end
redis.call('HSET', KEYS[1], 'exp', exp)
return {tonumber(h[2]), exp}
"#;

/// KEYS: the lease.
const HOLDER: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'exp')
if not h[1] or tonumber(h[3]) <= now then return false end
return {h[1], tonumber(h[2]), tonumber(h[3])}
"#;

/// KEYS: the kv entry, its namespace's index. ARGV: value, ttl ms (0: none), key in the
/// namespace. The index scores each key by its expiry (ms), so a scan skips expired ones.
const KV_PUT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], '+inf', ARGV[3])
end
return 1
"#;

/// KEYS: the lease, the kv entry, its namespace's index. ARGV: holder, fence, value, ttl ms
/// (0: none), key in the namespace.
const PUT_FENCED: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'exp')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or tonumber(h[3]) <= now then return 0 end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5])
else
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[3], '+inf', ARGV[5])
end
return 1
"#;

/// ARGV: base, id, time, fingerprint ('' for none). The first record of a key wins; the
/// hash answers `seen` in one read, the sorted set lets `forget_before` find old keys.
const DEDUPE_RECORD: &str = r#"
local base = ARGV[1]
if redis.call('HSETNX', base .. ':dd', ARGV[2], ARGV[4]) == 1 then
  redis.call('ZADD', base .. ':dd:at', ARGV[3], ARGV[2])
end
return 1
"#;

/// ARGV: base, cutoff, limit. Forgets up to `limit` keys recorded before the cutoff.
const DEDUPE_FORGET: &str = r#"
local base = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', base .. ':dd:at', '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('HDEL', base .. ':dd', id)
  redis.call('ZREM', base .. ':dd:at', id)
end
return #ids
"#;

struct Scripts {
    kv_put: Script,
    put_fenced: Script,
    dedupe_record: Script,
    dedupe_forget: Script,
    apply: Script,
    replace: Script,
    drop: Script,
    gc: Script,
    acquire: Script,
    renew: Script,
    holder: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_helpers = |s: &str| Script::new(&format!("{HELPERS}\n{s}"));
        Scripts {
            dedupe_record: Script::new(DEDUPE_RECORD),
            dedupe_forget: Script::new(DEDUPE_FORGET),
            apply: with_helpers(APPLY),
            replace: with_helpers(REPLACE),
            drop: with_helpers(DROP),
            gc: with_helpers(GC),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            holder: Script::new(HOLDER),
            put_fenced: Script::new(PUT_FENCED),
            kv_put: Script::new(KV_PUT),
        }
    }
}

pub struct RedisStore {
    /// Replaced when Sentinel names another master.
    conn: Mutex<ConnectionManager>,
    /// With Sentinel: who names the master, and the master's address now.
    sentinel: Option<(tokio::sync::Mutex<SentinelClient>, Mutex<String>)>,
    /// `{prefix}`: every key starts with it.
    base: String,
    scripts: Scripts,
    state: Arc<State>,
    /// The generation of each scope the mirror holds.
    gens: Mutex<HashMap<String, i64>>,
    /// The store-wide change counter at the last complete refresh: while it stands still
    /// a refresh costs one `GET`, not the generation of every scope.
    seen_changes: Mutex<Option<i64>>,
    last_error: Mutex<Option<String>>,
    duplicates: AtomicU64,
    refreshes: AtomicU64,
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        // I/O, timeouts and a server loading, busy or failing over may pass; anything else
        // (a script error, an unexpected reply) repeats the same way.
        let passing = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.code().is_some_and(|c| {
                [
                    "LOADING",
                    "BUSY",
                    "TRYAGAIN",
                    "MASTERDOWN",
                    "READONLY",
                    "CLUSTERDOWN",
                ]
                .contains(&c)
            });
        let refused = !passing;
        let message = e.to_string();
        if refused {
            Error::Refused {
                kind: "redis",
                message,
            }
        } else {
            Error::Unavailable {
                kind: "redis",
                message,
            }
        }
    }
}

fn timed_out() -> Error {
    Error::Unavailable {
        kind: "redis_timeout",
        message: format!("no answer from Redis within {}s", TIMEOUT.as_secs()),
    }
}

fn field(fid: FamilyId, labels: &Labels) -> String {
    format!("{}\n{}", family(fid).name, labels.as_str())
}

fn encode(v: &Value) -> String {
    fn num(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            format!("{v:?}")
        }
    }
    match v {
        Value::Number(n) => num(*n),
        Value::Histogram(h) => {
            let counts: Vec<String> = h.counts.iter().map(u64::to_string).collect();
            format!("h;{};{}", num(h.sum), counts.join(","))
        }
    }
}

fn decode(fid: FamilyId, s: &str) -> Option<Value> {
    match s.strip_prefix("h;") {
        Some(rest) => {
            let (sum, counts) = rest.split_once(';')?;
            let mut h = HistogramValue::new(family(fid).buckets);
            let parsed: Vec<u64> = counts
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.parse().ok())
                .collect::<Option<_>>()?;
            // A family whose buckets changed since: keep what fits, the rest in +Inf.
            for (i, c) in parsed.into_iter().enumerate() {
                let last = h.counts.len() - 1;
                h.counts[i.min(last)] += c;
            }
            h.sum = sum.parse().ok()?;
            Some(Value::Histogram(Box::new(h)))
        }
        None => s.parse().ok().map(Value::Number),
    }
}

/// A hash field's family and labels; a label set repeated across the scope's families comes
/// out of `interner` once.
fn split_field(f: &str, interner: &mut metrics::Interner) -> Option<(FamilyId, Labels)> {
    let (name, labels) = f.split_once('\n')?;
    Some((metrics::lookup(name)?, interner.rendered(labels)))
}

fn key_id(key: &str) -> Vec<u8> {
    sha2::Sha256::digest(key.as_bytes())[..16].to_vec()
}

fn dedupe_id(topic: &str, key: &str) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(topic.as_bytes());
    h.update(b"\n");
    h.update(key.as_bytes());
    h.finalize()[..16].to_vec()
}

fn queue_error(e: Error) -> crate::queue::Error {
    crate::queue::Error::Unavailable {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// The queue's deduplication keys shared by every replica, so a delivery reaching two of
/// them is queued once (the queue on RabbitMQ records a key after the broker's confirm).
#[async_trait]
impl crate::queue::rabbitmq::DedupeKeys for RedisStore {
    async fn seen(
        &self,
        topic: &str,
        key: &str,
    ) -> Result<Option<Option<i64>>, crate::queue::Error> {
        let mut c = self.conn();
        let v: Option<String> = self
            .run(c.hget(self.key("dd"), dedupe_id(topic, key)))
            .await
            .map_err(queue_error)?;
        Ok(v.map(|f| f.parse().ok()))
    }

    async fn record(
        &self,
        topic: &str,
        key: &str,
        at: i64,
        fingerprint: Option<i64>,
    ) -> Result<(), crate::queue::Error> {
        let mut inv = self.scripts.dedupe_record.prepare_invoke();
        inv.arg(&self.base)
            .arg(dedupe_id(topic, key))
            .arg(at)
            .arg(fingerprint.map(|f| f.to_string()).unwrap_or_default());
        let mut c = self.conn();
        self.run(inv.invoke_async::<i64>(&mut c))
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn forget_before(&self, cutoff: i64) -> Result<u64, crate::queue::Error> {
        let mut total = 0;
        loop {
            let mut inv = self.scripts.dedupe_forget.prepare_invoke();
            inv.arg(&self.base).arg(cutoff).arg(GC_BATCH);
            let mut c = self.conn();
            let n: u64 = self
                .run(inv.invoke_async(&mut c))
                .await
                .map_err(queue_error)?;
            total += n;
            if (n as usize) < GC_BATCH {
                return Ok(total);
            }
        }
    }
}

impl RedisStore {
    /// Connects (through Sentinel when configured), loads every scope into memory and starts
    /// the refresher.
    pub async fn open(config: &RedisConfig) -> Result<Arc<RedisStore>, Error> {
        let bad_url = || Error::Refused {
            kind: "redis_url",
            message: "storage.redis.url is not a Redis URL".into(),
        };
        let ca = config.ca_pem.as_deref();
        let (client, sentinel) = match &config.sentinel {
            None => (
                client(config.url.expose(), ca).map_err(|_| bad_url())?,
                None,
            ),
            Some(s) => {
                let mut sc = sentinel_client(config, s).map_err(|e| match e {
                    SentinelSetup::BadUrl => bad_url(),
                    SentinelSetup::BadSentinelUrl => Error::Refused {
                        kind: "redis_url",
                        message:
                            "storage.redis.sentinel.urls holds an entry that is not a Redis URL"
                                .into(),
                    },
                    SentinelSetup::Redis(e) => e.into(),
                })?;
                let client = tokio::time::timeout(TIMEOUT, sc.async_get_client())
                    .await
                    .map_err(|_| timed_out())??;
                let addr = client.get_connection_info().addr().to_string();
                tracing::info!(master = %addr, name = %s.master_name, "Sentinel names the Redis master");
                (
                    client,
                    Some((tokio::sync::Mutex::new(sc), Mutex::new(addr))),
                )
            }
        };
        let conn = manager(client).await?;
        let store = Arc::new(RedisStore {
            conn: Mutex::new(conn),
            sentinel,
            base: format!("{{{}}}", config.key_prefix),
            scripts: Scripts::new(),
            state: Arc::new(State::default()),
            gens: Mutex::new(HashMap::new()),
            seen_changes: Mutex::new(None),
            last_error: Mutex::new(None),
            duplicates: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        });
        store.refresh().await?;
        tokio::spawn(refresh_loop(Arc::downgrade(&store)));
        Ok(store)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.lock().clone()
    }

    /// With Sentinel: asks it for the master and, when another server took over, connects
    /// there. The old master keeps answering reads as a replica, so a failover shows only
    /// as refused writes (`READONLY`) until this runs.
    async fn follow_master(&self) -> Result<(), Error> {
        let Some((sentinel, current)) = &self.sentinel else {
            return Ok(());
        };
        let client = {
            let mut sc = sentinel.lock().await;
            match tokio::time::timeout(TIMEOUT, sc.async_get_client()).await {
                Ok(r) => r?,
                Err(_) => return Err(timed_out()),
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        if *current.lock() == addr {
            return Ok(());
        }
        let conn = manager(client).await?;
        tracing::warn!(master = %addr, "Sentinel names another Redis master; connected to it");
        *self.conn.lock() = conn;
        *current.lock() = addr;
        Ok(())
    }

    /// The master's address as Sentinel named it last (`None` without Sentinel).
    pub fn master(&self) -> Option<String> {
        self.sentinel.as_ref().map(|(_, m)| m.lock().clone())
    }

    fn key(&self, part: &str) -> String {
        format!("{}:{part}", self.base)
    }

    fn kv_key(&self, ns: &str, key: &str) -> String {
        self.key(&format!("kv:{ns}:{key}"))
    }

    fn kv_index(&self, ns: &str) -> String {
        self.key(&format!("kvidx:{ns}"))
    }

    /// Runs `f` against Redis within [`TIMEOUT`], recording the outcome for `health`.
    async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let r = match tokio::time::timeout(TIMEOUT, f).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(timed_out()),
        };
        match &r {
            Ok(_) => *self.last_error.lock() = None,
            Err(e) if e.is_transient() => *self.last_error.lock() = Some(e.to_string()),
            Err(_) => {}
        }
        r
    }

    /// Reloads every scope whose generation in Redis differs from the mirror's, and drops
    /// scopes Redis no longer has.
    pub async fn refresh(&self) -> Result<(), Error> {
        let mut c = self.conn();
        // Read before the generations: a write landing in between moves the counter past
        // what is recorded below, so the next refresh looks again.
        let changes: Option<i64> = self.run(c.get(self.key("changes"))).await?;
        if changes.is_some() && *self.seen_changes.lock() == changes {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let gen_key = self.key("generation");
        let remote: HashMap<String, i64> = self.run(c.hgetall(&gen_key)).await?;
        let stale: Vec<String> = {
            let mut gens = self.gens.lock();
            let gone: Vec<String> = gens
                .keys()
                .filter(|s| !remote.contains_key(*s))
                .cloned()
                .collect();
            for s in &gone {
                gens.remove(s);
                self.state.remove(s);
            }
            remote
                .iter()
                .filter(|(s, g)| gens.get(*s) != Some(*g))
                .map(|(s, _)| s.clone())
                .collect()
        };
        for scope in stale {
            self.load_scope(&scope).await?;
        }
        *self.seen_changes.lock() = changes;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn load_scope(&self, scope: &str) -> Result<(), Error> {
        let mut c = self.conn();
        let (series, generation, upd, ver): (
            HashMap<String, String>,
            Option<i64>,
            Option<f64>,
            Option<i64>,
        ) = self
            .run(
                redis::pipe()
                    .atomic()
                    .hgetall(self.key(&format!("s:{scope}")))
                    .hget(self.key("generation"), scope)
                    .hget(self.key("upd"), scope)
                    .hget(self.key("ver"), scope)
                    .query_async(&mut c),
            )
            .await?;
        let Some(generation) = generation else {
            // Dropped meanwhile.
            self.gens.lock().remove(scope);
            self.state.remove(scope);
            return Ok(());
        };
        let mut data = ScopeData {
            name: Arc::from(scope),
            updated_at: upd.unwrap_or(0.0),
            version: ver.unwrap_or(0),
            families: BTreeMap::new(),
            encoded: Default::default(),
        };
        let mut interner = metrics::Interner::default();
        for (f, v) in series {
            let Some((fid, labels)) = split_field(&f, &mut interner) else {
                continue;
            };
            if let Some(v) = decode(fid, &v) {
                data.families.entry(fid).or_default().insert(labels, v);
            }
        }
        let mut gens = self.gens.lock();
        // A newer generation may have landed from this replica's own write meanwhile.
        if gens.get(scope).is_some_and(|g| *g >= generation) {
            return Ok(());
        }
        gens.insert(scope.to_string(), generation);
        self.state.replace(data);
        Ok(())
    }

    /// Applies a script's written series to the mirror. A scope whose new generation is the
    /// next after the mirror's takes them and the generation; one further behind takes them
    /// but keeps its generation, so the refresher reloads it whole; one already ahead keeps
    /// what it has.
    fn mirror(&self, writes: Vec<String>, gens: Vec<String>) {
        let mut next: HashMap<String, i64> = HashMap::new();
        for pair in gens.chunks_exact(2) {
            if let Ok(g) = pair[1].parse() {
                next.insert(pair[0].clone(), g);
            }
        }
        let mut values = Vec::new();
        let mut interner = metrics::Interner::default();
        let mut held = self.gens.lock();
        for w in writes.chunks_exact(3) {
            let scope = &w[0];
            let Some(g) = next.get(scope) else { continue };
            if held.get(scope).is_some_and(|h| h >= g) {
                continue;
            }
            let Some((fid, labels)) = split_field(&w[1], &mut interner) else {
                continue;
            };
            if let Some(v) = decode(fid, &w[2]) {
                values.push((scope.clone(), fid, labels, v));
            }
        }
        self.state.set_values(now_unix(), values);
        for (scope, g) in next {
            let h = held.get(&scope).copied().unwrap_or(0);
            if h == g - 1 {
                held.insert(scope, g);
            }
        }
    }

    async fn replace(
        &self,
        scope: &str,
        version: Option<i64>,
        samples: Vec<Sample>,
    ) -> Result<Written, Error> {
        let now = now_unix();
        let mut inv = self.scripts.replace.prepare_invoke();
        inv.arg(&self.base)
            .arg(scope)
            .arg(now)
            .arg(version.map(|v| v.to_string()).unwrap_or_default());
        let mut data = ScopeData {
            name: Arc::from(scope),
            updated_at: now,
            version: 0,
            families: BTreeMap::new(),
            encoded: Default::default(),
        };
        for s in samples {
            inv.arg(field(s.family, &s.labels)).arg(encode(&s.value));
            data.families
                .entry(s.family)
                .or_default()
                .insert(s.labels, s.value);
        }
        let mut c = self.conn();
        let (written, generation, ver): (i64, String, String) =
            self.run(inv.invoke_async(&mut c)).await?;
        if written == 0 {
            return Ok(Written::Superseded);
        }
        data.version = ver.parse().unwrap_or(0);
        let generation: i64 = generation.parse().unwrap_or(0);
        let mut gens = self.gens.lock();
        if gens.get(scope).is_none_or(|g| *g < generation) {
            gens.insert(scope.to_string(), generation);
            self.state.replace(data);
        }
        Ok(Written::Written)
    }
}

/// A client for `url`; with `ca_pem`, a `rediss://` URL trusts that CA instead of the
/// public roots (a `redis://` URL stays plain: Sentinel and master may differ).
pub fn client(url: &str, ca_pem: Option<&str>) -> redis::RedisResult<redis::Client> {
    with_ca(redis::Client::open(url)?, ca_pem)
}

/// `client` trusting `ca_pem` when it speaks TLS.
fn with_ca(client: redis::Client, ca_pem: Option<&str>) -> redis::RedisResult<redis::Client> {
    let tls = matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    );
    if tls {
        // The redis crate asks rustls for the process's default provider, which rustls
        // cannot pick with both ring and aws-lc-rs linked in (other dependencies bring the
        // latter): without one, the first handshake panics.
        static PROVIDER: std::sync::Once = std::sync::Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
    }
    match ca_pem {
        Some(pem) if tls => redis::Client::build_with_tls(
            client.get_connection_info().clone(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.as_bytes().to_vec()),
            },
        ),
        _ => Ok(client),
    }
}

enum SentinelSetup {
    BadUrl,
    BadSentinelUrl,
    Redis(redis::RedisError),
}

/// Asks `config.sentinel`'s Sentinels for the master. The URL's credentials, database and
/// TLS are the master's; Sentinel says where it is.
fn sentinel_client(
    config: &RedisConfig,
    s: &crate::config::SentinelConfig,
) -> Result<SentinelClient, SentinelSetup> {
    let ca = config.ca_pem.as_deref();
    let info = config
        .url
        .expose()
        .into_connection_info()
        .map_err(|_| SentinelSetup::BadUrl)?;
    let settings = info.redis_settings();
    let tls = match info.addr() {
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => Some(redis::TlsMode::Insecure),
        redis::ConnectionAddr::TcpTls { .. } => Some(redis::TlsMode::Secure),
        _ => None,
    };
    let sentinels = s
        .urls
        .iter()
        .map(|u| client(u.expose(), ca).map(|c| c.get_connection_info().clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SentinelSetup::BadSentinelUrl)?;
    let (Some(mode), Some(pem)) = (tls, ca) else {
        let mut node =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(settings.clone());
        if let Some(mode) = tls {
            node = node.set_tls_mode(mode);
        }
        return SentinelClient::build(
            sentinels,
            s.master_name.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|_| SentinelSetup::BadSentinelUrl);
    };
    // Sentinel checks the role of the master it names over a connection of its own, which
    // trusts a private CA only when given through the builder. The builder takes one set of
    // Sentinel credentials: the first URL's.
    let mut b = redis::sentinel::SentinelClientBuilder::new(
        sentinels.iter().map(|c| c.addr().clone()),
        &s.master_name,
        SentinelServerType::Master,
    )
    .map_err(SentinelSetup::Redis)?
    .set_client_to_redis_tls_mode(mode)
    .set_client_to_redis_db(settings.db())
    .set_client_to_redis_protocol(settings.protocol())
    .set_client_to_redis_certificates(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.as_bytes().to_vec()),
    });
    if let Some(u) = settings.username() {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = settings.password() {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(first) = sentinels.first().map(|c| c.redis_settings()) {
        if let Some(u) = first.username() {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = first.password() {
            b = b.set_client_to_sentinel_password(p);
        }
        b = b.set_client_to_sentinel_protocol(first.protocol());
    }
    b.build().map_err(SentinelSetup::Redis)
}

/// A connection that reconnects by itself, within [`TIMEOUT`].
async fn manager(client: redis::Client) -> Result<ConnectionManager, Error> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(
        tokio::time::timeout(TIMEOUT, ConnectionManager::new_with_config(client, cfg))
            .await
            .map_err(|_| timed_out())??,
    )
}

async fn refresh_loop(store: Weak<RedisStore>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(s) = store.upgrade() else { return };
        if let Err(e) = s.follow_master().await {
            tracing::warn!(error = %e, "asking Sentinel for the Redis master failed");
        }
        if let Err(e) = s.refresh().await {
            tracing::debug!(error = %e, "refreshing scopes from Redis failed");
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }

    fn health(&self) -> Result<(), String> {
        match self.last_error.lock().clone() {
            None => Ok(()),
            Some(e) => Err(format!("last Redis command failed: {e}")),
        }
    }

    async fn replace_scope(&self, scope: &str, samples: Vec<Sample>) -> Result<(), Error> {
        self.replace(scope, None, samples).await.map(|_| ())
    }

    async fn replace_scope_if_newer(
        &self,
        scope: &str,
        version: i64,
        samples: Vec<Sample>,
    ) -> Result<Written, Error> {
        self.replace(scope, Some(version), samples).await
    }

    async fn apply_each_once(&self, batches: Vec<Batch>) -> Result<Vec<Applied>, Error> {
        for b in &batches {
            for u in &b.updates {
                u.validate()?;
            }
        }
        let mut inv = self.scripts.apply.prepare_invoke();
        inv.arg(&self.base).arg(now_unix()).arg(batches.len());
        for b in &batches {
            inv.arg(key_id(&b.key)).arg(&b.scope).arg(b.updates.len());
            for u in &b.updates {
                let f = field(u.family, &u.labels);
                let bounds: &[f64] = match u.op {
                    Op::Observe(_) => family(u.family).buckets,
                    _ => &[],
                };
                match &u.op {
                    Op::Inc(v) | Op::Add(v) => inv.arg("add").arg(f).arg(encode_f(*v)),
                    Op::Set(v) => inv.arg("set").arg(f).arg(encode_f(*v)),
                    Op::Observe(v) => inv.arg("observe").arg(f).arg(encode_f(*v)),
                    Op::Enter(m) => inv.arg("enter").arg(f).arg(m),
                    Op::Leave(m) => inv.arg("leave").arg(f).arg(m),
                };
                inv.arg(bounds.len());
                for b in bounds {
                    inv.arg(encode_f(*b));
                }
            }
        }
        let mut c = self.conn();
        let (flags, writes, gens): (Vec<i64>, Vec<String>, Vec<String>) =
            self.run(inv.invoke_async(&mut c)).await?;
        self.mirror(writes, gens);
        let applied: Vec<Applied> = flags
            .into_iter()
            .map(|f| match f {
                1 => Applied::Applied,
                _ => Applied::Duplicate,
            })
            .collect();
        let dups = applied.iter().filter(|a| **a == Applied::Duplicate).count();
        self.duplicates.fetch_add(dups as u64, Ordering::Relaxed);
        Ok(applied)
    }

    async fn drop_scopes(&self, scopes: Vec<String>) -> Result<(), Error> {
        if scopes.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.drop.prepare_invoke();
        inv.arg(&self.base);
        for s in &scopes {
            inv.arg(s);
        }
        let mut c = self.conn();
        let _: i64 = self.run(inv.invoke_async(&mut c)).await?;
        let mut gens = self.gens.lock();
        for s in &scopes {
            gens.remove(s);
            self.state.remove(s);
        }
        Ok(())
    }

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut c = self.conn();
        self.run(c.get(self.kv_key(ns, key))).await
    }

    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.kv_put.prepare_invoke();
        inv.key(self.kv_key(ns, key))
            .key(self.kv_index(ns))
            .arg(value)
            .arg(ttl.map_or(0, |t| (t.as_millis() as u64).max(1)))
            .arg(key);
        self.run(inv.invoke_async::<i64>(&mut c)).await.map(|_| ())
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<(), Error> {
        let mut c = self.conn();
        let mut p = redis::pipe();
        p.atomic()
            .del(self.kv_key(ns, key))
            .ignore()
            .zrem(self.kv_index(ns), key)
            .ignore();
        self.run(p.query_async::<()>(&mut c)).await
    }

    async fn kv_scan(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut c = self.conn();
        let index = self.kv_index(ns);
        let now_ms = (now_unix() * 1000.0) as i64;
        // Expired keys leave the index here (and in `gc`): their entries are already gone.
        self.run(c.zrembyscore::<_, _, _, ()>(&index, "-inf", format!("({now_ms}")))
            .await?;
        let mut keys: Vec<String> = self.run(c.zrangebyscore(&index, now_ms, "+inf")).await?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        let mut out = Vec::with_capacity(keys.len().min(limit));
        for chunk in keys.chunks(500) {
            if out.len() >= limit {
                break;
            }
            let names: Vec<String> = chunk.iter().map(|k| self.kv_key(ns, k)).collect();
            let values: Vec<Option<Vec<u8>>> = self.run(c.mget(names)).await?;
            for (k, v) in chunk.iter().zip(values) {
                if let Some(v) = v
                    && out.len() < limit
                {
                    out.push((k.clone(), v));
                }
            }
        }
        Ok(out)
    }

    async fn gc(&self, retention: &Retention) -> Result<u64, Error> {
        let now = now_unix();
        let members = now - retention.members.as_secs_f64();
        let keys = now - retention.keys.as_secs_f64();
        let mut total = 0;
        loop {
            let mut inv = self.scripts.gc.prepare_invoke();
            inv.arg(&self.base)
                .arg(now)
                .arg(members)
                .arg(keys)
                .arg(GC_BATCH);
            let mut c = self.conn();
            let (m, k, writes, gens): (u64, u64, Vec<String>, Vec<String>) =
                self.run(inv.invoke_async(&mut c)).await?;
            self.mirror(writes, gens);
            total += m + k;
            if (m as usize) < GC_BATCH && (k as usize) < GC_BATCH {
                break;
            }
        }
        // Each namespace's index forgets its expired keys (a namespace never scanned too).
        let mut c = self.conn();
        let pattern = self.key("kvidx:*");
        let indexes: Vec<String> = self
            .run(async {
                let mut it = c.scan_match::<_, String>(&pattern).await?;
                let mut out = Vec::new();
                while let Some(k) = it.next_item().await {
                    out.push(k?);
                }
                Ok(out)
            })
            .await?;
        let cutoff = format!("({}", (now * 1000.0) as i64);
        for index in indexes {
            let mut c = self.conn();
            self.run(c.zrembyscore::<_, _, _, ()>(&index, "-inf", &cutoff))
                .await?;
        }
        Ok(total)
    }
}

fn encode_f(v: f64) -> String {
    encode(&Value::Number(v))
}

#[async_trait]
impl Lease for RedisStore {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")))
            .arg(holder)
            .arg(ttl.as_millis() as u64);
        let r: Option<(u64, u64)> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(r.map(|(fence, exp)| Grant {
            fence,
            expires_at: exp as f64 / 1000.0,
        }))
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")))
            .arg(holder)
            .arg(fence)
            .arg((ttl.as_millis() as u64).max(1));
        let r: Option<(u64, u64)> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(r.map(|(fence, exp)| Grant {
            fence,
            expires_at: exp as f64 / 1000.0,
        }))
    }

    async fn release(&self, name: &str, holder: &str, fence: u64) -> Result<bool, Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")))
            .arg(holder)
            .arg(fence)
            .arg(0);
        let r: Option<(u64, u64)> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(r.is_some())
    }

    async fn holder(&self, name: &str) -> Result<Option<(String, Grant)>, Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.holder.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")));
        let r: Option<(String, u64, u64)> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(r.map(|(h, fence, exp)| {
            (
                h,
                Grant {
                    fence,
                    expires_at: exp as f64 / 1000.0,
                },
            )
        }))
    }

    async fn kv_put_fenced(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let mut c = self.conn();
        let mut inv = self.scripts.put_fenced.prepare_invoke();
        inv.key(self.key(&format!("lease:{name}")))
            .key(self.kv_key(ns, key))
            .key(self.kv_index(ns))
            .arg(holder)
            .arg(fence)
            .arg(value)
            .arg(ttl.map_or(0, |t| (t.as_millis() as u64).max(1)))
            .arg(key);
        let written: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(written == 1)
    }
}

#[async_trait]
impl crate::telemetry::Collect for RedisStore {
    async fn collect(&self, out: &mut crate::telemetry::Rows) {
        let n = |v: u64| Value::Number(v as f64);
        for (fid, v) in [
            (
                metrics::DEVMETRICS_STORE_UP,
                n(Store::health(self).is_ok() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_SERIES,
                n(self.state.series_count() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_SCOPES,
                n(self.state.scope_count() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL,
                n(self.duplicates.load(Ordering::Relaxed)),
            ),
        ] {
            out.push(fid, &[], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_encoding() {
        let fid = metrics::DEVMETRICS_WORKFLOW_JOB_DURATION_SECONDS;
        let mut h = HistogramValue::new(family(fid).buckets);
        h.observe(family(fid).buckets, 12.5);
        h.observe(family(fid).buckets, 1e9);
        for v in [
            Value::Number(0.1 + 0.2),
            Value::Number(-3.0),
            Value::Number(f64::INFINITY),
            Value::Histogram(Box::new(h)),
        ] {
            assert_eq!(decode(fid, &encode(&v)), Some(v));
        }
        assert!(matches!(
            decode(fid, "NaN"),
            Some(Value::Number(x)) if x.is_nan()
        ));
    }
}
