//! The parts of GitHub's REST API that webhooks and runners need, faked: an org webhook's
//! delivery log (`GET /orgs/{org}/hooks/{id}/deliveries`, cursor pagination, newest first),
//! redelivery (`POST …/deliveries/{delivery_id}/attempts`, which really re-sends the payload
//! to the receiver, signed, and logs the new attempt), and the self-hosted runner inventory
//! (`/orgs/{org}/actions/runners`, `/orgs/{org}/actions/runner-groups`). Mount it beside
//! [`super::GithubSim`]'s router or on its own [`crate::sim::FakeServer`].
//!
//! Credentials are judged as by the rest of the fake ([`Credentials::check`]): the org's
//! endpoints take the personal access token set in [`HooksSim::pat`], the App's own hook
//! (`/app/hook/...`) takes the App's JWT.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::auth::{Accepts, Credentials};
use crate::sim::webhooks::Sender;
use crate::timestamp::format_rfc3339;

#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: u64,
    pub guid: String,
    pub delivered_at: f64,
    pub redelivery: bool,
    pub status_code: u16,
    pub event: String,
}

#[derive(Default)]
pub struct HooksSim {
    /// Every attempt, oldest first.
    pub attempts: Mutex<Vec<Attempt>>,
    payloads: Mutex<HashMap<String, (String, Vec<u8>)>>,
    target: Mutex<Option<Sender>>,
    /// The personal access token the org's endpoints take.
    pub pat: Mutex<Option<String>>,
    pub runners: Mutex<Vec<Value>>,
    pub runner_groups: Mutex<Vec<Value>>,
    next_id: AtomicU64,
    pub redeliveries: AtomicU64,
}

impl HooksSim {
    pub fn new() -> Arc<HooksSim> {
        Arc::new(HooksSim {
            next_id: AtomicU64::new(90_000_000_000),
            ..Default::default()
        })
    }

    /// Where deliveries (and redeliveries) are posted.
    pub fn set_target(&self, sender: Sender) {
        *self.target.lock() = Some(sender);
    }

    /// Delivers like GitHub at time `at`: when `reachable`, posts to the target and logs its
    /// answer; otherwise logs a failed attempt (502) as if the receiver had been down.
    pub async fn deliver(&self, event: &str, guid: &str, body: Vec<u8>, reachable: bool, at: f64) {
        self.payloads
            .lock()
            .insert(guid.to_string(), (event.to_string(), body.clone()));
        let status = if reachable {
            self.post(event, guid, body).await
        } else {
            502
        };
        self.log(guid, event, at, false, status);
    }

    async fn post(&self, event: &str, guid: &str, body: Vec<u8>) -> u16 {
        let sender = self.target.lock().clone();
        match sender {
            Some(s) => s.send(event, guid, body).await.unwrap_or(502),
            None => 502,
        }
    }

    fn log(&self, guid: &str, event: &str, at: f64, redelivery: bool, status_code: u16) {
        self.attempts.lock().push(Attempt {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            guid: guid.to_string(),
            delivered_at: at,
            redelivery,
            status_code,
            event: event.to_string(),
        });
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/orgs/{org}/hooks/{hook}/deliveries", get(deliveries))
            .route(
                "/orgs/{org}/hooks/{hook}/deliveries/{id}/attempts",
                post(redeliver),
            )
            .route("/app/hook/deliveries", get(app_deliveries))
            .route("/app/hook/deliveries/{id}/attempts", post(app_redeliver))
            .route("/orgs/{org}/actions/runners", get(runners))
            .route("/repos/{owner}/{repo}/actions/runners", get(runners))
            .route("/orgs/{org}/actions/runner-groups", get(runner_groups))
            .with_state(self.clone())
    }
}

impl Credentials for HooksSim {
    fn honours(&self, token: &str) -> bool {
        self.pat.lock().as_deref() == Some(token)
    }
}

async fn deliveries(
    State(s): State<Arc<HooksSim>>,
    Path((org, hook)): Path<(String, u64)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::Token) {
        return refused;
    }
    deliveries_page(
        &s,
        &format!("/orgs/{org}/hooks/{hook}/deliveries"),
        &q,
        &headers,
    )
}

fn deliveries_page(
    s: &HooksSim,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let per_page: usize = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let cursor: usize = q.get("cursor").and_then(|v| v.parse().ok()).unwrap_or(0);
    let all: Vec<Attempt> = s.attempts.lock().iter().rev().cloned().collect();
    let page: Vec<Value> = all
        .iter()
        .skip(cursor)
        .take(per_page)
        .map(|a| {
            json!({
                "id": a.id, "guid": a.guid, "delivered_at": format_rfc3339(a.delivered_at),
                "redelivery": a.redelivery, "duration": 0.1,
                "status": if (200..300).contains(&a.status_code) { "OK" } else { "failed to connect" },
                "status_code": a.status_code, "event": a.event, "action": "completed",
                "installation_id": null, "repository_id": 1,
            })
        })
        .collect();
    let mut resp = Json(page).into_response();
    if cursor + per_page < all.len() {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let link = format!(
            "<http://{host}{path}?per_page={per_page}&cursor={}>; rel=\"next\"",
            cursor + per_page
        );
        resp.headers_mut()
            .insert("link", link.parse().expect("ASCII header"));
    }
    resp
}

/// The App's hook: the same log, asked for with the App's JWT as GitHub requires.
async fn app_deliveries(
    State(s): State<Arc<HooksSim>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::AppJwt) {
        return refused;
    }
    deliveries_page(&s, "/app/hook/deliveries", &q, &headers)
}

async fn app_redeliver(
    State(s): State<Arc<HooksSim>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::AppJwt) {
        return refused;
    }
    redeliver_id(&s, id).await
}

async fn redeliver(
    State(s): State<Arc<HooksSim>>,
    Path((_org, _hook, id)): Path<(String, u64, u64)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::Token) {
        return refused;
    }
    redeliver_id(&s, id).await
}

async fn redeliver_id(s: &HooksSim, id: u64) -> Response {
    let guid = s
        .attempts
        .lock()
        .iter()
        .find(|a| a.id == id)
        .map(|a| a.guid.clone());
    let Some(guid) = guid else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    let Some((event, body)) = s.payloads.lock().get(&guid).cloned() else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    s.redeliveries.fetch_add(1, Ordering::Relaxed);
    let status = s.post(&event, &guid, body).await;
    s.log(&guid, &event, crate::clock::now_unix(), true, status);
    (StatusCode::ACCEPTED, Json(json!({}))).into_response()
}

async fn runners(State(s): State<Arc<HooksSim>>, headers: HeaderMap) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::Token) {
        return refused;
    }
    let r = s.runners.lock().clone();
    Json(json!({"total_count": r.len(), "runners": r})).into_response()
}

async fn runner_groups(State(s): State<Arc<HooksSim>>, headers: HeaderMap) -> Response {
    if let Some(refused) = s.check(&headers, Accepts::Token) {
        return refused;
    }
    let g = s.runner_groups.lock().clone();
    Json(json!({"total_count": g.len(), "runner_groups": g})).into_response()
}
