//! Durable work queue between receivers/schedulers and processors.
//!
//! What every backend guarantees (and `queue::contract` checks): `publish` returns only once
//! the message is durable; a second publish of the same deduplication key on the same topic
//! (within retention) is refused as [`Published::Duplicate`], or as [`Published::Conflict`]
//! when both publishes carried fingerprints of their content and these differ, checked and
//! recorded in one step with the publish; delivery is at-least-once (an
//! un-acked delivery comes back after a crash, a nack or a dropped [`Delivery`]); a nacked
//! message is retried with exponential backoff and jitter and dead-lettered after
//! `max_attempts`. Delivery handles are opaque: each backend settles its own. Processors make
//! at-least-once exactly-once by applying their updates with `Store::apply_once`.

pub mod contract;
pub mod dead_letters;
pub mod rabbitmq;
pub mod redis;
mod runner;
pub mod spool;
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
    /// Batches of a GitHub cycle's repos, consumed by every replica.
    pub const GITHUB_SCRAPE: &str = "github/scrape";
    /// Accepted GitHub deliveries DORA reads (deployment statuses).
    pub const DORA_GITHUB: &str = "webhooks/github-dora";
    /// Days of Copilot's 1-day aggregate reports to count.
    pub const COPILOT_DAYS: &str = "copilot/days";
    /// Accepted Jira webhook deliveries (incidents).
    pub const JIRA_WEBHOOKS: &str = "webhooks/jira";

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
    /// The topic holds its configured maximum of messages; the publisher should retry later.
    #[error("queue topic {topic} is full")]
    Full { topic: String },
    #[error("queue is closed")]
    Closed,
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { kind, .. } => kind,
            Error::Full { .. } => "full",
            Error::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Published,
    /// A message with the same deduplication key was published before (within retention).
    Duplicate,
    /// The deduplication key was published before (within retention) with another
    /// fingerprint: the key was reused for different content. Nothing was queued.
    Conflict,
}

/// How a publish is deduplicated: by `key`, and, when `fingerprint` is set, told apart from
/// an earlier publish of the same key whose recorded fingerprint differs
/// ([`Published::Conflict`]). A key recorded without a fingerprint, or published again
/// without one, is a plain [`Published::Duplicate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dedupe<'a> {
    pub key: &'a str,
    pub fingerprint: Option<i64>,
}

/// A message's handling, computed before it is published, for [`Queue::publish_handled`].
#[derive(Debug, Default)]
pub struct Handled {
    /// Applied with `Store::apply_each_once`'s guarantees.
    pub batches: Vec<crate::store::Batch>,
    /// Published with their deduplication keys.
    pub forward: Vec<Forward>,
}

/// A message a handled one hands on to another topic.
#[derive(Debug)]
pub struct Forward {
    pub topic: String,
    pub key: String,
    pub payload: Bytes,
}

/// A fingerprint of `content` for [`Dedupe`]: its CRC-32 beside its length. It only has to
/// tell a reused key from a repeat, not resist forgery (whoever may publish may publish
/// anything), so a checksum costing about a microsecond for a 10 KB body does; SHA-256 cost
/// as much as verifying the delivery's signature.
pub fn fingerprint(content: &[u8]) -> i64 {
    let crc = u64::from(crc32fast::hash(content));
    ((crc << 32) | (content.len() as u64 & 0xffff_ffff)) as i64
}

/// How long failed messages are retried. A transient failure is retried with capped
/// exponential backoff until `horizon` has passed since the message was published (or, when
/// set, `max_attempts` were made); a permanent one is dead-lettered at once.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts before a message is dead-lettered; 0 leaves it to the horizon.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long after publishing a message is still retried: longer than any outage of a
    /// sink or upstream that should lose nothing.
    pub horizon: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            horizon: Duration::from_secs(24 * 3600),
        }
    }
}

/// What becomes of a message that failed its `attempts`-th attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retry {
    After(Duration),
    DeadLetter,
}

/// A message whose deliveries outnumber its settled attempts by this much stopped the process
/// (or its consumer) each time it was handled: it is dead-lettered instead of delivered again,
/// so one bad message cannot keep the service in a crash loop.
pub const MAX_UNSETTLED_DELIVERIES: u32 = 3;

impl RetryPolicy {
    /// The fate of a message `age` after its publication that just failed attempt `attempts`.
    pub fn decide(&self, attempts: u32, age: Duration) -> Retry {
        if self.max_attempts > 0 && attempts >= self.max_attempts {
            return Retry::DeadLetter;
        }
        let delay = self.backoff(attempts);
        if age + delay > self.horizon {
            Retry::DeadLetter
        } else {
            Retry::After(delay)
        }
    }

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
    /// Publishes refused because their key was seen with a different fingerprint.
    pub conflicts: u64,
    pub acked: u64,
    /// Messages handled in their publish's commit ([`Queue::publish_handled`]).
    pub handled_at_publish: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dead_letters: u64,
    /// Dead letters put back on the topic (`devmetrics queue replay`).
    pub replayed: u64,
    /// Publishes refused because the topic was full.
    pub rejected_full: u64,
}

impl TopicStats {
    /// Counts the fate `decision` of a failed attempt; a dead letter is also logged.
    pub fn count_failure(&mut self, topic: &str, decision: Retry, attempts: u32, reason: &str) {
        match decision {
            Retry::After(_) => self.retried += 1,
            Retry::DeadLetter => {
                self.dead_lettered += 1;
                tracing::warn!(topic, attempts, reason = %reason, "message dead-lettered");
            }
        }
    }
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
    /// `attempts` counts this one; the retry policy decides between a retry and the dead
    /// letters.
    async fn nack(&self, attempts: u32, reason: &str) -> Result<(), Error>;
    /// Moves the message to the dead letters at once (a failure retrying cannot fix).
    async fn dead_letter(&self, attempts: u32, reason: &str) -> Result<(), Error>;
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

