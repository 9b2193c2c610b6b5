//! The simulator: fakes of every upstream, speaking their real wire formats on
//! `127.0.0.1:0`. Tests assert against their ground truth, benchmarks load them, and
//! `devmetrics demo` wires the exporter to them.
//!
//! [`FakeServer`] is the shared frame: it counts requests per endpoint and applies the fault
//! knobs in [`Faults`]; each upstream's fake supplies only its router and its data.

pub mod backstage;
pub mod chaos;
pub mod demo;
pub mod github;
pub mod jira;
pub mod sinks;
pub mod spacelift;
pub mod webhooks;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Fault knobs, shared with the test that owns the fake. Rates are per mille and drawn from
/// a seeded generator, so a failing run replays the same faults.
pub struct Faults {
    pub error_5xx_per_mille: AtomicU32,
    pub timeout_per_mille: AtomicU32,
    pub malformed_per_mille: AtomicU32,
    pub rate_limit_per_mille: AtomicU32,
    /// The next N requests fail with 503, whatever the rates say.
    pub fail_next: AtomicU32,
    /// Added latency for every request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// How long a "timeout" request hangs before answering.
    pub hang_ms: AtomicU64,
    /// Answers that promise their whole body (status, headers, `Content-Length`) and then
    /// break the connection halfway through it.
    pub truncate_per_mille: AtomicU32,
    /// Every body trickles in eight pieces spread over this many milliseconds.
    pub slow_body_ms: AtomicU64,
    /// Requests a fault was applied to (an error, a limit, a hang, a damaged or slow body).
    pub injected: AtomicU64,
    rng: Mutex<StdRng>,
}

