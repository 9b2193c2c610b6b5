//! The REST endpoints the exporter reads, in GitHub's wire format: Link pagination, ETags
//! that depend on the credentials, 304s that cost nothing, and contributor stats that answer
//! 202 while GitHub computes them.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::data::{Comment, Commit, DAY, Pr};
use super::gate::Resource;
use super::{GithubSim, json_response, not_found};
use crate::sources::github::wire::{format_time, week_start};

type Q = Query<HashMap<String, String>>;
type S = State<Arc<GithubSim>>;

impl GithubSim {
    /// Everything a REST answer goes through: the gate, then ETags and the `core` budget.
    pub(super) fn answer(
        &self,
        h: &HeaderMap,
        uri: &Uri,
        status: StatusCode,
        body: Value,
        link: Option<String>,
    ) -> Response {
        self.answer_spending(Resource::Core, h, uri, status, body, link)
    }

    /// [`Self::answer`], charged to `resource`'s budget.
    pub(super) fn answer_spending(
        &self,
        resource: Resource,
        h: &HeaderMap,
        uri: &Uri,
        status: StatusCode,
        body: Value,
        link: Option<String>,
    ) -> Response {
        if let Some(refused) = self.refuse(h, uri).or_else(|| self.secondary_limit(uri)) {
            return refused;
        }
        let text = serde_json::to_vec(&body).expect("json serializes");
        // GitHub's ETag depends on the credentials too: another token's ETag never matches.
        let mut hash = sha2::Sha256::new();
        hash.update(
            h.get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or_default(),
        );
        hash.update(&text);
        let etag = format!("W/\"{}\"", hex::encode(&hash.finalize()[..16]));
        let not_modified = status == StatusCode::OK
            && h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str());
        let spent = self.spend(resource, not_modified);
        let mut resp = if spent.exhausted {
            json_response(
                StatusCode::FORBIDDEN,
                json!({"message": "API rate limit exceeded for installation."}),
            )
        } else if not_modified {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = (status, text).into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        };
        let hm = resp.headers_mut();
        spent.headers(hm, resource);
        if !spent.exhausted {
            hm.insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
            if let Some(l) = link
                && let Ok(v) = HeaderValue::from_str(&l)
            {
                hm.insert("link", v);
            }
        }
        resp
    }

    /// A listing: the requested page of `items`, or 404 when the org or repo is unknown.
    fn answer_page(
        &self,
        items: Option<Vec<Value>>,
        q: &HashMap<String, String>,
        h: &HeaderMap,
        uri: &Uri,
    ) -> Response {
        let Some(items) = items else {
            return not_found();
        };
        let looping = self
            .knobs
            .looping_pages
            .lock()
            .as_deref()
            .is_some_and(|p| uri.path().contains(p));
        let (body, link) = paginate(items, q, h, uri, looping);
        self.answer(h, uri, StatusCode::OK, body, link)
    }
}

/// `per_page` (GitHub's default 30, at most 100) and `page` (from 1) of a listing request.
pub(super) fn page_params(q: &HashMap<String, String>) -> (usize, usize) {
    let per_page = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    (per_page, page)
}

/// Cuts `items` to the requested page and builds the `Link` header; `looping` gives the last
/// page a `next` link back to the first.
pub(super) fn paginate(
    items: Vec<Value>,
    q: &HashMap<String, String>,
    h: &HeaderMap,
    uri: &Uri,
    looping: bool,
) -> (Value, Option<String>) {
    let (per_page, page) = page_params(q);
    let last = items.len().div_ceil(per_page).max(1);
    let chunk: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let host = h
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url_for = |p: usize| {
        let mut pairs: Vec<String> = q
            .iter()
            .filter(|(k, _)| k.as_str() != "page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.sort();
        pairs.push(format!("page={p}"));
        format!("<http://{host}{}?{}>", uri.path(), pairs.join("&"))
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", url_for(page + 1)));
        links.push(format!("{}; rel=\"last\"", url_for(last)));
    } else if looping {
        links.push(format!("{}; rel=\"next\"", url_for(1)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url_for(page - 1)));
        links.push(format!("{}; rel=\"first\"", url_for(1)));
    }
    (
        Value::Array(chunk),
        (!links.is_empty()).then(|| links.join(", ")),
    )
}

fn time_param(q: &HashMap<String, String>, k: &str) -> Option<i64> {
    q.get(k)
        .and_then(|v| crate::sources::github::wire::parse_time(v))
}

fn user(login: &str) -> Value {
    json!({"login": login, "id": login.len(), "type": if login.ends_with("[bot]") { "Bot" } else { "User" }})
}

/// `GET /orgs/{org}`.
pub(super) async fn org(
    State(sim): S,
    Path(org): Path<String>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = sim.refuse(&h, &uri) {
        return refused;
    }
    if !sim.world.lock().contains_key(&org) {
        return super::not_found();
    }
    sim.answer(
        &h,
        &uri,
        StatusCode::OK,
        json!({"login": org, "id": 100000001, "type": "Organization"}),
        None,
    )
}

pub(super) async fn org_repos(
    State(sim): S,
    Path(org): Path<String>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    // Only the requested page is rendered (the rest stay null until `paginate` cuts them):
    // an org of 10,000 repos is listed a hundred times a cycle.
    let (per_page, page) = page_params(&q);
    let shown = (page - 1) * per_page..page * per_page;
    let items = sim.world.lock().get(&org).map(|o| {
        o.repos
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if !shown.contains(&i) {
                    return Value::Null;
                }
                json!({"name": r.name, "full_name": format!("{org}/{}", r.name), "archived": r.archived,
                    "disabled": false, "fork": r.fork, "private": false, "default_branch": "main",
                    "pushed_at": format_time(r.pushed_at), "updated_at": format_time(r.updated_at)})
            })
            .collect()
    });
    sim.answer_page(items, &q, &h, &uri)
}

