//! Replicas sharing one Redis: one truth, whichever replica writes, and the same output from
//! every replica once the refresher has run.

use std::sync::Arc;
use std::time::Duration;

use devmetrics::config::{RedisConfig, Secret};
use devmetrics::metrics::{self, Labels, Op, Sample, Update};
use devmetrics::store::redis::{REFRESH, RedisStore};
use devmetrics::store::{Lease, Store};

use crate::support::{REDIS_ADDR, prefix_for, service};

async fn replicas(n: usize) -> Option<(tempfile::TempDir, Vec<Arc<RedisStore>>)> {
    if !service("Redis", REDIS_ADDR) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        url: Secret::new(format!("redis://{REDIS_ADDR}/0")),
        key_prefix: prefix_for(dir.path()),
        sentinel: None,
        ca_pem: None,
    };
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(RedisStore::open(&cfg).await.unwrap());
    }
    Some((dir, v))
}

fn render(store: &RedisStore) -> String {
    let mut out = Vec::new();
    devmetrics::exposition::render(
        &store.snapshot().scopes,
        devmetrics::exposition::Format::Text,
        &mut out,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

async fn converged(stores: &[Arc<RedisStore>]) -> String {
    for _ in 0..50 {
        let outs: Vec<String> = stores.iter().map(|s| render(s)).collect();
        if outs.iter().all(|o| *o == outs[0]) {
            return outs[0].clone();
        }
        tokio::time::sleep(REFRESH / 2).await;
    }
    panic!("replicas did not converge within 25 refreshes");
}

fn inc(route: &str) -> Update {
    Update {
        family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
        labels: Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &[route, "200"]).unwrap(),
        op: Op::Inc(1.0),
    }
}

#[tokio::test]
async fn replicas_apply_each_key_once_and_converge() {
    let Some((_dir, stores)) = replicas(3).await else {
        return;
    };
    // Every replica applies the same 200 keys at once: each counts once in all.
    let mut tasks = Vec::new();
    for s in &stores {
        for k in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.apply_once(&format!("k{k}"), "events", vec![inc("/x")])
                    .await
                    .unwrap()
            }));
        }
    }
    let mut applied = 0;
    for t in tasks {
        if t.await.unwrap() == devmetrics::store::Applied::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 200);
    let out = converged(&stores).await;
    assert!(
        out.contains("devmetrics_http_requests_total{route=\"/x\",code=\"200\"} 200"),
        "{out}"
    );

    // A replace on one replica shows on the others; a newer version wins wherever written.
    let fid = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
    let sample = |v: f64| {
        vec![Sample::number(
            fid,
            Labels::new(fid, &["/poll", "200"]).unwrap(),
            v,
        )]
    };
    stores[0]
        .replace_scope_if_newer("github/o/r", 10, sample(1.0))
        .await
        .unwrap();
    stores[1]
        .replace_scope_if_newer("github/o/r", 5, sample(2.0))
        .await
        .unwrap();
    stores[2]
        .replace_scope_if_newer("github/o/r", 20, sample(3.0))
        .await
        .unwrap();
    let out = converged(&stores).await;
    assert!(
        out.contains("devmetrics_http_requests_total{route=\"/poll\",code=\"200\"} 3"),
        "{out}"
    );

    // A drop on one replica disappears everywhere.
    stores[1]
        .drop_scopes(vec!["github/o/r".into()])
        .await
        .unwrap();
    let out = converged(&stores).await;
    assert!(!out.contains("/poll"), "{out}");
}

