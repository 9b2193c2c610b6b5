//! Spacelift scenarios: the real poller and store against the Spacelift fake, every exported
//! value compared with the fake's ground truth; token expiry mid-run, a failing query group,
//! timeouts, wrong keys; compatibility with the replaced exporter's flags, variables,
//! `/health`, golden output and example dashboard.

mod compat;
mod scenarios;

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
            .await
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

/// `family`'s values summed by `state`, and whether every series is per stack (`stack` set)
/// rather than account-wide (`stack` and `space` empty); mixed forms fail.
fn by_state(s: &Snapshot, family: &str) -> (std::collections::BTreeMap<String, f64>, bool) {
    let fid = devmetrics::metrics::lookup(family).expect("a catalog family");
    let mut sums = std::collections::BTreeMap::new();
    let mut forms = std::collections::BTreeSet::new();
    for (l, v) in s.family(fid) {
        *sums.entry(l.get("state").unwrap()).or_default() += v.as_f64().unwrap();
        let stack = l.get("stack").unwrap();
        assert_eq!(
            stack.is_empty(),
            l.get("space").unwrap().is_empty(),
            "{l:?}"
        );
        forms.insert(!stack.is_empty());
    }
    assert!(
        forms.len() <= 1,
        "{family} mixes per-stack and account-wide series"
    );
    (sums, forms.contains(&true))
}

/// The replaced exporter's by-state and by-drift families: per stack and space when the
/// stack listing was complete, account-wide otherwise; `sum by (state)` equal either way.
fn assert_counts(s: &Snapshot, a: &Account) {
    let (states, per_stack) = by_state(s, "spacelift_current_stacks_count_by_state");
    assert_eq!(states, a.stacks_count_by_state());
    let (drift, drift_per_stack) = by_state(s, "spacelift_current_resources_count_by_drift");
    let (in_sync, drifted) = a.resources_by_drift();
    let nonzero = |v: f64| (v > 0.0 || !per_stack).then_some(v);
    assert_eq!(drift.get("IN_SYNC").copied(), nonzero(in_sync));
    assert_eq!(drift.get("DRIFTED").copied(), nonzero(drifted));
    if per_stack {
        assert!(drift_per_stack || drift.is_empty());
        for st in &a.stacks {
            assert_eq!(
                get(
                    s,
                    "spacelift_current_stacks_count_by_state",
                    &[&st.state, &st.id, &st.space]
                ),
                Some(1.0),
                "{}",
                st.id
            );
            let d = st.resources.iter().filter(|r| r.is_some()).count() as f64;
            let got = get(
                s,
                "spacelift_current_resources_count_by_drift",
                &["DRIFTED", &st.id, &st.space],
            );
            assert_eq!(got, (d > 0.0).then_some(d), "{}", st.id);
        }
    }
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
    assert_counts(s, a);
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

fn shared(rel: &str) -> Option<PathBuf> {
    devmetrics::sim::research_dir(rel)
}

const QUERIES: &str = include_str!("../../fixtures/spacelift/dashboard-queries.txt");

fn owned_queries() -> BTreeSet<String> {
    QUERIES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
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

/// Series line → value, label order normalised (Go sorts labels by name), and labels with
/// an empty value dropped: to Prometheus an empty label is no label.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let key = match series.split_once('{') {
                Some((n, labels)) => {
                    let mut ls: Vec<&str> = labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|l| !l.ends_with("=\"\""))
                        .collect();
                    ls.sort();
                    if ls.is_empty() {
                        n.to_string()
                    } else {
                        format!("{n}{{{}}}", ls.join(","))
                    }
                }
                None => series.to_string(),
            };
            (key, value.parse::<f64>().unwrap_or(f64::NAN))
        })
        .collect()
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
