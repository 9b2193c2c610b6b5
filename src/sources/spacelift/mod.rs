//! Spacelift: worker pools, billing, aggregate stack and run figures (the families of the
//! replaced `spacelift-io/prometheus-exporter`), plus per-stack state, runs and drift.
//!
//! One poll runs every enabled query group concurrently under one deadline
//! (`spacelift.scrape_timeout`, token exchange included). Each group is its own scope: a
//! group that fails keeps its last values in the store (their age is
//! `devmetrics_spacelift_collector_last_success_timestamp_seconds{collector}`) and never
//! blanks the others. The `spacelift/scrape` scope, replaced on every poll, says which
//! groups succeeded and how long each took.

pub mod client;
pub mod config;
pub mod wire;

pub use client::{Client, Error};
pub use config::SpaceliftConfig;

use async_trait::async_trait;
use futures_util::future::join_all;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BuildError, Component, Context, PollError, Poller, ScopeResult};
use crate::clock::now_unix;
use crate::metrics::{self, FamilyId, Labels, Sample};
use crate::telemetry::Telemetry;

pub const SOURCE: &str = "spacelift";
/// Collector status, scrape duration and build info: replaced on every poll.
pub const SCRAPE_SCOPE: &str = "spacelift/scrape";
/// Margin past the scrape timeout before `run_poller` abandons a poll outright.
const OUTER_MARGIN: Duration = Duration::from_secs(5);
/// The `goversion` label the replaced exporter's build info carries; we are not Go.
const LANGUAGE: &str = "rust";

/// A query group: one document, one scope, one `collector` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    PublicWorkerPool,
    WorkerPools,
    Usage,
    Aggregates,
    Attention,
    Stacks,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::PublicWorkerPool,
        Group::WorkerPools,
        Group::Usage,
        Group::Aggregates,
        Group::Attention,
        Group::Stacks,
    ];

    /// The `collector` label; the first four are the replaced exporter's refactor's names.
    pub fn collector(self) -> &'static str {
        match self {
            Group::PublicWorkerPool => "publicworkerpool",
            Group::WorkerPools => "workerpools",
            Group::Usage => "usage",
            Group::Aggregates => "aggregates",
            Group::Attention => "attention",
            Group::Stacks => "stacks",
        }
    }

    pub fn scope(self) -> &'static str {
        match self {
            Group::PublicWorkerPool => "spacelift/public_worker_pool",
            Group::WorkerPools => "spacelift/worker_pools",
            Group::Usage => "spacelift/usage",
            Group::Aggregates => "spacelift/aggregates",
            Group::Attention => "spacelift/attention",
            Group::Stacks => "spacelift/stacks",
        }
    }

    fn document(self) -> wire::Document {
        match self {
            Group::PublicWorkerPool => wire::PUBLIC_WORKER_POOL,
            Group::WorkerPools => wire::WORKER_POOLS,
            Group::Usage => wire::USAGE,
            Group::Aggregates => wire::AGGREGATES,
            Group::Attention => wire::ATTENTION,
            Group::Stacks => wire::STACKS,
        }
    }

    fn endpoint(self) -> &'static str {
        match self {
            Group::PublicWorkerPool => "public_worker_pool",
            Group::WorkerPools => "worker_pools",
            Group::Usage => "usage",
            Group::Aggregates => "aggregates",
            Group::Attention => "attention",
            Group::Stacks => "stacks",
        }
    }

    fn enabled(self, c: &SpaceliftConfig) -> bool {
        match self {
            Group::PublicWorkerPool => c.collectors.public_worker_pool,
            Group::WorkerPools => c.collectors.worker_pools,
            Group::Usage => c.collectors.usage,
            Group::Aggregates => c.collectors.aggregates,
            Group::Attention => c.collectors.attention,
            Group::Stacks => c.stacks.enabled,
        }
    }
}

