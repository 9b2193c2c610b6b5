//! The exporter's own telemetry (`devmetrics_*`): cheap in-process counters kept beside the
//! code that moves them, turned into a scope of series at scrape time. Nothing here is
//! persisted: these are process metrics, and Prometheus handles their resets.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix;
use crate::metrics::{self, FamilyId, HistogramValue, Labels, ScopeData, Value, family};

/// A histogram over a catalog family's buckets, for hot paths that are not events.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramValue>,
}

impl Histogram {
    pub fn for_family(fid: FamilyId) -> Self {
        let bounds = family(fid).buckets;
        Histogram {
            bounds,
            inner: Mutex::new(HistogramValue::new(bounds)),
        }
    }

    pub fn observe(&self, v: f64) {
        self.inner.lock().observe(self.bounds, v);
    }

    pub fn value(&self) -> HistogramValue {
        self.inner.lock().clone()
    }
}

/// Health of one source, shown on `/`, `/healthz` and as `devmetrics_source_*`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceHealth {
    pub enabled: bool,
    pub up: bool,
    pub scrapes: u64,
    pub last_duration_seconds: f64,
    pub last_success_timestamp: Option<f64>,
    /// When the next poll is due on the leader.
    #[serde(default)]
    pub next_poll_timestamp: Option<f64>,
    pub last_error: Option<String>,
    /// Polls by result, for `devmetrics_source_scrapes_total`; shared with the other
    /// replicas, not shown on `/healthz`.
    #[serde(skip_serializing, default)]
    results: BTreeMap<String, u64>,
}

/// What the leader shares of a source's health with the other replicas.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SharedHealth {
    pub health: SourceHealth,
    pub results: BTreeMap<String, u64>,
}

/// A series budget that has dropped updates, shown on `/healthz`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BudgetHealth {
    pub limit: usize,
    pub dropped: u64,
}

/// Series gathered at scrape time.
#[derive(Default)]
pub struct Rows(Vec<(FamilyId, Labels, Value)>);

impl Rows {
    pub fn push(&mut self, fid: FamilyId, values: &[&str], v: Value) {
        let labels = Labels::new(fid, values).expect("label arity matches the catalog");
        self.0.push((fid, labels, v));
    }

    pub fn number(&mut self, fid: FamilyId, values: &[&str], v: f64) {
        self.push(fid, values, Value::Number(v));
    }
}

/// Anything that contributes series at scrape time (queue, store, sources' live gauges).
/// Collectors read what they already hold, or ask their backend with a short deadline.
#[async_trait::async_trait]
pub trait Collect: Send + Sync {
    async fn collect(&self, out: &mut Rows);
}

/// Counts of a component's outcomes, a fixed list of names, shown as `family{source, outcome}`
/// (every outcome from zero, so rates need no absent-series handling).
pub struct Outcomes {
    family: FamilyId,
    source: &'static str,
    names: &'static [&'static str],
    counts: Vec<std::sync::atomic::AtomicU64>,
}

impl Outcomes {
    pub fn new(family: FamilyId, source: &'static str, names: &'static [&'static str]) -> Outcomes {
        Outcomes {
            family,
            source,
            names,
            counts: names.iter().map(|_| Default::default()).collect(),
        }
    }

    /// Counts `outcome`; a name not in the list is a programming error, counted nowhere.
    pub fn count(&self, outcome: &str) {
        match self.names.iter().position(|n| *n == outcome) {
            Some(i) => {
                self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            None => debug_assert!(false, "outcome {outcome} is not declared"),
        }
    }

    pub fn get(&self, outcome: &str) -> u64 {
        self.names
            .iter()
            .position(|n| *n == outcome)
            .map_or(0, |i| {
                self.counts[i].load(std::sync::atomic::Ordering::Relaxed)
            })
    }
}

#[async_trait::async_trait]
impl Collect for Outcomes {
    async fn collect(&self, out: &mut Rows) {
        for (i, name) in self.names.iter().enumerate() {
            let v = self.counts[i].load(std::sync::atomic::Ordering::Relaxed);
            out.number(self.family, &[self.source, name], v as f64);
        }
    }
}

pub struct Telemetry {
    started_at: f64,
    revision: &'static str,
    http: Mutex<HashMap<(&'static str, u16), u64>>,
    http_latency: Mutex<HashMap<&'static str, HistogramValue>>,
    upstream: Mutex<HashMap<(&'static str, &'static str, String), u64>>,
    upstream_latency: Mutex<HashMap<(&'static str, &'static str), HistogramValue>>,
    sources: Mutex<BTreeMap<String, SourceHealth>>,
    render: Mutex<BTreeMap<&'static str, f64>>,
    gzip: crate::exposition::CacheTotals,
    budgets: Mutex<BTreeMap<&'static str, BudgetHealth>>,
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started_at: now_unix(),
            revision: option_env!("DEVMETRICS_REVISION").unwrap_or("unknown"),
            http: Default::default(),
            http_latency: Default::default(),
            upstream: Default::default(),
            upstream_latency: Default::default(),
            sources: Default::default(),
            render: Default::default(),
            gzip: Default::default(),
            budgets: Default::default(),
            collectors: Default::default(),
        }
    }
}

impl Telemetry {
    pub fn add_collector(&self, c: Arc<dyn Collect>) {
        self.collectors.lock().push(c);
    }

