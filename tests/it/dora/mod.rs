//! DORA: incidents from Jira webhooks, scenario-tested against values worked out by hand.

mod api;
mod deployments;
mod incidents;
mod lead_time;
mod scenario;
mod upstreams;

use std::collections::BTreeMap;
use std::time::Duration;

use devmetrics::sim::jira::{Issue, Sender, payload};

pub const SECRET: &str = "jira-admin-webhook-secret";
pub const TOKEN: &str = "automation-url-token";
pub const GITHUB_SECRET: &str = "github-webhook-secret";
pub const API_TOKEN: &str = "cd-tool-bearer-token";

/// The `dora` section: two teams, incidents are issues of type Incident.
pub fn dora_section() -> serde_yaml::Value {
    serde_yaml::from_str(&format!(
        "teams:\n  - {{name: Payments, github_repositories: [acme/pay], jira_projects: [PAY]}}\n  - {{name: Platform, jira_projects: [OPS]}}\n\
         jira:\n  secret: {SECRET}\n  url_token: {TOKEN}\n  issue_types: [Incident]\n\
         deployments_api: {{token: {API_TOKEN}}}\n\
         four_keys_interval: 1s\n\
         github_incidents: {{label: incident}}\n"
    ))
    .unwrap()
}

/// The `dora` section and the GitHub receiver its deployment statuses arrive through.
pub fn sections() -> Vec<(&'static str, serde_yaml::Value)> {
    vec![
        ("dora", dora_section()),
        (
            "webhooks",
            serde_yaml::from_str(&format!("github: {{secret: {GITHUB_SECRET}}}")).unwrap(),
        ),
    ]
}

pub struct App {
    pub running: crate::support::Running,
    pub dir: tempfile::TempDir,
}

impl App {
    pub async fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::support::Backend::from_env().config(dir.path(), &sections());
        let running = crate::support::start(cfg, "http").await;
        App { running, dir }
    }

    pub fn github(&self) -> devmetrics::sim::webhooks::Sender {
        devmetrics::sim::webhooks::Sender::new(
            format!("{}/webhooks/github", self.running.base),
            GITHUB_SECRET,
        )
    }

    pub fn sender(&self) -> Sender {
        Sender::new(format!("{}/webhooks/jira", self.running.base), SECRET)
    }

    pub async fn metrics(&self, accept: Option<&str>) -> String {
        let c = reqwest::Client::new();
        let mut r = c.get(format!("{}/metrics", self.running.base));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.send().await.unwrap().text().await.unwrap()
    }

    /// Series of `family` (label text → value) once `pred` holds, or after 10 s.
    pub async fn series_when(
        &self,
        family: &str,
        pred: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let mut last = BTreeMap::new();
        // Generous: the whole suite shares two cores.
        for _ in 0..600 {
            last = series(&self.metrics(None).await, family);
            if pred(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }
}

pub use crate::support::series;

pub fn issue(key: &str, created: &str) -> Issue {
    Issue {
        key: key.into(),
        issue_type: "Incident".into(),
        priority: "High".into(),
        labels: vec!["sev1".into()],
        created: created.into(),
        resolution: None,
        category: "new".into(),
    }
}

pub fn resolved(mut i: Issue, at: &str) -> Issue {
    i.resolution = Some(at.into());
    i.category = "done".into();
    i
}

pub fn body(event: &str, i: &Issue, at_ms: i64) -> Vec<u8> {
    payload(event, i, at_ms)
}

#[test]
fn example_dora_section_is_valid_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret_path = secret.to_str().unwrap();
    let out = crate::support::example_with_section(
        "dora",
        &[
            ("/run/secrets/jira-webhook", secret_path),
            ("/run/secrets/jira-url-token", secret_path),
            ("/run/secrets/deployments-api-token", secret_path),
            ("/run/secrets/backstage-token", secret_path),
        ],
    );
    assert!(
        out.contains("\ndora:\n") && out.contains("\n  teams:\n"),
        "{out}"
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, out).unwrap();
    let c = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("uncommented example loads");
    let d = c.dora.unwrap();
    assert_eq!(d.teams.of_project("PAY"), "Payments");
    assert_eq!(d.teams.of_repository("My-Org/Payments-API"), "Payments");
    assert_eq!(d.teams.of_project("NOPE"), "Unknown");
    assert_eq!(d.production_environments, ["production"]);
    assert_eq!(d.deployments_api_token.unwrap().expose(), "s3cret");
    let b = d.backstage.unwrap();
    assert_eq!(b.endpoint, "https://backstage.example.com");
    assert_eq!(b.token.unwrap().expose(), "s3cret");
    assert_eq!(b.refresh_interval, Duration::from_secs(300));
    assert_eq!(d.github_incident_label.as_deref(), Some("incident"));
    assert!(d.failed_deployments_are_failures);
    assert_eq!(d.four_keys_interval, Duration::from_secs(60));
    let j = d.jira.unwrap();
    assert_eq!(j.filter.issue_types, ["Incident"]);
    // Neither a secret nor a URL token: refused, naming the key.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "dora:\n  jira:\n    issue_types: [Incident]\n").unwrap();
    let e = devmetrics::config::load(Some(&bare), &Default::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("dora.jira"), "{e}");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "dora:\n  jira:\n    secrett: x\n").unwrap();
    let e = devmetrics::config::load(Some(&typo), &Default::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("secrett"), "{e}");
    let mode = dir.path().join("mode.yaml");
    std::fs::write(&mode, "dora:\n  catalog:\n    mode: ldap\n").unwrap();
    let e = devmetrics::config::load(Some(&mode), &Default::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("dora.catalog.mode"), "{e}");
}
