//! `GET /search/issues`, as much of it as org-wide change detection asks: the `org:` and
//! `updated:` qualifiers, `sort=updated`, pagination capped at the first 1,000 results (422
//! past them, as GitHub answers), and its own budget of 30 requests a minute.
//!
//! Every pull request is an item, updated when it is opened, reviewed or merged. Issue
//! comments are not tied to an issue in the generated world, so each is an issue of its
//! own, updated when the comment was written: what matters is that a comment moves an
//! issue's `updated_at` into the searched range, as on GitHub.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

use super::gate::Resource;
use super::rest::{page_params, paginate};
use super::{GithubSim, json_response};
use crate::sources::github::wire::{format_time, parse_time};

/// GitHub serves no result past this many, whatever the page size.
pub const MAX_RESULTS: usize = 1000;

/// The `updated:` qualifier as an inclusive range.
fn updated_range(term: &str) -> Option<(i64, i64)> {
    let v = term.strip_prefix("updated:")?;
    if let Some((a, b)) = v.split_once("..") {
        let from = if a == "*" { i64::MIN } else { parse_time(a)? };
        let to = if b == "*" { i64::MAX } else { parse_time(b)? };
        return Some((from, to));
    }
    if let Some(t) = v.strip_prefix(">=") {
        return Some((parse_time(t)?, i64::MAX));
    }
    if let Some(t) = v.strip_prefix('>') {
        return Some((parse_time(t)? + 1, i64::MAX));
    }
    if let Some(t) = v.strip_prefix("<=") {
        return Some((i64::MIN, parse_time(t)?));
    }
    if let Some(t) = v.strip_prefix('<') {
        return Some((i64::MIN, parse_time(t)? - 1));
    }
    None
}

pub(super) async fn issues(
    State(sim): State<Arc<GithubSim>>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = sim.refuse(&h, &uri) {
        return refused;
    }
    let query = q.get("q").cloned().unwrap_or_default();
    let mut org = None;
    let mut range = (i64::MIN, i64::MAX);
    for term in query.split_whitespace() {
        if let Some(o) = term.strip_prefix("org:") {
            org = Some(o.to_string());
        } else if term.starts_with("updated:") {
            match updated_range(term) {
                Some(r) => range = r,
                None => {
                    return json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Validation Failed", "errors": [{"message": format!("invalid qualifier {term}")}]}),
                    );
                }
            }
        }
    }
    let host = h
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut items: Vec<(i64, Value)> = Vec::new();
    if let Some(org) = &org
        && let Some(o) = sim.world.lock().get(org)
    {
        let inside = |t: i64| t >= range.0 && t <= range.1;
        for r in &o.repos {
            let repo_url = format!("http://{host}/repos/{org}/{}", r.name);
            for p in r.prs.iter().filter(|p| inside(p.updated)) {
                items.push((
                    p.updated,
                    json!({"number": p.number, "repository_url": repo_url,
                        "updated_at": format_time(p.updated), "created_at": format_time(p.created),
                        "user": {"login": p.author}, "state": if p.merged.is_some() { "closed" } else { "open" },
                        "pull_request": {"url": format!("{repo_url}/pulls/{}", p.number)}}),
                ));
            }
            for c in r.comments.iter().filter(|c| inside(c.created)) {
                items.push((
                    c.created,
                    json!({"number": 1_000_000 + c.id, "repository_url": repo_url,
                        "updated_at": format_time(c.created), "created_at": format_time(c.created),
                        "user": {"login": c.login}, "state": "open", "comments": 1}),
                ));
            }
        }
    }
    let asc = q.get("order").map(String::as_str) == Some("asc");
    items.sort_by_key(|(t, _)| if asc { *t } else { -*t });
    let total = items.len();
    let (per_page, page) = page_params(&q);
    if (page - 1) * per_page >= MAX_RESULTS && total > 0 {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"message": "Only the first 1000 search results are available", "documentation_url": "https://docs.github.com/v3/search/"}),
        );
    }
    let served: Vec<Value> = items
        .into_iter()
        .take(MAX_RESULTS)
        .map(|(_, v)| v)
        .collect();
    let (page_items, link) = paginate(served, &q, &h, &uri, false);
    sim.answer_spending(
        Resource::Search,
        &h,
        &uri,
        StatusCode::OK,
        json!({"total_count": total, "incomplete_results": false, "items": page_items}),
        link,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers() {
        let t = parse_time("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(
            updated_range("updated:>=2026-12-04T10:00:00Z"),
            Some((t, i64::MAX))
        );
        assert_eq!(
            updated_range("updated:2026-12-04T10:00:00Z..2026-12-04T10:00:10Z"),
            Some((t, t + 10))
        );
        assert_eq!(updated_range("updated:soon"), None);
    }
}
