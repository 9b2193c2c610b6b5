//! The GitHub REST and GraphQL client shared by every GitHub-facing source: App or token
//! auth per org, Link pagination, conditional requests backed by the store's kv (so a 304
//! survives restarts), a rate-limit budget per installation, retries, and cancellable waits.
//!
//! Here: the client and its request loop. Beside it: the budget, credentials, the ETag
//! cache, what an answer means, and the typed calls.

mod auth;
mod budget;
mod classify;
mod endpoints;
mod etag;

use bytes::Bytes;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use auth::app_jwt;
pub use budget::{Budget, BudgetState, Budgets, Resource};
pub use endpoints::{graphql_url, next_link};

use super::config::{Auth, GithubConfig, OrgConfig, RateLimitConfig, RetryConfig};
use crate::store::SharedStore;
use crate::telemetry::Telemetry;
use auth::CachedToken;
use classify::{Answer, Outcome, classify};
use etag::EtagCache;

const USER_AGENT: &str = concat!("devmetrics/", env!("CARGO_PKG_VERSION"));
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
    /// Every value [`Error::kind`] returns, for kinds that travel as text (a job's outcome
    /// read back by the leader) and must become a bounded label again.
    pub const KINDS: &'static [&'static str] = &[
        "http_5xx",
        "not_found",
        "http_4xx",
        "network",
        "timeout",
        "rate_limited",
        "secondary_limit",
        "auth",
        "decode",
        "stats_pending",
        "cancelled",
        "store",
    ];

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

/// One HTTP answer after conditional-request handling: a 304 comes back as the cached 200.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub body: Bytes,
    pub next: Option<String>,
    pub not_modified: bool,
}

/// Request counts since start, for cost accounting and tests.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    /// Answers that spent REST's or GraphQL's primary limit (everything but 304s and
    /// searches).
    pub spent: AtomicU64,
    /// Answers that spent search's own limit.
    pub search: AtomicU64,
    pub not_modified: AtomicU64,
}

pub struct Client {
    org: String,
    base: String,
    http: reqwest::Client,
    auth: Auth,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// GitHub's clock minus ours, in seconds, learned from the `Date` of a refused token
    /// exchange: App JWTs and token expiry are judged by GitHub's clock.
    skew: std::sync::atomic::AtomicI64,
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
            skew: Default::default(),
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

    /// A path under the base URL, or a full URL as is (a `next` link).
    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    /// Drops the cached page of `path_or_url`, so its next request is unconditional.
    pub(super) async fn forget_cached(&self, path_or_url: &str) -> Result<(), Error> {
        EtagCache::new(&self.store, &self.org, &self.url(path_or_url))
            .forget()
            .await
    }

    /// The request loop: waits on the budget, sends, and does what `classify` makes of the
    /// answer. A `post` body is a GraphQL query: GraphQL is all that posts through here, and
    /// it has a budget of its own.
    async fn request(
        &self,
        path_or_url: &str,
        post: Option<Bytes>,
        endpoint: &'static str,
        conditional: bool,
    ) -> Result<Page, Error> {
        let url = self.url(path_or_url);
        let graphql = post.is_some();
        let cache = EtagCache::new(&self.store, &self.org, &url);
        let cached = if conditional {
            cache.load().await?
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
                graphql,
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
            if let Some(c) = &cached {
                req = req.header("if-none-match", c.etag.as_str());
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
            let search = headers
                .get("x-ratelimit-resource")
                .is_some_and(|v| v.as_bytes() == b"search");
            if search {
                self.counts.search.fetch_add(1, Ordering::Relaxed);
            } else if status != 304 {
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
            let answer = Answer::new(status, &headers, &body, graphql);
            match classify(&answer, crate::clock::now_secs()) {
                Outcome::Success => {
                    let next = next_link(&headers);
                    if conditional
                        && status == 200
                        && let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok())
                    {
                        cache.save(etag, next.as_deref(), &body).await?;
                    }
                    return Ok(Page {
                        status,
                        body,
                        next,
                        not_modified: false,
                    });
                }
                Outcome::NotModified => {
                    self.counts.not_modified.fetch_add(1, Ordering::Relaxed);
                    return match cached {
                        Some(c) => Ok(c.replay(&headers)),
                        None => Err(Error::Status {
                            status,
                            endpoint,
                            message: "304 without a cached body".into(),
                        }),
                    };
                }
                Outcome::Garbled => {
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Decode {
                            endpoint,
                            message: "the answer is not valid JSON".into(),
                        });
                    }
                    self.wait(self.backoff(attempt)).await?;
                }
                Outcome::GraphqlLimited => {
                    let reset_at = self.budget.graphql_refused(crate::clock::now_secs());
                    return Err(Error::RateLimited { reset_at });
                }
                Outcome::SecondaryLimit { retry_after } => {
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
                }
                Outcome::PrimaryLimit { reset_at } => {
                    reset_waits += 1;
                    if reset_waits > MAX_RESET_WAITS {
                        return Err(Error::RateLimited { reset_at });
                    }
                    let wait =
                        Duration::from_secs((reset_at - crate::clock::now_secs()).max(1) as u64)
                            + self.rate.reset_buffer;
                    tracing::warn!(org = %self.org, endpoint, wait_s = wait.as_secs(), "GitHub primary rate limit exhausted; waiting for the reset");
                    self.wait(wait).await?;
                    attempt -= 1;
                }
                Outcome::ServerError { message } => {
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::Status {
                            status,
                            endpoint,
                            message,
                        });
                    }
                    self.wait(self.backoff(attempt)).await?;
                }
                Outcome::Unauthorized { message } => {
                    self.forget_token().await?;
                    if attempt >= self.retry.max_attempts.min(2) {
                        return Err(Error::Status {
                            status,
                            endpoint,
                            message,
                        });
                    }
                }
                Outcome::Permanent { message } => {
                    return Err(Error::Status {
                        status,
                        endpoint,
                        message,
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
