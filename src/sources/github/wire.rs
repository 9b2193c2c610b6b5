//! GitHub REST payloads, only the fields we read. They stay at the edge: the activity code
//! turns them into [`super::activity::RepoEvents`] right away.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct User {
    pub login: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Repo {
    pub name: String,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub fork: bool,
    pub pushed_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct GitActor {
    pub name: Option<String>,
    pub email: Option<String>,
    pub date: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CommitInner {
    pub author: Option<GitActor>,
    pub committer: Option<GitActor>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Commit {
    pub sha: String,
    #[serde(default)]
    pub commit: CommitInner,
    pub author: Option<User>,
    pub committer: Option<User>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CommitStats {
    pub additions: i64,
    pub deletions: i64,
}

/// `GET /repos/{o}/{r}/commits/{sha}`: a commit with its line counts.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CommitDetail {
    #[serde(flatten)]
    pub commit: Commit,
    pub stats: Option<CommitStats>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pull {
    pub number: u64,
    pub user: Option<User>,
    pub created_at: String,
    pub updated_at: String,
    pub merged_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Review {
    pub user: Option<User>,
    pub submitted_at: Option<String>,
    #[serde(default)]
    pub state: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct IssueComment {
    pub user: Option<User>,
    pub created_at: String,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Week {
    pub w: i64,
    pub a: i64,
    pub d: i64,
    pub c: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ContributorStats {
    pub author: Option<User>,
    #[serde(default)]
    pub total: i64,
    pub weeks: Vec<Week>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InstallationToken {
    pub token: String,
    pub expires_at: String,
}

// GraphQL: `repository.pullRequests` with nested reviews.

#[derive(Debug, Deserialize)]
pub struct GqlRepoData {
    pub repository: Option<GqlRepo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlRepo {
    pub pull_requests: GqlConnection<GqlPull>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlPageInfo {
    pub has_next_page: bool,
    #[serde(default)]
    pub end_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlConnection<T> {
    pub page_info: GqlPageInfo,
    pub nodes: Vec<T>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlPull {
    pub number: u64,
    pub created_at: String,
    pub updated_at: String,
    pub merged_at: Option<String>,
    pub author: Option<GqlActor>,
    pub reviews: GqlConnection<GqlReview>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlReview {
    pub author: Option<GqlActor>,
    pub submitted_at: Option<String>,
    #[serde(default)]
    pub state: String,
}

/// A GraphQL `author { __typename login }`. GraphQL names an App's bot `dependabot` where
/// REST says `dependabot[bot]`.
#[derive(Debug, Deserialize)]
pub struct GqlActor {
    #[serde(rename = "__typename", default)]
    pub typename: Option<String>,
    pub login: String,
}

impl GqlActor {
    /// The REST login, so cold (GraphQL) and warm (REST) cycles label a user alike.
    pub fn into_user(self) -> User {
        let bot = self.typename.as_deref() == Some("Bot") && !self.login.ends_with("[bot]");
        User {
            login: if bot {
                format!("{}[bot]", self.login)
            } else {
                self.login
            },
        }
    }
}

/// Seconds since the epoch of an RFC 3339 timestamp as GitHub writes them
/// (`2026-02-19T12:00:00Z`, optionally with fractional seconds or an offset).
pub fn parse_time(s: &str) -> Option<i64> {
    crate::timestamp::parse_rfc3339(s).map(|t| t.floor() as i64)
}

/// RFC 3339 UTC, second precision.
pub fn format_time(t: i64) -> String {
    crate::timestamp::format_rfc3339_secs(t)
}

/// Start (Sunday 00:00 UTC) of the GitHub statistics week containing `t`.
pub fn week_start(t: i64) -> i64 {
    // 1970-01-01 was a Thursday; Sunday is 4 days earlier.
    let days = (t.div_euclid(86_400) + 4).div_euclid(7) * 7 - 4;
    days * 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = parse_time("2026-02-19T12:00:00Z").unwrap();
        assert_eq!(t, 1_771_502_400);
        assert_eq!(format_time(t), "2026-02-19T12:00:00Z");
        assert_eq!(parse_time("2026-02-19T13:00:00.123+01:00"), Some(t));
        assert_eq!(parse_time("nope"), None);
    }

    #[test]
    fn weeks_start_on_sunday() {
        let t = parse_time("2026-02-19T12:00:00Z").unwrap(); // a Thursday
        assert_eq!(format_time(week_start(t)), "2026-02-15T00:00:00Z");
        let sun = parse_time("2026-02-15T00:00:00Z").unwrap();
        assert_eq!(week_start(sun), sun);
    }

    #[test]
    fn real_payloads_decode() {
        let Some(dir) = crate::sim::research_dir("github-rest") else {
            return;
        };
        let read = |f: &str| std::fs::read(dir.join(f)).expect("research file");
        let _: Vec<Repo> = serde_json::from_slice(&read("orgs-repos.200.json")).unwrap();
        let _: Vec<Commit> = serde_json::from_slice(&read("repos-commits.200.json")).unwrap();
        let _: Vec<Pull> = serde_json::from_slice(&read("repos-pulls.200.json")).unwrap();
        let _: Vec<Review> = serde_json::from_slice(&read("repos-pulls-reviews.200.json")).unwrap();
        let _: Vec<IssueComment> =
            serde_json::from_slice(&read("repos-issues-comments.200.json")).unwrap();
        let _: Vec<ContributorStats> =
            serde_json::from_slice(&read("repos-stats-contributors.200.json")).unwrap();
        let _: InstallationToken =
            serde_json::from_slice(&read("app-installations-access-tokens.201.json")).unwrap();
    }
}

/// A page of `GET /search/issues`.
#[derive(Debug, Deserialize)]
pub struct SearchPage {
    pub total_count: u64,
    /// The search timed out and some matches may be missing.
    #[serde(default)]
    pub incomplete_results: bool,
    pub items: Vec<SearchItem>,
}

/// An issue or pull request found by search: only where and when it changed are read.
#[derive(Debug, Deserialize)]
pub struct SearchItem {
    pub repository_url: String,
    pub updated_at: String,
}
