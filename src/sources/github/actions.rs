//! Pollers that complete the webhook picture through the GitHub REST API (using
//! `sources::github::Client`, never a second client):
//!
//! - [`Runners`]: the self-hosted runner inventory of an org (online, busy, labels, group),
//!   the denominator of runner utilisation;
//! - [`Recovery`]: lists the org webhook's recent deliveries and asks GitHub to redeliver
//!   the ones that failed, which GitHub never retries by itself.

use async_trait::async_trait;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_unix;
use crate::metrics::{self, Labels, Sample};
use crate::processors::workflows::runner_labels;
use crate::sources::github::client::{Client, Error};
use crate::sources::{PollError, Poller, ScopeResult};
use crate::store::SharedStore;

/// Follows `Link: rel="next"` over pages whose list sits under `field`; `as_app` fetches
/// with the App's JWT instead of the installation token.
async fn pages<T: for<'de> Deserialize<'de>>(
    client: &Client,
    first: String,
    endpoint: &'static str,
    as_app: bool,
    mut keep_going: impl FnMut(&[T]) -> bool,
    unwrap: impl Fn(serde_json::Value) -> Option<serde_json::Value>,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    let mut next = Some(first);
    while let Some(p) = next.take() {
        let page = if as_app {
            client.as_app(reqwest::Method::GET, &p, endpoint).await?
        } else {
            client.get(&p, endpoint, false).await?
        };
        let v: serde_json::Value =
            serde_json::from_slice(&page.body).map_err(|e| Error::Decode {
                endpoint,
                message: e.to_string(),
            })?;
        let items: Vec<T> = unwrap(v)
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| Error::Decode {
                endpoint,
                message: e.to_string(),
            })?
            .unwrap_or_default();
        let go_on = keep_going(&items);
        out.extend(items);
        if go_on {
            next = page.next;
        }
    }
    Ok(out)
}

fn field(name: &'static str) -> impl Fn(serde_json::Value) -> Option<serde_json::Value> {
    move |mut v| v.get_mut(name).map(serde_json::Value::take)
}

// ── runner inventory ───────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
struct RunnerGroup {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

#[derive(Deserialize)]
struct Runner {
    status: String,
    busy: bool,
    runner_group_id: Option<u64>,
    #[serde(default)]
    labels: Vec<Label>,
}

pub struct Runners {
    name: String,
    org: String,
    /// Repositories (`owner/name`) whose own runners are listed too.
    repos: Vec<String>,
    client: Arc<Client>,
    interval: Duration,
    max_labels: usize,
    /// As for jobs, so a job's labels and its runners' match.
    normalize_labels: bool,
}

impl Runners {
    pub fn new(
        client: Arc<Client>,
        repos: Vec<String>,
        interval: Duration,
        max_labels: usize,
        normalize_labels: bool,
    ) -> Runners {
        Runners {
            name: format!("github_runners/{}", client.org()),
            org: client.org().to_string(),
            repos,
            client,
            interval,
            max_labels,
            normalize_labels,
        }
    }

