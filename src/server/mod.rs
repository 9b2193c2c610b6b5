//! The HTTP surface: router, handlers, and the listener loop (TLS, header timeout, graceful
//! shutdown). Handlers read shared state and the store's in-memory snapshot; none writes
//! metric state except through the queue.

mod pages;
mod status;
pub mod webconfig;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exposition;
use crate::queue::SharedQueue;
use crate::store::SharedStore;
use crate::telemetry::Telemetry;
pub use webconfig::WebSettings;

/// What handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub queue: SharedQueue,
    pub telemetry: Arc<Telemetry>,
    pub leadership: Arc<crate::ha::Leadership>,
    pub ready: AtomicBool,
    /// Concurrent `/metrics` renders allowed (see `MAX_RENDERS`).
    pub renders: Arc<tokio::sync::Semaphore>,
    /// Extra routes mounted by sources (webhooks, compatibility endpoints).
    pub basic_auth: Option<Arc<webconfig::BasicAuth>>,
}

pub type Shared = Arc<AppState>;

/// The whole router; `extra` carries routes that sources add (already bound to their state).
pub fn router(state: Shared, extra: Router<Shared>) -> Router {
    let telemetry_path = state.config.web.telemetry_path.clone();
    let body_limit = state.config.web.max_request_body_bytes as usize;
    let timeout = state.config.web.request_timeout;
    Router::new()
        .route("/", get(status::overview))
        .route("/status/queue", get(status::queue))
        .route("/status/ci", get(status::ci))
        .route("/status/dora", get(status::dora))
        .route("/status/copilot", get(status::copilot))
        .route(&telemetry_path, get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/healthz", get(pages::healthz))
        .merge(extra)
        .layer(middleware::from_fn_with_state(state.clone(), basic_auth))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// Only the receivers (and `/livez`), for a separate webhook listener: `/metrics` and the
/// status pages are not reachable there.
pub fn webhook_router(state: Shared, routes: Router<Shared>) -> Router {
    let body_limit = state.config.web.max_request_body_bytes as usize;
    let timeout = state.config.web.request_timeout;
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .merge(routes)
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// Ready once started and while storage can persist; a 503 says why, so an operator (or a
/// probe's log) sees a full disk rather than a bare "not ready".
async fn readyz(State(s): State<Shared>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    match s.store.health() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        // A shared store apart from the local queue: deliveries are still taken and wait in
        // the queue until the store is back, so the replica stays in the load balancer.
        Err(why) if s.config.storage.backend == crate::config::StorageBackend::Redis => (
            StatusCode::OK,
            format!("ready, degraded: the shared store cannot persist ({why}); deliveries wait in the local queue\n"),
        )
            .into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage cannot persist: {why}\n"),
        )
            .into_response(),
    }
}

/// Routes that authenticate themselves (webhook signatures) skip basic auth: the sender
/// cannot be given a password, and the signature is the stronger check.
const SELF_AUTHENTICATED: &[&str] = &[
    "/webhooks/",
    "/webhook",
    "/api/github",
    "/api/jira",
    "/api/deployments",
];

async fn basic_auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Some(auth) = &s.basic_auth else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if SELF_AUTHENTICATED.iter().any(|p| path.starts_with(p)) {
        return next.run(req).await;
    }
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    if let Some((user, pass)) = creds.as_deref().and_then(|c| c.split_once(':')) {
        let (auth, user, pass) = (auth.clone(), user.to_string(), pass.to_string());
        // bcrypt takes tens of milliseconds; keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || auth.check(&user, &pass))
            .await
            .unwrap_or(false);
        if ok {
            return next.run(req).await;
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"devmetrics\"")],
        "Unauthorized\n",
    )
        .into_response()
}

async fn record(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Only routes we declared become label values; everything else is "other", so a scanner
    // cannot grow the label set.
    let route: &'static str = match req.extensions().get::<MatchedPath>().map(|m| m.as_str()) {
        Some(p) if p == s.config.web.telemetry_path => "/metrics",
        Some(p) => KNOWN_ROUTES
            .iter()
            .find(|r| **r == p)
            .copied()
            .unwrap_or("other"),
        None => "other",
    };
    let resp = next.run(req).await;
    s.telemetry
        .http_request(route, resp.status().as_u16(), started.elapsed());
    resp
}

const KNOWN_ROUTES: &[&str] = &[
    "/",
    "/status/queue",
    "/status/ci",
    "/status/dora",
    "/status/copilot",
    "/livez",
    "/readyz",
    "/healthz",
    "/health",
    "/webhooks/github",
    "/webhook",
    "/api/github",
    "/webhooks/jira",
    "/api/jira",
    "/api/deployments",
];

/// Concurrent `/metrics` renders; Prometheus HA pairs and a few humans fit well within it.
pub const MAX_RENDERS: usize = 8;

/// Bytes handed to hyper per chunk while rendering; the body streams, so a million series
/// never sit in memory as one buffer.
const CHUNK: usize = 128 * 1024;

struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// A scraper that stops reading must not pin a blocking thread and a snapshot forever.
    send_timeout: Duration,
    rt: tokio::runtime::Handle,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.rt
            .block_on(self.tx.send_timeout(Ok(chunk), self.send_timeout))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "scraper went away or stalled",
                )
            })
    }
}

/// HTTP/2 streams one connection may have open at once.
const HTTP2_MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may reset before they were served, before its connection is cut.
const HTTP2_MAX_PENDING_RESETS: usize = 20;

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let h = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let (format, gzip) = exposition::negotiate(h(header::ACCEPT), h(header::ACCEPT_ENCODING));
    // Renders in flight are capped: each holds a blocking thread and a snapshot.
    let Ok(permit) = s.renders.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent scrapes\n",
        )
            .into_response();
    };
    let mut scopes = s.store.snapshot().scopes;
    scopes.push(Arc::new(s.telemetry.scope().await));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let telemetry = s.telemetry.clone();
    let send_timeout = s.config.web.request_timeout;
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = Instant::now();
        let mut sink = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
            send_timeout,
            rt: rt.clone(),
        };
        let result = if gzip {
            exposition::render_gzip(&scopes, format, &mut sink).and_then(|used| {
                telemetry.rendered_gzip(format, used);
                sink.flush()
            })
        } else {
            exposition::render(&scopes, format, &mut sink).and_then(|()| sink.flush())
        };
        match result {
            Ok(()) => telemetry.rendered(format.as_str(), started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                tracing::error!(error = %e, "rendering /metrics failed");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    if gzip {
        headers.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    headers.insert(
        header::VARY,
        header::HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    resp
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting and waits up to
/// `drain` for in-flight requests to finish.
/// What every connection of a listener is held to.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Time to send a request's headers, and the first byte of a new connection.
    pub read_header_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Arc<WebSettings>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let read_header_timeout = limits.read_header_timeout;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let headers = Arc::new(settings.headers.clone());
    let router = router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let headers = headers.clone();
        async move {
            let mut resp = next.run(req).await;
            for (k, v) in headers.iter() {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
            resp
        }
    }));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the cap a connection is closed at once: held sockets, not requests, are what
        // a flood of idle connections exhausts.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: web.max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(read_header_timeout)
            .max_buf_size(64 * 1024);
        // Explicit HTTP/2 limits: streams at once per connection, and streams a client may
        // reset before they are served (rapid reset) before the connection is cut.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS));
        let builder = if settings.http2 {
            builder
        } else {
            builder.http1_only()
        };
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // hyper's header timeout starts with the first byte: a connection that never sends
            // one would be held forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(read_header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(read_header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: in-flight requests did not finish in time");
    }
}
