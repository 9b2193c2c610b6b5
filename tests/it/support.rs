//! The one harness: an exporter on 127.0.0.1:0 with storage of its own, the storage backend
//! every area runs on (`DEVMETRICS_TEST_BACKEND`, SQLite by default), and the rules for tests
//! that need something from outside the project.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use devmetrics::app::{self, Launched};
use devmetrics::config::{self, Config, Overrides};
use devmetrics::queue::RetryPolicy;
use devmetrics::storage;
use tokio_util::sync::CancellationToken;

pub fn config_with(dir: &Path, extra: &[(&str, serde_yaml::Value)]) -> Config {
    let mut o = Overrides::default();
    o.set(
        "storage.path",
        serde_yaml::Value::String(dir.join("devmetrics.db").display().to_string()),
        "test",
    );
    o.set(
        "web.listen_addresses",
        serde_yaml::Value::String("127.0.0.1:0".into()),
        "test",
    );
    for (k, v) in Backend::from_env().keys(dir).iter().chain(extra) {
        o.set(k, v.clone(), "test");
    }
    config::load(None, &BTreeMap::new(), &o).expect("test config is valid")
}

pub struct Running {
    pub base: String,
    pub launched: Option<Launched>,
    pub shutdown: CancellationToken,
}

impl Running {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(l) = self.launched.take() {
            l.wait().await;
        }
    }
}

pub async fn start(config: Config, scheme: &str) -> Running {
    let listeners = app::bind(&config).await.expect("bind");
    let shutdown = CancellationToken::new();
    let launched = app::launch(config, listeners, shutdown.clone())
        .await
        .expect("launch");
    let base = format!("{scheme}://{}", launched.addrs[0]);
    Running {
        base,
        launched: Some(launched),
        shutdown,
    }
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The Python interpreter with `prometheus_client` (an independent OpenMetrics parser), or
/// `None` with a message. `scripts/test` provisions it; with `DEVMETRICS_REQUIRE_SERVICES=1`
/// (CI) a missing parser fails the test instead of skipping it.
pub fn python_with_parser() -> Option<PathBuf> {
    let candidates = [
        std::env::var("DEVMETRICS_PYTHON").ok().map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.venv/bin/python"
        ))),
        Some(PathBuf::from("python3")),
    ];
    for py in candidates.into_iter().flatten() {
        let ok = std::process::Command::new(&py)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    let msg = "python3 with prometheus_client not found: run scripts/test (it creates .venv), or `pip install prometheus-client`";
    if flag("DEVMETRICS_REQUIRE_SERVICES") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Parses exposition text with prometheus_client (`format`: "openmetrics" or "text") and
/// returns `{"families": [{name, type, unit, samples: [[name, labels, value]]}]}`; panics with
/// the parser's message when it rejects the input.
pub fn parse_exposition(py: &Path, format: &str, body: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new(py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/parse_metrics.py"
        ))
        .arg(format)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{format} rejected by prometheus_client: {}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The storage backends the integration tests run on. Each later backend (Redis, RabbitMQ)
/// adds its variant here, and every test that takes a backend runs on it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// Store and lease in the Redis on 127.0.0.1:6379 (queue in the local file).
    Redis,
    /// Store and lease in SQLite, the queue on the RabbitMQ at [`RABBITMQ_URL`].
    RabbitMq,
    /// Everything in the Redis on 127.0.0.1:6379: store, lease and the queue on streams,
    /// through the one `storage.redis` connection.
    RedisStreams,
}

pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";
/// The broker the RabbitMQ backend's tests use (the machine's own, as CI's).
pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A key prefix of the test directory `dir` (temporary directories are unique).
pub fn prefix_for(dir: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(dir.display().to_string().as_bytes());
    format!("devmetrics-test-{}", hex::encode(&h[..8]))
}

/// Whether a service listens on `addr`; without it a test that needs it skips, or fails
/// when `DEVMETRICS_REQUIRE_SERVICES=1` (CI).
pub fn service(name: &str, addr: &str) -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &addr.parse().expect("a socket address"),
        std::time::Duration::from_secs(1),
    )
    .is_ok();
    if !up {
        let msg = format!("{name} is not listening on {addr}");
        if flag("DEVMETRICS_REQUIRE_SERVICES") {
            panic!("{msg}, and DEVMETRICS_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED on {name}: {msg}");
    }
    up
}

