//! What the client makes of one answer from GitHub, decided from the answer alone so that
//! every rate-limit and failure rule can be checked without a server.

use reqwest::header::HeaderMap;

/// The parts of an answer that decide what happens next.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answer<'a> {
    pub status: u16,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<i64>,
    /// `x-ratelimit-reset`, epoch seconds.
    pub reset_at: Option<i64>,
    /// `retry-after`, seconds.
    pub retry_after: Option<u64>,
    pub body: &'a [u8],
    /// A GraphQL body whose `errors` include one of type RATE_LIMITED.
    pub graphql_rate_limited: bool,
}

impl<'a> Answer<'a> {
    /// `graphql` says whether the body is a GraphQL answer, whose primary limit shows in the
    /// body rather than in the status.
    pub fn new(status: u16, headers: &HeaderMap, body: &'a [u8], graphql: bool) -> Answer<'a> {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        Answer {
            status,
            remaining: header("x-ratelimit-remaining").and_then(|v| v.parse().ok()),
            reset_at: header("x-ratelimit-reset").and_then(|v| v.parse().ok()),
            retry_after: header("retry-after").and_then(|v| v.trim().parse().ok()),
            body,
            graphql_rate_limited: graphql && graphql_rate_limited(body),
        }
    }
}

/// What the request loop does with an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A 2xx with a usable body: handed back, and its ETag kept when the request asked.
    Success,
    /// 304: the cached page still stands, and no primary rate limit was spent.
    NotModified,
    /// A 2xx whose body is not JSON, i.e. truncated or garbled: retried like a transient
    /// failure, and never cached, so its ETag cannot serve a broken body later.
    Garbled,
    /// GraphQL's primary limit, which answers 200 with a RATE_LIMITED error. Not waited out:
    /// the caller learns when GraphQL resets and can fall back to REST meanwhile.
    GraphqlLimited,
    /// The primary limit is spent until `reset_at` (epoch seconds): wait for the reset.
    PrimaryLimit { reset_at: i64 },
    /// A secondary limit: the whole installation pauses, at least `retry_after` seconds when
    /// GitHub says so.
    SecondaryLimit { retry_after: Option<u64> },
    /// A 5xx: says nothing about the request, so worth retrying after a backoff.
    ServerError { message: String },
    /// 401: the token was revoked or expired; a fresh one is worth one more try.
    Unauthorized { message: String },
    /// Anything else (404, 422, a 403 that is no rate limit, ...): retrying will not help.
    Permanent { message: String },
}

/// Decides what to make of `a`; `now` (epoch seconds) stands in for a primary reset time
/// that GitHub did not send.
pub(super) fn classify(a: &Answer<'_>, now: i64) -> Outcome {
    match a.status {
        304 => Outcome::NotModified,
        200..=299
            if a.status != 204
                && serde_json::from_slice::<serde::de::IgnoredAny>(a.body).is_err() =>
        {
            Outcome::Garbled
        }
        200..=299 if a.graphql_rate_limited => Outcome::GraphqlLimited,
        200..=299 => Outcome::Success,
        403 | 429 => {
            let message = message_of(a.body);
            // GitHub tells a secondary limit by its message, or by a retry-after or 429
            // while the primary limit still has room.
            let is_secondary = message
                .to_ascii_lowercase()
                .contains("secondary rate limit")
                || (a.retry_after.is_some() && a.remaining != Some(0))
                || (a.status == 429 && a.remaining != Some(0));
            if is_secondary {
                Outcome::SecondaryLimit {
                    retry_after: a.retry_after,
                }
            } else if a.remaining == Some(0) {
                Outcome::PrimaryLimit {
                    reset_at: a.reset_at.unwrap_or(now + 60),
                }
            } else {
                Outcome::Permanent { message }
            }
        }
        s if s >= 500 => Outcome::ServerError {
            message: message_of(a.body),
        },
        401 => Outcome::Unauthorized {
            message: message_of(a.body),
        },
        _ => Outcome::Permanent {
            message: message_of(a.body),
        },
    }
}

/// Whether a GraphQL body reports its primary limit among its `errors`.
fn graphql_rate_limited(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    serde_json::from_slice::<Errors>(body).is_ok_and(|a| {
        a.errors
            .iter()
            .any(|e| e.get("type").and_then(|t| t.as_str()) == Some("RATE_LIMITED"))
    })
}

