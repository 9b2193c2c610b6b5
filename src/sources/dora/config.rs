//! The `dora` config section. Its `teams` list keeps dora-exporter's shape
//! (`{name, github_repositories, jira_projects}`), so that part of its file reads as it is.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::config::{Error, Secret, secret};

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDora {
    pub enabled: Option<bool>,
    pub teams: Option<Vec<RawTeam>>,
    pub jira: Option<RawJira>,
    /// A dora-exporter snapshot (Prometheus text) imported once, so its counters continue.
    pub import_snapshot: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub production_environments: Option<Vec<String>>,
    pub deployments_api: Option<RawDeploymentsApi>,
    pub catalog: Option<RawCatalog>,
    /// Whether a failed production deployment counts as a failed change (default true).
    pub failed_deployments_are_failures: Option<bool>,
    /// GitHub issues carrying this label are incidents (Four Keys' way).
    pub github_incidents: Option<RawGithubIncidents>,
    /// How often the four keys are recomputed from the event log.
    pub four_keys_interval: Option<String>,
}

/// Where teams come from beyond the static list (dora-exporter's `catalog` section).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// `static` (the teams list only) or `backstage`.
    pub mode: Option<String>,
    /// The Backstage backend's base URL; a base path (`https://host/backstage`) is kept.
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub refresh_interval: Option<String>,
    pub request_timeout: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithubIncidents {
    pub label: Option<String>,
}

/// `POST /api/deployments`, for CD tools outside GitHub.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploymentsApi {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for RawDora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDora")
            .field("enabled", &self.enabled)
            .field("teams", &self.teams.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    pub name: Option<String>,
    #[serde(default)]
    pub github_repositories: Vec<String>,
    #[serde(default)]
    pub jira_projects: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJira {
    /// The secret of a Jira admin webhook: `X-Hub-Signature: sha256=<hex>`.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// A token in the URL (`?token=`), for Jira Automation's "send web request", which
    /// cannot sign.
    pub url_token: Option<String>,
    pub url_token_file: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub issue_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub labels: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub priorities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub projects: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct Team {
    pub name: String,
    pub github_repositories: Vec<String>,
    pub jira_projects: Vec<String>,
}

/// The team owning a repository or Jira project: the first team listing it, else `Unknown`
/// (dora-exporter's rule). Repositories compare without case, as GitHub treats them.
#[derive(Clone, Debug, Default)]
pub struct Teams(pub Vec<Team>);

pub const UNKNOWN_TEAM: &str = "Unknown";

impl Teams {
    pub fn of_repository(&self, full_name: &str) -> &str {
        self.0
            .iter()
            .find(|t| {
                t.github_repositories
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(full_name))
            })
            .map_or(UNKNOWN_TEAM, |t| t.name.as_str())
    }

    pub fn of_project(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|t| t.jira_projects.iter().any(|p| p == key))
            .map_or(UNKNOWN_TEAM, |t| t.name.as_str())
    }
}

