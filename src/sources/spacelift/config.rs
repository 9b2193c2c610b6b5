//! The `spacelift` config section: raw (serde, all optional) and resolved.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::duration;
use crate::config::{Error, Secret, SecretSource};

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpacelift {
    /// Lets a file keep the section while switching the source off.
    pub enabled: Option<bool>,
    pub api_endpoint: Option<String>,
    pub api_key_id: Option<String>,
    pub api_key_secret: Option<String>,
    pub api_key_secret_file: Option<PathBuf>,
    pub scrape_timeout: Option<String>,
    pub interval: Option<String>,
    #[serde(default)]
    pub collectors: RawCollectors,
    #[serde(default)]
    pub stacks: RawStacks,
}

/// Written out so the inline secret never reaches a log line or an error that prints the
/// raw config.
impl std::fmt::Debug for RawSpacelift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSpacelift")
            .field("enabled", &self.enabled)
            .field("api_endpoint", &self.api_endpoint)
            .field("api_key_id", &self.api_key_id)
            .field(
                "api_key_secret",
                &self.api_key_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("api_key_secret_file", &self.api_key_secret_file)
            .field("scrape_timeout", &self.scrape_timeout)
            .field("interval", &self.interval)
            .field("collectors", &self.collectors)
            .field("stacks", &self.stacks)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollectors {
    pub public_worker_pool: Option<bool>,
    pub worker_pools: Option<bool>,
    pub usage: Option<bool>,
    pub aggregates: Option<bool>,
    pub attention: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStacks {
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub include_spaces: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub exclude_spaces: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub include_stacks: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub exclude_stacks: Option<Vec<String>>,
    pub series_budget: Option<usize>,
    pub page_size: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct SpaceliftConfig {
    /// Base URL as given; requests go to `<endpoint without trailing />/graphql`.
    pub api_endpoint: String,
    pub api_key_id: String,
    pub api_key_secret: SecretSource,
    /// Deadline for one whole exchange: token refresh, every query group, the retry.
    pub scrape_timeout: Duration,
    pub interval: Duration,
    pub collectors: Collectors,
    pub stacks: StacksConfig,
}

#[derive(Clone, Debug)]
pub struct Collectors {
    pub public_worker_pool: bool,
    pub worker_pools: bool,
    pub usage: bool,
    pub aggregates: bool,
    /// Runs needing approval or attention (ours).
    pub attention: bool,
}

#[derive(Clone, Debug)]
pub struct StacksConfig {
    pub enabled: bool,
    pub include_spaces: Vec<String>,
    pub exclude_spaces: Vec<String>,
    pub include_stacks: Vec<String>,
    pub exclude_stacks: Vec<String>,
    /// Most per-stack series one poll may export; stacks past it are left out and counted.
    pub series_budget: usize,
    pub page_size: u32,
}

impl StacksConfig {
    /// Whether a stack passes the space and stack allow/deny lists. An empty include list
    /// includes everything; exclusion wins over inclusion.
    pub fn admits(&self, space: &str, stack_id: &str, stack_name: &str) -> bool {
        let any = |pats: &[String], s: &[&str]| pats.iter().any(|p| s.iter().any(|v| glob(p, v)));
        if !self.include_spaces.is_empty() && !any(&self.include_spaces, &[space]) {
            return false;
        }
        if any(&self.exclude_spaces, &[space]) {
            return false;
        }
        let names = [stack_id, stack_name];
        if !self.include_stacks.is_empty() && !any(&self.include_stacks, &names) {
            return false;
        }
        !any(&self.exclude_stacks, &names)
    }
}

/// Shell-style match with `*` (any run) and `?` (one character); nothing else is special.
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SERIES_BUDGET: usize = 10_000;

impl RawSpacelift {
    /// `None` when the section is absent or disabled. `base` resolves a relative secret file.
    pub fn resolve(self, base: Option<&std::path::Path>) -> Result<Option<SpaceliftConfig>, Error> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let endpoint = self.api_endpoint.ok_or_else(|| {
            Error::invalid(
                "spacelift.api_endpoint",
                None,
                "required when the spacelift section is present, e.g. https://ACCOUNT.app.spacelift.io",
            )
        })?;
        if !valid_url(&endpoint) {
            return Err(Error::invalid(
                "spacelift.api_endpoint",
                Some(&endpoint),
                "does not seem to be a valid URL: expected http(s)://HOST[:PORT][/PATH]",
            ));
        }
        let api_key_id = match self.api_key_id {
            Some(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                return Err(Error::invalid(
                    "spacelift.api_key_id",
                    None,
                    "required: the id of an admin API key",
                ));
            }
        };
        let api_key_secret = match (self.api_key_secret, self.api_key_secret_file) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "spacelift.api_key_secret",
                    None,
                    "set either spacelift.api_key_secret or spacelift.api_key_secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid(
                    "spacelift.api_key_secret",
                    None,
                    "required (or spacelift.api_key_secret_file)",
                ));
            }
            (Some(s), None) => {
                if s.trim().is_empty() {
                    return Err(Error::invalid("spacelift.api_key_secret", None, "is empty"));
                }
                SecretSource::Value(Secret::new(s.trim()))
            }
            (None, Some(p)) => {
                let p = match base {
                    Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
                    _ => p,
                };
                let shown = p.display().to_string();
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    Error::invalid(
                        "spacelift.api_key_secret_file",
                        Some(&shown),
                        format!("cannot be read: {e}"),
                    )
                })?;
                if text.trim().is_empty() {
                    return Err(Error::invalid(
                        "spacelift.api_key_secret_file",
                        Some(&shown),
                        "is empty",
                    ));
                }
                SecretSource::File(p)
            }
        };
        let scrape_timeout = duration(
            "spacelift.scrape_timeout",
            self.scrape_timeout.as_ref(),
            DEFAULT_SCRAPE_TIMEOUT,
        )?;
        if scrape_timeout.is_zero() {
            return Err(Error::invalid(
                "spacelift.scrape_timeout",
                self.scrape_timeout.as_deref(),
                "must be greater than 0",
            ));
        }
        let interval = duration(
            "spacelift.interval",
            self.interval.as_ref(),
            DEFAULT_INTERVAL,
        )?;
        if interval < Duration::from_secs(1) {
            return Err(Error::invalid(
                "spacelift.interval",
                self.interval.as_deref(),
                "must be at least 1s",
            ));
        }
        let page_size = self.stacks.page_size.unwrap_or(50);
        if !(1..=500).contains(&page_size) {
            return Err(Error::invalid(
                "spacelift.stacks.page_size",
                Some(&page_size.to_string()),
                "must be between 1 and 500",
            ));
        }
        let c = self.collectors;
        Ok(Some(SpaceliftConfig {
            api_endpoint: endpoint,
            api_key_id,
            api_key_secret,
            scrape_timeout,
            interval,
            collectors: Collectors {
                public_worker_pool: c.public_worker_pool.unwrap_or(true),
                worker_pools: c.worker_pools.unwrap_or(true),
                usage: c.usage.unwrap_or(true),
                aggregates: c.aggregates.unwrap_or(true),
                attention: c.attention.unwrap_or(true),
            },
            stacks: StacksConfig {
                enabled: self.stacks.enabled.unwrap_or(true),
                include_spaces: self.stacks.include_spaces.unwrap_or_default(),
                exclude_spaces: self.stacks.exclude_spaces.unwrap_or_default(),
                include_stacks: self.stacks.include_stacks.unwrap_or_default(),
                exclude_stacks: self.stacks.exclude_stacks.unwrap_or_default(),
                series_budget: self.stacks.series_budget.unwrap_or(DEFAULT_SERIES_BUDGET),
                page_size,
            },
        }))
    }
}

