//! Incidents from Jira deliveries. Each issue's state (first seen, created, resolved, the
//! restore time already added) lives in the store's kv, so deliveries of any age and order
//! land where their own times say: the incident counts once, its time to restore is its final
//! resolution − its creation, and an older event never undoes a newer one.
//!
//! Crash safety: the next metric change is written into the issue's state (as `pending`,
//! with its idempotency key) before it is applied, and every delivery of the issue first
//! re-applies what is pending; applying a key twice changes nothing.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::config::{JiraConfig, Teams};
use super::jira;
use crate::metrics::{self, Labels, Op, Update};
use crate::processors::Envelope;
use crate::queue::{Delivery, Failure, Handler};
use crate::store::SharedStore;

/// The store scope of the incident families.
pub const SCOPE: &str = "dora/incidents";
const KV: &str = "dora.incidents";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    key: String,
    count: bool,
    add: f64,
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

pub struct Incidents {
    pub store: SharedStore,
    pub config: JiraConfig,
    pub teams: Teams,
    pub stats: Arc<crate::telemetry::Outcomes>,
    /// Deliveries of one process are applied one at a time: each reads and writes its
    /// issue's state.
    pub serial: tokio::sync::Mutex<()>,
}

fn labels(project: &str, team: &str) -> Labels {
    Labels::new(metrics::JIRA_INCIDENTS, &[project, team]).expect("two label values for two names")
}

impl Incidents {
    async fn save(&self, issue: &str, state: &State) -> Result<(), crate::store::Error> {
        let value = serde_json::to_vec(state).expect("state encodes");
        self.store.kv_put(KV, issue, value, None).await
    }

    async fn apply(&self, state: &State) -> Result<(), crate::store::Error> {
        let Some(p) = &state.pending else {
            return Ok(());
        };
        let l = labels(&state.project, &state.team);
        let mut updates = Vec::new();
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
        self.store.apply_once(&p.key, SCOPE, updates).await?;
        Ok(())
    }

    pub async fn process(&self, env: &Envelope) -> Result<&'static str, crate::store::Error> {
        let obs = match jira::observe(&env.body, env.received_at, &self.config.filter) {
            Ok(o) => o,
            Err(r) => return Ok(r.as_str()),
        };
        let _one = self.serial.lock().await;
        let raw = self.store.kv_get(KV, &obs.issue).await?;
        let mut state: Option<State> = raw.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(s) = &state {
            // A change written down but maybe not applied before a crash.
            self.apply(s).await?;
        }
        let first = state.is_none();
        let mut s = state.take().unwrap_or_else(|| State {
            team: self.teams.of_project(&obs.project).to_string(),
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
        if !first && add == 0.0 {
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
            key: format!("jira:{}:{}", obs.issue, s.seq),
            count: first,
            add,
        });
        self.save(&obs.issue, &s).await?;
        self.apply(&s).await?;
        Ok(outcome)
    }
}

#[async_trait::async_trait]
impl Handler for Incidents {
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
