//! The fault matrix: the real service (`devmetrics serve`, in its own process) against the
//! fake of every HTTP upstream, each fake behind a TCP proxy that can cut it. One fault at a
//! time is injected on one upstream while the others keep working. Throughout, every scrape
//! must show exactly the values the upstreams' unchanging data gives (no blank, no partial
//! answer shown as fresh); a fault the client cannot absorb must show its sources down in
//! `devmetrics_source_up` and in `/healthz` with the reason; once the fault ends every
//! source must be up again with the same values; and the process must never panic or exit.
//! Each upstream is its own test (its own fakes and service), so they run side by side.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use devmetrics::sim::chaos::Proxy;
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec, TEST_APP_KEY_PEM};
use devmetrics::sim::spacelift::{KEY_ID, KEY_SECRET, SpaceliftFake};
use devmetrics::sim::webhooks::{Generator, Sender};
use devmetrics::sim::{FakeServer, Faults, backstage};
use parking_lot::Mutex;

const WEBHOOK_SECRET: &str = "fault-matrix-webhook-secret";
const BACKSTAGE_TOKEN: &str = "fault-matrix-backstage-token";
const ORG: &str = "acme";
/// Every client deadline in the service's config; hangs and slow bodies outlast it.
const TIMEOUT_MS: u64 = 1_000;
/// How long a source may take to show a fault, or to recover from one.
const PATIENCE: Duration = Duration::from_secs(30);

/// The faults every HTTP upstream gets.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Two 503s in a row: retries (or the next cycle) absorb them.
    Burst,
    /// Every request answered 503.
    Errors,
    /// Every request hangs past the client's deadline.
    Timeouts,
    /// Every connection reset, new ones refused.
    Resets,
    /// Every body trickles in slower than the deadline.
    SlowBodies,
    /// Every body cut off short of its `Content-Length`.
    Truncated,
    /// Every body a well-framed half of a JSON document.
    Malformed,
    /// Every request answered 429 with `Retry-After: 1`.
    RateLimited,
}

const KINDS: [Kind; 8] = [
    Kind::Burst,
    Kind::Errors,
    Kind::Timeouts,
    Kind::Resets,
    Kind::SlowBodies,
    Kind::Truncated,
    Kind::Malformed,
    Kind::RateLimited,
];

/// What a fault must show while it lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The sources go down, with a reason on `/healthz`.
    Down,
    /// The sources stay up: the client absorbs it.
    Up,
    /// Either, depending on timing (a retry may or may not land inside the cycle).
    Either,
}

/// One upstream's fake as the matrix drives it.
pub(crate) struct Upstream {
    name: &'static str,
    pub(crate) faults: Arc<Faults>,
    proxy: Proxy,
    /// The sources it feeds (`devmetrics_source_up{source}`).
    sources: Vec<&'static str>,
}

impl Upstream {
    fn inject(&self, kind: Kind) {
        let f = &self.faults;
        match kind {
            Kind::Burst => f.fail_next.store(2, Ordering::Relaxed),
            Kind::Errors => f.error_5xx_per_mille.store(1000, Ordering::Relaxed),
            Kind::Timeouts => {
                f.hang_ms.store(3 * TIMEOUT_MS, Ordering::Relaxed);
                f.timeout_per_mille.store(1000, Ordering::Relaxed);
            }
            Kind::Resets => self.proxy.cut(),
            Kind::SlowBodies => f.slow_body_ms.store(4 * TIMEOUT_MS, Ordering::Relaxed),
            Kind::Truncated => f.truncate_per_mille.store(1000, Ordering::Relaxed),
            Kind::Malformed => f.malformed_per_mille.store(1000, Ordering::Relaxed),
            Kind::RateLimited => f.rate_limit_per_mille.store(1000, Ordering::Relaxed),
        }
    }

    fn heal(&self) {
        self.faults.clear();
        self.proxy.heal();
    }