pub(super) async fn commits(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let (since, until) = (time_param(&q, "since"), time_param(&q, "until"));
    let items = sim.with_repo(&org, &repo, |r| {
        r.commits
            .iter()
            .filter(|c| since.is_none_or(|s| c.at >= s) && until.is_none_or(|u| c.at <= u))
            .map(commit_json)
            .collect::<Vec<_>>()
    });
    sim.answer_page(items, &q, &h, &uri)
}

fn commit_json(c: &Commit) -> Value {
    let email = format!("{}@users.noreply.github.com", c.login);
    json!({"sha": c.sha, "commit": {
        "author": {"name": c.login, "email": email, "date": format_time(c.authored)},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "date": format_time(c.at)},
        "message": "change"},
      "author": user(&c.login), "committer": user("web-flow"), "parents": []})
}

pub(super) async fn commit_detail(
    State(sim): S,
    Path((org, repo, sha)): Path<(String, String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let found = sim.with_repo(&org, &repo, |r| {
        r.commits.iter().find(|c| c.sha == sha).map(|c| {
            let mut v = commit_json(c);
            v["stats"] = json!({"additions": c.additions, "deletions": c.deletions, "total": c.additions + c.deletions});
            v
        })
    })
    .flatten();
    match found {
        Some(v) => sim.answer(&h, &uri, StatusCode::OK, v, None),
        None => not_found(),
    }
}

fn pr_json(p: &Pr) -> Value {
    json!({"number": p.number, "state": if p.merged.is_some() { "closed" } else { "open" },
        "user": user(&p.author), "created_at": format_time(p.created), "updated_at": format_time(p.updated),
        "merged_at": p.merged.map(format_time), "closed_at": p.merged.map(format_time)})
}

pub(super) async fn pulls(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let by_updated = q.get("sort").map(String::as_str) == Some("updated");
    let asc = q.get("direction").map(String::as_str) == Some("asc");
    let items = sim.with_repo(&org, &repo, |r| {
        let mut prs: Vec<&Pr> = r.prs.iter().collect();
        if by_updated {
            if asc {
                prs.reverse();
            }
        } else {
            prs.sort_by_key(|p| std::cmp::Reverse(p.created));
            if asc {
                prs.reverse();
            }
        }
        prs.into_iter().map(pr_json).collect::<Vec<_>>()
    });
    sim.answer_page(items, &q, &h, &uri)
}

pub(super) async fn reviews(
    State(sim): S,
    Path((org, repo, number)): Path<(String, String, u64)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let items = sim.with_repo(&org, &repo, |r| {
        r.prs.iter().find(|p| p.number == number).map(|p| {
            let mut rv = p.reviews.clone();
            rv.sort_by_key(|x| x.1);
            rv.iter()
                .enumerate()
                .map(|(i, (u, t))| json!({"id": i, "user": user(u), "state": "APPROVED", "submitted_at": format_time(*t)}))
                .collect::<Vec<_>>()
        })
    })
    .flatten();
    sim.answer_page(items, &q, &h, &uri)
}

pub(super) async fn comments(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let since = time_param(&q, "since");
    let by_updated = q.get("sort").map(String::as_str) == Some("updated");
    let desc = q.get("direction").map(String::as_str) == Some("desc");
    let items = sim.with_repo(&org, &repo, |r| {
        let mut cs: Vec<&Comment> = r
            .comments
            .iter()
            .filter(|c| since.is_none_or(|s| c.created >= s))
            .collect();
        if by_updated {
            cs.sort_by_key(|c| (c.created, c.id));
        }
        if desc {
            cs.reverse();
        }
        cs.into_iter()
            .map(|c| json!({"id": c.id, "user": user(&c.login), "created_at": format_time(c.created), "updated_at": format_time(c.created), "body": "comment"}))
            .collect::<Vec<_>>()
    });
    sim.answer_page(items, &q, &h, &uri)
}

pub(super) async fn stats(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let now = sim.clock.now();
    let n202 = sim.knobs.stats_202.load(Ordering::Relaxed);
    let zeroed = sim.knobs.zero_stats_repos.lock().contains(&repo);
    let out = sim.with_repo(&org, &repo, |r| {
        if r.stats_served != r.stats_version {
            r.stats_served = r.stats_version;
            r.stats_202_left = n202;
        }
        if r.stats_202_left > 0 {
            r.stats_202_left -= 1;
            return None;
        }
        if r.commits.is_empty() {
            return Some(Value::Array(Vec::new()));
        }
        let first = week_start(r.commits.iter().map(|c| c.at).min().unwrap_or(now));
        let current = week_start(now);
        let mut by_user: BTreeMap<&str, BTreeMap<i64, (i64, i64, i64)>> = BTreeMap::new();
        for c in &r.commits {
            let e = by_user
                .entry(&c.login)
                .or_default()
                .entry(week_start(c.at))
                .or_default();
            if !zeroed {
                e.0 += c.additions;
                e.1 += c.deletions;
            }
            e.2 += 1;
        }
        let list: Vec<Value> = by_user
            .iter()
            .map(|(u, weeks)| {
                let mut ws = Vec::new();
                let mut w = first;
                while w <= current {
                    let (a, d, c) = weeks.get(&w).copied().unwrap_or_default();
                    ws.push(json!({"w": w, "a": a, "d": d, "c": c}));
                    w += 7 * DAY;
                }
                json!({"author": user(u), "total": weeks.values().map(|x| x.2).sum::<i64>(), "weeks": ws})
            })
            .collect();
        Some(Value::Array(list))
    });
    match out {
        None => not_found(),
        Some(None) => sim.answer(&h, &uri, StatusCode::ACCEPTED, json!({}), None),
        Some(Some(v)) => sim.answer(&h, &uri, StatusCode::OK, v, None),
    }
}

pub(super) async fn rate_limit(State(sim): S) -> Response {
    let r = &sim.rate.lock().core;
    let core = json!({"limit": r.limit, "used": r.limit - r.remaining, "remaining": r.remaining, "reset": r.reset_at});
    json_response(
        StatusCode::OK,
        json!({"resources": {"core": core}, "rate": core}),
    )
}

/// `base...head` on the default branch's linear history: the commits after `base` up to
/// `head`, oldest first, as GitHub lists them (at most 250).
pub(super) async fn compare(
    State(sim): S,
    Path((org, repo, basehead)): Path<(String, String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let Some((base, head)) = basehead.split_once("...") else {
        return not_found();
    };
    let found = sim
        .with_repo(&org, &repo, |r| {
            let at = |sha: &str| r.commits.iter().position(|c| c.sha == sha);
            let (b, hd) = (at(base)?, at(head)?);
            // Newest first: head comes before base.
            let between: Vec<&Commit> = if hd <= b {
                r.commits[hd..b].iter().rev().collect()
            } else {
                Vec::new()
            };
            let status = if hd == b {
                "identical"
            } else if hd < b {
                "ahead"
            } else {
                "behind"
            };
            Some(json!({
                "status": status,
                "ahead_by": between.len(),
                "behind_by": 0,
                "total_commits": between.len(),
                "commits": between.iter().take(250).map(|c| commit_json(c)).collect::<Vec<_>>(),
            }))
        })
        .flatten();
    match found {
        Some(v) => sim.answer(&h, &uri, StatusCode::OK, v, None),
        None => not_found(),
    }
}

/// The pull requests a commit belongs to: merged by it, or one of its own commits.
pub(super) async fn commit_pulls(
    State(sim): S,
    Path((org, repo, sha)): Path<(String, String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let found = sim.with_repo(&org, &repo, |r| {
        r.prs
            .iter()
            .filter(|p| p.merge_sha.as_deref() == Some(sha.as_str()) || p.commits.contains(&sha))
            .map(|p| {
                let mut v = pr_json(p);
                v["merge_commit_sha"] = json!(p.merge_sha);
                v
            })
            .collect::<Vec<_>>()
    });
    match found {
        Some(v) => sim.answer(&h, &uri, StatusCode::OK, json!(v), None),
        None => not_found(),
    }
}

/// A pull request's own commits, oldest first.
pub(super) async fn pull_commits(
    State(sim): S,
    Path((org, repo, number)): Path<(String, String, u64)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let found = sim
        .with_repo(&org, &repo, |r| {
            let p = r.prs.iter().find(|p| p.number == number)?;
            Some(
                p.commits
                    .iter()
                    .filter_map(|s| r.commits.iter().find(|c| &c.sha == s))
                    .map(commit_json)
                    .collect::<Vec<_>>(),
            )
        })
        .flatten();
    match found {
        Some(v) => sim.answer(&h, &uri, StatusCode::OK, json!(v), None),
        None => not_found(),
    }
}
