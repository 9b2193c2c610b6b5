//! Stage one: the raw shape, as written in YAML (all optional, unknown keys refused); and
//! stage two: [`RawConfig::resolve`] into typed, validated values.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Error, parse_duration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub web: RawWeb,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub ha: RawHa,
    // Source sections: each source owns its raw and resolved config types in
    // `src/sources/<name>/config.rs`.
    #[serde(default)]
    pub github: Option<crate::sources::github::config::RawGithub>,
    pub webhooks: Option<crate::sources::github::webhook::config::RawWebhooks>,
    pub spacelift: Option<crate::sources::spacelift::config::RawSpacelift>,
    pub dora: Option<crate::sources::dora::config::RawDora>,
    pub copilot: Option<crate::sources::copilot::config::RawCopilot>,
    pub push: Option<crate::exposition::push::RawPush>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    pub lease_ttl: Option<String>,
    pub replica_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    #[serde(default, deserialize_with = "string_or_seq")]
    pub listen_addresses: Option<Vec<String>>,
    pub telemetry_path: Option<String>,
    pub config_file: Option<PathBuf>,
    pub max_request_body_bytes: Option<u64>,
    pub max_connections: Option<usize>,
    pub read_header_timeout: Option<String>,
    pub request_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub backend: Option<String>,
    pub path: Option<PathBuf>,
    pub idempotency_retention: Option<String>,
    pub gauge_expiry: Option<String>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub key_prefix: Option<String>,
    pub sentinel: Option<RawSentinel>,
    pub tls: Option<RawTls>,
}

/// `storage.redis.sentinel`: the master is found through Redis Sentinel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master_name: Option<String>,
    /// The Sentinels, `redis://host:26379` each (`rediss://` for TLS).
    #[serde(default, deserialize_with = "string_or_seq")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub backend: Option<String>,
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub retry_horizon: Option<String>,
    pub max_depth: Option<u64>,
    pub dedupe_retention: Option<String>,
    pub rabbitmq: Option<RawRabbitMq>,
    pub redis: Option<RawQueueRedis>,
}

/// `queue.redis`: the connection of `storage.redis` unless a URL is given here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueueRedis {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub key_prefix: Option<String>,
    pub visibility_timeout: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRabbitMq {
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub tls: Option<RawTls>,
    /// Tests only: the broker deletes queues unused this long, messages and all, so
    /// throwaway prefixes do not pile up on a shared broker. Not in the example config.
    pub test_queue_expiry: Option<String>,
}

/// TLS settings of a connection to a service (`queue.rabbitmq.tls`, `storage.redis.tls`,
/// `queue.redis.tls`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificates of the CA(s) that signed the server's certificate, trusted besides
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Reads `{key}.ca_file`: PEM with at least one certificate.
fn read_ca_file(key: &str, path: PathBuf) -> Result<String, Error> {
    let shown = path.display().to_string();
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| Error::invalid(key, Some(&shown), format!("cannot read: {e}")))?;
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(key, Some(&shown), format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            key,
            Some(&shown),
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(pem)
}

