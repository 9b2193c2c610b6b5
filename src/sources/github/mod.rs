//! GitHub: the shared REST [`Client`] (App or token auth per org, pagination, ETags,
//! rate-limit budget) and the contributor-activity pollers (`gh_activity_*`), with their
//! backfill consumer. The fake lives in `crate::sim::github`.

pub mod actions;
pub mod activity;
pub mod client;
pub mod config;
pub mod poller;
pub mod webhook;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use client::{Budget, Budgets, Client, Error};
pub use config::GithubConfig;
pub use poller::{BackfillJob, OrgPoller};

use crate::metrics;
use crate::queue::{SharedQueue, topics};
use crate::sources::{BuildError, Component, Consumer, Context, Poller};
use crate::store::SharedStore;
use crate::telemetry::{Collect, Rows, Telemetry};

/// Tests substitute a manual clock to hold windows exact.
pub use crate::clock::Clock;

/// One client per configured org, built once and shared by every GitHub feature (activity,
/// runners, missed-delivery recovery); orgs on one installation or token share one
/// rate-limit budget.
#[derive(Clone, Default)]
pub struct Clients {
    by_org: BTreeMap<String, Arc<Client>>,
}

impl Clients {
    pub fn build(
        cfg: &GithubConfig,
        store: SharedStore,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Result<Clients, Error> {
        let budgets = Budgets::default();
        let mut by_org = BTreeMap::new();
        for org in &cfg.orgs {
            let client = Client::new(
                cfg,
                org,
                store.clone(),
                telemetry.clone(),
                &budgets,
                shutdown.clone(),
            )?;
            by_org.insert(org.org.to_ascii_lowercase(), Arc::new(client));
        }
        Ok(Clients { by_org })
    }

    /// The client of `org` (as configured under `github.orgs`, any case).
    pub fn get(&self, org: &str) -> Option<Arc<Client>> {
        self.by_org.get(&org.to_ascii_lowercase()).cloned()
    }
}

/// Every org's poller, plus what the backfill consumer needs.
pub struct Github {
    pub pollers: Vec<Arc<OrgPoller>>,
    queue: SharedQueue,
    max_age: std::time::Duration,
    consumers: usize,
    clock: Clock,
}

impl Github {
    /// Builds the pollers on clients of their own, for tests that run activity alone.
    pub fn build(
        cfg: &GithubConfig,
        store: SharedStore,
        queue: SharedQueue,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
        clock: Clock,
    ) -> Result<Github, Error> {
        let clients = Clients::build(cfg, store.clone(), telemetry.clone(), shutdown)?;
        let g = Github::new(cfg, &clients, store, queue, clock);
        telemetry.add_collector(Arc::new(Collector(g.pollers.clone())));
        Ok(g)
    }

    pub fn new(
        cfg: &GithubConfig,
        clients: &Clients,
        store: SharedStore,
        queue: SharedQueue,
        clock: Clock,
    ) -> Github {
        let gh = Arc::new(cfg.clone());
        let mut sharing: HashMap<String, u32> = HashMap::new();
        for org in &cfg.orgs {
            *sharing.entry(org.auth.budget_key()).or_default() += 1;
        }
        let pollers = cfg
            .orgs
            .iter()
            .map(|org| {
                let client = clients
                    .get(&org.org)
                    .expect("the registry has a client for every configured org");
                Arc::new(OrgPoller::new(
                    org.clone(),
                    gh.clone(),
                    client,
                    store.clone(),
                    queue.clone(),
                    clock.clone(),
                    sharing[&org.auth.budget_key()],
                ))
            })
            .collect();
        Github {
            pollers,
            queue,
            max_age: cfg.backfill.max_message_age,
            consumers: cfg.backfill.consumer_count,
            clock,
        }
    }

