//! The simulated GitHub: orgs generated from a seed (repos, users, commits with LOC, PRs with
//! reviews, comments), served over the REST wire format with App token exchange (JWT
//! verified with the App's public key), Link pagination, ETags and 304s, a rate-limit budget
//! that depletes and resets, secondary limits, and contributor stats that answer 202 first.
//! [`GithubSim::truth`] gives the values every `gh_activity_*` series must have.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::sources::github::Clock;
use crate::sources::github::wire::{format_time, week_start};

/// The App the fake trusts. Test-only key pair: see `tests/fixtures/github/README.md`.
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 777;
pub const TEST_APP_KEY_PEM: &str = include_str!("../../tests/fixtures/github/test-app-key.pem");
const TEST_APP_PUBLIC_PEM: &str = include_str!("../../tests/fixtures/github/test-app-key.pub.pem");

const DAY: i64 = 86_400;

/// What to generate for one org.
#[derive(Clone, Debug)]
pub struct OrgSpec {
    pub name: String,
    pub repos: usize,
    /// Repos pushed in the last day (the first `active` repos).
    pub active: usize,
    pub users: usize,
    pub prs_min: usize,
    pub prs_max: usize,
    /// Adds an archived repo and an active fork, both excluded by default.
    pub with_excluded: bool,
    /// Adds `dependabot[bot]` activity, excluded by default.
    pub with_bot: bool,
}

impl OrgSpec {
    pub fn small(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            repos: 8,
            active: 5,
            users: 6,
            prs_min: 5,
            prs_max: 150,
            with_excluded: true,
            with_bot: true,
        }
    }

    /// docs/performance.md's standard org: 500 repos, 50 pushed in the last day, 200 users,
    /// 200 to 2,000 PRs of history per repo.
    pub fn standard(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            repos: 500,
            active: 50,
            users: 200,
            prs_min: 200,
            prs_max: 2000,
            with_excluded: false,
            with_bot: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub sha: String,
    pub login: String,
    /// Committer date: what `since`/`until` filter on and windows count by.
    pub at: i64,
    /// Author date: earlier for rebased and cherry-picked commits.
    pub authored: i64,
    pub additions: i64,
    pub deletions: i64,
}

#[derive(Clone, Debug)]
pub struct Pr {
    pub number: u64,
    pub author: String,
    pub created: i64,
    pub updated: i64,
    pub merged: Option<i64>,
    pub reviews: Vec<(String, i64)>,
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub login: String,
    pub created: i64,
}

#[derive(Clone, Debug)]
pub struct RepoData {
    pub name: String,
    pub archived: bool,
    pub fork: bool,
    pub pushed_at: i64,
    pub updated_at: i64,
    /// Newest first.
    pub commits: Vec<Commit>,
    /// By `updated` descending.
    pub prs: Vec<Pr>,
    /// By id ascending.
    pub comments: Vec<Comment>,
    stats_version: u64,
    stats_served: u64,
    stats_202_left: u32,
}

impl RepoData {
    fn touch(&mut self, t: i64) {
        self.updated_at = self.updated_at.max(t);
    }

    fn sort(&mut self) {
        self.commits.sort_by_key(|c| std::cmp::Reverse(c.at));
        self.prs
            .sort_by(|a, b| b.updated.cmp(&a.updated).then(b.number.cmp(&a.number)));
    }
}

#[derive(Clone, Debug, Default)]
pub struct OrgData {
    pub users: Vec<String>,
    pub repos: Vec<RepoData>,
}

struct RateState {
    limit: u64,
    remaining: u64,
    reset_at: i64,
    counted: u64,
    /// GraphQL queries answered: they spend their own budget (one point per query here).
    graphql: u64,
    graphql_limit: u64,
    graphql_remaining: u64,
    graphql_reset_at: i64,
    /// The current secondary-limit window: (started, ends). GitHub refuses every request of
    /// the installation until it ends.
    secondary: Option<(std::time::Instant, std::time::Instant)>,
    /// Requests sent well into a secondary-limit window (not merely in flight when it began).
    secondary_ignored: u64,
}

