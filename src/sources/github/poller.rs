//! The activity poller of one org: list repos, scrape each repo's exact 24-hour window as
//! cheaply as possible, and hand back one scope per repo. Failed windows go to the queue
//! as backfill jobs for the same full window.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::activity::{self, Loc, RepoEvents, Users};
use super::client::Client;
use super::config::{GithubConfig, OrgConfig, glob_match};
use super::wire;
use super::{Clock, Error};
use crate::metrics::Sample;
use crate::queue::{Delivery, Failure, Handler, SharedQueue, topics};
use crate::sources::{PollError, Poller, ScopeResult};
use crate::store::{SharedStore, Written};

const WINDOW: i64 = 86_400;
const EVENTS_NS: &str = "github.events";
const LOC_NS: &str = "github.loc";
const LOC_MODE_NS: &str = "github.loc_mode";

/// Whether a repo's LOC comes from commit details, and how close it is to switching.
#[derive(Default, Serialize, Deserialize)]
struct LocMode {
    zero_windows: u32,
    fallback_until: i64,
}
const KV_TTL: Duration = Duration::from_secs(35 * 86_400);
/// How long an org uses REST alone after GraphQL failed.
const GRAPHQL_REST: Duration = Duration::from_secs(15 * 60);

/// The time each org's last change detection reached, so the next one searches from there.
const DETECT_NS: &str = "github.detect";
/// How far before the last detection each one looks again: search's index trails writes.
const DETECT_OVERLAP: i64 = 300;

/// Where a cycle's schedule and its jobs' outcomes are kept.
const SCHEDULE_NS: &str = "github.schedule";
const JOBS_NS: &str = "github.jobs";
/// How long a job's outcome is kept for the leader that waits for it.
const JOB_TTL: Duration = Duration::from_secs(86_400);
/// How often the leader looks for the outcomes of a cycle's jobs.
const JOB_POLL: Duration = Duration::from_millis(200);

/// How a cycle is spread over the replicas: the leader lists the repos and queues them as
/// jobs of `batch_size` on `github/scrape`, which every replica (the leader too) consumes.
pub struct Distribution {
    pub batch_size: usize,
    pub leadership: Arc<crate::ha::Leadership>,
}

/// A batch of one cycle's repos to scrape for the window ending at `window_end`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScrapeJob {
    pub org: String,
    pub window_end: i64,
    pub batch: usize,
    /// The leader's fencing number when it scheduled the cycle.
    pub fence: u64,
    /// Series this batch may write: its share of the org's budget.
    pub series_budget: u64,
    pub repos: Vec<wire::Repo>,
    /// The cycle's org-wide change detection, for this batch's repos; none: probe each repo.
    #[serde(default)]
    pub detected: Option<Detected>,
}

/// What org-wide change detection found for a cycle. Repos it names had their kept events
/// marked stale before the detection was recorded, so they are fetched again whatever
/// happens to the cycle; the others keep theirs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Detected {
    /// The search began at the window's start: a repo not named had no conversation in it.
    pub covers_window: bool,
    /// Repos with an issue or pull request updated (opened, commented, reviewed, merged)
    /// since the detection began.
    pub conversations: BTreeSet<String>,
}

impl Detected {
    fn for_repos(&self, repos: &[wire::Repo]) -> Detected {
        Detected {
            covers_window: self.covers_window,
            conversations: repos
                .iter()
                .filter(|r| self.conversations.contains(&r.name))
                .map(|r| r.name.clone())
                .collect(),
        }
    }
}

impl ScrapeJob {
    fn key(&self) -> String {
        job_key(&self.org, self.window_end, self.batch)
    }
}

fn job_key(org: &str, window_end: i64, batch: usize) -> String {
    format!("{org}:{window_end}:{batch}")
}

/// A repo's scrape: its series, or none when it was never fetched and waits for a later
/// cycle (the budget is running low).
type Scraped = Result<Option<Vec<Sample>>, Error>;

/// What a job did, for the leader that waits for the cycle.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobOutcome {
    repos: usize,
    /// Cold repos left for a later cycle: the budget was running low.
    #[serde(default)]
    deferred: usize,
    /// Repos that failed: name, error kind, message.
    failed: Vec<(String, String, String)>,
    requests: u64,
    series: u64,
    budget_exceeded: bool,
}

/// A window to scrape again: `repo` none means every repo of the org.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackfillJob {
    pub org: String,
    pub repo: Option<String>,
    pub window_end: i64,
    pub reason: String,
}

/// Live figures of the org for `devmetrics_github_*`.
#[derive(Debug, Default, Clone)]
pub struct OrgLive {
    pub cycle_requests: u64,
    pub overcommitted: bool,
    pub effective_interval: f64,
    pub cooldown: bool,
    pub progress: f64,
    pub eta: f64,
    /// Repos never fetched that the last cycle left for later ones, its budget running low.
    pub cold_pending: u64,
    pub series_budget_exceeded: bool,
    /// Repos whose LOC fallback waited for the next hour's commit-detail budget.
    pub loc_fallback_deferred: u64,
    /// Repo fetches that fell back from GraphQL to REST, by error kind.
    pub graphql_fallbacks: std::collections::BTreeMap<&'static str, u64>,
    /// Cycles whose org-wide change detection failed and probed each repo instead.
    pub detection_fallbacks: u64,
    /// Repos the last change detection found with new conversations.
    pub detected_repos: u64,
    pub backfill: HashMap<&'static str, u64>,
}

/// What the leader shares of an org with the other replicas: its cooldown and the figures of
/// its last cycle, and the installation's budget as it last saw it.
#[derive(Serialize, Deserialize)]
struct SharedOrg {
    consecutive_failures: u32,
    cooldown_until: i64,
    next_start: i64,
    cycles: u64,
    cycle_requests: u64,
    overcommitted: bool,
    effective_interval: f64,
    cooldown: bool,
    progress: f64,
    eta: f64,
    #[serde(default)]
    cold_pending: u64,
    series_budget_exceeded: bool,
    /// REST budget: (limit, remaining, reset_at), when known.
    budget: Option<(u64, u64, i64)>,
}

