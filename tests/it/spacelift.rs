//! Spacelift scenarios: the real poller and store against the Spacelift fake, every exported
//! value compared with the fake's ground truth; token expiry mid-run, a failing query group,
//! timeouts, wrong keys; compatibility with the replaced exporter's flags, variables,
//! `/health`, golden output and example dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use devmetrics::config::{Secret, SecretSource};
use devmetrics::metrics::Labels;
use devmetrics::sim::spacelift::{
    Account, KEY_ID, KEY_SECRET, MACHINE_SESSION_GATE, SpaceliftFake,
};
use devmetrics::sources::spacelift::{self, SpaceliftConfig, config::demo_config};
use devmetrics::sources::{Poller, poll_once};
use devmetrics::store::{SharedStore, Snapshot};

use crate::support::Backend;
use devmetrics::telemetry::Telemetry;

struct Rig {
    fake: SpaceliftFake,
    poller: spacelift::Source,
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Most scenarios exercise the per-stack path, so their fake serves stacks to the API
    /// key as if Spacelift lifted its machine-session gate; [`Rig::faithful`] keeps it.
    async fn new(stacks: usize, tweak: impl FnOnce(&mut SpaceliftConfig)) -> Rig {
        let rig = Rig::faithful(stacks, tweak).await;
        rig.fake.sim.gate_stacks(false);
        rig
    }

