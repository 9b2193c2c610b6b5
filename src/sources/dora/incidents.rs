//! Incidents from Jira deliveries and from GitHub issues carrying the incident label. Each
//! issue's state (first seen, created, resolved, the
//! restore time already added) lives in the store's kv, so deliveries of any age and order
//! land where their own times say: the incident counts once, its time to restore is its final
//! resolution − its creation, and an older event never undoes a newer one.
//!
//! Crash safety: the next metric change is written into the issue's state (as `pending`,
//! with its idempotency key) before it is applied, and every delivery of the issue first
//! re-applies what is pending; applying a key twice changes nothing.
//!
//! An incident is attributed, when first seen, to the latest successful production
//! deployment of its team before it started (DevLake's rule), which counts once as a failed
//! change; its first resolution observes the failed-deployment recovery time.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::catalog::TeamOf;
use super::config::JiraConfig;
use super::jira::{self, Observation};
use super::log;
use crate::metrics::{self, Labels, Op, Update};
use crate::processors::Envelope;
use crate::queue::{Delivery, Failure, Handler};
use crate::store::SharedStore;

/// The store scope of the incident families.
pub const SCOPE: &str = "dora/incidents";
const KV: &str = "dora.incidents";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    /// `jira`, or `github` for an issue with the incident label.
    #[serde(default = "jira_source")]
    source: String,
    project: String,
    team: String,
    created: f64,
    resolved: Option<f64>,
    /// Time of the newest event applied.
    at: f64,
    /// Restore time already in `jira_incidents_duration_sum`.
    contributed: f64,
    /// Changes made so far; names the next change's idempotency key.
    seq: u64,
    pending: Option<Pending>,
    /// The deployment it is attributed to: `(log id, time)`.
    #[serde(default)]
    deployment: Option<(String, f64)>,
    /// Whether its recovery time was observed (at its first resolution).
    #[serde(default)]
    recovered: bool,
    /// When service was first restored: the recovery of the failed deployment (a reopening
    /// does not move it).
    #[serde(default)]
    first_resolved: Option<f64>,
}

fn jira_source() -> String {
    JIRA.to_string()
}

pub const JIRA: &str = "jira";
pub const GITHUB: &str = "github";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    key: String,
    count: bool,
    add: f64,
    /// The deployment this change marks as failed.
    #[serde(default)]
    failed: Option<String>,
    #[serde(default)]
    recovery: Option<f64>,
}

/// Outcomes of processing, counted in `devmetrics_dora_events_total{source="jira",outcome}`.
const APPLIED: &str = "applied";
const STALE: &str = "stale";
const UNCHANGED: &str = "unchanged";
pub const OUTCOMES: &[&str] = &[
    APPLIED,
    STALE,
    UNCHANGED,
    "malformed",
    "no_issue",
    "no_created",
    "bad_date",
    "filtered",
];

/// Every incident's state, whichever receiver reported it.
pub struct Incidents {
    pub store: SharedStore,
    pub teams: TeamOf,
    /// Deliveries of one process are applied one at a time: each reads and writes its
    /// issue's state.
    pub serial: tokio::sync::Mutex<()>,
}

fn labels(project: &str, team: &str) -> Labels {
    Labels::new(metrics::JIRA_INCIDENTS, &[project, team]).expect("two label values for two names")
}

