//! The lead-time breakdown DevLake and LinearB show: for each pull request that reaches
//! production, coding time (first commit → opened), pickup time (opened → first review by
//! someone else), review time (first review → merged) and deploy time (merged → the first
//! successful production deployment shipping its merge commit). `pull_request` and
//! `pull_request_review` deliveries keep each pull request's times; the deployment that
//! ships the merge commit observes all four at once, each pull request once.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::metrics::{self, FamilyId, Labels, Op, Update};
use crate::store::{Batch, SharedStore};

const PRS: &str = "dora.prs";
/// A merge commit → its pull request.
const MERGED: &str = "dora.merged";
const KEEP: Duration = Duration::from_secs(180 * 86_400);

#[derive(Debug, Deserialize)]
struct Event {
    pull_request: Option<Pull>,
    review: Option<Review>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct Pull {
    number: Option<u64>,
    created_at: Option<String>,
    merged_at: Option<String>,
    merge_commit_sha: Option<String>,
    head: Option<Head>,
    user: Option<User>,
}

#[derive(Debug, Deserialize)]
struct Head {
    sha: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    login: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Review {
    submitted_at: Option<String>,
    state: Option<String>,
    user: Option<User>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: Option<String>,
}

/// One pull request's times, as kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Times {
    pub opened: f64,
    pub first_review: Option<f64>,
    pub merged: Option<f64>,
    pub merge_sha: Option<String>,
    pub head_sha: Option<String>,
}

fn ts(s: Option<&str>) -> Option<f64> {
    crate::timestamp::parse_rfc3339(s?)
}

#[derive(Clone)]
pub struct PullRequests {
    pub store: SharedStore,
}

impl PullRequests {
    async fn load(&self, key: &str) -> Result<Option<Times>, crate::store::Error> {
        Ok(self
            .store
            .kv_get(PRS, key)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Keeps what a `pull_request` or `pull_request_review` delivery says; returns the
    /// outcome counted.
    pub async fn record(
        &self,
        event: &str,
        body: &[u8],
    ) -> Result<&'static str, crate::store::Error> {
        let Ok(e) = serde_json::from_slice::<Event>(body) else {
            return Ok("malformed");
        };
        let (Some(p), Some(repo)) = (e.pull_request, e.repository.and_then(|r| r.full_name)) else {
            return Ok("incomplete");
        };
        let (Some(number), Some(opened)) = (p.number, ts(p.created_at.as_deref())) else {
            return Ok("incomplete");
        };
        let repo = repo.to_ascii_lowercase();
        let key = format!("{repo}#{number}");
        let mut t = self.load(&key).await?.unwrap_or_default();
        t.opened = opened;
        if event == "pull_request_review" {
            let Some(r) = e.review else {
                return Ok("incomplete");
            };
            let author = p.user.and_then(|u| u.login);
            let reviewer = r.user.and_then(|u| u.login);
            // A comment left by the author on their own pull request is not a pickup.
            let own = author.is_some() && author == reviewer;
            let pending = r
                .state
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("pending"));
            if let Some(at) = ts(r.submitted_at.as_deref()).filter(|_| !own && !pending) {
                t.first_review = Some(t.first_review.map_or(at, |f| f.min(at)));
            }
        } else {
            if let Some(m) = ts(p.merged_at.as_deref()) {
                t.merged = Some(m);
                t.merge_sha = p.merge_commit_sha.clone();
            }
            if let Some(h) = p.head.and_then(|h| h.sha) {
                t.head_sha = Some(h);
            }
        }
        let value = serde_json::to_vec(&t).expect("times encode");
        self.store.kv_put(PRS, &key, value, Some(KEEP)).await?;
        if let (Some(_), Some(sha)) = (t.merged, &t.merge_sha) {
            self.store
                .kv_put(
                    MERGED,
                    &format!("{repo}@{sha}"),
                    number.to_string().into_bytes(),
                    Some(KEEP),
                )
                .await?;
        }
        Ok(if event == "pull_request_review" {
            "review"
        } else {
            "pull_request"
        })
    }

    /// The breakdown of every pull request whose merge commit a successful production
    /// deployment of `repo` at `at` ships (`commits`, and the deployed `sha` itself).
    pub async fn shipped(
        &self,
        repo: &str,
        team: &str,
        at: f64,
        commits: &[(String, f64)],
        sha: &str,
    ) -> Result<Vec<Batch>, crate::store::Error> {
        let repo = repo.to_ascii_lowercase();
        let mut out = Vec::new();
        let shas = commits
            .iter()
            .map(|(s, _)| s.as_str())
            .chain(std::iter::once(sha));
        let mut seen = std::collections::BTreeSet::new();
        for s in shas {
            let Some(n) = self
                .store
                .kv_get(MERGED, &format!("{repo}@{s}"))
                .await?
                .and_then(|b| String::from_utf8(b).ok())
            else {
                continue;
            };
            if !seen.insert(n.clone()) {
                continue;
            }
            let key = format!("{repo}#{n}");
            let Some(t) = self.load(&key).await? else {
                continue;
            };
            let first_commit = match &t.head_sha {
                Some(h) => super::changes::oldest_commit(&*self.store, &repo, h).await?,
                None => None,
            };
            out.push(Batch {
                key: format!("pr:{key}"),
                scope: super::deployments::SCOPE.to_string(),
                updates: breakdown(team, &t, first_commit, at),
            });
        }
        Ok(out)
    }
}

/// The four observations of one pull request deployed at `at`; a stage whose ends are not
/// both known (or out of order) is left out.
pub fn breakdown(team: &str, t: &Times, first_commit: Option<f64>, at: f64) -> Vec<Update> {
    let stages: [(FamilyId, Option<f64>, Option<f64>); 4] = [
        (
            metrics::DORA_PR_CODING_SECONDS,
            first_commit,
            Some(t.opened),
        ),
        (
            metrics::DORA_PR_PICKUP_SECONDS,
            Some(t.opened),
            t.first_review,
        ),
        (metrics::DORA_PR_REVIEW_SECONDS, t.first_review, t.merged),
        (metrics::DORA_PR_DEPLOY_SECONDS, t.merged, Some(at)),
    ];
    stages
        .into_iter()
        .filter_map(|(family, from, to)| {
            let d = to? - from?;
            (d >= 0.0).then(|| Update {
                family,
                labels: Labels::new(family, &[team]).expect("one label"),
                op: Op::Observe(d),
            })
        })
        .collect()
}