#[tokio::test]
async fn the_lease_is_held_by_one_replica_at_a_time_with_growing_fences() {
    let Some((_dir, stores)) = replicas(2).await else {
        return;
    };
    let ttl = Duration::from_millis(300);
    let a = stores[0]
        .acquire("leader", "a", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stores[1]
            .acquire("leader", "b", ttl)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let b = stores[1]
        .acquire("leader", "b", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(b.fence > a.fence);
    assert!(
        stores[0]
            .renew("leader", "a", a.fence, ttl)
            .await
            .unwrap()
            .is_none(),
        "a lapsed grant cannot be renewed"
    );
    let (holder, g) = stores[0].holder("leader").await.unwrap().unwrap();
    assert_eq!((holder.as_str(), g.fence), ("b", b.fence));
}

struct Replica {
    base: String,
    launched: Option<devmetrics::app::Launched>,
    shutdown: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(prefix: &str, id: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::support::Backend::Redis.config(
            dir.path(),
            &[
                ("storage.redis.key_prefix", prefix.into()),
                ("ha.lease_ttl", "1s".into()),
                ("ha.replica_id", id.into()),
            ],
        );
        let listeners = devmetrics::app::bind(&config).await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let launched = devmetrics::app::launch_with(
            config,
            listeners,
            shutdown.clone(),
            crate::contract::WITH_TOY,
        )
        .await
        .unwrap();
        Replica {
            base: format!("http://{}", launched.addrs[0]),
            launched: Some(launched),
            shutdown,
            _dir: dir,
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn leads(&self, id: &str) -> bool {
        self.metrics()
            .await
            .contains(&format!("devmetrics_leader{{replica=\"{id}\"}} 1"))
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.launched.take().unwrap().wait().await;
    }
}

/// Polls until one of `replicas` leads; returns its index and how long it took.
async fn leader_within(replicas: &[(&Replica, &str)], limit: Duration) -> (usize, Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        for (i, (r, id)) in replicas.iter().enumerate() {
            if r.leads(id).await {
                return (i, started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no replica became leader within {limit:?}");
}

#[tokio::test]
async fn a_follower_takes_over_within_the_lease_ttl_and_only_the_leader_polls() {
    if !service("Redis", REDIS_ADDR) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = prefix_for(dir.path());
    // A leader that crashed: it holds the lease and never renews it.
    let ghost = RedisStore::open(&RedisConfig {
        url: Secret::new(format!("redis://{REDIS_ADDR}/0")),
        key_prefix: prefix.clone(),
        sentinel: None,
        ca_pem: None,
    })
    .await
    .unwrap();
    let ttl = Duration::from_secs(1);
    ghost
        .acquire("leader", "crashed", ttl)
        .await
        .unwrap()
        .unwrap();
    let crashed_at = std::time::Instant::now();
    let a = Replica::start(&prefix, "a").await;
    let b = Replica::start(&prefix, "b").await;
    let (first, _) = leader_within(&[(&a, "a"), (&b, "b")], ttl + Duration::from_secs(2)).await;
    let took = crashed_at.elapsed();
    eprintln!("a leader after a crashed one in {took:?}");
    assert!(took <= ttl + Duration::from_secs(1), "took {took:?}");
    let (leader, follower, fid) = if first == 0 { (a, b, "b") } else { (b, a, "a") };

    // Only the leader polls; the follower serves the leader's series from the shared store,
    // and shows the leader's view of the source's health.
    let polled = "devmetrics_source_scrapes_total{source=\"toy\",result=\"success\"}";
    let up = "devmetrics_source_up{source=\"toy\"} 1";
    let want =
        r#"devmetrics_upstream_requests_total{upstream="toy",endpoint="things",status="200"} 42"#;
    for _ in 0..60 {
        let f = follower.metrics().await;
        if f.contains(want) && f.contains(polled) && f.contains(up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let f = follower.metrics().await;
    assert!(f.contains(want), "{f}");
    assert!(
        f.contains(polled) && f.contains(up),
        "the leader's health is not shown:\n{f}"
    );
    let lid = if fid == "a" { "b" } else { "a" };
    let polled_on = |id: &str| {
        crate::contract::TOY_POLLED_ON
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == id)
    };
    assert!(polled_on(lid), "the leader did not poll");
    assert!(!polled_on(fid), "the follower polled");
    assert!(
        f.contains(&format!("devmetrics_leader{{replica=\"{fid}\"}} 0")),
        "{f}"
    );
    assert!(leader.metrics().await.contains(polled));

    // The leader stops: it hands the lease back and the follower leads within the TTL.
    let stopped_at = std::time::Instant::now();
    leader.stop().await;
    let (_, _) = leader_within(&[(&follower, fid)], ttl + Duration::from_secs(1)).await;
    let took = stopped_at.elapsed();
    eprintln!("a leader after a stopped one in {took:?}");
    assert!(took <= ttl + Duration::from_secs(1), "took {took:?}");
    let mut polled_now = false;
    for _ in 0..40 {
        if polled_on(fid) {
            polled_now = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polled_now, "the new leader does not poll");
    follower.stop().await;
}

/// The `gh_activity_*` lines of a replica's `/metrics`, sorted.
fn activity(metrics: &str) -> Vec<String> {
    let mut v: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("gh_activity_"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

async fn get(port: u16, path: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `devmetrics serve` as replica `r{i}` on the Redis store under `prefix`, against
/// the GitHub fake at `github`, with `extra` YAML appended to its configuration.
fn serve(
    dir: &std::path::Path,
    i: usize,
    prefix: &str,
    github: &str,
    extra: &str,
) -> (std::process::Child, u16, String) {
    use devmetrics::sim::github::{APP_ID, INSTALLATION_ID};
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/test-app-key.pem");
    let port = free_port();
    let file = dir.join(format!("r{i}.yaml"));
    std::fs::write(
        &file,
        format!(
            "web: {{listen_addresses: ['127.0.0.1:{port}']}}\n\
             log: {{level: warn}}\n\
             ha: {{lease_ttl: 1s, replica_id: r{i}}}\n\
             storage:\n  backend: redis\n  path: {}\n  redis: {{url: 'redis://{REDIS_ADDR}/0', key_prefix: {prefix}}}\n\
             github:\n  api_base_url: {github}\n  orgs:\n    - org: acme\n      app_id: {APP_ID}\n      installation_id: {INSTALLATION_ID}\n      private_key_path: {}\n      scrape_interval: 1m\n{extra}",
            dir.join(format!("r{i}.db")).display(),
            key.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["serve", "--config.file"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    (child, port, format!("r{i}"))
}

/// Three `devmetrics serve` processes on the real Redis against the GitHub fake. SIGKILL
/// the leader: another leads within the lease TTL plus one second, polls at once (a commit
/// made after the kill shows), and the survivors serve identical activity series.
#[tokio::test]
async fn three_processes_survive_a_sigkilled_leader() {
    use devmetrics::sim::github::{GithubSim, OrgSpec};
    if !service("Redis", REDIS_ADDR) {
        return;
    }
    let clock = devmetrics::clock::Clock::system();
    let sim = GithubSim::new(11, clock, &[OrgSpec::small("acme")]);
    let fake = devmetrics::sim::FakeServer::start(
        "github",
        sim.router(),
        devmetrics::sim::Faults::new(11),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = prefix_for(dir.path());
    let mut children = Vec::new();
    for i in 0..3 {
        children.push(serve(dir.path(), i, &prefix, &fake.base_url(), ""));
    }
    let leader_of = async |ps: &[(std::process::Child, u16, String)]| -> Option<usize> {
        for (i, (_, port, id)) in ps.iter().enumerate() {
            let m = get(*port, "/metrics").await?;
            if m.contains(&format!("devmetrics_leader{{replica=\"{id}\"}} 1")) {
                return Some(i);
            }
        }
        None
    };
    // One leads, and its first poll reaches every replica.
    let mut leader = None;
    for _ in 0..200 {
        leader = leader_of(&children).await;
        let all_have = async {
            for (_, port, _) in &children {
                let m = get(*port, "/metrics").await.unwrap_or_default();
                if activity(&m).is_empty() {
                    return false;
                }
            }
            true
        };
        if leader.is_some() && all_have.await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.expect("a leader");
    let before = activity(&get(children[leader].1, "/metrics").await.unwrap());
    assert!(!before.is_empty());

    // SIGKILL the leader, then new activity arrives.
    let (mut dead, _, dead_id) = children.remove(leader);
    dead.kill().unwrap();
    dead.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let now = devmetrics::clock::now_unix() as i64;
    sim.add_commit(
        "acme",
        &sim.with_org("acme", |o| o.repos[0].name.clone()),
        "late-author",
        now - 60,
        5,
        1,
    );
    let mut new_leader = None;
    while killed_at.elapsed() < Duration::from_secs(5) {
        if let Some(i) = leader_of(&children).await {
            new_leader = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed_at.elapsed();
    eprintln!("{dead_id} killed; a new leader after {took:?}");
    assert!(new_leader.is_some(), "no new leader");
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // The new leader polled at once: the late commit shows, identically on both survivors.
    let mut outs = Vec::new();
    for _ in 0..100 {
        outs.clear();
        for (_, port, _) in &children {
            outs.push(activity(&get(*port, "/metrics").await.unwrap_or_default()));
        }
        if outs
            .iter()
            .all(|o| o.iter().any(|l| l.contains("late-author")))
            && outs[0] == outs[1]
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        outs[0].iter().any(|l| l.contains("late-author")),
        "the commit made after the kill never showed"
    );
    assert_eq!(outs[0], outs[1], "the survivors differ");
    for (mut c, _, _) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A series' value in a Prometheus text body.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Three `devmetrics serve` processes sharing Redis and RabbitMQ spread a cycle over
/// `github/scrape` jobs: more than one replica scrapes, every replica serves the same
/// activity, equal to the fake's ground truth, and each replica's status agrees.
#[tokio::test]
async fn three_replicas_share_a_cycle_through_jobs() {
    use crate::support::{RABBITMQ_ADDR, RABBITMQ_URL};
    use devmetrics::sim::github::{GithubSim, OrgSpec};
    if !service("Redis", REDIS_ADDR) || !service("RabbitMQ", RABBITMQ_ADDR) {
        return;
    }
    let clock = devmetrics::clock::Clock::system();
    let mut spec = OrgSpec::small("acme");
    spec.repos = 24;
    spec.active = 12;
    let sim = GithubSim::new(13, clock, &[spec]);
    let fake = devmetrics::sim::FakeServer::start(
        "github",
        sim.router(),
        devmetrics::sim::Faults::new(13),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = prefix_for(dir.path());
    let extra = format!(
        "  scrape_jobs: {{batch_size: 2}}\n\
         queue:\n  backend: rabbitmq\n  rabbitmq: {{url: '{RABBITMQ_URL}', prefix: {prefix}, test_queue_expiry: 5m}}\n"
    );
    let mut children = Vec::new();
    for i in 0..3 {
        children.push(serve(dir.path(), i, &prefix, &fake.base_url(), &extra));
    }
    let success = "devmetrics_source_scrapes_total{source=\"github/acme\",result=\"success\"}";
    let acked = "devmetrics_queue_acked_total{topic=\"github/scrape\"}";
    let mut outs: Vec<String> = Vec::new();
    for _ in 0..300 {
        outs.clear();
        for (_, port, _) in &children {
            outs.push(get(*port, "/metrics").await.unwrap_or_default());
        }
        let done = outs
            .iter()
            .all(|m| value(m, success).is_some_and(|v| v >= 1.0))
            && outs.iter().all(|m| activity(m) == activity(&outs[0]))
            && !activity(&outs[0]).is_empty();
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &outs {
        assert!(
            value(m, success).is_some_and(|v| v >= 1.0),
            "a replica does not show the cycle's success:\n{m}"
        );
        assert_eq!(activity(m), activity(&outs[0]), "replicas differ");
    }
    let scraped_on = outs
        .iter()
        .filter(|m| value(m, acked).is_some_and(|v| v >= 1.0))
        .count();
    eprintln!(
        "jobs acked per replica: {:?}",
        outs.iter().map(|m| value(m, acked)).collect::<Vec<_>>()
    );
    assert!(scraped_on >= 2, "only {scraped_on} replica(s) scraped");

    // The ground truth of the window the leader scheduled.
    let schedule = devmetrics::store::redis::RedisStore::open(&RedisConfig {
        url: Secret::new(format!("redis://{REDIS_ADDR}/0")),
        key_prefix: prefix.clone(),
        sentinel: None,
        ca_pem: None,
    })
    .await
    .unwrap()
    .kv_get("github.schedule", "acme")
    .await
    .unwrap()
    .expect("the leader recorded its schedule");
    let schedule: serde_json::Value = serde_json::from_slice(&schedule).unwrap();
    let window_end = schedule["window_end"].as_i64().unwrap();
    let truth = sim.truth("acme", window_end);
    let mut want: Vec<String> = truth
        .iter()
        .map(|((name, repo, user), v)| {
            format!("{name}{{org=\"acme\",repo=\"{repo}\",user=\"{user}\"}} {v}")
        })
        .collect();
    want.sort();
    assert_eq!(
        activity(&outs[0]),
        want,
        "activity differs from the ground truth"
    );
    for (mut c, _, _) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// With the store in Redis and the queue on RabbitMQ, two replicas share the queue's
/// deduplication keys: a delivery reaching the second is refused there (a duplicate, or a
/// conflict when the key comes with other content) and is queued once; a key forgotten by
/// one replica's GC is forgotten for both.
#[tokio::test]
async fn replicas_on_rabbitmq_share_deduplication_keys_in_redis() {
    use crate::support::{RABBITMQ_ADDR, RABBITMQ_URL, config_with};
    use bytes::Bytes;
    use devmetrics::queue::{Dedupe, Published, fingerprint};
    if !service("Redis", REDIS_ADDR) || !service("RabbitMQ", RABBITMQ_ADDR) {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let prefix = prefix_for(shared.path());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<(&str, serde_yaml::Value)> = vec![
            ("storage.backend", "redis".into()),
            (
                "storage.redis.url",
                format!("redis://{REDIS_ADDR}/0").into(),
            ),
            ("storage.redis.key_prefix", prefix.clone().into()),
            ("queue.backend", "rabbitmq".into()),
            ("queue.rabbitmq.url", RABBITMQ_URL.into()),
            ("queue.rabbitmq.prefix", prefix.clone().into()),
            ("queue.rabbitmq.test_queue_expiry", "5m".into()),
        ];
        let config = config_with(dir.path(), &keys);
        let b = devmetrics::storage::open(&config).await.unwrap();
        replicas.push((dir, b.queue));
    }
    let (a, b) = (&replicas[0].1, &replicas[1].1);
    let t = "webhooks/github";
    let body = Bytes::from_static(b"{\"action\":\"queued\"}");
    let with = |fp| {
        Some(Dedupe {
            key: "delivery-1",
            fingerprint: Some(fp),
        })
    };
    let fp = fingerprint(&body);
    assert_eq!(
        a.publish_with(t, with(fp), body.clone()).await.unwrap(),
        Published::Published
    );
    assert_eq!(
        b.publish_with(t, with(fp), body.clone()).await.unwrap(),
        Published::Duplicate
    );
    assert_eq!(
        b.publish_with(t, with(fp ^ 1), Bytes::from_static(b"other"))
            .await
            .unwrap(),
        Published::Conflict
    );
    let d = tokio::time::timeout(Duration::from_secs(5), b.receive(t))
        .await
        .expect("the message within 5 s")
        .unwrap();
    assert_eq!(d.payload, body);
    d.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.receive(t))
            .await
            .is_err(),
        "queued once"
    );
    // Recorded in an earlier second than the GC's cutoff.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(a.gc(Duration::ZERO).await.unwrap() >= 1);
    assert_eq!(
        b.publish_with(t, with(fp), body.clone()).await.unwrap(),
        Published::Published
    );
}

/// A `redis-server` (plain, TLS or Sentinel) this test started; killed when dropped.
struct Spawned {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `redis-server` can be started; without it the test is skipped with a message,
/// unless `DEVMETRICS_REQUIRE_SERVICES=1`.
fn redis_server_installed() -> bool {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    let msg = "redis-server is not installed (apt-get install redis-server)";
    if std::env::var("DEVMETRICS_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{msg}, and DEVMETRICS_REQUIRE_SERVICES=1");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Starts `redis-server` with `args` in `dir` and waits until it listens on `port`.
fn spawn_redis(dir: tempfile::TempDir, port: u16, args: &[String]) -> Spawned {
    let child = std::process::Command::new("redis-server")
        .args(args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let spawned = Spawned {
        child,
        port,
        _dir: dir,
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "redis-server {args:?} listening within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    spawned
}

/// `redis-server` arguments: `listen` (its ports), loopback only, nothing kept on disk, then
/// `extra`.
fn server_args(listen: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut args = listen;
    for a in ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] {
        args.push(a.to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A plain Redis on a free port keeping nothing on disk, with `extra` arguments.
fn spawn_plain(extra: &[&str]) -> Spawned {
    let port = free_port();
    let args = server_args(vec!["--port".into(), port.to_string()], extra);
    spawn_redis(tempfile::tempdir().unwrap(), port, &args)
}

/// The `redis-server` settings of TLS with the certificates [`write_certs`] put in `certs`,
/// clients not asked for theirs.
fn tls_settings(certs: &std::path::Path) -> Vec<(&'static str, String)> {
    let file = |n: &str| certs.join(n).display().to_string();
    vec![
        ("tls-cert-file", file("server.crt")),
        ("tls-key-file", file("server.key")),
        ("tls-ca-cert-file", file("ca.crt")),
        ("tls-auth-clients", "no".into()),
        // A Sentinel reaches the servers it watches over TLS too.
        ("tls-replication", "yes".into()),
    ]
}

/// A Redis speaking only TLS on a free port with the certificates in `certs`, keeping
/// nothing on disk, with `extra` arguments.
fn spawn_tls(certs: &std::path::Path, extra: &[&str]) -> Spawned {
    let port = free_port();
    let mut listen: Vec<String> = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
    ];
    for (k, v) in tls_settings(certs) {
        listen.push(format!("--{k}"));
        listen.push(v);
    }
    spawn_redis(
        tempfile::tempdir().unwrap(),
        port,
        &server_args(listen, extra),
    )
}

/// A Redis Sentinel on a free port (TLS only with the certificates in `tls`) monitoring
/// `master` as `mymaster` (quorum 1) with `extra` lines of configuration.
fn spawn_sentinel(master: &str, tls: Option<&std::path::Path>, extra: &str) -> Spawned {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("sentinel.conf");
    let (host, master_port) = master.split_once(':').unwrap();
    let listen = match tls {
        None => format!("port {port}\n"),
        Some(certs) => {
            let mut l = format!("port 0\ntls-port {port}\n");
            for (k, v) in tls_settings(certs) {
                l.push_str(&format!("{k} {v}\n"));
            }
            l
        }
    };
    std::fs::write(
        &conf,
        format!(
            "{listen}bind 127.0.0.1\ndir {}\nsentinel monitor mymaster {host} {master_port} 1\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    let args = [conf.display().to_string(), "--sentinel".to_string()];
    spawn_redis(dir, port, &args)
}

/// A Redis Sentinel on a free port, monitoring the Redis on [`REDIS_ADDR`] as `mymaster`.
fn sentinel() -> Option<Spawned> {
    redis_server_installed().then(|| spawn_sentinel(REDIS_ADDR, None, ""))
}

/// The store opened through Sentinel finds the master it names, and writes and reads there.
#[tokio::test]
async fn the_store_finds_its_master_through_sentinel() {
    if !service("Redis", REDIS_ADDR) {
        return;
    }
    let Some(s) = sentinel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        // Credentials and database only: Sentinel gives the address.
        url: Secret::new("redis://ignored.invalid:1/0"),
        key_prefix: prefix_for(dir.path()),
        sentinel: Some(devmetrics::config::SentinelConfig {
            master_name: "mymaster".into(),
            urls: vec![Secret::new(format!("redis://127.0.0.1:{}", s.port))],
        }),
        ca_pem: None,
    };
    let started = std::time::Instant::now();
    let store = RedisStore::open(&cfg).await.unwrap();
    eprintln!("opened through Sentinel in {:?}", started.elapsed());
    assert_eq!(store.master().as_deref(), Some(REDIS_ADDR));
    let fid = metrics::DEVMETRICS_UPSTREAM_REQUESTS_TOTAL;
    let labels = Labels::new(fid, &["sentinel", "things", "200"]).unwrap();
    store
        .replace_scope("sentinel/t", vec![Sample::number(fid, labels, 7.0)])
        .await
        .unwrap();
    // A second replica through the same Sentinel reads what the first wrote.
    let other = RedisStore::open(&cfg).await.unwrap();
    assert_eq!(render(&other), render(&store));
    assert!(render(&other).contains("sentinel"), "{}", render(&other));
    // The refresher asks Sentinel again, and stays on the same master.
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(store.master().as_deref(), Some(REDIS_ADDR));
    store.drop_scopes(vec!["sentinel/t".into()]).await.unwrap();
}

async fn write_scope(
    store: &RedisStore,
    scope: &str,
    v: f64,
) -> Result<(), devmetrics::store::Error> {
    let fid = metrics::DEVMETRICS_UPSTREAM_REQUESTS_TOTAL;
    let labels = Labels::new(fid, &["ha", scope, "200"]).unwrap();
    store
        .replace_scope(scope, vec![Sample::number(fid, labels, v)])
        .await
}

/// A synchronous connection for the test's own commands (`WAIT`, `INFO`, `SENTINEL`).
fn admin(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

fn info(addr: &str, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query(&mut admin(addr))
        .unwrap()
}

/// Polls `ok` every 50 ms for up to `limit`; the time it took.
async fn within(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Sentinel fails the master over to its replica: the store follows within a few
/// refreshes, nothing written before the failover is lost, and a write after it lands on the
/// new master, where a replica opened afterwards reads both.
#[tokio::test]
async fn the_store_follows_a_sentinel_failover_and_loses_nothing() {
    if !redis_server_installed() {
        return;
    }
    let master = spawn_plain(&[]);
    let a = format!("127.0.0.1:{}", master.port);
    let replica = spawn_plain(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let b = format!("127.0.0.1:{}", replica.port);
    // Sentinel learns of replicas from the master's INFO; a replica linked before it starts
    // is known from its first look.
    within(
        "the replica linked to its master",
        Duration::from_secs(10),
        || info(&b, "replication").contains("master_link_status:up"),
    )
    .await;
    let sentinel = spawn_sentinel(
        &a,
        None,
        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
    );
    let s_addr = format!("127.0.0.1:{}", sentinel.port);
    within(
        "Sentinel knows the replica",
        Duration::from_secs(10),
        || {
            redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("mymaster")
                .query::<Vec<Vec<String>>>(&mut admin(&s_addr))
                .is_ok_and(|r| r.len() == 1)
        },
    )
    .await;

    let cfg = RedisConfig {
        url: Secret::new("redis://ignored.invalid:1/0"),
        key_prefix: "failover".into(),
        sentinel: Some(devmetrics::config::SentinelConfig {
            master_name: "mymaster".into(),
            urls: vec![Secret::new(format!("redis://{s_addr}"))],
        }),
        ca_pem: None,
    };
    let store = RedisStore::open(&cfg).await.unwrap();
    assert_eq!(store.master().as_deref(), Some(a.as_str()));
    write_scope(&store, "before", 1.0).await.unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut admin(&a))
        .unwrap();
    assert_eq!(acked, 1, "the replica holds the write before the failover");

    // `NOGOODSLAVE` until Sentinel has had an INFO answer from the replica itself.
    within(
        "Sentinel starts a failover",
        Duration::from_secs(15),
        || {
            redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg("mymaster")
                .query::<()>(&mut admin(&s_addr))
                .is_ok()
        },
    )
    .await;
    let failed_over = std::time::Instant::now();
    let followed = within(
        "the store follows the new master",
        Duration::from_secs(10),
        || store.master().as_deref() == Some(b.as_str()),
    )
    .await;
    let mut refused = 0;
    while let Err(e) = write_scope(&store, "after", 2.0).await {
        assert!(e.is_transient(), "{e}");
        assert!(failed_over.elapsed() < Duration::from_secs(10), "{e}");
        refused += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "failover: the store named the new master after {followed:?}, wrote there {:?} after SENTINEL FAILOVER ({refused} writes refused on the way)",
        failed_over.elapsed()
    );
    assert!(info(&b, "replication").contains("role:master"));

    let other = RedisStore::open(&cfg).await.unwrap();
    assert_eq!(other.master().as_deref(), Some(b.as_str()));
    let out = render(&other);
    assert!(
        out.contains("endpoint=\"before\"") && out.contains("endpoint=\"after\""),
        "{out}"
    );
    assert_eq!(converged(&[store, other]).await, out);
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, in `dir`; the
/// CA's PEM.
fn write_certs(dir: &std::path::Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    ca.pem()
}

/// A Redis speaking only TLS, with a certificate a private CA signed: the store and the
/// queue on Redis streams trust it with that CA (`storage.redis.tls.ca_file`) and the
/// store writes and reads there; without the CA the handshake fails as `Unavailable`,
/// naming the certificate and not the password.
#[tokio::test]
async fn the_store_and_the_queue_speak_tls_to_a_redis_with_a_private_ca() {
    use devmetrics::queue::redis::{DEFAULT_VISIBILITY_TIMEOUT, RedisQueue, Settings};
    if !redis_server_installed() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let ca_pem = write_certs(certs.path());
    let server = spawn_tls(certs.path(), &["--requirepass", "s3cret"]);
    let port = server.port;
    let cfg = RedisConfig {
        url: Secret::new(format!("rediss://:s3cret@127.0.0.1:{port}/0")),
        key_prefix: "tls".into(),
        sentinel: None,
        ca_pem: Some(ca_pem),
    };
    let store = RedisStore::open(&cfg).await.unwrap();
    write_scope(&store, "tls", 3.0).await.unwrap();
    let other = RedisStore::open(&cfg).await.unwrap();
    assert!(
        render(&other).contains("endpoint=\"tls\""),
        "{}",
        render(&other)
    );
    let settings = |redis: RedisConfig| Settings {
        redis,
        url_key: "storage.redis.url".into(),
        policy: Default::default(),
        max_depth: 100,
        visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
    };
    RedisQueue::open(settings(cfg.clone())).await.unwrap();

    let without = RedisConfig {
        ca_pem: None,
        ..cfg
    };
    let e = match RedisStore::open(&without).await {
        Ok(_) => panic!("a certificate from an unknown CA is refused"),
        Err(e) => e,
    };
    eprintln!("without the CA: {e}");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = match RedisQueue::open(settings(without)).await {
        Ok(_) => panic!("the queue refuses the unknown CA too"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("UnknownIssuer") && !e.contains("s3cret"), "{e}");
}

/// Sentinel and master both speaking only TLS with certificates a private CA signed: the
/// store trusts both with `tls.ca_file`, finds the master and writes there.
#[tokio::test]
async fn the_store_finds_a_tls_master_through_a_tls_sentinel_with_a_private_ca() {
    if !redis_server_installed() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let ca_pem = write_certs(certs.path());
    let master = spawn_tls(certs.path(), &[]);
    let a = format!("127.0.0.1:{}", master.port);
    let sentinel = spawn_sentinel(&a, Some(certs.path()), "");
    let cfg = RedisConfig {
        url: Secret::new("rediss://ignored.invalid:1/0"),
        key_prefix: "tls-sentinel".into(),
        sentinel: Some(devmetrics::config::SentinelConfig {
            master_name: "mymaster".into(),
            urls: vec![Secret::new(format!("rediss://127.0.0.1:{}", sentinel.port))],
        }),
        ca_pem: Some(ca_pem),
    };
    let store = RedisStore::open(&cfg).await.unwrap();
    assert_eq!(store.master().as_deref(), Some(a.as_str()));
    write_scope(&store, "tls-sentinel", 4.0).await.unwrap();
    let other = RedisStore::open(&cfg).await.unwrap();
    assert!(
        render(&other).contains("endpoint=\"tls-sentinel\""),
        "{}",
        render(&other)
    );
    let without = RedisConfig {
        ca_pem: None,
        ..cfg
    };
    let e = match RedisStore::open(&without).await {
        Ok(_) => panic!("a Sentinel with a certificate from an unknown CA is refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("UnknownIssuer"), "{e}");
}
