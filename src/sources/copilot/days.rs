//! The daily counters: each complete day's 1-day aggregate report (org or enterprise) is
//! counted once into `devmetrics_copilot_*_total`. Gauges of "the latest day" cannot show a
//! day that was missed; counters can, so `increase()` over any range adds up to what GitHub
//! reported for those days.
//!
//! The poller looks at which days of the horizon are counted and queues one job per day that
//! is not (yesterday included); the handler reads that day's report and applies it under an
//! idempotency key, so a day counts once whichever replica, retry or restart reads it. A kv
//! marker beside the key tells the poller the day is done.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::aggregate::Scope;
use super::wire::Record;
use super::{CopilotPoller, Read, Report};
use crate::metrics::{self, FamilyId, Labels, Op, Update};
use crate::queue::{Delivery, Failure, Handler};
use crate::store::SharedStore;

/// Which days are counted: one entry per (owner, report, day).
pub const NS: &str = "copilot.days";
const DAY: i64 = 86_400;

/// One day of one aggregate report to count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayJob {
    pub owner: String,
    pub report: String,
    pub day: String,
}

impl DayJob {
    /// The idempotency key that counts the day once.
    pub fn key(&self) -> String {
        format!(
            "copilot-day:{}:{}:{}",
            self.owner.to_ascii_lowercase(),
            self.report,
            self.day
        )
    }

    fn marker(&self) -> String {
        format!("{}{}", marker_prefix(&self.owner, &self.report), self.day)
    }
}

pub fn marker_prefix(owner: &str, report: &str) -> String {
    format!("{}\x1f{report}\x1f", owner.to_ascii_lowercase())
}

/// The horizon's days, oldest first: `days` days ending with the latest complete one.
pub fn horizon(now: i64, days: u32) -> Vec<String> {
    let yesterday = now - now.rem_euclid(DAY) - DAY;
    (0..days as i64)
        .rev()
        .map(|k| crate::timestamp::format_day(yesterday - k * DAY))
        .collect()
}

/// How long a day's marker is kept: past the day's leaving the horizon.
pub fn marker_ttl(days: u32) -> std::time::Duration {
    std::time::Duration::from_secs((days as u64 + 2) * DAY as u64)
}

const COUNTS: [FamilyId; 7] = [
    metrics::DEVMETRICS_COPILOT_USER_INITIATED_INTERACTIONS_TOTAL,
    metrics::DEVMETRICS_COPILOT_CODE_GENERATIONS_TOTAL,
    metrics::DEVMETRICS_COPILOT_CODE_ACCEPTANCES_TOTAL,
    metrics::DEVMETRICS_COPILOT_LOC_SUGGESTED_TO_ADD_TOTAL,
    metrics::DEVMETRICS_COPILOT_LOC_SUGGESTED_TO_DELETE_TOTAL,
    metrics::DEVMETRICS_COPILOT_LOC_ADDED_TOTAL,
    metrics::DEVMETRICS_COPILOT_LOC_DELETED_TOTAL,
];

const PULL_REQUESTS: [FamilyId; 4] = [
    metrics::DEVMETRICS_COPILOT_PULL_REQUESTS_CREATED_TOTAL,
    metrics::DEVMETRICS_COPILOT_PULL_REQUESTS_REVIEWED_TOTAL,
    metrics::DEVMETRICS_COPILOT_PULL_REQUESTS_CREATED_BY_COPILOT_TOTAL,
    metrics::DEVMETRICS_COPILOT_PULL_REQUESTS_REVIEWED_BY_COPILOT_TOTAL,
];

fn inc(family: FamilyId, values: &[&str], v: f64) -> Update {
    Update {
        family,
        labels: Labels::new(family, values).expect("the family's labels"),
        op: Op::Inc(v),
    }
}

