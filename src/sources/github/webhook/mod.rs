//! GitHub webhooks: the receiver (verifies, durably queues and answers), the payloads' wire
//! types, and the component that hangs the workflow consumers, the push sinks, the runner
//! inventory and missed-delivery recovery off it. Processing happens in `crate::processors`:
//! fed from the queue, or, where the queue commits a message's handling with its publish
//! (the embedded database), computed by the receiver and committed with the publish.

pub mod config;
pub mod receiver;
pub mod wire;

use std::sync::Arc;

pub use config::{HookConfig, WebhooksConfig};
pub use receiver::Receiver;

use super::actions;

use crate::exposition::{appinsights, otlp, sink};
use crate::processors::budget::SeriesBudget;
use crate::processors::{Deliveries, workflows};
use crate::queue::topics;
use crate::sources::{BuildError, Component, Consumer, Context, Poller};

/// github-telemetry's `/health` answer.
pub static HEALTH_BODY: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::json!({"status": "healthy"}));

/// The GitHub webhook receiver with what hangs off it: the workflow consumers, the push
/// sinks, the runner inventory and missed-delivery recovery.
pub fn component(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(gh) = &ctx.config.webhooks.github else {
        return Ok(None);
    };
    let mut c = Component::default();
    // DORA reads deployments, pushes, pull requests and incident issues from the same
    // signed deliveries.
    let routes = if let Some(dora) = &ctx.config.dora {
        let mut events = vec![
            "deployment",
            "deployment_status",
            "push",
            "pull_request",
            "pull_request_review",
        ];
        if dora.github_incident_label.is_some() {
            events.push("issues");
        }
        events
            .into_iter()
            .map(|e| (e, topics::DORA_GITHUB))
            .collect()
    } else {
        Vec::new()
    };
    let receiver = Receiver::with_routes(gh, ctx.queue.clone(), routes);
    c.collectors.push(receiver.stats.clone());
    c.webhook_routes = receiver::routes(receiver.clone());
    // github-telemetry's frontend answered its probe at `/health` with JSON; the Spacelift
    // exporter's `/health` (plain text) keeps the main listener when both sources share it.
    if ctx.config.webhooks.listen_address.is_some() || ctx.config.spacelift.is_none() {
        c.webhook_routes = c.webhook_routes.route(
            "/health",
            axum::routing::get(|| async { axum::Json(HEALTH_BODY.clone()) }),
        );
    }

    let mut sinks: Vec<Arc<dyn sink::Sink>> = Vec::new();
    if let Some(o) = &ctx.config.webhooks.sinks.otlp {
        let headers = o
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        sinks.push(Arc::new(otlp::Otlp::new(
            &o.endpoint,
            o.protocol,
            headers,
            o.service_name.clone(),
        )));
    }
    if let Some(a) = &ctx.config.webhooks.sinks.appinsights {
        sinks.push(Arc::new(appinsights::AppInsights::new(a.clone())));
    }
    let sink_topics = Arc::new(sinks.iter().map(|s| topics::sink(s.name())).collect());
    for s in sinks {
        c.consumers.push(Consumer {
            topic: topics::sink(s.name()),
            handler: Arc::new(sink::Worker(s)),
            count: 1,
        });
    }
    let deliveries = Arc::new(Deliveries {
        store: ctx.store.clone(),
        queue: ctx.queue.clone(),
        opts: Arc::new(gh.workflows.clone()),
        budget: Arc::new(SeriesBudget::new(
            gh.series_budget,
            &ctx.store.snapshot(),
            workflows::SCOPE,
            ctx.telemetry.clone(),
        )),
        sink_topics,
    });
    // With no consumers configured the receiver only queues, as asked.
    if gh.consumers > 0 {
        receiver.handle_with(deliveries.clone());
    }
    c.consumers.push(Consumer {
        topic: topics::GITHUB_WEBHOOKS.to_string(),
        handler: deliveries,
        count: gh.consumers,
    });

    let client = |org: &str| {
        ctx.github.get(org).ok_or_else(|| {
            BuildError::new(
                "webhooks",
                format!("org {org} is not configured under github.orgs"),
            )
        })
    };
    if let Some(r) = &gh.runners {
        for org in &r.orgs {
            let repos = r
                .repos
                .iter()
                .filter(|repo| {
                    repo.split_once('/')
                        .is_some_and(|(o, _)| o.eq_ignore_ascii_case(org))
                })
                .cloned()
                .collect();
            let poller = actions::Runners::new(
                client(org)?,
                repos,
                r.interval,
                gh.workflows.max_runner_labels.max(8),
                gh.workflows.normalize_names,
            );
            c.scopes.extend(poller.scopes());
            c.pollers.push(Arc::new(poller));
        }
    }
    if !gh.recovery.is_empty() {
        let stats = Arc::new(actions::RecoveryStats::default());
        c.collectors.push(stats.clone());
        for r in &gh.recovery {
            let poller = actions::Recovery::new(
                client(&r.org)?,
                r.target,
                ctx.store.clone(),
                r.interval,
                r.lookback,
                stats.clone(),
            );
            c.scopes.extend(poller.scopes());
            c.pollers.push(Arc::new(poller));
        }
    }
    Ok(Some(c))
}
