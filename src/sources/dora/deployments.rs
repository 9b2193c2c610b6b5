//! Deployments from GitHub's `deployment_status` deliveries: each distinct status (every
//! state, as dora-exporter counts them) once in `github_deployments_total`, labelled by the
//! repository's name, the environment, the owning team and the state.

use serde::Deserialize;
use std::sync::Arc;

use super::log;
use crate::metrics::{self, Labels, Op, Update};
use crate::processors::Envelope;
use crate::queue::{Delivery, Failure, Handler};
use crate::store::{Applied, SharedStore};

/// The store scope of the deployment families.
pub const SCOPE: &str = "dora/deployments";

#[derive(Debug, Deserialize)]
struct StatusEvent {
    deployment_status: Option<Status>,
    deployment: Option<Deployment>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct Status {
    id: Option<u64>,
    state: Option<String>,
    created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Deployment {
    id: Option<u64>,
    sha: Option<String>,
    environment: Option<String>,
    /// Free-form, set by whoever created the deployment; dora-exporter's variant read its
    /// `redeployment` flag.
    #[serde(default)]
    payload: serde_json::Value,
}

/// The payload's own `redeployment` flag (a string or a boolean), when it sets one.
fn redeployment_flag(payload: &serde_json::Value) -> Option<bool> {
    match payload.get("redeployment")? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => s.trim().to_ascii_lowercase().parse().ok(),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct Repository {
    name: Option<String>,
    full_name: Option<String>,
}

/// One deployment status as a delivery states it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusObservation {
    pub status_id: u64,
    pub deployment_id: u64,
    pub state: String,
    pub environment: String,
    /// `owner/name`, for the team.
    pub repository: String,
    /// The name alone, dora-exporter's `repo` label.
    pub repo: String,
    pub sha: String,
    /// When GitHub recorded the status (never the arrival time).
    pub at: f64,
    /// The id a CD tool gave its deployment (`POST /api/deployments`), which keys it.
    pub client_id: Option<String>,
    /// What the deployment's payload says of itself.
    pub redeployment: Option<bool>,
}

impl StatusObservation {
    /// The deployment's id in the event log.
    pub fn log_id(&self) -> String {
        match &self.client_id {
            Some(id) => format!("d:api:{id}"),
            None => format!(
                "d:{}:{}",
                self.repository.to_ascii_lowercase(),
                self.deployment_id
            ),
        }
    }
}

/// The envelope event of a deployment posted to `POST /api/deployments`.
pub const API_EVENT: &str = "api_deployment";

/// A deployment a CD tool outside GitHub reports (`POST /api/deployments`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiDeployment {
    /// The client's id for this deployment: a repeat is counted once.
    pub id: String,
    /// `owner/name`.
    pub repo: String,
    pub environment: String,
    pub sha: String,
    /// `success` unless said otherwise.
    #[serde(default)]
    pub status: Option<String>,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    #[serde(default)]
    pub redeployment: Option<bool>,
}

impl ApiDeployment {
    /// The field at fault, for a 400 that names it.
    pub fn check(&self) -> Result<(), &'static str> {
        let bad = |s: &str| s.trim().is_empty() || s.len() > 256 || s.contains(char::is_control);
        if bad(&self.id) {
            return Err("id");
        }
        if bad(&self.repo) || self.repo.split('/').filter(|p| !p.is_empty()).count() != 2 {
            return Err("repo (owner/name)");
        }
        if bad(&self.environment) {
            return Err("environment");
        }
        if bad(&self.sha) {
            return Err("sha");
        }
        if self.status.as_deref().is_some_and(bad) {
            return Err("status");
        }
        if crate::timestamp::parse_rfc3339(&self.finished_at).is_none() {
            return Err("finished_at (RFC 3339)");
        }
        Ok(())
    }
}

fn from_api(body: &[u8]) -> Result<StatusObservation, Rejected> {
    let d: ApiDeployment = serde_json::from_slice(body).map_err(|_| Rejected::Malformed)?;
    d.check().map_err(|_| Rejected::Incomplete)?;
    let repo = d.repo.rsplit('/').next().unwrap_or_default().to_string();
    Ok(StatusObservation {
        status_id: 0,
        deployment_id: 0,
        state: d.status.unwrap_or_else(|| "success".into()),
        environment: d.environment,
        repository: d.repo,
        repo,
        sha: d.sha,
        at: crate::timestamp::parse_rfc3339(&d.finished_at).ok_or(Rejected::BadDate)?,
        client_id: Some(d.id),
        redeployment: d.redeployment,
    })
}

