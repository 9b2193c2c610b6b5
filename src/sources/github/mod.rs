//! GitHub: the shared REST [`Client`] (App or token auth per org, pagination, ETags,
//! rate-limit budget) and the contributor-activity pollers (`gh_activity_*`), with their
//! backfill consumer. The fake lives in `crate::sim::github`.

pub mod activity;
pub mod client;
pub mod config;
pub mod poller;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use client::{Budget, Budgets, Client, Error};
pub use config::GithubConfig;
pub use poller::{BACKFILL_TOPIC, BackfillJob, OrgPoller};

use crate::metrics::Value;
use crate::metrics::{self, FamilyId, Labels};
use crate::queue::SharedQueue;
use crate::store::SharedStore;
use crate::telemetry::{Collect, Telemetry};

/// Tests substitute a manual clock to hold windows exact.
pub use crate::clock::Clock;

/// Every org's poller, plus what the backfill consumer needs.
pub struct Github {
    pub pollers: Vec<Arc<OrgPoller>>,
    queue: SharedQueue,
    max_age: std::time::Duration,
    consumers: usize,
    clock: Clock,
}

impl Github {
    pub fn build(
        cfg: &GithubConfig,
        store: SharedStore,
        queue: SharedQueue,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
        clock: Clock,
    ) -> Result<Github, Error> {
        for w in &cfg.compat_warnings {
            tracing::warn!("{w}");
        }
        let gh = Arc::new(cfg.clone());
        let budgets = Budgets::default();
        let mut pollers = Vec::new();
        let mut sharing: HashMap<String, u32> = HashMap::new();
        for org in &cfg.orgs {
            *sharing.entry(org.auth.budget_key()).or_default() += 1;
        }
        for org in &cfg.orgs {
            let client = Arc::new(Client::new(
                cfg,
                org,
                store.clone(),
                telemetry.clone(),
                &budgets,
                shutdown.clone(),
            )?);
            pollers.push(Arc::new(OrgPoller::new(
                org.clone(),
                gh.clone(),
                client,
                store.clone(),
                queue.clone(),
                clock.clone(),
                sharing[&org.auth.budget_key()],
            )));
        }
        let g = Github {
            pollers,
            queue,
            max_age: cfg.backfill.max_message_age,
            consumers: cfg.backfill.consumer_count,
            clock,
        };
        telemetry.add_collector(Arc::new(Collector(g.pollers.clone())));
        Ok(g)
    }

    /// The backfill consumers, to spawn beside the pollers.
    pub fn consumers(
        &self,
        shutdown: CancellationToken,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let by_org: HashMap<String, Arc<OrgPoller>> = self
            .pollers
            .iter()
            .map(|p| (p.org.org.clone(), p.clone()))
            .collect();
        (0..self.consumers)
            .map(|_| {
                poller::run_backfill(
                    by_org.clone(),
                    self.queue.clone(),
                    self.max_age,
                    self.clock.clone(),
                    shutdown.clone(),
                )
            })
            .collect()
    }
}

/// `devmetrics_github_*` from the pollers' live figures.
pub struct Collector(pub Vec<Arc<OrgPoller>>);

impl Collect for Collector {
    fn collect(&self, out: &mut Vec<(FamilyId, Labels, Value)>) {
        let mut push = |fid: FamilyId, labels: &[&str], v: f64| {
            out.push((
                fid,
                Labels::new(fid, labels).expect("catalog arity"),
                Value::Number(v),
            ));
        };
        for p in &self.0 {
            let org = p.org.org.as_str();
            let inst = p.org.auth.installation_label();
            let b = p.client.budget().snapshot();
            let live = p.live();
            if b.known {
                push(
                    metrics::DEVMETRICS_GITHUB_RATE_LIMIT_REMAINING,
                    &[org, &inst],
                    b.remaining as f64,
                );
                push(
                    metrics::DEVMETRICS_GITHUB_RATE_LIMIT_RESET_TIMESTAMP_SECONDS,
                    &[org, &inst],
                    b.reset_at as f64,
                );
            }
            push(
                metrics::DEVMETRICS_GITHUB_SECONDARY_LIMIT_HITS_TOTAL,
                &[org],
                b.secondary_hits as f64,
            );
            push(
                metrics::DEVMETRICS_GITHUB_NOT_MODIFIED_TOTAL,
                &[org],
                p.client
                    .counts
                    .not_modified
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            push(
                metrics::DEVMETRICS_GITHUB_CYCLE_REQUESTS,
                &[org],
                live.cycle_requests as f64,
            );
            push(
                metrics::DEVMETRICS_GITHUB_BUDGET_OVERCOMMITTED,
                &[org],
                f64::from(u8::from(live.overcommitted)),
            );
            push(
                metrics::DEVMETRICS_GITHUB_EFFECTIVE_INTERVAL_SECONDS,
                &[org],
                live.effective_interval,
            );
            push(
                metrics::DEVMETRICS_GITHUB_ORG_COOLDOWN,
                &[org],
                f64::from(u8::from(live.cooldown)),
            );
            push(
                metrics::DEVMETRICS_GITHUB_SCRAPE_PROGRESS_RATIO,
                &[org],
                live.progress,
            );
            push(
                metrics::DEVMETRICS_GITHUB_SCRAPE_ETA_SECONDS,
                &[org],
                live.eta,
            );
            push(
                metrics::DEVMETRICS_GITHUB_SERIES_BUDGET_EXCEEDED,
                &[org],
                f64::from(u8::from(live.series_budget_exceeded)),
            );
            push(
                metrics::DEVMETRICS_GITHUB_LOC_FALLBACK_DEFERRED_TOTAL,
                &[org],
                live.loc_fallback_deferred as f64,
            );
            for (result, n) in &live.backfill {
                push(
                    metrics::DEVMETRICS_GITHUB_BACKFILL_JOBS_TOTAL,
                    &[org, result],
                    *n as f64,
                );
            }
        }
    }
}

/// See [`crate::sim::research_dir`].
pub fn research_dir(sub: &str) -> Option<PathBuf> {
    crate::sim::research_dir(sub)
}
