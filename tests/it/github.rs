//! Scenario tests: the real GitHub client, activity pollers and backfill consumer against the
//! simulated GitHub, asserting every exported `gh_activity_*` value equals its ground truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use devmetrics::metrics::family;
use devmetrics::queue::{RetryPolicy, SharedQueue};
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::{FakeServer, Faults};
use devmetrics::sources::github::config::RawGithub;
use devmetrics::sources::github::{Clock, Github, GithubConfig};
use devmetrics::sources::{self, Poller};
use devmetrics::store::SharedStore;
use devmetrics::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

use crate::support::Backend;

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
        let clock = Clock::from_fn(move || c.load(Ordering::SeqCst));
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
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            horizon: Duration::from_secs(3600),
        };
        let b = Backend::from_env().open(self.dir.path(), &policy);
        (b.store, b.queue)
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
    // The REST path for PRs and reviews (GraphQL off).
    let cfg = env.config("graphql: false\n");
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
    assert_eq!(env.fake.requests.count("POST /graphql"), 0);
    assert!(
        env.fake
            .requests
            .count("GET /repos/{owner}/{repo}/pulls/{number}/reviews")
            > 0
    );
}

#[tokio::test]
async fn failures_keep_values_and_backfill_restores_the_exact_window() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    let t1 = env.now();
    assert_same(&exported(&store), &env.sim.truth(ORG, t1));
    let last_success = |t: &Telemetry| t.sources()["github/acme"].last_success_timestamp;
    let first_success = last_success(&telemetry).expect("first cycle succeeded");

    // Cycle 2: a new comment, but the comments endpoint keeps failing (5xx past the
    // retries) and a secondary limit is thrown in on the way.
    let t2 = env.advance(120);
    env.sim.add_comment(ORG, "repo-001", "user003", t2 - 30);
    env.sim.fail_path("/issues/comments", 100);
    env.sim.knobs.secondary_next.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert!(!telemetry.sources()["github/acme"].up);
    assert_eq!(
        last_success(&telemetry),
        Some(first_success),
        "the values' age grows"
    );
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
    // ETags belong to the token that got them: the persisted token is used again.
    assert_eq!(env.sim.tokens_issued.load(Ordering::Relaxed), 1);
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

async fn gauge(gh: &Github, name: &str) -> f64 {
    use devmetrics::telemetry::Telemetry;
    let telemetry = Telemetry::default();
    telemetry.add_collector(Arc::new(devmetrics::sources::github::Collector(
        gh.pollers.clone(),
    )));
    let out = telemetry.scope().await;
    out.families
        .iter()
        .filter(|(f, _)| family(**f).name == name)
        .flat_map(|(_, m)| m.iter())
        .find(|(l, _)| l.get("org").as_deref() == Some(ORG))
        .and_then(|(_, v)| v.as_f64())
        .unwrap_or_else(|| panic!("{name} not collected"))
}

#[tokio::test]
async fn an_interval_that_cannot_fit_the_budget_is_stretched() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.set_rate_limit(300);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    for _ in 0..2 {
        let t = env.advance(60);
        for r in 0..5 {
            env.sim
                .add_commit(ORG, &format!("repo-{r:03}"), "user001", t - 1, 1, 1);
        }
        poll(&*p, &store).await;
    }
    assert_eq!(
        gauge(&gh, "devmetrics_github_budget_overcommitted").await,
        1.0
    );
    let stretched = gauge(&gh, "devmetrics_github_effective_interval_seconds").await;
    assert!(stretched > 60.0, "{stretched}");
    // The next tick comes before the stretched interval: skipped, nothing spent.
    let before = env.sim.counted();
    env.advance(60);
    poll(&*p, &store).await;
    assert_eq!(env.sim.counted(), before);
}

#[tokio::test]
async fn repeated_failures_cool_the_org_down_and_skipped_cycles_are_backfilled() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    env.sim.fail_path("/orgs/acme/repos", 1000);
    poll(&*p, &store).await;
    env.advance(60);
    poll(&*p, &store).await;
    assert_eq!(gauge(&gh, "devmetrics_github_org_cooldown").await, 1.0);
    let before = env.fake.requests.total();
    let skipped = env.advance(30);
    poll(&*p, &store).await;
    assert_eq!(
        env.fake.requests.total(),
        before,
        "no request during the cooldown"
    );

    env.sim.fail_path("/orgs/acme/repos", 0);
    for c in gh.consumers(stop.clone()) {
        tokio::spawn(c);
    }
    // The newest skipped window is what must end up shown (older jobs are superseded).
    let want = env.sim.truth(ORG, skipped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while exported(&store) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill did not fill the skipped cycle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

#[tokio::test]
async fn rate_limit_waits_end_on_shutdown() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.set_rate_limit(14);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    let task = tokio::spawn(async move { p.poll().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !task.is_finished(),
        "the poll waits for the rate-limit reset"
    );
    stop.cancel();
    let results = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "cancelled"))
    );
}