    /// Faulty answers and refused connections so far.
    fn injected(&self) -> u64 {
        self.faults.injected.load(Ordering::Relaxed) + self.proxy.refused.load(Ordering::Relaxed)
    }
}

/// The service in its own process, its log lines collected.
pub(crate) struct Service {
    child: Child,
    pub(crate) base: String,
    pub(crate) logs: Arc<Mutex<String>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Series = BTreeMap<String, f64>;

const CONFIG_FILE: &str = "config.yaml";
const STATE_FILE: &str = "state.db";

impl Service {
    pub(crate) async fn start(dir: tempfile::TempDir, config: &str) -> Service {
        Service::start_logging(dir, config, "info").await
    }

    pub(crate) async fn start_logging(
        dir: tempfile::TempDir,
        config: &str,
        level: &str,
    ) -> Service {
        let cfg = dir.path().join(CONFIG_FILE);
        std::fs::write(&cfg, config).unwrap();
        let port = crate::compat::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(["serve", "--config.file"])
            .arg(&cfg)
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--storage.path")
            .arg(dir.path().join(STATE_FILE))
            .env("DEVMETRICS_LOG__LEVEL", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut l = logs.lock();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut s = Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
            logs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dir: dir,
        };
        let t = Instant::now();
        while s.get("/readyz").await.is_none_or(|(code, _)| code != 200) {
            s.alive();
            assert!(t.elapsed() < PATIENCE, "the service did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file it was started with.
    pub(crate) fn config_file(&self) -> std::path::PathBuf {
        self._dir.path().join(CONFIG_FILE)
    }

    /// Its SQLite file's write-ahead log.
    pub(crate) fn wal(&self) -> std::path::PathBuf {
        self._dir.path().join(STATE_FILE).with_extension("db-wal")
    }

    /// Fails the test if the process exited or anything in it panicked.
    pub(crate) fn alive(&mut self) {
        let logs = self.logs.lock();
        assert!(!logs.contains("panicked"), "the service panicked:\n{logs}");
        drop(logs);
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the service exited ({status}):\n{}", self.logs.lock());
        }
    }

    async fn scrape(&self) -> Series {
        let (code, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(code, 200, "{body}");
        crate::support::all_series(&body)
    }

    async fn healthz(&self) -> serde_json::Value {
        let (_, body) = self.get("/healthz").await.expect("/healthz answers");
        serde_json::from_str(&body).expect("/healthz is JSON")
    }
}

/// The series the upstreams' data gives: the sources' own families, without the ones that
/// describe the scrape itself (its time, its duration, its health).
fn data(all: &Series) -> Series {
    let mut out: Series = all
        .iter()
        .filter(|(k, _)| {
            let family = k.split('{').next().unwrap_or(k);
            let sourced = family.starts_with("gh_activity_")
                || family.starts_with("spacelift_")
                || family.starts_with("devmetrics_copilot_");
            sourced
                && !family.contains("timestamp")
                && !family.contains("scrape")
                && !family.ends_with("_up")
                && !family.contains("_collector_")
                // The last read's health and size, not data.
                && family != "devmetrics_copilot_report_state"
                && family != "devmetrics_copilot_records"
                // As in the replaced exporter: present only while Spacelift answers.
                && family != "spacelift_build_info"
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    // Spacelift's counts by state and by drift are per stack while the stacks group answers
    // and account-wide (the aggregates' form) while it fails, never both: their sums by
    // state are what must hold.
    for family in [
        "spacelift_current_stacks_count_by_state",
        "spacelift_current_resources_count_by_drift",
    ] {
        let series: Vec<String> = out
            .keys()
            .filter(|k| k.starts_with(&format!("{family}{{")))
            .cloned()
            .collect();
        for k in series {
            let v = out.remove(&k).unwrap_or_default();
            let state = k
                .split("state=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("");
            *out.entry(format!("{family}{{state=\"{state}\"}} (summed)"))
                .or_default() += v;
        }
    }
    out
}

fn value(all: &Series, series: &str) -> f64 {
    all.get(series).copied().unwrap_or(f64::NAN)
}

/// Polls of `source` so far, whatever their result.
fn polls(all: &Series, source: &str) -> f64 {
    let prefix = format!("devmetrics_source_scrapes_total{{source=\"{source}\",");
    all.iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

fn up(all: &Series, source: &str) -> bool {
    value(all, &format!("devmetrics_source_up{{source=\"{source}\"}}")) == 1.0
}

/// What a run of the matrix saw, for `docs/reliability.md`.
#[derive(Default)]
struct Tally {
    phases: u32,
    injected: u64,
    scrapes: u32,
}

/// The service against the upstreams, and the values they give when all is well.
struct Matrix {
    service: Service,
    baseline: Series,
    tally: Tally,
    sources: Vec<&'static str>,
}

impl Matrix {
    /// Waits until every source is up and the data is steady (two scrapes a cycle apart
    /// agree), and takes it as the truth every later scrape must show.
    async fn settle(mut service: Service, sources: Vec<&'static str>) -> Matrix {
        let t = Instant::now();
        let mut last = Series::new();
        loop {
            service.alive();
            let all = service.scrape().await;
            let now = data(&all);
            let ready = sources.iter().all(|s| up(&all, s) && polls(&all, s) >= 2.0);
            // Backstage feeds no family of its own: its catalog names webhooks' teams.
            let fed = !now.is_empty() || sources.iter().all(|s| s.starts_with("dora"));
            if ready && fed && now == last {
                return Matrix {
                    service,
                    baseline: now,
                    tally: Tally::default(),
                    sources,
                };
            }
            last = now;
            assert!(
                t.elapsed() < PATIENCE,
                "the sources never settled: {:?}",
                sources
                    .iter()
                    .map(|s| (s, up(&all, s), polls(&all, s)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }

    /// One scrape, checked against the baseline.
    async fn observe(&mut self, phase: &str) -> Series {
        self.service.alive();
        let all = self.service.scrape().await;
        self.tally.scrapes += 1;
        let now = data(&all);
        if now != self.baseline {
            let changed: Vec<_> = self
                .baseline
                .iter()
                .filter(|(k, v)| now.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: {v} -> {:?}", now.get(k)))
                .chain(
                    now.keys()
                        .filter(|k| !self.baseline.contains_key(*k))
                        .map(|k| format!("{k}: new")),
                )
                .take(20)
                .collect();
            panic!("{phase}: the exported values moved while the data did not:\n{changed:#?}");
        }
        all
    }

    /// Injects a fault on `targets`' upstream, checks what it shows while it lasts, ends it
    /// and checks every source recovers with the same values.
    async fn phase(
        &mut self,
        phase: &str,
        upstream: &Upstream,
        targets: &[&'static str],
        expect: Expect,
        inject: impl FnOnce(),
        heal: impl FnOnce(),
    ) {
        let injected_before = upstream.injected();
        let all = self.observe(phase).await;
        let start: Vec<f64> = targets.iter().map(|s| polls(&all, s)).collect();
        inject();
        let t = Instant::now();
        loop {
            let all = self.observe(phase).await;
            let downs = targets.iter().filter(|s| !up(&all, s)).count();
            let polled = targets
                .iter()
                .zip(&start)
                .all(|(s, before)| polls(&all, s) >= before + 2.0);
            let done = match expect {
                Expect::Down => downs == targets.len(),
                Expect::Up => {
                    assert_eq!(downs, 0, "{phase}: a source went down");
                    polled
                }
                Expect::Either => polled,
            };
            if done {
                break;
            }
            assert!(
                t.elapsed() < PATIENCE,
                "{phase}: expected {expect:?}; sources {:?}",
                targets
                    .iter()
                    .map(|s| (s, up(&all, s), polls(&all, s)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if expect == Expect::Down {
            let h = self.service.healthz().await;
            for s in targets {
                let source = &h["components"]["sources"][s];
                assert_eq!(source["up"], false, "{phase}: /healthz {h}");
                assert!(
                    source["last_error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{phase}: /healthz gives no reason: {h}"
                );
            }
            assert_ne!(h["status"], "ok", "{phase}: /healthz {h}");
        }
        heal();
        let t = Instant::now();
        let mut said = Duration::ZERO;
        loop {
            let all = self.observe(phase).await;
            if self.sources.iter().all(|s| up(&all, s)) {
                break;
            }
            if t.elapsed() > said + Duration::from_secs(5) {
                said = t.elapsed();
                let h = self.service.healthz().await;
                eprintln!("{phase}: still recovering: {}", h["components"]["sources"]);
            }
            assert!(
                t.elapsed() < PATIENCE,
                "{phase}: not recovered: {:?}",
                self.sources
                    .iter()
                    .map(|s| (s, up(&all, s)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let injected = upstream.injected() - injected_before;
        self.tally.phases += 1;
        self.tally.injected += injected;
        eprintln!(
            "{phase}: {injected} faulty answers, recovered {:.1}s after",
            t.elapsed().as_secs_f64()
        );
    }

    async fn generic(&mut self, up: &Upstream, expectations: &dyn Fn(Kind) -> Expect) {
        for kind in KINDS {
            let phase = format!("{} {kind:?}", up.name);
            self.phase(
                &phase,
                up,
                &up.sources,
                expectations(kind),
                || up.inject(kind),
                || up.heal(),
            )
            .await;
        }
    }

    fn report(&self, name: &str) {
        let logs = self.service.logs.lock();
        assert!(!logs.contains("panicked"), "{logs}");
        eprintln!(
            "fault matrix, {name}: {} phases, {} faulty answers, {} scrapes checked, no panic",
            self.tally.phases, self.tally.injected, self.tally.scrapes
        );
    }
}

/// The GitHub fake (REST, GraphQL, search, Copilot's report links and seats, the token
/// exchange) with one org, and Copilot's signed-URL file host.
pub(crate) struct GithubRig {
    pub(crate) sim: Arc<GithubSim>,
    pub(crate) github: Upstream,
    downloads: Upstream,
    _fakes: Vec<FakeServer>,
}

impl GithubRig {
    pub(crate) async fn start(seed: u64) -> GithubRig {
        let sim = GithubSim::new(
            seed,
            devmetrics::clock::Clock::system(),
            &[OrgSpec::small(ORG)],
        );
        // The run lasts minutes on the real clock: no event may leave the day's window.
        sim.settle(1800);
        // A budget that lets a 1 s interval stand even after cycles of retries.
        sim.set_rate_limit(1_000_000);
        let now = devmetrics::clock::now_secs();
        sim.copilot.data.lock().insert(
            ORG.into(),
            devmetrics::sim::github::copilot::CopilotData::generate(seed, now, 5, 35),
        );
        sim.copilot.files_per_report.store(2, Ordering::Relaxed);
        let fake = FakeServer::start("github", sim.router(), Faults::new(seed))
            .await
            .unwrap();
        let downloads = FakeServer::start(
            "copilot-downloads",
            sim.copilot.downloads.router(),
            Faults::new(seed + 1),
        )
        .await
        .unwrap();
        let gh_proxy = Proxy::start(fake.addr).await.unwrap();
        let dl_proxy = Proxy::start(downloads.addr).await.unwrap();
        *sim.copilot.download_base.lock() = format!("http://{}", dl_proxy.addr);
        GithubRig {
            github: Upstream {
                name: "github",
                faults: fake.faults.clone(),
                proxy: gh_proxy,
                sources: vec!["github/acme", "copilot/acme"],
            },
            downloads: Upstream {
                name: "copilot-downloads",
                faults: downloads.faults.clone(),
                proxy: dl_proxy,
                sources: vec!["copilot/acme"],
            },
            sim,
            _fakes: vec![fake, downloads],
        }
    }

    pub(crate) fn config(&self, dir: &std::path::Path) -> String {
        let key = dir.join("app.pem");
        std::fs::write(&key, TEST_APP_KEY_PEM).unwrap();
        format!(
            "github:\n  api_base_url: http://{addr}\n  request_timeout: {TIMEOUT_MS}ms\n  unhealthy_failure_threshold: 1000\n  \
             orgs:\n    - {{org: {ORG}, app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_path: {key}, scrape_interval: 1s}}\n  \
             rate_limit: {{min_remaining_threshold: 10, min_reset_buffer: 0s, secondary_limit_backoff: 1s}}\n  \
             retry: {{max_attempts: 3, initial_backoff: 20ms, max_backoff: 100ms}}\n  \
             loc: {{stats_retry_delay: 20ms, stats_retries: 3}}\n\
             copilot:\n  enabled: true\n  scrape_interval: 1s\n  request_timeout: {TIMEOUT_MS}ms\n  download_timeout: {TIMEOUT_MS}ms\n  user_label_mode: login\n  backfill_days: 0\n",
            addr = self.github.proxy.addr,
            key = key.display(),
        )
    }
}

fn everything_down(kind: Kind) -> Expect {
    match kind {
        Kind::Burst | Kind::RateLimited => Expect::Either,
        _ => Expect::Down,
    }
}

#[tokio::test]
async fn github_and_copilot_faults_keep_values_and_recover() {
    let rig = GithubRig::start(31).await;
    let dir = tempfile::tempdir().unwrap();
    let config = rig.config(dir.path());
    let service = Service::start(dir, &config).await;
    let mut m = Matrix::settle(service, vec!["github/acme", "copilot/acme"]).await;

    m.generic(&rig.github, &everything_down).await;
    m.generic(&rig.downloads, &everything_down).await;

    // GitHub's own faults. Each is absorbed: the values stay, and so do the sources.
    let sim = rig.sim.clone();
    let both = ["github/acme", "copilot/acme"];
    let issued = sim.tokens_issued.load(Ordering::Relaxed);
    m.phase(
        "github expired tokens",
        &rig.github,
        &both,
        Expect::Up,
        || sim.revoke_tokens(),
        || {},
    )
    .await;
    assert!(
        sim.tokens_issued.load(Ordering::Relaxed) > issued,
        "a refused token is exchanged for a new one"
    );
    for skew in [-600, 900] {
        let issued = sim.tokens_issued.load(Ordering::Relaxed);
        m.phase(
            &format!("github clock {skew:+}s from ours"),
            &rig.github,
            &both,
            Expect::Up,
            || {
                sim.knobs.clock_skew_secs.store(skew, Ordering::Relaxed);
                sim.revoke_tokens();
            },
            || {},
        )
        .await;
        assert!(
            sim.tokens_issued.load(Ordering::Relaxed) > issued,
            "the token exchange succeeds against a skewed clock"
        );
    }
    sim.knobs.clock_skew_secs.store(0, Ordering::Relaxed);
    m.phase(
        "github secondary limit",
        &rig.github,
        &both,
        Expect::Either,
        || sim.knobs.secondary_next.store(3, Ordering::Relaxed),
        || sim.knobs.secondary_next.store(0, Ordering::Relaxed),
    )
    .await;
    // GraphQL and search fail alone: REST answers instead, in the same cycle.
    for path in ["/graphql", "/search/"] {
        m.phase(
            &format!("github {path} failing"),
            &rig.github,
            &["github/acme"],
            Expect::Up,
            || sim.fail_path_with(path, 1_000_000, 502),
            || sim.fail_path_with(path, 0, 502),
        )
        .await;
    }
    // Copilot's report links fail alone: Copilot is down, activity is not.
    m.phase(
        "github copilot reports failing",
        &rig.github,
        &["copilot/acme"],
        Expect::Down,
        || sim.fail_path_with("/copilot/", 1_000_000, 503),
        || sim.fail_path_with("/copilot/", 0, 503),
    )
    .await;
    m.report("GitHub and Copilot");
}

#[tokio::test]
async fn spacelift_faults_keep_values_and_recover() {
    let fake = SpaceliftFake::start(32, 12).await.unwrap();
    fake.sim.gate_stacks(false);
    let proxy = Proxy::start(fake.server.addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("spacelift-secret");
    std::fs::write(&secret, KEY_SECRET).unwrap();
    let config = format!(
        "spacelift:\n  api_endpoint: http://{}\n  api_key_id: {KEY_ID}\n  api_key_secret_file: {}\n  scrape_timeout: {}ms\n  interval: 1s\n  stacks: {{page_size: 5}}\n",
        proxy.addr,
        secret.display(),
        2 * TIMEOUT_MS
    );
    let service = Service::start(dir, &config).await;
    let mut m = Matrix::settle(service, vec!["spacelift"]).await;
    let up = Upstream {
        name: "spacelift",
        faults: fake.server.faults.clone(),
        proxy,
        sources: vec!["spacelift"],
    };
    m.generic(&up, &everything_down).await;
    let sim = fake.sim.clone();
    m.phase(
        "spacelift expired tokens",
        &up,
        &["spacelift"],
        Expect::Either,
        || sim.revoke_tokens(),
        || {},
    )
    .await;
    // The stacks group failing alone: the counts by state and drift take their
    // account-wide form, with the same sums.
    m.phase(
        "spacelift stacks failing alone",
        &up,
        &["spacelift"],
        Expect::Either,
        || sim.fail_field("searchStacks", "internal error"),
        || sim.clear_knobs(),
    )
    .await;
    m.report("Spacelift");
}

#[tokio::test]
async fn backstage_faults_keep_the_last_catalog_and_recover() {
    let fake = backstage::start("", Some(BACKSTAGE_TOKEN), &[("acme/api", "group:payments")])
        .await
        .unwrap();
    let proxy = Proxy::start(fake.server.addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("backstage-token");
    std::fs::write(&token, BACKSTAGE_TOKEN).unwrap();
    let config = format!(
        "dora:\n  teams: [{{name: Platform, github_repositories: [acme/infra]}}]\n  four_keys_interval: 1s\n  \
         catalog: {{mode: backstage, endpoint: 'http://{}', token_file: {}, refresh_interval: 1s, request_timeout: {TIMEOUT_MS}ms}}\n",
        proxy.addr,
        token.display()
    );
    let service = Service::start(dir, &config).await;
    let mut m = Matrix::settle(service, vec!["dora", "dora/backstage"]).await;
    let up = Upstream {
        name: "backstage",
        faults: fake.server.faults.clone(),
        proxy,
        sources: vec!["dora/backstage"],
    };
    m.generic(&up, &|kind| match kind {
        // No retry within a refresh: a burst shows until the next one, a second later.
        Kind::Burst | Kind::RateLimited => Expect::Either,
        _ => Expect::Down,
    })
    .await;
    m.report("Backstage");
}

/// A workflow run of `jobs` jobs, as the receiver gets it: each job queued, started and
/// completed, then the run completed. Returns the items each sink must get: OTLP a span,
/// App Insights a telemetry item, per run, job and step.
async fn send_run(sender: &Sender, g: &mut Generator, n: &mut u64, jobs: usize) -> usize {
    let plan = g.run_plan(1_700_000_000.0 + *n as f64 * 1000.0, jobs);
    for j in &plan {
        for action in ["queued", "in_progress", "completed"] {
            *n += 1;
            let body = g.job_payload(j, action, false);
            let code = sender
                .send("workflow_job", &format!("fm-{n}"), body)
                .await
                .unwrap();
            assert_eq!(code, 202);
        }
    }
    *n += 1;
    let body = g.run_payload(&plan, "completed", false);
    let code = sender
        .send("workflow_run", &format!("fm-{n}"), body)
        .await
        .unwrap();
    assert_eq!(code, 202);
    let steps: usize = plan.iter().map(|j| j.steps.len()).sum();
    1 + plan.len() + steps
}

#[tokio::test]
async fn sink_faults_deliver_everything_exactly_once_afterwards() {
    use devmetrics::sim::sinks::{appinsights_receiver, otlp_receiver};
    let (otlp, spans) = otlp_receiver(33).await.unwrap();
    let (ai, events) = appinsights_receiver(34).await.unwrap();
    let otlp_proxy = Proxy::start(otlp.addr).await.unwrap();
    let ai_proxy = Proxy::start(ai.addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conn = dir.path().join("appinsights");
    std::fs::write(
        &conn,
        format!(
            "InstrumentationKey=fault-matrix-ikey;IngestionEndpoint=http://{}/",
            ai_proxy.addr
        ),
    )
    .unwrap();
    let port = crate::compat::free_port();
    let config = format!(
        "queue: {{initial_backoff: 50ms, max_backoff: 500ms}}\n\
         webhooks:\n  listen_address: 127.0.0.1:{port}\n  github:\n    secrets: [{{value: {WEBHOOK_SECRET}}}]\n  sinks:\n    otlp: {{endpoint: 'http://{}', service_name: ci}}\n    appinsights: {{connection_string_file: {}}}\n",
        otlp_proxy.addr,
        conn.display()
    );
    let mut service = Service::start(dir, &config).await;
    let sender = Sender::new(
        format!("http://127.0.0.1:{port}/webhooks/github"),
        WEBHOOK_SECRET,
    );
    let mut g = Generator::new(35);
    let mut n = 0u64;
    // Each sink must get every item once: OTLP as spans, App Insights as events.
    let mut want = send_run(&sender, &mut g, &mut n, 2).await;
    let sinks = [
        Upstream {
            name: "otlp",
            faults: otlp.faults.clone(),
            proxy: otlp_proxy,
            sources: Vec::new(),
        },
        Upstream {
            name: "appinsights",
            faults: ai.faults.clone(),
            proxy: ai_proxy,
            sources: Vec::new(),
        },
    ];
    let (mut phases, mut injected) = (0, 0);
    let delivered = || (spans.spans.lock().len(), events.events.lock().len());
    // Faults a sink answers with: each lasts while a run is sent, and then everything sent
    // so far must arrive exactly once. (An answer cut off after the sink took the items is
    // a failure to the sender, which sends them again: delivery is at least once, and only
    // these outages can promise exactly once.)
    for kind in [
        Kind::Burst,
        Kind::Errors,
        Kind::Timeouts,
        Kind::Resets,
        Kind::SlowBodies,
        Kind::RateLimited,
    ] {
        for up in &sinks {
            let before = up.injected();
            up.inject(kind);
            want += send_run(&sender, &mut g, &mut n, 1 + phases % 3).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            service.alive();
            up.heal();
            let t = Instant::now();
            while delivered() != (want, want) {
                let got = delivered();
                assert!(
                    got.0 <= want && got.1 <= want,
                    "{} {kind:?}: delivered twice: {got:?} of {want} each",
                    up.name
                );
                assert!(
                    t.elapsed() < PATIENCE,
                    "{} {kind:?}: {got:?} of {want} each delivered",
                    up.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            phases += 1;
            injected += up.injected() - before;
            eprintln!("{} {kind:?}: all delivered once", up.name);
        }
    }
    // The retries showed in the queue's metrics.
    let all = service.scrape().await;
    for topic in ["sink/otlp", "sink/appinsights"] {
        assert!(
            value(
                &all,
                &format!("devmetrics_queue_retried_total{{topic=\"{topic}\"}}")
            ) > 0.0,
            "{topic} retried nothing"
        );
        assert_eq!(
            value(
                &all,
                &format!("devmetrics_queue_dead_letters{{topic=\"{topic}\"}}")
            ),
            0.0
        );
    }
    service.alive();
    eprintln!(
        "fault matrix, sinks: {phases} phases, {injected} faulty answers, {want} spans and {want} events each delivered once"
    );
}
