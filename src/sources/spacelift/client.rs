//! The Spacelift API client: API key → JWT through the `apiKeyUser` mutation, refreshed
//! before it expires and again when the API calls it unauthorized; GraphQL errors in an
//! HTTP 200 answer are errors.

use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{self, Document};
use crate::config::{Secret, SecretSource};
use crate::telemetry::Telemetry;

/// A token this close to `validUntil` is replaced before use, as the replaced exporter did.
const REFRESH_PADDING_SECS: i64 = 30;
const CLIENT_TYPE: &str = "prometheus-exporter";
const UPSTREAM: &str = "spacelift";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Spacelift answered HTTP {status}")]
    Status { status: u16 },
    #[error("Spacelift rejected the credentials or token: {message}")]
    Unauthorized { message: String },
    #[error("not available for this API key (machine session): {message}")]
    Unsupported { message: String },
    /// The schema lacks a field we select: a bug on our side or a Spacelift release we do
    /// not support, never a tier limitation.
    #[error("Spacelift's schema does not match the query: {message}")]
    Schema { message: String },
    #[error("Spacelift GraphQL error: {message}")]
    GraphQl { message: String },
    #[error("decoding the Spacelift answer: {message}")]
    Decode { message: String },
    #[error("request to Spacelift failed{}: {message}", if *.timeout { " (timeout)" } else { "" })]
    Transport { message: String, timeout: bool },
    #[error("reading the API key secret file: {0}")]
    Secret(String),
    #[error("scrape timeout of {0:?} reached")]
    Timeout(Duration),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Status { .. } => "http_status",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Unsupported { .. } => "unsupported",
            Error::Schema { .. } => "schema",
            Error::GraphQl { .. } => "graphql",
            Error::Decode { .. } => "decode",
            Error::Transport { timeout: true, .. } | Error::Timeout(_) => "timeout",
            Error::Transport { .. } => "transport",
            Error::Secret(_) => "secret",
        }
    }

    fn from_graphql(errors: &[wire::GraphQlError]) -> Error {
        let message = errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let lower = message.to_ascii_lowercase();
        // The replaced exporter only matched lowercase "unauthorized"; we match any case and
        // "unauthenticated" too, so a server-side expiry always gets one refresh.
        if lower.contains("unauthorized") || lower.contains("unauthenticated") {
            Error::Unauthorized { message }
        } else if lower.contains("not available for machine sessions") {
            Error::Unsupported { message }
        } else if lower.contains("cannot query field") {
            Error::Schema { message }
        } else {
            Error::GraphQl { message }
        }
    }
}

struct Token {
    jwt: Secret,
    valid_until: i64,
    generation: u64,
}

pub struct Client {
    http: reqwest::Client,
    url: String,
    key_id: String,
    secret: SecretSource,
    /// Held across an exchange, so concurrent groups needing a token cause one exchange.
    token: tokio::sync::Mutex<Option<Token>>,
    telemetry: Arc<Telemetry>,
}

impl Client {
    pub fn new(
        endpoint: &str,
        key_id: &str,
        secret: SecretSource,
        timeout: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            // A backstop only: the poller's deadline over the whole scrape fires first.
            .timeout(timeout + Duration::from_secs(1))
            .user_agent(concat!("devmetrics/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Transport {
                message: e.to_string(),
                timeout: false,
            })?;
        Ok(Client {
            http,
            url: format!("{}/graphql", endpoint.trim_end_matches('/')),
            key_id: key_id.to_string(),
            secret,
            token: tokio::sync::Mutex::new(None),
            telemetry,
        })
    }

