//! The four keys per team and trailing window, recomputed from the event log every
//! interval (windows slide even when nothing arrives), with the DORA performance level each
//! reaches.
//!
//! Levels follow the 2023 State of DevOps report's clusters as Apache DevLake's DORA
//! documentation states them (DevLake's own mapping of deployment days):
//!
//! | key | elite | high | medium | low |
//! | --- | --- | --- | --- | --- |
//! | deployment frequency (deployment days per week) | ≥ 3 (on demand) | ≥ 1 | ≥ 1 per month | less |
//! | lead time for changes (median) | < 1 day | < 1 week | < 1 month | longer |
//! | change failure rate | ≤ 5 % | ≤ 10 % | ≤ 15 % | more |
//! | failed-deployment recovery time (median) | < 1 hour | < 1 day | < 1 week | longer |

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::log::{self, Deployed, Entry};
use crate::metrics::{self, FamilyId, Labels, Sample};
use crate::sources::{PollError, Poller, ScopeResult};
use crate::store::SharedStore;

/// The store scope of the four-keys gauges.
pub const SCOPE: &str = "dora/keys";
pub const WINDOWS: &[(&str, u32)] = &[("7d", 7), ("30d", 30), ("90d", 90)];
const DAY: f64 = 86_400.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Low,
    Medium,
    High,
    Elite,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Elite, Level::High, Level::Medium, Level::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Elite => "elite",
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }

    fn by(v: f64, elite: f64, high: f64, medium: f64, below: bool) -> Level {
        let passes = |t: f64| if below { v < t } else { v >= t };
        if passes(elite) {
            Level::Elite
        } else if passes(high) {
            Level::High
        } else if passes(medium) {
            Level::Medium
        } else {
            Level::Low
        }
    }

    pub fn deployment_frequency(days_per_week: f64) -> Level {
        Level::by(days_per_week, 3.0, 1.0, 7.0 / 30.0, false)
    }

    pub fn lead_time(median: f64) -> Level {
        Level::by(median, DAY, 7.0 * DAY, 30.0 * DAY, true)
    }

    pub fn change_failure_rate(rate: f64) -> Level {
        // Inclusive bounds: 5 % is still elite.
        Level::by(rate, 0.05 + 1e-12, 0.10 + 1e-12, 0.15 + 1e-12, true)
    }

    pub fn recovery(median: f64) -> Level {
        Level::by(median, 3600.0, DAY, 7.0 * DAY, true)
    }
}

/// The four keys of one team over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Keys {
    pub deployments: usize,
    pub deployment_days: usize,
    pub lead_median: Option<f64>,
    pub lead_p90: Option<f64>,
    /// `(failed, changes)`.
    pub failures: (usize, usize),
    pub recovery_median: Option<f64>,
}

impl Keys {
    pub fn frequency(&self, days: u32) -> f64 {
        self.deployments as f64 / days as f64
    }

    pub fn change_failure_rate(&self) -> Option<f64> {
        let (failed, changes) = self.failures;
        (changes > 0).then(|| failed as f64 / changes as f64)
    }

    /// Each key's level, and the overall one (the lowest measured).
    pub fn levels(&self, days: u32) -> Vec<(&'static str, Level)> {
        let per_week = self.deployment_days as f64 / (days as f64 / 7.0);
        let mut out = vec![(
            "deployment_frequency",
            Level::deployment_frequency(per_week),
        )];
        if let Some(m) = self.lead_median {
            out.push(("lead_time", Level::lead_time(m)));
        }
        if let Some(r) = self.change_failure_rate() {
            out.push(("change_failure_rate", Level::change_failure_rate(r)));
        }
        if let Some(m) = self.recovery_median {
            out.push(("recovery_time", Level::recovery(m)));
        }
        let overall = out.iter().map(|(_, l)| *l).min().unwrap_or(Level::Low);
        out.push(("overall", overall));
        out
    }
}

/// Linear interpolation between closest ranks (`PERCENTILE_CONT`, as Four Keys computes its
/// medians).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

#[derive(Default)]
struct TeamLog {
    deployments: Vec<Deployed>,
    changes: Vec<(f64, f64)>,
    incidents: Vec<(f64, Option<f64>)>,
}