/// Knobs beyond [`super::Faults`], specific to GitHub.
pub struct Knobs {
    /// The next N API requests each open a one-second secondary-limit window: 403 with
    /// `Retry-After: 1` to every request until it ends, as GitHub does.
    pub secondary_next: AtomicU32,
    /// Only requests whose path contains this open a secondary-limit window, if set.
    pub secondary_path: Mutex<Option<String>>,
    /// Milliseconds (± half, at random) every successful answer takes to arrive, after it was
    /// decided.
    pub answer_delay_ms: AtomicU64,
    /// Requests whose path contains this fail with 502, `fail_path_count` times.
    pub fail_path: Mutex<Option<(String, u32)>>,
    /// How many 202s `/stats/contributors` answers after each change before the 200.
    pub stats_202: AtomicU32,
    /// Installation token lifetime in seconds.
    pub token_ttl: AtomicU64,
    /// Repos whose `/stats/contributors` carries commit counts but zero line counts, as
    /// GitHub answers for repositories with 10,000+ commits.
    pub zero_stats_repos: Mutex<std::collections::HashSet<String>>,
}

pub struct GithubSim {
    world: Mutex<BTreeMap<String, OrgData>>,
    clock: Clock,
    rng: Mutex<StdRng>,
    tokens: Mutex<HashMap<String, i64>>,
    /// A personal access token the fake accepts, if set.
    pub pat: Mutex<Option<String>>,
    rate: Mutex<RateState>,
    pub knobs: Knobs,
    pub tokens_issued: AtomicU64,
    require_auth: AtomicBool,
    next_id: AtomicU64,
}