    /// Runs one document; `endpoint` is the bounded telemetry label for it.
    pub async fn query<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        doc: Document,
        variables: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        let (jwt, generation) = self.bearer(None).await?;
        match self.send(endpoint, doc, variables.clone(), &jwt).await {
            Err(Error::Unauthorized { message }) => {
                tracing::warn!(operation = doc.operation, %message, "Spacelift token refused; exchanging the API key again");
                let (jwt, _) = self.bearer(Some(generation)).await?;
                self.send(endpoint, doc, variables, &jwt).await
            }
            other => other,
        }
    }

    /// A valid token: the cached one unless it is within the padding of `validUntil`, or
    /// it is generation `stale` (refused by the API).
    async fn bearer(&self, stale: Option<u64>) -> Result<(Secret, u64), Error> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            let fresh = crate::clock::now_secs() + REFRESH_PADDING_SECS < t.valid_until;
            if fresh && stale != Some(t.generation) {
                return Ok((t.jwt.clone(), t.generation));
            }
        }
        let generation = guard.as_ref().map(|t| t.generation + 1).unwrap_or(1);
        let user = self.exchange().await?;
        let jwt = Secret::new(user.jwt);
        *guard = Some(Token {
            jwt: jwt.clone(),
            valid_until: user.valid_until,
            generation,
        });
        Ok((jwt, generation))
    }

    async fn exchange(&self) -> Result<wire::ApiKeyUser, Error> {
        // Re-read every time so a rotated secret file is picked up without a restart.
        let secret = self
            .secret
            .read()
            .map_err(|e| Error::Secret(e.to_string()))?;
        let body = wire::Request {
            query: wire::API_KEY_USER,
            variables: Some(serde_json::json!({
                "id": self.key_id,
                "secret": secret.expose().trim(),
            })),
            operation_name: None,
        };
        let req = self.http.post(&self.url).json(&body);
        let data: wire::ApiKeyUserData = self.execute("api_key_user", req).await?;
        data.api_key_user.ok_or_else(|| Error::Unauthorized {
            message: "apiKeyUser returned null".into(),
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        doc: Document,
        variables: Option<serde_json::Value>,
        jwt: &Secret,
    ) -> Result<T, Error> {
        let body = wire::Request {
            query: doc.query,
            variables,
            operation_name: Some(doc.operation),
        };
        let req = self
            .http
            .post(&self.url)
            .bearer_auth(jwt.expose())
            .header("Spacelift-Client-Type", CLIENT_TYPE)
            .json(&body);
        self.execute(endpoint, req).await
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = self.execute_inner(req).await;
        let status = match &result {
            Ok((code, _)) => code.to_string(),
            Err((Some(code), _)) => code.to_string(),
            Err((None, e)) => e.kind().to_string(),
        };
        self.telemetry
            .upstream_request(UPSTREAM, endpoint, &status, started.elapsed());
        result.map(|(_, v)| v).map_err(|(_, e)| e)
    }

    async fn execute_inner<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, T), (Option<u16>, Error)> {
        let transport = |e: reqwest::Error| Error::Transport {
            timeout: e.is_timeout(),
            message: without_url(&e),
        };
        let resp = req.send().await.map_err(|e| (None, transport(e)))?;
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| (Some(code), transport(e)))?;
        if code == 401 || code == 403 {
            return Err((
                Some(code),
                Error::Unauthorized {
                    message: format!("HTTP {code}"),
                },
            ));
        }
        if !(200..300).contains(&code) {
            return Err((Some(code), Error::Status { status: code }));
        }
        let decode = |e: serde_json::Error| {
            (
                Some(code),
                Error::Decode {
                    message: e.to_string(),
                },
            )
        };
        // Errors first: with errors, `data` may be null or partial in ways T cannot hold.
        let parsed: wire::Response<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(decode)?;
        if !parsed.errors.is_empty() {
            return Err((Some(code), Error::from_graphql(&parsed.errors)));
        }
        match parsed.data {
            Some(d) if !d.is_null() => Ok((code, serde_json::from_value(d).map_err(decode)?)),
            _ => Err((
                Some(code),
                Error::Decode {
                    message: "answer has neither data nor errors".into(),
                },
            )),
        }
    }
}

/// reqwest's Display includes the URL; ours carries no secret, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_errors_are_classified() {
        let e = |m: &str| {
            Error::from_graphql(&[wire::GraphQlError {
                message: m.to_string(),
            }])
        };
        assert_eq!(e("unauthorized").kind(), "unauthorized");
        assert_eq!(e("Unauthorized").kind(), "unauthorized");
        assert_eq!(
            e("not available for machine sessions").kind(),
            "unsupported"
        );
        assert_eq!(
            e("Cannot query field \"usedSeats\" on type \"Usage\".").kind(),
            "schema",
            "a schema mismatch is an error, not a tier limitation"
        );
        assert_eq!(e("boom").kind(), "graphql");
    }
}