/// What one group produced.
enum Fetched {
    Samples(Vec<Sample>),
    /// Per-stack samples plus how many stacks were left out, by reason; and, when no stack
    /// was left out, the replaced exporter's by-state and by-drift families per stack.
    Stacks {
        samples: Vec<Sample>,
        per_stack_counts: Option<Vec<Sample>>,
        filtered: usize,
        over_budget: usize,
    },
    /// The API refuses this data to the key (machine sessions: per-stack data everywhere,
    /// more on older Self-Hosted), with Spacelift's message: not a failure, and the scope
    /// is emptied.
    Unsupported(String),
}

/// The Spacelift poller.
pub struct Source {
    config: SpaceliftConfig,
    client: Client,
    /// Collectors already warned about as unsupported, so the log says it once rather than
    /// on every poll; one that becomes supported again is warned about anew if it regresses.
    warned_unsupported: parking_lot::Mutex<BTreeSet<Group>>,
}

impl Source {
    pub fn new(config: SpaceliftConfig, telemetry: Arc<Telemetry>) -> Result<Source, Error> {
        let client = Client::new(
            &config.api_endpoint,
            &config.api_key_id,
            config.api_key_secret.clone(),
            config.scrape_timeout,
            telemetry,
        )?;
        Ok(Source {
            config,
            client,
            warned_unsupported: Default::default(),
        })
    }

