//! Copilot usage from GitHub's usage-metrics reports (the API that replaced `/copilot/metrics`
//! when GitHub shut it down on 2026-04-02) and the seats API, per org and enterprise.
//!
//! A report is two steps: the report-link endpoint (through the org's shared GitHub client:
//! its token, budget and retries) answers signed links, and every link is downloaded from
//! the signed-URL host **without** the GitHub token, streamed with a byte cap. Each report
//! is its own scope, so one that fails keeps its last values while the others move on.

pub mod aggregate;
pub mod config;
pub mod days;
pub mod legacy;
pub mod seats;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use config::CopilotConfig;

use crate::metrics::{self, Labels, Sample};
use crate::sources::github::client::{self, Client};
use crate::sources::{BuildError, Component, Context, PollError, Poller, ScopeResult};
use crate::telemetry::{Collect, Rows};
use aggregate::{Computed, Options, Scope};
use wire::{Links, Reader, Record, Rejected};

pub const STATES: &[&str] = &["ok", "no_data", "disabled", "not_found", "error"];

/// One report an org's poll reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Org28,
    Org1,
    Users28,
    Users1,
    Teams1,
    Enterprise28,
    EnterpriseUsers28,
    Enterprise1,
    EnterpriseUsers1,
    EnterpriseTeams1,
}

impl Report {
    pub fn name(self) -> &'static str {
        match self {
            Report::Org28 => "organization-28-day",
            Report::Org1 => "organization-1-day",
            Report::Users28 | Report::EnterpriseUsers28 => "users-28-day",
            Report::Users1 | Report::EnterpriseUsers1 => "users-1-day",
            Report::Enterprise1 => "enterprise-1-day",
            Report::Teams1 | Report::EnterpriseTeams1 => "user-teams-1-day",
            Report::Enterprise28 => "enterprise-28-day",
        }
    }

    fn path(self, owner: &str, day: &str) -> String {
        let (kind, latest) = match self {
            Report::Enterprise28 | Report::EnterpriseUsers28 => ("enterprises", true),
            Report::Enterprise1 | Report::EnterpriseUsers1 | Report::EnterpriseTeams1 => {
                ("enterprises", false)
            }
            Report::Org28 | Report::Users28 => ("orgs", true),
            _ => ("orgs", false),
        };
        if latest {
            format!(
                "/{kind}/{owner}/copilot/metrics/reports/{}/latest",
                self.name()
            )
        } else {
            // GitHub's parameter is `day` (github-stats-exporter sent `date`).
            format!(
                "/{kind}/{owner}/copilot/metrics/reports/{}?day={day}",
                self.name()
            )
        }
    }

    fn window(self) -> &'static str {
        match self {
            Report::Org28 | Report::Users28 | Report::Enterprise28 | Report::EnterpriseUsers28 => {
                "28d"
            }
            _ => "1d",
        }
    }
}

/// copilot-metrics-exporter's own counters (under `copilot.legacy_metrics`).
#[derive(Default)]
pub struct ExporterCounters {
    pub api_requests: AtomicU64,
    pub scrapes: AtomicU64,
    /// Requests to its `/test_metrics`.
    pub tests: AtomicU64,
    pub failed: parking_lot::Mutex<BTreeMap<String, u64>>,
}

impl ExporterCounters {
    fn failed(&self, code: &str) {
        *self.failed.lock().entry(code.to_string()).or_default() += 1;
    }
}

#[async_trait::async_trait]
impl Collect for ExporterCounters {
    async fn collect(&self, out: &mut Rows) {
        // Every scrape of /metrics is answered from what the background reads hold.
        let n = self.scrapes.fetch_add(1, Ordering::Relaxed) + 1;
        let tests = self.tests.load(Ordering::Relaxed);
        out.number(
            metrics::COPILOT_EXPORTER_REQUESTS_TOTAL,
            &[],
            (n + tests) as f64,
        );
        out.number(metrics::COPILOT_EXPORTER_CACHE_HITS_TOTAL, &[], n as f64);
        out.number(
            metrics::COPILOT_EXPORTER_GITHUB_API_REQUESTS_TOTAL,
            &[],
            self.api_requests.load(Ordering::Relaxed) as f64,
        );
        for (code, v) in self.failed.lock().iter() {
            out.number(
                metrics::COPILOT_EXPORTER_REQUESTS_FAILED_TOTAL,
                &[code],
                *v as f64,
            );
        }
    }
}