    pub fn http_request(&self, route: &'static str, code: u16, elapsed: Duration) {
        *self.http.lock().entry((route, code)).or_default() += 1;
        let bounds = family(metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS).buckets;
        self.http_latency
            .lock()
            .entry(route)
            .or_insert_with(|| HistogramValue::new(bounds))
            .observe(bounds, elapsed.as_secs_f64());
    }

    /// Records one upstream request; `status` is the HTTP code or a bounded error kind.
    pub fn upstream_request(
        &self,
        upstream: &'static str,
        endpoint: &'static str,
        status: &str,
        elapsed: Duration,
    ) {
        *self
            .upstream
            .lock()
            .entry((upstream, endpoint, status.to_string()))
            .or_default() += 1;
        let bounds = family(metrics::DEVMETRICS_UPSTREAM_REQUEST_DURATION_SECONDS).buckets;
        self.upstream_latency
            .lock()
            .entry((upstream, endpoint))
            .or_insert_with(|| HistogramValue::new(bounds))
            .observe(bounds, elapsed.as_secs_f64());
    }

    pub fn register_source(&self, name: &str) {
        self.sources
            .lock()
            .entry(name.to_string())
            .or_default()
            .enabled = true;
    }

    /// Records the outcome of one scrape of `source`; `Err` carries a bounded error kind and
    /// a message for the status page (never a secret: callers pass their error's Display).
    pub fn source_scraped(
        &self,
        source: &str,
        elapsed: Duration,
        result: Result<(), (&'static str, String)>,
    ) {
        let mut sources = self.sources.lock();
        let h = sources.entry(source.to_string()).or_default();
        h.enabled = true;
        h.scrapes += 1;
        h.last_duration_seconds = elapsed.as_secs_f64();
        match result {
            Ok(()) => {
                h.up = true;
                h.last_success_timestamp = Some(now_unix());
                h.last_error = None;
                *h.results.entry("success".into()).or_default() += 1;
            }
            Err((kind, msg)) => {
                h.up = false;
                h.last_error = Some(msg);
                *h.results.entry(kind.into()).or_default() += 1;
            }
        }
    }

    /// The last success known from persisted state, before this process has polled.
    pub fn seed_last_success(&self, source: &str, at: f64) {
        let mut sources = self.sources.lock();
        let h = sources.entry(source.to_string()).or_default();
        if h.last_success_timestamp.is_none() {
            h.last_success_timestamp = Some(at);
        }
    }

    /// When `source`'s next poll is due.
    pub fn source_next_poll(&self, source: &str, at: f64) {
        self.sources
            .lock()
            .entry(source.to_string())
            .or_default()
            .next_poll_timestamp = Some(at);
    }

    /// A poll that fetched nothing on purpose; counted, but health and age are untouched.
    pub fn source_skipped(&self, source: &str) {
        let mut sources = self.sources.lock();
        let h = sources.entry(source.to_string()).or_default();
        *h.results.entry("skipped".into()).or_default() += 1;
    }

    pub fn sources(&self) -> BTreeMap<String, SourceHealth> {
        self.sources.lock().clone()
    }

    /// `source`'s health as the leader shares it.
    pub fn shared_health(&self, source: &str) -> Option<SharedHealth> {
        let h = self.sources.lock().get(source)?.clone();
        Some(SharedHealth {
            results: h.results.clone(),
            health: h,
        })
    }

    /// Shows the leader's view of `source` on this replica, which does not poll it.
    pub fn adopt_health(&self, source: &str, shared: SharedHealth) {
        let mut h = shared.health;
        h.enabled = true;
        h.results = shared.results;
        self.sources.lock().insert(source.to_string(), h);
    }

    pub fn rendered(&self, format: &'static str, elapsed: Duration) {
        self.render.lock().insert(format, elapsed.as_secs_f64());
    }

    pub fn rendered_gzip(
        &self,
        format: crate::exposition::Format,
        used: crate::exposition::CacheUse,
    ) {
        self.gzip.add(format, used);
    }

    /// One update of `family` dropped because the family holds `limit` series.
    pub fn series_dropped(&self, family: &'static str, limit: usize) {
        let mut b = self.budgets.lock();
        let e = b.entry(family).or_default();
        e.limit = limit;
        e.dropped += 1;
    }

    /// Families whose series budget dropped updates.
    pub fn series_budgets(&self) -> BTreeMap<&'static str, BudgetHealth> {
        self.budgets.lock().clone()
    }