/// docs/performance.md's request economy on the standard org (500 repos, 50 pushed in the
/// last day, 200 users, 200–2,000 PRs each): counted requests, not time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_org_request_economy() {
    let env = Env::start(OrgSpec::standard(ORG)).await;
    let legacy = env.sim.legacy_cycle_cost(ORG, env.now());
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();

    poll(&*p, &store).await;
    let cold = env.sim.counted();
    let cold_all = env.fake.requests.total();
    let cold_graphql = env.sim.graphql_queries();
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    env.advance(300);
    let before = (env.sim.counted(), env.fake.requests.total());
    poll(&*p, &store).await;
    let steady = env.sim.counted() - before.0;
    let steady_all = env.fake.requests.total() - before.1;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    eprintln!(
        "standard org: legacy cost model {legacy} requests/cycle; devmetrics cold {cold} counted REST + {cold_graphql} GraphQL ({cold_all} sent incl. token exchange and 304s); steady {steady} counted ({steady_all} sent)"
    );
    assert_eq!(
        env.sim.graphql_queries(),
        cold_graphql,
        "steady state sends no GraphQL"
    );
    eprintln!("cold by route: {:?}", env.fake.requests.all());

    // A new installation token (hourly): every ETag of the old one is stale once.
    env.sim.revoke_tokens();
    env.advance(300);
    let before = (env.sim.counted(), env.fake.requests.total());
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    eprintln!(
        "standard org: first cycle on a new token {} counted ({} sent)",
        env.sim.counted() - before.0,
        env.fake.requests.total() - before.1
    );
    assert!(
        (cold + cold_graphql) * 4 <= legacy,
        "cold {cold} + {cold_graphql} vs legacy {legacy}"
    );

    // The same cold start over REST only.
    let rest = Env::start(OrgSpec::standard(ORG)).await;
    let cfg = rest.config("graphql: false\n");
    let (store, queue) = rest.open();
    let gh = rest.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &rest.sim.truth(ORG, rest.now()));
    let cold_rest = rest.sim.counted();
    eprintln!(
        "standard org, REST only: cold {cold_rest} counted ({} sent)",
        rest.fake.requests.total()
    );
    assert!(cold_rest * 4 <= legacy, "REST-only cold {cold_rest}");
    assert!(steady < 20, "steady {steady}");
}

/// A repo whose stats carry no line counts (GitHub's 10k-commit behaviour) gets its weekly LOC
/// from commit details, within the hourly budget, and equal to the truth.
#[tokio::test]
async fn loc_fallback_for_repos_whose_stats_have_no_line_counts() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    // Commits in last week for two repos, so LOC exists there.
    let last_week = devmetrics::sources::github::wire::week_start(NOW) - 7 * 86_400 + 3600;
    env.sim
        .add_commit(ORG, "repo-000", "user004", last_week, 70, 7);
    env.sim
        .add_commit(ORG, "repo-000", "user003", last_week + 60, 5, 50);
    env.sim
        .add_commit(ORG, "repo-001", "user004", last_week, 11, 1);
    env.sim
        .knobs
        .zero_stats_repos
        .lock()
        .insert("repo-000".into());
    let cfg = env.config("activity: {series_budget_per_org: 1000000}\n");
    let mut cfg = cfg;
    cfg.loc.fallback_enabled = true;
    cfg.loc.large_repo_zero_detection_windows = 1;
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert!(
        env.fake
            .requests
            .count("GET /repos/{owner}/{repo}/commits/{sha}")
            >= 2
    );
    let want = env.sim.truth(ORG, env.now());
    assert_eq!(
        want.get(&(
            "gh_activity_loc_added_weekly".into(),
            "repo-000".into(),
            "user004".into()
        )),
        exported(&store).get(&(
            "gh_activity_loc_added_weekly".into(),
            "repo-000".into(),
            "user004".into()
        ))
    );
    assert_same(&exported(&store), &want);

    // A budget too small for the week: no partial LOC is shown, the deferral is counted.
    let env2 = Env::start(OrgSpec::small(ORG)).await;
    env2.sim
        .add_commit(ORG, "repo-000", "user004", last_week, 70, 7);
    env2.sim
        .knobs
        .zero_stats_repos
        .lock()
        .insert("repo-000".into());
    let mut cfg2 = env2.config("");
    cfg2.loc.fallback_enabled = true;
    cfg2.loc.fallback_max_commit_detail_calls_per_org_per_hour = 1;
    let (store2, queue2) = env2.open();
    let gh2 = env2.build(&cfg2, &store2, &queue2, &stop);
    poll(&*gh2.pollers[0], &store2).await;
    assert!(
        !exported(&store2)
            .keys()
            .any(|k| k.1 == "repo-000" && k.0.starts_with("gh_activity_loc_"))
    );
    assert!(gauge(&gh2, "devmetrics_github_loc_fallback_deferred_total").await >= 1.0);
}