    /// One scrape: every enabled group, concurrently, under one deadline.
    pub async fn scrape(&self) -> Vec<ScopeResult> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.scrape_timeout;
        let groups: Vec<Group> = Group::ALL
            .into_iter()
            .filter(|g| g.enabled(&self.config))
            .collect();
        let runs = groups.iter().map(|&g| async move {
            let t = Instant::now();
            let r = match tokio::time::timeout_at(deadline, self.fetch(g)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(self.config.scrape_timeout)),
            };
            (g, r, t.elapsed())
        });
        let outcomes = join_all(runs).await;
        let elapsed = started.elapsed();

        let now = now_unix();
        let mut results = Vec::new();
        let mut status = Vec::new();
        let mut any_ok = false;
        let mut omitted = None;
        let mut per_stack = None;
        for (g, r, took) in outcomes {
            let (ok, supported) = match &r {
                Ok(Fetched::Unsupported(_)) => (true, false),
                Ok(_) => (true, true),
                Err(_) => (false, true),
            };
            if ok && supported {
                self.warned_unsupported.lock().remove(&g);
            }
            status.push((g, ok, supported, took));
            let result = match r {
                Ok(Fetched::Samples(s)) => Ok(s),
                Ok(Fetched::Stacks {
                    samples,
                    per_stack_counts,
                    filtered,
                    over_budget,
                }) => {
                    omitted = Some((filtered, over_budget));
                    per_stack = per_stack_counts;
                    Ok(samples)
                }
                Ok(Fetched::Unsupported(message)) => {
                    self.log_unsupported(g, &message);
                    Ok(Vec::new())
                }
                Err(e) => Err(PollError::new(
                    e.kind(),
                    format!("{} collector: {e}", g.collector()),
                )),
            };
            // The fetch time travels with the data in the group's own scope: a failed group
            // keeps both, so the age shown is always the age of the values shown, across
            // restarts too.
            let result = result.map(|mut samples| {
                any_ok = true;
                samples.push(sample(
                    metrics::DEVMETRICS_SPACELIFT_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS,
                    &[g.collector()],
                    now,
                ));
                samples
            });
            results.push(ScopeResult {
                scope: g.scope().to_string(),
                version: None,
                result,
            });
        }
        // The by-state and by-drift families stay in the aggregates' scope whichever data they
        // come from, so a failing stacks query never leaves both forms shown at once.
        if let Some(per_stack) = per_stack
            && let Some(Ok(samples)) = results
                .iter_mut()
                .find(|r| r.scope == Group::Aggregates.scope())
                .map(|r| &mut r.result)
        {
            samples.retain(|s| !COUNTS.contains(&s.family));
            samples.extend(per_stack);
        }
        // A group switched off keeps nothing: its scope may still hold series persisted by
        // an earlier run, which would otherwise be shown forever without being refreshed.
        for g in Group::ALL.into_iter().filter(|g| !g.enabled(&self.config)) {
            results.push(ScopeResult {
                scope: g.scope().to_string(),
                version: None,
                result: Ok(Vec::new()),
            });
        }
        results.push(ScopeResult {
            scope: SCRAPE_SCOPE.to_string(),
            version: None,
            result: Ok(scrape_samples(elapsed, &status, any_ok, omitted)),
        });
        results
    }

    async fn fetch(&self, g: Group) -> Result<Fetched, Error> {
        let r = match g {
            Group::PublicWorkerPool => self
                .query::<wire::PublicWorkerPoolData>(g, None)
                .await
                .map(|d| Fetched::Samples(public_worker_pool_samples(&d.public_worker_pool))),
            Group::WorkerPools => self
                .query::<wire::WorkerPoolsData>(g, None)
                .await
                .map(|d| Fetched::Samples(worker_pool_samples(&d.worker_pools))),
            Group::Usage => self
                .query::<wire::UsageData>(g, None)
                .await
                .map(|d| Fetched::Samples(usage_samples(&d.usage))),
            Group::Aggregates => self
                .query::<wire::AggregatesData>(g, None)
                .await
                .map(|d| Fetched::Samples(aggregate_samples(&d.metrics.unwrap_or_default()))),
            Group::Attention => self
                .query::<wire::AttentionData>(g, None)
                .await
                .map(|d| Fetched::Samples(attention_samples(&d.metrics.unwrap_or_default()))),
            Group::Stacks => self.stacks().await,
        };
        match r {
            Err(Error::Unsupported { message }) => Ok(Fetched::Unsupported(message)),
            // The attention fields come from the replaced exporter's unmerged parity work,
            // so a Spacelift release may lack them. Every other group selects fields the
            // replaced exporter (or Spacelift's own tools) rely on: a mismatch there is a
            // bug and fails the group.
            Err(Error::Schema { message }) if g == Group::Attention => {
                Ok(Fetched::Unsupported(message))
            }
            r => r,
        }
    }

    /// Warns the first time a collector turns out unsupported; later polls log at debug.
    fn log_unsupported(&self, g: Group, message: &str) {
        let first = self.warned_unsupported.lock().insert(g);
        let consequence = match g {
            Group::Stacks => {
                "Spacelift does not serve per-stack data to this API key (machine session): no \
                 spacelift_stack_* or spacelift_runs series will be exported; set \
                 spacelift.stacks.enabled: false to stop asking"
            }
            _ => {
                "Spacelift refuses this collector's data to this API key or release: its series are absent"
            }
        };
        if first {
            tracing::warn!(
                collector = g.collector(),
                spacelift_message = message,
                "{consequence}; spacelift_scrape_collector_supported is 0"
            );
        } else {
            tracing::debug!(
                collector = g.collector(),
                spacelift_message = message,
                "collector still unsupported"
            );
        }
    }

    async fn query<T: serde::de::DeserializeOwned>(
        &self,
        g: Group,
        variables: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        self.client
            .query(g.endpoint(), g.document(), variables)
            .await
    }

    async fn stacks(&self) -> Result<Fetched, Error> {
        /// Far beyond any account's stacks at any page size.
        const MAX_STACK_PAGES: usize = 10_000;
        let mut nodes = Vec::new();
        let mut after: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut input = serde_json::json!({ "first": self.config.stacks.page_size });
            if let Some(c) = &after {
                input["after"] = serde_json::Value::String(c.clone());
            }
            let page: wire::StacksData = self
                .query(Group::Stacks, Some(serde_json::json!({ "input": input })))
                .await?;
            let conn = page.search_stacks;
            nodes.extend(conn.edges.into_iter().map(|e| e.node));
            if !conn.page_info.has_next_page {
                break;
            }
            // A cursor missing or already followed would read the same pages until the
            // deadline; stopping there would show part of the stacks as all of them.
            match conn.page_info.end_cursor {
                Some(c) if seen.insert(c.clone()) && seen.len() <= MAX_STACK_PAGES => {
                    after = Some(c)
                }
                _ => {
                    return Err(Error::Decode {
                        message: "stacks pagination cursor missing or repeated".into(),
                    });
                }
            }
        }
        let total = nodes.len();
        let counts = per_stack_counts(&nodes);
        let (samples, filtered, over_budget) = stack_samples(nodes, &self.config.stacks);
        // Per stack only when every stack is in: otherwise `sum by (state)` would fall short.
        let per_stack_counts = (filtered == 0 && over_budget == 0).then_some(counts);
        if over_budget > 0 {
            tracing::warn!(
                stacks = total,
                omitted = over_budget,
                budget = self.config.stacks.series_budget,
                "Spacelift per-stack series budget reached; narrow spacelift.stacks filters or raise series_budget"
            );
        }
        Ok(Fetched::Stacks {
            samples,
            per_stack_counts,
            filtered,
            over_budget,
        })
    }
}