    async fn faithful(stacks: usize, tweak: impl FnOnce(&mut SpaceliftConfig)) -> Rig {
        let fake = SpaceliftFake::start(42, stacks).await.unwrap();
        let mut cfg = demo_config(&fake.base_url(), KEY_ID, KEY_SECRET);
        tweak(&mut cfg);
        let telemetry = Arc::new(Telemetry::default());
        let poller = spacelift::Source::new(cfg, telemetry.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::from_env()
            .open(dir.path(), &Default::default())
            .store;
        Rig {
            fake,
            poller,
            store,
            telemetry,
            _dir: dir,
        }
    }

    async fn poll(&self) -> Snapshot {
        poll_once(&self.poller, &*self.store, &self.telemetry).await;
        self.store.snapshot()
    }

    fn source_up(&self) -> bool {
        self.telemetry.sources()["spacelift"].up
    }
}

fn get(s: &Snapshot, name: &str, labels: &[&str]) -> Option<f64> {
    let fid = devmetrics::metrics::lookup(name).expect("a catalog family");
    let l = Labels::new(fid, labels).unwrap();
    s.family(fid)
        .find(|(k, _)| **k == l)
        .and_then(|(_, v)| v.as_f64())
}

fn count(s: &Snapshot, name: &str) -> usize {
    s.family(devmetrics::metrics::lookup(name).expect("a catalog family"))
        .count()
}

fn collector(s: &Snapshot, name: &str, c: &str) -> Option<f64> {
    get(s, name, &[c])
}

/// Every family the source exports, against the account the fake served.
fn assert_matches(s: &Snapshot, a: &Account) {
    let p = &a.public_pool;
    assert_eq!(
        get(s, "spacelift_public_worker_pool_runs_pending", &[]),
        Some(p.pending_runs as f64)
    );
    assert_eq!(
        get(s, "spacelift_public_worker_pool_workers_busy", &[]),
        Some(p.busy_workers as f64)
    );
    assert_eq!(
        get(s, "spacelift_public_worker_pool_parallelism", &[]),
        Some(p.parallelism as f64)
    );
    assert_eq!(
        count(s, "spacelift_worker_pool_workers"),
        a.worker_pools.len()
    );
    for pool in &a.worker_pools {
        let l = [pool.id.as_str(), pool.name.as_str()];
        let drained = pool.workers.iter().filter(|w| w.1).count() as f64;
        assert_eq!(
            get(s, "spacelift_worker_pool_runs_pending", &l),
            Some(pool.pending_runs as f64)
        );
        assert_eq!(
            get(s, "spacelift_worker_pool_workers_busy", &l),
            Some(pool.busy_workers as f64)
        );
        assert_eq!(
            get(s, "spacelift_worker_pool_workers", &l),
            Some(pool.workers.len() as f64)
        );
        assert_eq!(
            get(s, "spacelift_worker_pool_workers_drained", &l),
            Some(drained)
        );
    }
    let u = &a.usage;
    for (name, v) in [
        (
            "spacelift_current_billing_period_start_timestamp_seconds",
            u.billing_period_start as f64,
        ),
        (
            "spacelift_current_billing_period_end_timestamp_seconds",
            u.billing_period_end as f64,
        ),
        (
            "spacelift_current_billing_period_used_private_seconds",
            u.used_private_minutes as f64 * 60.0,
        ),
        (
            "spacelift_current_billing_period_used_public_seconds",
            u.used_public_minutes as f64 * 60.0,
        ),
        (
            "spacelift_current_billing_period_used_seats",
            u.used_seats as f64,
        ),
    ] {
        assert_eq!(get(s, name, &[]), Some(v), "{name}");
    }
    let by_state = a.stacks_count_by_state();
    assert_eq!(
        count(s, "spacelift_current_stacks_count_by_state"),
        by_state.len()
    );
    for (state, n) in &by_state {
        assert_eq!(
            get(s, "spacelift_current_stacks_count_by_state", &[state]),
            Some(*n)
        );
    }
    let (in_sync, drifted) = a.resources_by_drift();
    assert_eq!(
        get(
            s,
            "spacelift_current_resources_count_by_drift",
            &["IN_SYNC"]
        ),
        Some(in_sync)
    );
    assert_eq!(
        get(
            s,
            "spacelift_current_resources_count_by_drift",
            &["DRIFTED"]
        ),
        Some(drifted)
    );
    assert_eq!(
        get(s, "spacelift_current_avg_stack_size_by_resource_count", &[]),
        a.avg_stack_size()
    );
    assert_eq!(
        get(s, "spacelift_current_average_run_duration", &[]),
        a.average_run_duration_ns()
    );
    assert_eq!(
        get(s, "spacelift_current_median_run_duration", &[]),
        a.median_run_duration_ns()
    );
    assert_eq!(
        get(s, "spacelift_runs_needing_approval", &[]),
        Some(a.runs_needing_approval() as f64)
    );
    assert_eq!(
        get(s, "spacelift_runs_requiring_attention", &[]),
        Some(a.runs_requiring_attention() as f64)
    );
    // Per stack (no filters, default budget: every stack).
    assert_eq!(count(s, "spacelift_stack_state"), a.stacks.len());
    let mut runs: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for st in &a.stacks {
        let l = [st.id.as_str(), st.space.as_str()];
        assert_eq!(
            get(s, "spacelift_stack_state", &[&st.id, &st.space, &st.state]),
            Some(1.0),
            "{}",
            st.id
        );
        assert_eq!(
            get(s, "spacelift_stack_resources", &l),
            Some(st.resources.len() as f64)
        );
        assert_eq!(
            get(s, "spacelift_stack_resources_drifted", &l),
            Some(st.resources.iter().filter(|d| d.is_some()).count() as f64)
        );
        for r in &st.runs {
            *runs
                .entry((st.space.clone(), r.run_type.clone(), r.state.clone()))
                .or_default() += 1.0;
        }
    }
    assert_eq!(count(s, "spacelift_runs"), runs.len());
    for ((space, t, st), n) in &runs {
        assert_eq!(get(s, "spacelift_runs", &[space, t, st]), Some(*n));
    }
}

#[tokio::test]
async fn every_exported_value_equals_ground_truth_as_the_account_changes() {
    // 23 stacks over page size 10: three pages.
    let rig = Rig::new(23, |_| {}).await;
    assert_eq!(rig.poller.name(), "spacelift");
    assert!(
        rig.poller.timeout() > Duration::from_secs(5),
        "outer guard past the scrape timeout"
    );
    let s = rig.poll().await;
    assert_matches(&s, &rig.fake.sim.account());
    assert!(rig.source_up());
    for g in spacelift::Group::ALL {
        let c = g.collector();
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", c),
            Some(1.0)
        );
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_supported", c),
            Some(1.0)
        );
        assert!(collector(&s, "spacelift_scrape_collector_duration_seconds", c).is_some());
    }
    assert!(get(&s, "spacelift_scrape_duration_seconds", &[]).is_some());
    assert_eq!(count(&s, "spacelift_build_info"), 1);
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["budget"]),
        Some(0.0)
    );

    let before = rig.fake.sim.account();
    for _ in 0..40 {
        rig.fake.sim.tick();
    }
    let after = rig.fake.sim.account();
    assert_ne!(before, after);
    let s = rig.poll().await;
    assert_matches(&s, &after);

    let sim = &rig.fake.sim;
    assert_eq!(
        sim.exchanges.load(Ordering::Relaxed),
        1,
        "one token serves both polls"
    );
    assert!(!sim.exchange_had_headers.load(Ordering::Relaxed));
    assert!(!sim.query_missing_client_type.load(Ordering::Relaxed));
    assert_eq!(sim.unauthorized_answers.load(Ordering::Relaxed), 0);
    let ops: BTreeSet<String> = sim.operations.lock().iter().cloned().collect();
    assert_eq!(
        ops,
        [
            "DevmetricsAttention",
            "DevmetricsStacks",
            "PrometheusExporterAggregates",
            "PrometheusExporterPublicWorkerPool",
            "PrometheusExporterUsage",
            "PrometheusExporterWorkerPools"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        rig.fake.server.requests.count("POST /graphql"),
        1 + 2 * (5 + 3),
        "one exchange, then per poll five groups and three stack pages"
    );
}

