//! The GitHub REST client shared by every GitHub-facing source: App or token auth per org,
//! Link pagination, conditional requests backed by the store's kv (so a 304 survives
//! restarts), a rate-limit budget per installation, retries, and cancellable waits.

use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::config::{Auth, GithubConfig, OrgConfig, RateLimitConfig, RetryConfig};
use super::wire;
use crate::store::SharedStore;
use crate::telemetry::Telemetry;

const ETAG_NS: &str = "github.etag";
/// Installation tokens, kept until they expire: GitHub ties an ETag to the token that got
/// it, so a restart that exchanged a new token would find every cached ETag stale.
const TOKEN_NS: &str = "github.token";
const USER_AGENT: &str = concat!("devmetrics/", env!("CARGO_PKG_VERSION"));
/// A token is renewed this long before GitHub says it expires.
const TOKEN_MARGIN: i64 = 300;
/// Waits for a primary reset, per request, before giving up.
const MAX_RESET_WAITS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GitHub answered {status} for {endpoint}: {message}")]
    Status {
        status: u16,
        endpoint: &'static str,
        message: String,
    },
    #[error("network error calling {endpoint}: {message}")]
    Network {
        endpoint: &'static str,
        message: String,
    },
    #[error("request to {endpoint} timed out")]
    Timeout { endpoint: &'static str },
    #[error("primary rate limit exhausted until {reset_at}")]
    RateLimited { reset_at: i64 },
    #[error("secondary rate limit persisted on {endpoint}")]
    SecondaryLimit { endpoint: &'static str },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("decoding {endpoint}: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    #[error("contributor statistics still being computed")]
    StatsPending,
    #[error("cancelled by shutdown")]
    Cancelled,
    #[error("store: {0}")]
    Store(String),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Status { status, .. } if *status >= 500 => "http_5xx",
            Error::Status { status: 404, .. } => "not_found",
            Error::Status { .. } => "http_4xx",
            Error::Network { .. } => "network",
            Error::Timeout { .. } => "timeout",
            Error::RateLimited { .. } => "rate_limited",
            Error::SecondaryLimit { .. } => "secondary_limit",
            Error::Auth(_) => "auth",
            Error::Decode { .. } => "decode",
            Error::StatsPending => "stats_pending",
            Error::Cancelled => "cancelled",
            Error::Store(_) => "store",
        }
    }
}

/// What one installation (or token) may still spend, from the last `x-ratelimit-*` headers.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<BudgetState>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetState {
    pub known: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: i64,
    /// Responses that spent quota (not 304s) and secondary-limit hits, since start.
    pub spent: u64,
    pub secondary_hits: u64,
    /// GraphQL's own primary limit (`x-ratelimit-resource: graphql`).
    pub graphql: Resource,
    /// Until when every worker of the installation pauses after a secondary limit: GitHub
    /// keeps refusing the others' requests too, and counts them against the installation.
    pub secondary_until: Option<Instant>,
}

/// One primary limit, from the last `x-ratelimit-*` headers of its resource.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resource {
    pub known: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: i64,
}

impl Budget {
    pub fn snapshot(&self) -> BudgetState {
        *self.state.lock()
    }

    /// How long to wait before the next request: a secondary-limit pause first; then, for
    /// REST, until the reset when the reserve is reached, and spaced out over the reset
    /// window when running low.
    fn delay(&self, reserve: u32, buffer: Duration, now: i64, graphql: bool) -> Duration {
        let mut s = self.state.lock();
        if let Some(until) = s.secondary_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return left;
            }
            s.secondary_until = None;
        }
        if graphql || !s.known || s.reset_at <= now {
            return Duration::ZERO;
        }
        let left = s.remaining.saturating_sub(u64::from(reserve));
        let until_reset = (s.reset_at - now) as u64;
        if left == 0 {
            return Duration::from_secs(until_reset) + buffer;
        }
        // Claim the request now so concurrent workers do not all see the same remainder.
        s.remaining -= 1;
        if left < s.limit / 10 {
            return Duration::from_secs_f64(until_reset as f64 / left as f64);
        }
        Duration::ZERO
    }

    /// Pauses every worker of the installation for `wait`.
    fn secondary(&self, wait: Duration) {
        let mut s = self.state.lock();
        s.secondary_hits += 1;
        let until = Instant::now() + wait;
        s.secondary_until = Some(s.secondary_until.map_or(until, |u| u.max(until)));
    }

    /// When GraphQL's budget is spent, the time it resets.
    fn graphql_exhausted(&self, now: i64) -> Option<i64> {
        let g = self.state.lock().graphql;
        (g.known && g.remaining == 0 && g.reset_at > now).then_some(g.reset_at)
    }

    fn observe(&self, h: &reqwest::header::HeaderMap, spent: bool) {
        let num = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let resource = h
            .get("x-ratelimit-resource")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("core");
        let mut s = self.state.lock();
        if spent {
            s.spent += 1;
        }
        let (Some(rem), Some(reset)) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
        else {
            return;
        };
        let limit = num("x-ratelimit-limit").map(|l| l.max(0) as u64);
        match resource {
            "core" => {
                s.known = true;
                s.remaining = rem.max(0) as u64;
                s.reset_at = reset;
                if let Some(l) = limit {
                    s.limit = l;
                }
            }
            "graphql" => {
                let g = &mut s.graphql;
                g.known = true;
                g.remaining = rem.max(0) as u64;
                g.reset_at = reset;
                if let Some(l) = limit {
                    g.limit = l;
                }
            }
            _ => {}
        }
    }
}

