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

use crate::metrics::{FamilyId, Kind, Labels, family};
pub use state::{ScopeData, Snapshot, State};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("family {family} is a {kind}; {op} does not apply")]
    WrongKind {
        family: &'static str,
        kind: &'static str,
        op: &'static str,
    },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Db(e) => e.kind(),
            Error::WrongKind { .. } => "wrong_kind",
        }
    }
}

/// A histogram's state: per-bucket (non-cumulative) counts, the last one for +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    pub counts: Box<[u64]>,
    pub sum: f64,
}

impl HistogramValue {
    pub fn new(bounds: &[f64]) -> Self {
        HistogramValue {
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Gauges and counters alike: the family's kind decides how it is exposed.
    Number(f64),
    Histogram(Box<HistogramValue>),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(v) => Some(*v),
            Value::Histogram(_) => None,
        }
    }
}

/// One series of a poller's result.
#[derive(Clone, Debug)]
pub struct Sample {
    pub family: FamilyId,
    pub labels: Labels,
    pub value: Value,
}

impl Sample {
    pub fn number(family: FamilyId, labels: Labels, v: f64) -> Self {
        Sample {
            family,
            labels,
            value: Value::Number(v),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Counter increment (must be ≥ 0).
    Inc(f64),
    /// Histogram observation.
    Observe(f64),
    /// Gauge set (event-driven gauges such as jobs in progress).
    Set(f64),
    /// Gauge move by a signed delta.
    Add(f64),
}

#[derive(Clone, Debug)]
pub struct Update {
    pub family: FamilyId,
    pub labels: Labels,
    pub op: Op,
}

impl Update {
    /// Checks the operation fits the family's kind, so a processor bug is an error at the
    /// edge rather than a corrupt series.
    pub fn validate(&self) -> Result<(), Error> {
        let def = family(self.family);
        let ok = match (&self.op, def.kind) {
            (Op::Inc(v), Kind::Counter | Kind::LegacyCounter) => *v >= 0.0,
            // A NaN or infinite observation would poison the sum forever.
            (Op::Observe(v), Kind::Histogram) => v.is_finite(),
            (Op::Set(_) | Op::Add(_), Kind::Gauge) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::WrongKind {
                family: def.name,
                kind: def.kind.as_str(),
                op: match self.op {
                    Op::Inc(_) => "inc",
                    Op::Observe(_) => "observe",
                    Op::Set(_) => "set",
                    Op::Add(_) => "add",
                },
            })
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

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