#[tokio::test]
async fn token_auth_and_series_budget() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    *env.sim.pat.lock() = Some("ghp_simulated".into());
    let mut cfg = env.config("activity: {series_budget_per_org: 5}\n");
    cfg.orgs[0].auth = devmetrics::sources::github::config::Auth::Token(
        devmetrics::config::SecretSource::Value(devmetrics::config::Secret::new("ghp_simulated")),
    );
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert_eq!(env.sim.tokens_issued.load(Ordering::Relaxed), 0);
    let n = exported(&store).len();
    assert!(n > 0 && n <= 5, "{n} series");
    assert_eq!(
        gauge(&gh, "devmetrics_github_series_budget_exceeded").await,
        1.0
    );
}

#[tokio::test]
async fn a_jwt_the_app_key_did_not_sign_is_refused() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    if let devmetrics::sources::github::config::Auth::App { app_id, .. } = &mut cfg.orgs[0].auth {
        *app_id = APP_ID + 1;
    }
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let results = gh.pollers[0].poll().await;
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "auth")),
        "the fake verified the JWT's issuer and signature"
    );
    assert_eq!(env.sim.tokens_issued.load(Ordering::Relaxed), 0);
    assert_eq!(env.sim.counted(), 0);
}

/// Every request, the token exchange included, goes through `proxy_url`: the API host here
/// does not resolve, and the fake answers as the proxy (absolute-form requests).
#[tokio::test]
async fn requests_go_through_the_configured_proxy() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    cfg.orgs[0].api_base_url = "http://api.github.invalid".into();
    cfg.proxy_url = Some(env.fake.base_url());
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(
        env.fake
            .requests
            .count("POST /app/installations/{id}/access_tokens"),
        1
    );
}

#[test]
fn a_custom_ca_bundle_is_loaded() {
    let cert = rcgen::generate_simple_self_signed(vec!["ghe.example.com".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let raw: RawGithub = serde_yaml::from_str(&format!(
        "api_base_url: https://ghe.example.com/api/v3\nca_file: {}\norgs: [{{org: a, token: t}}]\n",
        ca.display()
    ))
    .unwrap();
    let cfg = raw.resolve(None).unwrap().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let store = Backend::from_env()
        .open(dir.path(), &RetryPolicy::default())
        .store;
    let budgets = devmetrics::sources::github::Budgets::default();
    devmetrics::sources::github::Client::new(
        &cfg,
        &cfg.orgs[0],
        store.clone(),
        Arc::new(Telemetry::default()),
        &budgets,
        CancellationToken::new(),
    )
    .expect("the CA bundle is accepted");
    std::fs::write(&ca, "not a certificate").unwrap();
    assert!(
        devmetrics::sources::github::Client::new(
            &cfg,
            &cfg.orgs[0],
            store,
            Arc::new(Telemetry::default()),
            &budgets,
            CancellationToken::new(),
        )
        .is_err()
    );
}

/// The installation token is renewed before it expires (5 minutes ahead), not after a 401.
#[tokio::test]
async fn installation_tokens_are_renewed_before_expiry() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.knobs.token_ttl.store(301, Ordering::Relaxed);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    // The token is good for 301 s, i.e. stale for us 1 s after it was issued.
    let first = env.sim.tokens_issued.load(Ordering::Relaxed);
    assert!(first >= 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.advance(60);
    poll(&*gh.pollers[0], &store).await;
    assert!(env.sim.tokens_issued.load(Ordering::Relaxed) > first);
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// Hanging and malformed answers fail the cycle with bounded kinds; the last values stay and
/// the next good cycle is exact again.
#[tokio::test]
async fn timeouts_and_malformed_bodies_keep_the_last_values() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    cfg.request_timeout = Duration::from_millis(300);
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let good = exported(&store);
    assert_same(&good, &env.sim.truth(ORG, env.now()));

    env.fake.faults.hang_ms.store(2_000, Ordering::Relaxed);
    env.fake
        .faults
        .timeout_per_mille
        .store(1000, Ordering::Relaxed);
    env.advance(60);
    let results = p.poll().await;
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "timeout"))
    );
    env.fake.faults.clear();
    // Malformed bodies: a changed repo must be fetched, and its truncated JSON is refused.
    let t = env.advance(60);
    env.sim.add_commit(ORG, "repo-000", "user002", t - 5, 3, 3);
    env.fake
        .faults
        .malformed_per_mille
        .store(1000, Ordering::Relaxed);
    let results = p.poll().await;
    // The changed repo changed the listing too: the truncated listing fails the cycle.
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "decode")),
        "{:?}",
        results.iter().map(|r| r.result.is_ok()).collect::<Vec<_>>()
    );
    assert_eq!(exported(&store), good, "failed cycles keep the last values");

    env.fake.faults.clear();
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(
        gauge(&gh, "devmetrics_github_scrape_progress_ratio").await,
        1.0
    );
}

