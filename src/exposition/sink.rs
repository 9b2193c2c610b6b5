//! Push sinks for workflow telemetry. Each sink has its own queue topic, filled by the
//! workflow consumer with one message per finished run or job (deduplicated by the
//! completion's key); a sink worker sends and acks, or nacks so the queue retries with
//! backoff. A sink that is down therefore delays its data and loses none (after
//! `queue.max_attempts` a message waits in the dead-letter table).

use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::processors::{Envelope, workflows};
use crate::queue::SharedQueue;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {0}")]
    Status(u16),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Transport(_) => "transport",
            Error::Status(_) => "status",
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;
    async fn send(&self, item: &workflows::Item) -> Result<(), Error>;
}

pub fn topic(sink: &str) -> String {
    format!("sink/{sink}")
}

/// Sends every message of the sink's topic until `shutdown`.
pub async fn run(queue: SharedQueue, sink: Arc<dyn Sink>, shutdown: CancellationToken) {
    let topic = topic(sink.name());
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return,
            d = queue.receive(&topic) => match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(sink = sink.name(), error = %e, "receiving from the queue failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let item = Envelope::decode(&delivery.payload)
            .and_then(|e| workflows::item(&e.event, &e.body).ok().flatten());
        let Some(item) = item else {
            // Only decodable terminal items are queued here; anything else is a bug, kept
            // for inspection rather than dropped.
            let _ = delivery.nack("undecodable sink message").await;
            continue;
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sink.send(&item) => r,
        };
        match result {
            Ok(()) => {
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::warn!(sink = sink.name(), kind = e.kind(), error = %e, "sink send failed; will retry");
                let _ = delivery.nack(e.kind()).await;
            }
        }
    }
}