/// Which Jira issues are incidents. An empty list admits every value; names compare without
/// case, as Jira shows them.
#[derive(Clone, Debug, Default)]
pub struct IncidentFilter {
    pub issue_types: Vec<String>,
    pub labels: Vec<String>,
    pub priorities: Vec<String>,
    pub projects: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct JiraConfig {
    pub secret: Option<Secret>,
    pub url_token: Option<Secret>,
    pub insecure_skip_verify: bool,
    pub filter: IncidentFilter,
}

#[derive(Clone, Debug)]
pub struct DoraConfig {
    pub teams: Teams,
    pub jira: Option<JiraConfig>,
    pub import_snapshot: Option<PathBuf>,
    /// Globs (`*`, `?`, without case) naming the environments whose successful deployments
    /// ship changes.
    pub production_environments: Vec<String>,
    /// The bearer token of `POST /api/deployments`; the route exists only with one.
    pub deployments_api_token: Option<Secret>,
    pub backstage: Option<BackstageConfig>,
    pub failed_deployments_are_failures: bool,
    /// The label marking GitHub issues as incidents.
    pub github_incident_label: Option<String>,
    pub four_keys_interval: std::time::Duration,
}

#[derive(Clone, Debug)]
pub struct BackstageConfig {
    pub endpoint: String,
    pub token: Option<Secret>,
    pub refresh_interval: std::time::Duration,
    /// Deadline for each page of the catalog, its body included.
    pub request_timeout: std::time::Duration,
}

impl RawDora {
    pub fn resolve(self, base: Option<&Path>) -> Result<Option<DoraConfig>, Error> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let mut teams = Vec::new();
        for (i, t) in self.teams.unwrap_or_default().into_iter().enumerate() {
            let name = t.name.map(|n| n.trim().to_string()).unwrap_or_default();
            if name.is_empty() {
                return Err(Error::invalid(
                    format!("dora.teams[{i}].name"),
                    None,
                    "is required",
                ));
            }
            teams.push(Team {
                name,
                github_repositories: t.github_repositories,
                jira_projects: t.jira_projects,
            });
        }
        let jira = match self.jira {
            None => None,
            Some(j) => {
                let signing = secret("dora.jira.secret", j.secret, j.secret_file, base)?;
                let url_token = secret("dora.jira.url_token", j.url_token, j.url_token_file, base)?;
                let insecure = j.insecure_skip_verify.unwrap_or(false);
                if signing.is_none() && url_token.is_none() && !insecure {
                    return Err(Error::invalid(
                        "dora.jira",
                        None,
                        "needs secret (a Jira admin webhook's secret) or url_token (for Jira Automation): incidents are never taken from unverified senders unless insecure_skip_verify is set",
                    ));
                }
                let list = |v: Option<Vec<String>>| -> Vec<String> {
                    v.unwrap_or_default()
                        .into_iter()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                };
                Some(JiraConfig {
                    secret: signing,
                    url_token,
                    insecure_skip_verify: insecure,
                    filter: IncidentFilter {
                        issue_types: list(j.issue_types),
                        labels: list(j.labels),
                        priorities: list(j.priorities),
                        projects: list(j.projects),
                    },
                })
            }
        };
        let deployments_api_token = match self.deployments_api {
            None => None,
            Some(a) => Some(
                secret("dora.deployments_api.token", a.token, a.token_file, base)?.ok_or_else(
                    || {
                        Error::invalid(
                            "dora.deployments_api.token",
                            None,
                            "is required to enable the API",
                        )
                    },
                )?,
            ),
        };
        let backstage = match self.catalog {
            None => None,
            Some(c) => match c.mode.as_deref().map(str::trim).unwrap_or("static") {
                "" | "static" => None,
                "backstage" => {
                    let endpoint = c
                        .endpoint
                        .map(|e| e.trim().trim_end_matches('/').to_string())
                        .filter(|e| !e.is_empty())
                        .ok_or_else(|| {
                            Error::invalid(
                                "dora.catalog.endpoint",
                                None,
                                "is required with mode backstage",
                            )
                        })?;
                    if reqwest::Url::parse(&endpoint).is_err() {
                        return Err(Error::invalid(
                            "dora.catalog.endpoint",
                            Some(&endpoint),
                            "is not a URL",
                        ));
                    }
                    Some(BackstageConfig {
                        endpoint,
                        token: secret("dora.catalog.token", c.token, c.token_file, base)?,
                        refresh_interval: crate::config::raw::duration(
                            "dora.catalog.refresh_interval",
                            c.refresh_interval.as_ref(),
                            std::time::Duration::from_secs(300),
                        )?
                        .max(std::time::Duration::from_secs(1)),
                        request_timeout: crate::config::raw::duration(
                            "dora.catalog.request_timeout",
                            c.request_timeout.as_ref(),
                            std::time::Duration::from_secs(15),
                        )?
                        .max(std::time::Duration::from_millis(100)),
                    })
                }
                other => {
                    return Err(Error::invalid(
                        "dora.catalog.mode",
                        Some(other),
                        "is static or backstage",
                    ));
                }
            },
        };
        let github_incident_label = match self.github_incidents {
            None => None,
            Some(g) => Some(
                g.label
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| {
                        Error::invalid("dora.github_incidents.label", None, "is required")
                    })?,
            ),
        };
        Ok(Some(DoraConfig {
            backstage,
            failed_deployments_are_failures: self.failed_deployments_are_failures.unwrap_or(true),
            github_incident_label,
            four_keys_interval: crate::config::raw::duration(
                "dora.four_keys_interval",
                self.four_keys_interval.as_ref(),
                std::time::Duration::from_secs(60),
            )?
            .max(std::time::Duration::from_secs(1)),
            deployments_api_token,
            teams: Teams(teams),
            jira,
            import_snapshot: self
                .import_snapshot
                .map(|p| base.map_or(p.clone(), |b| b.join(&p))),
            production_environments: self
                .production_environments
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| vec!["production".into()]),
        }))
    }
}