/// GitHub's error bodies carry `message`; anything else is cut short.
pub(super) fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        message: String,
    }
    match serde_json::from_slice::<M>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn answer(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status,
            remaining: Some(4000),
            reset_at: Some(1_100),
            retry_after: None,
            body: body.as_bytes(),
            graphql_rate_limited: false,
        }
    }

    fn permanent(message: &str) -> Outcome {
        Outcome::Permanent {
            message: message.into(),
        }
    }

    #[test]
    fn every_kind_of_answer() {
        const SECONDARY: &str = r#"{"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#;
        const PRIMARY: &str = r#"{"message": "API rate limit exceeded for installation ID 1."}"#;
        let spent = |a: Answer<'static>| Answer {
            remaining: Some(0),
            ..a
        };
        let after = |a: Answer<'static>, s| Answer {
            retry_after: Some(s),
            ..a
        };
        let unknown = |a: Answer<'static>| Answer {
            remaining: None,
            reset_at: None,
            ..a
        };
        let cases: Vec<(&str, Answer<'static>, Outcome)> = vec![
            ("200", answer(200, "[]"), Outcome::Success),
            ("201", answer(201, r#"{"id": 1}"#), Outcome::Success),
            ("202 computing", answer(202, "{}"), Outcome::Success),
            ("204 no content", answer(204, ""), Outcome::Success),
            ("304", answer(304, ""), Outcome::NotModified),
            (
                "200 truncated",
                answer(200, r#"[{"id": 1"#),
                Outcome::Garbled,
            ),
            ("200 not json", answer(200, "<html>"), Outcome::Garbled),
            (
                "200 graphql RATE_LIMITED",
                Answer {
                    graphql_rate_limited: true,
                    ..answer(200, r#"{"errors": [{"type": "RATE_LIMITED"}]}"#)
                },
                Outcome::GraphqlLimited,
            ),
            (
                "403 remaining 0",
                spent(answer(403, PRIMARY)),
                Outcome::PrimaryLimit { reset_at: 1_100 },
            ),
            (
                "429 remaining 0",
                spent(answer(429, PRIMARY)),
                Outcome::PrimaryLimit { reset_at: 1_100 },
            ),
            (
                "403 remaining 0 without a reset",
                Answer {
                    reset_at: None,
                    ..spent(answer(403, PRIMARY))
                },
                Outcome::PrimaryLimit { reset_at: NOW + 60 },
            ),
            (
                "403 remaining 0 with retry-after",
                after(spent(answer(403, PRIMARY)), 30),
                Outcome::PrimaryLimit { reset_at: 1_100 },
            ),
            (
                "403 secondary with retry-after",
                after(answer(403, SECONDARY), 60),
                Outcome::SecondaryLimit {
                    retry_after: Some(60),
                },
            ),
            (
                "403 secondary by its message alone",
                unknown(answer(403, SECONDARY)),
                Outcome::SecondaryLimit { retry_after: None },
            ),
            (
                "403 secondary message while the primary is spent",
                spent(answer(403, SECONDARY)),
                Outcome::SecondaryLimit { retry_after: None },
            ),
            (
                "403 retry-after with primary room",
                after(answer(403, r#"{"message": "slow down"}"#), 5),
                Outcome::SecondaryLimit {
                    retry_after: Some(5),
                },
            ),
            (
                "429 with primary room",
                answer(429, r#"{"message": "too many"}"#),
                Outcome::SecondaryLimit { retry_after: None },
            ),
            (
                "429 without rate-limit headers",
                unknown(answer(429, "")),
                Outcome::SecondaryLimit { retry_after: None },
            ),
            (
                "403 forbidden",
                answer(
                    403,
                    r#"{"message": "Resource not accessible by integration"}"#,
                ),
                permanent("Resource not accessible by integration"),
            ),
            (
                "500",
                answer(500, r#"{"message": "boom"}"#),
                Outcome::ServerError {
                    message: "boom".into(),
                },
            ),
            (
                "502 html",
                answer(502, "<html>bad gateway</html>"),
                Outcome::ServerError {
                    message: "<html>bad gateway</html>".into(),
                },
            ),
            (
                "401",
                answer(401, r#"{"message": "Bad credentials"}"#),
                Outcome::Unauthorized {
                    message: "Bad credentials".into(),
                },
            ),
            (
                "404",
                answer(404, r#"{"message": "Not Found"}"#),
                permanent("Not Found"),
            ),
            (
                "409 empty repository",
                answer(409, r#"{"message": "Git Repository is empty."}"#),
                permanent("Git Repository is empty."),
            ),
            (
                "422",
                answer(422, r#"{"message": "Validation Failed"}"#),
                permanent("Validation Failed"),
            ),
        ];
        for (name, a, want) in cases {
            assert_eq!(classify(&a, NOW), want, "{name}");
        }
    }

    #[test]
    fn answers_are_read_from_headers_and_body() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", "1100".parse().unwrap());
        h.insert("retry-after", " 30 ".parse().unwrap());
        let limited = br#"{"data": null, "errors": [{"type": "RATE_LIMITED", "message": "API rate limit exceeded"}]}"#;
        let a = Answer::new(200, &h, limited, true);
        assert_eq!(
            (
                a.remaining,
                a.reset_at,
                a.retry_after,
                a.graphql_rate_limited
            ),
            (Some(0), Some(1_100), Some(30), true)
        );
        // Only a GraphQL answer's errors speak of its limit.
        assert!(!Answer::new(200, &h, limited, false).graphql_rate_limited);
        let other = br#"{"data": null, "errors": [{"type": "NOT_FOUND"}]}"#;
        assert!(!Answer::new(200, &h, other, true).graphql_rate_limited);
        let a = Answer::new(200, &HeaderMap::new(), b"{}", true);
        assert_eq!(
            (
                a.remaining,
                a.reset_at,
                a.retry_after,
                a.graphql_rate_limited
            ),
            (None, None, None, false)
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(message_of(br#"{"message": "Not Found"}"#), "Not Found");
        let long = "x".repeat(300);
        assert_eq!(message_of(long.as_bytes()), "x".repeat(200));
    }
}
