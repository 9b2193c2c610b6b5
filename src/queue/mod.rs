//! Durable work queue between receivers/schedulers and processors.
//!
//! Contract for every backend: `publish` returns only once the message is durable;
//! delivery is at-least-once (an un-acked delivery comes back after a crash, a nack or a
//! dropped handle); a failed message is retried with exponential backoff and jitter and moved
//! to a dead-letter store after `max_attempts`. Processors make at-least-once exactly-once by
//! applying their updates with `Store::apply_once`.

pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("queue is closed")]
    Closed,
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Db(e) => e.kind(),
            Error::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Published(i64),
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
    pub id: i64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// Attempts before this one.
    pub attempts: u32,
    pub published_at: f64,
    acker: Option<Arc<dyn Acker>>,
}

#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self, topic: &str, id: i64) -> Result<(), Error>;
    async fn nack(&self, topic: &str, id: i64, attempts: u32, reason: &str) -> Result<(), Error>;
    fn release(&self, topic: &str, id: i64);
}

impl Delivery {
    pub fn new(
        id: i64,
        topic: Arc<str>,
        payload: Bytes,
        attempts: u32,
        published_at: f64,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Delivery {
            id,
            topic,
            payload,
            attempts,
            published_at,
            acker: Some(acker),
        }
    }

    pub async fn ack(mut self) -> Result<(), Error> {
        let acker = self
            .acker
            .take()
            .expect("acker is present until ack, nack or drop");
        acker.ack(&self.topic, self.id).await
    }

    pub async fn nack(mut self, reason: &str) -> Result<(), Error> {
        let acker = self
            .acker
            .take()
            .expect("acker is present until ack, nack or drop");
        acker
            .nack(&self.topic, self.id, self.attempts + 1, reason)
            .await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            acker.release(&self.topic, self.id);
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

    fn stats(&self) -> Vec<(String, TopicStats)>;
}

pub type SharedQueue = Arc<dyn Queue>;

/// Exposes every queue backend's figures as `devmetrics_queue_*`.
pub struct Collector(pub SharedQueue);

impl crate::telemetry::Collect for Collector {
    fn collect(
        &self,
        out: &mut Vec<(
            crate::metrics::FamilyId,
            crate::metrics::Labels,
            crate::metrics::Value,
        )>,
    ) {
        use crate::metrics::{self, Labels, Value};
        for (topic, s) in self.0.stats() {
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
                let labels =
                    Labels::new(fid, &[topic.as_str()]).expect("queue families take one label");
                out.push((fid, labels, Value::Number(v)));
            }
        }
    }
}