/// Why a delivery is not a deployment status; bounded, counted by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    Incomplete,
    BadDate,
}

impl Rejected {
    pub const ALL: &[Rejected] = &[Rejected::Malformed, Rejected::Incomplete, Rejected::BadDate];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Incomplete => "incomplete",
            Rejected::BadDate => "bad_date",
        }
    }
}

pub fn observe(body: &[u8]) -> Result<StatusObservation, Rejected> {
    let e: StatusEvent = serde_json::from_slice(body).map_err(|_| Rejected::Malformed)?;
    let (Some(s), Some(d), Some(r)) = (e.deployment_status, e.deployment, e.repository) else {
        return Err(Rejected::Incomplete);
    };
    let full = r
        .full_name
        .filter(|f| !f.is_empty())
        .ok_or(Rejected::Incomplete)?;
    let repo = r
        .name
        .filter(|n| !n.is_empty())
        .or_else(|| full.rsplit_once('/').map(|(_, n)| n.to_string()))
        .ok_or(Rejected::Incomplete)?;
    let at = s.created_at.as_deref().ok_or(Rejected::Incomplete)?;
    Ok(StatusObservation {
        status_id: s.id.ok_or(Rejected::Incomplete)?,
        deployment_id: d.id.ok_or(Rejected::Incomplete)?,
        state: s
            .state
            .filter(|x| !x.is_empty())
            .ok_or(Rejected::Incomplete)?,
        environment: d.environment.unwrap_or_default(),
        repository: full,
        repo,
        sha: d.sha.unwrap_or_default(),
        at: crate::timestamp::parse_rfc3339(at).ok_or(Rejected::BadDate)?,
        client_id: None,
        redeployment: redeployment_flag(&d.payload),
    })
}

/// Outcomes, counted in `devmetrics_dora_events_total{source="github",outcome}`.
pub const OUTCOMES: &[&str] = &[
    "applied",
    "duplicate",
    "chain_incomplete",
    "push",
    "push_ignored",
    "api_failed",
    "deployment",
    "pull_request",
    "review",
    "issue",
    "ignored",
    "malformed",
    "incomplete",
    "bad_date",
];

/// `dora_failed_changes_total{reason}`.
pub const FAILED_BY_INCIDENT: &str = "incident";
pub const FAILED_DEPLOYMENT: &str = "failed_deployment";

/// Marks the deployment `log_id` of `team` as a failed change, once whatever marks it.
pub fn failed_change(team: &str, log_id: &str, reason: &str) -> crate::store::Batch {
    crate::store::Batch {
        key: format!("failed:{log_id}"),
        scope: SCOPE.to_string(),
        updates: vec![Update {
            family: metrics::DORA_FAILED_CHANGES_TOTAL,
            labels: Labels::new(metrics::DORA_FAILED_CHANGES_TOTAL, &[team, reason])
                .expect("two labels"),
            op: Op::Inc(1.0),
        }],
    }
}

/// One failed-deployment recovery time, observed once under `key`.
pub fn recovery(team: &str, key: &str, seconds: f64) -> crate::store::Batch {
    crate::store::Batch {
        key: key.to_string(),
        scope: SCOPE.to_string(),
        updates: vec![Update {
            family: metrics::DORA_FAILED_DEPLOYMENT_RECOVERY_SECONDS,
            labels: Labels::new(metrics::DORA_FAILED_DEPLOYMENT_RECOVERY_SECONDS, &[team])
                .expect("one label"),
            op: Op::Observe(seconds),
        }],
    }
}

fn change(team: &str, log_id: &str) -> crate::store::Batch {
    crate::store::Batch {
        key: format!("change:{log_id}"),
        scope: SCOPE.to_string(),
        updates: vec![Update {
            family: metrics::DORA_CHANGES_TOTAL,
            labels: Labels::new(metrics::DORA_CHANGES_TOTAL, &[team]).expect("one label"),
            op: Op::Inc(1.0),
        }],
    }
}

pub struct Deployments {
    pub store: SharedStore,
    pub teams: super::catalog::TeamOf,
    /// Globs naming production environments (without case).
    pub production: Vec<String>,
    pub failed_deployments_are_failures: bool,
    /// Incidents from GitHub issues carrying this label (without case), when set.
    pub incident_label: Option<String>,
    pub incidents: Arc<super::incidents::Incidents>,
    pub prs: super::prs::PullRequests,
    /// GitHub's answers where the pushes do not cover a deployment.
    pub lookup: super::lookup::Lookup,
    pub stats: Arc<crate::telemetry::Outcomes>,
}

