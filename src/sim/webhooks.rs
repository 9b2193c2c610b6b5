//! The GitHub webhook sender: real-shaped `workflow_run` / `workflow_job` payloads (built
//! from octokit's examples in `tests/fixtures/github_webhooks/`), signed as GitHub signs
//! them and posted to a receiver. Tests, `demo` and the ingest benchmark use it; the
//! generator keeps the ground truth of what it sent.

use hmac::{KeyInit, Mac};
use rand::{Rng, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::timestamp::format_rfc3339;

const JOB_TEMPLATE: &str = include_str!("../../tests/fixtures/github_webhooks/workflow_job.json");
const RUN_TEMPLATE: &str = include_str!("../../tests/fixtures/github_webhooks/workflow_run.json");

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Hub-Signature-256` value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// One job's whole life, decided up front so every delivery of it agrees.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub run_id: u64,
    pub attempt: u32,
    pub job_id: u64,
    pub repo: String,
    pub workflow: String,
    pub name: String,
    pub labels: Vec<String>,
    pub runner_group: String,
    pub created_at: f64,
    pub started_at: f64,
    pub completed_at: f64,
    pub conclusion: String,
    /// (name, started, completed, conclusion)
    pub steps: Vec<(String, f64, f64, String)>,
}

/// What a completed set of jobs and runs must produce.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Truth {
    pub jobs_by_conclusion: BTreeMap<String, u64>,
    pub job_seconds: f64,
    pub queue_seconds: f64,
    pub runs_by_conclusion: BTreeMap<String, u64>,
    pub run_seconds: f64,
}

pub struct Generator {
    rng: StdRng,
    next_id: u64,
    job: Value,
    run: Value,
    pub truth: Truth,
}

const REPOS: &[&str] = &["acme/api", "acme/web", "acme/infra"];
const WORKFLOWS: &[&str] = &["CI", "Release", "CodeQL"];
const JOBS: &[&str] = &["build", "test", "lint", "deploy"];
const CONCLUSIONS: &[&str] = &["success", "success", "success", "failure", "cancelled"];

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: super::rng(seed),
            next_id: 1_000_000 + seed % 1000 * 1_000_000,
            job: serde_json::from_str(JOB_TEMPLATE).expect("fixture is JSON"),
            run: serde_json::from_str(RUN_TEMPLATE).expect("fixture is JSON"),
            truth: Truth::default(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A run of `jobs` jobs starting at `t0` (Unix seconds).
    pub fn run_plan(&mut self, t0: f64, jobs: usize) -> Vec<JobPlan> {
        let run_id = self.id();
        let repo = REPOS[self.rng.random_range(0..REPOS.len())].to_string();
        let workflow = WORKFLOWS[self.rng.random_range(0..WORKFLOWS.len())].to_string();
        (0..jobs)
            .map(|i| {
                let created_at = t0 + i as f64;
                let started_at = created_at + self.rng.random_range(1..30) as f64;
                let mut t = started_at;
                let steps = (1..=self.rng.random_range(8..16))
                    .map(|n| {
                        let d = self.rng.random_range(1..8) as f64;
                        t += d;
                        (format!("step {n}"), t - d, t, "success".to_string())
                    })
                    .collect();
                let self_hosted = self.rng.random_bool(0.5);
                JobPlan {
                    run_id,
                    attempt: 1,
                    job_id: self.id(),
                    repo: repo.clone(),
                    workflow: workflow.clone(),
                    name: JOBS[i % JOBS.len()].to_string(),
                    labels: if self_hosted {
                        vec!["self-hosted".into(), "linux".into(), "x64".into()]
                    } else {
                        vec!["ubuntu-latest".into()]
                    },
                    runner_group: if self_hosted {
                        "Default"
                    } else {
                        "GitHub Actions"
                    }
                    .into(),
                    created_at,
                    started_at,
                    completed_at: t + 1.0,
                    conclusion: CONCLUSIONS[self.rng.random_range(0..CONCLUSIONS.len())].into(),
                    steps,
                }
            })
            .collect()
    }

    /// The `workflow_job` body for `action` (queued, in_progress or completed); a completed
    /// one is added to the truth when `record` is set.
    pub fn job_payload(&mut self, p: &JobPlan, action: &str, record: bool) -> Vec<u8> {
        let mut v = self.job.clone();
        v["action"] = json!(action);
        let j = &mut v["workflow_job"];
        let done = action == "completed";
        let running = action != "queued";
        j["id"] = json!(p.job_id);
        j["run_id"] = json!(p.run_id);
        j["run_attempt"] = json!(p.attempt);
        j["name"] = json!(p.name);
        j["workflow_name"] = json!(p.workflow);
        j["status"] = json!(action);
        j["conclusion"] = if done {
            json!(p.conclusion)
        } else {
            Value::Null
        };
        j["created_at"] = json!(format_rfc3339(p.created_at));
        // GitHub fills started_at with created_at while a job waits.
        j["started_at"] = json!(format_rfc3339(if running {
            p.started_at
        } else {
            p.created_at
        }));
        j["completed_at"] = if done {
            json!(format_rfc3339(p.completed_at))
        } else {
            Value::Null
        };
        j["labels"] = json!(p.labels);
        j["runner_group_name"] = if running {
            json!(p.runner_group)
        } else {
            Value::Null
        };
        j["runner_name"] = if running {
            json!("runner-1")
        } else {
            Value::Null
        };
        j["steps"] = if running {
            Value::Array(
                p.steps
                    .iter()
                    .enumerate()
                    .map(|(i, (name, s, e, c))| {
                        json!({
                            "name": name, "number": i + 1,
                            "status": if done { "completed" } else { "in_progress" },
                            "conclusion": if done { json!(c) } else { Value::Null },
                            "started_at": format_rfc3339(*s),
                            "completed_at": if done { json!(format_rfc3339(*e)) } else { Value::Null },
                        })
                    })
                    .collect(),
            )
        } else {
            json!([])
        };
        v["repository"]["full_name"] = json!(p.repo);
        v["repository"]["name"] = json!(p.repo.split('/').nth(1).unwrap_or(""));
        if done && record {
            *self
                .truth
                .jobs_by_conclusion
                .entry(p.conclusion.clone())
                .or_default() += 1;
            self.truth.job_seconds += p.completed_at - p.started_at;
            self.truth.queue_seconds += p.started_at - p.created_at;
        }
        serde_json::to_vec(&v).expect("serializable")
    }

    /// The `workflow_run` body for `action` of the run the jobs belong to.
    pub fn run_payload(&mut self, jobs: &[JobPlan], action: &str, record: bool) -> Vec<u8> {
        let first = &jobs[0];
        let start = jobs.iter().map(|j| j.created_at).fold(f64::MAX, f64::min);
        let end = jobs.iter().map(|j| j.completed_at).fold(f64::MIN, f64::max);
        let failed = jobs.iter().any(|j| j.conclusion == "failure");
        let conclusion = if failed { "failure" } else { "success" };
        let done = action == "completed";
        let mut v = self.run.clone();
        v["action"] = json!(action);
        let r = &mut v["workflow_run"];
        r["id"] = json!(first.run_id);
        r["run_attempt"] = json!(first.attempt);
        r["name"] = json!(first.workflow);
        r["status"] = json!(action);
        r["conclusion"] = if done { json!(conclusion) } else { Value::Null };
        r["created_at"] = json!(format_rfc3339(start));
        r["run_started_at"] = json!(format_rfc3339(start));
        r["updated_at"] = json!(format_rfc3339(if done { end } else { start }));
        v["repository"]["full_name"] = json!(first.repo);
        if done && record {
            *self
                .truth
                .runs_by_conclusion
                .entry(conclusion.to_string())
                .or_default() += 1;
            self.truth.run_seconds += end - start;
        }
        serde_json::to_vec(&v).expect("serializable")
    }
}

/// Posts signed deliveries to one receiver URL.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    pub url: String,
    secret: String,
}

impl Sender {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Sender {
        Sender {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client builds"),
            url: url.into(),
            secret: secret.into(),
        }
    }

    /// Sends one delivery, returning GitHub's view of it: the status code.
    pub async fn send(&self, event: &str, delivery: &str, body: Vec<u8>) -> reqwest::Result<u16> {
        let sig = signature(&self.secret, &body);
        let r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/devmetrics-sim")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
}

/// `demo`'s live CI: a run every `every`, its jobs queued, started and completed in real
/// time, until `shutdown`.
pub async fn drive(sender: Sender, seed: u64, every: Duration, shutdown: CancellationToken) {
    let mut g = Generator::new(seed);
    let mut n = 0u64;
    let mut heads: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let t0 = crate::clock::now_unix();
        let jobs = g.run_plan(t0, 1 + (n % 3) as usize);
        let mut bodies = vec![("workflow_run", g.run_payload(&jobs, "requested", false))];
        for action in ["queued", "in_progress", "completed"] {
            for j in &jobs {
                bodies.push(("workflow_job", g.job_payload(j, action, false)));
            }
        }
        bodies.push(("workflow_run", g.run_payload(&jobs, "completed", false)));
        // The run's change is pushed, then deployed: to staging or production; one in five
        // fails. Its commit was written a few minutes to a few hours before.
        let environment = if n.is_multiple_of(2) {
            "production"
        } else {
            "staging"
        };
        let sha = format!("{:040x}", jobs[0].run_id);
        let parent = heads
            .insert(jobs[0].repo.clone(), sha.clone())
            .unwrap_or_else(|| "0".repeat(40));
        let written = crate::clock::now_unix() - 300.0 * (1 + n % 40) as f64;
        // Each change is a pull request: its branch pushed, opened, reviewed, merged by the
        // commit the run built.
        let head = format!("{:040x}", jobs[0].run_id ^ 0xbeef);
        let pr = PullRequest {
            repo: jobs[0].repo.clone(),
            number: n,
            author: "octocat".into(),
            head_sha: head.clone(),
            opened_at: written + 60.0,
            merged: None,
        };
        bodies.push((
            "push",
            push_to_branch(
                &jobs[0].repo,
                &format!("change-{n}"),
                &"0".repeat(40),
                &head,
                &[(head.clone(), written)],
            ),
        ));
        bodies.push(("pull_request", pull_request_payload(&pr)));
        bodies.push((
            "pull_request_review",
            review_payload(&pr, "hubot", "approved", written + 120.0),
        ));
        let merged = PullRequest {
            merged: Some((written + 240.0, sha.clone())),
            ..pr
        };
        bodies.push(("pull_request", pull_request_payload(&merged)));
        bodies.push((
            "push",
            push_payload(&jobs[0].repo, &parent, &sha, &[(sha.clone(), written)]),
        ));
        // Now and then an incident reported as a labelled issue, closed a run later.
        if n % 7 == 3 {
            let opened = crate::clock::now_unix() - 30.0;
            let closed = n.is_multiple_of(2).then_some(opened + 20.0);
            bodies.push((
                "issues",
                issue_payload(
                    &jobs[0].repo,
                    n,
                    &["incident"],
                    opened,
                    closed,
                    opened + 20.0,
                ),
            ));
        }
        for (i, state) in [
            "in_progress",
            if n % 5 == 4 { "failure" } else { "success" },
        ]
        .into_iter()
        .enumerate()
        {
            let d = DeploymentStatus {
                repo: jobs[0].repo.clone(),
                environment: environment.into(),
                state: state.into(),
                status_id: seed * 1_000_000 + n * 10 + i as u64,
                deployment_id: seed * 1_000_000 + n,
                sha: sha.clone(),
                created_at: crate::clock::now_unix() + i as f64,
            };
            bodies.push(("deployment_status", deployment_status_payload(&d)));
        }
        for (event, body) in bodies {
            n += 1;
            let delivery = format!("demo-{seed}-{n}");
            if let Err(e) = sender.send(event, &delivery, body).await {
                tracing::debug!(error = %e, "demo webhook delivery failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every / 8) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::workflows::{Options, process};

    #[test]
    fn signs_like_github() {
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn generated_payloads_are_real_sized_and_processable() {
        let mut g = Generator::new(3);
        let jobs = g.run_plan(1_700_000_000.0, 2);
        let body = g.job_payload(&jobs[0], "completed", true);
        assert!((9_000..14_000).contains(&body.len()), "{}", body.len());
        let batches = process("workflow_job", &body, &Options::default()).unwrap();
        assert_eq!(batches.len(), 7);
        let body = g.run_payload(&jobs, "completed", true);
        assert_eq!(
            process("workflow_run", &body, &Options::default())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(g.truth.jobs_by_conclusion.values().sum::<u64>(), 1);
    }
}

/// One deployment status, as a `deployment_status` delivery carries it.
#[derive(Clone, Debug)]
pub struct DeploymentStatus {
    /// `owner/name`.
    pub repo: String,
    pub environment: String,
    pub state: String,
    pub status_id: u64,
    pub deployment_id: u64,
    pub sha: String,
    /// When GitHub recorded the status.
    pub created_at: f64,
}

/// A `deployment_status` delivery body with the shape of GitHub's own
/// (`../shared/research-data/github-webhooks/deployment_status/`).
pub fn deployment_status_payload(d: &DeploymentStatus) -> Vec<u8> {
    let (owner, name) = d.repo.split_once('/').unwrap_or(("acme", d.repo.as_str()));
    let at = crate::timestamp::format_rfc3339_secs(d.created_at as i64);
    let api = format!("https://api.github.com/repos/{}", d.repo);
    serde_json::to_vec(&serde_json::json!({
        "action": "created",
        "deployment_status": {
            "url": format!("{api}/deployments/{}/statuses/{}", d.deployment_id, d.status_id),
            "id": d.status_id,
            "node_id": "MDE2OkRlcGxveW1lbnRTdGF0dXMyMDk5MTYyNTQ=",
            "state": d.state,
            "creator": {"login": owner, "type": "User"},
            "description": "",
            "environment": d.environment,
            "target_url": "",
            "created_at": at,
            "updated_at": at,
            "deployment_url": format!("{api}/deployments/{}", d.deployment_id),
            "repository_url": api,
        },
        "deployment": {
            "url": format!("{api}/deployments/{}", d.deployment_id),
            "id": d.deployment_id,
            "sha": d.sha,
            "ref": "main",
            "task": "deploy",
            "payload": {},
            "original_environment": d.environment,
            "environment": d.environment,
            "description": null,
            "creator": {"login": owner, "type": "User"},
            "created_at": at,
            "updated_at": at,
        },
        "repository": {
            "id": 186853002,
            "name": name,
            "full_name": d.repo,
            "private": false,
            "owner": {"login": owner, "type": "Organization"},
        },
        "sender": {"login": owner, "type": "User"},
    }))
    .expect("payload encodes")
}

/// A branch `push` delivery body with the shape of GitHub's own
/// (`../shared/research-data/github-webhooks/push/`): `commits` oldest first, `(sha, time)`.
pub fn push_payload(repo: &str, before: &str, after: &str, commits: &[(String, f64)]) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').unwrap_or(("acme", repo));
    let commit = |(sha, t): &(String, f64)| {
        serde_json::json!({
            "id": sha,
            "tree_id": sha,
            "distinct": true,
            "message": format!("change {}", &sha[..7.min(sha.len())]),
            "timestamp": crate::timestamp::format_rfc3339_secs(*t as i64),
            "url": format!("https://github.com/{repo}/commit/{sha}"),
            "author": {"name": owner, "email": format!("{owner}@example.com"), "username": owner},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [], "removed": [], "modified": ["README.md"],
        })
    };
    serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "created": before.bytes().all(|b| b == b'0'),
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/{repo}/compare/{}...{}", &before[..12.min(before.len())], &after[..12.min(after.len())]),
        "commits": commits.iter().map(commit).collect::<Vec<_>>(),
        "head_commit": commits.last().map(commit),
        "repository": {"id": 186853002, "name": name, "full_name": repo, "owner": {"login": owner}},
        "pusher": {"name": owner, "email": format!("{owner}@example.com")},
        "sender": {"login": owner, "type": "User"},
    }))
    .expect("payload encodes")
}

/// One pull request as its deliveries describe it.
#[derive(Clone, Debug)]
pub struct PullRequest {
    /// `owner/name`.
    pub repo: String,
    pub number: u64,
    pub author: String,
    pub head_sha: String,
    pub opened_at: f64,
    /// With the merge commit.
    pub merged: Option<(f64, String)>,
}

fn pull_request_json(p: &PullRequest) -> serde_json::Value {
    let t = |x: f64| crate::timestamp::format_rfc3339_secs(x as i64);
    serde_json::json!({
        "url": format!("https://api.github.com/repos/{}/pulls/{}", p.repo, p.number),
        "id": 279147437 + p.number,
        "number": p.number,
        "state": if p.merged.is_some() { "closed" } else { "open" },
        "title": format!("Change {}", p.number),
        "user": {"login": p.author, "type": "User"},
        "created_at": t(p.opened_at),
        "updated_at": t(p.merged.as_ref().map_or(p.opened_at, |m| m.0)),
        "closed_at": p.merged.as_ref().map(|m| t(m.0)),
        "merged_at": p.merged.as_ref().map(|m| t(m.0)),
        "merge_commit_sha": p.merged.as_ref().map(|m| m.1.clone()),
        "merged": p.merged.is_some(),
        "draft": false,
        "head": {"ref": format!("change-{}", p.number), "sha": p.head_sha},
        "base": {"ref": "main"},
    })
}

fn repository_json(repo: &str) -> serde_json::Value {
    let (owner, name) = repo.split_once('/').unwrap_or(("acme", repo));
    serde_json::json!({"id": 186853002, "name": name, "full_name": repo, "owner": {"login": owner}})
}

/// A `pull_request` delivery (`opened`, or `closed` once merged), shaped like GitHub's own
/// (`../shared/research-data/github-webhooks/pull_request/`).
pub fn pull_request_payload(p: &PullRequest) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": if p.merged.is_some() { "closed" } else { "opened" },
        "number": p.number,
        "pull_request": pull_request_json(p),
        "repository": repository_json(&p.repo),
        "sender": {"login": p.author, "type": "User"},
    }))
    .expect("payload encodes")
}

/// A `pull_request_review` delivery: `reviewer` submitted a review at `at`.
pub fn review_payload(p: &PullRequest, reviewer: &str, state: &str, at: f64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": "submitted",
        "review": {
            "id": 80 + p.number,
            "user": {"login": reviewer, "type": "User"},
            "state": state,
            "submitted_at": crate::timestamp::format_rfc3339_secs(at as i64),
            "commit_id": p.head_sha,
        },
        "pull_request": pull_request_json(p),
        "repository": repository_json(&p.repo),
        "sender": {"login": reviewer, "type": "User"},
    }))
    .expect("payload encodes")
}

/// An `issues` delivery for issue `number` of `repo` with `labels`, open or closed at
/// `closed_at`; `updated_at` orders the deliveries.
pub fn issue_payload(
    repo: &str,
    number: u64,
    labels: &[&str],
    created_at: f64,
    closed_at: Option<f64>,
    updated_at: f64,
) -> Vec<u8> {
    let t = |x: f64| crate::timestamp::format_rfc3339_secs(x as i64);
    serde_json::to_vec(&serde_json::json!({
        "action": if closed_at.is_some() { "closed" } else { "opened" },
        "issue": {
            "url": format!("https://api.github.com/repos/{repo}/issues/{number}"),
            "id": 444500041 + number,
            "number": number,
            "title": "Checkout is down",
            "user": {"login": "oncall", "type": "User"},
            "labels": labels.iter().map(|l| serde_json::json!({"name": l, "color": "d73a4a"})).collect::<Vec<_>>(),
            "state": if closed_at.is_some() { "closed" } else { "open" },
            "created_at": t(created_at),
            "updated_at": t(updated_at),
            "closed_at": closed_at.map(t),
        },
        "repository": repository_json(repo),
        "sender": {"login": "oncall", "type": "User"},
    }))
    .expect("payload encodes")
}

/// A push like [`push_payload`] to another branch.
pub fn push_to_branch(
    repo: &str,
    branch: &str,
    before: &str,
    after: &str,
    commits: &[(String, f64)],
) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&push_payload(repo, before, after, commits)).expect("push json");
    v["ref"] = serde_json::json!(format!("refs/heads/{branch}"));
    serde_json::to_vec(&v).expect("payload encodes")
}