#[derive(Default)]
struct OrgState {
    consecutive_failures: u32,
    cooldown_until: i64,
    /// Full cycles done; the first (cold) one is not a measure of the steady cost.
    cycles: u64,
    /// Whether the previous cycle left cold repos for this one, whose cost is then not a
    /// measure of the steady cost either.
    spreading: bool,
    next_start: i64,
    /// Backfill jobs published in the current minute: (unix minute, count).
    enqueued_minute: (i64, u32),
    /// Commit-detail calls of the LOC fallback in the current hour: (unix hour, count).
    fallback_hour: (i64, u32),
    /// GraphQL failed: REST only until then.
    graphql_rest_until: i64,
    live: OrgLive,
}

#[derive(Clone, Copy)]
struct Probe {
    changed: bool,
    /// Newest `updated_at` of any PR or comment.
    newest: i64,
}

/// What a fetch of a repo's window needs.
struct Want {
    commits: bool,
    conversations: bool,
    graphql: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct CachedEvents {
    marker: (Option<String>, Option<String>),
    events: RepoEvents,
    /// Change detection found new conversations: fetch again (the repo stays warm, so its
    /// unchanged pull requests' reviews can still answer 304).
    #[serde(default)]
    stale: bool,
}

pub struct OrgPoller {
    name: String,
    pub org: OrgConfig,
    gh: Arc<GithubConfig>,
    pub client: Arc<Client>,
    store: SharedStore,
    queue: SharedQueue,
    clock: Clock,
    /// Orgs sharing this org's installation (or token) budget.
    budget_share: u32,
    state: Mutex<OrgState>,
    distribution: std::sync::OnceLock<Distribution>,
}

impl OrgPoller {
    pub fn new(
        org: OrgConfig,
        gh: Arc<GithubConfig>,
        client: Arc<Client>,
        store: SharedStore,
        queue: SharedQueue,
        clock: Clock,
        budget_share: u32,
    ) -> OrgPoller {
        let name = format!("github/{}", org.org);
        let state = OrgState {
            live: OrgLive {
                effective_interval: org.scrape_interval.as_secs_f64(),
                ..Default::default()
            },
            ..Default::default()
        };
        OrgPoller {
            name,
            org,
            gh,
            client,
            store,
            queue,
            clock,
            budget_share: budget_share.max(1),
            state: Mutex::new(state),
            distribution: std::sync::OnceLock::new(),
        }
    }

    /// Spreads this org's cycles over the replicas through `github/scrape` jobs.
    pub fn distribute(&self, d: Distribution) {
        let _ = self.distribution.set(d);
    }

    pub fn live(&self) -> OrgLive {
        self.state.lock().live.clone()
    }

    fn scope(&self, repo: &str) -> String {
        format!("github/{}/{repo}", self.org.org)
    }

    fn wanted(&self, r: &wire::Repo) -> bool {
        let a = &self.gh.activity;
        if r.disabled || (r.archived && !a.include_archived) || (r.fork && !a.include_forks) {
            return false;
        }
        if !self.org.repo_include.is_empty()
            && !self.org.repo_include.iter().any(|g| glob_match(g, &r.name))
        {
            return false;
        }
        !self.org.repo_exclude.iter().any(|g| glob_match(g, &r.name))
    }

    async fn enqueue(&self, repo: Option<&str>, window_end: i64, reason: &str) {
        let cap = self.gh.backfill.max_enqueues_per_org_per_minute;
        if cap > 0 {
            let minute = self.clock.now() / 60;
            let mut s = self.state.lock();
            if s.enqueued_minute.0 != minute {
                s.enqueued_minute = (minute, 0);
            }
            if s.enqueued_minute.1 >= cap {
                *s.live.backfill.entry("dropped").or_default() += 1;
                return;
            }
            s.enqueued_minute.1 += 1;
        }
        let job = BackfillJob {
            org: self.org.org.clone(),
            repo: repo.map(str::to_string),
            window_end,
            reason: reason.to_string(),
        };
        let key = format!("github:{}:{}:{}", job.org, repo.unwrap_or("*"), window_end);
        let payload = Bytes::from(serde_json::to_vec(&job).expect("job serializes"));
        match self
            .queue
            .publish(topics::GITHUB_BACKFILL, Some(&key), payload)
            .await
        {
            Ok(_) => self.count_backfill("enqueued"),
            Err(e) => {
                tracing::warn!(org = %self.org.org, error = %e, "could not enqueue a backfill job")
            }
        }
    }

    fn count_backfill(&self, result: &'static str) {
        *self.state.lock().live.backfill.entry(result).or_default() += 1;
    }

