//! The gate every API request passes before it is answered: credentials, the fail-by-path
//! knob, secondary limits, and the primary budgets, REST's `core`, GraphQL's and search's
//! apart, as GitHub counts them.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use rand::Rng;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::auth::{Accepts, Credentials};
use super::{GithubSim, json_response};

/// One primary budget: `limit` requests per hour window.
pub(super) struct Budget {
    pub(super) limit: u64,
    pub(super) remaining: u64,
    pub(super) reset_at: i64,
    /// Requests charged to it so far.
    spent: u64,
    /// Seconds between refills: an hour, a minute for search.
    window: i64,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget::per(limit, 3600)
    }

    fn per(limit: u64, window: i64) -> Budget {
        Budget {
            limit,
            remaining: limit,
            reset_at: crate::clock::now_secs() + window,
            spent: 0,
            window,
        }
    }

    /// Charges one request, unless `free` (a 304 costs nothing), refilling first if the
    /// window has ended.
    fn spend(&mut self, free: bool) -> Spent {
        let now = crate::clock::now_secs();
        if now >= self.reset_at {
            self.remaining = self.limit;
            self.reset_at = now + self.window;
        }
        let exhausted = self.remaining == 0 && !free;
        if !free && !exhausted {
            self.remaining -= 1;
            self.spent += 1;
        }
        Spent {
            limit: self.limit,
            remaining: self.remaining,
            reset_at: self.reset_at,
            exhausted,
        }
    }
}

pub(super) struct Rate {
    pub(super) core: Budget,
    /// GraphQL queries spend their own budget (one point per query here).
    graphql: Budget,
    /// Search spends its own: 30 requests a minute for an installation.
    search: Budget,
    /// The current secondary-limit window: (started, ends). GitHub refuses every request of
    /// the installation until it ends.
    secondary: Option<(Instant, Instant)>,
    /// Requests sent well into a secondary-limit window (not merely in flight when it began).
    secondary_ignored: u64,
}

impl Rate {
    pub(super) fn new() -> Rate {
        Rate {
            core: Budget::new(5000),
            graphql: Budget::new(5000),
            search: Budget::per(30, 60),
            secondary: None,
            secondary_ignored: 0,
        }
    }
}

/// Which budget a request spends: the name GitHub gives it in `x-ratelimit-resource`.
#[derive(Clone, Copy)]
pub(super) enum Resource {
    Core,
    Graphql,
    Search,
}

/// What a request left of its budget.
pub(super) struct Spent {
    limit: u64,
    remaining: u64,
    reset_at: i64,
    pub(super) exhausted: bool,
}

impl Spent {
    pub(super) fn headers(&self, hm: &mut HeaderMap, resource: Resource) {
        let num = |n: i64| HeaderValue::from_str(&n.to_string()).expect("digits");
        hm.insert("x-ratelimit-limit", num(self.limit as i64));
        hm.insert("x-ratelimit-remaining", num(self.remaining as i64));
        hm.insert(
            "x-ratelimit-used",
            num((self.limit - self.remaining) as i64),
        );
        hm.insert("x-ratelimit-reset", num(self.reset_at));
        hm.insert(
            "x-ratelimit-resource",
            HeaderValue::from_static(match resource {
                Resource::Core => "core",
                Resource::Graphql => "graphql",
                Resource::Search => "search",
            }),
        );
    }
}

impl GithubSim {
    /// Sets the primary budget (per hour window) and refills it.
    pub fn set_rate_limit(&self, limit: u64) {
        let core = &mut self.rate.lock().core;
        *core = Budget {
            spent: core.spent,
            ..Budget::new(limit)
        };
    }

    /// Sets GraphQL's budget (per hour window) and refills it.
    pub fn set_graphql_limit(&self, limit: u64) {
        let graphql = &mut self.rate.lock().graphql;
        *graphql = Budget {
            spent: graphql.spent,
            ..Budget::new(limit)
        };
    }

    /// Requests sent more than 50 ms into a secondary-limit window: a client that pauses
    /// all its workers sends none.
    pub fn secondary_ignored(&self) -> u64 {
        self.rate.lock().secondary_ignored
    }

    /// Requests so far that counted against the primary limit (not 304s, not token exchange).
    pub fn counted(&self) -> u64 {
        self.rate.lock().core.spent
    }

    /// Search requests answered (they spend the separate search budget).
    pub fn search_requests(&self) -> u64 {
        self.rate.lock().search.spent
    }

    /// GraphQL queries answered (they spend the separate GraphQL budget).
    pub fn graphql_queries(&self) -> u64 {
        self.rate.lock().graphql.spent
    }

    /// Requests whose path contains `contains` answer 502, `times` times.
    pub fn fail_path(&self, contains: &str, times: u32) {
        self.fail_path_with(contains, times, 502);
    }

    /// Requests whose path contains `contains` answer `status`, `times` times.
    pub fn fail_path_with(&self, contains: &str, times: u32, status: u16) {
        *self.knobs.fail_path.lock() = Some((contains.to_string(), times, status));
    }

    /// The answer of the fail-by-path knob, while it has failures left for this path.
    pub(super) fn fail_by_path(&self, uri: &Uri) -> Option<Response> {
        let mut fp = self.knobs.fail_path.lock();
        if let Some((p, n, status)) = fp.as_mut()
            && uri.path().contains(p.as_str())
            && *n > 0
        {
            *n -= 1;
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            return Some(json_response(status, json!({"message": "Server Error"})));
        }
        None
    }

    /// What REST and GraphQL answers check first: credentials, then the fail-by-path knob.
    pub(super) fn refuse(&self, h: &HeaderMap, uri: &Uri) -> Option<Response> {
        self.check(h, Accepts::Token)
            .or_else(|| self.fail_by_path(uri))
    }

    /// The 403 of a secondary limit: while a window is open, or when the `secondary_next`
    /// knob opens one on this request.
    pub(super) fn secondary_limit(&self, uri: &Uri) -> Option<Response> {
        let in_window = {
            let mut r = self.rate.lock();
            let now = Instant::now();
            match r.secondary {
                Some((from, until)) if now < until => {
                    if now > from + Duration::from_millis(50) {
                        r.secondary_ignored += 1;
                    }
                    true
                }
                _ => false,
            }
        };
        let on_path = self
            .knobs
            .secondary_path
            .lock()
            .as_deref()
            .is_none_or(|p| uri.path().contains(p));
        let opens = !in_window
            && on_path
            && self
                .knobs
                .secondary_next
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        if !in_window && !opens {
            return None;
        }
        if opens {
            let now = Instant::now();
            self.rate.lock().secondary = Some((now, now + Duration::from_secs(1)));
        }
        let mut r = json_response(
            StatusCode::FORBIDDEN,
            json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        Some(r)
    }

    /// Charges one request to `resource`'s budget, unless `free`.
    pub(super) fn spend(&self, resource: Resource, free: bool) -> Spent {
        let mut r = self.rate.lock();
        match resource {
            Resource::Core => r.core.spend(free),
            Resource::Graphql => r.graphql.spend(free),
            Resource::Search => r.search.spend(free),
        }
    }
}

/// Holds successful answers for `answer_delay_ms`, so requests overlap as on a slow network.
pub(super) async fn slow_answers(
    State(sim): State<Arc<GithubSim>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let r = next.run(req).await;
    let d = sim.knobs.answer_delay_ms.load(Ordering::Relaxed);
    if d > 0 && r.status().is_success() {
        // Jittered, so concurrent workers drift out of step as on a real network.
        let ms = d / 2 + rand::rng().random_range(0..d);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    r
}
