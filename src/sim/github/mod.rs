//! The simulated GitHub: orgs generated from a seed (repos, users, commits with LOC, PRs with
//! reviews, comments), served over the REST wire format with App token exchange (JWT
//! verified with the App's public key), Link pagination, ETags and 304s, a rate-limit budget
//! that depletes and resets, secondary limits, and contributor stats that answer 202 first.
//! [`GithubSim::truth`] gives the values every `gh_activity_*` series must have.
//!
//! - `data`: the generated world.
//! - `auth`: the App's JWT, installation tokens, and [`Credentials::check`], which judges
//!   every endpoint's credentials, the hook endpoints' included.
//! - `gate`: what every API request passes before it is answered: credentials, the
//!   fail-by-path knob, secondary limits, the REST, GraphQL and search budgets.
//! - `rest`, `search` and `graphql`: the endpoints.
//! - [`hooks`]: webhook delivery logs, redelivery and runners, served by a fake of its own.

mod auth;
pub mod copilot;
mod data;
mod gate;
mod graphql;
pub mod hooks;
mod rest;
mod search;

pub use auth::{APP_ID, Accepts, Credentials, INSTALLATION_ID, TEST_APP_KEY_PEM};
pub use data::{Comment, Commit, OrgData, OrgSpec, Pr, RepoData};
pub use hooks::{Attempt, HooksSim};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sources::github::Clock;
use crate::sources::github::wire::week_start;
use data::{DAY, gen_org};

/// Knobs beyond [`super::Faults`], specific to GitHub.
pub struct Knobs {
    /// The installation's permissions, as its tokens' answer lists them; endpoints needing
    /// one that is absent answer 403 as GitHub does ("Resource not accessible by integration").
    pub permissions: Mutex<BTreeMap<String, String>>,
    /// The next N API requests each open a one-second secondary-limit window: 403 with
    /// `Retry-After: 1` to every request until it ends, as GitHub does.
    pub secondary_next: AtomicU32,
    /// Only requests whose path contains this open a secondary-limit window, if set.
    pub secondary_path: Mutex<Option<String>>,
    /// Milliseconds (± half, at random) every successful answer takes to arrive, after it was
    /// decided.
    pub answer_delay_ms: AtomicU64,
    /// Requests whose path contains the text fail with the status, so many times.
    pub fail_path: Mutex<Option<(String, u32, u16)>>,
    /// How many 202s `/stats/contributors` answers after each change before the 200.
    pub stats_202: AtomicU32,
    /// Installation token lifetime in seconds.
    pub token_ttl: AtomicU64,
    /// Repos whose `/stats/contributors` carries commit counts but zero line counts, as
    /// GitHub answers for repositories with 10,000+ commits.
    pub zero_stats_repos: Mutex<std::collections::HashSet<String>>,
    /// Listings whose path contains this text give their last page a `next` link back to
    /// the first, as a broken proxy or API might: pagination that never ends.
    pub looping_pages: Mutex<Option<String>>,
    /// GraphQL's pull-request pages all say there is more, and point back to the first.
    pub looping_graphql_cursor: std::sync::atomic::AtomicBool,
    /// GitHub's clock minus the host's, in seconds: App JWTs, installation tokens' expiry
    /// and every answer's `Date` follow it.
    pub clock_skew_secs: std::sync::atomic::AtomicI64,
}

pub struct GithubSim {
    world: Mutex<BTreeMap<String, OrgData>>,
    clock: Clock,
    /// Copilot's reports, seats and the signed-URL host's files.
    pub copilot: copilot::CopilotSim,
    rng: Mutex<StdRng>,
    tokens: Mutex<HashMap<String, i64>>,
    /// A personal access token the fake accepts, if set.
    pub pat: Mutex<Option<String>>,
    rate: Mutex<gate::Rate>,
    pub knobs: Knobs,
    pub tokens_issued: AtomicU64,
    /// App JWTs the token exchange refused.
    pub jwts_refused: AtomicU64,
    next_id: AtomicU64,
}