/// A change seen by a probe whose fetch then fails must not be hidden behind the probe's new
/// ETag next cycle (comments do not move the repo's `updated_at` on GitHub).
#[tokio::test]
async fn a_change_seen_by_a_failed_cycle_is_fetched_next_cycle() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let t = env.advance(60);
    env.sim.add_comment(ORG, "repo-002", "user004", t - 10);
    env.sim.fail_path("/commits", 100);
    poll(&*p, &store).await;
    env.sim.fail_path("/commits", 0);
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// Two orgs, one on the App and one on a token, each exact against its own truth.
#[tokio::test]
async fn several_orgs_with_their_own_credentials() {
    let now = Arc::new(AtomicI64::new(NOW));
    let c = now.clone();
    let clock = Clock::from_fn(move || c.load(Ordering::SeqCst));
    let sim = GithubSim::new(
        11,
        clock.clone(),
        &[OrgSpec::small("acme"), OrgSpec::small("globex")],
    );
    *sim.pat.lock() = Some("ghp_globex".into());
    let fake = FakeServer::start("github", sim.router(), Faults::new(11))
        .await
        .unwrap();
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
    let yaml = format!(
        "api_base_url: {}\norgs:\n  - {{org: acme, app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_path: {}}}\n  - {{org: globex, token: ghp_globex}}\nloc: {{stats_retry_delay: 10ms}}\n",
        fake.base_url(),
        key.display()
    );
    let raw: RawGithub = serde_yaml::from_str(&yaml).unwrap();
    let cfg = raw.resolve(None).unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::from_env().open(dir.path(), &RetryPolicy::default());
    let (store, queue) = (b.store, b.queue);
    let gh = Github::build(
        &cfg,
        store.clone(),
        queue,
        Arc::new(Telemetry::default()),
        CancellationToken::new(),
        clock,
    )
    .unwrap();
    for p in &gh.pollers {
        poll(&**p, &store).await;
    }
    for org in ["acme", "globex"] {
        let mut got = Series::new();
        for scope in store.snapshot().scopes.iter() {
            for (fid, series) in &scope.families {
                for (labels, v) in series {
                    if labels.get("org").as_deref() == Some(org) {
                        got.insert(
                            (
                                family(*fid).name.to_string(),
                                labels.get("repo").unwrap(),
                                labels.get("user").unwrap(),
                            ),
                            v.as_f64().unwrap(),
                        );
                    }
                }
            }
        }
        assert_same(&got, &sim.truth(org, NOW));
    }
    assert_eq!(
        sim.tokens_issued.load(Ordering::Relaxed),
        1,
        "only acme uses the App"
    );
}

