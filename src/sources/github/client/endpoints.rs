//! The typed calls every GitHub feature makes, over the request loop in `mod.rs`: REST
//! lists followed through their `Link` pagination, GraphQL queries, and the few calls that
//! skip the loop's retries.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::classify::message_of;
use super::{Client, Error, Page, rest_headers};
use crate::sources::github::wire;

impl Client {
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
    /// false to stop early (e.g. once a list sorted by time passes the window). A `next`
    /// link back to a page already read, or a listing longer than [`MAX_PAGES`], is an
    /// error: a broken upstream must not spend the budget on an endless listing.
    pub async fn paginate<T: DeserializeOwned>(
        &self,
        path: &str,
        endpoint: &'static str,
        conditional: bool,
        mut more: impl FnMut(&[T]) -> bool,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        let mut read = std::collections::HashSet::new();
        let mut urls: Vec<String> = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let looped = !read.insert(page_of(&p));
            if looped || read.len() > MAX_PAGES {
                // Their cached copies carry the broken links, which a 304 would replay.
                for u in &urls {
                    let _ = self.forget_cached(u).await;
                }
                return Err(Error::Decode {
                    endpoint,
                    message: match looped {
                        true => "pagination links back to a page already read".into(),
                        false => format!("pagination runs past {MAX_PAGES} pages"),
                    },
                });
            }
            let page = self.get(&p, endpoint, conditional).await?;
            urls.push(p);
            let items: Vec<T> = decode(&page.body, endpoint)?;
            let go_on = more(&items);
            out.extend(items);
            if go_on {
                next = page.next;
            }
        }
        Ok(out)
    }

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

    /// Repos of the org with an issue or pull request updated in `[since, until]`, each with
    /// its newest such update. A comment, review or merge moves its issue's or pull
    /// request's `updated_at`, so this finds conversations in repos without a push. One
    /// search request per 100 results (search has its own budget); a range holding more
    /// than the 1,000 results search serves is halved until each part fits.
    pub async fn repos_with_conversations(
        &self,
        since: i64,
        until: i64,
    ) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        const SERVED: u64 = 1000;
        let mut out = std::collections::BTreeMap::new();
        let mut ranges = vec![(since, until)];
        while let Some((from, to)) = ranges.pop() {
            // Spaces as `+`: the query holds only the org's name, qualifiers and times.
            let path = format!(
                "/search/issues?q=org:{}+updated:{}..{}&sort=updated&order=desc&per_page=100",
                self.org,
                wire::format_time(from),
                wire::format_time(to)
            );
            let mut next = Some(path);
            let mut first = true;
            while let Some(p) = next.take() {
                let (page, raw): (wire::SearchPage, Page) =
                    self.get_json(&p, "search_issues", false).await?;
                if page.incomplete_results {
                    return Err(Error::Decode {
                        endpoint: "search_issues",
                        message: "the search timed out and its results are incomplete".into(),
                    });
                }
                if first && page.total_count > SERVED {
                    if to <= from {
                        return Err(Error::Decode {
                            endpoint: "search_issues",
                            message: format!(
                                "{} results updated within one second; search serves {SERVED}",
                                page.total_count
                            ),
                        });
                    }
                    let mid = from + (to - from) / 2;
                    ranges.push((from, mid));
                    ranges.push((mid + 1, to));
                    break;
                }
                first = false;
                for item in page.items {
                    let Some(repo) = item.repository_url.rsplit('/').next() else {
                        continue;
                    };
                    let t = wire::parse_time(&item.updated_at).unwrap_or(until);
                    let e = out.entry(repo.to_string()).or_insert(t);
                    *e = (*e).max(t);
                }
                next = raw.next;
            }
        }
        Ok(out)
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
        let mut seen = std::collections::HashSet::new();
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
            // No cursor, or one already followed, would read the same pages forever.
            match conn.page_info.end_cursor {
                Some(c) if seen.insert(c.clone()) && seen.len() <= MAX_PAGES => cursor = Some(c),
                _ => {
                    return Err(Error::Decode {
                        endpoint: "graphql_pulls",
                        message: "pagination cursor missing or repeated".into(),
                    });
                }
            }
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
        // A RATE_LIMITED answer never gets here: the request loop turns it into an error.
        let a: Answer<T> = decode(&page.body, endpoint)?;
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
        let auth = self.app_authorization()?;
        let url = self.url(path_or_url);
        let started = Instant::now();
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        let r = self
            .http
            .request(method, &url)
            .headers(rest_headers(auth))
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
}

/// GitHub.com and GHE.com serve GraphQL at `{api}/graphql`; GHES at `https://HOST/api/graphql`
/// beside its `/api/v3` REST root.
pub fn graphql_url(base: &str) -> String {
    match base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{base}/graphql"),
    }
}

/// Pages one listing follows at most: 1,000,000 items at 100 a page, beyond any org's.
pub const MAX_PAGES: usize = 10_000;

/// A page's identity for loop detection: its path and query, whatever host spelled it (a
/// `next` link is absolute, the first request relative).
fn page_of(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r.find('/').map_or("", |i| &r[i..]));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    format!("{path}?{}", pairs.join("&"))
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

fn decode<T: DeserializeOwned>(body: &[u8], endpoint: &'static str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        endpoint,
        message: e.to_string(),
    })
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
        // The first request is relative, the links absolute, their parameters in any order.
        assert_eq!(
            page_of("/orgs/o/repos?type=all&per_page=100"),
            page_of("https://api.github.com/orgs/o/repos?per_page=100&type=all")
        );
        assert_ne!(
            page_of("/orgs/o/repos?per_page=100&page=2"),
            page_of("/orgs/o/repos?per_page=100&page=1")
        );
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
}
