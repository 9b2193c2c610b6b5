//! `POST /webhooks/github` (also `/webhook` and `/api/github`, the replaced tools' paths).
//!
//! Order of checks: size → signature → headers → ping / unwanted event → JSON → queue.
//! The signature comes before everything that reads the body, so an unauthenticated caller
//! learns nothing but 401 (or 413). 202 means the delivery is durable: in the queue, or,
//! where the queue can commit a delivery's handling with its publish, already applied.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

use super::{HookConfig, wire};
use crate::clock::now_unix;
use crate::config::SecretSource;
use crate::metrics;
use crate::processors::{Deliveries, Envelope, workflows};
use crate::queue::{self, Dedupe, Published, SharedQueue, topics};
use crate::sources::signature;
use crate::telemetry::Outcomes;

pub const PATHS: &[&str] = &["/webhooks/github", "/webhook", "/api/github"];

/// GitHub gives up after 10 s; answering 503 before that lets its redelivery (or ours) retry.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(8);
/// Seconds a sender is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "30";
/// How often secret files are looked at for a rotation.
const SECRET_RECHECK: Duration = Duration::from_secs(1);

/// The watched secret files: index in the MAC list, path, and (mtime, size) last read.
struct Watched {
    files: Vec<(usize, std::path::PathBuf, Stamp)>,
    checked: std::time::Instant,
}