impl Deployments {
    fn is_production(&self, environment: &str) -> bool {
        let e = environment.to_ascii_lowercase();
        self.production
            .iter()
            .any(|p| crate::sources::github::config::glob_match(&p.to_ascii_lowercase(), &e))
    }

    pub async fn process(&self, env: &Envelope) -> Result<&'static str, crate::store::Error> {
        match env.event.as_str() {
            "push" => {
                return Ok(match super::changes::read_push(&env.body) {
                    Some((repo, after, push)) => {
                        super::changes::record_push(&*self.store, &repo, &after, &push).await?;
                        "push"
                    }
                    None => "push_ignored",
                });
            }
            "deployment" => {
                return Ok(match super::changes::read_deployment(&env.body) {
                    Some((repo, d)) => {
                        super::changes::record_deployment(&*self.store, &repo, &d).await?;
                        "deployment"
                    }
                    None => "incomplete",
                });
            }
            "pull_request" | "pull_request_review" => {
                return self.prs.record(&env.event, &env.body).await;
            }
            "issues" => return self.issue(&env.body).await,
            "deployment_status" | API_EVENT => {}
            _ => return Ok("ignored"),
        }
        let parsed = if env.event == API_EVENT {
            from_api(&env.body)
        } else {
            observe(&env.body)
        };
        let o = match parsed {
            Ok(o) => o,
            Err(r) => return Ok(r.as_str()),
        };
        let team = self.teams.of_repository(&o.repository).await;
        let team = team.as_str();
        // One read serves the label and, for a success, the record of the commit.
        let first =
            super::changes::first_deployed(&*self.store, &o.repository, &o.environment, &o.sha)
                .await?;
        let redeployment = o
            .redeployment
            .unwrap_or_else(|| first.is_some_and(|f| f < o.at));
        let labels = Labels::new(
            metrics::GITHUB_DEPLOYMENTS_TOTAL,
            &[
                o.repo.as_str(),
                o.environment.as_str(),
                team,
                o.state.as_str(),
                if redeployment { "true" } else { "false" },
            ],
        )
        .expect("five label values for five names");
        let mut outcome = "applied";
        let production = self.is_production(&o.environment);
        let success = o.state == "success";
        let failure = matches!(o.state.as_str(), "failure" | "error");
        let log_id = o.log_id();
        let target = format!(
            "{}@{}",
            o.repository.to_ascii_lowercase(),
            o.environment.to_ascii_lowercase()
        );
        // What a successful production deployment ships, each commit's lead time once (by
        // its sha: a redeploy ships nothing new), applied before the deployment is recorded
        // as the latest, so a crash in between repeats the walk and the keys absorb it.
        let mut first_commit = None;
        let mut previous_at = None;
        let mut batches = Vec::new();
        if success {
            super::changes::mark_sha_deployed(
                &*self.store,
                &o.repository,
                &o.environment,
                &o.sha,
                o.at,
                first,
            )
            .await?;
        }
        if production && success {
            let mut shipped =
                super::changes::shipped(&*self.store, &o.repository, &o.environment, &o.sha)
                    .await?;
            if !shipped.complete {
                outcome = self.look_up(&o, &mut shipped).await?;
            }
            previous_at = shipped.previous_at;
            let lead_labels = Labels::new(metrics::DORA_CHANGE_LEAD_TIME_SECONDS, &[team])
                .expect("one label value for one name");
            for (sha, t) in &shipped.commits {
                first_commit = Some(first_commit.map_or(*t, |f: f64| f.min(*t)));
                let lead = o.at - t;
                if lead < 0.0 {
                    continue;
                }
                let key = format!("{}:{sha}", o.repository.to_ascii_lowercase());
                // The earliest deployment shipping a commit is its lead time, whichever
                // deployment's delivery arrived first.
                let id = format!("c:{key}");
                let earlier = matches!(
                    log::get(&*self.store, team, &id).await?,
                    Some(log::Entry::Change { at, .. }) if at <= o.at
                );
                if !earlier {
                    log::put(
                        &*self.store,
                        team,
                        &id,
                        &log::Entry::Change { at: o.at, lead },
                    )
                    .await?;
                }
                batches.push(crate::store::Batch {
                    key: format!("lead:{key}"),
                    scope: SCOPE.to_string(),
                    updates: vec![Update {
                        family: metrics::DORA_CHANGE_LEAD_TIME_SECONDS,
                        labels: lead_labels.clone(),
                        op: Op::Observe(lead),
                    }],
                });
            }
            batches.extend(
                self.prs
                    .shipped(&o.repository, team, o.at, &shipped.commits, &o.sha)
                    .await?,
            );
        }
        if production && (success || failure) {
            log::put(
                &*self.store,
                team,
                &log_id,
                &log::Entry::Deployment {
                    at: o.at,
                    success,
                    target: target.clone(),
                },
            )
            .await?;
            if success {
                batches.push(change(team, &log_id));
                let ds = log::deployments(&*self.store, team).await?;
                for f in log::recovered_by(&ds, &target, o.at) {
                    batches.push(recovery(team, &format!("recovered:{}", f.id), o.at - f.at));
                }
            } else {
                if self.failed_deployments_are_failures {
                    batches.push(change(team, &log_id));
                    batches.push(failed_change(team, &log_id, FAILED_DEPLOYMENT));
                }
                // A failure delivered after the deployment that fixed it.
                let ds = log::deployments(&*self.store, team).await?;
                if let Some(fix) = log::recovering(&ds, &target, o.at) {
                    batches.push(recovery(
                        team,
                        &format!("recovered:{log_id}"),
                        fix.at - o.at,
                    ));
                }
            }
        }
        if !batches.is_empty() {
            self.store.apply_each_once(batches).await?;
        }
        if production && success {
            super::changes::mark_deployed(
                &*self.store,
                &o.repository,
                &o.environment,
                &o.sha,
                o.at,
                previous_at,
            )
            .await?;
        }
        // dora-exporter's lead time of a deployment: from its first change (the oldest commit
        // it ships, else the deployed commit) to the status, from GitHub's own times only.
        let first = match first_commit {
            Some(f) => Some(f),
            None => super::changes::commit_time(&*self.store, &o.repository, &o.sha).await?,
        };
        // The status id, not the delivery: an org hook and a repository hook deliver the
        // same status under two delivery ids. A CD tool's deployment is its own id.
        let key = match &o.client_id {
            Some(id) => format!("api_deployment:{id}"),
            None => format!("deployment_status:{}", o.status_id),
        };
        let mut updates = vec![Update {
            family: metrics::GITHUB_DEPLOYMENTS_TOTAL,
            labels: labels.clone(),
            op: Op::Inc(1.0),
        }];
        if let Some(first) = first.filter(|f| o.at >= *f) {
            let lead = o.at - first;
            updates.push(Update {
                family: metrics::GITHUB_DEPLOYMENTS_DURATION,
                labels: labels.clone(),
                op: Op::Set(lead),
            });
            updates.push(Update {
                family: metrics::GITHUB_DEPLOYMENTS_DURATION_SUM,
                labels,
                op: Op::Add(lead),
            });
        }
        let applied = self.store.apply_once(&key, SCOPE, updates).await?;
        Ok(match applied {
            Applied::Applied => outcome,
            Applied::Duplicate => "duplicate",
        })
    }

    /// Completes what `shipped` lacks from GitHub: the comparison with the previous
    /// deployment, or for a first deployment its pull request's commits. Returns the
    /// outcome to count.
    async fn look_up(
        &self,
        o: &StatusObservation,
        shipped: &mut super::changes::Shipped,
    ) -> Result<&'static str, crate::store::Error> {
        let found = match &shipped.previous_sha {
            Some(prev) => self.lookup.compare(&o.repository, prev, &o.sha).await,
            None => {
                self.lookup
                    .pull_request_commits(&o.repository, &o.sha)
                    .await
            }
        };
        match found {
            Ok(Some(list)) => {
                for (sha, t) in list {
                    if !shipped.commits.iter().any(|(s, _)| *s == sha) {
                        shipped.commits.push((sha, t));
                    }
                }
                shipped.complete = true;
                Ok("applied")
            }
            Ok(None) => Ok("chain_incomplete"),
            Err(super::lookup::Error::Store(e)) => Err(e),
            Err(super::lookup::Error::Github(e)) => {
                tracing::warn!(repository = %o.repository, error = %e, "the commits of a deployment could not be read from GitHub; its lead times are incomplete");
                Ok("api_failed")
            }
        }
    }

    /// An `issues` delivery: an incident while it carries the incident label.
    async fn issue(&self, body: &[u8]) -> Result<&'static str, crate::store::Error> {
        let Some(label) = &self.incident_label else {
            return Ok("ignored");
        };
        let Some((repo, obs)) = super::changes::read_issue(body, label) else {
            return Ok("ignored");
        };
        let team = self.teams.of_repository(&repo).await;
        self.incidents
            .observe(obs, super::incidents::GITHUB, &team)
            .await?;
        Ok("issue")
    }
}

#[async_trait::async_trait]
impl Handler for Deployments {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let env = super::envelope(delivery)?;
        super::settle(&self.stats, self.process(&env).await)
    }
}