#[async_trait]
impl Poller for Source {
    fn name(&self) -> &str {
        SOURCE
    }

    fn scopes(&self) -> Vec<String> {
        vec![format!("{SOURCE}/")]
    }

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn timeout(&self) -> Duration {
        self.config.scrape_timeout + OUTER_MARGIN
    }

    async fn poll(&self) -> Vec<ScopeResult> {
        self.scrape().await
    }
}

/// The Spacelift poller and the replaced exporter's `/health`.
pub fn component(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(config) = &ctx.config.spacelift else {
        return Ok(None);
    };
    let source = Source::new(config.clone(), ctx.telemetry.clone())
        .map_err(|e| BuildError::new("spacelift", e))?;
    let scopes = source.scopes();
    Ok(Some(Component {
        pollers: vec![Arc::new(source)],
        routes: compat_routes(),
        scopes,
        ..Default::default()
    }))
}

/// The replaced exporter's `/health`: always 200 with its fixed body; it never checked the
/// API, and probes configured against it expect exactly that.
pub fn compat_routes() -> axum::Router<crate::server::Shared> {
    axum::Router::new().route("/health", axum::routing::get(|| async { HEALTH_BODY }))
}

pub const HEALTH_BODY: &str = "Countdown complete - ready to serve metrics!";

fn sample(fid: FamilyId, labels: &[&str], v: f64) -> Sample {
    let labels = Labels::new(fid, labels).expect("label arity is fixed by this module");
    Sample::number(fid, labels, v)
}

pub fn public_worker_pool_samples(p: &wire::PublicWorkerPool) -> Vec<Sample> {
    vec![
        sample(
            metrics::SPACELIFT_PUBLIC_WORKER_POOL_RUNS_PENDING,
            &[],
            p.pending_runs as f64,
        ),
        sample(
            metrics::SPACELIFT_PUBLIC_WORKER_POOL_WORKERS_BUSY,
            &[],
            p.busy_workers as f64,
        ),
        sample(
            metrics::SPACELIFT_PUBLIC_WORKER_POOL_PARALLELISM,
            &[],
            p.parallelism as f64,
        ),
    ]
}

pub fn worker_pool_samples(pools: &[wire::WorkerPool]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(pools.len() * 4);
    for p in pools {
        let l = [p.id.as_str(), p.name.as_str()];
        let drained = p.workers.iter().filter(|w| w.drained).count();
        out.push(sample(
            metrics::SPACELIFT_WORKER_POOL_RUNS_PENDING,
            &l,
            p.pending_runs as f64,
        ));
        out.push(sample(
            metrics::SPACELIFT_WORKER_POOL_WORKERS_BUSY,
            &l,
            p.busy_workers as f64,
        ));
        out.push(sample(
            metrics::SPACELIFT_WORKER_POOL_WORKERS,
            &l,
            p.workers.len() as f64,
        ));
        out.push(sample(
            metrics::SPACELIFT_WORKER_POOL_WORKERS_DRAINED,
            &l,
            drained as f64,
        ));
    }
    out
}

