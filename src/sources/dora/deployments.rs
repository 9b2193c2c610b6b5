//! Deployments from GitHub's `deployment_status` deliveries: each distinct status (every
//! state, as dora-exporter counts them) once in `github_deployments_total`, labelled by the
//! repository's name, the environment, the owning team and the state.

use serde::Deserialize;
use std::sync::Arc;

use super::config::Teams;
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
    })
}

/// Outcomes, counted in `devmetrics_dora_events_total{source="github",outcome}`.
pub const OUTCOMES: &[&str] = &[
    "applied",
    "duplicate",
    "chain_incomplete",
    "push",
    "push_ignored",
    "malformed",
    "incomplete",
    "bad_date",
];

pub struct Deployments {
    pub store: SharedStore,
    pub teams: Teams,
    /// Globs naming production environments (without case).
    pub production: Vec<String>,
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
        if env.event == "push" {
            return Ok(match super::changes::read_push(&env.body) {
                Some((repo, after, push)) => {
                    super::changes::record_push(&*self.store, &repo, &after, &push).await?;
                    "push"
                }
                None => "push_ignored",
            });
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
        let team = self.teams.of_repository(&o.repository);
        let labels = Labels::new(
            metrics::GITHUB_DEPLOYMENTS_TOTAL,
            &[
                o.repo.as_str(),
                o.environment.as_str(),
                team,
                o.state.as_str(),
            ],
        )
        .expect("four label values for four names");
        let mut outcome = "applied";
        // What a successful production deployment ships, each commit's lead time once (by
        // its sha: a redeploy ships nothing new), applied before the deployment is recorded
        // as the latest, so a crash in between repeats the walk and the keys absorb it.
        let mut first_commit = None;
        let production_success = o.state == "success" && self.is_production(&o.environment);
        if production_success {
            let shipped =
                super::changes::shipped(&*self.store, &o.repository, &o.environment, &o.sha)
                    .await?;
            if !shipped.complete {
                outcome = "chain_incomplete";
            }
            let lead_labels = Labels::new(metrics::DORA_CHANGE_LEAD_TIME_SECONDS, &[team])
                .expect("one label value for one name");
            let mut batches = Vec::new();
            for (sha, t) in &shipped.commits {
                first_commit = Some(first_commit.map_or(*t, |f: f64| f.min(*t)));
                let lead = o.at - t;
                if lead < 0.0 {
                    continue;
                }
                batches.push(crate::store::Batch {
                    key: format!("lead:{}:{sha}", o.repository.to_ascii_lowercase()),
                    scope: SCOPE.to_string(),
                    updates: vec![Update {
                        family: metrics::DORA_CHANGE_LEAD_TIME_SECONDS,
                        labels: lead_labels.clone(),
                        op: Op::Observe(lead),
                    }],
                });
            }
            if !batches.is_empty() {
                self.store.apply_each_once(batches).await?;
            }
            super::changes::mark_deployed(
                &*self.store,
                &o.repository,
                &o.environment,
                &o.sha,
                o.at,
                shipped.previous_at,
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
}

#[async_trait::async_trait]
impl Handler for Deployments {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let env = super::envelope(delivery)?;
        super::settle(&self.stats, self.process(&env).await)
    }
}
