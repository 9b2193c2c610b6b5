//! A Jira Cloud webhook sender: signed deliveries (`X-Hub-Signature: sha256=…`, an
//! `X-Atlassian-Webhook-Identifier` per delivery) whose bodies have the shape of Jira's own
//! (`../shared/research-data/jira-webhooks/`), and `demo`'s live incidents.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `sha256=<hex>` of `body` under `secret`, as a Jira admin webhook signs it: the same
/// value GitHub sends, in another header.
pub use super::webhooks::signature;

/// One issue as a delivery describes it.
#[derive(Clone, Debug)]
pub struct Issue {
    pub key: String,
    pub issue_type: String,
    pub priority: String,
    pub labels: Vec<String>,
    /// Jira's own text, e.g. `2026-03-07T23:30:00.000-0800`.
    pub created: String,
    pub resolution: Option<String>,
    /// The status category: `new`, `indeterminate` or `done`.
    pub category: String,
}

/// A `jira:issue_*` delivery body for `issue` at `at_ms` (Jira's epoch milliseconds).
pub fn payload(event: &str, issue: &Issue, at_ms: i64) -> Vec<u8> {
    let project = issue.key.rsplit_once('-').map_or("", |(p, _)| p);
    let status = match issue.category.as_str() {
        "done" => "Done",
        "indeterminate" => "In Progress",
        _ => "To Do",
    };
    serde_json::to_vec(&serde_json::json!({
        "timestamp": at_ms,
        "webhookEvent": event,
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": "5c5ad0ae7dfa3c7c0b5e2d7a", "displayName": "On-call"},
        "issue": {
            "id": "10040",
            "key": issue.key,
            "fields": {
                "issuetype": {"name": issue.issue_type, "subtask": false},
                "project": {"key": project, "name": project},
                "priority": {"name": issue.priority},
                "labels": issue.labels,
                "created": issue.created,
                "updated": issue.created,
                "resolutiondate": issue.resolution,
                "resolution": issue.resolution.as_ref().map(|_| serde_json::json!({"name": "Done"})),
                "status": {"name": status, "statusCategory": {"key": issue.category}},
                "summary": format!("{} is down", issue.key),
            }
        },
        "changelog": {"id": "10100", "items": []}
    }))
    .expect("payload encodes")
}

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

    /// Posts one delivery with identifier `id` (none when empty); returns the status code.
    pub async fn send(&self, id: &str, body: Vec<u8>) -> reqwest::Result<u16> {
        let mut r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("user-agent", "Atlassian Webhook HTTP Client")
            .header("x-hub-signature", signature(&self.secret, &body));
        if !id.is_empty() {
            r = r.header("x-atlassian-webhook-identifier", id);
        }
        Ok(r.body(body).send().await?.status().as_u16())
    }
}

/// Formats Unix seconds as Jira does (`2026-03-09T10:00:00.250+0000`).
pub fn jira_time(t: f64) -> String {
    let s = crate::timestamp::format_rfc3339(t);
    // RFC 3339 text from the crate ends in `Z`; Jira writes `+0000`.
    format!("{}+0000", s.trim_end_matches('Z'))
}

/// `demo`'s incidents: every `every`, an incident in one of `projects` opens, and is
/// resolved a few minutes (of simulated time) later.
pub async fn drive(
    sender: Sender,
    projects: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut n = 0u64;
    loop {
        n += 1;
        let project = &projects[(n as usize) % projects.len()];
        let now = crate::clock::now_unix();
        let created = now - 600.0 - (n % 7) as f64 * 300.0;
        let mut issue = Issue {
            key: format!("{project}-{n}"),
            issue_type: "Incident".into(),
            priority: "High".into(),
            labels: vec!["production".into()],
            created: jira_time(created),
            resolution: None,
            category: "new".into(),
        };
        let at = (now * 1000.0) as i64;
        let _ = sender
            .send(
                &format!("demo-{n}-c"),
                payload("jira:issue_created", &issue, at),
            )
            .await;
        issue.resolution = Some(jira_time(now));
        issue.category = "done".into();
        let _ = sender
            .send(
                &format!("demo-{n}-r"),
                payload("jira:issue_updated", &issue, at + 1),
            )
            .await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
