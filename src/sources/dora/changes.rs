//! Changes from `push` deliveries, and what a production deployment ships. Each push is kept
//! (its `before`, `after` and commits with their times), so a successful production
//! deployment of `sha` walks the pushes back from `sha` to the previous successful deployment
//! of that repository and environment: those commits are what it ships, each with a lead
//! time of deployment − commit time. No API call is made; a chain the pushes do not cover is
//! counted as incomplete rather than guessed.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::store::Store;

const PUSHES: &str = "dora.pushes";
const DEPLOYED: &str = "dora.deployed";
/// How long a push is remembered: the longest lead time that can still be measured.
const KEEP: Duration = Duration::from_secs(180 * 86_400);
/// Pushes walked back for one deployment at most.
const MAX_WALK: usize = 500;

#[derive(Debug, Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    before: Option<String>,
    after: Option<String>,
    #[serde(default)]
    commits: Vec<Commit>,
    repository: Option<Repository>,
    #[serde(default)]
    deleted: bool,
}

#[derive(Debug, Deserialize)]
struct Commit {
    id: Option<String>,
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: Option<String>,
}

/// One push as kept: where the branch was, and the commits it added (oldest first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub before: String,
    pub commits: Vec<(String, f64)>,
}

/// A push delivery as `(repository, after, push)`; `None` for tag pushes, deletions and
/// deliveries without the fields.
pub fn read_push(body: &[u8]) -> Option<(String, String, Push)> {
    let e: PushEvent = serde_json::from_slice(body).ok()?;
    if e.deleted || !e.git_ref.as_deref()?.starts_with("refs/heads/") {
        return None;
    }
    let repo = e.repository?.full_name?.to_ascii_lowercase();
    let commits = e
        .commits
        .into_iter()
        .filter_map(|c| Some((c.id?, crate::timestamp::parse_rfc3339(&c.timestamp?)?)))
        .collect();
    Some((
        repo,
        e.after?,
        Push {
            before: e.before?,
            commits,
        },
    ))
}

pub async fn record_push(
    store: &dyn Store,
    repo: &str,
    after: &str,
    push: &Push,
) -> Result<(), crate::store::Error> {
    let value = serde_json::to_vec(push).expect("push encodes");
    store
        .kv_put(PUSHES, &format!("{repo}@{after}"), value, Some(KEEP))
        .await
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Deployed {
    sha: String,
    at: f64,
}

/// What a deployment ships.
#[derive(Debug, PartialEq)]
pub struct Shipped {
    /// `(sha, commit time)`, newest push first.
    pub commits: Vec<(String, f64)>,
    /// Whether the pushes reached the previous deployment (or, for a first deployment, the
    /// branch's creation).
    pub complete: bool,
    /// When the previous successful deployment happened, for [`mark_deployed`].
    pub previous_at: Option<f64>,
}

/// The commits between the previous successful deployment of `repo` to `environment` and
/// this one at `sha`, from the pushes seen. Reads only: [`mark_deployed`] records the
/// deployment once what it shipped is durable.
pub async fn shipped(
    store: &dyn Store,
    repo: &str,
    environment: &str,
    sha: &str,
) -> Result<Shipped, crate::store::Error> {
    let repo = repo.to_ascii_lowercase();
    let key = format!("{repo}@{environment}");
    let prev: Option<Deployed> = store
        .kv_get(DEPLOYED, &key)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let stop = prev.as_ref().map(|p| p.sha.as_str());
    let mut commits = Vec::new();
    let mut cur = sha.to_string();
    let mut complete = false;
    for _ in 0..MAX_WALK {
        if Some(cur.as_str()) == stop {
            complete = true;
            break;
        }
        // A new branch starts from nothing.
        if cur.bytes().all(|b| b == b'0') {
            complete = true;
            break;
        }
        let Some(push) = store
            .kv_get(PUSHES, &format!("{repo}@{cur}"))
            .await?
            .and_then(|b| serde_json::from_slice::<Push>(&b).ok())
        else {
            break;
        };
        commits.extend(push.commits.into_iter().rev());
        cur = push.before;
    }
    Ok(Shipped {
        commits,
        complete,
        previous_at: prev.map(|p| p.at),
    })
}

/// Records a successful deployment of `sha` at `at` as the latest of `repo` and
/// `environment`, unless the one [`shipped`] found before it is newer.
pub async fn mark_deployed(
    store: &dyn Store,
    repo: &str,
    environment: &str,
    sha: &str,
    at: f64,
    previous_at: Option<f64>,
) -> Result<(), crate::store::Error> {
    if previous_at.is_some_and(|p| p >= at) {
        return Ok(());
    }
    let key = format!("{}@{environment}", repo.to_ascii_lowercase());
    let d = Deployed {
        sha: sha.to_string(),
        at,
    };
    store
        .kv_put(
            DEPLOYED,
            &key,
            serde_json::to_vec(&d).expect("encodes"),
            None,
        )
        .await
}

/// The time of the commit `sha` of `repo`, from the push that brought it.
pub async fn commit_time(
    store: &dyn Store,
    repo: &str,
    sha: &str,
) -> Result<Option<f64>, crate::store::Error> {
    let repo = repo.to_ascii_lowercase();
    Ok(store
        .kv_get(PUSHES, &format!("{repo}@{sha}"))
        .await?
        .and_then(|b| serde_json::from_slice::<Push>(&b).ok())
        .and_then(|p| p.commits.iter().find(|(s, _)| s == sha).map(|(_, t)| *t)))
}
