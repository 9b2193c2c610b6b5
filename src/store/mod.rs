//! Metric state: what `/metrics` shows, kept per scope; plus the small key-value state and
//! leases the sources and replicas share.
//!
//! Writes to metric state, matching design.md §3:
//! - [`Store::replace_scope`]: a poller's result replaces every series of its scope at once;
//!   a series absent from the new result disappears.
//! - [`Store::replace_scope_if_newer`]: the same, applied only when its version is newer than
//!   the scope's, checked atomically by the backend (a late backfill never overwrites a newer
//!   window, whichever replica wrote it).
//! - [`Store::apply_once`]: event-driven counters and histograms move by an update that is
//!   applied together with its idempotency key, so a redelivered event never counts twice.
//!
//! What every backend guarantees (and `store::contract` checks): each write is atomic and
//! durable when it returns `Ok`; memory ([`State`]) changes only after that, so scrapes read
//! the mirror and never wait on the backend; a key is applied at most once across every
//! process sharing the backend; kv entries with a TTL are gone after it.

pub mod contract;
mod lease;
pub mod redis;
pub mod sqlite;
mod state;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

pub use crate::metrics::{Op, Sample, Snapshot, Update};
pub use lease::{Grant, Lease, SharedLease};
pub use state::State;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot answer or persist now (disk, connection, a stopped writer). The
    /// write did not happen; the same call may succeed later. `kind` is a bounded label.
    #[error("storage unavailable ({kind}): {message}")]
    Unavailable { kind: &'static str, message: String },
    /// The backend refused this operation; repeating it fails the same way.
    #[error("storage refused the operation ({kind}): {message}")]
    Refused { kind: &'static str, message: String },
    #[error(transparent)]
    WrongKind(#[from] crate::metrics::WrongKind),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { kind, .. } | Error::Refused { kind, .. } => kind,
            Error::WrongKind(_) => "wrong_kind",
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// Updates applied to `scope` atomically under one idempotency key.
#[derive(Clone, Debug)]
pub struct Batch {
    pub key: String,
    pub scope: String,
    pub updates: Vec<Update>,
}

/// How long [`Store::gc`] keeps what it collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Idempotency keys: at least as long as a redelivery can arrive.
    pub keys: Duration,
    /// Gauge members never left: GitHub ends every workflow run within 35 days.
    pub members: Duration,
}

/// Whether [`Store::apply_once`] applied the updates or had seen the key before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
}

/// Whether [`Store::replace_scope_if_newer`] wrote, or found the scope at its version or newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Written,
    Superseded,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The in-memory view every scrape renders. Never touches the backend.
    fn snapshot(&self) -> Snapshot;

    /// Atomically replaces every series of `scope` with `samples`; the scope's version stays.
    async fn replace_scope(&self, scope: &str, samples: Vec<Sample>) -> Result<(), Error>;

    /// Atomically replaces `scope` and records `version`, only if `version` is greater than the
    /// scope's current version (0 for a new scope). The check and the write are one step.
    async fn replace_scope_if_newer(
        &self,
        scope: &str,
        version: i64,
        samples: Vec<Sample>,
    ) -> Result<Written, Error>;

    /// Applies `updates` to `scope` and records `key`, in one atomic step; a key seen before
    /// changes nothing.
    async fn apply_once(
        &self,
        key: &str,
        scope: &str,
        updates: Vec<Update>,
    ) -> Result<Applied, Error> {
        let mut out = self
            .apply_each_once(vec![Batch {
                key: key.to_string(),
                scope: scope.to_string(),
                updates,
            }])
            .await?;
        Ok(out.pop().unwrap_or(Applied::Duplicate))
    }

    /// Applies several keyed batches in one atomic step, in order, each key at most once (a
    /// processor's transitions for one event). [`Op::Enter`] and [`Op::Leave`] keep gauge
    /// members: a leave takes 1 off exactly the scope and series its member entered, whatever
    /// the leaving batch says, and a member that never entered (or already left or expired)
    /// leaves nothing.
    async fn apply_each_once(&self, batches: Vec<Batch>) -> Result<Vec<Applied>, Error>;

    /// Removes whole scopes and their series (e.g. of a source no longer configured).
    async fn drop_scopes(&self, scopes: Vec<String>) -> Result<(), Error>;

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Stores `value`; with a `ttl` it is gone once the TTL has passed.
    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error>;
    async fn kv_delete(&self, ns: &str, key: &str) -> Result<(), Error>;
    /// The live entries of `ns` whose keys start with `prefix`, in key order, at most `limit`:
    /// an append-only log kept as one entry per event, written by any process without a
    /// read-modify-write, is read back whole.
    async fn kv_scan(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, Error>;

    /// Forgets idempotency keys older than `retention.keys` and expired kv entries, and takes
    /// gauge members that entered longer than `retention.members` ago off their series (a
    /// lost "completed" delivery must not hold a gauge up forever); returns how many entries
    /// went. Backends that expire by themselves count only what they removed here.
    async fn gc(&self, retention: &Retention) -> Result<u64, Error>;

    /// `Err` with the reason while the backend cannot persist (shown on `/healthz`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Time of the last successful replace of each scope, for ages and the status page.
    fn scope_updated_at(&self, scope: &str) -> Option<f64> {
        self.snapshot().scope(scope).map(|s| s.updated_at)
    }
}

pub type SharedStore = Arc<dyn Store>;