/// Resolves the Redis connection of the section `section` (`storage.redis`, `queue.redis`);
/// errors name the section's keys.
fn resolve_redis(
    section: &str,
    r: RawRedis,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<RedisConfig, Error> {
    use crate::config::{Secret, SecretSource};
    let (source, shown) = match (r.url, r.url_file) {
        (Some(u), None) => (SecretSource::Value(Secret::new(u)), None),
        (None, Some(f)) => {
            let f = rel(f);
            let shown = f.display().to_string();
            (SecretSource::File(f), Some(shown))
        }
        (None, None) => (
            SecretSource::Value(Secret::new("redis://127.0.0.1:6379/0")),
            None,
        ),
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                format!("{section}.url"),
                None,
                "set either url or url_file, not both",
            ));
        }
    };
    let key = if shown.is_some() {
        format!("{section}.url_file")
    } else {
        format!("{section}.url")
    };
    let url = source
        .read()
        .map_err(|e| Error::invalid(&key, shown.as_deref(), format!("cannot read: {e}")))?;
    // The value is never shown: it may carry a password.
    if redis::IntoConnectionInfo::into_connection_info(url.expose()).is_err() {
        return Err(Error::invalid(
            key,
            shown.as_deref(),
            "is not a Redis URL (redis://[user:password@]host:port/db or rediss:// for TLS)",
        ));
    }
    let key_prefix = r.key_prefix.unwrap_or_else(|| "devmetrics".to_string());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        return Err(Error::invalid(
            format!("{section}.key_prefix"),
            Some(&key_prefix),
            "must be non-empty, without braces or spaces",
        ));
    }
    let sentinel = match r.sentinel {
        None => None,
        Some(s) => {
            let master_name = s.master_name.filter(|m| !m.is_empty()).ok_or_else(|| {
                Error::invalid(
                    format!("{section}.sentinel.master_name"),
                    None,
                    "needed with a sentinel section: the name Sentinel monitors the master as, e.g. mymaster",
                )
            })?;
            let urls = s.urls.unwrap_or_default();
            if urls.is_empty() {
                return Err(Error::invalid(
                    format!("{section}.sentinel.urls"),
                    None,
                    "needs at least one Sentinel, e.g. [redis://127.0.0.1:26379]",
                ));
            }
            for (i, u) in urls.iter().enumerate() {
                if redis::IntoConnectionInfo::into_connection_info(u.as_str()).is_err() {
                    return Err(Error::invalid(
                        format!("{section}.sentinel.urls[{i}]"),
                        None,
                        "is not a Redis URL (redis://host:26379 or rediss:// for TLS)",
                    ));
                }
            }
            Some(SentinelConfig {
                master_name,
                urls: urls.into_iter().map(Secret::new).collect(),
            })
        }
    };
    let ca_pem = match r.tls.and_then(|t| t.ca_file) {
        None => None,
        Some(f) => {
            let key = format!("{section}.tls.ca_file");
            let pem = read_ca_file(&key, rel(f))?;
            let tls = |u: &str| u.trim_start().to_ascii_lowercase().starts_with("rediss://");
            let any_tls = tls(url.expose())
                || sentinel
                    .as_ref()
                    .is_some_and(|s| s.urls.iter().any(|u| tls(u.expose())));
            // A CA nobody uses is a mistake worth stopping on: the operator meant TLS.
            if !any_tls {
                return Err(Error::invalid(
                    key,
                    None,
                    format!(
                        "applies to rediss:// connections, but {section}.url{} uses redis://",
                        if sentinel.is_some() {
                            " and every Sentinel URL"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Some(pem)
        }
    };
    Ok(RedisConfig {
        url,
        key_prefix,
        sentinel,
        ca_pem,
    })
}

/// Accepts `a` or `[a, b]` (and `a,b` from an environment variable).
pub fn string_or_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(s.split(',').map(|x| x.trim().to_string()).collect()),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// GitHub ends a workflow run after 35 days; an event's key must outlive every redelivery
/// of it.
pub const MIN_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(35 * 86_400);
const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(40 * 86_400);

/// The default port: the Prometheus wiki's default-port allocations fill 9100–9999, so we
/// take one outside that range that no exporter there claims.
pub const DEFAULT_PORT: u16 = 10477;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Clone, Debug)]
pub struct WebConfig {
    pub listen_addresses: Vec<SocketAddr>,
    pub telemetry_path: String,
    pub config_file: Option<PathBuf>,
    pub max_request_body_bytes: u64,
    /// Connections served at once per listener; more are closed on accept.
    pub max_connections: usize,
    pub read_header_timeout: Duration,
    pub request_timeout: Duration,
}

/// Where metric state, kv and leases live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    /// The embedded SQLite file at `storage.path`.
    Sqlite,
    /// A Redis server shared by every replica (`storage.redis`).
    Redis,
}

/// Where the Redis store is. The URL can carry a password: it is a secret.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub url: crate::config::Secret,
    /// Every key starts with `{key_prefix}:`; the braces make it Redis Cluster's hash tag,
    /// so every key of one operation is in one slot.
    pub key_prefix: String,
    /// When set, the master is the one these Sentinels name; `url` then gives only its
    /// credentials, database and TLS (`rediss://`), not its address.
    pub sentinel: Option<SentinelConfig>,
    /// `tls.ca_file`'s PEM: the CA(s) trusted for `rediss://` (the master's and the
    /// Sentinels') instead of the public roots.
    pub ca_pem: Option<String>,
}

