use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::sync::atomic::Ordering;

use super::Shared;
use crate::clock::now_unix;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ago(t: Option<f64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let secs = (now_unix() - t).max(0.0) as u64;
            format!("{}s ago", secs)
        }
    }
}

pub async fn landing(State(s): State<Shared>) -> Html<String> {
    let metrics = esc(&s.config.web.telemetry_path);
    let mut rows = String::new();
    for (name, h) in s.telemetry.sources() {
        let health = if h.scrapes == 0 {
            "pending"
        } else if h.up {
            "up"
        } else {
            "down"
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=\"{health}\">{health}</td><td>{}</td><td>{:.3}s</td><td>{}</td></tr>\n",
            esc(&name),
            ago(h.last_success_timestamp),
            h.last_duration_seconds,
            esc(h.last_error.as_deref().unwrap_or("")),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"5\">no sources configured</td></tr>");
    }
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>devmetrics</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}.up{{color:green}}.down{{color:#b00}}</style>
</head><body>
<h1>devmetrics</h1>
<p>Delivery metrics exporter, version {version}.</p>
<ul>
<li><a href="{metrics}">{metrics}</a> — metrics</li>
<li><a href="/healthz">/healthz</a> — component health (JSON)</li>
<li><a href="/readyz">/readyz</a>, <a href="/livez">/livez</a> — probes</li>
</ul>
<h2>Sources</h2>
<table><tr><th>source</th><th>health</th><th>last success</th><th>last duration</th><th>last error</th></tr>
{rows}</table>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
    ))
}

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
    let status = if !ready {
        "starting"
    } else if store_health.is_err() {
        "failing"
    } else if any_down || !budgets.is_empty() {
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