/// Reviews and comments move neither `pushed_at` nor `updated_at` on GitHub: a repo without
/// a recent push still has its conversations counted, cold (GraphQL) and warm (REST).
#[tokio::test]
async fn reviews_and_comments_in_repos_without_a_recent_push_count() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let quiet = |repo: &str| {
        env.sim.with_org(ORG, |o| {
            let r = o.repos.iter().find(|r| r.name == repo).unwrap();
            assert!(r.pushed_at < env.now() - 86_400 && r.updated_at < env.now() - 86_400);
        })
    };
    quiet("repo-006");
    quiet("repo-007");
    env.sim.add_review(ORG, "repo-006", "user002", NOW - 600);
    env.sim.add_comment(ORG, "repo-006", "user003", NOW - 500);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, env.now()));
    assert!(got.contains_key(&(
        "gh_activity_reviews_submitted_24h".into(),
        "repo-006".into(),
        "user002".into()
    )));

    let t = env.advance(60);
    env.sim.add_review(ORG, "repo-007", "user004", t - 10);
    env.sim.add_comment(ORG, "repo-007", "user005", t - 10);
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, t));
    assert!(got.contains_key(&(
        "gh_activity_issue_comments_24h".into(),
        "repo-007".into(),
        "user005".into()
    )));
}

/// A cycle skipped for the cooldown is a failure of the org, not a success: the source shows
/// down and the last success time stays where it was.
#[tokio::test]
async fn cooldown_shows_the_org_down() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    let last_success = |t: &Telemetry| t.sources()["github/acme"].last_success_timestamp;
    let first = last_success(&telemetry).expect("first cycle succeeded");
    env.sim.fail_path("/orgs/acme/repos", 1000);
    for _ in 0..2 {
        env.advance(60);
        sources::poll_once(&*p, &*store, &telemetry).await;
    }
    assert_eq!(gauge(&gh, "devmetrics_github_org_cooldown").await, 1.0);
    env.sim.fail_path("/orgs/acme/repos", 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.advance(30);
    let before = env.fake.requests.total();
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert_eq!(
        env.fake.requests.total(),
        before,
        "no request in the cooldown"
    );
    assert!(!telemetry.sources()["github/acme"].up);
    assert_eq!(last_success(&telemetry), Some(first));
}

/// GraphQL names a bot `dependabot` where REST says `dependabot[bot]`: bots stay excluded on
/// the cold (GraphQL) cycle, and when included carry the same label cold and warm.
#[tokio::test]
async fn bots_look_the_same_over_graphql_and_rest() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", NOW - 600);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert!(env.sim.graphql_queries() > 0, "the cold cycle used GraphQL");
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", NOW - 600);
    let cfg = env.config("activity: {include_bots: true}\n");
    let (store, queue) = env.open();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let key = |u: &str| {
        (
            "gh_activity_reviews_submitted_24h".to_string(),
            "repo-000".to_string(),
            u.to_string(),
        )
    };
    assert_eq!(exported(&store).get(&key("dependabot[bot]")), Some(&1.0));
    let t = env.advance(60);
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", t - 10);
    let graphql = env.sim.graphql_queries();
    poll(&*p, &store).await;
    assert_eq!(
        env.sim.graphql_queries(),
        graphql,
        "the warm cycle used REST"
    );
    let got = exported(&store);
    assert_eq!(got.get(&key("dependabot[bot]")), Some(&2.0));
    assert!(!got.keys().any(|k| k.2 == "dependabot"));
}

/// GraphQL's primary limit answers 200 with a RATE_LIMITED error and has its own budget: the
/// cold cycle falls back to REST, the REST budget is not mistaken for it.
#[tokio::test]
async fn a_spent_graphql_budget_falls_back_to_rest() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.set_graphql_limit(2);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(env.sim.graphql_queries(), 2);
    let b = p.client.budget().snapshot();
    assert!(b.graphql.known && b.graphql.remaining == 0);
    assert_eq!(b.limit, 5000);
    assert!(b.remaining > 4900, "REST budget: {}", b.remaining);
}

/// A secondary limit pauses every worker of the installation, not just the request that got
/// it: GitHub keeps refusing (and counting) the others' requests meanwhile.
#[tokio::test]
async fn a_secondary_limit_pauses_every_worker() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("graphql: false\n");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    // Workers overlap out of step (answers take 150-450 ms); the limit strikes mid-cycle.
    env.sim.knobs.answer_delay_ms.store(300, Ordering::Relaxed);
    *env.sim.knobs.secondary_path.lock() = Some("/repo-006/".into());
    env.sim.knobs.secondary_next.store(1, Ordering::Relaxed);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(env.sim.knobs.secondary_next.load(Ordering::Relaxed), 0);
    assert_eq!(env.sim.secondary_ignored(), 0);
}