/// `storage.redis.sentinel`.
#[derive(Clone, Debug)]
pub struct SentinelConfig {
    pub master_name: String,
    /// Sentinel URLs may carry a password: secrets.
    pub urls: Vec<crate::config::Secret>,
}

/// Where queued work lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueBackend {
    /// Rows of the embedded SQLite file at `storage.path`.
    Sqlite,
    /// Queues on a RabbitMQ broker (`queue.rabbitmq`); deduplication keys live beside the
    /// store (its SQLite file, or Redis), and a spool in the SQLite file covers outages.
    RabbitMq,
    /// Streams in Redis (`queue.redis`, else the connection of `storage.redis`), with their
    /// deduplication keys beside them.
    Redis,
}

/// `queue.redis`, resolved: where the streams live and how long a taken message may go
/// unsettled before another consumer takes it over.
#[derive(Clone, Debug)]
pub struct QueueRedisConfig {
    pub connection: RedisConfig,
    /// The key the URL came from (`queue.redis.url`, `storage.redis.url`, or their
    /// `url_file`), for errors that must name it without showing it.
    pub url_key: String,
    pub visibility_timeout: Duration,
}

impl QueueBackend {
    /// Whether every replica consumes the same queue (rather than its own file's).
    pub fn is_shared(self) -> bool {
        !matches!(self, QueueBackend::Sqlite)
    }
}

/// `queue.rabbitmq`: where the broker is and what our queues are called there.
#[derive(Clone, Debug)]
pub struct RabbitMqConfig {
    /// `amqp://USER:PASSWORD@HOST:PORT/VHOST`; it holds the password, so it is a secret.
    pub url: super::Secret,
    /// Every exchange and queue name starts with it, so deployments can share a broker.
    pub prefix: String,
    /// `tls.ca_file`'s PEM, trusted for `amqps://` besides the system's roots.
    pub ca_pem: Option<String>,
    pub test_queue_expiry: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub path: PathBuf,
    pub idempotency_retention: Duration,
    /// How long a gauge member (a job queued or running) counts without the delivery that
    /// ends it.
    pub gauge_expiry: Duration,
    /// Set when `backend` is `Redis`.
    pub redis: Option<RedisConfig>,
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub backend: QueueBackend,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long after publishing a failed message is still retried.
    pub retry_horizon: Duration,
    /// Messages a topic holds before publishes are refused (503 to webhook senders).
    pub max_depth: u64,
    pub dedupe_retention: Duration,
    /// Set when `backend` is RabbitMQ.
    pub rabbitmq: Option<RabbitMqConfig>,
    /// Set when `backend` is Redis.
    pub redis: Option<QueueRedisConfig>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub ha: HaConfig,
    pub web: WebConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub storage: StorageConfig,
    pub queue: QueueConfig,
    pub github: Option<crate::sources::github::GithubConfig>,
    pub webhooks: crate::sources::github::webhook::WebhooksConfig,
    pub spacelift: Option<crate::sources::spacelift::SpaceliftConfig>,
    pub dora: Option<crate::sources::dora::DoraConfig>,
    pub copilot: Option<crate::sources::copilot::CopilotConfig>,
    pub push: Option<crate::exposition::push::PushConfig>,
}

/// Leadership among replicas sharing a store.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// A leader that cannot renew for this long is replaced.
    pub lease_ttl: Duration,
    /// This replica's name in the lease and in `devmetrics_leader{replica}`.
    pub replica_id: String,
}

fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "devmetrics".into());
    format!("{host}-{}", std::process::id())
}

pub(crate) fn duration(
    key: &str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, Error> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s)
            .map_err(|p| Error::invalid(key, Some(s), format!("invalid duration: {p}"))),
    }
}

pub(crate) fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, Error> {
    // Go's ":9100" form means every interface.
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        Error::invalid(
            key,
            Some(s),
            "expected HOST:PORT with an IP address, e.g. 0.0.0.0:10477 or :10477",
        )
    })
}

