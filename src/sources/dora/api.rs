//! `POST /api/deployments`: deployments reported by CD tools outside GitHub (Argo CD, Jenkins,
//! Spinnaker…), authenticated with a bearer token, queued durably with the client's id as the
//! deduplication key, and counted like a GitHub deployment status.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::Arc;

use super::Enqueued;
use super::deployments::{API_EVENT, ApiDeployment};
use crate::clock::now_unix;
use crate::config::Secret;
use crate::metrics;
use crate::processors::Envelope;
use crate::queue::{self, SharedQueue, topics};
use crate::telemetry::Outcomes;

pub const PATH: &str = "/api/deployments";

const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "conflict",
    "bad_token",
    "invalid",
    "unavailable",
];

pub struct DeploymentsApi {
    token: Secret,
    queue: SharedQueue,
    /// `devmetrics_webhook_deliveries_total{source="deployments_api",outcome}`.
    pub stats: Arc<Outcomes>,
}

impl DeploymentsApi {
    pub fn new(token: Secret, queue: SharedQueue) -> Arc<DeploymentsApi> {
        Arc::new(DeploymentsApi {
            token,
            queue,
            stats: Arc::new(Outcomes::new(
                metrics::DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL,
                "deployments_api",
                OUTCOMES,
            )),
        })
    }

    fn answer(
        &self,
        status: StatusCode,
        outcome: &'static str,
        body: serde_json::Value,
    ) -> Response {
        self.stats.count(outcome);
        (status, axum::Json(body)).into_response()
    }

    pub async fn handle(&self, headers: &HeaderMap, body: Bytes) -> Response {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let ok = subtle::ConstantTimeEq::ct_eq(self.token.expose().as_bytes(), given.as_bytes());
        if !bool::from(ok) {
            return self.answer(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                serde_json::json!({"error": "a valid bearer token is required"}),
            );
        }
        let d: ApiDeployment = match serde_json::from_slice(&body) {
            Ok(d) => d,
            Err(e) => {
                // serde's message names the field and the position, never the token.
                return self.answer(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    serde_json::json!({"error": format!("not a deployment: {e}")}),
                );
            }
        };
        if let Err(field) = d.check() {
            return self.answer(
                StatusCode::BAD_REQUEST,
                "invalid",
                serde_json::json!({"error": format!("invalid {field}")}),
            );
        }
        let fingerprint = queue::fingerprint(&body);
        let key = format!("api:{}", d.id);
        let env = Envelope {
            event: API_EVENT.into(),
            delivery: key.clone(),
            received_at: now_unix(),
            body,
        };
        match super::enqueue(&*self.queue, topics::DORA_GITHUB, &key, fingerprint, &env).await {
            Enqueued::Accepted => self.answer(
                StatusCode::ACCEPTED,
                "accepted",
                serde_json::json!({"status": "queued", "id": d.id}),
            ),
            Enqueued::Duplicate => self.answer(
                StatusCode::OK,
                "duplicate",
                serde_json::json!({"status": "duplicate", "id": d.id}),
            ),
            Enqueued::Conflict => self.answer(
                StatusCode::CONFLICT,
                "conflict",
                serde_json::json!({"error": "this id was reported before with other content", "id": d.id}),
            ),
            Enqueued::Unavailable => self.answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                serde_json::json!({"error": "temporarily unavailable; retry later"}),
            ),
        }
    }
}

async fn receive(
    State(api): State<Arc<DeploymentsApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    api.handle(&headers, body).await
}

pub fn routes<S: Clone + Send + Sync + 'static>(api: Arc<DeploymentsApi>) -> Router<S> {
    Router::new().route(PATH, post(receive)).with_state(api)
}