fn gen_org(spec: &OrgSpec, now: i64, rng: &mut StdRng, next_id: &AtomicU64) -> OrgData {
    let users: Vec<String> = (0..spec.users).map(|i| format!("user{i:03}")).collect();
    let pick = |rng: &mut StdRng| users[rng.random_range(0..users.len())].clone();
    let mut repos = Vec::new();
    let mut specs: Vec<(String, bool, bool, bool)> = (0..spec.repos)
        .map(|i| (format!("repo-{i:03}"), i < spec.active, false, false))
        .collect();
    if spec.with_excluded {
        specs.push(("old-archived".into(), false, true, false));
        specs.push(("a-fork".into(), true, false, true));
    }
    for (name, active, archived, fork) in specs {
        let pushed = if active {
            now - rng.random_range(600..20 * 3600)
        } else {
            now - rng.random_range(2 * DAY..365 * DAY)
        };
        let mut r = RepoData {
            name,
            archived,
            fork,
            pushed_at: pushed,
            updated_at: pushed,
            commits: Vec::new(),
            prs: Vec::new(),
            comments: Vec::new(),
            stats_version: 1,
            stats_served: 0,
            stats_202_left: 0,
        };
        // History: commits in the month before the last push, the last one at the push.
        let n = rng.random_range(3..15);
        for k in 0..n {
            let at = if k == 0 {
                pushed
            } else {
                pushed - rng.random_range(0..30 * DAY)
            };
            if active && k > 0 && at > now - DAY && rng.random_bool(0.5) {
                continue;
            }
            let login = pick(rng);
            r.commits.push(Commit {
                sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                login,
                at,
                authored: at,
                additions: rng.random_range(0..400),
                deletions: rng.random_range(0..200),
            });
        }
        if active {
            for _ in 0..rng.random_range(1..8) {
                r.commits.push(Commit {
                    sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                    login: pick(rng),
                    at: now - rng.random_range(60..23 * 3600),
                    authored: 0,
                    additions: rng.random_range(1..300),
                    deletions: rng.random_range(0..100),
                });
            }
        }
        let total_prs = rng.random_range(spec.prs_min..=spec.prs_max.max(spec.prs_min));
        let recent = if active { rng.random_range(1..6) } else { 0 };
        let history_start = now - 730 * DAY;
        let last_old = (pushed - DAY).max(history_start + 1);
        for k in 0..total_prs {
            let number = (k + 1) as u64;
            let pr = if k + recent >= total_prs {
                let created = now - rng.random_range(3600..30 * 3600);
                let merged = (rng.random_bool(0.5))
                    .then(|| (created + rng.random_range(600..20_000)).min(now - 30));
                let reviews: Vec<(String, i64)> = (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            pick(rng),
                            (created + rng.random_range(60..30_000)).min(now - 20),
                        )
                    })
                    .collect();
                let updated = reviews
                    .iter()
                    .map(|x| x.1)
                    .chain(merged)
                    .fold(created, i64::max);
                Pr {
                    number,
                    author: pick(rng),
                    created,
                    updated,
                    merged,
                    reviews,
                }
            } else {
                let created = history_start
                    + ((last_old - history_start) as f64 * (k as f64 / total_prs as f64)) as i64;
                let merged = rng
                    .random_bool(0.7)
                    .then(|| created + rng.random_range(600..3 * DAY));
                let updated = merged.unwrap_or(created) + rng.random_range(0..DAY);
                let reviews = if rng.random_bool(0.5) {
                    vec![(pick(rng), created + 300)]
                } else {
                    Vec::new()
                };
                Pr {
                    number,
                    author: pick(rng),
                    created,
                    updated: updated.min(last_old),
                    merged: merged.map(|m| m.min(last_old)),
                    reviews,
                }
            };
            r.prs.push(pr);
        }
        for _ in 0..rng.random_range(0..5) {
            let created = pushed - rng.random_range(DAY..60 * DAY);
            r.comments.push(Comment {
                id: next_id.fetch_add(1, Ordering::Relaxed),
                login: pick(rng),
                created,
            });
        }
        if active {
            for _ in 0..rng.random_range(0..6) {
                let created = now - rng.random_range(60..23 * 3600);
                r.comments.push(Comment {
                    id: next_id.fetch_add(1, Ordering::Relaxed),
                    login: pick(rng),
                    created,
                });
            }
        }
        if spec.with_bot && active {
            r.commits.push(Commit {
                sha: format!("{:040x}", next_id.fetch_add(1, Ordering::Relaxed)),
                login: "dependabot[bot]".into(),
                at: now - 7200,
                authored: 0,
                additions: 3,
                deletions: 3,
            });
        }
        // A third of the commits were rebased or cherry-picked: authored up to two days
        // before they were committed.
        for c in &mut r.commits {
            let id = u64::from_str_radix(&c.sha[32..], 16).expect("hex sha");
            c.authored = if id % 3 == 0 {
                c.at - ((id % 47) as i64 + 1) * 3600
            } else {
                c.at
            };
        }
        r.comments.sort_by_key(|c| c.id);
        let last_commit = r.commits.iter().map(|c| c.at).max().unwrap_or(pushed);
        r.pushed_at = r.pushed_at.max(last_commit);
        r.touch(r.pushed_at);
        r.sort();
        repos.push(r);
    }
    OrgData { users, repos }
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
            rate: Mutex::new(RateState {
                limit: 5000,
                remaining: 5000,
                reset_at: crate::clock::now_secs() + 3600,
                counted: 0,
                graphql: 0,
                graphql_limit: 5000,
                graphql_remaining: 5000,
                graphql_reset_at: crate::clock::now_secs() + 3600,
                secondary: None,
                secondary_ignored: 0,
            }),
            knobs: Knobs {
                secondary_next: AtomicU32::new(0),
                secondary_path: Mutex::new(None),
                answer_delay_ms: AtomicU64::new(0),
                fail_path: Mutex::new(None),
                stats_202: AtomicU32::new(1),
                token_ttl: AtomicU64::new(3600),
                zero_stats_repos: Mutex::new(Default::default()),
            },
            tokens_issued: AtomicU64::new(0),
            require_auth: AtomicBool::new(true),
            next_id,
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/orgs/{org}/repos", get(org_repos))
            .route("/repos/{owner}/{repo}/commits", get(commits))
            .route("/repos/{owner}/{repo}/commits/{sha}", get(commit_detail))
            .route("/repos/{owner}/{repo}/pulls", get(pulls))
            .route("/repos/{owner}/{repo}/pulls/{number}/reviews", get(reviews))
            .route("/repos/{owner}/{repo}/issues/comments", get(comments))
            .route("/repos/{owner}/{repo}/stats/contributors", get(stats))
            .route("/rate_limit", get(rate_limit))
            .route("/graphql", post(graphql))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                slow_answers,
            ))
            .with_state(self.clone())
    }

    /// Sets the primary budget (per hour window) and refills it.
    pub fn set_rate_limit(&self, limit: u64) {
        let mut r = self.rate.lock();
        r.limit = limit;
        r.remaining = limit;
        r.reset_at = crate::clock::now_secs() + 3600;
    }

    /// Revokes every installation token issued so far (as their expiry would).
    pub fn revoke_tokens(&self) {
        self.tokens.lock().clear();
    }

    /// Sets GraphQL's budget (per hour window) and refills it.
    pub fn set_graphql_limit(&self, limit: u64) {
        let mut r = self.rate.lock();
        r.graphql_limit = limit;
        r.graphql_remaining = limit;
        r.graphql_reset_at = crate::clock::now_secs() + 3600;
    }

    /// Requests sent more than 50 ms into a secondary-limit window: a client that pauses
    /// all its workers sends none.
    pub fn secondary_ignored(&self) -> u64 {
        self.rate.lock().secondary_ignored
    }

    /// Requests so far that counted against the primary limit (not 304s, not token exchange).
    pub fn counted(&self) -> u64 {
        self.rate.lock().counted
    }

    /// GraphQL queries answered (they spend the separate GraphQL budget).
    pub fn graphql_queries(&self) -> u64 {
        self.rate.lock().graphql
    }

    pub fn fail_path(&self, contains: &str, times: u32) {
        *self.knobs.fail_path.lock() = Some((contains.to_string(), times));
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

    fn authorized(&self, h: &HeaderMap) -> bool {
        if !self.require_auth.load(Ordering::Relaxed) {
            return true;
        }
        let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let tok = v
            .strip_prefix("token ")
            .or_else(|| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let now = crate::clock::now_secs();
        if self.tokens.lock().get(tok).is_some_and(|exp| *exp > now) {
            return true;
        }
        self.pat.lock().as_deref() == Some(tok)
    }

    /// What REST and GraphQL answers check first: credentials, then the fail-by-path knob.
    fn refuse(&self, h: &HeaderMap, uri: &Uri) -> Option<Response> {
        if !self.authorized(h) {
            return Some(json_response(
                StatusCode::UNAUTHORIZED,
                json!({"message": "Bad credentials"}),
            ));
        }
        let mut fp = self.knobs.fail_path.lock();
        if let Some((p, n)) = fp.as_mut()
            && uri.path().contains(p.as_str())
            && *n > 0
        {
            *n -= 1;
            return Some(json_response(
                StatusCode::BAD_GATEWAY,
                json!({"message": "Server Error"}),
            ));
        }
        None
    }

    /// The GraphQL counterpart of [`Self::answer`]: auth, fault knobs, its own budget.
    fn answer_graphql(&self, h: &HeaderMap, uri: &Uri, data: Value) -> Response {
        if let Some(refused) = self.refuse(h, uri) {
            return refused;
        }
        let (limit, remaining, reset, exhausted) = {
            let mut r = self.rate.lock();
            let now = crate::clock::now_secs();
            if now >= r.graphql_reset_at {
                r.graphql_remaining = r.graphql_limit;
                r.graphql_reset_at = now + 3600;
            }
            let exhausted = r.graphql_remaining == 0;
            if !exhausted {
                r.graphql_remaining -= 1;
                r.graphql += 1;
            }
            (
                r.graphql_limit,
                r.graphql_remaining,
                r.graphql_reset_at,
                exhausted,
            )
        };
        // GraphQL's primary limit is an error in a 200 answer, not a 403.
        let body = if exhausted {
            json!({"errors": [{"type": "RATE_LIMITED", "message": format!("API rate limit exceeded for installation ID {INSTALLATION_ID}.")}]})
        } else {
            json!({ "data": data })
        };
        let mut resp = json_response(StatusCode::OK, body);
        let hm = resp.headers_mut();
        let num = |n: i64| HeaderValue::from_str(&n.to_string()).expect("digits");
        hm.insert("x-ratelimit-limit", num(limit as i64));
        hm.insert("x-ratelimit-remaining", num(remaining as i64));
        hm.insert("x-ratelimit-used", num((limit - remaining) as i64));
        hm.insert("x-ratelimit-reset", num(reset));
        hm.insert("x-ratelimit-resource", HeaderValue::from_static("graphql"));
        resp
    }

    /// Everything an API answer goes through: auth, fault knobs, the rate budget, ETags.
    fn answer(
        &self,
        h: &HeaderMap,
        uri: &Uri,
        status: StatusCode,
        body: Value,
        link: Option<String>,
    ) -> Response {
        if let Some(refused) = self.refuse(h, uri) {
            return refused;
        }
        let in_window = {
            let mut r = self.rate.lock();
            let now = std::time::Instant::now();
            match r.secondary {
                Some((from, until)) if now < until => {
                    if now > from + std::time::Duration::from_millis(50) {
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
        if in_window
            || (on_path
                && self
                    .knobs
                    .secondary_next
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok())
        {
            if !in_window {
                let now = std::time::Instant::now();
                self.rate.lock().secondary = Some((now, now + std::time::Duration::from_secs(1)));
            }
            let mut r = json_response(
                StatusCode::FORBIDDEN,
                json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return r;
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
        let (remaining, limit, reset, exhausted) = {
            let mut r = self.rate.lock();
            let now = crate::clock::now_secs();
            if now >= r.reset_at {
                r.remaining = r.limit;
                r.reset_at = now + 3600;
            }
            let exhausted = r.remaining == 0 && !not_modified;
            if !not_modified && !exhausted {
                r.remaining -= 1;
                r.counted += 1;
            }
            (r.remaining, r.limit, r.reset_at, exhausted)
        };
        let mut resp = if exhausted {
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
        let num = |n: i64| HeaderValue::from_str(&n.to_string()).expect("digits");
        hm.insert("x-ratelimit-limit", num(limit as i64));
        hm.insert("x-ratelimit-remaining", num(remaining as i64));
        hm.insert("x-ratelimit-used", num((limit - remaining) as i64));
        hm.insert("x-ratelimit-reset", num(reset));
        hm.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
        if !exhausted {
            hm.insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
            if let Some(l) = link
                && let Ok(v) = HeaderValue::from_str(&l)
            {
                hm.insert("link", v);
            }
        }
        resp
    }
}

/// Holds successful answers for `answer_delay_ms`, so requests overlap as on a slow network.
async fn slow_answers(
    State(sim): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let r = next.run(req).await;
    let d = sim.knobs.answer_delay_ms.load(Ordering::Relaxed);
    if d > 0 && r.status().is_success() {
        // Jittered, so concurrent workers drift out of step as on a real network.
        let ms = d / 2 + rand::rng().random_range(0..d);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    r
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

type Q = Query<HashMap<String, String>>;
type S = State<Arc<GithubSim>>;

/// Cuts `items` to the requested page and builds the `Link` header.
fn paginate(
    items: Vec<Value>,
    q: &HashMap<String, String>,
    h: &HeaderMap,
    uri: &Uri,
) -> (Value, Option<String>) {
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

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

async fn access_token(State(sim): S, Path(id): Path<u64>, h: HeaderMap) -> Response {
    let jwt = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_APP_PUBLIC_PEM.as_bytes())
        .expect("the committed test public key parses");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_required_spec_claims(&["exp", "iat", "iss"]);
    v.set_issuer(&[APP_ID.to_string()]);
    v.leeway = 60;
    let Ok(claims) = jsonwebtoken::decode::<Value>(jwt, &key, &v) else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "A JSON web token could not be decoded"}),
        );
    };
    // GitHub refuses App JWTs meant to live longer than ten minutes.
    let (iat, exp) = (
        claims.claims["iat"].as_i64().unwrap_or(0),
        claims.claims["exp"].as_i64().unwrap_or(i64::MAX),
    );
    if exp.saturating_sub(iat) > 600 {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "'Expiration time' claim ('exp') is too far in the future"}),
        );
    }
    {
        let mut fp = sim.knobs.fail_path.lock();
        if let Some((p, n)) = fp.as_mut()
            && format!("/app/installations/{id}/access_tokens").contains(p.as_str())
            && *n > 0
        {
            *n -= 1;
            return json_response(StatusCode::BAD_GATEWAY, json!({"message": "Server Error"}));
        }
    }
    if id != INSTALLATION_ID {
        return not_found();
    }
    let n = sim.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let token = format!("ghs_sim{n:020}");
    let ttl = sim.knobs.token_ttl.load(Ordering::Relaxed) as i64;
    let expires = crate::clock::now_secs() + ttl;
    sim.tokens.lock().insert(token.clone(), expires);
    json_response(
        StatusCode::CREATED,
        json!({"token": token, "expires_at": format_time(expires), "permissions": {"contents": "read", "pull_requests": "read", "issues": "read", "metadata": "read"}, "repository_selection": "all"}),
    )
}

async fn org_repos(
    State(sim): S,
    Path(org): Path<String>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let items = {
        let w = sim.world.lock();
        let Some(o) = w.get(&org) else {
            return not_found();
        };
        o.repos
            .iter()
            .map(|r| {
                json!({"name": r.name, "full_name": format!("{org}/{}", r.name), "archived": r.archived,
                    "disabled": false, "fork": r.fork, "private": false, "default_branch": "main",
                    "pushed_at": format_time(r.pushed_at), "updated_at": format_time(r.updated_at)})
            })
            .collect()
    };
    let (body, link) = paginate(items, &q, &h, &uri);
    sim.answer(&h, &uri, StatusCode::OK, body, link)
}

fn with_repo<T>(
    sim: &GithubSim,
    org: &str,
    repo: &str,
    f: impl FnOnce(&mut RepoData) -> T,
) -> Option<T> {
    let mut w = sim.world.lock();
    let r = w.get_mut(org)?.repos.iter_mut().find(|r| r.name == repo)?;
    Some(f(r))
}

async fn commits(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let (since, until) = (time_param(&q, "since"), time_param(&q, "until"));
    let items = with_repo(&sim, &org, &repo, |r| {
        r.commits
            .iter()
            .filter(|c| since.is_none_or(|s| c.at >= s) && until.is_none_or(|u| c.at <= u))
            .map(commit_json)
            .collect::<Vec<_>>()
    });
    let Some(items) = items else {
        return not_found();
    };
    let (body, link) = paginate(items, &q, &h, &uri);
    sim.answer(&h, &uri, StatusCode::OK, body, link)
}

fn commit_json(c: &Commit) -> Value {
    let email = format!("{}@users.noreply.github.com", c.login);
    json!({"sha": c.sha, "commit": {
        "author": {"name": c.login, "email": email, "date": format_time(c.authored)},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "date": format_time(c.at)},
        "message": "change"},
      "author": user(&c.login), "committer": user("web-flow"), "parents": []})
}

async fn commit_detail(
    State(sim): S,
    Path((org, repo, sha)): Path<(String, String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let found = with_repo(&sim, &org, &repo, |r| {
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

async fn pulls(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let by_updated = q.get("sort").map(String::as_str) == Some("updated");
    let asc = q.get("direction").map(String::as_str) == Some("asc");
    let items = with_repo(&sim, &org, &repo, |r| {
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
    let Some(items) = items else {
        return not_found();
    };
    let (body, link) = paginate(items, &q, &h, &uri);
    sim.answer(&h, &uri, StatusCode::OK, body, link)
}

async fn reviews(
    State(sim): S,
    Path((org, repo, number)): Path<(String, String, u64)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let items = with_repo(&sim, &org, &repo, |r| {
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
    let Some(items) = items else {
        return not_found();
    };
    let (body, link) = paginate(items, &q, &h, &uri);
    sim.answer(&h, &uri, StatusCode::OK, body, link)
}

async fn comments(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    Query(q): Q,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let since = time_param(&q, "since");
    let by_updated = q.get("sort").map(String::as_str) == Some("updated");
    let desc = q.get("direction").map(String::as_str) == Some("desc");
    let items = with_repo(&sim, &org, &repo, |r| {
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
    let Some(items) = items else {
        return not_found();
    };
    let (body, link) = paginate(items, &q, &h, &uri);
    sim.answer(&h, &uri, StatusCode::OK, body, link)
}

async fn stats(
    State(sim): S,
    Path((org, repo)): Path<(String, String)>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    let now = sim.clock.now();
    let n202 = sim.knobs.stats_202.load(Ordering::Relaxed);
    let zeroed = sim.knobs.zero_stats_repos.lock().contains(&repo);
    let out = with_repo(&sim, &org, &repo, |r| {
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

async fn rate_limit(State(sim): S) -> Response {
    let r = sim.rate.lock();
    let core = json!({"limit": r.limit, "used": r.limit - r.remaining, "remaining": r.remaining, "reset": r.reset_at});
    json_response(
        StatusCode::OK,
        json!({"resources": {"core": core}, "rate": core}),
    )
}

/// `devmetrics demo`: two simulated orgs with live activity, and the exporter's `github`
/// section pointed at them (App auth with the test key).
pub async fn demo(
    config: &mut crate::config::Config,
    seed: u64,
) -> std::io::Result<Arc<super::FakeServer>> {
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
    Ok(fake)
}

/// `POST /graphql`: the one query the exporter sends, `repository.pullRequests` ordered by
/// `UPDATED_AT` descending with nested reviews. The cursor is the offset as a string.
async fn graphql(State(sim): S, h: HeaderMap, uri: Uri, body: axum::body::Bytes) -> Response {
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
    let data = with_repo(&sim, owner, name, |r| {
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
        let more = offset + 50 < r.prs.len();
        json!({"repository": {"pullRequests": {"pageInfo": {"hasNextPage": more, "endCursor": (offset + 50).to_string()}, "nodes": nodes}}})
    });
    sim.answer_graphql(&h, &uri, data.unwrap_or(json!({"repository": null})))
}