impl GithubSim {
    pub fn new(seed: u64, clock: Clock, orgs: &[OrgSpec]) -> Arc<GithubSim> {
        let mut rng = StdRng::seed_from_u64(seed);
        let next_id = AtomicU64::new(1000);
        let now = clock.now();
        let world = orgs
            .iter()
            .map(|s| (s.name.clone(), gen_org(s, now, &mut rng, &next_id)))
            .collect();
        Arc::new(GithubSim {
            world: Mutex::new(world),
            clock,
            rng: Mutex::new(rng),
            tokens: Mutex::new(HashMap::new()),
            pat: Mutex::new(None),
            rate: Mutex::new(gate::Rate::new()),
            knobs: Knobs {
                permissions: Mutex::new(full_permissions()),
                secondary_next: AtomicU32::new(0),
                secondary_path: Mutex::new(None),
                answer_delay_ms: AtomicU64::new(0),
                fail_path: Mutex::new(None),
                stats_202: AtomicU32::new(1),
                token_ttl: AtomicU64::new(3600),
                zero_stats_repos: Mutex::new(Default::default()),
                looping_pages: Mutex::new(None),
                looping_graphql_cursor: Default::default(),
                clock_skew_secs: Default::default(),
            },
            tokens_issued: AtomicU64::new(0),
            jwts_refused: AtomicU64::new(0),
            copilot: Default::default(),
            next_id,
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/app/installations/{id}/access_tokens",
                post(auth::access_token),
            )
            .route("/orgs/{org}", get(rest::org))
            .route("/orgs/{org}/repos", get(rest::org_repos))
            .route("/search/issues", get(search::issues))
            .route("/repos/{owner}/{repo}/commits", get(rest::commits))
            .route(
                "/repos/{owner}/{repo}/commits/{sha}",
                get(rest::commit_detail),
            )
            .route("/repos/{owner}/{repo}/pulls", get(rest::pulls))
            .route(
                "/repos/{owner}/{repo}/compare/{basehead}",
                get(rest::compare),
            )
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/pulls",
                get(rest::commit_pulls),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/commits",
                get(rest::pull_commits),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews",
                get(rest::reviews),
            )
            .route("/repos/{owner}/{repo}/issues/comments", get(rest::comments))
            .route("/repos/{owner}/{repo}/stats/contributors", get(rest::stats))
            .route("/rate_limit", get(rest::rate_limit))
            .route(
                "/orgs/{owner}/copilot/metrics/reports/{report}",
                get(copilot::report_link),
            )
            .route(
                "/orgs/{owner}/copilot/metrics/reports/{report}/latest",
                get(copilot::report_link),
            )
            .route(
                "/enterprises/{owner}/copilot/metrics/reports/{report}",
                get(copilot::report_link),
            )
            .route(
                "/enterprises/{owner}/copilot/metrics/reports/{report}/latest",
                get(copilot::report_link),
            )
            .route("/orgs/{org}/copilot/billing/seats", get(copilot::seats))
            .route("/graphql", post(graphql::graphql))
            .layer(axum::middleware::from_fn_with_state(self.clone(), dated))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                gate::slow_answers,
            ))
            .with_state(self.clone())
    }

    pub fn with_org<T>(&self, org: &str, f: impl FnOnce(&mut OrgData) -> T) -> T {
        let mut w = self.world.lock();
        f(w.get_mut(org).expect("org is generated"))
    }

    /// Moves every timestamp `secs` into the past: the same as time passing, for tests that
    /// drive the clock.
    pub fn age(&self, secs: i64) {
        for o in self.world.lock().values_mut() {
            for r in &mut o.repos {
                r.pushed_at -= secs;
                r.updated_at -= secs;
                for c in &mut r.commits {
                    c.at -= secs;
                    c.authored -= secs;
                }
                for p in &mut r.prs {
                    p.created -= secs;
                    p.updated -= secs;
                    p.merged = p.merged.map(|m| m - secs);
                    for rv in &mut p.reviews {
                        rv.1 -= secs;
                    }
                }
                for c in &mut r.comments {
                    c.created -= secs;
                }
                r.stats_version += 1;
            }
        }
    }

    /// Moves every event less than `margin` seconds from the day window's start further into
    /// the past, so a test on the real clock that lasts less than `margin` sees no event
    /// leave its windows while it runs.
    pub fn settle(&self, margin: i64) {
        let edge = self.clock.now() - DAY;
        let shift = |t: &mut i64| {
            if (edge - margin..edge + margin).contains(t) {
                *t -= 2 * margin;
            }
        };
        for o in self.world.lock().values_mut() {
            for r in &mut o.repos {
                for c in &mut r.commits {
                    shift(&mut c.at);
                }
                for p in &mut r.prs {
                    shift(&mut p.created);
                    if let Some(m) = &mut p.merged {
                        shift(m);
                    }
                    for rv in &mut p.reviews {
                        shift(&mut rv.1);
                    }
                }
                for c in &mut r.comments {
                    shift(&mut c.created);
                }
                r.sort();
                r.stats_version += 1;
            }
        }
    }

    /// A pull request by `author` opened at `created` with `commits` (`(sha, time)`, oldest
    /// first), merged at `merged` by the commit `merge_sha`; its commits and the merge land
    /// on the default branch.
    #[allow(clippy::too_many_arguments)]
    pub fn add_merged_pr(
        &self,
        org: &str,
        repo: &str,
        number: u64,
        author: &str,
        created: i64,
        commits: &[(String, i64)],
        merged: i64,
        merge_sha: &str,
    ) {
        self.with_repo(org, repo, |r| {
            for (sha, at) in commits
                .iter()
                .cloned()
                .chain(std::iter::once((merge_sha.to_string(), merged)))
            {
                r.commits.push(data::Commit {
                    sha,
                    login: author.to_string(),
                    at,
                    authored: at,
                    additions: 1,
                    deletions: 0,
                });
            }
            r.prs.push(data::Pr {
                number,
                author: author.to_string(),
                created,
                updated: merged,
                merged: Some(merged),
                reviews: Vec::new(),
                merge_sha: Some(merge_sha.to_string()),
                commits: commits.iter().map(|(s, _)| s.clone()).collect(),
            });
            r.touch(merged);
            r.sort();
        })
        .expect("repo is generated");
    }

    pub fn add_commit(&self, org: &str, repo: &str, login: &str, at: i64, add: i64, del: i64) {
        self.add_rebased_commit(org, repo, login, at, at, add, del);
    }

    /// A commit committed at `at` but authored at `authored` (a rebase or cherry-pick).
    #[allow(clippy::too_many_arguments)]
    pub fn add_rebased_commit(
        &self,
        org: &str,
        repo: &str,
        login: &str,
        authored: i64,
        at: i64,
        add: i64,
        del: i64,
    ) {
        let sha = format!("{:040x}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.with_org(org, |o| {
            let r = o.repos.iter_mut().find(|r| r.name == repo).expect("repo");
            r.commits.push(Commit {
                sha,
                login: login.into(),
                at,
                authored,
                additions: add,
                deletions: del,
            });
            r.pushed_at = r.pushed_at.max(at);
            r.touch(at);
            r.stats_version += 1;
            r.sort();
        });
    }

    /// A comment: as on GitHub, it moves neither the repo's `pushed_at` nor `updated_at`.
    pub fn add_comment(&self, org: &str, repo: &str, login: &str, at: i64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.with_org(org, |o| {
            let r = o.repos.iter_mut().find(|r| r.name == repo).expect("repo");
            r.comments.push(Comment {
                id,
                login: login.into(),
                created: at,
            });
        });
    }

    /// A review of the repo's most recently updated PR: it moves the PR's `updated_at`, not
    /// the repo's.
    pub fn add_review(&self, org: &str, repo: &str, login: &str, at: i64) {
        self.with_org(org, |o| {
            let r = o.repos.iter_mut().find(|r| r.name == repo).expect("repo");
            let p = &mut r.prs[0];
            p.reviews.push((login.into(), at));
            p.updated = p.updated.max(at);
            r.sort();
        });
    }

    /// One random event at the clock's now on a random active repo: the demo's live data.
    pub fn live_tick(&self) {
        let now = self.clock.now();
        let (org, repo, user, kind) = {
            let w = self.world.lock();
            let mut rng = self.rng.lock();
            let Some((org, data)) = w.iter().nth(rng.random_range(0..w.len().max(1))) else {
                return;
            };
            let active: Vec<&RepoData> = data
                .repos
                .iter()
                .filter(|r| !r.archived && r.pushed_at > now - 3 * DAY)
                .collect();
            if active.is_empty() || data.users.is_empty() {
                return;
            }
            let r = active[rng.random_range(0..active.len())];
            let u = data.users[rng.random_range(0..data.users.len().min(20))].clone();
            (org.clone(), r.name.clone(), u, rng.random_range(0..3))
        };
        match kind {
            0 => self.add_commit(&org, &repo, &user, now, 20, 5),
            1 => self.add_comment(&org, &repo, &user, now),
            _ => self.add_review(&org, &repo, &user, now),
        }
    }

    /// The exact value of every `gh_activity_*` series for the window ending at `end`, with
    /// the default controls (no archived repos, no forks, no `[bot]` users), keyed by
    /// (family, repo, user).
    pub fn truth(&self, org: &str, end: i64) -> BTreeMap<(String, String, String), f64> {
        let start = end - DAY;
        let inw = |t: i64| t >= start && t <= end;
        let mut out: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        let w = self.world.lock();
        let Some(o) = w.get(org) else {
            return out;
        };
        let week = week_start(end) - 7 * DAY;
        for r in o.repos.iter().filter(|r| !r.archived && !r.fork) {
            let mut add = |fam: &str, user: &str, v: f64| {
                if user.ends_with("[bot]") {
                    return;
                }
                *out.entry((fam.to_string(), r.name.clone(), user.to_string()))
                    .or_default() += v;
            };
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let mut seen = |u: &str, t: i64| {
                let e = last.entry(u.to_string()).or_insert(t);
                *e = (*e).max(t);
            };
            for c in &r.commits {
                if inw(c.at) {
                    add("gh_activity_commits_24h", &c.login, 1.0);
                    seen(&c.login, c.at);
                }
            }
            for p in &r.prs {
                if inw(p.created) {
                    add("gh_activity_prs_opened_24h", &p.author, 1.0);
                    seen(&p.author, p.created);
                }
                if let Some(m) = p.merged
                    && inw(m)
                {
                    add("gh_activity_prs_merged_24h", &p.author, 1.0);
                    seen(&p.author, m);
                }
                for (u, t) in &p.reviews {
                    if inw(*t) {
                        add("gh_activity_reviews_submitted_24h", u, 1.0);
                        seen(u, *t);
                    }
                }
            }
            for c in &r.comments {
                if inw(c.created) {
                    add("gh_activity_issue_comments_24h", &c.login, 1.0);
                    seen(&c.login, c.created);
                }
            }
            let mut loc: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
            for c in &r.commits {
                if c.at >= week && c.at < week + 7 * DAY {
                    let e = loc.entry(&c.login).or_default();
                    e.0 += c.additions;
                    e.1 += c.deletions;
                }
            }
            for (u, (a, d)) in loc {
                add("gh_activity_loc_added_weekly", u, a as f64);
                add("gh_activity_loc_removed_weekly", u, d as f64);
            }
            for (u, t) in last {
                add("gh_activity_last_event_unixtime", &u, t as f64);
            }
        }
        out
    }

    /// What github-stats-exporter's cost model (seed0.md §c) charges per cycle for `org` at
    /// `end`: repo pages, then per repo commits, every PR page, reviews of PRs touched,
    /// comments and stats.
    pub fn legacy_cycle_cost(&self, org: &str, end: i64) -> u64 {
        let pg = |n: usize| (n.max(1)).div_ceil(100) as u64;
        let w = self.world.lock();
        let o = &w[org];
        let start = end - DAY;
        let mut n = pg(o.repos.len());
        for r in &o.repos {
            let commits = r
                .commits
                .iter()
                .filter(|c| c.at >= start && c.at <= end)
                .count();
            let touched: Vec<&Pr> = r
                .prs
                .iter()
                .filter(|p| {
                    (p.created >= start && p.created <= end)
                        || (p.updated >= start && p.updated <= end)
                        || p.merged.is_some_and(|m| m >= start && m <= end)
                })
                .collect();
            let comments = r.comments.iter().filter(|c| c.created >= start).count();
            n += pg(commits)
                + pg(r.prs.len())
                + touched.iter().map(|p| pg(p.reviews.len())).sum::<u64>()
                + pg(comments)
                + 1;
        }
        n
    }

    /// Runs `f` on `org`'s repo `repo`; `None` when either is unknown.
    fn with_repo<T>(&self, org: &str, repo: &str, f: impl FnOnce(&mut RepoData) -> T) -> Option<T> {
        let mut w = self.world.lock();
        let r = w.get_mut(org)?.repos.iter_mut().find(|r| r.name == repo)?;
        Some(f(r))
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// What a fully granted devmetrics App holds: every feature's permission.
pub fn full_permissions() -> BTreeMap<String, String> {
    [
        ("metadata", "read"),
        ("contents", "read"),
        ("pull_requests", "read"),
        ("issues", "read"),
        ("members", "read"),
        ("organization_copilot_metrics", "read"),
        ("organization_copilot_seat_management", "read"),
        ("organization_self_hosted_runners", "read"),
        ("organization_hooks", "write"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl GithubSim {
    /// 403 as GitHub answers an installation lacking `permission`.
    pub(super) fn not_granted(
        &self,
        h: &axum::http::HeaderMap,
        uri: &axum::http::Uri,
        permission: &str,
    ) -> Option<Response> {
        if self.knobs.permissions.lock().contains_key(permission) {
            return None;
        }
        Some(self.answer(
            h,
            uri,
            StatusCode::FORBIDDEN,
            serde_json::json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest"}),
            None,
        ))
    }
}

/// Every answer's `Date`, by GitHub's clock (hyper would otherwise stamp the host's).
async fn dated(
    axum::extract::State(sim): axum::extract::State<Arc<GithubSim>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(sim.github_now().max(0) as u64);
    if let Ok(v) = httpdate::fmt_http_date(at).parse() {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    resp
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

/// `devmetrics demo`: two simulated orgs with live activity, and the exporter's `github`
/// section pointed at them (App auth with the test key).
pub async fn demo(
    config: &mut crate::config::Config,
    seed: u64,
) -> std::io::Result<Vec<Arc<super::FakeServer>>> {
    use crate::sources::github::config::{Auth, RawGithub};
    let clock = crate::clock::Clock::system();
    let mut acme = OrgSpec::small("acme");
    acme.repos = 12;
    acme.active = 6;
    let mut globex = OrgSpec::small("globex");
    globex.with_bot = false;
    let sim = GithubSim::new(seed, clock, &[acme, globex]);
    sim.knobs.token_ttl.store(600, Ordering::Relaxed);
    let fake =
        Arc::new(super::FakeServer::start("github", sim.router(), super::Faults::new(seed)).await?);
    let yaml = format!(
        "api_base_url: {}\norgs:\n  - {{org: acme, app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_path: demo.pem, scrape_interval: 15s}}\n  - {{org: globex, app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_path: demo.pem, scrape_interval: 20s}}\nloc: {{stats_retry_delay: 500ms}}\n",
        fake.base_url()
    );
    let raw: RawGithub = serde_yaml::from_str(&yaml).expect("demo config is valid YAML");
    let mut gh = raw
        .resolve(None)
        .expect("demo config resolves")
        .expect("demo config has orgs");
    for o in &mut gh.orgs {
        o.auth = Auth::App {
            app_id: APP_ID,
            installation_id: INSTALLATION_ID,
            key: crate::config::SecretSource::Value(crate::config::Secret::new(TEST_APP_KEY_PEM)),
        };
    }
    config.github = Some(gh);
    // Copilot: a month of reports for both orgs, their files on a signed-URL host.
    let now = crate::clock::now_secs();
    for (i, org) in ["acme", "globex"].into_iter().enumerate() {
        let data = copilot::CopilotData::generate(seed + i as u64, now, 6 + 4 * i, 35);
        sim.copilot.data.lock().insert(org.into(), data);
    }
    sim.copilot.files_per_report.store(2, Ordering::Relaxed);
    let downloads = Arc::new(
        super::FakeServer::start(
            "copilot-downloads",
            sim.copilot.downloads.router(),
            super::Faults::new(seed),
        )
        .await?,
    );
    *sim.copilot.download_base.lock() = downloads.base_url();
    let raw: crate::sources::copilot::config::RawCopilot = serde_yaml::from_str(
        "{enabled: true, scrape_interval: 30s, include_org_users_28d: true, include_org_users_1d: true, include_teams: true, include_seats: true, legacy_metrics: true}",
    )
    .expect("demo copilot config is valid YAML");
    config.copilot = raw.resolve(None).expect("demo copilot config resolves");
    let weak = Arc::downgrade(&fake);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            if weak.upgrade().is_none() {
                return;
            }
            sim.live_tick();
        }
    });
    Ok(vec![fake, downloads])
}
