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

use crate::metrics::{FamilyId, Labels, id};
use crate::queue::SharedQueue;
use crate::store::{SharedStore, Value};
use crate::telemetry::{Collect, Telemetry};

/// Wall-clock seconds; tests substitute a manual clock to hold windows exact.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

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
        let mut push = |name: &str, labels: &[&str], v: f64| {
            let fid = id(name);
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
                    "devmetrics_github_rate_limit_remaining",
                    &[org, &inst],
                    b.remaining as f64,
                );
                push(
                    "devmetrics_github_rate_limit_reset_timestamp_seconds",
                    &[org, &inst],
                    b.reset_at as f64,
                );
            }
            push(
                "devmetrics_github_secondary_limit_hits_total",
                &[org],
                b.secondary_hits as f64,
            );
            push(
                "devmetrics_github_not_modified_total",
                &[org],
                p.client
                    .counts
                    .not_modified
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            push(
                "devmetrics_github_cycle_requests",
                &[org],
                live.cycle_requests as f64,
            );
            push(
                "devmetrics_github_budget_overcommitted",
                &[org],
                f64::from(u8::from(live.overcommitted)),
            );
            push(
                "devmetrics_github_effective_interval_seconds",
                &[org],
                live.effective_interval,
            );
            push(
                "devmetrics_github_org_cooldown",
                &[org],
                f64::from(u8::from(live.cooldown)),
            );
            push(
                "devmetrics_github_scrape_progress_ratio",
                &[org],
                live.progress,
            );
            push("devmetrics_github_scrape_eta_seconds", &[org], live.eta);
            push(
                "devmetrics_github_series_budget_exceeded",
                &[org],
                f64::from(u8::from(live.series_budget_exceeded)),
            );
            push(
                "devmetrics_github_loc_fallback_deferred_total",
                &[org],
                live.loc_fallback_deferred as f64,
            );
            for (result, n) in &live.backfill {
                push(
                    "devmetrics_github_backfill_jobs_total",
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