#[tokio::test]
async fn token_expiry_mid_run_refreshes_once_and_loses_nothing() {
    let rig = Rig::new(6, |_| {}).await;
    let sim = &rig.fake.sim;
    rig.poll().await;
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), 1);

    // Server-side expiry: every group is told "unauthorized" at once; one exchange follows
    // and each group retries with the new token.
    sim.revoke_tokens();
    sim.tick();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &sim.account());
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), 2);
    assert_eq!(sim.unauthorized_answers.load(Ordering::Relaxed), 6);

    // Expiry announced by validUntil: the client refreshes before asking, so the API never
    // has to refuse it.
    sim.token_ttl_secs.store(3600, Ordering::Relaxed);
    sim.revoke_tokens();
    sim.token_ttl_secs.store(20, Ordering::Relaxed);
    // The cached token (valid for an hour) was revoked: one reactive refresh yields a token
    // inside the 30 s padding, so the next poll refreshes proactively.
    rig.poll().await;
    let unauthorized = sim.unauthorized_answers.load(Ordering::Relaxed);
    let exchanges = sim.exchanges.load(Ordering::Relaxed);
    sim.token_ttl_secs.store(3600, Ordering::Relaxed);
    let s = rig.poll().await;
    assert_matches(&s, &sim.account());
    assert_eq!(
        sim.unauthorized_answers.load(Ordering::Relaxed),
        unauthorized,
        "a refresh before validUntil needs no refusal"
    );
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), exchanges + 1);
    rig.poll().await;
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), exchanges + 1);
}

#[tokio::test]
async fn a_failing_group_keeps_its_last_values_marked_stale_and_blanks_nothing_else() {
    let rig = Rig::new(8, |_| {}).await;
    let sim = &rig.fake.sim;
    let s0 = rig.poll().await;
    let first = sim.account();
    let usage_success = collector(
        &s0,
        "devmetrics_spacelift_collector_last_success_timestamp_seconds",
        "usage",
    )
    .unwrap();

    sim.fail_field("usage", "internal server error");
    for _ in 0..30 {
        sim.tick();
    }
    sim.account.lock().usage.used_seats += 7;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = rig.poll().await;
    let now = sim.account();

    assert!(!rig.source_up(), "the source reports the failed group");
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "usage"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "workerpools"),
        Some(1.0)
    );
    // The failed group's values are the last good ones, and their age says so.
    assert_eq!(
        get(&s, "spacelift_current_billing_period_used_seats", &[]),
        Some(first.usage.used_seats as f64)
    );
    assert_eq!(
        collector(
            &s,
            "devmetrics_spacelift_collector_last_success_timestamp_seconds",
            "usage"
        ),
        Some(usage_success)
    );
    let fresh = collector(
        &s,
        "devmetrics_spacelift_collector_last_success_timestamp_seconds",
        "aggregates",
    )
    .unwrap();
    assert!(fresh > usage_success);
    // Everything else is current.
    let mut expected = now.clone();
    expected.usage = first.usage.clone();
    assert_matches(&s, &expected);
    let h = &rig.telemetry.sources()["spacelift"];
    assert!(h.last_error.as_deref().unwrap().contains("usage collector"));

    sim.clear_knobs();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &now);
}

/// The source, keeping each failed scope's error: which group failed how, whatever order
/// the poll reports them in.
struct Recording<'a> {
    inner: &'a spacelift::Source,
    errors: std::sync::Mutex<BTreeMap<String, (&'static str, String)>>,
}