/// The day's increments from its report's records: every `day_totals` entry of the day (a
/// 1-day report holds one), pull requests under `pull_requests`. `None` when the records
/// hold no totals of the day, which must not count as a day of zeros.
pub fn updates(
    owner: &str,
    scope: Scope,
    report: &str,
    day: &str,
    records: &[Record],
    pull_requests: bool,
) -> Option<Vec<Update>> {
    let days: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Day(d) if d.day.as_deref().is_none_or(|d| d == day) => Some(d.as_ref()),
            _ => None,
        })
        .collect();
    if days.is_empty() {
        return None;
    }
    let mut sums = super::aggregate::Sums::default();
    for d in &days {
        sums.add(&d.counts);
    }
    let prs = super::aggregate::pull_requests(&days);
    let labels = [owner, scope.as_str()];
    let mut out: Vec<Update> = COUNTS
        .iter()
        .zip(sums.0)
        .filter_map(|(f, v)| Some(inc(*f, &labels, v?.max(0.0))))
        .collect();
    if pull_requests {
        out.extend(
            PULL_REQUESTS
                .iter()
                .zip(prs)
                .filter_map(|(f, v)| Some(inc(*f, &labels, v?.max(0.0)))),
        );
    }
    out.push(inc(
        metrics::DEVMETRICS_COPILOT_DAYS_TOTAL,
        &[owner, report, "counted"],
        1.0,
    ));
    Some(out)
}

/// Counts `copilot/days` jobs on their owner's poller.
pub struct Days {
    /// By lowercased owner.
    pub pollers: HashMap<String, Arc<CopilotPoller>>,
    pub store: SharedStore,
}

impl Days {
    async fn done(&self, job: &DayJob, ttl: std::time::Duration) -> Result<(), Failure> {
        self.store
            .kv_put(NS, &job.marker(), vec![1], Some(ttl))
            .await
            .map_err(|e| Failure::new("store", e))
    }
}

#[async_trait]
impl Handler for Days {
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let job: DayJob = serde_json::from_slice(&delivery.payload)
            .map_err(|e| Failure::permanent("decode", format_args!("Copilot day job: {e}")))?;
        let Some(p) = self.pollers.get(&job.owner.to_ascii_lowercase()) else {
            tracing::warn!(org = %job.owner, "dropping a Copilot day job of an owner no longer configured");
            return Ok(());
        };
        let Some(report) = p.counted().find(|r| r.name() == job.report) else {
            tracing::warn!(org = %job.owner, report = %job.report, "dropping a Copilot day job of a report no longer counted");
            return Ok(());
        };
        let days = p.cfg.backfill_days;
        if !horizon(p.clock.now(), days).contains(&job.day) {
            tracing::debug!(org = %job.owner, day = %job.day, "a Copilot day job past the horizon is dropped");
            return Ok(());
        }
        let ttl = marker_ttl(days);
        if self
            .store
            .kv_get(NS, &job.marker())
            .await
            .map_err(|e| Failure::new("store", e))?
            .is_some()
        {
            return Ok(());
        }
        let scope = if matches!(report, Report::Enterprise1) {
            Scope::Enterprise
        } else {
            Scope::Org
        };
        let updates = match p.read(report, &job.day).await {
            Ok(Read::Records {
                records, outcomes, ..
            }) => {
                if outcomes.contains_key("truncated") {
                    return Err(Failure::permanent(
                        "copilot_report",
                        format_args!(
                            "{} {} of {}: the report passed copilot.max_download_bytes, so the day is not counted",
                            job.owner, job.report, job.day
                        ),
                    ));
                }
                updates(
                    &p.owner,
                    scope,
                    report.name(),
                    &job.day,
                    &records,
                    p.cfg.pull_requests,
                )
                .ok_or_else(|| {
                    Failure::permanent(
                        "copilot_report",
                        format_args!(
                            "{} {} of {}: the report holds no totals of the day",
                            job.owner, job.report, job.day
                        ),
                    )
                })?
            }
            Ok(Read::State("no_data")) => vec![inc(
                metrics::DEVMETRICS_COPILOT_DAYS_TOTAL,
                &[&p.owner, report.name(), "no_data"],
                1.0,
            )],
            Ok(Read::State(state)) => {
                // Disabled or not found: the poll shows the state and queues no more days.
                tracing::info!(org = %job.owner, report = %job.report, day = %job.day, state, "Copilot day not counted");
                return Ok(());
            }
            Err(e) => {
                return Err(Failure::new(
                    "copilot_report",
                    format_args!("{} {} of {}: {e}", job.owner, job.report, job.day),
                ));
            }
        };
        self.store
            .apply_once(&job.key(), &super::scope_of(&p.owner, "days"), updates)
            .await
            .map_err(|e| Failure::new("store", e))?;
        self.done(&job, ttl).await
    }
}