    /// The handler of backfill jobs.
    pub fn backfill(&self) -> Arc<poller::Backfill> {
        Arc::new(poller::Backfill {
            pollers: self
                .pollers
                .iter()
                .map(|p| (p.org.org.clone(), p.clone()))
                .collect(),
            max_age: self.max_age,
            clock: self.clock.clone(),
        })
    }

    /// The backfill consumers, to spawn beside the pollers.
    pub fn consumers(
        &self,
        shutdown: CancellationToken,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let handler = self.backfill();
        (0..self.consumers)
            .map(|_| {
                crate::queue::run_consumer(
                    self.queue.clone(),
                    topics::GITHUB_BACKFILL.to_string(),
                    handler.clone(),
                    shutdown.clone(),
                )
            })
            .collect()
    }
}

/// Contributor activity (`gh_activity_*`) for every org under `github.orgs`, and its
/// backfill jobs.
pub fn activity(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(cfg) = &ctx.config.github else {
        return Ok(None);
    };
    for w in &cfg.compat_warnings {
        tracing::warn!("{w}");
    }
    if !cfg.activity.enabled {
        return Ok(None);
    }
    let github = Github::new(
        cfg,
        &ctx.github,
        ctx.store.clone(),
        ctx.queue.clone(),
        ctx.clock.clone(),
    );
    let pollers = github
        .pollers
        .iter()
        .map(|p| p.clone() as Arc<dyn Poller>)
        .collect();
    let mut consumers = vec![Consumer {
        topic: topics::GITHUB_BACKFILL.to_string(),
        handler: github.backfill(),
        count: cfg.backfill.consumer_count,
    }];
    let distribute = match cfg.scrape_jobs.distribute {
        config::Distribute::Always => true,
        config::Distribute::Never => false,
        config::Distribute::Auto => ctx.config.queue.backend.is_shared(),
    };
    if distribute {
        for p in &github.pollers {
            p.distribute(poller::Distribution {
                batch_size: cfg.scrape_jobs.batch_size,
                leadership: ctx.leadership.clone(),
            });
        }
        consumers.push(Consumer {
            topic: topics::GITHUB_SCRAPE.to_string(),
            handler: Arc::new(poller::Scrape {
                pollers: github
                    .pollers
                    .iter()
                    .map(|p| (p.org.org.clone(), p.clone()))
                    .collect(),
            }),
            // One job at a time per replica: a job already scrapes its repos concurrently
            // (per_org_concurrency), and the others' jobs go to the other replicas.
            count: 1,
        });
    }
    Ok(Some(Component {
        pollers,
        consumers,
        collectors: vec![Arc::new(Collector(github.pollers.clone()))],
        scopes: cfg
            .orgs
            .iter()
            .map(|o| format!("github/{}/", o.org))
            .collect(),
        ..Default::default()
    }))
}

/// `devmetrics_github_*` from the pollers' live figures.
pub struct Collector(pub Vec<Arc<OrgPoller>>);

#[async_trait::async_trait]
impl Collect for Collector {
    async fn collect(&self, out: &mut Rows) {
        let mut push = |fid, labels: &[&str], v: f64| out.number(fid, labels, v);
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
                metrics::DEVMETRICS_GITHUB_COLD_START_PENDING_REPOS,
                &[org],
                live.cold_pending as f64,
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
            push(
                metrics::DEVMETRICS_GITHUB_CHANGE_DETECTION_FALLBACKS_TOTAL,
                &[org],
                live.detection_fallbacks as f64,
            );
            push(
                metrics::DEVMETRICS_GITHUB_CHANGED_REPOS,
                &[org],
                live.detected_repos as f64,
            );
            push(
                metrics::DEVMETRICS_GITHUB_SEARCH_REQUESTS_TOTAL,
                &[org],
                p.client
                    .counts
                    .search
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            for (reason, n) in &live.graphql_fallbacks {
                push(
                    metrics::DEVMETRICS_GITHUB_GRAPHQL_FALLBACKS_TOTAL,
                    &[org, reason],
                    *n as f64,
                );
            }
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