    /// Scrapes one repo's window `[end − 24h, end]`. `fresh` forbids serving it from the
    /// event cache (backfills of past windows). With `detected`, the org-wide detection says
    /// which repos have new conversations; without it each repo is probed.
    async fn scrape_repo(
        &self,
        repo: &wire::Repo,
        end: i64,
        fresh: bool,
        detected: Option<&Detected>,
    ) -> Scraped {
        let start = end - WINDOW;
        let name = &repo.name;
        let key = format!("{}/{name}", self.org.org);
        let t = |s: &Option<String>| s.as_deref().and_then(wire::parse_time).unwrap_or(0);
        let pushed = t(&repo.pushed_at);
        let marker = (repo.pushed_at.clone(), repo.updated_at.clone());
        // Only pushes move `pushed_at`; reviews and comments move neither it nor `updated_at`,
        // so conversations are found by the org-wide search, or by probing every repo (their
        // 304s are free until the token is renewed).
        let kept: Option<CachedEvents> = self.kv_json(EVENTS_NS, &key).await?;
        let cold = kept.is_none();
        // A repo never fetched waits for a later cycle rather than spend what is left of the
        // hour: a cold start too big for one budget is spread over cycles, newest activity
        // first, while the repos already shown stay exact.
        if cold && !fresh && self.budget_running_low() {
            return Ok(None);
        }
        // Probe before fetching, so a change landing in between is seen next cycle rather
        // than hidden behind a fresh ETag.
        let probe = if fresh || detected.is_some() {
            None
        } else {
            Some(self.probe(name).await?)
        };
        let talked = detected.map(|d| d.conversations.contains(name));
        let unchanged = probe.is_some_and(|p| !p.changed) || talked == Some(false);
        let usable = |c: &CachedEvents| c.events.since <= start && c.events.until <= end;
        let cached = kept
            .as_ref()
            .filter(|c| !fresh && !c.stale && c.marker == marker && usable(c) && unchanged);
        let events = match cached {
            Some(c) => c.events.clone(),
            None => {
                if !fresh {
                    // The probes' ETags have moved on: if the fetch below fails, the old
                    // events must not be reused behind their 304s next cycle.
                    self.store
                        .kv_put(EVENTS_NS, &key, Vec::new(), Some(KV_TTL))
                        .await
                        .map_err(|e| Error::Store(e.to_string()))?;
                }
                // Only a push changed a repo the detection did not name: its kept
                // conversations are still all there are.
                let keep_conversations = kept
                    .as_ref()
                    .filter(|c| !fresh && !c.stale && talked == Some(false) && usable(c));
                let want = Want {
                    commits: pushed >= start,
                    // No PR or comment updated since the window began: none was opened,
                    // merged, reviewed or written in it.
                    conversations: keep_conversations.is_none()
                        && match (detected, probe) {
                            (Some(d), _) => talked == Some(true) || !d.covers_window,
                            (None, Some(p)) => p.newest >= start,
                            (None, None) => true,
                        },
                    graphql: cold && self.gh.graphql && self.graphql_usable(),
                };
                let mut ev = self.fetch_events(name, start, end, want).await?;
                if let Some(c) = keep_conversations {
                    ev.prs = c.events.prs.clone();
                    ev.reviews = c.events.reviews.clone();
                    ev.comments = c.events.comments.clone();
                }
                if !fresh {
                    let c = CachedEvents {
                        marker,
                        events: ev.clone(),
                        stale: false,
                    };
                    self.kv_put_json(EVENTS_NS, &key, &c).await?;
                }
                ev
            }
        };
        let loc = self.loc(name, pushed, end).await?;
        let acts = activity::compute(&events, loc.as_ref(), start, end);
        Ok(Some(activity::samples(
            &self.org.org,
            name,
            &acts,
            &Users {
                cfg: &self.gh.activity,
            },
        )))
    }

    /// Whether the installation's REST budget (or GraphQL's, when cold fetches use it) is
    /// down to its last fifth before its reset: what is left is kept for the repos already
    /// shown, whose changes must not wait. A fifth, twice the tenth below which the client
    /// starts spacing requests out, so fetches already under way finish at full speed.
    fn budget_running_low(&self) -> bool {
        let b = self.client.budget().snapshot();
        let now = crate::clock::now_secs();
        let reserve = u64::from(self.gh.rate_limit.reserve);
        let low = |known: bool, limit: u64, remaining: u64, reset_at: i64| {
            known && reset_at > now && remaining.saturating_sub(reserve) < limit / 5
        };
        low(b.known, b.limit, b.remaining, b.reset_at)
            || (self.gh.graphql
                && self.graphql_usable()
                && low(
                    b.graphql.known,
                    b.graphql.limit,
                    b.graphql.remaining,
                    b.graphql.reset_at,
                ))
    }

    /// Org-wide change detection: one search (a page per 100 results, in search's own
    /// budget) of the issues and pull requests updated since the last detection, instead of
    /// two probes per repo. The repos it names have their kept events marked stale before
    /// the detection is recorded, so a cycle that stops midway cannot leave them unfetched.
    /// `None` (probe each repo instead) when search is off or fails.
    async fn detect(&self, now: i64, repos: &[wire::Repo]) -> Option<Detected> {
        if !self.gh.activity.search {
            return None;
        }
        let org = &self.org.org;
        let start = now - WINDOW;
        let last: Option<i64> = self.kv_json(DETECT_NS, org).await.ok()?;
        let since = last.map_or(start, |w| (w - DETECT_OVERLAP).max(start));
        let found = match self.client.repos_with_conversations(since, now).await {
            Ok(f) => f,
            Err(e @ Error::Cancelled) => {
                tracing::debug!(org = %org, error = %e, "change detection cancelled");
                return None;
            }
            Err(e) => {
                tracing::warn!(org = %org, kind = e.kind(), error = %e, "org-wide change detection failed; probing each repo this cycle");
                self.state.lock().live.detection_fallbacks += 1;
                return None;
            }
        };
        let listed: BTreeSet<&str> = repos.iter().map(|r| r.name.as_str()).collect();
        let stale = CachedEvents {
            stale: true,
            ..Default::default()
        };
        let mut conversations = BTreeSet::new();
        for (repo, newest) in found {
            if !listed.contains(repo.as_str()) {
                continue;
            }
            let key = format!("{org}/{repo}");
            let marked = match self.kv_json::<CachedEvents>(EVENTS_NS, &key).await {
                // Nothing kept: fetched anyway, and cold (over GraphQL).
                Ok(None) => Ok(true),
                // Fetched after this update (the overlap finds it again): nothing new.
                Ok(Some(c)) if !c.stale && c.events.until > newest => Ok(false),
                Ok(Some(_)) => self
                    .kv_put_json(EVENTS_NS, &key, &stale)
                    .await
                    .map(|()| true),
                Err(e) => Err(e),
            };
            match marked {
                Ok(true) => {
                    conversations.insert(repo);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(org = %org, error = %e, "could not record the change detection; probing each repo this cycle");
                    return None;
                }
            }
        }
        if let Err(e) = self.kv_put_json(DETECT_NS, org, &now).await {
            tracing::warn!(org = %org, error = %e, "could not record the change detection; probing each repo this cycle");
            return None;
        }
        self.state.lock().live.detected_repos = conversations.len() as u64;
        Some(Detected {
            covers_window: since <= start,
            conversations,
        })
    }