    async fn fetch(&self) -> Result<Vec<Sample>, Error> {
        let org = &self.org;
        // Without the runner-groups permission the groups stay unnamed, not unknown.
        let groups: HashMap<u64, String> = match pages::<RunnerGroup>(
            &self.client,
            format!("/orgs/{org}/actions/runner-groups?per_page=100"),
            "actions_runner_groups",
            false,
            |_| true,
            field("runner_groups"),
        )
        .await
        {
            Ok(g) => g.into_iter().map(|g| (g.id, g.name)).collect(),
            Err(Error::Status {
                status: 403 | 404, ..
            }) => HashMap::new(),
            Err(e) => return Err(e),
        };
        let runners: Vec<Runner> = pages(
            &self.client,
            format!("/orgs/{org}/actions/runners?per_page=100"),
            "actions_runners",
            false,
            |_| true,
            field("runners"),
        )
        .await?;
        let mut lists = vec![(String::new(), runners)];
        for repo in &self.repos {
            let r: Vec<Runner> = pages(
                &self.client,
                format!("/repos/{repo}/actions/runners?per_page=100"),
                "actions_repo_runners",
                false,
                |_| true,
                field("runners"),
            )
            .await?;
            lists.push((repo.clone(), r));
        }
        type Key = (String, String, String, &'static str);
        let mut counts: BTreeMap<Key, f64> = BTreeMap::new();
        for (repo, runners) in &lists {
            for r in runners {
                let group = r
                    .runner_group_id
                    .and_then(|g| groups.get(&g).cloned())
                    .unwrap_or_default();
                let names: Vec<String> = r.labels.iter().map(|l| l.name.clone()).collect();
                let state = match (r.status.as_str(), r.busy) {
                    ("online", true) => "busy",
                    ("online", false) => "idle",
                    _ => "offline",
                };
                let labels = runner_labels(&names, self.max_labels, self.normalize_labels);
                *counts
                    .entry((repo.clone(), group, labels, state))
                    .or_default() += 1.0;
            }
        }
        let fid = metrics::DEVMETRICS_WORKFLOW_RUNNERS;
        Ok(counts
            .into_iter()
            .map(|((repo, group, labels, state), n)| {
                let l = Labels::new(fid, &[org.as_str(), &repo, &group, &labels, state])
                    .expect("five labels");
                Sample::number(fid, l, n)
            })
            .collect())
    }
}

#[async_trait]
impl Poller for Runners {
    fn name(&self) -> &str {
        &self.name
    }
    fn scopes(&self) -> Vec<String> {
        vec![format!("webhooks/runners/{}", self.org)]
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn timeout(&self) -> Duration {
        self.interval.min(Duration::from_secs(120))
    }
    async fn poll(&self) -> Vec<ScopeResult> {
        vec![ScopeResult {
            scope: format!("webhooks/runners/{}", self.org),
            version: None,
            result: self
                .fetch()
                .await
                .map_err(|e| PollError::new(e.kind(), e.to_string())),
        }]
    }
}

// ── missed-delivery recovery ───────────────────────────────────────────────────────────

#[derive(Deserialize)]
struct HookDelivery {
    id: u64,
    guid: String,
    delivered_at: String,
    status_code: u16,
}

/// `devmetrics_webhook_redeliveries_total{source="github",result}`.
#[derive(Default)]
pub struct RecoveryStats {
    pub requested: AtomicU64,
    pub refused: AtomicU64,
    pub recovered: AtomicU64,
}

#[async_trait]
impl crate::telemetry::Collect for RecoveryStats {
    async fn collect(&self, out: &mut crate::telemetry::Rows) {
        for (result, v) in [
            ("requested", &self.requested),
            ("refused", &self.refused),
            ("recovered", &self.recovered),
        ] {
            out.number(
                metrics::DEVMETRICS_WEBHOOK_REDELIVERIES_TOTAL,
                &["github", result],
                v.load(Ordering::Relaxed) as f64,
            );
        }
    }
}

/// Whether any attempt of a delivery succeeded, and its latest failed attempt (time, id).
type GuidState = (bool, Option<(f64, u64)>);

const KV_NS: &str = "webhook_redelivery";
/// A failed delivery younger than this is left alone: a redelivery may be in flight.
const GRACE: f64 = 30.0;
/// Redeliveries asked per cycle, to stay clear of secondary rate limits.
const MAX_PER_CYCLE: usize = 100;
/// Redeliveries asked per delivery: a redelivery that failed too (the receiver could not take
/// it: a full disk, an outage) is asked again, this many times at most.
const MAX_ASKS: u32 = 3;

/// What was asked for a delivery GUID: how many redeliveries, the last of which attempt
/// (GitHub's attempt ids grow, so a failed attempt with a greater id came after the ask).
fn parse_mark(mark: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(mark).ok()?;
    match text.strip_prefix("requested") {
        // Marks written before re-asking existed: one ask, of an attempt unknown.
        Some("") => Some((1, u64::MAX)),
        Some(rest) => {
            let (n, at) = rest.strip_prefix(':')?.split_once(':')?;
            Some((n.parse().ok()?, at.parse().ok()?))
        }
        None => None,
    }
}

/// Which webhook's deliveries are recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookTarget {
    /// An org webhook, with the installation token.
    Org(u64),
    /// The GitHub App's own webhook, with the App's JWT.
    App,
}

impl HookTarget {
    /// The `hook` label and scope part: the org webhook's id, or `app`.
    pub fn label(self) -> String {
        match self {
            HookTarget::Org(id) => id.to_string(),
            HookTarget::App => "app".to_string(),
        }
    }
}

pub struct Recovery {
    name: String,
    org: String,
    target: HookTarget,
    client: Arc<Client>,
    store: SharedStore,
    interval: Duration,
    lookback: Duration,
    pub stats: Arc<RecoveryStats>,
}

impl Recovery {
    pub fn new(
        client: Arc<Client>,
        target: HookTarget,
        store: SharedStore,
        interval: Duration,
        lookback: Duration,
        stats: Arc<RecoveryStats>,
    ) -> Recovery {
        Recovery {
            name: format!(
                "github_webhook_recovery/{}/{}",
                client.org(),
                target.label()
            ),
            org: client.org().to_string(),
            target,
            client,
            store,
            interval,
            lookback,
            stats,
        }
    }

