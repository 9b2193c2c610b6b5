//! Credentials: the App's JWT, verified with its public key as GitHub does; installation
//! tokens exchanged for it; a personal access token. [`Credentials::check`] is the one place a request's
//! credentials are judged, so every endpoint refuses them alike.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{GithubSim, json_response, not_found};
use crate::sources::github::wire::format_time;

/// The App the fake trusts. Test-only key pair: see `tests/fixtures/github/README.md`.
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 777;
pub const TEST_APP_KEY_PEM: &str = include_str!("../../../tests/fixtures/github/test-app-key.pem");
const TEST_APP_PUBLIC_PEM: &str =
    include_str!("../../../tests/fixtures/github/test-app-key.pub.pem");

/// The credential an endpoint takes. GitHub serves `/app/...` to the App itself and
/// everything else to an installation or a user, so no endpoint takes both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepts {
    /// An installation token or a personal access token, sent as `token …` or `Bearer …`;
    /// [`Credentials::honours`] says which tokens are current.
    Token,
    /// The App's JWT, sent as `Bearer …`: signed with the App's key, issued by [`APP_ID`],
    /// living at most ten minutes.
    AppJwt,
}

/// A fake that takes credentials: it says which tokens are current, and [`Self::check`]
/// judges every request by the same rules.
pub trait Credentials {
    /// Whether `token` is current: asked only for endpoints that take [`Accepts::Token`].
    fn honours(&self, token: &str) -> bool;

    /// Now by this server's clock, which App JWTs are judged by.
    fn now(&self) -> i64 {
        crate::clock::now_secs()
    }

    /// Judges the request's `Authorization` header: the 401 to answer with, if refused.
    fn check(&self, h: &HeaderMap, accepts: Accepts) -> Option<Response> {
        let v = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let refused = match accepts {
            Accepts::Token => {
                let tok = v
                    .strip_prefix("token ")
                    .or_else(|| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                (!self.honours(tok)).then_some("Bad credentials")
            }
            Accepts::AppJwt => {
                verify_app_jwt(v.strip_prefix("Bearer ").unwrap_or(""), self.now()).err()
            }
        };
        refused
            .map(|message| json_response(StatusCode::UNAUTHORIZED, json!({ "message": message })))
    }
}

/// Verifies an App JWT at `now` by GitHub's clock; `Err` is GitHub's message for why it is
/// refused.
fn verify_app_jwt(jwt: &str, now: i64) -> Result<(), &'static str> {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_APP_PUBLIC_PEM.as_bytes())
        .expect("the committed test public key parses");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_required_spec_claims(&["exp", "iat", "iss"]);
    v.set_issuer(&[APP_ID.to_string()]);
    // Time is judged below, by GitHub's clock rather than the host's.
    v.validate_exp = false;
    let Ok(claims) = jsonwebtoken::decode::<Value>(jwt, &key, &v) else {
        return Err("A JSON web token could not be decoded");
    };
    let (iat, exp) = (
        claims.claims["iat"].as_i64().unwrap_or(0),
        claims.claims["exp"].as_i64().unwrap_or(i64::MAX),
    );
    if iat > now {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past");
    }
    if exp <= now {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        );
    }
    // GitHub refuses App JWTs meant to live longer than ten minutes.
    if exp.saturating_sub(iat) > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    Ok(())
}

impl Credentials for GithubSim {
    fn now(&self) -> i64 {
        self.github_now()
    }

    /// An installation token it issued and that has not expired, or its personal access token.
    fn honours(&self, tok: &str) -> bool {
        let now = self.github_now();
        if self.tokens.lock().get(tok).is_some_and(|exp| *exp > now) {
            return true;
        }
        self.pat.lock().as_deref() == Some(tok)
    }
}

impl GithubSim {
    /// Now by GitHub's clock: the host's, moved by the `clock_skew_secs` knob.
    pub fn github_now(&self) -> i64 {
        crate::clock::now_secs() + self.knobs.clock_skew_secs.load(Ordering::Relaxed)
    }

    /// Revokes every installation token issued so far (as their expiry would).
    pub fn revoke_tokens(&self) {
        self.tokens.lock().clear();
    }
}

/// `POST /app/installations/{id}/access_tokens`: the App's JWT for an installation token.
pub(super) async fn access_token(
    State(sim): State<Arc<GithubSim>>,
    Path(id): Path<u64>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = sim.check(&h, Accepts::AppJwt) {
        sim.jwts_refused.fetch_add(1, Ordering::Relaxed);
        return refused;
    }
    if let Some(failed) = sim.fail_by_path(&uri) {
        return failed;
    }
    if id != INSTALLATION_ID {
        return not_found();
    }
    let n = sim.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let token = format!("ghs_sim{n:020}");
    let ttl = sim.knobs.token_ttl.load(Ordering::Relaxed) as i64;
    let now = sim.github_now();
    let expires = now + ttl;
    let mut tokens = sim.tokens.lock();
    // Expired tokens are refused anyway: forgetting them keeps a long demo's fake small.
    tokens.retain(|_, exp| *exp > now);
    tokens.insert(token.clone(), expires);
    drop(tokens);
    json_response(
        StatusCode::CREATED,
        json!({"token": token, "expires_at": format_time(expires), "permissions": *sim.knobs.permissions.lock(), "repository_selection": "all"}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::github::client::app_jwt;

    /// A fake whose only current token is `ghp_ok`.
    struct OneToken;

    impl Credentials for OneToken {
        fn honours(&self, token: &str) -> bool {
            token == "ghp_ok"
        }
    }

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    fn jwt(app_id: u64) -> String {
        let now = crate::clock::now_secs();
        app_jwt(app_id, TEST_APP_KEY_PEM.as_bytes(), now).unwrap()
    }

    #[test]
    fn token_endpoints_take_only_current_tokens() {
        for ok in ["token ghp_ok", "Bearer ghp_ok"] {
            assert!(OneToken.check(&auth(ok), Accepts::Token).is_none(), "{ok}");
        }
        let app = format!("Bearer {}", jwt(APP_ID));
        for refused in ["token ghp_other", "ghp_ok", app.as_str()] {
            let r = OneToken.check(&auth(refused), Accepts::Token).unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{refused}");
        }
        assert!(OneToken.check(&HeaderMap::new(), Accepts::Token).is_some());
    }

    #[test]
    fn app_endpoints_take_only_the_apps_jwt() {
        let app = format!("Bearer {}", jwt(APP_ID));
        assert!(OneToken.check(&auth(&app), Accepts::AppJwt).is_none());
        let other_app = format!("Bearer {}", jwt(APP_ID + 1));
        for refused in [
            "token ghp_ok",
            "Bearer ghp_ok",
            "Bearer a.b.c",
            other_app.as_str(),
        ] {
            let r = OneToken.check(&auth(refused), Accepts::AppJwt).unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{refused}");
        }
        assert!(OneToken.check(&HeaderMap::new(), Accepts::AppJwt).is_some());
    }
}