    pub fn started_at(&self) -> f64 {
        self.started_at
    }

    /// The exporter's own series, as one scope rendered after the store's.
    pub async fn scope(&self) -> ScopeData {
        let mut rows = Rows::default();
        let mut push = |fid: FamilyId, values: &[&str], v: Value| rows.push(fid, values, v);
        let n = |v: f64| Value::Number(v);
        push(
            metrics::DEVMETRICS_BUILD_INFO,
            &[env!("CARGO_PKG_VERSION"), self.revision],
            n(1.0),
        );
        push(
            metrics::DEVMETRICS_START_TIME_SECONDS,
            &[],
            n(self.started_at.floor()),
        );
        for ((route, code), c) in self.http.lock().iter() {
            push(
                metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
                &[route, itoa::Buffer::new().format(*code)],
                n(*c as f64),
            );
        }
        for (route, h) in self.http_latency.lock().iter() {
            push(
                metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS,
                &[route],
                Value::Histogram(Box::new(h.clone())),
            );
        }
        for ((u, e, s), c) in self.upstream.lock().iter() {
            push(
                metrics::DEVMETRICS_UPSTREAM_REQUESTS_TOTAL,
                &[u, e, s],
                n(*c as f64),
            );
        }
        for ((u, e), h) in self.upstream_latency.lock().iter() {
            push(
                metrics::DEVMETRICS_UPSTREAM_REQUEST_DURATION_SECONDS,
                &[u, e],
                Value::Histogram(Box::new(h.clone())),
            );
        }
        for (name, h) in self.sources.lock().iter() {
            push(
                metrics::DEVMETRICS_SOURCE_UP,
                &[name],
                n(if h.up { 1.0 } else { 0.0 }),
            );
            if h.scrapes > 0 {
                push(
                    metrics::DEVMETRICS_SOURCE_SCRAPE_DURATION_SECONDS,
                    &[name],
                    n(h.last_duration_seconds),
                );
            }
            if let Some(t) = h.last_success_timestamp {
                push(
                    metrics::DEVMETRICS_SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS,
                    &[name],
                    n(t),
                );
            }
            if let Some(t) = h.next_poll_timestamp {
                push(
                    metrics::DEVMETRICS_SOURCE_NEXT_POLL_TIMESTAMP_SECONDS,
                    &[name],
                    n(t),
                );
            }
            for (result, c) in &h.results {
                push(
                    metrics::DEVMETRICS_SOURCE_SCRAPES_TOTAL,
                    &[name, result],
                    n(*c as f64),
                );
            }
        }
        for (format, secs) in self.render.lock().iter() {
            push(
                metrics::DEVMETRICS_EXPOSITION_RENDER_DURATION_SECONDS,
                &[format],
                n(*secs),
            );
        }
        for (format, reused, encoded) in self.gzip.read() {
            if reused + encoded > 0 {
                let f = metrics::DEVMETRICS_EXPOSITION_GZIP_SCOPES_TOTAL;
                push(f, &[format, "reused"], n(reused as f64));
                push(f, &[format, "encoded"], n(encoded as f64));
            }
        }
        for (fam, b) in self.budgets.lock().iter() {
            push(
                metrics::DEVMETRICS_SERIES_DROPPED_TOTAL,
                &[fam],
                n(b.dropped as f64),
            );
        }
        let collectors = self.collectors.lock().clone();
        for c in collectors {
            c.collect(&mut rows).await;
        }
        let mut data = ScopeData {
            name: Arc::from("devmetrics/telemetry"),
            updated_at: now_unix(),
            version: 0,
            families: BTreeMap::new(),
            encoded: Default::default(),
        };
        for (fid, labels, v) in rows.0 {
            data.families.entry(fid).or_default().insert(labels, v);
        }
        data
    }
}