    /// Conditional probes of the newest PR page and the newest comment: two 304s (free)
    /// when nothing changed.
    async fn probe(&self, repo: &str) -> Result<Probe, Error> {
        let org = &self.org.org;
        let (pulls, pulls_newest) = self
            .client
            .probe(
                &format!(
                    "/repos/{org}/{repo}/pulls?state=all&sort=updated&direction=desc&per_page=100"
                ),
                "pulls",
            )
            .await?;
        let (comments, comments_newest) = self
            .client
            .probe(
                &format!(
                    "/repos/{org}/{repo}/issues/comments?sort=updated&direction=desc&per_page=1"
                ),
                "issue_comments",
            )
            .await?;
        Ok(Probe {
            changed: pulls || comments,
            newest: pulls_newest.max(comments_newest),
        })
    }

    /// GraphQL: one query for PRs and their reviews (best when nothing is cached); REST
    /// otherwise, where unchanged PRs' reviews answer 304.
    async fn fetch_events(
        &self,
        repo: &str,
        start: i64,
        end: i64,
        want: Want,
    ) -> Result<RepoEvents, Error> {
        let commits = if want.commits {
            self.client.commits(repo, start, end).await?
        } else {
            Vec::new()
        };
        if !want.conversations {
            return Ok(RepoEvents::from_wire(start, end, &commits, &[], &[], &[]));
        }
        let gql = if want.graphql {
            match self.client.pulls_with_reviews_since(repo, start).await {
                Ok(x) => Some(x),
                // GraphQL's own budget is spent: REST costs more but still works.
                Err(Error::RateLimited { .. }) => None,
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                // GraphQL is an optimisation: whatever breaks it (5xx, errors, timeouts,
                // answers that do not decode), REST still answers the same question.
                Err(e) => {
                    self.graphql_failed(repo, &e);
                    None
                }
            }
        } else {
            None
        };
        let (pulls, reviews) = if let Some(x) = gql {
            x
        } else {
            let pulls = self.client.pulls_updated_since(repo, start).await?;
            let mut reviews = Vec::new();
            for p in &pulls {
                // Conditional: reviews of a PR that did not change answer 304.
                reviews.extend(self.client.reviews(repo, p.number).await?);
            }
            (pulls, reviews)
        };
        let comments = self.client.issue_comments_since(repo, start).await?;
        Ok(RepoEvents::from_wire(
            start, end, &commits, &pulls, &reviews, &comments,
        ))
    }

    fn graphql_usable(&self) -> bool {
        self.clock.now() >= self.state.lock().graphql_rest_until
    }

    /// Falls back to REST for this fetch and rests GraphQL for the org a while, so a broken
    /// GraphQL endpoint costs one failed query per pause, not one per repo.
    fn graphql_failed(&self, repo: &str, e: &Error) {
        let mut s = self.state.lock();
        *s.live.graphql_fallbacks.entry(e.kind()).or_default() += 1;
        let until = self.clock.now() + GRAPHQL_REST.as_secs() as i64;
        if s.graphql_rest_until < until {
            tracing::warn!(org = %self.org.org, repo, kind = e.kind(), error = %e, pause = ?GRAPHQL_REST, "GraphQL failed; using REST meanwhile");
            s.graphql_rest_until = until;
        }
    }

    /// LOC of the last complete week before `end`, fetched at most once per week and
    /// `loc.refresh_interval`; `None` when the repo had no push since that week began.
    /// Repos whose stats come back without line counts switch to the commit-level fallback.
    async fn loc(&self, repo: &str, pushed: i64, end: i64) -> Result<Option<Loc>, Error> {
        let week = wire::week_start(end) - 7 * 86_400;
        if pushed < week {
            return Ok(None);
        }
        let key = format!("{}/{repo}", self.org.org);
        let cached: Option<Loc> = self
            .kv_json::<Loc>(LOC_NS, &key)
            .await?
            .filter(|c| c.week_start == week);
        let lc = &self.gh.loc;
        let mut mode: LocMode = self.kv_json(LOC_MODE_NS, &key).await?.unwrap_or_default();
        let mut fallback = lc.fallback_enabled && mode.fallback_until > end;
        if let Some(c) = &cached
            && (fallback || end - c.fetched_at < lc.refresh_interval.as_secs() as i64)
        {
            return Ok(cached);
        }
        if !fallback {
            match self
                .client
                .contributor_stats(repo, lc.pending_retries, lc.pending_retry_delay)
                .await
            {
                Ok(stats) => {
                    let zeroed = lc.fallback_enabled && Loc::zeroed(&stats, end);
                    if zeroed {
                        mode.zero_windows += 1;
                        if mode.zero_windows >= lc.large_repo_zero_detection_windows {
                            mode.zero_windows = 0;
                            mode.fallback_until = end + lc.large_repo_cooldown.as_secs() as i64;
                            fallback = true;
                            tracing::info!(org = %self.org.org, repo, "contributor stats carry no line counts; using commit-level LOC");
                        }
                        self.kv_put_json(LOC_MODE_NS, &key, &mode).await?;
                    } else if mode.zero_windows > 0 {
                        mode.zero_windows = 0;
                        self.kv_put_json(LOC_MODE_NS, &key, &mode).await?;
                    }
                    if !fallback {
                        let loc = Loc::from_stats(&stats, end);
                        self.kv_put_json(LOC_NS, &key, &loc).await?;
                        return Ok(Some(loc));
                    }
                }
                Err(Error::StatsPending) => {
                    tracing::debug!(org = %self.org.org, repo, "contributor stats still computing; keeping the last LOC");
                    return Ok(cached);
                }
                Err(e @ Error::Cancelled) => return Err(e),
                // LOC is weekly and cached: a failed refresh keeps this week's last value
                // (none for a week not fetched yet, never a partial one) and is retried next
                // cycle, while the repo's activity is published anyway.
                Err(e) => {
                    tracing::warn!(org = %self.org.org, repo, error = %e, "contributor stats failed; keeping the last LOC");
                    return Ok(cached);
                }
            }
        }
        match self.fallback_loc(repo, week, end).await {
            Ok(Some(loc)) => {
                self.kv_put_json(LOC_NS, &key, &loc).await?;
                Ok(Some(loc))
            }
            Ok(None) => Ok(cached),
            Err(e @ Error::Cancelled) => Err(e),
            Err(e) => {
                tracing::warn!(org = %self.org.org, repo, error = %e, "LOC from commit details failed; keeping the last LOC");
                Ok(cached)
            }
        }
    }