pub fn usage_samples(u: &wire::Usage) -> Vec<Sample> {
    vec![
        sample(
            metrics::SPACELIFT_CURRENT_BILLING_PERIOD_START_TIMESTAMP_SECONDS,
            &[],
            u.billing_period_start as f64,
        ),
        sample(
            metrics::SPACELIFT_CURRENT_BILLING_PERIOD_END_TIMESTAMP_SECONDS,
            &[],
            u.billing_period_end as f64,
        ),
        sample(
            metrics::SPACELIFT_CURRENT_BILLING_PERIOD_USED_PRIVATE_SECONDS,
            &[],
            u.used_private_minutes as f64 * 60.0,
        ),
        sample(
            metrics::SPACELIFT_CURRENT_BILLING_PERIOD_USED_PUBLIC_SECONDS,
            &[],
            u.used_public_minutes as f64 * 60.0,
        ),
        sample(
            metrics::SPACELIFT_CURRENT_BILLING_PERIOD_USED_SEATS,
            &[],
            u.used_seats as f64,
        ),
    ]
}

/// The families the replaced exporter documents with `state`, `stack` and `space`.
const COUNTS: [FamilyId; 2] = [
    metrics::SPACELIFT_CURRENT_STACKS_COUNT_BY_STATE,
    metrics::SPACELIFT_CURRENT_RESOURCES_COUNT_BY_DRIFT,
];

/// The by-state and by-drift families per stack and space (the replaced exporter's
/// documented form), from a complete stack listing: each stack counts 1 under its state, and
/// its resources under `IN_SYNC` and `DRIFTED` (the aggregates' states, so `sum by (state)`
/// is the same in either form); zero counts are left out.
pub fn per_stack_counts(nodes: &[wire::StackNode]) -> Vec<Sample> {
    let mut nodes: Vec<&wire::StackNode> = nodes.iter().collect();
    nodes.sort_by(|a, b| (&a.space, &a.id).cmp(&(&b.space, &b.id)));
    nodes.dedup_by(|a, b| a.id == b.id);
    let mut out = Vec::new();
    for s in nodes {
        out.push(sample(
            metrics::SPACELIFT_CURRENT_STACKS_COUNT_BY_STATE,
            &[&s.state, &s.id, &s.space],
            1.0,
        ));
        let drifted = s.entities.iter().filter(|e| e.drifted.is_some()).count();
        for (state, n) in [
            ("IN_SYNC", s.entities.len() - drifted),
            ("DRIFTED", drifted),
        ] {
            if n > 0 {
                out.push(sample(
                    metrics::SPACELIFT_CURRENT_RESOURCES_COUNT_BY_DRIFT,
                    &[state, &s.id, &s.space],
                    n as f64,
                ));
            }
        }
    }
    out
}

/// The replaced exporter's rules: labelled families take `labels[0]` and skip points
/// without labels; single-value families take the first point and are absent when empty.
/// Two points with the same label are summed rather than exported twice.
pub fn aggregate_samples(m: &wire::Aggregates) -> Vec<Sample> {
    let mut out = Vec::new();
    for (name, points) in [
        (
            metrics::SPACELIFT_CURRENT_STACKS_COUNT_BY_STATE,
            &m.stacks_count_by_state,
        ),
        (
            metrics::SPACELIFT_CURRENT_RESOURCES_COUNT_BY_DRIFT,
            &m.resources_count_by_drift,
        ),
    ] {
        let mut by_label: BTreeMap<&str, f64> = BTreeMap::new();
        for p in points {
            if let Some(l) = p.labels.first() {
                *by_label.entry(l.as_str()).or_default() += p.value;
            }
        }
        // Account-wide: no stack, no space.
        out.extend(
            by_label
                .into_iter()
                .map(|(l, v)| sample(name, &[l, "", ""], v)),
        );
    }
    for (name, points) in [
        (
            metrics::SPACELIFT_CURRENT_AVG_STACK_SIZE_BY_RESOURCE_COUNT,
            &m.avg_stack_size_by_resource_count,
        ),
        (
            metrics::SPACELIFT_CURRENT_AVERAGE_RUN_DURATION,
            &m.average_run_duration,
        ),
        (
            metrics::SPACELIFT_CURRENT_MEDIAN_RUN_DURATION,
            &m.median_run_duration,
        ),
    ] {
        if let Some(p) = points.first() {
            out.push(sample(name, &[], p.value));
        }
    }
    out
}