    pub async fn dead_letter(mut self, reason: &str) -> Result<(), Error> {
        let settle = self
            .settle
            .take()
            .expect("the handle is present until ack, nack or drop");
        settle.dead_letter(self.attempts + 1, reason).await
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
    /// Durably stores `payload` on `topic`. With `dedupe`, a second publish of the same key
    /// on the same topic is refused as [`Published::Duplicate`], or as
    /// [`Published::Conflict`] when both carried fingerprints and these differ; the check,
    /// the publish and the recording of the key and its fingerprint are one atomic step.
    async fn publish_with(
        &self,
        topic: &str,
        dedupe: Option<Dedupe<'_>>,
        payload: Bytes,
    ) -> Result<Published, Error>;

    /// [`Queue::publish_with`] deduplicated by `dedupe_key` alone, without a fingerprint.
    async fn publish(
        &self,
        topic: &str,
        dedupe_key: Option<&str>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let dedupe = dedupe_key.map(|key| Dedupe {
            key,
            fingerprint: None,
        });
        self.publish_with(topic, dedupe, payload).await
    }

    /// Whether [`Queue::publish_handled`] is available: the backend commits the store's
    /// writes in its own transactions.
    fn handles_in_publish(&self) -> bool {
        false
    }

    /// Records `dedupe` as [`Queue::publish_with`] does but, instead of queuing a message
    /// for a consumer, commits its handling — the store's keyed batches and the messages it
    /// forwards — in the same transaction. The message is handled the moment it is durable
    /// and counts as published and acked. Only a backend that
    /// [`handles_in_publish`](Queue::handles_in_publish) is asked; any error means nothing
    /// was written, and the caller publishes the message instead.
    async fn publish_handled(
        &self,
        topic: &str,
        dedupe: Dedupe<'_>,
        handled: Handled,
    ) -> Result<Published, Error> {
        let _ = (topic, dedupe, handled);
        Err(Error::Unavailable {
            kind: "unsupported",
            message: "this queue backend cannot handle a message in its publish".into(),
        })
    }

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
                (
                    metrics::DEVMETRICS_QUEUE_CONFLICTS_TOTAL,
                    s.conflicts as f64,
                ),
                (metrics::DEVMETRICS_QUEUE_ACKED_TOTAL, s.acked as f64),
                (
                    metrics::DEVMETRICS_QUEUE_HANDLED_AT_PUBLISH_TOTAL,
                    s.handled_at_publish as f64,
                ),
                (metrics::DEVMETRICS_QUEUE_RETRIED_TOTAL, s.retried as f64),
                (
                    metrics::DEVMETRICS_QUEUE_DEAD_LETTERED_TOTAL,
                    s.dead_lettered as f64,
                ),
                (
                    metrics::DEVMETRICS_QUEUE_DEAD_LETTERS,
                    s.dead_letters as f64,
                ),
                (metrics::DEVMETRICS_QUEUE_REPLAYED_TOTAL, s.replayed as f64),
            ] {
                out.number(fid, &[topic.as_str()], v);
            }
            out.number(
                metrics::DEVMETRICS_QUEUE_REJECTED_TOTAL,
                &[topic.as_str(), "full"],
                s.rejected_full as f64,
            );
        }
    }
}

/// The local services the backends' unit tests use.
#[cfg(test)]
pub(crate) mod test_services {
    /// Whether `name` answers on `addr`; without it a test is skipped with the reason, or
    /// fails under `DEVMETRICS_REQUIRE_SERVICES=1`.
    fn up(name: &str, addr: &str, hint: &str) -> bool {
        let a = addr.parse().expect("an address");
        if std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok() {
            return true;
        }
        let msg = format!("{name} not reachable on {addr}: {hint}");
        if std::env::var("DEVMETRICS_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        false
    }

    pub const RABBITMQ: &str = "127.0.0.1:5672";
    pub const REDIS: &str = "127.0.0.1:6379";

    /// RabbitMQ with guest/guest.
    pub fn rabbitmq() -> bool {
        up(
            "RabbitMQ",
            RABBITMQ,
            "start it with `rabbitmq-server -detached` (guest/guest)",
        )
    }

    pub fn redis() -> bool {
        up(
            "Redis",
            REDIS,
            "start it with `redis-server --daemonize yes`",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink down for three hours: every retry of the default schedule still lies within the
    /// horizon, so nothing is dead-lettered; the retries never come closer than half the
    /// backoff cap.
    #[test]
    fn the_default_schedule_outlasts_a_three_hour_outage() {
        let p = RetryPolicy::default();
        let mut age = Duration::ZERO;
        let mut attempts = 0;
        while age < Duration::from_secs(3 * 3600) {
            attempts += 1;
            match p.decide(attempts, age) {
                Retry::After(d) => {
                    assert!(d <= p.max_backoff);
                    age += d;
                }
                Retry::DeadLetter => panic!("dead-lettered after {attempts} attempts at {age:?}"),
            }
        }
        assert!(attempts > 30, "{attempts} attempts in three hours");
    }

    #[test]
    fn the_horizon_and_an_explicit_cap_end_retries() {
        let p = RetryPolicy {
            max_attempts: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            horizon: Duration::from_secs(600),
        };
        assert!(matches!(
            p.decide(3, Duration::from_secs(10)),
            Retry::After(_)
        ));
        assert_eq!(p.decide(30, Duration::from_secs(599)), Retry::DeadLetter);
        let capped = RetryPolicy {
            max_attempts: 3,
            ..p
        };
        assert_eq!(capped.decide(3, Duration::ZERO), Retry::DeadLetter);
    }
}