impl Faults {
    pub fn new(seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            error_5xx_per_mille: AtomicU32::new(0),
            timeout_per_mille: AtomicU32::new(0),
            malformed_per_mille: AtomicU32::new(0),
            rate_limit_per_mille: AtomicU32::new(0),
            fail_next: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
            hang_ms: AtomicU64::new(30_000),
            truncate_per_mille: AtomicU32::new(0),
            slow_body_ms: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    pub fn clear(&self) {
        for a in [
            &self.error_5xx_per_mille,
            &self.timeout_per_mille,
            &self.malformed_per_mille,
            &self.rate_limit_per_mille,
            &self.truncate_per_mille,
            &self.fail_next,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        self.delay_ms.store(0, Ordering::Relaxed);
        self.slow_body_ms.store(0, Ordering::Relaxed);
    }

    fn roll(&self, per_mille: &AtomicU32) -> bool {
        let p = per_mille.load(Ordering::Relaxed);
        let hit = p > 0 && self.rng.lock().random_range(0..1000) < p;
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

/// Requests seen, per `METHOD /route` (the route pattern, not the concrete path).
#[derive(Default)]
pub struct RequestLog {
    counts: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl RequestLog {
    pub fn count(&self, endpoint: &str) -> u64 {
        self.counts.lock().get(endpoint).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn all(&self) -> BTreeMap<String, u64> {
        self.counts.lock().clone()
    }
}

pub struct FakeServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub requests: Arc<RequestLog>,
    pub faults: Arc<Faults>,
    shutdown: CancellationToken,
}

impl FakeServer {
    /// Binds `127.0.0.1:0` (or `addr`) and serves `router` behind the counting and fault layers.
    pub async fn start(
        name: &'static str,
        router: Router,
        faults: Arc<Faults>,
    ) -> std::io::Result<FakeServer> {
        Self::start_on(
            name,
            "127.0.0.1:0".parse().expect("literal address"),
            router,
            faults,
        )
        .await
    }

    pub async fn start_on(
        name: &'static str,
        addr: SocketAddr,
        router: Router,
        faults: Arc<Faults>,
    ) -> std::io::Result<FakeServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(RequestLog::default());
        let shutdown = CancellationToken::new();
        let (log, f) = (requests.clone(), faults.clone());
        let app = router.layer(middleware::from_fn(move |req: Request, next: Next| {
            let (log, f) = (log.clone(), f.clone());
            async move { fault_layer(log, f, req, next).await }
        }));
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(FakeServer {
            name,
            addr,
            requests,
            faults,
            shutdown,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn fault_layer(log: Arc<RequestLog>, f: Arc<Faults>, req: Request, next: Next) -> Response {
    let endpoint = format!(
        "{} {}",
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string())
    );
    *log.counts.lock().entry(endpoint).or_default() += 1;
    log.total.fetch_add(1, Ordering::Relaxed);
    let delay = f.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = f
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if forced {
        f.injected.fetch_add(1, Ordering::Relaxed);
    }
    if forced || f.roll(&f.error_5xx_per_mille) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "simulated upstream failure\n",
        )
            .into_response();
    }
    if f.roll(&f.rate_limit_per_mille) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "simulated rate limit\n",
        )
            .into_response();
    }
    if f.roll(&f.timeout_per_mille) {
        tokio::time::sleep(Duration::from_millis(f.hang_ms.load(Ordering::Relaxed))).await;
    }
    let malformed = f.roll(&f.malformed_per_mille);
    let truncated = f.roll(&f.truncate_per_mille);
    let slow = Duration::from_millis(f.slow_body_ms.load(Ordering::Relaxed));
    let resp = next.run(req).await;
    if !malformed && !truncated && slow.is_zero() {
        return resp;
    }
    if !slow.is_zero() {
        f.injected.fetch_add(1, Ordering::Relaxed);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if malformed {
        // Well framed, but half a document.
        let cut = bytes.slice(..bytes.len() / 2);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(cut));
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, bytes.len().into());
    let pieces = if truncated { 2 } else { 8 };
    let step = bytes.len().div_ceil(pieces).max(1);
    let chunks: Vec<bytes::Bytes> = (0..bytes.len())
        .step_by(step)
        .map(|i| bytes.slice(i..(i + step).min(bytes.len())))
        .collect();
    let pause = slow / pieces as u32;
    let stream =
        futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if truncated && i > 0 {
                // The error makes the server abort the connection short of Content-Length.
                return Err(std::io::Error::other("simulated broken connection"));
            }
            Ok(c)
        });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// `<shared>/research-data/<sub>`: the real payloads the fakes and parsers are checked
/// against. `<shared>` is `$DEVMETRICS_SHARED_DIR`, or `../shared` beside the project. When it
/// is absent this prints why and returns `None`, so the conformance tests skip on a fresh
/// clone; with `DEVMETRICS_REQUIRE_SHARED=1` (CI) it panics instead.
pub fn research_dir(sub: &str) -> Option<std::path::PathBuf> {
    let shared = std::env::var_os("DEVMETRICS_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("research-data").join(sub);
    if dir.exists() {
        return Some(dir);
    }
    if std::env::var("DEVMETRICS_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "{} is missing and DEVMETRICS_REQUIRE_SHARED=1 (set DEVMETRICS_SHARED_DIR to the shared/ folder)",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: {} is absent (conformance data from ../shared)",
        dir.display()
    );
    None
}

/// A deterministic generator for fakes' data.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn fake() -> FakeServer {
        let router = Router::new().route(
            "/items/{id}",
            get(|| async { "{\"ok\":true,\"pad\":\"xxxxxxxx\"}" }),
        );
        FakeServer::start("test", router, Faults::new(7))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn counts_requests_per_route_pattern() {
        let f = fake().await;
        for i in 0..3 {
            reqwest::get(format!("{}/items/{i}", f.base_url()))
                .await
                .unwrap();
        }
        assert_eq!(f.requests.count("GET /items/{id}"), 3);
        assert_eq!(f.requests.total(), 3);
    }

    #[tokio::test]
    async fn fault_knobs_apply_and_clear() {
        let f = fake().await;
        let url = format!("{}/items/1", f.base_url());
        f.faults.fail_next.store(2, Ordering::Relaxed);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 503);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 503);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
        f.faults.rate_limit_per_mille.store(1000, Ordering::Relaxed);
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        f.faults.clear();
        f.faults.malformed_per_mille.store(1000, Ordering::Relaxed);
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).is_err(),
            "{body}"
        );
        f.faults.clear();
        f.faults.timeout_per_mille.store(1000, Ordering::Relaxed);
        f.faults.hang_ms.store(5_000, Ordering::Relaxed);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        assert!(client.get(&url).send().await.unwrap_err().is_timeout());
    }

    #[tokio::test]
    async fn seeded_faults_replay_identically() {
        let draw = |seed| {
            let f = Faults::new(seed);
            f.error_5xx_per_mille.store(300, Ordering::Relaxed);
            (0..50)
                .map(|_| f.roll(&f.error_5xx_per_mille))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
