//! Scenario tests: the real GitHub client, activity pollers and backfill consumer against the
//! simulated GitHub, asserting every exported `gh_activity_*` value equals its ground truth.

mod activity;
mod auth;
mod budget;
mod config;
mod failures;

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

    async fn open(&self) -> (SharedStore, SharedQueue) {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            horizon: Duration::from_secs(3600),
        };
        let b = Backend::from_env().open(self.dir.path(), &policy).await;
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

    /// The usual start: a config with `extra`, the backend, and the pollers on it.
    async fn rig(
        &self,
        extra: &str,
    ) -> (
        GithubConfig,
        SharedStore,
        SharedQueue,
        CancellationToken,
        Github,
    ) {
        let cfg = self.config(extra);
        let (store, queue) = self.open().await;
        let stop = CancellationToken::new();
        let gh = self.build(&cfg, &store, &queue, &stop);
        (cfg, store, queue, stop, gh)
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