impl Incidents {
    pub fn new(store: SharedStore, teams: TeamOf) -> Incidents {
        Incidents {
            store,
            teams,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    async fn save(&self, issue: &str, state: &State) -> Result<(), crate::store::Error> {
        let value = serde_json::to_vec(state).expect("state encodes");
        self.store.kv_put(KV, issue, value, None).await
    }

    async fn apply(&self, state: &State) -> Result<(), crate::store::Error> {
        let Some(p) = &state.pending else {
            return Ok(());
        };
        let team = state.team.as_str();
        let mut updates = Vec::new();
        if state.source == JIRA {
            let l = labels(&state.project, team);
            if p.count {
                updates.push(Update {
                    family: metrics::JIRA_INCIDENTS,
                    labels: l.clone(),
                    op: Op::Inc(1.0),
                });
            }
            // Present from the first sight, so every incident's series shows both families.
            updates.push(Update {
                family: metrics::JIRA_INCIDENTS_DURATION_SUM,
                labels: l,
                op: Op::Add(p.add),
            });
        }
        if p.count {
            updates.push(Update {
                family: metrics::DORA_INCIDENTS_TOTAL,
                labels: Labels::new(metrics::DORA_INCIDENTS_TOTAL, &[team, &state.source])
                    .expect("two labels"),
                op: Op::Inc(1.0),
            });
        }
        let mut batches = vec![crate::store::Batch {
            key: p.key.clone(),
            scope: SCOPE.to_string(),
            updates,
        }];
        if let Some(deployment) = &p.failed {
            batches.push(super::deployments::failed_change(
                team,
                deployment,
                super::deployments::FAILED_BY_INCIDENT,
            ));
        }
        if let Some(seconds) = p.recovery {
            batches.push(super::deployments::recovery(
                team,
                &format!("{}:recovery", p.key),
                seconds,
            ));
        }
        self.store.apply_each_once(batches).await?;
        Ok(())
    }

    /// The latest successful production deployment of `team` before `created`.
    async fn attribute(
        &self,
        team: &str,
        created: f64,
    ) -> Result<Option<(String, f64)>, crate::store::Error> {
        let ds = log::deployments(&*self.store, team).await?;
        Ok(log::attribute(&ds, created).map(|d| (d.id.clone(), d.at)))
    }

    /// Applies one observation of an incident reported by `source` for `team`.
    pub async fn observe(
        &self,
        obs: Observation,
        source: &str,
        team: &str,
    ) -> Result<&'static str, crate::store::Error> {
        let _one = self.serial.lock().await;
        let raw = self.store.kv_get(KV, &obs.issue).await?;
        let mut state: Option<State> = raw.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(s) = &state {
            // A change written down but maybe not applied before a crash.
            self.apply(s).await?;
        }
        let first = state.is_none();
        let mut s = state.take().unwrap_or_else(|| State {
            source: source.to_string(),
            team: team.to_string(),
            project: obs.project.clone(),
            created: obs.created,
            at: f64::NEG_INFINITY,
            ..State::default()
        });
        let outcome = if obs.at < s.at {
            // An older event: it can still be the first sight (counting once), but it does
            // not move the resolution back.
            STALE
        } else {
            s.at = obs.at;
            s.created = obs.created;
            s.resolved = obs.resolved;
            APPLIED
        };
        // Time to restore is the final resolution − creation; while reopened the earlier
        // restore time stays until it is resolved again, so the sum never jumps back.
        let add = match s.resolved {
            Some(r) => (r - s.created).max(0.0) - s.contributed,
            None => 0.0,
        };
        // Attributed at first sight; an incident seen before any deployment of its team
        // tries again until it resolves.
        let mut failed = None;
        if s.deployment.is_none() && !s.recovered {
            s.deployment = self.attribute(&s.team, s.created).await?;
            failed = s.deployment.as_ref().map(|(id, _)| id.clone());
        }
        if s.first_resolved.is_none() {
            s.first_resolved = s.resolved;
        }
        let recovery = match (&s.deployment, s.first_resolved, s.recovered) {
            (Some((_, at)), Some(r), false) => {
                s.recovered = true;
                Some((r - at).max(0.0))
            }
            _ => None,
        };
        log::put(
            &*self.store,
            &s.team,
            &format!("i:{}:{}", s.source, obs.issue),
            &log::Entry::Incident {
                created: s.created,
                resolved: s.first_resolved,
            },
        )
        .await?;
        if !first && add == 0.0 && failed.is_none() && recovery.is_none() {
            self.save(&obs.issue, &s).await?;
            return Ok(if outcome == APPLIED {
                UNCHANGED
            } else {
                outcome
            });
        }
        s.contributed += add;
        s.seq += 1;
        s.pending = Some(Pending {
            key: format!("{}:{}:{}", s.source, obs.issue, s.seq),
            count: first,
            add,
            failed,
            recovery,
        });
        self.save(&obs.issue, &s).await?;
        self.apply(&s).await?;
        Ok(outcome)
    }
}

/// The Jira front end: reads each delivery, filtered by `dora.jira`.
pub struct JiraIncidents {
    pub incidents: Arc<Incidents>,
    pub config: JiraConfig,
    pub stats: Arc<crate::telemetry::Outcomes>,
}

impl JiraIncidents {
    pub async fn process(&self, env: &Envelope) -> Result<&'static str, crate::store::Error> {
        let obs = match jira::observe(&env.body, env.received_at, &self.config.filter) {
            Ok(o) => o,
            Err(r) => return Ok(r.as_str()),
        };
        let team = self.incidents.teams.of_project(&obs.project).to_string();
        self.incidents.observe(obs, JIRA, &team).await
    }
}

#[async_trait::async_trait]
impl Handler for JiraIncidents {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let env = super::envelope(delivery)?;
        let processed = self.process(&env).await;
        if let Ok(outcome) = processed
            && outcome != APPLIED
            && outcome != UNCHANGED
        {
            tracing::debug!(
                delivery = %env.delivery,
                event = jira::event_name(&env.body).unwrap_or_default(),
                outcome,
                "Jira delivery is not an incident change"
            );
        }
        super::settle(&self.stats, processed)
    }
}
