//! Credentials: a personal or fine-grained token as it is, or a GitHub App's installation
//! token, exchanged with an App JWT, renewed before it expires, and kept in the store's kv.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::classify::message_of;
use super::{Client, Error, rest_headers};
use crate::config::SecretSource;
use crate::sources::github::config::Auth;
use crate::sources::github::wire;

/// Installation tokens, kept until they expire: GitHub ties an ETag to the token that got
/// it, so a restart that exchanged a new token would find every cached ETag stale.
const TOKEN_NS: &str = "github.token";
/// A token is renewed this long before GitHub says it expires.
const TOKEN_MARGIN: i64 = 300;
/// A clock this far from GitHub's is corrected; the JWT's own minute of slack covers less.
const SKEW_TOLERANCE: i64 = 30;

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct CachedToken {
    token: String,
    expires_at: i64,
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

/// An App JWT signed with the key `key` holds, read afresh so a rotated key takes effect.
fn signed_jwt(app_id: u64, key: &SecretSource, now: i64) -> Result<String, Error> {
    let pem = key
        .read()
        .map_err(|e| Error::Auth(format!("reading the App private key: {e}")))?;
    app_jwt(app_id, pem.expose().as_bytes(), now)
}

impl Client {
    /// The `authorization` header of a request on the org's behalf.
    pub(super) async fn authorization(&self) -> Result<String, Error> {
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
                let now = self.github_now();
                let fresh = |t: &CachedToken| t.expires_at - TOKEN_MARGIN > now;
                if let Some(t) = cached.as_ref()
                    && fresh(t)
                {
                    return Ok(format!("token {}", t.token));
                }
                let kv_key = self.token_key(*installation_id);
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
                let tok = self
                    .exchange(*installation_id, |now| signed_jwt(*app_id, key, now))
                    .await?;
                let now = self.github_now();
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

    /// The `authorization` header of a request as the App itself, for what belongs to the
    /// App rather than to an installation (its own webhook).
    pub(super) fn app_authorization(&self) -> Result<String, Error> {
        let Auth::App { app_id, key, .. } = &self.auth else {
            return Err(Error::Auth(
                "the App's own webhook needs App credentials (app_id and a private key)".into(),
            ));
        };
        let jwt = signed_jwt(*app_id, key, self.github_now())?;
        Ok(format!("Bearer {jwt}"))
    }

    /// Now by GitHub's clock, as far as a refused exchange has told us.
    fn github_now(&self) -> i64 {
        crate::clock::now_secs() + self.skew.load(Ordering::Relaxed)
    }

    /// Learns GitHub's clock from the `Date` of an answer refusing a JWT. True when it moved
    /// by more than the tolerance, so that a JWT signed again may now be accepted.
    fn learn_skew(&self, headers: &reqwest::header::HeaderMap) -> bool {
        let Some(theirs) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            return false;
        };
        let skew = theirs.as_secs() as i64 - crate::clock::now_secs();
        let known = self.skew.load(Ordering::Relaxed);
        if (skew - known).abs() <= SKEW_TOLERANCE {
            return false;
        }
        tracing::warn!(
            org = %self.org,
            skew_seconds = skew,
            "this host's clock differs from GitHub's; App JWTs follow GitHub's clock from now on"
        );
        self.skew.store(skew, Ordering::Relaxed);
        true
    }

    /// Drops a token GitHub refused (revoked or expired early), here and in the kv, so the
    /// next request exchanges a new one.
    pub(super) async fn forget_token(&self) -> Result<(), Error> {
        *self.token.lock().await = None;
        if let Auth::App {
            installation_id, ..
        } = &self.auth
        {
            self.store
                .kv_delete(TOKEN_NS, &self.token_key(*installation_id))
                .await
                .map_err(|e| Error::Store(e.to_string()))?;
        }
        Ok(())
    }

    /// Tokens are kept per server and installation: one installation id may exist on
    /// GitHub.com and on a GHES alike.
    fn token_key(&self, installation_id: u64) -> String {
        format!("{}|{installation_id}", self.base)
    }

    /// `POST {base}/app/installations/{id}/access_tokens`, on the org's own base URL so GHES
    /// and GHE.com exchange tokens with their own server.
    /// `jwt` signs an App JWT for a time by GitHub's clock: a 401 whose `Date` shows this
    /// host's clock off by more than [`SKEW_TOLERANCE`] is tried once more with the clock
    /// corrected (a JWT issued "in the future" or already expired by GitHub's clock).
    async fn exchange(
        &self,
        installation_id: u64,
        jwt: impl Fn(i64) -> Result<String, Error>,
    ) -> Result<CachedToken, Error> {
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            self.base
        );
        // Retried like any request: a 5xx or a dropped connection says nothing about the
        // credentials. A 4xx does.
        let mut attempt = 0u32;
        let mut resynced = false;
        loop {
            attempt += 1;
            let jwt = jwt(self.github_now())?;
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
            if status == 401 && !resynced && self.learn_skew(r.headers()) {
                resynced = true;
                continue;
            }
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
                expires_at: wire::parse_time(&t.expires_at).unwrap_or(self.github_now() + 600),
                token: t.token,
            });
        }
    }
}