/// A file's modification time and size, when it can be read.
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Why a delivery was not accepted. Maps to a status; the body never carries the detail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or invalid X-Hub-Signature-256")]
    Signature,
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("body is not a JSON object")]
    Json,
    #[error("body larger than the limit")]
    TooLarge,
    #[error("reading the body failed")]
    Body,
    #[error("queue unavailable: {0}")]
    Queue(String),
    #[error("too many delivery bytes in flight")]
    Overloaded,
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Signature => "bad_signature",
            Error::MissingHeader(_) => "missing_header",
            Error::Json => "malformed_json",
            Error::TooLarge => "too_large",
            Error::Body => "bad_body",
            Error::Queue(_) => "unavailable",
            Error::Overloaded => "overloaded",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::Signature => StatusCode::UNAUTHORIZED,
            Error::MissingHeader(_) | Error::Json | Error::Body => StatusCode::BAD_REQUEST,
            Error::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Queue(_) | Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let msg = match &self {
            Error::Signature => "invalid signature",
            Error::MissingHeader(h) => h,
            Error::Json => "invalid JSON payload",
            Error::TooLarge => "payload too large",
            Error::Body => "unreadable body",
            Error::Queue(_) | Error::Overloaded => "temporarily unavailable; retry later",
        };
        // `detail` is what github-telemetry's frontend (FastAPI) answered.
        let detail = match &self {
            Error::Signature => "Invalid signature",
            Error::Json => "Invalid JSON payload",
            _ => msg,
        };
        let body = format!("{}\n", serde_json::json!({"error": msg, "detail": detail}));
        let mut resp = (
            self.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Error::Queue(_) | Error::Overloaded = self {
            // Senders that honour it (GitHub's redelivery tooling, CD systems) come back
            // once the consumers have had time to catch up.
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// Outcomes counted in `devmetrics_webhook_deliveries_total{source="github",outcome}`.
const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "conflict",
    "ping",
    "ignored",
    "filtered",
    "bad_signature",
    "missing_header",
    "malformed_json",
    "too_large",
    "bad_body",
    "unavailable",
    "overloaded",
];

pub struct Receiver {
    /// Keyed MAC states, one per accepted secret; cloned per delivery so the key schedule is
    /// computed once.
    macs: parking_lot::RwLock<Vec<signature::Key>>,
    /// Secrets read from files, watched so a rotated file takes effect without a restart.
    watched: parking_lot::Mutex<Watched>,
    insecure: bool,
    max_body: u64,
    /// One permit per byte of deliveries being read, verified and queued: bodies arrive
    /// before anything proves the sender knows a secret, so their sum is bounded.
    buffered: Arc<tokio::sync::Semaphore>,
    queue: SharedQueue,
    repos: super::config::RepoFilter,
    /// Events beyond the workflow ones, and the topic each is queued on (DORA's deployment
    /// statuses when that source is enabled).
    routes: Vec<(&'static str, &'static str)>,
    /// `devmetrics_webhook_deliveries_total{source="github",outcome}`.
    pub stats: Arc<Outcomes>,
    /// The workflow deliveries' consumer, when the queue can commit its handling with the
    /// publish: those deliveries are then handled as they are accepted, in the same commit.
    handler: std::sync::OnceLock<Arc<Deliveries>>,
}

impl Receiver {
    pub fn new(config: &HookConfig, queue: SharedQueue) -> Arc<Receiver> {
        Receiver::with_routes(config, queue, Vec::new())
    }

    /// A receiver that also queues each event of `routes` on its topic.
    pub fn with_routes(
        config: &HookConfig,
        queue: SharedQueue,
        routes: Vec<(&'static str, &'static str)>,
    ) -> Arc<Receiver> {
        let macs = config.secrets.iter().map(signature::key).collect();
        let files = config
            .secret_files
            .iter()
            .enumerate()
            .take(config.secrets.len())
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.clone(), stamp(p))))
            .collect();
        if config.insecure_skip_verify && config.secrets.is_empty() {
            tracing::warn!(
                "webhooks.github.insecure_skip_verify is set: GitHub deliveries are accepted without a signature check"
            );
        }
        Arc::new(Receiver {
            macs: parking_lot::RwLock::new(macs),
            watched: parking_lot::Mutex::new(Watched {
                files,
                checked: std::time::Instant::now(),
            }),
            insecure: config.insecure_skip_verify && config.secrets.is_empty(),
            max_body: config.max_body_bytes,
            buffered: Arc::new(tokio::sync::Semaphore::new(
                config.max_buffered_bytes as usize,
            )),
            queue,
            repos: config.repos.clone(),
            routes,
            stats: Arc::new(Outcomes::new(
                metrics::DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL,
                "github",
                OUTCOMES,
            )),
            handler: std::sync::OnceLock::new(),
        })
    }

    /// Handles workflow deliveries with `deliveries` as they are published, when the queue
    /// can commit both at once; otherwise leaves them to the queue's consumers.
    pub fn handle_with(&self, deliveries: Arc<Deliveries>) {
        if self.queue.handles_in_publish() {
            let _ = self.handler.set(deliveries);
        }
    }

    /// Constant-time check of `sha256=<hex>` against every configured secret. Every secret is
    /// tried even after a match, so timing does not reveal which one matched.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> bool {
        self.reload_rotated_secrets();
        let Some(tag) = header.and_then(signature::parse) else {
            return false;
        };
        let mut ok = subtle::Choice::from(0u8);
        for key in self.macs.read().iter() {
            ok |= signature::matches(key, body, &tag);
        }
        bool::from(ok)
    }

    /// At most once per [`SECRET_RECHECK`], looks whether a secret file changed (its
    /// modification time or size) and takes its new content. A file that cannot be read
    /// keeps the secret it had, with a warning.
    fn reload_rotated_secrets(&self) {
        let mut w = self.watched.lock();
        if w.files.is_empty() || w.checked.elapsed() < SECRET_RECHECK {
            return;
        }
        w.checked = std::time::Instant::now();
        for (i, path, seen) in w.files.iter_mut() {
            let now = stamp(path);
            if now == *seen {
                continue;
            }
            match SecretSource::File(path.clone()).read() {
                Ok(secret) => {
                    self.macs.write()[*i] = signature::key(&secret);
                    *seen = now;
                    tracing::info!(file = %path.display(), "webhook secret file changed; using its new secret");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "webhook secret file changed but cannot be read; keeping the secret it had")
                }
            }
        }
    }

    pub async fn handle(&self, headers: &HeaderMap, body: Body) -> Result<Response, Error> {
        let declared = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(Error::TooLarge);
        }
        // A body without a declared length may be as long as the limit allows.
        let need = declared.unwrap_or(self.max_body).max(1) as u32;
        let _room = self
            .buffered
            .clone()
            .try_acquire_many_owned(need)
            .map_err(|_| Error::Overloaded)?;
        let body = http_body_util::Limited::new(body, self.max_body as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>()
                    || e.to_string().contains("length limit")
                {
                    Error::TooLarge
                } else {
                    Error::Body
                }
            })?
            .to_bytes();
        if self.insecure {
            tracing::warn!(
                "accepting a GitHub delivery without signature verification (insecure_skip_verify)"
            );
        } else if !self.verify(
            headers.get("x-hub-signature-256").map(|v| v.as_bytes()),
            &body,
        ) {
            return Err(Error::Signature);
        }
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 128 && !v.contains('\n'))
                .ok_or(Error::MissingHeader(name))
        };
        let event = header("x-github-event")?;
        let delivery = header("x-github-delivery")?;
        if event == "ping" {
            return Ok(done(StatusCode::OK, "pong", "ping", event, delivery));
        }
        let topic = if workflows::EVENTS.contains(&event) {
            Some(topics::GITHUB_WEBHOOKS)
        } else {
            self.routes
                .iter()
                .find(|(e, _)| *e == event)
                .map(|(_, t)| *t)
        };
        let Some(topic) = topic else {
            return Ok(done(
                StatusCode::OK,
                "event type not processed",
                "ignored",
                event,
                delivery,
            ));
        };
        if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::Json);
        }
        if !self.repos.is_open() {
            let repo = match serde_json::from_slice::<OnlyRepository>(&body) {
                Ok(o) => o.repository,
                Err(e) if e.is_syntax() || e.is_eof() => return Err(Error::Json),
                Err(_) => None,
            };
            if !repo.is_some_and(|r| self.repos.admits(&r.full_name)) {
                return Ok(done(
                    StatusCode::OK,
                    "repository filtered",
                    "filtered",
                    event,
                    delivery,
                ));
            }
        }
        // GitHub's redeliveries repeat the delivery id with the same body; the same id with
        // another body is something else (a sender reusing ids, a replay of altered content)
        // and is told apart by the body's fingerprint.
        let dedupe = Dedupe {
            key: delivery,
            fingerprint: Some(queue::fingerprint(&body)),
        };
        let envelope = Envelope {
            event: event.to_string(),
            delivery: delivery.to_string(),
            received_at: now_unix(),
            body,
        };
        if topic == topics::GITHUB_WEBHOOKS
            && let Some(deliveries) = self.handler.get()
            // A payload the processor cannot read is queued as any other, for the consumer
            // to dead-letter where it can be inspected and replayed.
            && let Ok(handled) = deliveries.handling(&envelope)
        {
            let publish = self.queue.publish_handled(topic, dedupe, handled);
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(published)) => return Ok(answer(published, event, delivery)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, delivery, "handling with the publish failed; queuing the delivery")
                }
                Err(_) => return Err(Error::Queue("publish timed out".into())),
            }
        }
        // Validates without building a tree; the processor decodes the fields it needs later.
        // (A delivery handled above was decoded whole, which validated it.)
        if serde_json::from_slice::<serde::de::IgnoredAny>(&envelope.body).is_err() {
            return Err(Error::Json);
        }
        let publish = self
            .queue
            .publish_with(topic, Some(dedupe), envelope.encode());
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(published)) => Ok(answer(published, event, delivery)),
            Ok(Err(e)) => Err(Error::Queue(e.to_string())),
            Err(_) => Err(Error::Queue("publish timed out".into())),
        }
    }
}

