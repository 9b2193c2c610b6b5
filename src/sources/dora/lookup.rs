//! What a deployment ships when the pushes do not say: GitHub's compare API between the
//! previous deployment and this one, and for a repository's first deployment the commits of
//! the pull request the deployed commit belongs to. Calls go through the shared GitHub
//! client of the repository's org (its rate-limit budget and retries), and every answer is
//! kept in the store: a commit range or a pull request never changes, so a redelivery or a
//! restart never asks again.

use serde::Deserialize;
use std::time::Duration;

use crate::sources::github::{Clients, client};
use crate::store::SharedStore;

const NS: &str = "dora.api";
const KEEP: Duration = Duration::from_secs(180 * 86_400);
/// GitHub lists at most 250 commits in a comparison; a range beyond it is left incomplete.
const COMPARE_MAX: usize = 250;

#[derive(Deserialize)]
struct Compare {
    #[serde(default)]
    commits: Vec<CommitWire>,
    total_commits: Option<usize>,
}

#[derive(Deserialize)]
struct CommitWire {
    sha: String,
    commit: Option<CommitInner>,
}

#[derive(Deserialize)]
struct CommitInner {
    author: Option<Signature>,
    committer: Option<Signature>,
}

#[derive(Deserialize)]
struct Signature {
    date: Option<String>,
}

#[derive(Deserialize)]
struct PullRef {
    number: u64,
    merged_at: Option<String>,
}

/// `(sha, commit time)` of each commit, oldest first; the author's date, as pushes give it.
pub type Commits = Vec<(String, f64)>;

fn times(list: Vec<CommitWire>) -> Commits {
    list.into_iter()
        .filter_map(|c| {
            let inner = c.commit?;
            let date = inner
                .author
                .and_then(|a| a.date)
                .or(inner.committer?.date)?;
            Some((c.sha, crate::timestamp::parse_rfc3339(&date)?))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Github(#[from] client::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

#[derive(Clone)]
pub struct Lookup {
    pub clients: Clients,
    pub store: SharedStore,
}

impl Lookup {
    fn client(&self, repo: &str) -> Option<std::sync::Arc<client::Client>> {
        self.clients.get(repo.split('/').next()?)
    }

    async fn cached(&self, key: &str) -> Result<Option<Option<Commits>>, crate::store::Error> {
        Ok(self
            .store
            .kv_get(NS, key)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn keep(&self, key: &str, v: &Option<Commits>) -> Result<(), crate::store::Error> {
        let b = serde_json::to_vec(v).expect("commits encode");
        self.store.kv_put(NS, key, b, Some(KEEP)).await
    }

    /// The commits after `base` up to `head`; `None` when GitHub cannot tell (unknown
    /// commits, diverged history, more than it lists) or no client serves the org.
    pub async fn compare(
        &self,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<Option<Commits>, Error> {
        let key = format!("compare:{}:{base}...{head}", repo.to_ascii_lowercase());
        if let Some(v) = self.cached(&key).await? {
            return Ok(v);
        }
        let Some(c) = self.client(repo) else {
            return Ok(None);
        };
        let path = format!("/repos/{repo}/compare/{base}...{head}");
        let answer = match c.get_json::<Compare>(&path, "compare", false).await {
            Ok((v, _)) => {
                let total = v.total_commits.unwrap_or(v.commits.len());
                (total <= COMPARE_MAX && v.commits.len() == total).then(|| times(v.commits))
            }
            Err(client::Error::Status {
                status: 404 | 422, ..
            }) => None,
            Err(e) => return Err(e.into()),
        };
        self.keep(&key, &answer).await?;
        Ok(answer)
    }

    /// For a repository's first deployment: the commits of the merged pull request `sha`
    /// belongs to (and `sha` itself, its merge), else `None`.
    pub async fn pull_request_commits(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Option<Commits>, Error> {
        let key = format!("pr:{}:{sha}", repo.to_ascii_lowercase());
        if let Some(v) = self.cached(&key).await? {
            return Ok(v);
        }
        let Some(c) = self.client(repo) else {
            return Ok(None);
        };
        let path = format!("/repos/{repo}/commits/{sha}/pulls");
        let pulls = match c
            .get_json::<Vec<PullRef>>(&path, "commit_pulls", false)
            .await
        {
            Ok((v, _)) => v,
            Err(client::Error::Status {
                status: 404 | 422, ..
            }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let answer = match pulls
            .iter()
            .find(|p| p.merged_at.is_some())
            .or(pulls.first())
        {
            None => None,
            Some(p) => {
                let path = format!("/repos/{repo}/pulls/{}/commits?per_page=100", p.number);
                let list: Vec<CommitWire> =
                    c.paginate(&path, "pull_commits", false, |_| true).await?;
                let mut commits = times(list);
                if !commits.iter().any(|(s, _)| s == sha) {
                    let detail = format!("/repos/{repo}/commits/{sha}");
                    if let Ok((one, _)) = c.get_json::<CommitWire>(&detail, "commit", false).await {
                        commits.extend(times(vec![one]));
                    }
                }
                Some(commits)
            }
        };
        self.keep(&key, &answer).await?;
        Ok(answer)
    }
}
