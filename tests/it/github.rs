//! Scenario tests: the real GitHub client, activity pollers and backfill consumer against the
//! simulated GitHub, asserting every exported `gh_activity_*` value equals its ground truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use devmetrics::db::Db;
use devmetrics::metrics::family;
use devmetrics::queue::{RetryPolicy, SharedQueue, sqlite::SqliteQueue};
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::{FakeServer, Faults};
use devmetrics::sources::github::config::RawGithub;
use devmetrics::sources::github::{Clock, Github, GithubConfig};
use devmetrics::sources::{self, Poller};
use devmetrics::store::{SharedStore, sqlite::SqliteStore};
use devmetrics::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

const ORG: &str = "acme";
const NOW: i64 = 1_771_502_400; // 2026-02-19T12:00:00Z

type Series = BTreeMap<(String, String, String), f64>;

struct Env {
    fake: FakeServer,
    sim: Arc<GithubSim>,
    now: Arc<AtomicI64>,
    clock: Clock,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(spec: OrgSpec) -> Env {
        let now = Arc::new(AtomicI64::new(NOW));
        let c = now.clone();
        let clock: Clock = Arc::new(move || c.load(Ordering::SeqCst));
        let sim = GithubSim::new(7, clock.clone(), &[spec]);
        let fake = FakeServer::start("github", sim.router(), Faults::new(7))
            .await
            .expect("fake binds");
        Env {
            fake,
            sim,
            now,
            clock,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, extra: &str) -> GithubConfig {
        let key =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
        let yaml = format!(
            "api_base_url: {}\nrequest_timeout: 5s\nunhealthy_failure_threshold: 2\nunhealthy_cooldown: 1m\n\
             orgs:\n  - org: {ORG}\n    app_id: {APP_ID}\n    installation_id: {INSTALLATION_ID}\n    private_key_path: {}\n    scrape_interval: 1m\n\
             rate_limit: {{min_remaining_threshold: 10, min_reset_buffer: 0s, secondary_limit_backoff: 0s}}\n\
             retry: {{max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}}\n\
             loc: {{stats_retry_delay: 10ms, stats_retries: 3}}\n{extra}",
            self.fake.base_url(),
            key.display()
        );
        let raw: RawGithub = serde_yaml::from_str(&yaml).unwrap();
        raw.resolve(None).unwrap().unwrap()
    }

    fn open(&self) -> (SharedStore, SharedQueue) {
        let db = Db::open(&self.dir.path().join("dm.db")).unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(db.clone()).unwrap());
        let queue: SharedQueue = Arc::new(
            SqliteQueue::open(
                db,
                RetryPolicy {
                    max_attempts: 5,
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(100),
                },
            )
            .unwrap(),
        );
        (store, queue)
    }

    fn build(
        &self,
        cfg: &GithubConfig,
        store: &SharedStore,
        queue: &SharedQueue,
        stop: &CancellationToken,
    ) -> Github {
        Github::build(
            cfg,
            store.clone(),
            queue.clone(),
            Arc::new(Telemetry::default()),
            stop.clone(),
            self.clock.clone(),
        )
        .unwrap()
    }

    fn advance(&self, secs: i64) -> i64 {
        self.now.fetch_add(secs, Ordering::SeqCst) + secs
    }

    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

fn exported(store: &SharedStore) -> Series {
    let mut out = Series::new();
    for scope in store.snapshot().scopes.iter() {
        for (fid, series) in &scope.families {
            let name = family(*fid).name;
            if !name.starts_with("gh_activity_") {
                continue;
            }
            for (labels, v) in series {
                assert_eq!(labels.get("org").as_deref(), Some(ORG));
                out.insert(
                    (
                        name.to_string(),
                        labels.get("repo").unwrap(),
                        labels.get("user").unwrap(),
                    ),
                    v.as_f64().unwrap(),
                );
            }
        }
    }
    out
}

fn assert_same(got: &Series, want: &Series) {
    if got != want {
        for (k, v) in want {
            if got.get(k) != Some(v) {
                eprintln!("missing or wrong: {k:?} want {v} got {:?}", got.get(k));
            }
        }
        for (k, v) in got {
            if !want.contains_key(k) {
                eprintln!("unexpected: {k:?} = {v}");
            }
        }
        panic!("exported gh_activity_* differ from the ground truth");
    }
}

async fn poll(p: &dyn Poller, store: &SharedStore) {
    sources::poll_once(p, &**store, &Telemetry::default()).await;
}

#[tokio::test]
async fn activity_equals_ground_truth_then_costs_nothing_when_unchanged() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();

    poll(&*p, &store).await;
    let truth = env.sim.truth(ORG, env.now());
    assert!(truth.keys().any(|k| k.0 == "gh_activity_commits_24h"));
    assert!(truth.keys().any(|k| k.0 == "gh_activity_loc_added_weekly"));
    assert!(
        truth
            .keys()
            .any(|k| k.0 == "gh_activity_reviews_submitted_24h")
    );
    assert_same(&exported(&store), &truth);
    eprintln!(
        "cold: {} series, {} counted requests, by route {:?}",
        truth.len(),
        env.sim.counted(),
        env.fake.requests.all()
    );
    assert!(
        env.sim.tokens_issued.load(Ordering::Relaxed) >= 1,
        "App token exchanged"
    );
    let got = exported(&store);
    assert!(
        !got.keys().any(|k| k.2.ends_with("[bot]")),
        "bots excluded by default"
    );
    assert!(!got.keys().any(|k| k.1 == "old-archived" || k.1 == "a-fork"));

    // A minute later, nothing changed: same truth for the moved window, and (almost) every
    // request is a free 304.
    let before = env.sim.counted();
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let spent = env.sim.counted() - before;
    eprintln!("steady: {spent} counted requests");
    assert!(spent < 20, "steady state spent {spent} requests");