/// Budgets shared by every client of the same installation or token.
#[derive(Default)]
pub struct Budgets(Mutex<HashMap<String, Arc<Budget>>>);

impl Budgets {
    pub fn get(&self, key: &str) -> Arc<Budget> {
        self.0.lock().entry(key.to_string()).or_default().clone()
    }
}

/// One HTTP answer after conditional-request handling: a 304 comes back as the cached 200.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub body: Bytes,
    pub next: Option<String>,
    pub not_modified: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedToken {
    token: String,
    expires_at: i64,
}

/// Request counts since start, for cost accounting and tests.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    /// Answers that spent primary rate limit (everything but 304s).
    pub spent: AtomicU64,
    pub not_modified: AtomicU64,
}

pub struct Client {
    org: String,
    base: String,
    http: reqwest::Client,
    auth: Auth,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    budget: Arc<Budget>,
    retry: RetryConfig,
    rate: RateLimitConfig,
    shutdown: CancellationToken,
    pub counts: Counts,
}

impl Client {
    pub fn new(
        gh: &GithubConfig,
        org: &OrgConfig,
        store: SharedStore,
        telemetry: Arc<Telemetry>,
        budgets: &Budgets,
        shutdown: CancellationToken,
    ) -> Result<Client, Error> {
        let mut b = reqwest::Client::builder()
            .timeout(gh.request_timeout)
            .connect_timeout(gh.request_timeout.min(Duration::from_secs(10)))
            .user_agent(USER_AGENT);
        if let Some(p) = &gh.proxy_url {
            b = b.proxy(reqwest::Proxy::all(p).map_err(|e| Error::Network {
                endpoint: "proxy",
                message: e.to_string(),
            })?);
        }
        if let Some(ca) = &gh.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::Network {
                endpoint: "ca_file",
                message: format!("{}: {e}", ca.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Network {
                    endpoint: "ca_file",
                    message: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(Error::Network {
                    endpoint: "ca_file",
                    message: format!("{} holds no PEM certificate", ca.display()),
                });
            }
            for cert in certs {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b.build().map_err(|e| Error::Network {
            endpoint: "client",
            message: e.to_string(),
        })?;
        Ok(Client {
            org: org.org.clone(),
            base: org.api_base_url.clone(),
            http,
            auth: org.auth.clone(),
            token: tokio::sync::Mutex::new(None),
            store,
            telemetry,
            budget: budgets.get(&org.auth.budget_key()),
            retry: gh.retry.clone(),
            rate: gh.rate_limit.clone(),
            shutdown,
            counts: Counts::default(),
        })
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Sleeps unless shutdown comes first.
    pub async fn wait(&self, d: Duration) -> Result<(), Error> {
        if d.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.shutdown.cancelled() => Err(Error::Cancelled),
        }
    }

    async fn authorization(&self) -> Result<String, Error> {
        match &self.auth {
            Auth::Token(src) => {
                let t = src
                    .read()
                    .map_err(|e| Error::Auth(format!("reading the token file: {e}")))?;
                Ok(format!("token {}", t.expose()))
            }
            Auth::App {
                app_id,
                installation_id,
                key,
            } => {
                let mut cached = self.token.lock().await;
                let now = crate::clock::now_secs();
                let fresh = |t: &CachedToken| t.expires_at - TOKEN_MARGIN > now;
                if let Some(t) = cached.as_ref()
                    && fresh(t)
                {
                    return Ok(format!("token {}", t.token));
                }
                let kv_key = format!("{}|{installation_id}", self.base);
                let stored = self
                    .store
                    .kv_get(TOKEN_NS, &kv_key)
                    .await
                    .map_err(|e| Error::Store(e.to_string()))?
                    .and_then(|v| serde_json::from_slice::<CachedToken>(&v).ok())
                    .filter(fresh);
                if let Some(t) = stored {
                    let header = format!("token {}", t.token);
                    *cached = Some(t);
                    return Ok(header);
                }
                let pem = key
                    .read()
                    .map_err(|e| Error::Auth(format!("reading the App private key: {e}")))?;
                let jwt = app_jwt(*app_id, pem.expose().as_bytes(), now)?;
                let tok = self.exchange(*installation_id, &jwt).await?;
                let ttl = (tok.expires_at - now).max(1) as u64;
                self.store
                    .kv_put(
                        TOKEN_NS,
                        &kv_key,
                        serde_json::to_vec(&tok).expect("token serializes"),
                        Some(Duration::from_secs(ttl)),
                    )
                    .await
                    .map_err(|e| Error::Store(e.to_string()))?;
                let header = format!("token {}", tok.token);
                *cached = Some(tok);
                Ok(header)
            }
        }
    }

    /// `POST {base}/app/installations/{id}/access_tokens`, on the org's own base URL so GHES
    /// and GHE.com exchange tokens with their own server.
    async fn exchange(&self, installation_id: u64, jwt: &str) -> Result<CachedToken, Error> {
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            self.base
        );
        // Retried like any request: a 5xx or a dropped connection says nothing about the
        // credentials. A 4xx does.
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            let r = self
                .http
                .post(&url)
                .headers(rest_headers(format!("Bearer {jwt}")))
                .send()
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let kind = if e.is_timeout() { "timeout" } else { "network" };
                    self.telemetry.upstream_request(
                        "github",
                        "installation_token",
                        kind,
                        started.elapsed(),
                    );
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Auth(format!("token exchange failed: {e}")));
                    }
                    self.wait(self.backoff(attempt)).await?;
                    continue;
                }
            };
            let status = r.status().as_u16();
            self.telemetry.upstream_request(
                "github",
                "installation_token",
                &status.to_string(),
                started.elapsed(),
            );
            let body = r.bytes().await.unwrap_or_default();
            if status >= 500 && attempt < self.retry.max_attempts {
                self.wait(self.backoff(attempt)).await?;
                continue;
            }
            if status != 201 && status != 200 {
                return Err(Error::Auth(format!(
                    "token exchange answered {status}: {}",
                    message_of(&body)
                )));
            }
            let t: wire::InstallationToken = serde_json::from_slice(&body)
                .map_err(|e| Error::Auth(format!("token exchange body: {e}")))?;
            return Ok(CachedToken {
                expires_at: wire::parse_time(&t.expires_at)
                    .unwrap_or(crate::clock::now_secs() + 600),
                token: t.token,
            });
        }
    }

    /// One GET of `path_or_url` (a path under the base URL, or a full `next` link), with
    /// retries, rate-limit waits and, when `conditional`, an ETag kept in the store.
    pub async fn get(
        &self,
        path_or_url: &str,
        endpoint: &'static str,
        conditional: bool,
    ) -> Result<Page, Error> {
        self.request(path_or_url, None, endpoint, conditional).await
    }

    /// A GraphQL query (`POST /graphql`, or `/api/graphql` on GHES). GraphQL spends its own
    /// rate limit (`x-ratelimit-resource: graphql`), not the REST one.
    pub async fn graphql<T: DeserializeOwned>(
        &self,
        query: &str,
        variables: serde_json::Value,
        endpoint: &'static str,
    ) -> Result<T, Error> {
        #[derive(serde::Deserialize)]
        struct Answer<T> {
            data: Option<T>,
            #[serde(default)]
            errors: Vec<serde_json::Value>,
        }
        if let Some(reset_at) = self.budget.graphql_exhausted(crate::clock::now_secs()) {
            return Err(Error::RateLimited { reset_at });
        }
        let url = graphql_url(&self.base);
        let body = serde_json::to_vec(&serde_json::json!({"query": query, "variables": variables}))
            .expect("json serializes");
        let page = self
            .request(&url, Some(Bytes::from(body)), endpoint, false)
            .await?;
        let a: Answer<T> = decode(&page.body, endpoint)?;
        // GraphQL's primary limit answers 200 with a RATE_LIMITED error.
        if a.errors
            .iter()
            .any(|e| e.get("type").and_then(|t| t.as_str()) == Some("RATE_LIMITED"))
        {
            let reset_at = self
                .budget
                .graphql_exhausted(crate::clock::now_secs())
                .unwrap_or(crate::clock::now_secs() + 60);
            let mut s = self.budget.state.lock();
            s.graphql.known = true;
            s.graphql.remaining = 0;
            s.graphql.reset_at = reset_at;
            return Err(Error::RateLimited { reset_at });
        }
        match a.data {
            Some(d) if a.errors.is_empty() => Ok(d),
            _ => Err(Error::Decode {
                endpoint,
                message: format!(
                    "GraphQL errors: {}",
                    a.errors
                        .first()
                        .and_then(|e| e.get("message"))
                        .and_then(|m| m.as_str())
                        .unwrap_or("no data")
                ),
            }),
        }
    }

    async fn request(
        &self,
        path_or_url: &str,
        post: Option<Bytes>,
        endpoint: &'static str,
        conditional: bool,
    ) -> Result<Page, Error> {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let cache_key = format!("{}|{}", self.org, url);
        let cached = if conditional {
            self.store
                .kv_get(ETAG_NS, &cache_key)
                .await
                .map_err(|e| Error::Store(e.to_string()))?
                .and_then(|v| split_cached(&v))
        } else {
            None
        };
        let mut attempt = 0u32;
        let mut reset_waits = 0u32;
        let mut secondary = 0u32;
        loop {
            let d = self.budget.delay(
                self.rate.reserve,
                self.rate.reset_buffer,
                crate::clock::now_secs(),
                post.is_some(),
            );
            if d > Duration::from_secs(30) {
                tracing::warn!(org = %self.org, wait_s = d.as_secs(), "GitHub rate limit (reserve reached or secondary-limit pause); waiting");
            }
            self.wait(d).await?;
            let auth = self.authorization().await?;
            let mut req = match &post {
                Some(b) => self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone()),
                None => self.http.get(&url),
            }
            .headers(rest_headers(auth));
            if let Some((etag, _)) = &cached {
                req = req.header("if-none-match", etag.as_str());
            }
            let started = Instant::now();
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
            let res = req.send().await;
            attempt += 1;
            let r = match res {
                Ok(r) => r,
                Err(e) => {
                    let kind = if e.is_timeout() { "timeout" } else { "network" };
                    self.telemetry
                        .upstream_request("github", endpoint, kind, started.elapsed());
                    let err = if e.is_timeout() {
                        Error::Timeout { endpoint }
                    } else {
                        Error::Network {
                            endpoint,
                            message: e.to_string(),
                        }
                    };
                    if attempt >= self.retry.max_attempts {
                        return Err(err);
                    }
                    self.wait(self.backoff(attempt)).await?;
                    continue;
                }
            };
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            self.budget.observe(&headers, status != 304);
            if status != 304 {
                self.counts.spent.fetch_add(1, Ordering::Relaxed);
            }
            let body = match r.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    self.telemetry.upstream_request(
                        "github",
                        endpoint,
                        "network",
                        started.elapsed(),
                    );
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Network {
                            endpoint,
                            message: e.to_string(),
                        });
                    }
                    self.wait(self.backoff(attempt)).await?;
                    continue;
                }
            };
            self.telemetry.upstream_request(
                "github",
                endpoint,
                &status.to_string(),
                started.elapsed(),
            );
            let next = next_link(&headers);
            match status {
                304 => {
                    self.counts.not_modified.fetch_add(1, Ordering::Relaxed);
                    if let Some((_, body)) = cached {
                        // The cached page's own next link was stored with it.
                        let (next, body) = split_next(&body);
                        return Ok(Page {
                            status: 200,
                            body,
                            next: next.or(next_link(&headers)),
                            not_modified: true,
                        });
                    }
                    return Err(Error::Status {
                        status,
                        endpoint,
                        message: "304 without a cached body".into(),
                    });
                }
                200..=299
                    if status != 204
                        && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() =>
                {
                    // A truncated or garbled answer: retried like a transient failure, and
                    // never cached, so its ETag cannot serve a broken body later.
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Decode {
                            endpoint,
                            message: "the answer is not valid JSON".into(),
                        });
                    }
                    self.wait(self.backoff(attempt)).await?;
                }
                200..=299 => {
                    if conditional
                        && status == 200
                        && let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok())
                    {
                        let mut v = Vec::with_capacity(body.len() + 64);
                        v.extend_from_slice(etag.as_bytes());
                        v.push(b'\n');
                        v.extend_from_slice(next.as_deref().unwrap_or("").as_bytes());
                        v.push(b'\n');
                        v.extend_from_slice(&body);
                        self.store
                            .kv_put(
                                ETAG_NS,
                                &cache_key,
                                v,
                                Some(Duration::from_secs(30 * 86_400)),
                            )
                            .await
                            .map_err(|e| Error::Store(e.to_string()))?;
                    }
                    return Ok(Page {
                        status,
                        body,
                        next,
                        not_modified: false,
                    });
                }
                403 | 429 => {
                    let retry_after = headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let msg = message_of(&body);
                    let remaining = headers
                        .get("x-ratelimit-remaining")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok());
                    let is_secondary = msg.to_ascii_lowercase().contains("secondary rate limit")
                        || (retry_after.is_some() && remaining != Some(0))
                        || (status == 429 && remaining != Some(0));
                    if is_secondary {
                        secondary += 1;
                        if secondary > self.retry.max_attempts.max(3) {
                            return Err(Error::SecondaryLimit { endpoint });
                        }
                        let base = Duration::from_secs(retry_after.unwrap_or(0))
                            .max(self.rate.secondary_backoff)
                            * secondary;
                        let jitter = rand::rng().random_range(0.0..0.25);
                        let wait = base.mul_f64(1.0 + jitter);
                        tracing::warn!(org = %self.org, endpoint, wait_s = wait.as_secs_f64(), "GitHub secondary rate limit; every worker of the installation backs off");
                        // The wait happens at the top of the loop, shared with the others.
                        self.budget.secondary(wait);
                        attempt -= 1;
                        continue;
                    }
                    if remaining == Some(0) {
                        let reset = headers
                            .get("x-ratelimit-reset")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(crate::clock::now_secs() + 60);
                        reset_waits += 1;
                        if reset_waits > MAX_RESET_WAITS {
                            return Err(Error::RateLimited { reset_at: reset });
                        }
                        let wait =
                            Duration::from_secs((reset - crate::clock::now_secs()).max(1) as u64)
                                + self.rate.reset_buffer;
                        tracing::warn!(org = %self.org, endpoint, wait_s = wait.as_secs(), "GitHub primary rate limit exhausted; waiting for the reset");
                        self.wait(wait).await?;
                        attempt -= 1;
                        continue;
                    }
                    return Err(Error::Status {
                        status,
                        endpoint,
                        message: msg,
                    });
                }
                s if s >= 500 => {
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Status {
                            status,
                            endpoint,
                            message: message_of(&body),
                        });
                    }
                    self.wait(self.backoff(attempt)).await?;
                }
                401 => {
                    // A revoked or expired token: drop it so the next call exchanges anew.
                    *self.token.lock().await = None;
                    if let Auth::App {
                        installation_id, ..
                    } = &self.auth
                    {
                        self.store
                            .kv_put(
                                TOKEN_NS,
                                &format!("{}|{installation_id}", self.base),
                                Vec::new(),
                                Some(Duration::from_secs(1)),
                            )
                            .await
                            .map_err(|e| Error::Store(e.to_string()))?;
                    }
                    if attempt >= self.retry.max_attempts.min(2) {
                        return Err(Error::Status {
                            status,
                            endpoint,
                            message: message_of(&body),
                        });
                    }
                }
                _ => {
                    return Err(Error::Status {
                        status,
                        endpoint,
                        message: message_of(&body),
                    });
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.retry.max_backoff);
        // Equal jitter: half fixed, half random.
        capped / 2 + capped.mul_f64(rand::rng().random_range(0.0..0.5))
    }

    /// One POST without a body (a webhook redelivery request). No retries: its callers try
    /// again on their next cycle. Returns the status.
    pub async fn post_empty(&self, path: &str, endpoint: &'static str) -> Result<u16, Error> {
        let url = format!("{}{path}", self.base);
        let auth = self.authorization().await?;
        let started = Instant::now();
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        let r = self
            .http
            .post(&url)
            .headers(rest_headers(auth))
            .send()
            .await;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                self.budget.observe(r.headers(), true);
                self.telemetry.upstream_request(
                    "github",
                    endpoint,
                    &status.to_string(),
                    started.elapsed(),
                );
                Ok(status)
            }
            Err(e) => {
                let kind = if e.is_timeout() { "timeout" } else { "network" };
                self.telemetry
                    .upstream_request("github", endpoint, kind, started.elapsed());
                Err(Error::Network {
                    endpoint,
                    message: e.to_string(),
                })
            }
        }
    }

    /// A GET or POST as the GitHub App itself (a JWT, not an installation token), for the
    /// App's own webhook (`/app/hook/...`). No retries: its callers try again next cycle.
    pub async fn as_app(
        &self,
        method: reqwest::Method,
        path_or_url: &str,
        endpoint: &'static str,
    ) -> Result<Page, Error> {
        let Auth::App { app_id, key, .. } = &self.auth else {
            return Err(Error::Auth(
                "the App's own webhook needs App credentials (app_id and a private key)".into(),
            ));
        };
        let pem = key
            .read()
            .map_err(|e| Error::Auth(format!("reading the App private key: {e}")))?;
        let jwt = app_jwt(*app_id, pem.expose().as_bytes(), crate::clock::now_secs())?;
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let started = Instant::now();
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        let r = self
            .http
            .request(method, &url)
            .headers(rest_headers(format!("Bearer {jwt}")))
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() { "timeout" } else { "network" };
                self.telemetry
                    .upstream_request("github", endpoint, kind, started.elapsed());
                return Err(Error::Network {
                    endpoint,
                    message: e.to_string(),
                });
            }
        };
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.unwrap_or_default();
        self.telemetry
            .upstream_request("github", endpoint, &status.to_string(), started.elapsed());
        if !(200..300).contains(&status) {
            return Err(Error::Status {
                status,
                endpoint,
                message: message_of(&body),
            });
        }
        Ok(Page {
            status,
            body,
            next: next_link(&headers),
            not_modified: false,
        })
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        endpoint: &'static str,
        conditional: bool,
    ) -> Result<(T, Page), Error> {
        let page = self.get(path, endpoint, conditional).await?;
        let v = decode(&page.body, endpoint)?;
        Ok((v, page))
    }

    /// Follows `Link: rel="next"` from `path`. `more` sees each page's items and returns
    /// false to stop early (e.g. once a list sorted by time passes the window).
    pub async fn paginate<T: DeserializeOwned>(
        &self,
        path: &str,
        endpoint: &'static str,
        conditional: bool,
        mut more: impl FnMut(&[T]) -> bool,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let page = self.get(&p, endpoint, conditional).await?;
            let items: Vec<T> = decode(&page.body, endpoint)?;
            let go_on = more(&items);
            out.extend(items);
            if go_on {
                next = page.next;
            }
        }
        Ok(out)
    }

    // ── typed methods ───────────────────────────────────────────────────────────────────

    pub async fn org_repos(&self) -> Result<Vec<wire::Repo>, Error> {
        let path = format!("/orgs/{}/repos?type=all&per_page=100", self.org);
        match self.paginate(&path, "org_repos", true, |_| true).await {
            Err(Error::Status { status: 404, .. }) => {
                let path = format!("/users/{}/repos?type=all&per_page=100", self.org);
                self.paginate(&path, "org_repos", true, |_| true).await
            }
            r => r,
        }
    }

    pub async fn commits(
        &self,
        repo: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<wire::Commit>, Error> {
        let path = format!(
            "/repos/{}/{repo}/commits?since={}&until={}&per_page=100",
            self.org,
            wire::format_time(since),
            wire::format_time(until)
        );
        match self.paginate(&path, "commits", false, |_| true).await {
            // 409 "Git Repository is empty".
            Err(Error::Status { status: 409, .. }) => Ok(Vec::new()),
            r => r,
        }
    }

    pub async fn commit_detail(&self, repo: &str, sha: &str) -> Result<wire::CommitDetail, Error> {
        let path = format!("/repos/{}/{repo}/commits/{sha}", self.org);
        Ok(self.get_json(&path, "commit_detail", false).await?.0)
    }

    /// PRs by `updated_at` descending, stopping at the first page that reaches `since`.
    pub async fn pulls_updated_since(
        &self,
        repo: &str,
        since: i64,
    ) -> Result<Vec<wire::Pull>, Error> {
        let path = format!(
            "/repos/{}/{repo}/pulls?state=all&sort=updated&direction=desc&per_page=100",
            self.org
        );
        let mut pulls: Vec<wire::Pull> = self
            .paginate(&path, "pulls", true, |page: &[wire::Pull]| {
                page.last()
                    .and_then(|p| wire::parse_time(&p.updated_at))
                    .is_some_and(|t| t >= since)
            })
            .await?;
        pulls.retain(|p| wire::parse_time(&p.updated_at).is_some_and(|t| t >= since));
        Ok(pulls)
    }

    /// PRs updated since `since` with their reviews, newest first, in one GraphQL query per
    /// 50 PRs instead of a PR page plus one reviews call per PR. A PR with more than 100
    /// reviews gets the rest over REST.
    pub async fn pulls_with_reviews_since(
        &self,
        repo: &str,
        since: i64,
    ) -> Result<(Vec<wire::Pull>, Vec<wire::Review>), Error> {
        const QUERY: &str = "query($owner: String!, $name: String!, $cursor: String) { repository(owner: $owner, name: $name) { pullRequests(first: 50, after: $cursor, orderBy: {field: UPDATED_AT, direction: DESC}) { pageInfo { hasNextPage endCursor } nodes { number createdAt updatedAt mergedAt author { __typename login } reviews(first: 100) { pageInfo { hasNextPage } nodes { author { __typename login } submittedAt state } } } } } }";
        let (mut pulls, mut reviews) = (Vec::new(), Vec::new());
        let mut cursor: Option<String> = None;
        loop {
            let d: wire::GqlRepoData = self
                .graphql(
                    QUERY,
                    serde_json::json!({"owner": self.org, "name": repo, "cursor": cursor}),
                    "graphql_pulls",
                )
                .await?;
            let Some(r) = d.repository else {
                return Err(Error::Status {
                    status: 404,
                    endpoint: "graphql_pulls",
                    message: "repository not found".into(),
                });
            };
            let conn = r.pull_requests;
            let mut past = false;
            for n in conn.nodes {
                if wire::parse_time(&n.updated_at).is_none_or(|t| t < since) {
                    past = true;
                    break;
                }
                let more = n.reviews.page_info.has_next_page;
                if more {
                    reviews.extend(self.reviews(repo, n.number).await?);
                } else {
                    reviews.extend(n.reviews.nodes.into_iter().map(|rv| wire::Review {
                        user: rv.author.map(wire::GqlActor::into_user),
                        submitted_at: rv.submitted_at,
                        state: rv.state,
                    }));
                }
                pulls.push(wire::Pull {
                    number: n.number,
                    user: n.author.map(wire::GqlActor::into_user),
                    created_at: n.created_at,
                    updated_at: n.updated_at,
                    merged_at: n.merged_at,
                });
            }
            if past || !conn.page_info.has_next_page {
                return Ok((pulls, reviews));
            }
            cursor = conn.page_info.end_cursor;
        }
    }

    pub async fn reviews(&self, repo: &str, number: u64) -> Result<Vec<wire::Review>, Error> {
        let path = format!(
            "/repos/{}/{repo}/pulls/{number}/reviews?per_page=100",
            self.org
        );
        self.paginate(&path, "reviews", true, |_| true).await
    }

    /// Issue and PR conversation comments updated since `since`, repo-wide.
    pub async fn issue_comments_since(
        &self,
        repo: &str,
        since: i64,
    ) -> Result<Vec<wire::IssueComment>, Error> {
        let path = format!(
            "/repos/{}/{repo}/issues/comments?since={}&per_page=100",
            self.org,
            wire::format_time(since)
        );
        self.paginate(&path, "issue_comments", false, |_| true)
            .await
    }

    /// The newest item of a list endpoint, conditionally: a cheap "did anything change" probe
    /// whose 304 costs no primary rate limit.
    /// Answers whether the list changed, and the newest `updated_at` on its first page (0
    /// when empty).
    pub async fn probe(&self, path: &str, endpoint: &'static str) -> Result<(bool, i64), Error> {
        #[derive(serde::Deserialize)]
        struct Item {
            updated_at: Option<String>,
        }
        let page = self.get(path, endpoint, true).await?;
        let items: Vec<Item> = decode(&page.body, endpoint)?;
        let newest = items
            .iter()
            .filter_map(|i| i.updated_at.as_deref().and_then(wire::parse_time))
            .max()
            .unwrap_or(0);
        Ok((!page.not_modified, newest))
    }

    /// `/stats/contributors`; 202 ("computing") is retried `retries` times after `delay`,
    /// then reported as [`Error::StatsPending`]. 204 (empty repo) is an empty list.
    pub async fn contributor_stats(
        &self,
        repo: &str,
        retries: u32,
        delay: Duration,
    ) -> Result<Vec<wire::ContributorStats>, Error> {
        let path = format!("/repos/{}/{repo}/stats/contributors", self.org);
        for i in 0..=retries {
            let page = self.get(&path, "contributor_stats", true).await?;
            match page.status {
                202 => {
                    if i < retries {
                        self.wait(delay).await?;
                    }
                }
                204 => return Ok(Vec::new()),
                _ => return decode(&page.body, "contributor_stats"),
            }
        }
        Err(Error::StatsPending)
    }
}