/// The four keys of every team in `entries` (and of `teams`, at zero) for every window
/// ending at `now`.
pub fn compute(
    entries: Vec<(String, String, Entry)>,
    teams: &[String],
    now: f64,
    failed_deployments_are_failures: bool,
) -> BTreeMap<(String, &'static str), Keys> {
    let mut by_team: BTreeMap<String, TeamLog> = teams
        .iter()
        .map(|t| (t.clone(), TeamLog::default()))
        .collect();
    for (team, id, e) in entries {
        let t = by_team.entry(team).or_default();
        match e {
            Entry::Deployment {
                at,
                success,
                target,
            } => t.deployments.push(Deployed {
                id,
                at,
                success,
                target,
            }),
            Entry::Change { at, lead } => t.changes.push((at, lead)),
            Entry::Incident { created, resolved } => t.incidents.push((created, resolved)),
        }
    }
    let mut out = BTreeMap::new();
    for (team, mut t) in by_team {
        log::sort(&mut t.deployments);
        // Deployments an incident is attributed to, and each incident's recovery.
        let mut failed_by_incident = BTreeSet::new();
        let mut recoveries = Vec::new();
        for (created, resolved) in &t.incidents {
            if let Some(d) = log::attribute(&t.deployments, *created) {
                failed_by_incident.insert(d.id.clone());
                if let Some(r) = resolved {
                    recoveries.push((*r, (r - d.at).max(0.0)));
                }
            }
        }
        for s in t.deployments.iter().filter(|d| d.success) {
            for f in log::recovered_by(&t.deployments, &s.target, s.at) {
                recoveries.push((s.at, s.at - f.at));
            }
        }
        for (name, days) in WINDOWS {
            let from = now - *days as f64 * DAY;
            let inside = |at: f64| at > from && at <= now;
            let window: Vec<&Deployed> = t.deployments.iter().filter(|d| inside(d.at)).collect();
            let successes: Vec<&&Deployed> = window.iter().filter(|d| d.success).collect();
            let days_deployed: BTreeSet<i64> = successes
                .iter()
                .map(|d| (d.at / DAY).floor() as i64)
                .collect();
            let mut leads: Vec<f64> = t
                .changes
                .iter()
                .filter(|(at, _)| inside(*at))
                .map(|(_, l)| *l)
                .collect();
            leads.sort_by(f64::total_cmp);
            let failed_deploys = if failed_deployments_are_failures {
                window.len() - successes.len()
            } else {
                0
            };
            let failed = failed_deploys
                + successes
                    .iter()
                    .filter(|d| failed_by_incident.contains(&d.id))
                    .count();
            let mut recovered: Vec<f64> = recoveries
                .iter()
                .filter(|(at, _)| inside(*at))
                .map(|(_, s)| *s)
                .collect();
            recovered.sort_by(f64::total_cmp);
            out.insert(
                (team.clone(), *name),
                Keys {
                    deployments: successes.len(),
                    deployment_days: days_deployed.len(),
                    lead_median: percentile(&leads, 0.5),
                    lead_p90: percentile(&leads, 0.9),
                    failures: (failed, successes.len() + failed_deploys),
                    recovery_median: percentile(&recovered, 0.5),
                },
            );
        }
    }
    out
}

