//! `POST /graphql`: the one query the exporter sends, behind the same gate as REST but
//! spending GraphQL's own budget.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;

use super::auth::INSTALLATION_ID;
use super::gate::Resource;
use super::{GithubSim, json_response};
use crate::sources::github::wire::format_time;

impl GithubSim {
    /// The GraphQL counterpart of the REST answer: the gate, then GraphQL's budget.
    fn answer_graphql(&self, h: &HeaderMap, uri: &Uri, data: Value) -> Response {
        if let Some(refused) = self.refuse(h, uri) {
            return refused;
        }
        let spent = self.spend(Resource::Graphql, false);
        // GraphQL's primary limit is an error in a 200 answer, not a 403.
        let body = if spent.exhausted {
            json!({"errors": [{"type": "RATE_LIMITED", "message": format!("API rate limit exceeded for installation ID {INSTALLATION_ID}.")}]})
        } else {
            json!({ "data": data })
        };
        let mut resp = json_response(StatusCode::OK, body);
        spent.headers(resp.headers_mut(), Resource::Graphql);
        resp
    }
}

/// `POST /graphql`: the one query the exporter sends, `repository.pullRequests` ordered by
/// `UPDATED_AT` descending with nested reviews. The cursor is the offset as a string.
pub(super) async fn graphql(
    State(sim): State<Arc<GithubSim>>,
    h: HeaderMap,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "Problems parsing JSON"}),
        );
    };
    let query = req["query"].as_str().unwrap_or("");
    let vars = &req["variables"];
    if !query.contains("pullRequests") {
        return json_response(
            StatusCode::OK,
            json!({"errors": [{"message": "the simulated GitHub answers only the pullRequests query"}]}),
        );
    }
    let (owner, name) = (
        vars["owner"].as_str().unwrap_or(""),
        vars["name"].as_str().unwrap_or(""),
    );
    let offset: usize = vars["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let typename = query.contains("__typename");
    // GraphQL names a bot by its App slug, without REST's `[bot]`.
    let actor = |login: &str| match login.strip_suffix("[bot]") {
        Some(slug) if typename => json!({"__typename": "Bot", "login": slug}),
        Some(slug) => json!({"login": slug}),
        None if typename => json!({"__typename": "User", "login": login}),
        None => json!({"login": login}),
    };
    let data = sim.with_repo(owner, name, |r| {
        let nodes: Vec<Value> = r
            .prs
            .iter()
            .skip(offset)
            .take(50)
            .map(|p| {
                let mut rv = p.reviews.clone();
                rv.sort_by_key(|x| x.1);
                json!({"number": p.number, "createdAt": format_time(p.created), "updatedAt": format_time(p.updated),
                    "mergedAt": p.merged.map(format_time), "author": actor(&p.author),
                    "reviews": {"pageInfo": {"hasNextPage": rv.len() > 100},
                        "nodes": rv.iter().take(100).map(|(u, t)| json!({"author": actor(u), "submittedAt": format_time(*t), "state": "APPROVED"})).collect::<Vec<_>>()}})
            })
            .collect();
        let looping = sim
            .knobs
            .looping_graphql_cursor
            .load(std::sync::atomic::Ordering::Relaxed);
        let more = looping || offset + 50 < r.prs.len();
        let cursor = if looping { 0 } else { offset + 50 };
        json!({"repository": {"pullRequests": {"pageInfo": {"hasNextPage": more, "endCursor": cursor.to_string()}, "nodes": nodes}}})
    });
    sim.answer_graphql(&h, &uri, data.unwrap_or(json!({"repository": null})))
}
