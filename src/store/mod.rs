//! Metric state: what `/metrics` shows, kept per scope.
//!
//! Two kinds of writes, matching design.md §3:
//! - [`Store::replace_scope`]: a poller's result replaces every series of its scope at once;
//!   a series absent from the new result disappears.
//! - [`Store::apply_once`]: event-driven counters and histograms move by an update that is
//!   applied together with its idempotency key, so a redelivered event never counts twice.
//!
//! Every backend mirrors its state in memory ([`State`]): scrapes read that mirror and never
//! touch the database.

pub mod sqlite;
mod state;

use async_trait::async_trait;
use std::sync::Arc;

pub use crate::metrics::{Sample, Snapshot, Update};
pub use state::State;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error(transparent)]
    WrongKind(#[from] crate::metrics::WrongKind),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Db(e) => e.kind(),
            Error::WrongKind(_) => "wrong_kind",
        }
    }
}

/// Whether [`Store::apply_once`] applied the updates or had seen the key before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The in-memory view every scrape renders. Never touches the database.
    fn snapshot(&self) -> Snapshot;

    /// Atomically replaces every series of `scope` with `samples`.
    async fn replace_scope(&self, scope: &str, samples: Vec<Sample>) -> Result<(), Error>;

    /// Applies `updates` to `scope` and records `key`, in one atomic step; a key seen before
    /// changes nothing.
    async fn apply_once(
        &self,
        key: &str,
        scope: &str,
        updates: Vec<Update>,
    ) -> Result<Applied, Error>;

    /// Applies several keyed batches to `scope` in one atomic step, each key at most once
    /// (a processor's transitions for one event). Backends should override this to use one
    /// transaction; the default applies them one by one, which is equally correct.
    async fn apply_each_once(
        &self,
        scope: &str,
        batches: Vec<(String, Vec<Update>)>,
    ) -> Result<Vec<Applied>, Error> {
        let mut out = Vec::with_capacity(batches.len());
        for (key, updates) in batches {
            out.push(self.apply_once(&key, scope, updates).await?);
        }
        Ok(out)
    }

    /// Removes whole scopes and their series (e.g. of a source no longer configured).
    async fn drop_scopes(&self, scopes: Vec<String>) -> Result<(), Error>;

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, Error>;
    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<std::time::Duration>,
    ) -> Result<(), Error>;

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