/// The answer to a delivery the queue took, or recognised.
fn answer(published: Published, event: &str, delivery: &str) -> Response {
    match published {
        Published::Published => done(StatusCode::ACCEPTED, "queued", "accepted", event, delivery),
        Published::Duplicate => done(
            StatusCode::OK,
            "duplicate delivery",
            "duplicate",
            event,
            delivery,
        ),
        // 200, not an error status: GitHub would only retry it, to the same answer.
        Published::Conflict => {
            tracing::warn!(
                delivery,
                event,
                "a GitHub delivery id seen before came with a different body; not queued"
            );
            done(
                StatusCode::OK,
                "conflicting delivery",
                "conflict",
                event,
                delivery,
            )
        }
    }
}

/// The one field a repository filter reads; serde skips the rest of the payload.
#[derive(serde::Deserialize)]
struct OnlyRepository {
    repository: Option<wire::Repository>,
}

fn done(
    status: StatusCode,
    message: &'static str,
    outcome: &'static str,
    event: &str,
    delivery: &str,
) -> Response {
    // github-telemetry's frontend answered `message`, `event` and `delivery`; clients of
    // either read their own keys.
    let legacy = match outcome {
        "accepted" => "Event received and queued",
        "ignored" => "Event type not processed",
        _ => message,
    };
    let body = format!(
        "{}\n",
        serde_json::json!({"status": message, "message": legacy, "event": event, "delivery": delivery})
    );
    let mut r = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    r.extensions_mut().insert(Outcome(outcome));
    r
}

