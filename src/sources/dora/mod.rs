//! DORA: deployments from GitHub's deployment statuses (and CD tools), changes from pushes
//! and pull requests, incidents from Jira webhooks and labelled GitHub issues, per team
//! (dora-exporter's families and the four keys, each computed from the events' own times).

pub mod api;
pub mod catalog;
pub mod changes;
pub mod config;
pub mod deployments;
pub mod incidents;
pub mod jira;
pub mod keys;
pub mod log;
pub mod lookup;
pub mod prs;
pub mod receiver;
pub mod snapshot;

use std::sync::Arc;

pub use config::DoraConfig;

use crate::metrics;
use crate::processors::Envelope;
use crate::queue::{Dedupe, Delivery, Failure, Published, Queue, topics};
use crate::sources::{BuildError, Component, Consumer, Context};
use crate::telemetry::Outcomes;

/// What queueing an accepted delivery came to; each receiver answers it in its own words.
pub(crate) enum Enqueued {
    Accepted,
    /// The key was queued before with the same content.
    Duplicate,
    /// The key was queued before with other content; nothing was queued.
    Conflict,
    Unavailable,
}

/// Queues `env` on `topic` under the deduplication `key`, with the body's `fingerprint`,
/// within the time a sender waits for its answer.
pub(crate) async fn enqueue(
    queue: &dyn Queue,
    topic: &str,
    key: &str,
    fingerprint: i64,
    env: &Envelope,
) -> Enqueued {
    let publish = queue.publish_with(
        topic,
        Some(Dedupe {
            key,
            fingerprint: Some(fingerprint),
        }),
        env.encode(),
    );
    match tokio::time::timeout(std::time::Duration::from_secs(8), publish).await {
        Ok(Ok(Published::Published)) => Enqueued::Accepted,
        Ok(Ok(Published::Duplicate)) => Enqueued::Duplicate,
        Ok(Ok(Published::Conflict)) => Enqueued::Conflict,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, topic, "an accepted delivery could not be queued");
            Enqueued::Unavailable
        }
        Err(_) => Enqueued::Unavailable,
    }
}

/// The envelope a queued DORA delivery carries; a message that is not one never will be.
pub(crate) fn envelope(delivery: &Delivery) -> Result<Envelope, Failure> {
    Envelope::decode(&delivery.payload)
        .ok_or_else(|| Failure::permanent("envelope", "queued message is not a delivery envelope"))
}

/// Counts a processed delivery's outcome; a store error is retried.
pub(crate) fn settle(
    stats: &Outcomes,
    processed: Result<&'static str, crate::store::Error>,
) -> Result<(), Failure> {
    match processed {
        Ok(outcome) => {
            stats.count(outcome);
            Ok(())
        }
        Err(e) => Err(Failure::new(e.kind(), e)),
    }
}

pub fn component(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(cfg) = &ctx.config.dora else {
        return Ok(None);
    };
    let mut c = Component::default();
    let backstage = cfg.backstage.clone().map(|b| {
        let b = catalog::Backstage::new(b, ctx.store.clone(), ctx.telemetry.clone());
        c.collectors.push(b.stats.clone());
        b.clone().run(ctx.shutdown.clone());
        b
    });
    let teams = catalog::TeamOf {
        teams: cfg.teams.clone(),
        backstage,
    };
    let incidents = Arc::new(incidents::Incidents::new(ctx.store.clone(), teams.clone()));
    // Deployment statuses arrive through the GitHub receiver (its secret verifies them),
    // which queues them on their own topic when this source is enabled.
    let stats = Arc::new(Outcomes::new(
        metrics::DEVMETRICS_DORA_EVENTS_TOTAL,
        "github",
        deployments::OUTCOMES,
    ));
    c.collectors.push(stats.clone());
    c.consumers.push(Consumer {
        topic: topics::DORA_GITHUB.to_string(),
        handler: Arc::new(deployments::Deployments {
            store: ctx.store.clone(),
            teams: teams.clone(),
            production: cfg.production_environments.clone(),
            failed_deployments_are_failures: cfg.failed_deployments_are_failures,
            incident_label: cfg.github_incident_label.clone(),
            incidents: incidents.clone(),
            prs: prs::PullRequests {
                store: ctx.store.clone(),
            },
            lookup: lookup::Lookup {
                clients: ctx.github.clone(),
                store: ctx.store.clone(),
            },
            stats,
        }),
        count: 1,
    });
    c.scopes.push(deployments::SCOPE.to_string());
    c.scopes.push(incidents::SCOPE.to_string());
    c.scopes.push(keys::SCOPE.to_string());
    c.pollers.push(Arc::new(keys::FourKeys {
        store: ctx.store.clone(),
        teams: teams.names(),
        interval: cfg.four_keys_interval,
        clock: ctx.clock.clone(),
        failed_deployments_are_failures: cfg.failed_deployments_are_failures,
    }));
    if ctx.config.webhooks.github.is_none() {
        tracing::warn!(
            "dora is enabled without webhooks.github: deployment statuses arrive through the GitHub receiver, so none will be counted"
        );
    }
    if let Some(path) = cfg.import_snapshot.clone() {
        let store = ctx.store.clone();
        tokio::spawn(async move {
            match snapshot::import(&*store, &path).await {
                Ok(i) if i.already => {
                    tracing::debug!(file = %path.display(), "dora-exporter snapshot imported before")
                }
                Ok(i) if i.series > 0 => tracing::info!(
                    file = %path.display(),
                    series = i.series,
                    skipped = ?i.skipped,
                    "dora-exporter snapshot imported: its counters continue"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "dora-exporter snapshot not imported"),
            }
        });
    }
    if let Some(token) = &cfg.deployments_api_token {
        let api = api::DeploymentsApi::new(token.clone(), ctx.queue.clone());
        c.collectors.push(api.stats.clone());
        c.webhook_routes = std::mem::take(&mut c.webhook_routes).merge(api::routes(api));
    }
    if let Some(jira) = &cfg.jira {
        let r = receiver::JiraReceiver::new(jira.clone(), ctx.queue.clone());
        c.collectors.push(r.stats.clone());
        c.webhook_routes = std::mem::take(&mut c.webhook_routes).merge(receiver::routes(r));
        let stats = Arc::new(Outcomes::new(
            metrics::DEVMETRICS_DORA_EVENTS_TOTAL,
            "jira",
            incidents::OUTCOMES,
        ));
        c.collectors.push(stats.clone());
        c.consumers.push(Consumer {
            topic: topics::JIRA_WEBHOOKS.to_string(),
            handler: Arc::new(incidents::JiraIncidents {
                incidents: incidents.clone(),
                config: jira.clone(),
                stats,
            }),
            count: 1,
        });
    }
    Ok(Some(c))
}
