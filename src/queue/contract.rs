//! The contract every [`Queue`] backend passes, written against the trait alone. A
//! backend's tests call [`run`] with a fresh, empty queue opened with [`policy`].

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Dedupe, Published, Queue, RetryPolicy, SharedQueue, fingerprint};

/// The retry policy the queue under test must be opened with.
pub fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        horizon: Duration::from_secs(3600),
    }
}

/// Runs every check of the queue contract.
pub async fn run(queue: SharedQueue) {
    publish_dedupes_and_delivers_in_order(&*queue).await;
    fingerprints_tell_a_reused_key_from_a_repeat(&*queue).await;
    dropped_deliveries_come_back_without_an_attempt(&*queue).await;
    nack_retries_with_backoff_then_dead_letters(&*queue).await;
    dedupe_keys_are_per_topic_and_forgotten_after_retention(&*queue).await;
    concurrent_consumers_see_each_message_once(queue.clone()).await;
}

async fn receive(queue: &dyn Queue, topic: &str) -> super::Delivery {
    tokio::time::timeout(Duration::from_secs(5), queue.receive(topic))
        .await
        .expect("a due message is delivered within 5 s")
        .expect("receive")
}

async fn stats(queue: &dyn Queue, topic: &str) -> super::TopicStats {
    queue
        .stats()
        .await
        .expect("stats")
        .into_iter()
        .find(|(t, _)| t == topic)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

pub async fn publish_dedupes_and_delivers_in_order(queue: &dyn Queue) {
    let t = "contract/order";
    let p = |k: Option<&'static str>, b: &'static [u8]| queue.publish(t, k, Bytes::from_static(b));
    assert_eq!(
        p(Some("k1"), b"1").await.expect("publish"),
        Published::Published
    );
    assert_eq!(
        p(Some("k1"), b"1").await.expect("publish"),
        Published::Duplicate
    );
    let big = Bytes::from(vec![b'x'; 10_000]);
    queue.publish(t, None, big.clone()).await.expect("publish");
    let d = receive(queue, t).await;
    assert_eq!((&d.payload[..], d.attempts), (&b"1"[..], 0));
    assert_eq!(&*d.topic, t);
    d.ack().await.expect("ack");
    let d = receive(queue, t).await;
    assert_eq!(d.payload, big);
    d.ack().await.expect("ack");
    let s = stats(queue, t).await;
    assert_eq!((s.published, s.duplicates, s.acked, s.depth), (2, 1, 2, 0));
}

/// A key published again with the fingerprint it was recorded with is a repeat (Duplicate);
/// with another fingerprint it is a reused key (Conflict), and nothing more is queued either
/// way. Without a fingerprint on either side there is nothing to compare: Duplicate.
pub async fn fingerprints_tell_a_reused_key_from_a_repeat(queue: &dyn Queue) {
    let t = "contract/fingerprint";
    let publish = |key: &'static str, body: &'static [u8], fingerprinted: bool| {
        let dedupe = Dedupe {
            key,
            fingerprint: fingerprinted.then(|| fingerprint(body)),
        };
        queue.publish_with(t, Some(dedupe), Bytes::from_static(body))
    };
    let (new, repeat, conflict) = (
        Published::Published,
        Published::Duplicate,
        Published::Conflict,
    );
    let cases: [(&str, &[u8], bool, Published, &str); 7] = [
        ("f1", b"a", true, new, "a new key"),
        ("f1", b"a", true, repeat, "the same content"),
        ("f1", b"b", true, conflict, "other content"),
        ("f1", b"a", true, repeat, "the first one stays"),
        ("f1", b"c", false, repeat, "none given"),
        ("f2", b"d", false, new, "a new key"),
        ("f2", b"e", true, repeat, "none recorded"),
    ];
    for (key, body, fingerprinted, want, what) in cases {
        let got = publish(key, body, fingerprinted).await.expect("publish");
        assert_eq!(got, want, "{what}");
    }
    let s = stats(queue, t).await;
    assert_eq!(
        (s.published, s.duplicates, s.conflicts, s.depth),
        (2, 4, 1, 2),
        "only the first publish of each key is queued"
    );
    for want in [&b"a"[..], b"d"] {
        let d = receive(queue, t).await;
        assert_eq!(&d.payload[..], want);
        d.ack().await.expect("ack");
    }
    assert_eq!(stats(queue, t).await.depth, 0);
}

pub async fn dropped_deliveries_come_back_without_an_attempt(queue: &dyn Queue) {
    let t = "contract/release";
    queue
        .publish(t, None, Bytes::from_static(b"a"))
        .await
        .expect("publish");
    drop(receive(queue, t).await);
    let d = receive(queue, t).await;
    assert_eq!((&d.payload[..], d.attempts), (&b"a"[..], 0));
    assert_eq!(stats(queue, t).await.depth, 1, "in flight counts as queued");
    d.ack().await.expect("ack");
    assert_eq!(stats(queue, t).await.depth, 0);
}

pub async fn nack_retries_with_backoff_then_dead_letters(queue: &dyn Queue) {
    let t = "contract/retry";
    queue
        .publish(t, None, Bytes::from_static(b"bad"))
        .await
        .expect("publish");
    let max = policy().max_attempts;
    for attempt in 0..max {
        let d = receive(queue, t).await;
        assert_eq!(d.attempts, attempt);
        d.nack("boom").await.expect("nack");
    }
    let s = stats(queue, t).await;
    assert_eq!(
        (s.retried, s.dead_lettered, s.dead_letters, s.depth),
        (u64::from(max - 1), 1, 1, 0)
    );
    queue
        .publish(t, None, Bytes::from_static(b"next"))
        .await
        .expect("publish");
    let d = receive(queue, t).await;
    assert_eq!(
        &d.payload[..],
        b"next",
        "the dead letter is not delivered again"
    );
    d.ack().await.expect("ack");
}

pub async fn dedupe_keys_are_per_topic_and_forgotten_after_retention(queue: &dyn Queue) {
    let k = Some("same-key");
    let b = || Bytes::from_static(b"d");
    assert_eq!(
        queue.publish("contract/d1", k, b()).await.expect("publish"),
        Published::Published
    );
    assert_eq!(
        queue.publish("contract/d2", k, b()).await.expect("publish"),
        Published::Published,
        "keys are per topic"
    );
    queue.gc(Duration::from_secs(3600)).await.expect("gc");
    assert_eq!(
        queue.publish("contract/d1", k, b()).await.expect("publish"),
        Published::Duplicate
    );
    // Keys are kept to whole seconds; a zero retention forgets everything older than now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    queue.gc(Duration::ZERO).await.expect("gc");
    assert_eq!(
        queue.publish("contract/d1", k, b()).await.expect("publish"),
        Published::Published
    );
    for t in ["contract/d1", "contract/d1", "contract/d2"] {
        receive(queue, t).await.ack().await.expect("ack");
    }
}

pub async fn concurrent_consumers_see_each_message_once(queue: SharedQueue) {
    let t = "contract/concurrent";
    const N: usize = 200;
    for i in 0..N {
        queue
            .publish(t, Some(&format!("c{i}")), Bytes::from(i.to_string()))
            .await
            .expect("publish");
    }
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (queue, seen) = (queue.clone(), seen.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let Ok(Ok(d)) =
                    tokio::time::timeout(Duration::from_millis(500), queue.receive(t)).await
                else {
                    return;
                };
                seen.lock()
                    .push(String::from_utf8(d.payload.to_vec()).expect("utf-8"));
                d.ack().await.expect("ack");
            }
        }));
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let seen = seen.lock();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), N, "no message delivered twice once acked");
    assert_eq!(distinct.len(), N, "every message delivered");
}
