//! The DORA event log: one kv entry per production deployment, shipped change and incident,
//! keyed by team, kept for [`KEEP`]. Each entry is written whole by whichever process sees
//! its event (no read-modify-write, so replicas sharing a store never lose one), and the
//! four keys are recomputed from the whole log, so an event of any age lands in its own
//! window whatever order deliveries arrived in.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::store::Store;

const NS: &str = "dora.log";
/// The longest window (90 days) and room for events that arrive late.
pub const KEEP: Duration = Duration::from_secs(120 * 86_400);
/// Entries read back at most: a bound on memory whatever arrives.
pub const MAX_ENTRIES: usize = 500_000;
const SEP: char = '\u{1f}';

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Entry {
    /// A production deployment that finished: successful, or failed (`failure`, `error`).
    Deployment {
        at: f64,
        success: bool,
        /// `owner/name@environment`: a failed deployment recovers with the next successful
        /// one of the same target.
        target: String,
    },
    /// A commit shipped to production.
    Change {
        at: f64,
        lead: f64,
    },
    Incident {
        created: f64,
        resolved: Option<f64>,
    },
}

/// A deployment as the log holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployed {
    /// Its key in the log, naming it in idempotency keys.
    pub id: String,
    pub at: f64,
    pub success: bool,
    pub target: String,
}

fn key(team: &str, id: &str) -> String {
    format!("{team}{SEP}{id}")
}

pub async fn put(
    store: &dyn Store,
    team: &str,
    id: &str,
    entry: &Entry,
) -> Result<(), crate::store::Error> {
    let value = serde_json::to_vec(entry).expect("entry encodes");
    store.kv_put(NS, &key(team, id), value, Some(KEEP)).await
}

pub async fn get(
    store: &dyn Store,
    team: &str,
    id: &str,
) -> Result<Option<Entry>, crate::store::Error> {
    Ok(store
        .kv_get(NS, &key(team, id))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Every entry as `(team, id, entry)`; undecodable ones are skipped.
pub async fn all(store: &dyn Store) -> Result<Vec<(String, String, Entry)>, crate::store::Error> {
    Ok(store
        .kv_scan(NS, "", MAX_ENTRIES)
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let (team, id) = k.split_once(SEP)?;
            Some((
                team.to_string(),
                id.to_string(),
                serde_json::from_slice(&v).ok()?,
            ))
        })
        .collect())
}

/// The production deployments of `team`, oldest first.
pub async fn deployments(
    store: &dyn Store,
    team: &str,
) -> Result<Vec<Deployed>, crate::store::Error> {
    let prefix = key(team, "d:");
    let mut out: Vec<Deployed> = store
        .kv_scan(NS, &prefix, MAX_ENTRIES)
        .await?
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice(&v).ok()? {
            Entry::Deployment {
                at,
                success,
                target,
            } => Some(Deployed {
                id: k.split_once(SEP)?.1.to_string(),
                at,
                success,
                target,
            }),
            _ => None,
        })
        .collect();
    sort(&mut out);
    Ok(out)
}

pub fn sort(d: &mut [Deployed]) {
    d.sort_by(|a, b| a.at.total_cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
}

/// DevLake's rule: an incident belongs to the latest successful production deployment of
/// its team that finished before it was created. `deployments` is sorted oldest first.
pub fn attribute(deployments: &[Deployed], created: f64) -> Option<&Deployed> {
    deployments
        .iter()
        .rev()
        .find(|d| d.success && d.at < created)
}

/// The failed deployments a successful one at `at` to `target` recovers: those of the same
/// target after the previous successful one.
pub fn recovered_by<'a>(
    deployments: &'a [Deployed],
    target: &str,
    at: f64,
) -> impl Iterator<Item = &'a Deployed> {
    let since = deployments
        .iter()
        .filter(|d| d.success && d.target == target && d.at < at)
        .map(|d| d.at)
        .fold(f64::NEG_INFINITY, f64::max);
    deployments
        .iter()
        .filter(move |d| !d.success && d.target == target && d.at > since && d.at < at)
}

/// The successful deployment of `target` that recovers a failure at `at`: the first after it.
pub fn recovering<'a>(deployments: &'a [Deployed], target: &str, at: f64) -> Option<&'a Deployed> {
    deployments
        .iter()
        .find(|d| d.success && d.target == target && d.at > at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, at: f64, success: bool) -> Deployed {
        Deployed {
            id: id.into(),
            at,
            success,
            target: "acme/api@production".into(),
        }
    }

    #[test]
    fn incidents_belong_to_the_latest_success_before_them() {
        let ds = [d("a", 10.0, true), d("b", 20.0, false), d("c", 30.0, true)];
        assert_eq!(
            attribute(&ds, 25.0).unwrap().id,
            "a",
            "the failure is skipped"
        );
        assert_eq!(attribute(&ds, 30.0).unwrap().id, "a", "strictly before");
        assert_eq!(attribute(&ds, 31.0).unwrap().id, "c");
        assert!(attribute(&ds, 5.0).is_none());
    }

    #[test]
    fn a_success_recovers_the_failures_since_the_previous_one() {
        let ds = [
            d("f0", 5.0, false),
            d("a", 10.0, true),
            d("f1", 15.0, false),
            d("f2", 20.0, false),
            d("c", 30.0, true),
        ];
        let ids: Vec<&str> = recovered_by(&ds, "acme/api@production", 30.0)
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(ids, ["f1", "f2"]);
        assert_eq!(recovered_by(&ds, "acme/web@production", 30.0).count(), 0);
        assert_eq!(
            recovering(&ds, "acme/api@production", 15.0).unwrap().id,
            "c"
        );
        assert!(recovering(&ds, "acme/api@production", 30.0).is_none());
    }
}