#[async_trait::async_trait]
impl Poller for Recording<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn scopes(&self) -> Vec<String> {
        self.inner.scopes()
    }
    fn interval(&self) -> Duration {
        self.inner.interval()
    }
    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }
    async fn poll(&self) -> Vec<devmetrics::sources::ScopeResult> {
        let results = self.inner.poll().await;
        let mut errors = self.errors.lock().unwrap();
        errors.clear();
        for r in &results {
            if let Err(e) = &r.result {
                errors.insert(r.scope.clone(), (e.kind, e.message.clone()));
            }
        }
        results
    }
}

#[tokio::test]
async fn a_timeout_fails_only_the_slow_group_within_the_deadline() {
    // The deadline leaves the healthy groups ample time on a loaded machine; the injected
    // delays are far past it, so only the deadline can have ended the slow requests.
    const DEADLINE: Duration = Duration::from_secs(3);
    const DELAY_MS: u64 = 60_000;
    let rig = Rig::new(4, |c| c.scrape_timeout = DEADLINE).await;
    let rec = Recording {
        inner: &rig.poller,
        errors: Default::default(),
    };
    let sim = &rig.fake.sim;
    sim.delay_field("metrics", DELAY_MS);
    let started = std::time::Instant::now();
    poll_once(&rec, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    // Not a performance figure: proof the deadline cut the 60 s answer short.
    assert!(started.elapsed() < Duration::from_millis(DELAY_MS / 2));
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "aggregates"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_current_stacks_count_by_state"), 0);
    for c in ["publicworkerpool", "workerpools", "usage", "stacks"] {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", c),
            Some(1.0),
            "{c}"
        );
    }
    assert_eq!(
        get(&s, "spacelift_public_worker_pool_parallelism", &[]),
        Some(10.0)
    );
    assert!(!rig.source_up());
    {
        let errors = rec.errors.lock().unwrap();
        let (kind, message) = &errors["spacelift/aggregates"];
        assert_eq!(*kind, "timeout", "{message}");
        assert!(message.contains("aggregates collector"), "{message}");
        assert!(message.contains("timeout"), "{message}");
        let failed: BTreeSet<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            failed,
            ["spacelift/aggregates", "spacelift/attention"].into(),
            "only the groups asking the slow root field"
        );
    }

    // A slow upstream: the token exchange counts against the same deadline.
    sim.clear_knobs();
    rig.fake
        .server
        .faults
        .delay_ms
        .store(DELAY_MS, Ordering::Relaxed);
    sim.revoke_tokens();
    poll_once(&rec, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    for g in spacelift::Group::ALL {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", g.collector()),
            Some(0.0)
        );
        assert_eq!(rec.errors.lock().unwrap()[g.scope()].0, "timeout", "{g:?}");
    }
    assert_eq!(count(&s, "spacelift_build_info"), 0);
    let took = get(&s, "spacelift_scrape_duration_seconds", &[]).unwrap();
    assert!(took < (DELAY_MS / 2) as f64 / 1000.0, "{took}");
}

#[tokio::test]
async fn wrong_key_is_rejected_without_leaking_the_secret() {
    let rig = Rig::new(3, |c| {
        c.api_key_secret = SecretSource::Value(Secret::new("not-the-secret-xyzzy"))
    })
    .await;
    let s = rig.poll().await;
    assert!(rig.fake.sim.rejected_exchanges.load(Ordering::Relaxed) >= 1);
    assert_eq!(rig.fake.sim.operations.lock().len(), 0);
    assert_eq!(count(&s, "spacelift_public_worker_pool_parallelism"), 0);
    let h = &rig.telemetry.sources()["spacelift"];
    let err = h.last_error.clone().unwrap();
    assert!(err.contains("credentials"), "{err}");
    assert!(!err.contains("xyzzy"));
}

#[tokio::test]
async fn secret_file_is_reread_on_each_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "old-secret\n").unwrap();
    let p = path.clone();
    let rig = Rig::new(2, move |c| c.api_key_secret = SecretSource::File(p)).await;
    rig.poll().await;
    assert!(!rig.source_up());
    std::fs::write(
        &path,
        format!("  {}\n", devmetrics::sim::spacelift::KEY_SECRET),
    )
    .unwrap();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &rig.fake.sim.account());
}

