//! A cap on the series each event-driven family may hold. Job and step names built from
//! expressions are unbounded, and an event family has no poll to replace it: past the cap,
//! an update that would add a series is dropped and counted, while updates to series that
//! exist (and every gauge leave) still apply.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::metrics::{FamilyId, Labels, Op, Snapshot, family};
use crate::store::Batch;
use crate::telemetry::Telemetry;

pub struct SeriesBudget {
    limit: usize,
    /// The series each family holds or was admitted; seeded from the store, so a restart
    /// keeps the budget it had.
    admitted: Mutex<HashMap<FamilyId, HashSet<Labels>>>,
    telemetry: Arc<Telemetry>,
}

impl SeriesBudget {
    /// A budget of `limit` series per family, counting those already under `scope` (a
    /// scope and the scopes below it).
    pub fn new(
        limit: usize,
        snapshot: &Snapshot,
        scope: &str,
        telemetry: Arc<Telemetry>,
    ) -> SeriesBudget {
        let below = format!("{scope}/");
        let mut admitted: HashMap<FamilyId, HashSet<Labels>> = HashMap::new();
        for s in snapshot
            .scopes
            .iter()
            .filter(|s| &*s.name == scope || s.name.starts_with(&below))
        {
            for (fid, series) in &s.families {
                admitted
                    .entry(*fid)
                    .or_default()
                    .extend(series.keys().cloned());
            }
        }
        SeriesBudget {
            limit,
            admitted: Mutex::new(admitted),
            telemetry,
        }
    }

    /// Removes from `batches` the updates that would add a series past the limit. Admission
    /// happens here, before the write, so consumers running in parallel never overshoot; a
    /// write that then fails leaves an admitted series unwritten, which only lowers the
    /// effective budget until a restart.
    pub fn admit(&self, batches: &mut [Batch]) {
        let mut admitted = self.admitted.lock();
        for b in batches {
            b.updates.retain(|u| {
                if matches!(u.op, Op::Leave(_)) {
                    return true;
                }
                let set = admitted.entry(u.family).or_default();
                if set.contains(&u.labels) {
                    return true;
                }
                if set.len() < self.limit {
                    set.insert(u.labels.clone());
                    return true;
                }
                self.telemetry
                    .series_dropped(family(u.family).name, self.limit);
                false
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{self, Update};

    fn batch(jobs: &[&str]) -> Batch {
        Batch {
            key: "k".into(),
            scope: "webhooks/workflows/o/r".into(),
            updates: jobs
                .iter()
                .map(|j| Update {
                    family: metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED,
                    labels: Labels::new(metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED, &["o/r", j])
                        .unwrap(),
                    op: Op::Enter(format!("m-{j}")),
                })
                .collect(),
        }
    }

    #[test]
    fn past_the_limit_only_known_series_and_leaves_pass() {
        let t = Arc::new(Telemetry::default());
        let b = SeriesBudget::new(2, &Snapshot::default(), "webhooks/workflows", t.clone());
        let mut v = [batch(&["a", "b", "a", "c"])];
        b.admit(&mut v);
        assert_eq!(v[0].updates.len(), 3);
        let mut v = [batch(&["c", "b"])];
        v[0].updates[0].op = Op::Leave("m-c".into());
        b.admit(&mut v);
        assert_eq!(v[0].updates.len(), 2, "a leave always passes");
        let dropped = t.series_budgets();
        assert_eq!(
            dropped
                .get("devmetrics_workflow_jobs_queued")
                .map(|d| d.dropped),
            Some(1)
        );
    }
}