    /// The week's LOC from `GET /commits/{sha}` of each of its commits, only when the whole
    /// week fits the per-repo cap and the org's hourly budget: a partial sum is never shown.
    async fn fallback_loc(&self, repo: &str, week: i64, end: i64) -> Result<Option<Loc>, Error> {
        let lc = &self.gh.loc;
        let commits = self
            .client
            .commits(repo, week, week + 7 * 86_400 - 1)
            .await?;
        if commits.len() > lc.fallback_max_commits_per_repo_per_week as usize {
            tracing::warn!(org = %self.org.org, repo, commits = commits.len(), cap = lc.fallback_max_commits_per_repo_per_week, "too many commits for the LOC fallback; no LOC for this repo this week");
            return Ok(None);
        }
        {
            let hour = end / 3600;
            let mut s = self.state.lock();
            if s.fallback_hour.0 != hour {
                s.fallback_hour = (hour, 0);
            }
            let need = commits.len() as u32;
            if s.fallback_hour.1 + need > lc.fallback_max_commit_detail_calls_per_org_per_hour {
                s.live.loc_fallback_deferred += 1;
                return Ok(None);
            }
            s.fallback_hour.1 += need;
        }
        let mut details = Vec::with_capacity(commits.len());
        for c in &commits {
            details.push(self.client.commit_detail(repo, &c.sha).await?);
        }
        Ok(Some(Loc::from_commits(&details, week, end)))
    }