pub fn attention_samples(m: &wire::Attention) -> Vec<Sample> {
    vec![
        sample(
            metrics::SPACELIFT_RUNS_NEEDING_APPROVAL,
            &[],
            m.needs_approval_runs.len() as f64,
        ),
        sample(
            metrics::SPACELIFT_RUNS_REQUIRING_ATTENTION,
            &[],
            m.runs_requiring_attention.len() as f64,
        ),
    ]
}

/// Per-stack series for the stacks the filters admit, in (space, stack id) order, until
/// the series budget is reached. Returns the samples and the stacks filtered out and left
/// over the budget.
pub fn stack_samples(
    mut nodes: Vec<wire::StackNode>,
    cfg: &config::StacksConfig,
) -> (Vec<Sample>, usize, usize) {
    const PER_STACK: usize = 3;
    nodes.sort_by(|a, b| (&a.space, &a.id).cmp(&(&b.space, &b.id)));
    nodes.dedup_by(|a, b| a.id == b.id);
    let mut out = Vec::new();
    let mut runs: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let (mut filtered, mut over_budget) = (0, 0);
    let mut full = false;
    for s in &nodes {
        if !cfg.admits(&s.space, &s.id, &s.name) {
            filtered += 1;
            continue;
        }
        let new_run_keys = {
            let mut keys: Vec<(&str, &str)> = s
                .runs
                .iter()
                .map(|r| (r.run_type.as_str(), r.state.as_str()))
                .filter(|(t, st)| {
                    !runs.contains_key(&(s.space.clone(), t.to_string(), st.to_string()))
                })
                .collect();
            keys.sort();
            keys.dedup();
            keys.len()
        };
        if full || out.len() + runs.len() + PER_STACK + new_run_keys > cfg.series_budget {
            full = true;
            over_budget += 1;
            continue;
        }
        let l = [s.id.as_str(), s.space.as_str()];
        out.push(sample(
            metrics::SPACELIFT_STACK_STATE,
            &[&s.id, &s.space, &s.state],
            1.0,
        ));
        out.push(sample(
            metrics::SPACELIFT_STACK_RESOURCES,
            &l,
            s.entities.len() as f64,
        ));
        out.push(sample(
            metrics::SPACELIFT_STACK_RESOURCES_DRIFTED,
            &l,
            s.entities.iter().filter(|e| e.drifted.is_some()).count() as f64,
        ));
        for r in &s.runs {
            *runs
                .entry((s.space.clone(), r.run_type.clone(), r.state.clone()))
                .or_default() += 1.0;
        }
    }
    out.extend(
        runs.into_iter()
            .map(|((space, t, st), v)| sample(metrics::SPACELIFT_RUNS, &[&space, &t, &st], v)),
    );
    (out, filtered, over_budget)
}

