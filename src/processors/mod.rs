//! Pure work: a queued item → metric updates. Processors do no network I/O; their handlers
//! apply each batch with `Store::apply_each_once` and return only once it is durable (the
//! queue's consumer runner acks then), so a crash at any point redelivers and the keys make
//! the retry harmless.

pub mod budget;
pub mod workflows;

use bytes::Bytes;
use std::sync::Arc;

use crate::queue::{Failure, SharedQueue};
use crate::store::SharedStore;

/// A delivery as queued: a short text header and the raw body, so the body is stored as
/// received (and compressed by the queue) without a JSON re-encode.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub event: String,
    pub delivery: String,
    pub received_at: f64,
    pub body: Bytes,
}

const MAGIC: &str = "gh1";

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let head = format!(
            "{MAGIC}\n{}\n{}\n{}\n",
            self.event, self.delivery, self.received_at
        );
        let mut v = Vec::with_capacity(head.len() + self.body.len());
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(&self.body);
        Bytes::from(v)
    }

    pub fn decode(b: &Bytes) -> Option<Envelope> {
        let mut fields = [""; 4];
        let mut at = 0;
        for f in &mut fields {
            let nl = b[at..].iter().position(|c| *c == b'\n')?;
            *f = std::str::from_utf8(&b[at..at + nl]).ok()?;
            at += nl + 1;
        }
        if fields[0] != MAGIC {
            return None;
        }
        Some(Envelope {
            event: fields[1].to_string(),
            delivery: fields[2].to_string(),
            received_at: fields[3].parse().ok()?,
            body: b.slice(at..),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queued message is not a delivery envelope")]
    Envelope,
    #[error(transparent)]
    Workflows(#[from] workflows::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
}

impl Error {
    /// Whether handling the same message again can succeed: a payload that does not decode
    /// or updates the catalog refuses never will.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Envelope | Error::Workflows(_) => false,
            Error::Store(e) => e.is_transient(),
            Error::Queue(_) => true,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Error::Envelope => "envelope",
            Error::Workflows(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Queue(e) => e.kind(),
        }
    }
}

/// A delivery's handling, computed without touching the store: its keyed batches within
/// the series budget and, when it finishes a run or job, that item for each sink's topic,
/// keyed by the completion so each sink gets each run attempt and job once.
pub fn handling(
    env: &Envelope,
    opts: &workflows::Options,
    budget: &budget::SeriesBudget,
    sink_topics: &[String],
) -> Result<crate::queue::Handled, Error> {
    let mut batches = workflows::process(&env.event, &env.body, opts)?;
    budget.admit(&mut batches);
    let mut forward = Vec::new();
    if !sink_topics.is_empty()
        && let Some(item) = workflows::item(&env.event, &env.body)?
    {
        let (key, payload) = (item.key(), env.encode());
        for t in sink_topics {
            forward.push(crate::queue::Forward {
                topic: t.clone(),
                key: key.clone(),
                payload: payload.clone(),
            });
        }
    }
    Ok(crate::queue::Handled { batches, forward })
}

/// Applies a delivery and hands finished runs and jobs to the sinks' topics, keyed by the
/// completion so each sink gets each run attempt and job once whatever the deliveries.
pub async fn apply_and_forward(
    store: &dyn crate::store::Store,
    queue: &dyn crate::queue::Queue,
    payload: &Bytes,
    opts: &workflows::Options,
    budget: &budget::SeriesBudget,
    sink_topics: &[String],
) -> Result<usize, Error> {
    let env = Envelope::decode(payload).ok_or(Error::Envelope)?;
    let handled = handling(&env, opts, budget, sink_topics)?;
    let n = handled.batches.len();
    if n > 0 {
        // One store transaction; each key is still applied at most once, so a retry after a
        // crash repeats nothing.
        store.apply_each_once(handled.batches).await?;
    }
    for f in handled.forward {
        queue.publish(&f.topic, Some(&f.key), f.payload).await?;
    }
    Ok(n)
}

/// The consumer of accepted GitHub deliveries. Several may run at once: the processors' keys
/// make the result independent of order.
pub struct Deliveries {
    pub store: SharedStore,
    pub queue: SharedQueue,
    pub opts: Arc<workflows::Options>,
    pub budget: Arc<budget::SeriesBudget>,
    pub sink_topics: Arc<Vec<String>>,
}

impl Deliveries {
    /// [`handling`] with this consumer's options, budget and sinks.
    pub fn handling(&self, env: &Envelope) -> Result<crate::queue::Handled, Error> {
        handling(env, &self.opts, &self.budget, &self.sink_topics)
    }
}

#[async_trait::async_trait]
impl crate::queue::Handler for Deliveries {
    async fn handle(&self, delivery: &crate::queue::Delivery) -> Result<(), Failure> {
        apply_and_forward(
            &*self.store,
            &*self.queue,
            &delivery.payload,
            &self.opts,
            &self.budget,
            &self.sink_topics,
        )
        .await
        .map(|_| ())
        .map_err(|e| match e.is_transient() {
            true => Failure::new(e.kind(), e),
            false => Failure::permanent(e.kind(), e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let e = Envelope {
            event: "workflow_job".into(),
            delivery: "d-1".into(),
            received_at: 1.5,
            body: Bytes::from_static(b"{\"a\":\n1}"),
        };
        assert_eq!(Envelope::decode(&e.encode()), Some(e));
        assert_eq!(Envelope::decode(&Bytes::from_static(b"nope")), None);
    }
}