/// Settings with every collector on, for `demo` and tests against the simulator.
pub fn demo_config(endpoint: &str, key_id: &str, key_secret: &str) -> SpaceliftConfig {
    SpaceliftConfig {
        api_endpoint: endpoint.to_string(),
        api_key_id: key_id.to_string(),
        api_key_secret: SecretSource::Value(Secret::new(key_secret)),
        scrape_timeout: DEFAULT_SCRAPE_TIMEOUT,
        interval: Duration::from_secs(5),
        collectors: Collectors {
            public_worker_pool: true,
            worker_pools: true,
            usage: true,
            aggregates: true,
            attention: true,
        },
        stacks: StacksConfig {
            enabled: true,
            include_spaces: Vec::new(),
            exclude_spaces: Vec::new(),
            include_stacks: Vec::new(),
            exclude_stacks: Vec::new(),
            series_budget: DEFAULT_SERIES_BUDGET,
            page_size: 10,
        },
    }
}

/// The replaced exporter's rule: a scheme and a host. We also insist on http(s), the only
/// schemes reqwest speaks.
fn valid_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    matches!(scheme, "http" | "https") && !host.is_empty() && !host.starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSpacelift {
        RawSpacelift {
            api_endpoint: Some("https://acme.app.spacelift.io".into()),
            api_key_id: Some("01KEY".into()),
            api_key_secret: Some("s3cret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = raw().resolve(None).unwrap().unwrap();
        assert_eq!(c.scrape_timeout, Duration::from_secs(5));
        assert!(c.stacks.enabled && c.collectors.usage);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let mut r = raw();
        r.api_endpoint = Some("acme.app.spacelift.io".into());
        let e = r.resolve(None).unwrap_err().to_string();
        assert!(e.contains("spacelift.api_endpoint"), "{e}");
        let mut r = raw();
        r.scrape_timeout = Some("0s".into());
        let e = r.resolve(None).unwrap_err().to_string();
        assert!(e.contains("spacelift.scrape_timeout"), "{e}");
        let mut r = raw();
        r.api_key_secret_file = Some("/nonexistent".into());
        let e = r.resolve(None).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(!e.contains("s3cret"));
        let mut r = raw();
        r.api_key_secret = None;
        r.api_key_secret_file = Some("/nonexistent/secret".into());
        let e = r.resolve(None).unwrap_err().to_string();
        assert!(e.contains("spacelift.api_key_secret_file"), "{e}");
    }

    #[test]
    fn raw_debug_redacts_the_secret() {
        let shown = format!("{:?}", raw());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("api_key_secret: Some(\"<redacted>\")"),
            "{shown}"
        );
        assert!(shown.contains("01KEY"), "the rest stays visible: {shown}");
        let none = format!("{:?}", RawSpacelift::default());
        assert!(none.contains("api_key_secret: None"), "{none}");
    }

    #[test]
    fn disabled_section_resolves_to_none() {
        let r = RawSpacelift {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(r.resolve(None).unwrap().is_none());
    }

    #[test]
    fn globs_and_filters() {
        assert!(glob("prod-*", "prod-eu"));
        assert!(glob("*", ""));
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("prod-*", "staging"));
        assert!(glob("*-eu-*", "app-eu-1"));
        let mut s = raw().resolve(None).unwrap().unwrap().stacks;
        s.include_spaces = vec!["prod*".into()];
        s.exclude_stacks = vec!["*-legacy".into()];
        assert!(s.admits("prod-1", "api", "API"));
        assert!(!s.admits("dev", "api", "API"));
        assert!(!s.admits("prod-1", "api-legacy", "x"));
    }
}