/// The days of `all` not in `counted`, oldest first.
pub fn uncounted(all: &[String], counted: &BTreeSet<String>) -> Vec<String> {
    all.iter()
        .filter(|d| !counted.contains(*d))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::copilot::wire::Reader;

    fn records(text: &str) -> Vec<Record> {
        let mut r = Reader::new();
        r.feed(text.as_bytes());
        r.finish().into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn horizon_ends_yesterday_oldest_first() {
        // 2026-03-10T12:00:00Z
        let now = 1_773_144_000;
        assert_eq!(
            horizon(now, 3),
            vec!["2026-03-07", "2026-03-08", "2026-03-09"]
        );
        assert!(horizon(now, 0).is_empty());
    }

    #[test]
    fn a_day_counts_its_totals_and_pull_requests() {
        let r = records(
            r#"{"report_start_day":"2026-03-09","report_end_day":"2026-03-09","day_totals":[{"day":"2026-03-09","user_initiated_interaction_count":4,"code_generation_activity_count":10,"loc_added_sum":7,"pull_requests":{"total_created":3,"total_reviewed_by_copilot":1}}]}"#,
        );
        let u = updates(
            "acme",
            Scope::Org,
            "organization-1-day",
            "2026-03-09",
            &r,
            true,
        )
        .unwrap();
        let got: Vec<(&str, f64)> = u
            .iter()
            .map(|u| {
                let Op::Inc(v) = u.op else { panic!() };
                (metrics::family(u.family).name, v)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("devmetrics_copilot_user_initiated_interactions_total", 4.0),
                ("devmetrics_copilot_code_generations_total", 10.0),
                ("devmetrics_copilot_loc_added_total", 7.0),
                ("devmetrics_copilot_pull_requests_created_total", 3.0),
                (
                    "devmetrics_copilot_pull_requests_reviewed_by_copilot_total",
                    1.0
                ),
                ("devmetrics_copilot_days_total", 1.0),
            ]
        );
        let without = updates(
            "acme",
            Scope::Org,
            "organization-1-day",
            "2026-03-09",
            &r,
            false,
        )
        .unwrap();
        assert_eq!(without.len(), 4);
    }

    #[test]
    fn another_days_totals_or_none_are_not_a_day_of_zeros() {
        let r =
            records(r#"{"day_totals":[{"day":"2026-03-08","code_generation_activity_count":10}]}"#);
        assert!(
            updates(
                "acme",
                Scope::Org,
                "organization-1-day",
                "2026-03-09",
                &r,
                true
            )
            .is_none()
        );
        assert!(
            updates(
                "acme",
                Scope::Org,
                "organization-1-day",
                "2026-03-09",
                &[],
                true
            )
            .is_none()
        );
    }

    #[test]
    fn uncounted_days_keep_their_order() {
        let all = vec!["a".to_string(), "b".into(), "c".into()];
        let counted = BTreeSet::from(["b".to_string()]);
        assert_eq!(uncounted(&all, &counted), vec!["a", "c"]);
    }
}
