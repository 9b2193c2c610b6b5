//! The Jira webhook receiver: verifies (a Jira admin webhook's `X-Hub-Signature`, or the
//! URL token of a Jira Automation rule), queues durably with the delivery's identifier as
//! its deduplication key, and answers; it never processes.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::HashMap;
use std::sync::Arc;

use super::Enqueued;
use super::config::JiraConfig;
use crate::clock::now_unix;
use crate::metrics;
use crate::processors::Envelope;
use crate::queue::{self, SharedQueue, topics};
use crate::sources::signature;
use crate::telemetry::Outcomes;

pub const PATHS: &[&str] = &["/webhooks/jira", "/api/jira"];

const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "conflict",
    "bad_signature",
    "malformed_json",
    "unavailable",
];

pub struct JiraReceiver {
    config: JiraConfig,
    queue: SharedQueue,
    /// `devmetrics_webhook_deliveries_total{source="jira",outcome}`.
    pub stats: Arc<Outcomes>,
}

impl JiraReceiver {
    pub fn new(config: JiraConfig, queue: SharedQueue) -> Arc<JiraReceiver> {
        if config.insecure_skip_verify && config.secret.is_none() && config.url_token.is_none() {
            tracing::warn!(
                "dora.jira.insecure_skip_verify is set: Jira deliveries are accepted without verification"
            );
        }
        Arc::new(JiraReceiver {
            config,
            queue,
            stats: Arc::new(Outcomes::new(
                metrics::DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL,
                "jira",
                OUTCOMES,
            )),
        })
    }

    /// Either proof is enough: the body's HMAC under the secret, or the URL token. Both are
    /// compared in constant time.
    fn verified(&self, headers: &HeaderMap, token: Option<&str>, body: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        if let Some(secret) = &self.config.secret {
            let tag = headers
                .get("x-hub-signature")
                .and_then(|v| signature::parse(v.as_bytes()));
            if let Some(tag) = tag {
                ok |= signature::matches(&signature::key(secret), body, &tag);
            }
        }
        if let (Some(want), Some(got)) = (&self.config.url_token, token) {
            // Equal lengths first: ct_eq on slices of different lengths is false anyway, but
            // says so without comparing.
            ok |= subtle::ConstantTimeEq::ct_eq(want.expose().as_bytes(), got.as_bytes());
        }
        let open = self.config.secret.is_none()
            && self.config.url_token.is_none()
            && self.config.insecure_skip_verify;
        open || bool::from(ok)
    }

    fn answer(&self, status: StatusCode, outcome: &'static str, message: &str) -> Response {
        self.stats.count(outcome);
        let body = format!("{}\n", serde_json::json!({"status": message}));
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }

    pub async fn handle(&self, headers: &HeaderMap, token: Option<&str>, body: Bytes) -> Response {
        if !self.verified(headers, token, &body) {
            return self.answer(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "invalid signature or token",
            );
        }
        let object = body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{');
        if !object || serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return self.answer(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "invalid JSON payload",
            );
        }
        // Jira retries a failed delivery with the same identifier; without one, the content
        // itself is the key.
        let fingerprint = queue::fingerprint(&body);
        let id = headers
            .get("x-atlassian-webhook-identifier")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(|| format!("body:{fingerprint:016x}"));
        let env = Envelope {
            event: "jira".into(),
            delivery: id.clone(),
            received_at: now_unix(),
            body,
        };
        match super::enqueue(&*self.queue, topics::JIRA_WEBHOOKS, &id, fingerprint, &env).await {
            Enqueued::Accepted => self.answer(StatusCode::ACCEPTED, "accepted", "queued"),
            Enqueued::Duplicate => self.answer(StatusCode::OK, "duplicate", "duplicate delivery"),
            Enqueued::Conflict => self.answer(StatusCode::OK, "conflict", "conflicting delivery"),
            Enqueued::Unavailable => self.answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "temporarily unavailable; retry later",
            ),
        }
    }
}

async fn receive(
    State(r): State<Arc<JiraReceiver>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    r.handle(&headers, q.get("token").map(String::as_str), body)
        .await
}

pub fn routes<S: Clone + Send + Sync + 'static>(receiver: Arc<JiraReceiver>) -> Router<S> {
    let mut r = Router::new();
    for p in PATHS {
        r = r.route(p, post(receive));
    }
    r.with_state(receiver)
}