/// What reading one report came to.
enum Read {
    Records {
        records: Vec<Record>,
        last_day: Option<String>,
        outcomes: BTreeMap<&'static str, u64>,
    },
    /// 204, 404 or 422: a state, not an error.
    State(&'static str),
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Github(#[from] client::Error),
    #[error("the report's links answer is not JSON: {0}")]
    Links(serde_json::Error),
    #[error("download failed: {0}")]
    Download(String),
}

/// The poller of one org (or the enterprise).
pub struct CopilotPoller {
    name: String,
    /// The org (or enterprise slug) in URLs and the `org` label.
    owner: String,
    client: Arc<Client>,
    download: reqwest::Client,
    allow_http: bool,
    cfg: Arc<CopilotConfig>,
    reports: Vec<Report>,
    seats: bool,
    clock: crate::clock::Clock,
    counters: Arc<ExporterCounters>,
    store: crate::store::SharedStore,
    /// The HMAC key of hashed user labels: configured, else made once and kept in the store.
    secret: tokio::sync::OnceCell<Vec<u8>>,
    queue: crate::queue::SharedQueue,
}

pub fn scope_of(owner: &str, part: &str) -> String {
    format!("copilot/{}/{part}", owner.to_ascii_lowercase())
}

impl CopilotPoller {
    async fn secret(&self) -> Result<&[u8], crate::store::Error> {
        self.secret
            .get_or_try_init(|| async {
                if let Some(s) = &self.cfg.user_label_secret {
                    return Ok(s.expose().as_bytes().to_vec());
                }
                if self.cfg.user_label_mode != config::UserLabelMode::Hashed {
                    return Ok(Vec::new());
                }
                if let Some(k) = self.store.kv_get("copilot", "label_key").await? {
                    return Ok(k);
                }
                let k: [u8; 32] = rand::random();
                self.store
                    .kv_put("copilot", "label_key", k.to_vec(), None)
                    .await?;
                Ok(k.to_vec())
            })
            .await
            .map(Vec::as_slice)
    }

    fn options<'a>(&'a self, secret: &'a [u8]) -> Options<'a> {
        Options {
            mode: self.cfg.user_label_mode,
            secret,
            breakdowns: &self.cfg.breakdowns,
            pull_requests: self.cfg.pull_requests,
            max_records: self.cfg.max_records_per_report,
            max_users: self.cfg.max_users_per_report,
        }
    }

    /// The aggregate 1-day reports whose days are counted (`copilot.backfill_days` > 0).
    fn counted(&self) -> impl Iterator<Item = Report> + '_ {
        self.reports.iter().copied().filter(|r| {
            self.cfg.backfill_days > 0 && matches!(r, Report::Org1 | Report::Enterprise1)
        })
    }

    /// Queues every day of the horizon not yet counted, yesterday included; answers how many
    /// that is.
    async fn queue_uncounted(&self, report: Report) -> Result<usize, String> {
        let days = self.cfg.backfill_days;
        let all = days::horizon(self.clock.now(), days);
        let prefix = days::marker_prefix(&self.owner, report.name());
        let counted: std::collections::BTreeSet<String> = self
            .store
            .kv_scan(days::NS, &prefix, days as usize * 2 + 8)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect();
        let missing = days::uncounted(&all, &counted);
        let today = all.last().cloned().unwrap_or_default();
        for day in &missing {
            let job = days::DayJob {
                owner: self.owner.clone(),
                report: report.name().to_string(),
                day: day.clone(),
            };
            // One job per day and poll day: a job that failed for good is queued again
            // tomorrow, while the day is still in the horizon.
            let key = format!("{}@{today}", job.key());
            let payload =
                bytes::Bytes::from(serde_json::to_vec(&job).expect("a day job serializes"));
            self.queue
                .publish(crate::queue::topics::COPILOT_DAYS, Some(&key), payload)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(missing.len())
    }

    /// The latest complete day (UTC): reports cover days that have ended.
    fn yesterday(&self) -> String {
        let now = self.clock.now();
        crate::timestamp::format_day(now - now.rem_euclid(86_400) - 86_400)
    }

    async fn links(&self, report: Report, day: &str) -> Result<Option<Links>, ReadError> {
        self.counters.api_requests.fetch_add(1, Ordering::Relaxed);
        let page = match self
            .client
            .get(&report.path(&self.owner, day), "copilot_report_link", false)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let code = match &e {
                    client::Error::Status { status, .. } => status.to_string(),
                    _ => "request_exception".to_string(),
                };
                self.counters.failed(&code);
                return Err(e.into());
            }
        };
        if page.status == 204 || page.body.trim_ascii().is_empty() {
            self.counters.failed(&page.status.to_string());
            return Ok(None);
        }
        serde_json::from_slice(&page.body)
            .map(Some)
            .map_err(ReadError::Links)
    }

