//! The rate-limit budget of one installation or token, shared by every client (org) that
//! spends it: REST and GraphQL limits apart, and a secondary-limit pause for all workers.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one installation (or token) may still spend, from the last `x-ratelimit-*` headers.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<BudgetState>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetState {
    pub known: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: i64,
    /// Responses that spent quota (not 304s) and secondary-limit hits, since start.
    pub spent: u64,
    pub secondary_hits: u64,
    /// GraphQL's own primary limit (`x-ratelimit-resource: graphql`).
    pub graphql: Resource,
    /// Search's own limit, per minute (`x-ratelimit-resource: search`).
    pub search: Resource,
    /// Until when every worker of the installation pauses after a secondary limit: GitHub
    /// keeps refusing the others' requests too, and counts them against the installation.
    pub secondary_until: Option<Instant>,
}

/// One primary limit, from the last `x-ratelimit-*` headers of its resource.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resource {
    pub known: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: i64,
}

impl Budget {
    pub fn snapshot(&self) -> BudgetState {
        *self.state.lock()
    }

    /// How long to wait before the next request: a secondary-limit pause first; then, for
    /// REST, until the reset when the reserve is reached, and spaced out over the reset
    /// window when running low.
    pub(super) fn delay(
        &self,
        reserve: u32,
        buffer: Duration,
        now: i64,
        graphql: bool,
    ) -> Duration {
        let mut s = self.state.lock();
        if let Some(until) = s.secondary_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return left;
            }
            s.secondary_until = None;
        }
        if graphql || !s.known || s.reset_at <= now {
            return Duration::ZERO;
        }
        let left = s.remaining.saturating_sub(u64::from(reserve));
        let until_reset = (s.reset_at - now) as u64;
        if left == 0 {
            return Duration::from_secs(until_reset) + buffer;
        }
        // Claim the request now so concurrent workers do not all see the same remainder.
        s.remaining -= 1;
        if left < s.limit / 10 {
            return Duration::from_secs_f64(until_reset as f64 / left as f64);
        }
        Duration::ZERO
    }

    /// Takes on another replica's reading of the same installation's REST budget. Within one
    /// reset window the remainder only falls, so the lower reading is the later one; a later
    /// window replaces an earlier one.
    pub fn adopt(&self, limit: u64, remaining: u64, reset_at: i64) {
        let mut s = self.state.lock();
        let newer = !s.known
            || reset_at > s.reset_at
            || (reset_at == s.reset_at && remaining < s.remaining);
        if newer {
            s.known = true;
            s.limit = limit;
            s.remaining = remaining;
            s.reset_at = reset_at;
        }
    }

    /// Pauses every worker of the installation for `wait`.
    pub(super) fn secondary(&self, wait: Duration) {
        let mut s = self.state.lock();
        s.secondary_hits += 1;
        let until = Instant::now() + wait;
        s.secondary_until = Some(s.secondary_until.map_or(until, |u| u.max(until)));
    }

    /// When GraphQL's budget is spent, the time it resets.
    pub(super) fn graphql_exhausted(&self, now: i64) -> Option<i64> {
        let g = self.state.lock().graphql;
        (g.known && g.remaining == 0 && g.reset_at > now).then_some(g.reset_at)
    }

    /// Records that GraphQL refused a query for its primary limit, which it reports in the
    /// body rather than in the headers: spent until the reset the headers gave, or a minute
    /// when they gave none. Returns that reset.
    pub(super) fn graphql_refused(&self, now: i64) -> i64 {
        let reset_at = self.graphql_exhausted(now).unwrap_or(now + 60);
        let mut s = self.state.lock();
        s.graphql.known = true;
        s.graphql.remaining = 0;
        s.graphql.reset_at = reset_at;
        reset_at
    }

    pub(super) fn observe(&self, h: &reqwest::header::HeaderMap, spent: bool) {
        let num = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let resource = h
            .get("x-ratelimit-resource")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("core");
        let mut s = self.state.lock();
        if spent {
            s.spent += 1;
        }
        let (Some(rem), Some(reset)) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
        else {
            return;
        };
        let limit = num("x-ratelimit-limit").map(|l| l.max(0) as u64);
        match resource {
            "core" => {
                s.known = true;
                s.remaining = rem.max(0) as u64;
                s.reset_at = reset;
                if let Some(l) = limit {
                    s.limit = l;
                }
            }
            "graphql" | "search" => {
                let g = match resource {
                    "graphql" => &mut s.graphql,
                    _ => &mut s.search,
                };
                g.known = true;
                g.remaining = rem.max(0) as u64;
                g.reset_at = reset;
                if let Some(l) = limit {
                    g.limit = l;
                }
            }
            _ => {}
        }
    }
}

/// Budgets shared by every client of the same installation or token.
#[derive(Default)]
pub struct Budgets(Mutex<HashMap<String, Arc<Budget>>>);

impl Budgets {
    pub fn get(&self, key: &str) -> Arc<Budget> {
        self.0.lock().entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_waits_for_reset_at_the_reserve() {
        let b = Budget::default();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "100".parse().unwrap());
        h.insert("x-ratelimit-reset", "1100".parse().unwrap());
        b.observe(&h, true);
        assert!(b.delay(100, Duration::from_secs(5), 1000, false) >= Duration::from_secs(105));
        h.insert("x-ratelimit-remaining", "4000".parse().unwrap());
        b.observe(&h, true);
        assert_eq!(b.delay(100, Duration::ZERO, 1000, false), Duration::ZERO);
        // Low but above the reserve: spaced over what is left of the window.
        h.insert("x-ratelimit-remaining", "150".parse().unwrap());
        b.observe(&h, true);
        assert_eq!(
            b.delay(100, Duration::ZERO, 1000, false),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn graphql_has_its_own_budget_and_a_secondary_limit_pauses_everyone() {
        let b = Budget::default();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4000".parse().unwrap());
        h.insert("x-ratelimit-reset", "1100".parse().unwrap());
        b.observe(&h, true);
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-resource", "graphql".parse().unwrap());
        b.observe(&h, true);
        let s = b.snapshot();
        assert_eq!((s.remaining, s.graphql.remaining), (4000, 0));
        assert_eq!(b.graphql_exhausted(1000), Some(1100));
        assert_eq!(b.delay(100, Duration::ZERO, 1000, false), Duration::ZERO);
        b.secondary(Duration::from_secs(30));
        for graphql in [false, true] {
            assert!(b.delay(100, Duration::ZERO, 1000, graphql) > Duration::from_secs(29));
        }
    }

    #[test]
    fn a_graphql_refusal_spends_its_budget_until_the_reset() {
        let b = Budget::default();
        // No headers to go by: a minute.
        assert_eq!(b.graphql_refused(1000), 1060);
        assert_eq!(b.graphql_exhausted(1000), Some(1060));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-resource", "graphql".parse().unwrap());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", "1200".parse().unwrap());
        b.observe(&h, true);
        assert_eq!(b.graphql_refused(1000), 1200);
        assert!(!b.snapshot().known, "the REST budget is not GraphQL's");
    }
}
