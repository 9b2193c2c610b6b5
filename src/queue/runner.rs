//! The one consumer loop: receive from a topic, hand the delivery to its handler, ack once the
//! handler's effects are durable, nack on failure or panic, and stop promptly on shutdown
//! (an unfinished delivery is released, not counted as an attempt).

use async_trait::async_trait;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{Delivery, SharedQueue};

/// Pause after a failed receive, so a backend outage does not become a busy loop.
const RECEIVE_BACKOFF: Duration = Duration::from_secs(1);

/// Why a handler could not finish a message.
#[derive(Debug)]
pub struct Failure {
    /// Bounded: a log field and the nack reason.
    pub kind: &'static str,
    pub message: String,
    /// Retrying cannot help (the message cannot be decoded, has the wrong shape, or was
    /// refused by the upstream as invalid): it goes to the dead letters at once.
    pub permanent: bool,
}

impl Failure {
    /// A failure that may pass: the message is retried with backoff.
    pub fn new(kind: &'static str, message: impl std::fmt::Display) -> Self {
        Failure {
            kind,
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure of the message itself: dead-lettered at once, with its reason.
    pub fn permanent(kind: &'static str, message: impl std::fmt::Display) -> Self {
        Failure {
            permanent: true,
            ..Failure::new(kind, message)
        }
    }
}

/// Handles the messages of one topic.
#[async_trait]
pub trait Handler: Send + Sync {
    /// `Ok` only once the message's effects are durable (the runner acks then); `Err` to have
    /// it retried with backoff and, past the retry policy, dead-lettered.
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure>;
}

/// Consumes `topic` with `handler` until `shutdown`. Several runners may share a topic.
pub async fn run_consumer(
    queue: SharedQueue,
    topic: String,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return,
            d = queue.receive(&topic) => d,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(topic, kind = e.kind(), error = %e, "receiving from the queue failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RECEIVE_BACKOFF) => continue,
                }
            }
        };
        // A message that panics its handler is a bad message, not a reason to lose this
        // consumer: it is nacked like any failure, so it ends in the dead letters.
        let work = AssertUnwindSafe(handler.handle(&delivery)).catch_unwind();
        let outcome = tokio::select! {
            // Dropping the delivery releases it for redelivery after the restart.
            _ = shutdown.cancelled() => return,
            r = work => r,
        };
        let settled = match outcome {
            Ok(Ok(())) => delivery.ack().await,
            Ok(Err(f)) if f.permanent => {
                tracing::warn!(topic, id = %delivery.id, kind = f.kind, error = %f.message, "a message cannot be handled; dead-lettered");
                delivery
                    .dead_letter(&format!("{}: {}", f.kind, f.message))
                    .await
            }
            Ok(Err(f)) => {
                tracing::warn!(topic, id = %delivery.id, kind = f.kind, error = %f.message, "handling a message failed; will retry");
                delivery.nack(&format!("{}: {}", f.kind, f.message)).await
            }
            Err(_) => {
                tracing::error!(topic, id = %delivery.id, "handling a message panicked");
                delivery.nack("panic").await
            }
        };
        if let Err(e) = settled {
            // An ack that failed redelivers the message, which its idempotency keys make
            // harmless; a failed nack leaves it to come back after its lease.
            tracing::warn!(topic, kind = e.kind(), error = %e, "settling a delivery failed");
        }
    }
}