    async fn download(
        &self,
        url: &str,
        reader: &mut Reader,
        budget: &mut u64,
    ) -> Result<bool, ReadError> {
        if !(url.starts_with("https://") || self.allow_http && url.starts_with("http://")) {
            return Err(ReadError::Download(
                "a report link that is not https is not followed".into(),
            ));
        }
        // A signed URL carries its own authorization: the GitHub token never goes with it.
        let mut resp = self
            .download
            .get(url)
            .timeout(self.cfg.download_timeout)
            .send()
            .await
            .map_err(|e| ReadError::Download(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(ReadError::Download(format!(
                "the report host answered {}",
                resp.status().as_u16()
            )));
        }
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ReadError::Download(e.without_url().to_string()))?
        {
            let n = chunk.len() as u64;
            if n > *budget {
                reader.feed(&chunk[..*budget as usize]);
                *budget = 0;
                return Ok(false);
            }
            *budget -= n;
            reader.feed(&chunk);
        }
        Ok(true)
    }

    async fn read(&self, report: Report, day: &str) -> Result<Read, ReadError> {
        let links = match self.links(report, day).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(Read::State("no_data")),
            Err(ReadError::Github(client::Error::Status { status: 422, .. })) => {
                return Ok(Read::State("disabled"));
            }
            Err(ReadError::Github(client::Error::Status { status: 404, .. })) => {
                return Ok(Read::State("not_found"));
            }
            Err(e) => return Err(e),
        };
        let mut outcomes = BTreeMap::new();
        let mut records = Vec::new();
        let mut budget = self.cfg.max_download_bytes;
        // Every file: a report comes in several.
        for url in &links.download_links {
            let mut reader = Reader::new();
            let whole = self.download(url, &mut reader, &mut budget).await?;
            if !whole {
                *outcomes.entry("truncated").or_default() += 1;
            }
            for r in reader.finish() {
                match r {
                    Ok(r) => records.push(r),
                    // Cut by our own byte budget: counted as truncated above.
                    Err(Rejected::Unreadable) if !whole => {}
                    // A file that came whole yet ends mid-record (or is no JSON document)
                    // would show a part of the report as all of it: the read fails instead.
                    Err(Rejected::Unreadable) => {
                        return Err(ReadError::Download(
                            "a report file ends inside a record or is not JSON".into(),
                        ));
                    }
                    Err(why) => *outcomes.entry(why.as_str()).or_default() += 1,
                }
            }
            if budget == 0 {
                break;
            }
        }
        Ok(Read::Records {
            records,
            last_day: links.last_day().map(str::to_string),
            outcomes,
        })
    }

    fn state_samples(&self, report: Report, state: &str, out: &mut Vec<Sample>) {
        for s in STATES {
            let l = Labels::new(
                metrics::DEVMETRICS_COPILOT_REPORT_STATE,
                &[&self.owner, report.name(), s],
            )
            .expect("three labels");
            out.push(Sample::number(
                metrics::DEVMETRICS_COPILOT_REPORT_STATE,
                l,
                (*s == state) as u8 as f64,
            ));
        }
    }

    fn compute(&self, report: Report, records: &[Record], o: &Options) -> Computed {
        match report {
            Report::Org28 | Report::Org1 => {
                aggregate::aggregate(&self.owner, Scope::Org, report.window(), records, o)
            }
            Report::Enterprise28 | Report::Enterprise1 => {
                aggregate::aggregate(&self.owner, Scope::Enterprise, report.window(), records, o)
            }
            Report::Users28
            | Report::Users1
            | Report::EnterpriseUsers28
            | Report::EnterpriseUsers1 => {
                aggregate::users(&self.owner, report.window(), records, o)
            }
            Report::Teams1 | Report::EnterpriseTeams1 => Computed::default(),
        }
    }
}

