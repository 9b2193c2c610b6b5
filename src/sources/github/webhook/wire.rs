//! GitHub Actions webhook payloads (`workflow_run`, `workflow_job`) as they arrive: the edge,
//! decoded by the workflow processor and not reused as domain types.

use serde::Deserialize;

#[derive(Deserialize)]
pub struct Repository {
    pub full_name: String,
    pub id: Option<u64>,
    /// `https://<host>/<owner>/<name>`: tells github.com and each GHES instance apart.
    pub html_url: Option<String>,
}

impl Repository {
    /// The repository across GitHub instances: `<host>/<id>` (the full name when a payload
    /// lacks the id). Run and job ids are unique only within one instance.
    pub fn instance(&self) -> String {
        let host = self
            .html_url
            .as_deref()
            .and_then(|u| u.split_once("://"))
            .and_then(|(_, rest)| rest.split('/').next())
            .filter(|h| !h.is_empty())
            .unwrap_or("github.com")
            .to_ascii_lowercase();
        match self.id {
            Some(id) => format!("{host}/{id}"),
            None => format!("{host}/{}", self.full_name),
        }
    }
}

#[derive(Deserialize)]
pub struct User {
    pub login: String,
}

#[derive(Deserialize)]
pub struct JobEvent {
    pub action: String,
    pub workflow_job: Job,
    pub repository: Repository,
}

#[derive(Deserialize)]
pub struct RunEventFull {
    pub action: String,
    pub workflow_run: Run,
    pub repository: Repository,
    pub sender: Option<User>,
}

#[derive(Deserialize)]
pub struct Job {
    pub id: u64,
    pub run_id: u64,
    pub run_attempt: Option<u32>,
    pub name: String,
    pub workflow_name: Option<String>,
    pub head_branch: Option<String>,
    pub status: Option<String>,
    pub conclusion: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    pub runner_group_name: Option<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    pub html_url: Option<String>,
}

#[derive(Deserialize)]
pub struct Step {
    pub name: String,
    pub number: u32,
    pub status: Option<String>,
    pub conclusion: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Deserialize)]
pub struct RunEvent {
    pub action: String,
    pub workflow_run: Run,
    pub repository: Repository,
}

#[derive(Deserialize)]
pub struct Run {
    pub id: u64,
    pub workflow_id: Option<u64>,
    pub run_number: Option<u64>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    pub html_url: Option<String>,
    pub run_attempt: Option<u32>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub event: Option<String>,
    pub head_branch: Option<String>,
    pub conclusion: Option<String>,
    pub run_started_at: Option<String>,
    pub updated_at: Option<String>,
}