fn scrape_samples(
    elapsed: Duration,
    status: &[(Group, bool, bool, Duration)],
    any_ok: bool,
    omitted: Option<(usize, usize)>,
) -> Vec<Sample> {
    let mut out = vec![sample(
        metrics::SPACELIFT_SCRAPE_DURATION_SECONDS,
        &[],
        elapsed.as_secs_f64(),
    )];
    let bit = |b: bool| if b { 1.0 } else { 0.0 };
    for (g, ok, supported, took) in status {
        let c = [g.collector()];
        out.push(sample(
            metrics::SPACELIFT_SCRAPE_COLLECTOR_SUCCESS,
            &c,
            bit(*ok),
        ));
        out.push(sample(
            metrics::SPACELIFT_SCRAPE_COLLECTOR_SUPPORTED,
            &c,
            bit(*supported),
        ));
        out.push(sample(
            metrics::SPACELIFT_SCRAPE_COLLECTOR_DURATION_SECONDS,
            &c,
            took.as_secs_f64(),
        ));
    }
    // The replaced exporter emitted build info only on a successful scrape; dashboards use
    // its presence as "the exporter reaches Spacelift".
    if any_ok {
        out.push(sample(
            metrics::SPACELIFT_BUILD_INFO,
            &[
                env!("CARGO_PKG_VERSION"),
                option_env!("DEVMETRICS_REVISION").unwrap_or("unknown"),
                LANGUAGE,
            ],
            1.0,
        ));
    }
    if let Some((filtered, over_budget)) = omitted {
        out.push(sample(
            metrics::DEVMETRICS_SPACELIFT_STACKS_OMITTED,
            &["filtered"],
            filtered as f64,
        ));
        out.push(sample(
            metrics::DEVMETRICS_SPACELIFT_STACKS_OMITTED,
            &["budget"],
            over_budget as f64,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;

    fn value(samples: &[Sample], fid: FamilyId, labels: &[&str]) -> Option<f64> {
        let l = Labels::new(fid, labels).unwrap();
        samples
            .iter()
            .find(|s| s.family == fid && s.labels == l)
            .and_then(|s| match s.value {
                Value::Number(v) => Some(v),
                _ => None,
            })
    }

    #[test]
    fn aggregates_follow_the_replaced_exporter() {
        let m = wire::Aggregates {
            stacks_count_by_state: vec![
                wire::DataPoint {
                    value: 3.0,
                    labels: vec!["FINISHED".into()],
                },
                wire::DataPoint {
                    value: 9.0,
                    labels: vec![],
                },
            ],
            avg_stack_size_by_resource_count: vec![],
            average_run_duration: vec![wire::DataPoint {
                value: 1.5e11,
                labels: vec![],
            }],
            ..Default::default()
        };
        let s = aggregate_samples(&m);
        assert_eq!(s.len(), 2, "empty-label point and empty list skipped");
        assert_eq!(
            value(
                &s,
                metrics::SPACELIFT_CURRENT_STACKS_COUNT_BY_STATE,
                &["FINISHED", "", ""]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&s, metrics::SPACELIFT_CURRENT_AVERAGE_RUN_DURATION, &[]),
            Some(1.5e11)
        );
    }

    fn stack(id: &str, space: &str, runs: usize) -> wire::StackNode {
        wire::StackNode {
            id: id.into(),
            name: id.to_uppercase(),
            space: space.into(),
            state: "FINISHED".into(),
            runs: (0..runs)
                .map(|i| wire::RunNode {
                    run_type: "TRACKED".into(),
                    state: if i % 2 == 0 { "FINISHED" } else { "FAILED" }.into(),
                })
                .collect(),
            entities: vec![
                wire::EntityNode { drifted: None },
                wire::EntityNode { drifted: Some(1) },
            ],
        }
    }

    #[test]
    fn stacks_are_filtered_and_budgeted() {
        let mut cfg = config::StacksConfig {
            enabled: true,
            include_spaces: vec![],
            exclude_spaces: vec!["sandbox".into()],
            include_stacks: vec![],
            exclude_stacks: vec![],
            series_budget: 8,
            page_size: 50,
        };
        let nodes = vec![
            stack("b", "prod", 2),
            stack("a", "prod", 1),
            stack("c", "prod", 0),
            stack("x", "sandbox", 1),
        ];
        let (s, filtered, over) = stack_samples(nodes.clone(), &cfg);
        // a: 3 + 1 run key; b: 3 + 1 new key (FAILED) = 8; c would pass the budget.
        assert_eq!((filtered, over), (1, 1));
        assert_eq!(s.len(), 8);
        assert_eq!(
            value(
                &s,
                metrics::SPACELIFT_STACK_RESOURCES_DRIFTED,
                &["a", "prod"]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                metrics::SPACELIFT_RUNS,
                &["prod", "TRACKED", "FINISHED"]
            ),
            Some(2.0)
        );
        cfg.series_budget = 100;
        let (_, _, over) = stack_samples(nodes, &cfg);
        assert_eq!(over, 0);
    }
}