#[derive(Clone, Copy)]
struct Outcome(&'static str);

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    match r.handle(&headers, body).await {
        Ok(resp) => {
            let outcome = resp
                .extensions()
                .get::<Outcome>()
                .map(|o| o.0)
                .unwrap_or("accepted");
            r.stats.count(outcome);
            resp
        }
        Err(e) => {
            r.stats.count(e.kind());
            match &e {
                Error::Queue(detail) => {
                    tracing::error!(error = %detail, "could not queue a GitHub delivery; answered 503")
                }
                e => tracing::debug!(kind = e.kind(), "GitHub delivery rejected"),
            }
            e.into_response()
        }
    }
}

/// The receiver's routes on every alias path, for the main or the webhook listener.
pub fn routes<S: Clone + Send + Sync + 'static>(receiver: Arc<Receiver>) -> Router<S> {
    let mut r = Router::new();
    for p in PATHS {
        r = r.route(p, post(receive));
    }
    r.with_state(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn receiver(secrets: &[&str]) -> Arc<Receiver> {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("q.db")).unwrap();
        let q = crate::queue::sqlite::SqliteQueue::open(db, Default::default()).unwrap();
        Receiver::new(
            &HookConfig {
                secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
                secret_files: Vec::new(),
                insecure_skip_verify: false,
                max_body_bytes: 1024,
                max_buffered_bytes: 4096,
                consumers: 4,
                workflows: Default::default(),
                series_budget: crate::sources::github::webhook::config::DEFAULT_SERIES_BUDGET,
                repos: Default::default(),
                runners: None,
                recovery: Vec::new(),
            },
            Arc::new(q),
        )
    }

    #[tokio::test]
    async fn a_body_over_the_limit_without_content_length_is_413() {
        let r = receiver(&["s"]);
        let e = r
            .handle(&HeaderMap::new(), Body::from(vec![b'x'; 2000]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "too_large");
        assert_eq!(e.into_response().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// Bodies arrive before anything proves the sender knows a secret: the bytes being
    /// read across requests are bounded, and a delivery past the bound is answered 503
    /// before its body is read.
    #[tokio::test]
    async fn bytes_in_flight_are_bounded_before_bodies_are_read() {
        let r = receiver(&["s"]);
        let body = br#"{"action":"queued"}"#;
        let headers = || {
            let mut h = HeaderMap::new();
            h.insert("x-github-event", "workflow_job".parse().unwrap());
            h.insert("x-github-delivery", "d-1".parse().unwrap());
            h.insert(
                "x-hub-signature-256",
                crate::sim::webhooks::signature("s", body).parse().unwrap(),
            );
            h.insert("content-length", body.len().to_string().parse().unwrap());
            h
        };
        // Deliveries being read elsewhere hold all but 10 bytes of the room.
        let held = r
            .buffered
            .clone()
            .try_acquire_many_owned(4096 - 10)
            .unwrap();
        let e = r
            .handle(&headers(), Body::from(&body[..]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "overloaded");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));
        drop(held);
        let ok = r.handle(&headers(), Body::from(&body[..])).await.unwrap();
        assert_eq!(ok.status(), StatusCode::ACCEPTED);
        assert_eq!(
            r.buffered.available_permits(),
            4096,
            "the room is given back"
        );
    }

    /// A secret file rewritten in place (a Kubernetes Secret rotated, a vault agent renewing
    /// it) takes effect within a second, without a restart; an unreadable file keeps the
    /// secret it had.
    #[tokio::test]
    async fn a_rotated_secret_file_takes_effect_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook-secret");
        std::fs::write(&file, "first\n").unwrap();
        let db = crate::db::Db::open(&dir.path().join("q.db")).unwrap();
        let q = crate::queue::sqlite::SqliteQueue::open(db, Default::default()).unwrap();
        let r = Receiver::new(
            &HookConfig {
                secrets: vec![Secret::new("first")],
                secret_files: vec![Some(file.clone())],
                insecure_skip_verify: false,
                max_body_bytes: 1024,
                max_buffered_bytes: 4096,
                consumers: 4,
                workflows: Default::default(),
                series_budget: crate::sources::github::webhook::config::DEFAULT_SERIES_BUDGET,
                repos: Default::default(),
                runners: None,
                recovery: Vec::new(),
            },
            Arc::new(q),
        );
        let body = b"{}";
        let signed = |secret: &str| crate::sim::webhooks::signature(secret, body);
        assert!(r.verify(Some(signed("first").as_bytes()), body));
        std::fs::write(&file, "second-and-longer\n").unwrap();
        tokio::time::sleep(SECRET_RECHECK + Duration::from_millis(100)).await;
        assert!(r.verify(Some(signed("second-and-longer").as_bytes()), body));
        assert!(!r.verify(Some(signed("first").as_bytes()), body));
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(SECRET_RECHECK + Duration::from_millis(100)).await;
        assert!(
            r.verify(Some(signed("second-and-longer").as_bytes()), body),
            "a file that went away keeps the secret it had"
        );
    }

    #[test]
    fn verifies_githubs_documented_test_vector_with_rotation() {
        let sig = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let body = b"Hello, World!";
        assert!(receiver(&["It's a Secret to Everybody"]).verify(Some(sig), body));
        assert!(receiver(&["old", "It's a Secret to Everybody"]).verify(Some(sig), body));
        assert!(!receiver(&["other"]).verify(Some(sig), body));
        assert!(!receiver(&["It's a Secret to Everybody"]).verify(Some(sig), b"Hello, World?"));
        assert!(!receiver(&["It's a Secret to Everybody"]).verify(None, body));
        assert!(!receiver(&["It's a Secret to Everybody"]).verify(Some(&sig[7..]), body));
        assert!(!receiver(&["It's a Secret to Everybody"]).verify(Some(b"sha256=zz"), body));
    }
}

