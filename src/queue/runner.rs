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
/// After failures that leave the message where it was (it could not be settled, or the
/// handler's storage is down), the next receive waits from this, doubling...
const FAILURE_BACKOFF: Duration = Duration::from_millis(100);
/// ...up to this.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(5);

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
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let pause = FAILURE_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_FAILURE_BACKOFF);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
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
        // A failure the message may not be to blame for (its storage down) backs this
        // consumer off, as does a settle that did not go through.
        let mut backoff = false;
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
                backoff = true;
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
            backoff = true;
        }
        failures = if backoff {
            failures.saturating_add(1)
        } else {
            0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Dedupe, Error, Published, Queue, Settle, TopicStats};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A queue whose backend cannot write: every delivery it hands out fails to settle.
    #[derive(Default)]
    struct CannotWrite {
        receives: AtomicU64,
    }

    struct Unsettleable;

    #[async_trait]
    impl Settle for Unsettleable {
        async fn ack(&self) -> Result<(), Error> {
            Err(full())
        }
        async fn nack(&self, _: u32, _: &str) -> Result<(), Error> {
            Err(full())
        }
        async fn dead_letter(&self, _: u32, _: &str) -> Result<(), Error> {
            Err(full())
        }
        fn release(&self) {}
    }

    fn full() -> Error {
        Error::Unavailable {
            kind: "commit",
            message: "database or disk is full".into(),
        }
    }

    #[async_trait]
    impl Queue for CannotWrite {
        async fn publish_with(
            &self,
            _: &str,
            _: Option<Dedupe<'_>>,
            _: Bytes,
        ) -> Result<Published, Error> {
            Err(full())
        }
        async fn receive(&self, topic: &str) -> Result<Delivery, Error> {
            self.receives.fetch_add(1, Ordering::Relaxed);
            Ok(Delivery::new(
                "1".into(),
                topic.into(),
                Bytes::from_static(b"m"),
                0,
                0.0,
                Box::new(Unsettleable),
            ))
        }
        async fn stats(&self) -> Result<Vec<(String, TopicStats)>, Error> {
            Ok(Vec::new())
        }
        async fn gc(&self, _: Duration) -> Result<u64, Error> {
            Ok(0)
        }
    }

    struct Failing;

    #[async_trait]
    impl Handler for Failing {
        async fn handle(&self, _: &Delivery) -> Result<(), Failure> {
            Err(Failure::new("store", "storage unavailable"))
        }
    }

    struct Fine;

    #[async_trait]
    impl Handler for Fine {
        async fn handle(&self, _: &Delivery) -> Result<(), Failure> {
            Ok(())
        }
    }

    /// A full disk: handlers fail and nothing settles. The consumer backs off (a handful of
    /// attempts a second, not thousands) and still stops at once on shutdown.
    #[tokio::test]
    async fn a_backend_that_cannot_write_is_not_a_busy_loop() {
        for handler in [Arc::new(Failing) as Arc<dyn Handler>, Arc::new(Fine)] {
            let queue = Arc::new(CannotWrite::default());
            let stop = CancellationToken::new();
            let task = tokio::spawn(run_consumer(
                queue.clone(),
                "t".into(),
                handler,
                stop.clone(),
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = queue.receives.load(Ordering::Relaxed);
            assert!((2..=12).contains(&n), "{n} receives in 2 s");
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .expect("stops promptly")
                .unwrap();
        }
    }
}