    /// One cycle: returns how many deliveries in the window are still failed.
    pub async fn run_once(&self) -> Result<usize, Error> {
        let now = now_unix();
        let since = now - self.lookback.as_secs_f64();
        let org = &self.org;
        let (base, as_app) = match self.target {
            HookTarget::Org(hook) => (format!("/orgs/{org}/hooks/{hook}"), false),
            HookTarget::App => ("/app/hook".to_string(), true),
        };
        let at = |d: &HookDelivery| crate::timestamp::parse_rfc3339(&d.delivered_at);
        let deliveries: Vec<HookDelivery> = pages(
            &self.client,
            format!("{base}/deliveries?per_page=100"),
            "hook_deliveries",
            as_app,
            // Newest first: stop once a page reaches past the window.
            |items: &[HookDelivery]| items.iter().all(|d| at(d).is_some_and(|t| t >= since)),
            Some,
        )
        .await?;
        // Per delivery GUID: did any attempt succeed, and which failed attempt is the latest.
        let mut by_guid: HashMap<&str, GuidState> = HashMap::new();
        for d in &deliveries {
            let Some(t) = at(d).filter(|t| *t >= since) else {
                continue;
            };
            let e = by_guid.entry(d.guid.as_str()).or_default();
            if (200..300).contains(&d.status_code) {
                e.0 = true;
            } else if e.1.is_none_or(|(prev, _)| t > prev) {
                e.1 = Some((t, d.id));
            }
        }
        let mut still_failed = 0;
        let mut asked = 0;
        for (guid, (ok, failed)) in by_guid {
            let mark = self
                .store
                .kv_get(KV_NS, guid)
                .await
                .map_err(|e| Error::Store(e.to_string()))?;
            let asks = mark.as_deref().and_then(parse_mark);
            if ok {
                if asks.is_some() {
                    self.stats.recovered.fetch_add(1, Ordering::Relaxed);
                    self.put(guid, b"recovered").await?;
                }
                continue;
            }
            let Some((t, delivery_id)) = failed else {
                continue;
            };
            still_failed += 1;
            // Asked before: again only if that redelivery failed too (a failed attempt newer
            // than the one asked for), and only so many times.
            let again = match (&mark, asks) {
                (None, _) => true,
                (Some(_), Some((n, asked_for))) => n < MAX_ASKS && delivery_id > asked_for,
                (Some(_), None) => false,
            };
            if !again || now - t < GRACE || asked >= MAX_PER_CYCLE {
                continue;
            }
            let n = asks.map_or(1, |(n, _)| n + 1);
            asked += 1;
            let path = format!("{base}/deliveries/{delivery_id}/attempts");
            let status = if as_app {
                match self
                    .client
                    .as_app(reqwest::Method::POST, &path, "hook_redelivery")
                    .await
                {
                    Ok(p) => p.status,
                    Err(Error::Status { status, .. }) => status,
                    Err(e) => return Err(e),
                }
            } else {
                self.client.post_empty(&path, "hook_redelivery").await?
            };
            if (200..300).contains(&status) {
                self.stats.requested.fetch_add(1, Ordering::Relaxed);
                self.put(guid, format!("requested:{n}:{delivery_id}").as_bytes())
                    .await?;
            } else {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(org, hook = %base, status, "GitHub refused a webhook redelivery");
            }
        }
        Ok(still_failed)
    }

    async fn put(&self, guid: &str, v: &[u8]) -> Result<(), Error> {
        self.store
            .kv_put(KV_NS, guid, v.to_vec(), Some(self.lookback * 2))
            .await
            .map_err(|e| Error::Store(e.to_string()))
    }
}

#[async_trait]
impl Poller for Recovery {
    fn name(&self) -> &str {
        &self.name
    }
    fn scopes(&self) -> Vec<String> {
        vec![format!(
            "webhooks/recovery/{}/{}",
            self.org,
            self.target.label()
        )]
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn timeout(&self) -> Duration {
        self.interval.min(Duration::from_secs(300))
    }
    async fn poll(&self) -> Vec<ScopeResult> {
        let fid = metrics::DEVMETRICS_WEBHOOK_FAILED_DELIVERIES;
        let hook = self.target.label();
        vec![ScopeResult {
            scope: format!("webhooks/recovery/{}/{hook}", self.org),
            version: None,
            result: self
                .run_once()
                .await
                .map(|n| {
                    let l =
                        Labels::new(fid, &[self.org.as_str(), hook.as_str()]).expect("two labels");
                    vec![Sample::number(fid, l, n as f64)]
                })
                .map_err(|e| PollError::new(e.kind(), e.to_string())),
        }]
    }
}