#[cfg(test)]
mod unavailable {
    use super::*;
    use crate::config::Secret;
    use crate::queue::{Delivery, Queue, TopicStats};

    struct Broken;

    #[async_trait::async_trait]
    impl Queue for Broken {
        async fn publish_with(
            &self,
            _: &str,
            _: Option<crate::queue::Dedupe<'_>>,
            _: bytes::Bytes,
        ) -> Result<Published, crate::queue::Error> {
            Err(crate::queue::Error::Closed)
        }
        async fn receive(&self, _: &str) -> Result<Delivery, crate::queue::Error> {
            Err(crate::queue::Error::Closed)
        }
        async fn stats(&self) -> Result<Vec<(String, TopicStats)>, crate::queue::Error> {
            Ok(Vec::new())
        }
        async fn gc(&self, _: std::time::Duration) -> Result<u64, crate::queue::Error> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn a_queue_that_cannot_take_it_gives_503_without_internals() {
        let r = Receiver::new(
            &HookConfig {
                secrets: vec![Secret::new("s")],
                secret_files: Vec::new(),
                insecure_skip_verify: false,
                max_body_bytes: 1024,
                max_buffered_bytes: 4096,
                consumers: 4,
                workflows: Default::default(),
                series_budget: crate::sources::github::webhook::config::DEFAULT_SERIES_BUDGET,
                repos: Default::default(),
                runners: None,
                recovery: Vec::new(),
            },
            Arc::new(Broken),
        );
        let body = br#"{"action":"queued"}"#;
        let mut h = HeaderMap::new();
        h.insert("x-github-event", "workflow_job".parse().unwrap());
        h.insert("x-github-delivery", "d".parse().unwrap());
        h.insert(
            "x-hub-signature-256",
            crate::sim::webhooks::signature("s", body).parse().unwrap(),
        );
        let e = r.handle(&h, Body::from(&body[..])).await.unwrap_err();
        assert_eq!(e.kind(), "unavailable");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], RETRY_AFTER_SECS);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&text).contains("closed"));
    }
}
