//! Durable work queue between receivers/schedulers and processors.
//!
//! What every backend guarantees (and `queue::contract` checks): `publish` returns only once
//! the message is durable; a second publish of the same deduplication key on the same topic
//! (within retention) is refused as [`Published::Duplicate`]; delivery is at-least-once (an
//! un-acked delivery comes back after a crash, a nack or a dropped [`Delivery`]); a nacked
//! message is retried with exponential backoff and jitter and dead-lettered after
//! `max_attempts`. Delivery handles are opaque: each backend settles its own. Processors make
//! at-least-once exactly-once by applying their updates with `Store::apply_once`.

pub mod contract;
mod runner;
pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub use runner::{Failure, Handler, run_consumer};

/// Every topic, in one place and one style (`<area>/<what>`).
pub mod topics {
    /// Accepted GitHub webhook deliveries.
    pub const GITHUB_WEBHOOKS: &str = "webhooks/github";
    /// GitHub activity windows to scrape again.
    pub const GITHUB_BACKFILL: &str = "github/backfill";

    /// A push sink's own topic: finished runs and jobs it has yet to accept.
    pub fn sink(name: &str) -> String {
        format!("sink/{name}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot answer or persist now; the operation did not happen and may
    /// succeed later. `kind` is a bounded label.
    #[error("queue unavailable ({kind}): {message}")]
    Unavailable { kind: &'static str, message: String },
    #[error("queue is closed")]
    Closed,
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { kind, .. } => kind,
            Error::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Published,
    /// A message with the same deduplication key was published before (within retention).
    Duplicate,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: exponential, capped, with "equal jitter" (half
    /// fixed, half random) so retries of a burst spread out but never come back immediately.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Per-topic figures, exported as `devmetrics_queue_*`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicStats {
    pub depth: u64,
    pub oldest_age_seconds: f64,
    pub published: u64,
    pub duplicates: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dead_letters: u64,
}

/// One message handed to a consumer. Dropping it without `ack`/`nack` releases it for
/// redelivery without counting an attempt (the consumer was cancelled, not the message bad).
pub struct Delivery {
    /// The backend's id of the message, for logs.
    pub id: String,
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// Attempts before this one.
    pub attempts: u32,
    pub published_at: f64,
    settle: Option<Box<dyn Settle>>,
}

/// How a backend settles one delivery; each backend's handle knows what it needs (a row id,
/// a delivery tag, a stream entry id).
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(&self) -> Result<(), Error>;
    /// `attempts` counts this one; past the policy's maximum the message is dead-lettered.
    async fn nack(&self, attempts: u32, reason: &str) -> Result<(), Error>;
    /// Hands the message back for redelivery without counting an attempt.
    fn release(&self);
}

impl Delivery {
    pub fn new(
        id: String,
        topic: Arc<str>,
        payload: Bytes,
        attempts: u32,
        published_at: f64,
        settle: Box<dyn Settle>,
    ) -> Self {
        Delivery {
            id,
            topic,
            payload,
            attempts,
            published_at,
            settle: Some(settle),
        }
    }

    pub async fn ack(mut self) -> Result<(), Error> {
        let settle = self
            .settle
            .take()
            .expect("the handle is present until ack, nack or drop");
        settle.ack().await
    }

    pub async fn nack(mut self, reason: &str) -> Result<(), Error> {
        let settle = self
            .settle
            .take()
            .expect("the handle is present until ack, nack or drop");
        settle.nack(self.attempts + 1, reason).await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.release();
        }
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Durably stores `payload` on `topic`. With a `dedupe_key`, a second publish of the same
    /// key on the same topic is refused as [`Published::Duplicate`].
    async fn publish(
        &self,
        topic: &str,
        dedupe_key: Option<&str>,
        payload: Bytes,
    ) -> Result<Published, Error>;

    /// Waits for the next message of `topic` that is due.
    async fn receive(&self, topic: &str) -> Result<Delivery, Error>;

    /// Per-topic figures, sorted by topic.
    async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error>;

    /// Forgets deduplication keys older than `dedupe_retention`; returns how many went.
    async fn gc(&self, dedupe_retention: Duration) -> Result<u64, Error>;
}

pub type SharedQueue = Arc<dyn Queue>;

/// Exposes every queue backend's figures as `devmetrics_queue_*`.
pub struct Collector(pub SharedQueue);

#[async_trait]
impl crate::telemetry::Collect for Collector {
    async fn collect(&self, out: &mut crate::telemetry::Rows) {
        use crate::metrics;
        let stats = match self.0.stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "queue figures unavailable for this scrape");
                return;
            }
        };
        for (topic, s) in stats {
            for (fid, v) in [
                (metrics::DEVMETRICS_QUEUE_DEPTH, s.depth as f64),
                (
                    metrics::DEVMETRICS_QUEUE_OLDEST_MESSAGE_AGE_SECONDS,
                    s.oldest_age_seconds,
                ),
                (
                    metrics::DEVMETRICS_QUEUE_PUBLISHED_TOTAL,
                    s.published as f64,
                ),
                (
                    metrics::DEVMETRICS_QUEUE_DUPLICATES_TOTAL,
                    s.duplicates as f64,
                ),
                (metrics::DEVMETRICS_QUEUE_ACKED_TOTAL, s.acked as f64),
                (metrics::DEVMETRICS_QUEUE_RETRIED_TOTAL, s.retried as f64),
                (
                    metrics::DEVMETRICS_QUEUE_DEAD_LETTERED_TOTAL,
                    s.dead_lettered as f64,
                ),
                (
                    metrics::DEVMETRICS_QUEUE_DEAD_LETTERS,
                    s.dead_letters as f64,
                ),
            ] {
                out.number(fid, &[topic.as_str()], v);
            }
        }
    }
}