/// The gauges of [`compute`]'s result.
pub fn samples(keys: &BTreeMap<(String, &'static str), Keys>) -> Vec<Sample> {
    let mut out = Vec::new();
    for ((team, window), k) in keys {
        let days = WINDOWS
            .iter()
            .find(|(n, _)| n == window)
            .map_or(1, |(_, d)| *d);
        let mut push = |family: FamilyId, v: Option<f64>| {
            if let Some(v) = v {
                let labels = Labels::new(family, &[team.as_str(), window]).expect("two labels");
                out.push(Sample::number(family, labels, v));
            }
        };
        push(metrics::DORA_DEPLOYMENT_FREQUENCY, Some(k.frequency(days)));
        push(
            metrics::DORA_DEPLOYMENT_DAYS,
            Some(k.deployment_days as f64),
        );
        push(metrics::DORA_LEAD_TIME_MEDIAN_SECONDS, k.lead_median);
        push(metrics::DORA_LEAD_TIME_P90_SECONDS, k.lead_p90);
        push(metrics::DORA_CHANGE_FAILURE_RATE, k.change_failure_rate());
        push(metrics::DORA_RECOVERY_MEDIAN_SECONDS, k.recovery_median);
        for (metric, level) in k.levels(days) {
            for l in Level::ALL {
                let labels = Labels::new(
                    metrics::DORA_PERFORMANCE_LEVEL,
                    &[team.as_str(), window, metric, l.as_str()],
                )
                .expect("four labels");
                out.push(Sample::number(
                    metrics::DORA_PERFORMANCE_LEVEL,
                    labels,
                    (l == level) as u8 as f64,
                ));
            }
        }
    }
    out
}

/// Recomputes the four keys from the log on the leader.
pub struct FourKeys {
    pub store: SharedStore,
    pub teams: Vec<String>,
    pub interval: Duration,
    pub clock: crate::clock::Clock,
    pub failed_deployments_are_failures: bool,
}

#[async_trait::async_trait]
impl Poller for FourKeys {
    fn name(&self) -> &str {
        "dora"
    }

    fn scopes(&self) -> Vec<String> {
        vec![SCOPE.to_string()]
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn poll(&self) -> Vec<ScopeResult> {
        let result = match log::all(&*self.store).await {
            Ok(entries) => Ok(samples(&compute(
                entries,
                &self.teams,
                self.clock.now() as f64,
                self.failed_deployments_are_failures,
            ))),
            Err(e) => Err(PollError::new("store", e.to_string())),
        };
        vec![ScopeResult::new(SCOPE, result)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[4.0], 0.9), Some(4.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 10.0], 0.5), Some(2.5));
        assert_eq!(percentile(&[0.0, 10.0], 0.9), Some(9.0));
    }

    #[test]
    fn levels_follow_the_documented_bands() {
        assert_eq!(Level::deployment_frequency(3.0), Level::Elite);
        assert_eq!(Level::deployment_frequency(1.0), Level::High);
        assert_eq!(Level::deployment_frequency(0.25), Level::Medium);
        assert_eq!(Level::deployment_frequency(0.2), Level::Low);
        assert_eq!(Level::lead_time(DAY - 1.0), Level::Elite);
        assert_eq!(Level::lead_time(DAY), Level::High);
        assert_eq!(Level::lead_time(30.0 * DAY), Level::Low);
        assert_eq!(Level::change_failure_rate(0.05), Level::Elite);
        assert_eq!(Level::change_failure_rate(0.15), Level::Medium);
        assert_eq!(Level::change_failure_rate(0.16), Level::Low);
        assert_eq!(Level::recovery(3599.0), Level::Elite);
        assert_eq!(Level::recovery(7.0 * DAY), Level::Low);
    }

    fn dep(at: f64, success: bool) -> Entry {
        Entry::Deployment {
            at,
            success,
            target: "acme/api@production".into(),
        }
    }

    #[test]
    fn keys_of_a_worked_example() {
        let now = 100.0 * DAY;
        let e = |id: &str, entry| ("Payments".to_string(), id.to_string(), entry);
        let entries = vec![
            e("d:1", dep(now - 10.0 * DAY, true)),
            e("d:2", dep(now - 9.0 * DAY, false)),
            e("d:3", dep(now - 8.5 * DAY, true)),
            e("d:4", dep(now - 2.0 * DAY, true)),
            e("d:5", dep(now - 2.0 * DAY + 60.0, true)),
            e("d:old", dep(now - 95.0 * DAY, true)),
            e(
                "c:a",
                Entry::Change {
                    at: now - 2.0 * DAY,
                    lead: 3600.0,
                },
            ),
            e(
                "c:b",
                Entry::Change {
                    at: now - 8.5 * DAY,
                    lead: 7200.0,
                },
            ),
            e(
                "i:1",
                Entry::Incident {
                    created: now - 8.0 * DAY,
                    resolved: Some(now - 8.0 * DAY + 1800.0),
                },
            ),
        ];
        let keys = compute(entries, &["Idle".to_string()], now, true);
        let w7 = &keys[&("Payments".to_string(), "7d")];
        assert_eq!(w7.deployments, 2);
        assert_eq!(w7.deployment_days, 1);
        assert_eq!(w7.lead_median, Some(3600.0));
        assert_eq!(w7.failures, (0, 2));
        assert_eq!(w7.recovery_median, None);
        let w30 = &keys[&("Payments".to_string(), "30d")];
        assert_eq!(w30.deployments, 4);
        // d:2 failed, d:3 is the incident's deployment: 2 of 5 changes.
        assert_eq!(w30.failures, (2, 5));
        assert_eq!(w30.lead_median, Some(5400.0));
        // The incident: resolved 0.5 d + 1800 s after d:3; d:2 recovered by d:3 in 0.5 d.
        assert_eq!(
            w30.recovery_median,
            Some((0.5 * DAY + 0.5 * DAY + 1800.0) / 2.0)
        );
        assert_eq!(keys[&("Payments".to_string(), "90d")].deployments, 4);
        let idle = &keys[&("Idle".to_string(), "7d")];
        assert_eq!(idle.deployments, 0);
        assert_eq!(idle.change_failure_rate(), None);
        assert_eq!(
            idle.levels(7),
            vec![
                ("deployment_frequency", Level::Low),
                ("overall", Level::Low)
            ]
        );
    }
}