    async fn kv_json<T: serde::de::DeserializeOwned>(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let v = self
            .store
            .kv_get(ns, key)
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn kv_put_json<T: Serialize>(&self, ns: &str, key: &str, v: &T) -> Result<(), Error> {
        self.store
            .kv_put(
                ns,
                key,
                serde_json::to_vec(v).expect("serializes"),
                Some(KV_TTL),
            )
            .await
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// The end of the window `repo`'s scope shows: its version in the store.
    fn shown_window(&self, repo: &str) -> i64 {
        self.store
            .snapshot()
            .scope(&self.scope(repo))
            .map_or(0, |s| s.version)
    }

    fn fail_cycle(&self, now: i64) {
        let mut s = self.state.lock();
        s.consecutive_failures += 1;
        if s.consecutive_failures >= self.gh.unhealthy_failure_threshold {
            s.cooldown_until = now + self.gh.unhealthy_cooldown.as_secs() as i64;
            s.consecutive_failures = 0;
            s.live.cooldown = true;
            tracing::warn!(org = %self.org.org, cooldown = ?self.gh.unhealthy_cooldown, "GitHub org failed repeatedly; cooling down (skipped cycles are backfilled)");
        }
    }

    /// Runs a backfill job. `Ok` when applied or superseded; `Err` to retry later.
    pub async fn backfill(&self, job: &BackfillJob) -> Result<(), Error> {
        let repos = self.client.org_repos().await?;
        let mut first_err = None;
        for r in repos.iter().filter(|r| self.wanted(r)) {
            if job.repo.as_deref().is_some_and(|n| n != r.name) {
                continue;
            }
            // Cheap early exit; the store checks again atomically when writing, since a cycle
            // (on any replica) may finish meanwhile.
            if self.shown_window(&r.name) >= job.window_end {
                self.count_backfill("superseded");
                continue;
            }
            match self.scrape_repo(r, job.window_end, true, None).await {
                Ok(samples) => {
                    let samples = samples.unwrap_or_default();
                    let written = self
                        .store
                        .replace_scope_if_newer(&self.scope(&r.name), job.window_end, samples)
                        .await
                        .map_err(|e| Error::Store(e.to_string()))?;
                    self.count_backfill(match written {
                        Written::Written => "applied",
                        Written::Superseded => "superseded",
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => {
                self.count_backfill("failed");
                Err(e)
            }
        }
    }

    /// Scrapes the window ending at `end` of each of `repos`, `per_org_concurrency` at a
    /// time, yielding each repo's name and result as it finishes.
    fn scrape_repos<'a>(
        &'a self,
        repos: &'a [wire::Repo],
        end: i64,
        detected: Option<&'a Detected>,
    ) -> impl futures_util::Stream<Item = (String, Scraped)> + Send + 'a {
        // Boxed: the futures borrow `self` and their repo, which an unboxed closure's
        // higher-ranked lifetimes cannot express.
        type Scrape<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = (String, Scraped)> + Send + 'a>>;
        let futs: Vec<Scrape<'a>> = repos
            .iter()
            .map(|r| -> Scrape<'a> {
                Box::pin(async move {
                    (
                        r.name.clone(),
                        self.scrape_repo(r, end, false, detected).await,
                    )
                })
            })
            .collect();
        futures_util::stream::iter(futs).buffer_unordered(self.org.concurrency)
    }

    /// Shows a cycle's progress (`done` of `total` repos since `started`); returns the rate
    /// (repos/s) and the ETA in seconds, 0 once `finished`.
    fn show_progress(
        &self,
        done: usize,
        total: usize,
        started: Instant,
        finished: bool,
    ) -> (f64, f64) {
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let eta = if finished {
            0.0
        } else {
            total.saturating_sub(done) as f64 / rate.max(1e-9)
        };
        let mut s = self.state.lock();
        s.live.progress = done as f64 / total.max(1) as f64;
        s.live.eta = eta;
        (rate, eta)
    }

    /// Records the cold repos a cycle left for later ones: the cycle's progress then shows
    /// how much of the org is shown, and the start is logged while it is spread.
    fn cold_deferred(&self, deferred: usize, total: usize) {
        let mut s = self.state.lock();
        s.live.cold_pending = deferred as u64;
        if deferred > 0 {
            s.live.progress = (total - deferred) as f64 / total.max(1) as f64;
            tracing::info!(org = %self.org.org, shown = total - deferred, total, deferred, "cold start spread over cycles: the rate-limit budget is running low, the remaining repos follow in the next cycles");
        }
    }

    /// The scopes of repos no longer listed (deleted, archived, excluded), emptied.
    fn unlisted(&self, repos: &[wire::Repo]) -> Vec<ScopeResult> {
        let listed: BTreeSet<String> = repos.iter().map(|r| self.scope(&r.name)).collect();
        let prefix = format!("github/{}/", self.org.org);
        self.store
            .snapshot()
            .scopes
            .iter()
            .filter(|s| s.name.starts_with(&prefix) && !listed.contains(&*s.name))
            .map(|s| ScopeResult {
                scope: s.name.to_string(),
                version: None,
                result: Ok(Vec::new()),
            })
            .collect()
    }

    /// A distributed cycle: records the schedule under the leader's fence, queues the repos
    /// as jobs, and waits for their outcomes, which any replica may write.
    async fn dispatch(
        &self,
        d: &Distribution,
        now: i64,
        repos: Vec<wire::Repo>,
        detected: Option<Detected>,
        spent_before: u64,
        searches_before: u64,
    ) -> Vec<ScopeResult> {
        let org = &self.org.org;
        let org_scope = format!("github/{org}");
        let total = repos.len();
        let batches: Vec<&[wire::Repo]> = repos.chunks(d.batch_size).collect();
        let schedule = serde_json::json!({
            "window_end": now,
            "batches": batches.len(),
            "repos": total,
            "fence": d.leadership.fence(),
        });
        match d
            .leadership
            .put_fenced(
                SCHEDULE_NS,
                org,
                serde_json::to_vec(&schedule).expect("a schedule serializes"),
                Some(KV_TTL),
            )
            .await
        {
            Ok(true) => {}
            // Another replica leads: it schedules this window.
            Ok(false) => return Vec::new(),
            Err(e) => {
                self.fail_cycle(now);
                return vec![ScopeResult::new(
                    org_scope,
                    Err(PollError::new("store", e.to_string())),
                )];
            }
        }
        let budget = self.gh.activity.series_budget_per_org;
        let mut out = self.unlisted(&repos);
        let mut pending: BTreeSet<usize> = BTreeSet::new();
        let mut failed = 0usize;
        for (i, batch) in batches.iter().enumerate() {
            let job = ScrapeJob {
                org: org.clone(),
                window_end: now,
                batch: i,
                fence: d.leadership.fence(),
                series_budget: budget.saturating_mul(batch.len() as u64) / total.max(1) as u64,
                repos: batch.to_vec(),
                detected: detected.as_ref().map(|d| d.for_repos(batch)),
            };
            let payload = Bytes::from(serde_json::to_vec(&job).expect("a job serializes"));
            let key = format!("github:scrape:{}", job.key());
            match self
                .queue
                .publish(topics::GITHUB_SCRAPE, Some(&key), payload)
                .await
            {
                Ok(_) => {
                    pending.insert(i);
                }
                Err(e) => {
                    tracing::warn!(org = %org, batch = i, error = %e, "could not queue a scrape job; its repos are backfilled");
                    for r in batch.iter() {
                        failed += 1;
                        self.enqueue(Some(&r.name), now, "queue").await;
                        out.push(ScopeResult::new(
                            self.scope(&r.name),
                            Err(PollError::new("queue", e.to_string())),
                        ));
                    }
                }
            }
        }
        let started = Instant::now();
        let mut done_repos = 0usize;
        let mut deferred = 0usize;
        let mut requests = 0u64;
        let mut exceeded = false;
        while !pending.is_empty() {
            if !d.leadership.is_leader() {
                // The new leader carries the cycle on; the jobs are still consumed.
                return Vec::new();
            }
            tokio::time::sleep(JOB_POLL).await;
            for i in pending.clone() {
                let outcome = match self
                    .kv_json::<JobOutcome>(JOBS_NS, &job_key(org, now, i))
                    .await
                {
                    Ok(Some(o)) => o,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(org = %org, error = %e, "job outcomes unavailable");
                        break;
                    }
                };
                pending.remove(&i);
                done_repos += outcome.repos;
                deferred += outcome.deferred;
                requests += outcome.requests;
                exceeded |= outcome.budget_exceeded;
                for (repo, kind, message) in outcome.failed {
                    failed += 1;
                    out.push(ScopeResult::new(
                        self.scope(&repo),
                        Err(PollError::new(error_kind(&kind), message)),
                    ));
                }
            }
            self.show_progress(done_repos, total, started, pending.is_empty());
        }
        self.cold_deferred(deferred, total);
        if exceeded {
            tracing::warn!(org = %org, budget, "series budget reached; some series were dropped");
        }
        self.state.lock().live.series_budget_exceeded = exceeded;
        if total > 0 && failed == total {
            self.fail_cycle(now);
        } else {
            self.state.lock().consecutive_failures = 0;
        }
        let listing = self.client.counts.spent.load(Ordering::Relaxed) - spent_before;
        self.stretch(
            now,
            listing + requests,
            self.searches_since(searches_before),
        );
        // The jobs wrote the repos' scopes; the org's own (empty) scope records the cycle, so
        // that its time is the source's last success after a restart.
        out.push(ScopeResult::new(org_scope, Ok(Vec::new())));
        out
    }

    /// Runs one job of a distributed cycle on this replica: scrapes its repos, writes their
    /// scopes (unless a newer window is already shown), queues a backfill for each repo that
    /// failed, and records the outcome for the leader. `Err` only when the store failed.
    pub async fn run_job(&self, job: &ScrapeJob) -> Result<(), Error> {
        let key = job.key();
        if self
            .store
            .kv_get(JOBS_NS, &key)
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .is_some()
        {
            // A redelivery of a job that finished.
            return Ok(());
        }
        let spent_before = self.client.counts.spent.load(Ordering::Relaxed);
        let mut results: Vec<(String, Scraped)> = self
            .scrape_repos(&job.repos, job.window_end, job.detected.as_ref())
            .collect()
            .await;
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut outcome = JobOutcome {
            repos: job.repos.len(),
            ..Default::default()
        };
        for (repo, r) in results {
            match r {
                Ok(None) => outcome.deferred += 1,
                Ok(Some(mut samples)) => {
                    let room = job.series_budget.saturating_sub(outcome.series) as usize;
                    if samples.len() > room {
                        samples.truncate(room);
                        outcome.budget_exceeded = true;
                    }
                    outcome.series += samples.len() as u64;
                    self.store
                        .replace_scope_if_newer(&self.scope(&repo), job.window_end, samples)
                        .await
                        .map_err(|e| Error::Store(e.to_string()))?;
                }
                Err(e) => {
                    if retryable(&e) {
                        self.enqueue(Some(&repo), job.window_end, e.kind()).await;
                    }
                    outcome
                        .failed
                        .push((repo, e.kind().to_string(), e.to_string()));
                }
            }
        }
        outcome.requests = self.client.counts.spent.load(Ordering::Relaxed) - spent_before;
        self.store
            .kv_put(
                JOBS_NS,
                &key,
                serde_json::to_vec(&outcome).expect("an outcome serializes"),
                Some(JOB_TTL),
            )
            .await
            .map_err(|e| Error::Store(e.to_string()))
    }

    fn searches_since(&self, before: u64) -> u64 {
        self.client.counts.search.load(Ordering::Relaxed) - before
    }

    /// Compares the cycle's cost with the org's share of the hourly budgets, REST's (with
    /// GraphQL fallbacks) and search's apart: when the configured interval cannot fit either,
    /// warns and spaces cycles out rather than running dry mid-cycle. The first (cold) cycle
    /// only records its cost.
    fn stretch(&self, started: i64, requests: u64, searches: u64) {
        let interval = self.org.scrape_interval.as_secs_f64();
        let b = self.client.budget().snapshot();
        let limit = if b.known && b.limit > 0 {
            b.limit
        } else {
            5000
        };
        let share = f64::from(self.budget_share);
        let per_hour =
            (limit.saturating_sub(u64::from(self.gh.rate_limit.reserve)) as f64 / share).max(1.0);
        // Search's limit is per minute.
        let search_limit = if b.search.known && b.search.limit > 0 {
            b.search.limit
        } else {
            30
        };
        let search_per_hour = (search_limit * 60) as f64 / share;
        let mut s = self.state.lock();
        s.cycles += 1;
        s.live.cycle_requests = requests;
        // A cold start, whole or spread over cycles, costs more than the steady state.
        let cold = s.cycles < 2 || s.spreading || s.live.cold_pending > 0;
        s.spreading = s.live.cold_pending > 0;
        if cold {
            return;
        }
        let needed = requests as f64 * 3600.0 / interval;
        let needed_search = searches as f64 * 3600.0 / interval;
        let over = needed > per_hour || needed_search > search_per_hour;
        if over && !s.live.overcommitted {
            tracing::warn!(org = %self.org.org, requests_per_cycle = requests, needed_per_hour = needed as u64, budget_per_hour = per_hour as u64, searches_per_cycle = searches, search_budget_per_hour = search_per_hour as u64, interval = ?self.org.scrape_interval, "the org's scrape interval does not fit its rate-limit budget; stretching the interval");
        }
        s.live.overcommitted = over;
        let effective = if over {
            (requests as f64 * 3600.0 / per_hour).max(searches as f64 * 3600.0 / search_per_hour)
        } else {
            interval
        };
        s.live.effective_interval = effective;
        s.next_start = started + effective as i64;
    }
}

#[async_trait]
impl Poller for OrgPoller {
    fn name(&self) -> &str {
        &self.name
    }

    fn scopes(&self) -> Vec<String> {
        vec![format!("github/{}/", self.org.org)]
    }

    fn interval(&self) -> Duration {
        self.org.scrape_interval
    }

    fn timeout(&self) -> Duration {
        // Rate-limit waits are part of a cycle; a whole reset window must fit.
        (self.org.scrape_interval * 4).max(Duration::from_secs(2 * 3600))
    }

    fn shared_state(&self) -> Option<serde_json::Value> {
        let b = self.client.budget().snapshot();
        let s = self.state.lock();
        let shared = SharedOrg {
            consecutive_failures: s.consecutive_failures,
            cooldown_until: s.cooldown_until,
            next_start: s.next_start,
            cycles: s.cycles,
            cycle_requests: s.live.cycle_requests,
            overcommitted: s.live.overcommitted,
            effective_interval: s.live.effective_interval,
            cooldown: s.live.cooldown,
            progress: s.live.progress,
            eta: s.live.eta,
            cold_pending: s.live.cold_pending,
            series_budget_exceeded: s.live.series_budget_exceeded,
            budget: b.known.then_some((b.limit, b.remaining, b.reset_at)),
        };
        serde_json::to_value(shared).ok()
    }

    fn adopt_state(&self, state: serde_json::Value) {
        let Ok(o) = serde_json::from_value::<SharedOrg>(state) else {
            return;
        };
        if let Some((limit, remaining, reset_at)) = o.budget {
            self.client.budget().adopt(limit, remaining, reset_at);
        }
        let mut s = self.state.lock();
        s.consecutive_failures = o.consecutive_failures;
        s.cooldown_until = o.cooldown_until;
        // A new leader polls at once (a takeover must not miss a window) unless the budget
        // had the old leader space its cycles out.
        s.next_start = if o.overcommitted { o.next_start } else { 0 };
        s.cycles = o.cycles;
        s.live.cycle_requests = o.cycle_requests;
        s.live.overcommitted = o.overcommitted;
        s.live.effective_interval = o.effective_interval;
        s.live.cooldown = o.cooldown;
        s.live.progress = o.progress;
        s.live.eta = o.eta;
        s.live.cold_pending = o.cold_pending;
        s.live.series_budget_exceeded = o.series_budget_exceeded;
    }

    async fn poll(&self) -> Vec<ScopeResult> {
        let now = self.clock.now();
        let (cooling, stretched) = {
            let mut s = self.state.lock();
            let cooling = now < s.cooldown_until;
            if !cooling {
                s.live.cooldown = false;
            }
            (cooling, now < s.next_start)
        };
        let org_scope = format!("github/{}", self.org.org);
        if cooling {
            self.enqueue(None, now, "github_unhealthy").await;
            // Not a skip: the org is down until the cooldown ends, and its values age.
            return vec![ScopeResult {
                scope: org_scope,
                version: None,
                result: Err(PollError::new(
                    "cooldown",
                    "cooling down after repeated failures",
                )),
            }];
        }
        if stretched {
            return Vec::new();
        }
        let searches_before = self.client.counts.search.load(Ordering::Relaxed);
        let spent_before = self.client.counts.spent.load(Ordering::Relaxed);
        let repos = match self.client.org_repos().await {
            Ok(r) => r,
            Err(e) => {
                self.fail_cycle(now);
                self.enqueue(None, now, "scrape_error").await;
                return vec![ScopeResult {
                    scope: org_scope,
                    version: None,
                    result: Err(PollError::new(e.kind(), e.to_string())),
                }];
            }
        };
        let mut repos: Vec<wire::Repo> = repos.into_iter().filter(|r| self.wanted(r)).collect();
        let detected = self.detect(now, &repos).await;
        // Newest activity first: a cycle that waits for the rate limit's reset midway (a cold
        // start of a huge org) has shown the busiest repos by then.
        let talked = |r: &wire::Repo| {
            detected
                .as_ref()
                .is_some_and(|d| d.conversations.contains(&r.name))
        };
        repos.sort_by_cached_key(|r| {
            std::cmp::Reverse((talked(r), r.pushed_at.as_deref().and_then(wire::parse_time)))
        });
        if let Some(d) = self.distribution.get() {
            return self
                .dispatch(d, now, repos, detected, spent_before, searches_before)
                .await;
        }
        let total = repos.len();
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut done = 0usize;
        let mut results: Vec<(String, Scraped)> = Vec::with_capacity(total);
        let mut stream = self.scrape_repos(&repos, now, detected.as_ref());
        while let Some(r) = stream.next().await {
            done += 1;
            results.push(r);
            let (rate, eta) = self.show_progress(done, total, started, done == total);
            if total >= 50 && last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                tracing::info!(org = %self.org.org, done, total, repos_per_s = format!("{rate:.1}"), eta_s = eta as u64, "GitHub scrape in progress");
            }
        }
        drop(stream);
        // Scopes of repos no longer scraped (deleted, archived, excluded) are emptied.
        let mut out = self.unlisted(&repos);
        let mut series = 0u64;
        let budget = self.gh.activity.series_budget_per_org;
        let mut exceeded = false;
        let mut failed = 0usize;
        let mut deferred = 0usize;
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (repo, r) in results {
            let scope = self.scope(&repo);
            match r {
                // Never fetched and left for a later cycle: nothing to show yet.
                Ok(None) => deferred += 1,
                Ok(Some(mut samples)) => {
                    let room = budget.saturating_sub(series) as usize;
                    if samples.len() > room {
                        samples.truncate(room);
                        exceeded = true;
                    }
                    series += samples.len() as u64;
                    // The window's end is the scope's version: a backfill of an older window
                    // never replaces it.
                    out.push(ScopeResult {
                        scope,
                        version: Some(now),
                        result: Ok(samples),
                    });
                }
                Err(e) => {
                    failed += 1;
                    if retryable(&e) {
                        self.enqueue(Some(&repo), now, e.kind()).await;
                    }
                    out.push(ScopeResult {
                        scope,
                        version: None,
                        result: Err(PollError::new(e.kind(), e.to_string())),
                    });
                }
            }
        }
        self.cold_deferred(deferred, total);
        if exceeded {
            tracing::warn!(org = %self.org.org, budget, "series budget reached; some series were dropped");
        }
        self.state.lock().live.series_budget_exceeded = exceeded;
        if total > 0 && failed == total {
            self.fail_cycle(now);
        } else {
            self.state.lock().consecutive_failures = 0;
        }
        let spent = self.client.counts.spent.load(Ordering::Relaxed) - spent_before;
        self.stretch(now, spent, self.searches_since(searches_before));
        out
    }
}

/// A 4xx on one repo (gone, forbidden) is not fixed by asking again for the same window;
/// the next cycle sees the new listing.
fn retryable(e: &Error) -> bool {
    !matches!(
        e,
        Error::Cancelled
            | Error::Status {
                status: 400..=499,
                ..
            }
    )
}

/// A job outcome's error kind as the bounded label the source's health counts it under.
fn error_kind(kind: &str) -> &'static str {
    Error::KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("job")
}

/// Runs `github/scrape` jobs on their org's poller, on every replica.
pub struct Scrape {
    pub pollers: HashMap<String, Arc<OrgPoller>>,
}

#[async_trait]
impl Handler for Scrape {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let job: ScrapeJob = serde_json::from_slice(&delivery.payload)
            .map_err(|e| Failure::permanent("decode", format_args!("scrape job: {e}")))?;
        let Some(p) = self.pollers.get(&job.org) else {
            tracing::warn!(org = %job.org, "dropping a scrape job of an org no longer configured");
            return Ok(());
        };
        p.run_job(&job).await.map_err(|e| {
            Failure::new(
                e.kind(),
                format_args!(
                    "{} window {} batch {}: {e}",
                    job.org, job.window_end, job.batch
                ),
            )
        })
    }
}

/// Runs `github/backfill` jobs on their org's poller.
pub struct Backfill {
    pub pollers: HashMap<String, Arc<OrgPoller>>,
    pub max_age: Duration,
    pub clock: Clock,
}

#[async_trait]
impl Handler for Backfill {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let job: BackfillJob = serde_json::from_slice(&delivery.payload)
            .map_err(|e| Failure::permanent("decode", format_args!("backfill job: {e}")))?;
        let Some(p) = self.pollers.get(&job.org) else {
            tracing::warn!(org = %job.org, "dropping a backfill job of an org no longer configured");
            return Ok(());
        };
        if self.clock.now() - job.window_end > self.max_age.as_secs() as i64 {
            p.count_backfill("expired");
            return Ok(());
        }
        p.backfill(&job).await.map_err(|e| {
            Failure::new(
                e.kind(),
                format_args!("{} {:?} window {}: {e}", job.org, job.repo, job.window_end),
            )
        })
    }
}