#[tokio::test]
async fn machine_session_gate_is_unsupported_not_a_failure() {
    let rig = Rig::new(5, |_| {}).await;
    rig.poll().await;
    assert_eq!(count(&rig.store.snapshot(), "spacelift_stack_state"), 5);
    rig.fake
        .sim
        .fail_field("searchStacks", MACHINE_SESSION_GATE);
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "stacks"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "stacks"),
        Some(1.0)
    );
    assert_eq!(
        count(&s, "spacelift_stack_state"),
        0,
        "nothing to show, nothing stale"
    );
    // Older Self-Hosted releases gate the replaced exporter's own fields the same way.
    rig.fake.sim.fail_field("usage", MACHINE_SESSION_GATE);
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "usage"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_current_billing_period_used_seats"), 0);
}

/// Log lines written while it is the thread's default subscriber (a current-thread test
/// runtime runs the poller, the client and the fake on this thread).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(self.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish(),
        )
    }

    /// Warnings about `collector` being unsupported.
    fn unsupported_warnings(&self, collector: &str) -> usize {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("supported is 0"))
            .filter(|l| l.contains(&format!("collector=\"{collector}\"")))
            .count()
    }
}

#[tokio::test]
async fn per_stack_data_is_refused_to_api_keys_by_default_and_said_so_once() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let rig = Rig::faithful(5, |_| {}).await;
    for _ in 0..3 {
        let s = rig.poll().await;
        assert!(rig.source_up(), "a refused collector is not a failure");
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_supported", "stacks"),
            Some(0.0)
        );
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", "stacks"),
            Some(1.0)
        );
        for f in [
            "spacelift_stack_state",
            "spacelift_stack_resources",
            "spacelift_stack_resources_drifted",
            "spacelift_runs",
            "devmetrics_spacelift_stacks_omitted",
        ] {
            assert_eq!(count(&s, f), 0, "{f}");
        }
        for g in spacelift::Group::ALL
            .iter()
            .filter(|g| **g != spacelift::Group::Stacks)
        {
            assert_eq!(
                collector(&s, "spacelift_scrape_collector_supported", g.collector()),
                Some(1.0),
                "{g:?}"
            );
        }
        assert_eq!(
            get(
                &s,
                "spacelift_current_avg_stack_size_by_resource_count",
                &[]
            ),
            rig.fake.sim.account().avg_stack_size(),
            "account-wide aggregates still flow"
        );
    }
    assert_eq!(
        logs.unsupported_warnings("stacks"),
        1,
        "warned once, not per poll"
    );
    assert_eq!(logs.unsupported_warnings("usage"), 0);

    // Spacelift lifts the gate: the per-stack families appear; if it comes back, the log
    // says so again.
    rig.fake.sim.gate_stacks(false);
    let s = rig.poll().await;
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "stacks"),
        Some(1.0)
    );
    assert_eq!(count(&s, "spacelift_stack_state"), 5);
    rig.fake.sim.gate_stacks(true);
    let s = rig.poll().await;
    assert_eq!(
        count(&s, "spacelift_stack_state"),
        0,
        "nothing stale is kept"
    );
    assert_eq!(logs.unsupported_warnings("stacks"), 2);
}

#[tokio::test]
async fn a_schema_mismatch_fails_the_group_except_the_optional_attention_fields() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let rig = Rig::new(4, |_| {}).await;
    let s0 = rig.poll().await;
    let sim = &rig.fake.sim;
    sim.fail_field(
        "usage",
        "Cannot query field \"usedSeats\" on type \"Usage\".",
    );
    sim.fail_field(
        "metrics/attention",
        "Cannot query field \"needsApprovalRuns\" on type \"Metrics\".",
    );
    let s = rig.poll().await;
    // usage: a bug or an unsupported release, reported as a failure with its own kind.
    assert!(!rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "usage"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "usage"),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "spacelift_current_billing_period_used_seats", &[]),
        get(&s0, "spacelift_current_billing_period_used_seats", &[]),
        "the failed group keeps its last values"
    );
    let err = rig.telemetry.sources()["spacelift"]
        .last_error
        .clone()
        .unwrap();
    assert!(err.contains("usage collector"), "{err}");
    assert!(err.contains("schema does not match"), "{err}");
    // attention: fields a Spacelift release may lack, so "not supported here".
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "attention"),
        Some(1.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "attention"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_runs_needing_approval"), 0);
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "aggregates"),
        Some(1.0),
        "the same root with the replaced exporter's selection is unaffected"
    );
    assert_eq!(logs.unsupported_warnings("attention"), 1);
    assert_eq!(logs.unsupported_warnings("usage"), 0);
    let text = {
        let mut out = Vec::new();
        devmetrics::exposition::render(
            &[Arc::new(rig.telemetry.scope().await)],
            devmetrics::exposition::Format::Text,
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains("devmetrics_source_scrapes_total{source=\"spacelift\",result=\"schema\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn stack_filters_and_series_budget_are_applied_and_reported() {
    let rig = Rig::new(16, |c| {
        c.stacks.exclude_spaces = vec!["sandbox-*".into()];
        c.stacks.exclude_stacks = vec!["Stack 1".into()];
        c.stacks.series_budget = 20;
    })
    .await;
    let s = rig.poll().await;
    let a = rig.fake.sim.account();
    let filtered = a
        .stacks
        .iter()
        .filter(|st| st.space.starts_with("sandbox-") || st.name == "Stack 1")
        .count();
    let exported = count(&s, "spacelift_stack_state");
    assert!(exported > 0);
    let per_stack = 3 * exported + count(&s, "spacelift_runs");
    assert!(per_stack <= 20, "{per_stack}");
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["filtered"]),
        Some(filtered as f64)
    );
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["budget"]),
        Some((a.stacks.len() - filtered - exported) as f64)
    );
    for (l, _) in s.family(devmetrics::metrics::SPACELIFT_STACK_STATE) {
        assert!(!l.get("space").unwrap().starts_with("sandbox-"));
    }
    // The account-wide aggregates are not filtered.
    assert_eq!(
        get(&s, "spacelift_current_stacks_count_by_state", &["NONE"]),
        a.stacks_count_by_state().get("NONE").copied()
    );
}

