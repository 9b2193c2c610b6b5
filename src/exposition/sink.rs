//! Push sinks for workflow telemetry. Each sink has its own queue topic, filled by the
//! workflow consumer with one message per finished run or job (deduplicated by the
//! completion's key); a sink worker sends and acks, or nacks so the queue retries with
//! backoff. A sink that is down therefore delays its data and loses none (after
//! `queue.max_attempts` a message waits in the dead-letter table).

use async_trait::async_trait;
use std::sync::Arc;

use crate::processors::{Envelope, workflows};
use crate::queue::Failure;

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

/// Sends each finished run or job of the sink's topic; a failed send is retried by the queue.
pub struct Worker(pub Arc<dyn Sink>);

#[async_trait]
impl crate::queue::Handler for Worker {
    async fn handle(&self, delivery: &crate::queue::Delivery) -> Result<(), Failure> {
        let item = Envelope::decode(&delivery.payload)
            .and_then(|e| workflows::item(&e.event, &e.body).ok().flatten());
        // Only decodable terminal items are queued here; anything else is a bug, kept in the
        // dead letters for inspection rather than dropped.
        let item =
            item.ok_or_else(|| Failure::permanent("undecodable", "undecodable sink message"))?;
        self.0.send(&item).await.map_err(|e| {
            let message = format!("{}: {e}", self.0.name());
            match e {
                // The sink refused this item itself (bad request, too large): sending it
                // again would be refused again.
                Error::Status(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    Failure::permanent(e.kind(), message)
                }
                _ => Failure::new(e.kind(), message),
            }
        })
    }
}