#[async_trait::async_trait]
impl Poller for CopilotPoller {
    fn name(&self) -> &str {
        &self.name
    }

    fn scopes(&self) -> Vec<String> {
        vec![format!("copilot/{}/", self.owner.to_ascii_lowercase())]
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    fn timeout(&self) -> Duration {
        self.cfg.request_timeout * 4 + self.cfg.download_timeout * 8
    }

    async fn poll(&self) -> Vec<ScopeResult> {
        let day = self.yesterday();
        let secret = match self.secret().await {
            Ok(s) => s,
            Err(e) => {
                return vec![ScopeResult::new(
                    scope_of(&self.owner, "state"),
                    Err(PollError::new("store", e.to_string())),
                )];
            }
        };
        let o = self.options(secret);
        let mut out = Vec::new();
        let mut state = Vec::new();
        let mut users_1d: Option<Vec<Record>> = None;
        let mut readable = Vec::new();
        for report in &self.reports {
            let report = *report;
            let scope = scope_of(&self.owner, report.name());
            let read = self.read(report, &day).await;
            if matches!(read, Ok(Read::Records { .. } | Read::State("no_data"))) {
                readable.push(report);
            }
            match read {
                Ok(Read::Records {
                    records,
                    last_day,
                    outcomes,
                }) => {
                    self.state_samples(report, "ok", &mut state);
                    let mut c = if matches!(report, Report::Teams1 | Report::EnterpriseTeams1) {
                        let users = if report == Report::Teams1 {
                            Report::Users1
                        } else {
                            Report::EnterpriseUsers1
                        };
                        if users_1d.is_none() {
                            users_1d = match self.read(users, &day).await {
                                Ok(Read::Records { records, .. }) => Some(records),
                                _ => None,
                            };
                        }
                        match &users_1d {
                            Some(u) => aggregate::teams(&self.owner, &records, u, &o),
                            None => {
                                out.push(ScopeResult::new(
                                    scope,
                                    Err(PollError::new(
                                        "copilot_report",
                                        "the users' report of the day, which team totals join, could not be read",
                                    )),
                                ));
                                continue;
                            }
                        }
                    } else {
                        self.compute(report, &records, &o)
                    };
                    if report == Report::Org1 && self.cfg.legacy_metrics {
                        out.push(ScopeResult::new(
                            scope_of(&self.owner, "legacy"),
                            Ok(legacy::gauges(&self.owner, &records)),
                        ));
                    }
                    let mut counted = outcomes;
                    counted.insert("read", records.len() as u64);
                    for (why, n) in std::mem::take(&mut c.dropped) {
                        counted.insert(why, n);
                    }
                    for (outcome, n) in counted {
                        let l = Labels::new(
                            metrics::DEVMETRICS_COPILOT_RECORDS,
                            &[&self.owner, report.name(), outcome],
                        )
                        .expect("three labels");
                        state.push(Sample::number(
                            metrics::DEVMETRICS_COPILOT_RECORDS,
                            l,
                            n as f64,
                        ));
                    }
                    if let Some(t) = last_day.and_then(|d| crate::timestamp::parse_day(&d)) {
                        let l = Labels::new(
                            metrics::DEVMETRICS_COPILOT_REPORT_LAST_DAY_TIMESTAMP_SECONDS,
                            &[&self.owner, report.name()],
                        )
                        .expect("two labels");
                        state.push(Sample::number(
                            metrics::DEVMETRICS_COPILOT_REPORT_LAST_DAY_TIMESTAMP_SECONDS,
                            l,
                            t,
                        ));
                    }
                    out.push(ScopeResult::new(scope, Ok(c.samples)));
                    // A teams report later in this poll joins the day's users rows.
                    if matches!(report, Report::Users1 | Report::EnterpriseUsers1) {
                        users_1d = Some(records);
                    }
                }
                Ok(Read::State(s)) => {
                    tracing::info!(org = %self.owner, report = report.name(), state = s, "Copilot report not available");
                    self.state_samples(report, s, &mut state);
                    out.push(ScopeResult::new(scope, Ok(Vec::new())));
                }
                Err(e) => {
                    tracing::warn!(org = %self.owner, report = report.name(), error = %e, "Copilot report not read; its last values stay");
                    self.state_samples(report, "error", &mut state);
                    out.push(ScopeResult::new(
                        scope,
                        Err(PollError::new("copilot_report", e.to_string())),
                    ));
                }
            }
        }
        // Days are queued only while the report answers: a disabled policy or a missing
        // permission would fail every day alike.
        for report in self.counted().filter(|r| readable.contains(r)) {
            match self.queue_uncounted(report).await {
                Ok(n) => {
                    let l = Labels::new(
                        metrics::DEVMETRICS_COPILOT_DAYS_UNCOUNTED,
                        &[&self.owner, report.name()],
                    )
                    .expect("two labels");
                    state.push(Sample::number(
                        metrics::DEVMETRICS_COPILOT_DAYS_UNCOUNTED,
                        l,
                        n as f64,
                    ));
                }
                Err(e) => {
                    tracing::warn!(org = %self.owner, report = report.name(), error = %e, "Copilot days not queued; the next poll tries again")
                }
            }
        }
        if self.seats {
            self.counters.api_requests.fetch_add(1, Ordering::Relaxed);
            let r = seats::read(
                &self.client,
                &self.owner,
                self.clock.now(),
                &self.cfg,
                secret,
            )
            .await;
            if let Err(e) = &r {
                tracing::warn!(org = %self.owner, error = %e, "Copilot seats not read; their last values stay");
            }
            out.push(ScopeResult::new(
                scope_of(&self.owner, "seats"),
                r.map_err(|e| PollError::new("copilot_seats", e.to_string())),
            ));
        }
        out.push(ScopeResult::new(scope_of(&self.owner, "state"), Ok(state)));
        out
    }
}

pub fn component(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(cfg) = &ctx.config.copilot else {
        return Ok(None);
    };
    let cfg = Arc::new(cfg.clone());
    let orgs: Vec<String> = if cfg.orgs.is_empty() {
        ctx.config
            .github
            .as_ref()
            .map(|g| g.orgs.iter().map(|o| o.org.clone()).collect())
            .unwrap_or_default()
    } else {
        cfg.orgs.clone()
    };
    if orgs.is_empty() && cfg.enterprise.is_none() {
        return Err(BuildError::new(
            "copilot",
            "copilot is enabled but names no org: add orgs to the github section (their clients read the reports) or copilot.orgs",
        ));
    }
    // Only the hosts GitHub's links name: a redirect elsewhere is not followed.
    let download = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| BuildError::new("copilot", e.to_string()))?;
    let counters = Arc::new(ExporterCounters::default());
    let mut c = Component::default();
    if cfg.legacy_metrics {
        c.collectors.push(counters.clone());
        // copilot-metrics-exporter's route for checking the counters move.
        let t = counters.clone();
        c.routes = std::mem::take(&mut c.routes).route(
            "/test_metrics",
            axum::routing::get(move || {
                let t = t.clone();
                async move {
                    t.tests.fetch_add(1, Ordering::Relaxed);
                    t.failed("test");
                    "Test metrics incremented"
                }
            }),
        );
    }
    let r = &cfg.reports;
    let chosen = |table: &[(bool, Report)]| -> Vec<Report> {
        table
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, rep)| *rep)
            .collect()
    };
    let org_reports = chosen(&[
        (r.org_28d, Report::Org28),
        (r.org_1d || cfg.legacy_metrics, Report::Org1),
        (r.users_28d, Report::Users28),
        (r.users_1d, Report::Users1),
        (r.teams, Report::Teams1),
    ]);
    let retention = ctx.config.storage.idempotency_retention;
    if days::marker_ttl(cfg.backfill_days) > retention {
        return Err(BuildError::new(
            "copilot",
            format!(
                "copilot.backfill_days ({}) must be at least 2 days shorter than storage.idempotency_retention ({} days): a day whose key is forgotten while it is still in the horizon would count twice",
                cfg.backfill_days,
                retention.as_secs() / 86_400
            ),
        ));
    }
    let mut counting = std::collections::HashMap::new();
    // One poller per org (and the enterprise), reading through the client of `via`.
    let mut add = |owner: &str, via: &str, reports: Vec<Report>, seats: bool, what: &str| {
        let client = ctx.github.get(via).ok_or_else(|| {
            BuildError::new(
                "copilot",
                format!("{what} {via}, which is not an org of the github section (its client reads the reports)"),
            )
        })?;
        // Report files over plain http only where the GitHub API itself is (a test fake).
        let allow_http = ctx.config.github.as_ref().is_some_and(|g| {
            g.orgs
                .iter()
                .any(|o| o.org.eq_ignore_ascii_case(via) && o.api_base_url.starts_with("http://"))
        });
        let poller = CopilotPoller {
            name: format!("copilot/{owner}"),
            owner: owner.to_string(),
            client,
            download: download.clone(),
            allow_http,
            cfg: cfg.clone(),
            reports,
            seats,
            clock: ctx.clock.clone(),
            counters: counters.clone(),
            store: ctx.store.clone(),
            secret: Default::default(),
            queue: ctx.queue.clone(),
        };
        c.scopes.extend(poller.scopes());
        let poller = Arc::new(poller);
        if poller.counted().next().is_some() {
            counting.insert(owner.to_ascii_lowercase(), poller.clone());
        }
        c.pollers.push(poller);
        Ok::<(), BuildError>(())
    };
    for org in &orgs {
        add(org, org, org_reports.clone(), r.seats, "copilot.orgs names")?;
    }
    if let Some(e) = &cfg.enterprise {
        let via = e
            .via_org
            .clone()
            .or_else(|| orgs.first().cloned())
            .unwrap_or_default();
        let reports = chosen(&[
            (r.enterprise_28d, Report::Enterprise28),
            (r.enterprise_users_28d, Report::EnterpriseUsers28),
            (r.enterprise_1d, Report::Enterprise1),
            (r.enterprise_users_1d, Report::EnterpriseUsers1),
            (r.enterprise_teams, Report::EnterpriseTeams1),
        ]);
        add(
            &e.slug,
            &via,
            reports,
            false,
            "copilot.enterprise.via_org is",
        )?;
    }
    if !counting.is_empty() {
        c.consumers.push(crate::sources::Consumer {
            topic: crate::queue::topics::COPILOT_DAYS.to_string(),
            handler: Arc::new(days::Days {
                pollers: counting,
                store: ctx.store.clone(),
            }),
            count: 1,
        });
    }
    Ok(Some(c))
}