/// GitHub selects commits by committer date: a commit rebased today but authored days ago is
/// today's activity, in the window and in the weekly LOC alike.
#[tokio::test]
async fn commits_count_by_committer_date() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.add_rebased_commit(
        ORG,
        "repo-001",
        "user005",
        NOW - 3 * 86_400,
        NOW - 300,
        9,
        4,
    );
    let generated_rebased = env.sim.with_org(ORG, |o| {
        o.repos
            .iter()
            .flat_map(|r| &r.commits)
            .filter(|c| c.authored != c.at && c.at > NOW - 86_400)
            .count()
    });
    assert!(generated_rebased > 1, "the fake rebases some commits");
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, env.now()));
    assert!(got.contains_key(&(
        "gh_activity_commits_24h".into(),
        "repo-001".into(),
        "user005".into()
    )));
}

/// A failing `/stats/contributors` keeps the week's cached LOC, publishes the repo's activity
/// anyway, and the LOC is fetched again on a later cycle.
#[tokio::test]
async fn failing_stats_keep_the_loc_and_publish_activity() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    // A day on (LOC is due again), stats fail past the retries; a new commit must show.
    let t = env.advance(25 * 3600);
    env.sim.add_commit(ORG, "repo-000", "user005", t - 60, 3, 1);
    env.sim.fail_path("/stats/contributors", 1000);
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert!(telemetry.sources()["github/acme"].up);
    assert_same(&exported(&store), &env.sim.truth(ORG, t));

    env.sim.fail_path("/stats/contributors", 0);
    let route = "GET /repos/{owner}/{repo}/stats/contributors";
    let before = env.fake.requests.count(route);
    env.advance(60);
    poll(&*p, &store).await;
    assert!(env.fake.requests.count(route) > before, "LOC retried");
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// A backfill finishing while a newer cycle records the same repo never leaves the older
/// window shown, whichever side writes first: the store checks the window's version
/// atomically with the write.
#[tokio::test]
async fn a_backfill_racing_a_newer_cycle_never_wins() {
    use devmetrics::sources::github::BackfillJob;
    for order in ["backfill first", "cycle first", "together"] {
        let env = Env::start(OrgSpec::small(ORG)).await;
        let cfg = env.config("");
        let (store, queue) = env.open();
        let stop = CancellationToken::new();
        let gh = env.build(&cfg, &store, &queue, &stop);
        let p = gh.pollers[0].clone();
        poll(&*p, &store).await;
        let t1 = env.advance(60);
        env.sim.add_comment(ORG, "repo-001", "user003", t1 - 5);
        let t2 = env.advance(60);
        env.sim.add_comment(ORG, "repo-001", "user004", t2 - 5);
        let job = BackfillJob {
            org: ORG.into(),
            repo: Some("repo-001".into()),
            window_end: t1,
            reason: "test".into(),
        };
        let (pb, pc, s) = (p.clone(), p.clone(), store.clone());
        let backfill = async move { pb.backfill(&job).await };
        let cycle = async move { poll(&*pc, &s).await };
        match order {
            "backfill first" => {
                backfill.await.unwrap();
                cycle.await;
            }
            "cycle first" => {
                cycle.await;
                backfill.await.unwrap();
            }
            _ => {
                let (b, ()) = tokio::join!(backfill, cycle);
                b.unwrap();
            }
        }
        assert_same(&exported(&store), &env.sim.truth(ORG, t2));
    }
}

/// GitHub refuses an App JWT meant to live over ten minutes; ours lives exactly ten.
#[tokio::test]
async fn app_jwts_longer_than_ten_minutes_are_refused() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        devmetrics::sim::github::TEST_APP_KEY_PEM.as_bytes(),
    )
    .unwrap();
    let now = devmetrics::clock::now_secs();
    let url = format!(
        "{}/app/installations/{INSTALLATION_ID}/access_tokens",
        env.fake.base_url()
    );
    let exchange = |jwt: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {jwt}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let long = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"iat": now - 60, "exp": now + 641, "iss": APP_ID.to_string()}),
        &key,
    )
    .unwrap();
    assert_eq!(exchange(long).await, 401);
    let ours = devmetrics::sources::github::client::app_jwt(
        APP_ID,
        devmetrics::sim::github::TEST_APP_KEY_PEM.as_bytes(),
        now,
    )
    .unwrap();
    assert_eq!(exchange(ours).await, 201);
}

/// A 5xx from the token exchange is retried like any request.
#[tokio::test]
async fn the_token_exchange_is_retried_on_5xx() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.fail_path("/access_tokens", 2);
    let cfg = env.config("");
    let (store, queue) = env.open();
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let telemetry = Telemetry::default();
    sources::poll_once(&*gh.pollers[0], &*store, &telemetry).await;
    assert!(telemetry.sources()["github/acme"].up);
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}