/// A tool the test needs: `None` (skip) when absent, a failure under
/// `DEVMETRICS_REQUIRE_SERVICES=1`.
pub fn tool(name: &str, version_arg: &str, install: &str) -> Option<()> {
    if std::process::Command::new(name)
        .arg(version_arg)
        .output()
        .is_ok()
    {
        return Some(());
    }
    let msg = format!("{name} is not installed ({install})");
    if flag("DEVMETRICS_REQUIRE_SERVICES") {
        panic!("{msg} and DEVMETRICS_REQUIRE_SERVICES=1");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

pub const REDIS_ADDR: &str = "127.0.0.1:6379";

impl Backend {
    /// SQLite, and every network backend whose service is running.
    pub fn all() -> Vec<Backend> {
        let mut v = vec![Backend::Sqlite];
        if service("Redis", REDIS_ADDR) {
            v.push(Backend::Redis);
        }
        if service("RabbitMQ", RABBITMQ_ADDR) {
            v.push(Backend::RabbitMq);
        }
        if v.contains(&Backend::Redis) {
            v.push(Backend::RedisStreams);
        }
        v
    }

    /// The backend the area tests run on: `DEVMETRICS_TEST_BACKEND` (default `sqlite`).
    pub fn from_env() -> Backend {
        match std::env::var("DEVMETRICS_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
            Ok("redis") => Backend::Redis,
            Ok("rabbitmq") => Backend::RabbitMq,
            Ok("redis-streams") => Backend::RedisStreams,
            Ok(other) => {
                panic!("DEVMETRICS_TEST_BACKEND={other} is not a backend these tests know")
            }
        }
    }

    /// Opens this backend's store, queue and lease for a test in `dir`, through the same
    /// factory the service uses.
    pub async fn open(self, dir: &Path, policy: &RetryPolicy) -> storage::Backends {
        let ms = |d: std::time::Duration| serde_yaml::Value::String(format!("{}ms", d.as_millis()));
        let config = self.config(
            dir,
            &[
                ("queue.max_attempts", policy.max_attempts.into()),
                ("queue.initial_backoff", ms(policy.initial_backoff)),
                ("queue.max_backoff", ms(policy.max_backoff)),
                ("queue.retry_horizon", ms(policy.horizon)),
            ],
        );
        storage::open(&config)
            .await
            .expect("the test backend opens")
    }

    /// The config keys that select this backend.
    pub fn keys(self, dir: &Path) -> Vec<(&'static str, serde_yaml::Value)> {
        match self {
            Backend::Sqlite => vec![
                ("storage.backend", "sqlite".into()),
                ("queue.backend", "sqlite".into()),
            ],
            // A prefix of its own per test directory: tests run in parallel on one server,
            // and a test that reopens its directory finds what it wrote (a restart).
            Backend::Redis => vec![
                ("storage.backend", "redis".into()),
                ("queue.backend", "sqlite".into()),
                (
                    "storage.redis.url",
                    format!("redis://{REDIS_ADDR}/0").into(),
                ),
                ("storage.redis.key_prefix", prefix_for(dir).into()),
            ],
            // Queues named after the test directory too; the broker deletes them once
            // unused for a while.
            Backend::RabbitMq => vec![
                ("storage.backend", "sqlite".into()),
                ("queue.backend", "rabbitmq".into()),
                ("queue.rabbitmq.url", RABBITMQ_URL.into()),
                ("queue.rabbitmq.prefix", prefix_for(dir).into()),
                ("queue.rabbitmq.test_queue_expiry", "5m".into()),
            ],
            Backend::RedisStreams => vec![
                ("storage.backend", "redis".into()),
                ("queue.backend", "redis".into()),
                (
                    "storage.redis.url",
                    format!("redis://{REDIS_ADDR}/0").into(),
                ),
                ("storage.redis.key_prefix", prefix_for(dir).into()),
            ],
        }
    }

    /// Deletes what a test in `dir` left in Redis (its keys all start with its prefix), so
    /// the shared server does not fill up; nothing for the other backends.
    pub fn clean_up(self, dir: &Path) {
        if !matches!(self, Backend::Redis | Backend::RedisStreams) {
            return;
        }
        let Ok(mut c) = redis::Client::open(format!("redis://{REDIS_ADDR}/0"))
            .and_then(|client| client.get_connection())
        else {
            return;
        };
        let pattern = format!("{{{}}}:*", prefix_for(dir));
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut c)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut c);
        }
    }

    /// A config for this backend in `dir`, with `extra` keys on top.
    pub fn config(self, dir: &Path, extra: &[(&str, serde_yaml::Value)]) -> Config {
        let mut keys = self.keys(dir);
        keys.extend(extra.iter().cloned());
        config_with(dir, &keys)
    }
}

/// The commented section `# {name}:` of `config example`, uncommented (its own comment lines
/// left out) and with each `(from, to)` replaced, after the example's active part.
pub fn example_with_section(name: &str, replace: &[(&str, &str)]) -> String {
    let mut section = String::new();
    let mut inside = false;
    for line in devmetrics::config::EXAMPLE.lines() {
        if line.starts_with(&format!("# {name}:")) {
            inside = true;
        }
        if !inside {
            continue;
        }
        if line.trim().is_empty() {
            break;
        }
        let l = line.trim_start_matches("# ");
        if !l.trim_start().starts_with('#') {
            section.push_str(l);
            section.push('\n');
        }
    }
    for (from, to) in replace {
        section = section.replace(from, to);
    }
    format!("{}\n{section}", devmetrics::config::EXAMPLE)
}

/// `family{labels} value` lines of `body` as labels → value.
/// Every series of an exposition, keyed by its name and labels as written.
pub fn all_series(body: &str) -> std::collections::BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub fn series(body: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (labels, v) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}
