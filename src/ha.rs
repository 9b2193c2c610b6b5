//! Leadership among replicas sharing a store: the holder of the `leader` lease runs the
//! pollers; every replica serves `/metrics`, takes webhooks and applies queued work. Losing
//! the lease never stops the process: the replica steps down, keeps serving, and asks again.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::SharedLease;

const LEASE: &str = "leader";

pub struct Leadership {
    replica: String,
    ttl: Duration,
    lease: SharedLease,
    leader: watch::Sender<bool>,
    fence: AtomicU64,
    /// When the grant was last confirmed, by this process's clock: a leader that has not
    /// confirmed it for two thirds of the TTL steps down before another can take over.
    confirmed: Mutex<Option<Instant>>,
    changes: AtomicU64,
    stopped: AtomicBool,
}

impl Leadership {
    pub fn new(replica: String, ttl: Duration, lease: SharedLease) -> Arc<Leadership> {
        Arc::new(Leadership {
            replica,
            ttl,
            lease,
            leader: watch::channel(false).0,
            fence: AtomicU64::new(0),
            confirmed: Mutex::new(None),
            changes: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The fencing number of the current grant (0 before the first).
    pub fn fence(&self) -> u64 {
        self.fence.load(Ordering::Relaxed)
    }

    /// Changes of role, for pollers that start at once on becoming leader.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn set(&self, leader: bool) {
        // Only a change wakes the pollers: a renewal must not start a poll.
        let changed = self
            .leader
            .send_if_modified(|v| std::mem::replace(v, leader) != leader);
        if changed {
            self.changes.fetch_add(1, Ordering::Relaxed);
            if leader {
                tracing::info!(replica = %self.replica, fence = self.fence(), "leader: running the pollers");
            } else {
                tracing::warn!(replica = %self.replica, "no longer leader: pollers pause");
            }
        }
    }

    /// One round: renew a held grant or ask for a free one.
    pub async fn step(&self) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let result = if self.is_leader() {
            self.lease
                .renew(LEASE, &self.replica, self.fence(), self.ttl)
                .await
        } else {
            self.lease.acquire(LEASE, &self.replica, self.ttl).await
        };
        match result {
            Ok(Some(grant)) => {
                self.fence.store(grant.fence, Ordering::Relaxed);
                *self.confirmed.lock() = Some(Instant::now());
                self.set(true);
            }
            Ok(None) => self.set(false),
            Err(e) => {
                tracing::warn!(error = %e, "the leader lease could not be checked");
                let stale = self
                    .confirmed
                    .lock()
                    .is_none_or(|t| t.elapsed() > self.ttl * 2 / 3);
                if stale {
                    self.set(false);
                }
            }
        }
    }

    /// Renews or asks every third of the TTL until `shutdown`, then hands the lease back so
    /// another replica takes over at once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.step().await,
            }
        }
        self.stopped.store(true, Ordering::Relaxed);
        if self.is_leader() {
            let _ = self.lease.release(LEASE, &self.replica, self.fence()).await;
            self.set(false);
        }
    }

    /// A scheduling write: stored only while this replica holds its grant, checked by the
    /// backend in the same step. A refusal means another replica leads now: this one steps
    /// down at once rather than at its next renewal.
    pub async fn put_fenced(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, crate::store::Error> {
        if !self.is_leader() {
            return Ok(false);
        }
        let written = self
            .lease
            .kv_put_fenced(LEASE, &self.replica, self.fence(), ns, key, value, ttl)
            .await?;
        if !written {
            tracing::warn!(replica = %self.replica, fence = self.fence(), "a scheduling write was fenced off: another replica leads");
            self.set(false);
        }
        Ok(written)
    }

    /// For `/healthz`.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "replica": self.replica,
            "role": if self.is_leader() { "leader" } else { "follower" },
            "fence": self.fence(),
        })
    }
}

#[async_trait::async_trait]
impl crate::telemetry::Collect for Leadership {
    async fn collect(&self, out: &mut crate::telemetry::Rows) {
        out.number(
            metrics::DEVMETRICS_LEADER,
            &[&self.replica],
            if self.is_leader() { 1.0 } else { 0.0 },
        );
        out.number(
            metrics::DEVMETRICS_LEADER_CHANGES_TOTAL,
            &[],
            self.changes.load(Ordering::Relaxed) as f64,
        );
    }
}