/// GitHub.com and GHE.com serve GraphQL at `{api}/graphql`; GHES at `https://HOST/api/graphql`
/// beside its `/api/v3` REST root.
pub fn graphql_url(base: &str) -> String {
    match base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{base}/graphql"),
    }
}

/// The App JWT: RS256, issued a minute in the past against clock skew, valid 9 minutes.
pub fn app_jwt(app_id: u64, pem: &[u8], now: i64) -> Result<String, Error> {
    #[derive(serde::Serialize)]
    struct Claims {
        iat: i64,
        exp: i64,
        iss: String,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem)
        .map_err(|e| Error::Auth(format!("the App private key is not an RSA PEM: {e}")))?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &Claims {
            iat: now - 60,
            exp: now + 540,
            iss: app_id.to_string(),
        },
        &key,
    )
    .map_err(|e| Error::Auth(format!("signing the App JWT: {e}")))
}

fn decode<T: DeserializeOwned>(body: &[u8], endpoint: &'static str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        endpoint,
        message: e.to_string(),
    })
}

/// GitHub's error bodies carry `message`; anything else is cut short.
fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        message: String,
    }
    match serde_json::from_slice::<M>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(h: &reqwest::header::HeaderMap) -> Option<String> {
    let link = h.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let mut it = part.split(';');
        let url = it.next()?.trim();
        it.any(|p| p.trim() == "rel=\"next\"").then(|| {
            url.trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn split_cached(v: &[u8]) -> Option<(String, Bytes)> {
    let i = v.iter().position(|b| *b == b'\n')?;
    Some((
        String::from_utf8(v[..i].to_vec()).ok()?,
        Bytes::copy_from_slice(&v[i + 1..]),
    ))
}

fn split_next(v: &Bytes) -> (Option<String>, Bytes) {
    match v.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let next = String::from_utf8_lossy(&v[..i]).into_owned();
            ((!next.is_empty()).then_some(next), v.slice(i + 1..))
        }
        None => (None, v.clone()),
    }
}

/// What every GitHub REST request carries: credentials, the media type, and the API version
/// our wire types were written against.
fn rest_headers(authorization: impl AsRef<str>) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(mut v) = reqwest::header::HeaderValue::from_str(authorization.as_ref()) {
        // Kept out of reqwest's and hyper's debug output.
        v.set_sensitive(true);
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    h.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static("application/vnd.github+json"),
    );
    h.insert(
        "x-github-api-version",
        reqwest::header::HeaderValue::from_static("2022-11-28"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "link",
            "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        h.insert(
            "link",
            "<https://a/x?page=1>; rel=\"prev\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn graphql_endpoints() {
        assert_eq!(
            graphql_url("https://api.github.com"),
            "https://api.github.com/graphql"
        );
        assert_eq!(
            graphql_url("https://ghe.example.com/api/v3"),
            "https://ghe.example.com/api/graphql"
        );
        assert_eq!(
            graphql_url("https://api.acme.ghe.com"),
            "https://api.acme.ghe.com/graphql"
        );
    }

    #[test]
    fn budget_waits_for_reset_at_the_reserve() {
        let b = Budget::default();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "100".parse().unwrap());
        h.insert("x-ratelimit-reset", "1100".parse().unwrap());
        b.observe(&h, true);
        assert!(b.delay(100, Duration::from_secs(5), 1000, false) >= Duration::from_secs(105));
        h.insert("x-ratelimit-remaining", "4000".parse().unwrap());
        b.observe(&h, true);
        assert_eq!(b.delay(100, Duration::ZERO, 1000, false), Duration::ZERO);
        // Low but above the reserve: spaced over what is left of the window.
        h.insert("x-ratelimit-remaining", "150".parse().unwrap());
        b.observe(&h, true);
        assert_eq!(
            b.delay(100, Duration::ZERO, 1000, false),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn graphql_has_its_own_budget_and_a_secondary_limit_pauses_everyone() {
        let b = Budget::default();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4000".parse().unwrap());
        h.insert("x-ratelimit-reset", "1100".parse().unwrap());
        b.observe(&h, true);
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-resource", "graphql".parse().unwrap());
        b.observe(&h, true);
        let s = b.snapshot();
        assert_eq!((s.remaining, s.graphql.remaining), (4000, 0));
        assert_eq!(b.graphql_exhausted(1000), Some(1100));
        assert_eq!(b.delay(100, Duration::ZERO, 1000, false), Duration::ZERO);
        b.secondary(Duration::from_secs(30));
        for graphql in [false, true] {
            assert!(b.delay(100, Duration::ZERO, 1000, graphql) > Duration::from_secs(29));
        }
    }
}
