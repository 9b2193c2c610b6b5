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
/// Every commit deployed successfully, per repository and environment: a later deployment
/// of one is a redeployment.
const DEPLOYED_SHAS: &str = "dora.deployed_shas";
/// `deployment` deliveries: a deployment's commit, environment and creation time.
const DEPLOYMENTS: &str = "dora.deployments";
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

/// The push that moved a branch of `repo` (lower case) to `sha`, if it was seen.
async fn push_to(
    store: &dyn Store,
    repo: &str,
    sha: &str,
) -> Result<Option<Push>, crate::store::Error> {
    Ok(store
        .kv_get(PUSHES, &format!("{repo}@{sha}"))
        .await?
        .and_then(|b| serde_json::from_slice::<Push>(&b).ok()))
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
    /// The commit it deployed: where a comparison starts.
    pub previous_sha: Option<String>,
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
        let Some(push) = push_to(store, &repo, &cur).await? else {
            break;
        };
        commits.extend(push.commits.into_iter().rev());
        cur = push.before;
    }
    Ok(Shipped {
        commits,
        complete,
        previous_at: prev.as_ref().map(|p| p.at),
        previous_sha: prev.map(|p| p.sha),
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
    Ok(push_to(store, &repo.to_ascii_lowercase(), sha)
        .await?
        .and_then(|p| p.commits.iter().find(|(s, _)| s == sha).map(|(_, t)| *t)))
}

fn sha_key(repo: &str, environment: &str, sha: &str) -> String {
    format!(
        "{}@{}@{sha}",
        repo.to_ascii_lowercase(),
        environment.to_ascii_lowercase()
    )
}

/// When `sha` was first deployed successfully to `environment`, if it was.
pub async fn first_deployed(
    store: &dyn Store,
    repo: &str,
    environment: &str,
    sha: &str,
) -> Result<Option<f64>, crate::store::Error> {
    Ok(store
        .kv_get(DEPLOYED_SHAS, &sha_key(repo, environment, sha))
        .await?
        .and_then(|b| serde_json::from_slice::<f64>(&b).ok()))
}

/// Records that `sha` was deployed successfully at `at`, unless `first` (what
/// [`first_deployed`] read) is as early.
pub async fn mark_sha_deployed(
    store: &dyn Store,
    repo: &str,
    environment: &str,
    sha: &str,
    at: f64,
    first: Option<f64>,
) -> Result<(), crate::store::Error> {
    if first.is_some_and(|f| f <= at) {
        return Ok(());
    }
    store
        .kv_put(
            DEPLOYED_SHAS,
            &sha_key(repo, environment, sha),
            serde_json::to_vec(&at).expect("encodes"),
            Some(KEEP),
        )
        .await
}

#[derive(Debug, Deserialize)]
struct DeploymentEvent {
    deployment: Option<DeploymentWire>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct DeploymentWire {
    id: Option<u64>,
    sha: Option<String>,
    environment: Option<String>,
    created_at: Option<String>,
}

/// A deployment as its `deployment` delivery states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub id: u64,
    pub sha: String,
    pub environment: String,
    pub at: f64,
}

pub fn read_deployment(body: &[u8]) -> Option<(String, Created)> {
    let e: DeploymentEvent = serde_json::from_slice(body).ok()?;
    let d = e.deployment?;
    Some((
        e.repository?.full_name?.to_ascii_lowercase(),
        Created {
            id: d.id?,
            sha: d.sha?,
            environment: d.environment.unwrap_or_default(),
            at: crate::timestamp::parse_rfc3339(&d.created_at?)?,
        },
    ))
}

/// Keeps a created deployment, so its statuses and the status page can name its commit.
pub async fn record_deployment(
    store: &dyn Store,
    repo: &str,
    d: &Created,
) -> Result<(), crate::store::Error> {
    store
        .kv_put(
            DEPLOYMENTS,
            &format!("{repo}#{}", d.id),
            serde_json::to_vec(d).expect("encodes"),
            Some(KEEP),
        )
        .await
}

#[derive(Debug, Deserialize)]
struct IssueEvent {
    issue: Option<Issue>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    number: Option<u64>,
    created_at: Option<String>,
    updated_at: Option<String>,
    closed_at: Option<String>,
    state: Option<String>,
    #[serde(default)]
    labels: Vec<Label>,
    /// Pull requests are issues too; they are never incidents.
    pull_request: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: Option<String>,
}

/// An `issues` delivery as an incident observation `(repository, observation)`, when the
/// issue carries `label` (Four Keys' way of marking incidents): created at its creation,
/// resolved when closed, ordered by its update time.
pub fn read_issue(body: &[u8], label: &str) -> Option<(String, super::jira::Observation)> {
    let e: IssueEvent = serde_json::from_slice(body).ok()?;
    let i = e.issue?;
    if i.pull_request.is_some()
        || !i.labels.iter().any(|l| {
            l.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(label))
        })
    {
        return None;
    }
    let repo = e.repository?.full_name?;
    let created = crate::timestamp::parse_rfc3339(i.created_at.as_deref()?)?;
    let resolved = match i.state.as_deref() {
        Some("closed") => Some(
            i.closed_at
                .as_deref()
                .and_then(crate::timestamp::parse_rfc3339)?,
        ),
        _ => None,
    };
    let at = i
        .updated_at
        .as_deref()
        .and_then(crate::timestamp::parse_rfc3339)
        .unwrap_or(created);
    Some((
        repo.clone(),
        super::jira::Observation {
            issue: format!("{}#{}", repo.to_ascii_lowercase(), i.number?),
            project: repo,
            created,
            resolved,
            at,
        },
    ))
}

/// The time of the oldest commit the pushes seen lead to `sha` through (a pull request's
/// head: its first commit), walking back until a branch's creation or a push not seen.
pub async fn oldest_commit(
    store: &dyn Store,
    repo: &str,
    sha: &str,
) -> Result<Option<f64>, crate::store::Error> {
    let repo = repo.to_ascii_lowercase();
    let mut oldest: Option<f64> = None;
    let mut cur = sha.to_string();
    for _ in 0..MAX_WALK {
        if cur.bytes().all(|b| b == b'0') {
            break;
        }
        let Some(push) = push_to(store, &repo, &cur).await? else {
            break;
        };
        for (_, t) in &push.commits {
            oldest = Some(oldest.map_or(*t, |o| o.min(*t)));
        }
        cur = push.before;
    }
    Ok(oldest)
}
