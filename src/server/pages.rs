use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::Shared;

pub async fn healthz(State(s): State<Shared>) -> Response {
    let ready = s.ready.load(Ordering::Relaxed);
    let sources = s.telemetry.sources();
    let queue_stats = match s.queue.stats().await {
        Ok(st) => st,
        Err(e) => {
            tracing::debug!(error = %e, "queue figures unavailable for /healthz");
            Vec::new()
        }
    };
    let queue: serde_json::Map<String, serde_json::Value> = queue_stats
        .into_iter()
        .map(|(topic, st)| {
            (
                topic,
                serde_json::json!({
                    "depth": st.depth,
                    "oldest_age_seconds": st.oldest_age_seconds,
                    "dead_letters": st.dead_letters,
                }),
            )
        })
        .collect();
    let snapshot = s.store.snapshot();
    let series: usize = snapshot.scopes.iter().map(|x| x.series_count()).sum();
    let any_down = sources.values().any(|h| h.scrapes > 0 && !h.up);
    // Dropped series are data not shown: degraded until the budget or the filters change.
    let budgets = s.telemetry.series_budgets();
    let store_health = s.store.health();
    // Orgs whose configured interval asks more than their rate-limit budget allows: their
    // cycles are spaced out to the interval the budget sustains.
    let own = s.telemetry.scope().await;
    let gauge = |fid| {
        own.families
            .get(&fid)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(l, v)| Some((l.get("org")?.to_string(), v.as_f64()?)))
            .collect::<BTreeMap<String, f64>>()
    };
    let intervals = gauge(crate::metrics::DEVMETRICS_GITHUB_EFFECTIVE_INTERVAL_SECONDS);
    let overcommitted: BTreeMap<String, serde_json::Value> =
        gauge(crate::metrics::DEVMETRICS_GITHUB_BUDGET_OVERCOMMITTED)
            .into_iter()
            .filter(|(_, v)| *v >= 1.0)
            .map(|(org, _)| {
                let effective = intervals.get(&org).copied();
                (
                    org,
                    serde_json::json!({"effective_interval_seconds": effective}),
                )
            })
            .collect();
    let status = if !ready {
        "starting"
    } else if store_health.is_err() {
        "failing"
    } else if any_down || !budgets.is_empty() || !overcommitted.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    // github-stats-exporter's probes and scripts read `role`, `mode` and `ready`.
    let mode = match status {
        "ok" => "healthy",
        "degraded" => "degraded",
        _ => "unhealthy",
    };
    let role = if s.leadership.is_leader() {
        "leader"
    } else {
        "follower"
    };
    let body = serde_json::json!({
        "status": status,
        "role": role,
        "mode": mode,
        "ready": ready && store_health.is_ok(),
        "version": env!("CARGO_PKG_VERSION"),
        "components": {
            "store": {
                "state": if store_health.is_ok() { "ok" } else { "failing" },
                "error": store_health.err(),
                "scopes": snapshot.scopes.len(),
                "series": series,
                "series_budgets_exceeded": budgets,
            },
            "queue": {"state": "ok", "topics": queue},
            "sources": sources,
            "github_budget_overcommitted": overcommitted,
            "ha": s.leadership.health(),
        },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