#[test]
fn replaced_exporter_env_vars_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "abc\n").unwrap();
    let env: BTreeMap<String, String> = [
        (
            "SPACELIFT_PROMEX_API_ENDPOINT",
            "https://acme.app.spacelift.io/",
        ),
        ("SPACELIFT_PROMEX_API_KEY_ID", "01KEY"),
        (
            "SPACELIFT_PROMEX_API_KEY_SECRET_FILE",
            secret.to_str().unwrap(),
        ),
        ("SPACELIFT_PROMEX_SCRAPE_TIMEOUT", "7s"),
        ("SPACELIFT_PROMEX_LISTEN_ADDRESS", ":9953"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = devmetrics::config::load(None, &env, &Default::default()).unwrap();
    let s = c.spacelift.unwrap();
    assert_eq!(s.api_endpoint, "https://acme.app.spacelift.io/");
    assert_eq!(s.api_key_id, "01KEY");
    assert_eq!(s.scrape_timeout, Duration::from_secs(7));
    assert!(matches!(s.api_key_secret, SecretSource::File(_)));
    assert_eq!(
        c.web.listen_addresses,
        vec!["0.0.0.0:9953".parse().unwrap()]
    );

    let mut env2 = env.clone();
    env2.remove("SPACELIFT_PROMEX_API_KEY_SECRET_FILE");
    env2.insert("SPACELIFT_PROMEX_API_KEY_SECRET".into(), "zzsecret".into());
    env2.insert("SPACELIFT_PROMEX_SCRAPE_TIMEOUT".into(), "0s".into());
    let e = devmetrics::config::load(None, &env2, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("spacelift.scrape_timeout"), "{e}");
    assert!(e.contains("SPACELIFT_PROMEX_SCRAPE_TIMEOUT"), "{e}");
    assert!(!e.contains("zzsecret"));
}

#[test]
fn serve_flags_reach_the_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args([
            "check-config",
            "--spacelift.api-endpoint",
            "not a url",
            "--spacelift.api-key-id",
            "k",
            "--spacelift.api-key-secret",
            "flagsecret",
            "--spacelift.scrape-timeout",
            "3s",
        ])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("spacelift.api_endpoint"), "{msg}");
    assert!(msg.contains("flag --spacelift.api-endpoint"), "{msg}");
    assert!(!msg.contains("flagsecret"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in [
        "--spacelift.api-endpoint",
        "--spacelift.api-key-id",
        "--spacelift.api-key-secret",
        "--spacelift.api-key-secret-file",
        "--spacelift.scrape-timeout",
    ] {
        assert!(help.contains(f), "{f} missing from serve --help");
    }
}

fn shared(rel: &str) -> Option<PathBuf> {
    devmetrics::sim::research_dir(rel)
}

const QUERIES: &str = include_str!("../fixtures/spacelift/dashboard-queries.txt");

fn owned_queries() -> BTreeSet<String> {
    QUERIES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn owned_dashboard_queries_match_the_replaced_dashboard() {
    let Some(p) = shared("spacelift/example-dashboard.json") else {
        return;
    };
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.insert(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = BTreeSet::new();
    walk(&d, &mut exprs);
    assert_eq!(exprs, owned_queries());
}

/// Metric names and `by (…)` labels each dashboard query needs.
fn needs(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("spacelift_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let after = &tail[end..];
        let labels = after
            .find("by (")
            .filter(|j| !after[..*j].contains("spacelift_"))
            .map(|j| {
                let inner = &after[j + 4..];
                inner[..inner.find(')').unwrap()]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn demo_metrics_serve_every_dashboard_query_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config_with(dir.path(), &[]);
    let demo = devmetrics::sim::demo::Demo::start(&mut cfg, 3)
        .await
        .unwrap();
    assert!(cfg.spacelift.is_some(), "demo points spacelift at the fake");
    let running = crate::support::start(cfg, "http").await;
    let c = reqwest::Client::new();
    let mut body = String::new();
    for _ in 0..100 {
        body = c
            .get(format!("{}/metrics", running.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("spacelift_scrape_collector_supported{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let series: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    // The demo's account grants per-stack data, so the demo shows those families too.
    assert!(
        series.contains(&"spacelift_scrape_collector_supported{collector=\"stacks\"} 1"),
        "{body}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.starts_with("spacelift_stack_state{")),
        "{body}"
    );
    let queries = owned_queries();
    assert!(queries.len() >= 14);
    for q in &queries {
        let needed = needs(q);
        assert!(!needed.is_empty(), "{q}");
        for (name, labels) in needed {
            let found = series.iter().any(|l| {
                let (n, rest) = l.split_at(l.find([' ', '{']).unwrap_or(l.len()));
                n == name && labels.iter().all(|lab| rest.contains(&format!("{lab}=\"")))
            });
            assert!(
                found,
                "{name} with {labels:?} (for `{q}`) missing from demo /metrics"
            );
        }
    }
    // The same, read by an independent OpenMetrics parser when one is installed.
    if let Some(py) = crate::support::python_with_parser() {
        let om = c
            .get(format!("{}/metrics", running.base))
            .header("Accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let parsed = parse_independently(&py, &om);
        for q in &queries {
            for (name, labels) in needs(q) {
                let fam = parsed["families"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|f| f["name"] == name.as_str())
                    .unwrap_or_else(|| panic!("{name} missing from the parsed OpenMetrics"));
                let sample = &fam["samples"][0];
                for l in &labels {
                    assert!(sample[1].get(l).is_some(), "{name} lacks {l}");
                }
            }
        }
    }
    let health = c
        .get(format!("{}/health", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), spacelift::HEALTH_BODY);
    running.stop().await;
    drop(demo);
}

/// The replaced exporter's golden output for its SaaS fixture, reproduced by our
/// conversions and encoder (scrape duration and build info excepted: they differ by nature).
#[test]
fn golden_output_of_the_replaced_exporter_is_reproduced() {
    let (Some(fixture), Some(golden)) = (
        shared("spacelift/index-fixtures/testdata/fixtures/saas.json"),
        shared("spacelift/index-fixtures/testdata/golden/saas.main-branch-derived.prom"),
    ) else {
        return;
    };
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let d = &v["data"];
    let mut samples = Vec::new();
    samples.extend(spacelift::public_worker_pool_samples(
        &serde_json::from_value(d["publicWorkerPool"].clone()).unwrap(),
    ));
    samples.extend(spacelift::worker_pool_samples(
        &serde_json::from_value::<Vec<_>>(d["workerPools"].clone()).unwrap(),
    ));
    samples.extend(spacelift::usage_samples(
        &serde_json::from_value(d["usage"].clone()).unwrap(),
    ));
    samples.extend(spacelift::aggregate_samples(
        &serde_json::from_value(d["metrics"].clone()).unwrap(),
    ));
    let mut scope = devmetrics::metrics::ScopeData {
        name: "t".into(),
        ..Default::default()
    };
    for s in samples {
        scope
            .families
            .entry(s.family)
            .or_default()
            .insert(s.labels, s.value);
    }
    let mut out = Vec::new();
    devmetrics::exposition::render(
        &[Arc::new(scope)],
        devmetrics::exposition::Format::Text,
        &mut out,
    )
    .unwrap();
    let ours = parse(&String::from_utf8(out).unwrap());
    let theirs: BTreeMap<String, f64> = parse(&std::fs::read_to_string(golden).unwrap())
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("spacelift_build_info") && !k.starts_with("spacelift_scrape_duration")
        })
        .collect();
    assert!(theirs.len() >= 24, "golden file parsed: {theirs:?}");
    assert_eq!(ours, theirs);
}

/// Series line → value, label order normalised (Go sorts labels by name).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let key = match series.split_once('{') {
                Some((n, labels)) => {
                    let mut ls: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    ls.sort();
                    format!("{n}{{{}}}", ls.join(","))
                }
                None => series.to_string(),
            };
            (key, value.parse::<f64>().unwrap_or(f64::NAN))
        })
        .collect()
}

#[tokio::test]
async fn a_disabled_group_clears_what_an_earlier_run_left() {
    let rig = Rig::new(4, |_| {}).await;
    let s = rig.poll().await;
    assert_eq!(count(&s, "spacelift_stack_state"), 4);
    assert!(get(&s, "spacelift_current_billing_period_used_seats", &[]).is_some());
    // A restart with the groups switched off, on the same database.
    let mut cfg = demo_config(&rig.fake.base_url(), KEY_ID, KEY_SECRET);
    cfg.stacks.enabled = false;
    cfg.collectors.usage = false;
    let off = spacelift::Source::new(cfg, rig.telemetry.clone()).unwrap();
    poll_once(&off, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    assert_eq!(count(&s, "spacelift_stack_state"), 0);
    assert_eq!(count(&s, "spacelift_current_billing_period_used_seats"), 0);
    assert_eq!(count(&s, "spacelift_scrape_collector_success"), 4);
    assert_matches_pools(&s, &rig.fake.sim.account());
}

fn assert_matches_pools(s: &Snapshot, a: &Account) {
    for pool in &a.worker_pools {
        assert_eq!(
            get(
                s,
                "spacelift_worker_pool_workers",
                &[pool.id.as_str(), pool.name.as_str()]
            ),
            Some(pool.workers.len() as f64)
        );
    }
}

fn parse_independently(py: &std::path::Path, body: &str) -> serde_json::Value {
    crate::support::parse_exposition(py, "openmetrics", body)
}

#[tokio::test]
async fn http_errors_and_malformed_answers_fail_groups_with_bounded_kinds() {
    let rig = Rig::new(3, |_| {}).await;
    rig.poll().await;
    let faults = &rig.fake.server.faults;
    faults.fail_next.store(2, Ordering::Relaxed);
    let s = rig.poll().await;
    let failed = spacelift::Group::ALL
        .iter()
        .filter(|g| collector(&s, "spacelift_scrape_collector_success", g.collector()) == Some(0.0))
        .count();
    assert_eq!(failed, 2, "two 503s fail exactly two groups");
    faults.malformed_per_mille.store(1000, Ordering::Relaxed);
    let s = rig.poll().await;
    for g in spacelift::Group::ALL {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", g.collector()),
            Some(0.0)
        );
    }
    faults.clear();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &rig.fake.sim.account());
    let text = {
        let mut out = Vec::new();
        devmetrics::exposition::render(
            &[Arc::new(rig.telemetry.scope().await)],
            devmetrics::exposition::Format::Text,
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    for kind in ["http_status", "decode"] {
        let line =
            format!("devmetrics_source_scrapes_total{{source=\"spacelift\",result=\"{kind}\"}} 1");
        assert!(text.contains(&line), "{line} missing: {text}");
    }
    assert!(text.contains("upstream=\"spacelift\",endpoint=\"usage\",status=\"200\""));
    assert!(text.contains(",status=\"503\"}"), "{text}");
}

/// The commented spacelift section of `config example`, uncommented, is a valid config.
#[test]
fn example_spacelift_section_is_valid_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut out = String::new();
    let mut inside = false;
    for line in devmetrics::config::EXAMPLE.lines() {
        if line.starts_with("# spacelift:") {
            inside = true;
        }
        if inside && line.trim().is_empty() {
            break;
        }
        if inside && line.starts_with("# ") {
            let l = line.trim_start_matches("# ");
            if !l.trim_start().starts_with('#') {
                out.push_str(
                    &l.replace("/etc/devmetrics/spacelift-secret", secret.to_str().unwrap()),
                );
                out.push('\n');
            }
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("spacelift:\n  api_endpoint:"), "{out}");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, out).unwrap();
    let c = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("uncommented example loads");
    let s = c.spacelift.expect("section enabled");
    assert_eq!(s.stacks.series_budget, 10_000);
    assert!(s.collectors.attention && s.stacks.enabled);
}