fn resolve_rabbitmq(
    raw: RawRabbitMq,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<RabbitMqConfig, Error> {
    let Some(url) = raw.url else {
        return Err(Error::invalid(
            "queue.rabbitmq.url",
            None,
            "needed with queue.backend rabbitmq, e.g. amqp://USER:PASSWORD@HOST:5672/%2f",
        ));
    };
    // The URL carries the password: the problem is named, the value never shown.
    crate::queue::rabbitmq::check_url(&url)
        .map_err(|problem| Error::invalid("queue.rabbitmq.url", None, problem))?;
    let prefix = raw.prefix.unwrap_or_else(|| "devmetrics".into());
    crate::queue::rabbitmq::check_prefix(&prefix)
        .map_err(|problem| Error::invalid("queue.rabbitmq.prefix", Some(&prefix), problem))?;
    let test_queue_expiry = match raw.test_queue_expiry {
        Some(s) => Some(duration(
            "queue.rabbitmq.test_queue_expiry",
            Some(&s),
            Duration::ZERO,
        )?),
        None => None,
    };
    let ca_pem = match raw.tls.and_then(|t| t.ca_file) {
        Some(f) => Some(read_ca_file("queue.rabbitmq.tls.ca_file", rel(f))?),
        None => None,
    };
    Ok(RabbitMqConfig {
        url: super::Secret::new(url),
        prefix,
        ca_pem,
        test_queue_expiry,
    })
}

/// `queue.redis`: its own connection when it names a URL, else the store's (one URL for a
/// deployment on Redis alone). Its `key_prefix` defaults to the connection's: the queue's
/// keys (`{prefix}:q:…`) never collide with the store's.
fn resolve_queue_redis(
    raw: RawQueueRedis,
    store: Option<&RedisConfig>,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<QueueRedisConfig, Error> {
    let own = raw.url.is_some() || raw.url_file.is_some();
    if !own && raw.tls.as_ref().is_some_and(|t| t.ca_file.is_some()) {
        return Err(Error::invalid(
            "queue.redis.tls.ca_file",
            None,
            "applies with queue.redis.url; without one the queue shares storage.redis's \
             connection, and storage.redis.tls.ca_file with it",
        ));
    }
    let (mut connection, url_key) = match store {
        // The streams connect to one address; through Sentinel it would be the placeholder
        // host of storage.redis.url, not the master.
        Some(store) if !own && store.sentinel.is_some() => {
            return Err(Error::invalid(
                "queue.backend",
                Some("redis"),
                "the queue on Redis streams does not follow Sentinel yet: with \
                 storage.redis.sentinel use queue.backend rabbitmq or sqlite, or give \
                 queue.redis.url the master's address",
            ));
        }
        Some(store) if !own => (store.clone(), "storage.redis.url".to_string()),
        _ if !own => {
            return Err(Error::invalid(
                "queue.redis.url",
                None,
                "needed with queue.backend redis unless storage.backend is redis \
                 (whose storage.redis connection the queue then shares), \
                 e.g. redis://127.0.0.1:6379/0",
            ));
        }
        _ => {
            let key = if raw.url_file.is_some() {
                "queue.redis.url_file"
            } else {
                "queue.redis.url"
            };
            let c = resolve_redis(
                "queue.redis",
                RawRedis {
                    url: raw.url,
                    url_file: raw.url_file,
                    key_prefix: None,
                    sentinel: None,
                    tls: raw.tls,
                },
                rel,
            )?;
            (c, key.to_string())
        }
    };
    if let Some(p) = raw.key_prefix {
        if p.is_empty() || p.contains(['{', '}', ' ']) {
            return Err(Error::invalid(
                "queue.redis.key_prefix",
                Some(&p),
                "must be non-empty, without braces or spaces",
            ));
        }
        connection.key_prefix = p;
    }
    let visibility_timeout = duration(
        "queue.redis.visibility_timeout",
        raw.visibility_timeout.as_ref(),
        crate::queue::redis::DEFAULT_VISIBILITY_TIMEOUT,
    )?;
    if visibility_timeout < Duration::from_secs(1)
        || visibility_timeout > Duration::from_secs(12 * 3600)
    {
        return Err(Error::invalid(
            "queue.redis.visibility_timeout",
            raw.visibility_timeout.as_deref(),
            "must be between 1s and 12h",
        ));
    }
    Ok(QueueRedisConfig {
        connection,
        url_key,
        visibility_timeout,
    })
}

impl RawConfig {
    /// `base` is the config file's directory; relative paths inside the file resolve from it.
    pub fn resolve(self, base: Option<&Path>) -> Result<Config, Error> {
        let rel = |p: PathBuf| match base {
            Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
            _ => p,
        };
        let listen_addresses = self
            .web
            .listen_addresses
            .unwrap_or_else(|| vec![format!(":{DEFAULT_PORT}")])
            .iter()
            .map(|s| parse_listen("web.listen_addresses", s))
            .collect::<Result<Vec<_>, _>>()?;
        if listen_addresses.is_empty() {
            return Err(Error::invalid(
                "web.listen_addresses",
                None,
                "needs at least one address",
            ));
        }
        let telemetry_path = self.web.telemetry_path.unwrap_or_else(|| "/metrics".into());
        if !telemetry_path.starts_with('/') || telemetry_path.len() < 2 {
            return Err(Error::invalid(
                "web.telemetry_path",
                Some(&telemetry_path),
                "must be an absolute path other than /, e.g. /metrics",
            ));
        }
        // Built-in routes would collide (axum refuses overlapping routes at start), and the
        // webhook prefixes skip basic auth, so metrics there would be unauthenticated.
        if ["/livez", "/readyz", "/healthz", "/health"].contains(&telemetry_path.as_str())
            || ["/webhook", "/api/"]
                .iter()
                .any(|p| telemetry_path.starts_with(p))
        {
            return Err(Error::invalid(
                "web.telemetry_path",
                Some(&telemetry_path),
                "collides with a built-in or webhook route; choose another path, e.g. /metrics",
            ));
        }
        let level = self.log.level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(Error::invalid(
                "log.level",
                Some(&level),
                "expected one of error, warn, info, debug, trace",
            ));
        }
        let log_format = match self.log.format.as_deref().unwrap_or("logfmt") {
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            other => {
                return Err(Error::invalid(
                    "log.format",
                    Some(other),
                    "expected logfmt or json",
                ));
            }
        };
        let storage_backend = match self.storage.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => StorageBackend::Sqlite,
            "redis" => StorageBackend::Redis,
            other => {
                return Err(Error::invalid(
                    "storage.backend",
                    Some(other),
                    "expected sqlite or redis",
                ));
            }
        };
        let queue_backend = match self.queue.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => QueueBackend::Sqlite,
            "rabbitmq" => QueueBackend::RabbitMq,
            "redis" => QueueBackend::Redis,
            other => {
                return Err(Error::invalid(
                    "queue.backend",
                    Some(other),
                    "expected sqlite, rabbitmq or redis",
                ));
            }
        };
        let rabbitmq = match queue_backend {
            QueueBackend::RabbitMq => Some(resolve_rabbitmq(
                self.queue.rabbitmq.unwrap_or_default(),
                &rel,
            )?),
            QueueBackend::Sqlite | QueueBackend::Redis => None,
        };
        let idempotency_retention = duration(
            "storage.idempotency_retention",
            self.storage.idempotency_retention.as_ref(),
            DEFAULT_IDEMPOTENCY_RETENTION,
        )?;
        if idempotency_retention < MIN_IDEMPOTENCY_RETENTION {
            return Err(Error::invalid(
                "storage.idempotency_retention",
                self.storage.idempotency_retention.as_deref(),
                "must be at least 35d: a GitHub Actions run may last 35 days, and a key \
                 forgotten before its run ends lets a redelivery count twice",
            ));
        }
        let redis = match (storage_backend, self.storage.redis) {
            (StorageBackend::Redis, r) => {
                Some(resolve_redis("storage.redis", r.unwrap_or_default(), &rel)?)
            }
            (StorageBackend::Sqlite, _) => None,
        };
        let queue_redis = match queue_backend {
            QueueBackend::Redis => Some(resolve_queue_redis(
                self.queue.redis.unwrap_or_default(),
                redis.as_ref(),
                &rel,
            )?),
            QueueBackend::Sqlite | QueueBackend::RabbitMq => None,
        };
        let gauge_expiry = duration(
            "storage.gauge_expiry",
            self.storage.gauge_expiry.as_ref(),
            Duration::from_secs(35 * 86_400),
        )?;
        if gauge_expiry < Duration::from_secs(3600) || gauge_expiry > idempotency_retention {
            return Err(Error::invalid(
                "storage.gauge_expiry",
                self.storage.gauge_expiry.as_deref(),
                "must be between 1h and storage.idempotency_retention: a job still counted \
                 after its keys are forgotten could be entered twice",
            ));
        }
        // 0: no cap on attempts; the retry horizon decides.
        let max_attempts = self.queue.max_attempts.unwrap_or(0);
        let retry_horizon = duration(
            "queue.retry_horizon",
            self.queue.retry_horizon.as_ref(),
            Duration::from_secs(24 * 3600),
        )?;
        let max_depth = self
            .queue
            .max_depth
            .unwrap_or(crate::queue::sqlite::DEFAULT_MAX_DEPTH);
        if max_depth == 0 {
            return Err(Error::invalid(
                "queue.max_depth",
                Some("0"),
                "must be at least 1",
            ));
        }
        let initial_backoff = duration(
            "queue.initial_backoff",
            self.queue.initial_backoff.as_ref(),
            Duration::from_secs(1),
        )?;
        let max_backoff = duration(
            "queue.max_backoff",
            self.queue.max_backoff.as_ref(),
            Duration::from_secs(300),
        )?;
        if max_backoff < initial_backoff {
            return Err(Error::invalid(
                "queue.max_backoff",
                self.queue.max_backoff.as_deref(),
                "must not be shorter than queue.initial_backoff",
            ));
        }
        let spacelift = match self.spacelift {
            Some(raw) => raw.resolve(base)?,
            None => None,
        };
        let github = match self.github {
            Some(g) => g.resolve(base)?,
            None => None,
        };
        let dora = match self.dora {
            Some(d) => d.resolve(base)?,
            None => None,
        };
        let copilot = match self.copilot {
            Some(c) => c.resolve(base)?,
            None => None,
        };
        let push = match self.push {
            Some(p) => p.resolve()?,
            None => None,
        };
        let lease_ttl = duration(
            "ha.lease_ttl",
            self.ha.lease_ttl.as_ref(),
            Duration::from_secs(10),
        )?;
        if lease_ttl < Duration::from_secs(1) || lease_ttl > Duration::from_secs(300) {
            return Err(Error::invalid(
                "ha.lease_ttl",
                self.ha.lease_ttl.as_deref(),
                "must be between 1s and 5m",
            ));
        }
        let replica_id = match self.ha.replica_id {
            Some(r) if !r.trim().is_empty() => r.trim().to_string(),
            _ => default_replica_id(),
        };
        let config = Config {
            ha: HaConfig {
                lease_ttl,
                replica_id,
            },
            spacelift,
            dora,
            copilot,
            push,
            github,
            web: WebConfig {
                listen_addresses,
                telemetry_path,
                config_file: self.web.config_file.map(rel),
                max_request_body_bytes: self.web.max_request_body_bytes.unwrap_or(25 * 1024 * 1024),
                max_connections: match self.web.max_connections {
                    None => 4096,
                    Some(n) if n >= 1 => n,
                    Some(n) => {
                        return Err(Error::invalid(
                            "web.max_connections",
                            Some(&n.to_string()),
                            "must be at least 1",
                        ));
                    }
                },
                read_header_timeout: duration(
                    "web.read_header_timeout",
                    self.web.read_header_timeout.as_ref(),
                    Duration::from_secs(10),
                )?,
                request_timeout: duration(
                    "web.request_timeout",
                    self.web.request_timeout.as_ref(),
                    Duration::from_secs(60),
                )?,
            },
            log_level: level,
            log_format,
            storage: StorageConfig {
                backend: storage_backend,
                // The default is relative to the working directory, not to the config file:
                // a config mounted read-only (a ConfigMap) must not put the database beside it.
                path: self
                    .storage
                    .path
                    .map(rel)
                    .unwrap_or_else(|| PathBuf::from("./data/devmetrics.db")),
                idempotency_retention,
                gauge_expiry,
                redis,
            },
            queue: QueueConfig {
                backend: queue_backend,
                max_attempts,
                initial_backoff,
                max_backoff,
                retry_horizon,
                max_depth,
                dedupe_retention: duration(
                    "queue.dedupe_retention",
                    self.queue.dedupe_retention.as_ref(),
                    Duration::from_secs(7 * 86_400),
                )?,
                rabbitmq,
                redis: queue_redis,
            },
            webhooks: self.webhooks.unwrap_or_default().resolve(&rel)?,
        };
        crate::sources::github::webhook::config::check_with(&config)?;
        Ok(config)
    }
}