    // New activity shows up in the next cycle.
    let t = env.advance(60);
    env.sim.add_commit(ORG, "repo-000", "user001", t - 5, 10, 2);
    env.sim.add_comment(ORG, "repo-001", "user002", t - 5);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

#[tokio::test]
async fn quiet_users_disappear() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let first = exported(&store);
    assert!(first.keys().any(|k| k.2 == "user000" || k.2 == "user001"));

    // 25 hours on, only one user acted: everyone else's 24h series are gone.
    let t = env.advance(25 * 3600);
    env.sim
        .add_commit(ORG, "repo-002", "user005", t - 100, 1, 1);
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, t));
    for k in got.keys().filter(|k| k.0.ends_with("_24h")) {
        assert_eq!(k.2, "user005", "{k:?} should have disappeared");
    }
}

#[tokio::test]
async fn failures_keep_values_and_backfill_restores_the_exact_window() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let t1 = env.now();
    assert_same(&exported(&store), &env.sim.truth(ORG, t1));

    // Cycle 2: a new comment, but the comments endpoint keeps failing (5xx past the
    // retries) and a secondary limit is thrown in on the way.
    let t2 = env.advance(120);
    env.sim.add_comment(ORG, "repo-001", "user003", t2 - 30);
    env.sim.fail_path("/issues/comments", 100);
    env.sim.knobs.secondary_next.store(1, Ordering::Relaxed);
    poll(&*p, &store).await;
    let got = exported(&store);
    let stale = env.sim.truth(ORG, t1);
    let only_repo1 = |s: &Series| -> Series {
        s.iter()
            .filter(|k| k.0.1 == "repo-001")
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(
        only_repo1(&got),
        only_repo1(&stale),
        "failed repo keeps its last values"
    );
    assert!(
        env.sim.knobs.secondary_next.load(Ordering::Relaxed) == 0,
        "secondary limit was hit and waited out"
    );

    // GitHub recovers; the backfill job re-scrapes exactly [t2 − 24h, t2].
    env.sim.fail_path("/issues/comments", 0);
    for c in gh.consumers(stop.clone()) {
        tokio::spawn(c);
    }
    let want = env.sim.truth(ORG, t2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while only_repo1(&exported(&store)) != only_repo1(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill did not restore the window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same(&exported(&store), &want);
    stop.cancel();
}

#[tokio::test]
async fn restart_keeps_values_and_etags() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    {
        let (store, queue) = env.open();
        let stop = CancellationToken::new();
        let gh = env.build(&cfg, &store, &queue, &stop);
        poll(&*gh.pollers[0], &store).await;
        stop.cancel();
    }
    let (store, queue) = env.open();
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let before = env.sim.counted();
    env.advance(30);
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let spent = env.sim.counted() - before;
    assert!(
        spent < 20,
        "after a restart the cached ETags still answer 304: spent {spent}"
    );
}

#[tokio::test]
async fn label_controls_apply() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config(
        "activity: {user_label_mode: hashed, user_label_secret: s3cret, user_exclude: [user000], include_bots: true}\n",
    );
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    let got = exported(&store);
    assert!(!got.is_empty());
    for k in got.keys() {
        assert_eq!(k.2.len(), 16, "hashed user label {k:?}");
        assert!(k.2.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

/// github-stats-exporter's own config files load unchanged, honour their keys, and warn once
/// per replaced mechanism.
#[test]
fn replaced_tool_configs_load_as_they_are() {
    let Some(dir) = devmetrics::sim::research_dir("seed0/config") else {
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7);
    for f in files {
        let cfg = devmetrics::config::load(Some(&f), &Default::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let gh = cfg.github.as_ref().expect("github section");
        assert!(!gh.orgs.is_empty());
        assert_eq!(
            cfg.web.listen_addresses[0].port(),
            8080,
            "server.listen_addr honoured"
        );
        assert!(
            gh.compat_warnings.iter().any(|w| w.contains("amqp")),
            "{}: {:?}",
            f.display(),
            gh.compat_warnings
        );
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("min_remaining_threshold: 200") {
            assert_eq!(gh.rate_limit.reserve, 200);
        }
        if text.contains("unhealthy_failure_threshold: 6") {
            assert_eq!(gh.unhealthy_failure_threshold, 6);
        }
        if f.ends_with("kustomize-prod-config.yaml") {
            assert_eq!(gh.orgs.len(), 2);
            assert_eq!(gh.orgs[1].org, "org-b");
            assert_eq!(gh.orgs[0].concurrency, 8);
            assert_eq!(gh.activity.series_budget_per_org, 20_000_000);
            assert_eq!(gh.retry.max_attempts, 7);
            assert_eq!(gh.backfill.consumer_count, 6);
        }
        if f.ends_with("test-defaults-partial.yaml") {
            assert_eq!(gh.activity.series_budget_per_org, 100);
            assert_eq!(cfg.log_level, "info");
        }
        if f.ends_with("kustomize-nonprod-config.yaml") {
            assert_eq!(cfg.log_level, "debug");
            assert_eq!(gh.orgs[0].scrape_interval, Duration::from_secs(600));
        }
    }
}

/// The commented github section of `config example` is valid once uncommented.
#[test]
fn example_github_section_loads() {
    let text: String = devmetrics::config::EXAMPLE
        .lines()
        .skip_while(|l| !l.starts_with("#github:"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.starts_with("github:"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gh.yaml");
    std::fs::write(&path, text).unwrap();
    let cfg = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("example github section loads");
    let gh = cfg.github.unwrap();
    assert_eq!(gh.orgs[0].org, "my-org");
    assert!(gh.compat_warnings.is_empty());
}
