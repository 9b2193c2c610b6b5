//! `webhooks:` configuration: the GitHub receiver and how workflow events become metrics.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Error, Secret, SecretSource};

/// GitHub's own cap on a delivery's payload.
pub const GITHUB_MAX_BODY: u64 = 25 * 1024 * 1024;
/// Room for a few of GitHub's largest deliveries and thousands of typical ones at once.
pub const DEFAULT_MAX_BUFFERED: u64 = 128 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    /// A separate listener for the receivers, so `/metrics` can stay private.
    pub listen_address: Option<String>,
    pub github: Option<RawGithub>,
    pub sinks: Option<RawSinks>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinks {
    pub otlp: Option<RawOtlp>,
    pub appinsights: Option<RawAppInsights>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppInsights {
    pub connection_string: Option<String>,
    pub connection_string_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithub {
    /// Several secrets are accepted at once so a secret can be rotated without dropping
    /// deliveries signed with the old one.
    pub secrets: Option<Vec<RawSecret>>,
    /// A single secret, e.g. from `DEVMETRICS_WEBHOOKS__GITHUB__SECRET`.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub max_buffered_bytes: Option<u64>,
    /// Tasks applying queued deliveries; 0 makes a receive-only instance.
    pub consumers: Option<usize>,
    pub workflows: Option<RawWorkflows>,
    /// `owner/name` globs: deliveries of other repositories are answered without queuing.
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub repo_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub repo_exclude: Option<Vec<String>>,
    pub runners: Option<RawRunners>,
    pub recovery: Option<Vec<RawRecovery>>,
}

/// Self-hosted runner inventory of orgs configured under `github.orgs` (their credentials).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunners {
    pub orgs: Option<Vec<String>>,
    /// `owner/name` of repositories with their own runners; the owner must be listed in
    /// `orgs`.
    pub repos: Option<Vec<String>>,
    pub interval: Option<String>,
}

/// Missed-delivery recovery for one org webhook.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecovery {
    pub org: Option<String>,
    pub hook_id: Option<u64>,
    /// The GitHub App's own webhook instead of an org webhook (the org's App credentials).
    pub app_hook: Option<bool>,
    pub interval: Option<String>,
    pub lookback: Option<String>,
}

/// `- value: s3cret`, `- value_file: /run/secrets/hook` or a bare string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Plain(String),
    Entry(RawSecretEntry),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretEntry {
    pub value: Option<String>,
    pub value_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflows {
    pub step_metrics: Option<bool>,
    pub branch_label: Option<bool>,
    pub max_runner_labels: Option<usize>,
    pub normalize_names: Option<bool>,
    pub series_budget: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    pub listen_address: Option<SocketAddr>,
    pub github: Option<HookConfig>,
    pub sinks: SinksConfig,
}

#[derive(Clone, Debug, Default)]
pub struct SinksConfig {
    pub otlp: Option<OtlpConfig>,
    pub appinsights: Option<crate::exposition::appinsights::ConnectionString>,
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: crate::exposition::otlp::Protocol,
    /// Header values often carry tokens: kept as secrets.
    pub headers: Vec<(String, Secret)>,
    pub service_name: String,
}

#[derive(Clone, Debug)]
pub struct HookConfig {
    pub secrets: Vec<Secret>,
    /// For each of `secrets`, the file it was read from: watched, so a rotated file takes
    /// effect without a restart.
    pub secret_files: Vec<Option<PathBuf>>,
    pub insecure_skip_verify: bool,
    pub max_body_bytes: u64,
    /// Bytes of deliveries read but not yet verified and queued, across all requests;
    /// past it a delivery is answered 503 before its body is read.
    pub max_buffered_bytes: u64,
    pub consumers: usize,
    pub workflows: crate::processors::workflows::Options,
    /// Series each workflow family may hold; updates that would add more are dropped and
    /// counted.
    pub series_budget: usize,
    pub repos: RepoFilter,
    pub runners: Option<RunnersConfig>,
    pub recovery: Vec<RecoveryConfig>,
}

/// Which repositories' deliveries are processed: those matching an `allow` glob (all when
/// none are given) and no `exclude` glob, compared without case as GitHub does.
#[derive(Clone, Debug, Default)]
pub struct RepoFilter {
    pub allow: Vec<String>,
    pub exclude: Vec<String>,
}

impl RepoFilter {
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.exclude.is_empty()
    }

    pub fn admits(&self, full_name: &str) -> bool {
        let name = full_name.to_ascii_lowercase();
        let matches = |p: &String| crate::sources::github::config::glob_match(p, &name);
        (self.allow.is_empty() || self.allow.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

#[derive(Clone, Debug)]
pub struct RunnersConfig {
    pub orgs: Vec<String>,
    pub repos: Vec<String>,
    pub interval: std::time::Duration,
}

#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    pub org: String,
    pub target: crate::sources::github::actions::HookTarget,
    pub interval: std::time::Duration,
    pub lookback: std::time::Duration,
}

/// Series per workflow family by default: each of a few thousand repositories with a few
/// jobs fits, and the worst case stays within what one instance scrapes comfortably.
pub const DEFAULT_SERIES_BUDGET: usize = 20_000;

impl RawWebhooks {
    pub fn resolve(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<WebhooksConfig, Error> {
        let listen_address = self
            .listen_address
            .as_deref()
            .map(|s| crate::config::raw::parse_listen("webhooks.listen_address", s))
            .transpose()?;
        let github = self.github.map(|g| g.resolve(rel)).transpose()?;
        let sinks = self.sinks.unwrap_or_default();
        let otlp = sinks
            .otlp
            .map(|o| o.resolve("webhooks.sinks.otlp", "github-actions"))
            .transpose()?;
        let appinsights = sinks.appinsights.map(|a| a.resolve(rel)).transpose()?;
        Ok(WebhooksConfig {
            listen_address,
            github,
            sinks: SinksConfig { otlp, appinsights },
        })
    }
}

impl RawOtlp {
    /// An OTLP exporter's keys under `at`; `service` is the default service name.
    pub fn resolve(self, at: &str, service: &str) -> Result<OtlpConfig, Error> {
        let key = |k: &str| format!("{at}.{k}");
        let endpoint = self.endpoint.ok_or_else(|| {
            Error::invalid(
                key("endpoint"),
                None,
                "is required, e.g. http://otel-collector:4318",
            )
        })?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::invalid(
                key("endpoint"),
                Some(&endpoint),
                "must be an http:// or https:// URL",
            ));
        }
        use crate::exposition::otlp::Protocol;
        let protocol = match self.protocol.as_deref().unwrap_or("http/protobuf") {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" if endpoint.starts_with("https://") => {
                return Err(Error::invalid(
                    key("protocol"),
                    Some("grpc"),
                    "gRPC is supported over cleartext HTTP/2 (http://) only; use http/protobuf for https endpoints",
                ));
            }
            "grpc" => Protocol::Grpc,
            other => {
                return Err(Error::invalid(
                    key("protocol"),
                    Some(other),
                    "expected http/protobuf or grpc",
                ));
            }
        };
        Ok(OtlpConfig {
            endpoint,
            protocol,
            headers: self
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
            service_name: self.service_name.unwrap_or_else(|| service.into()),
        })
    }
}

impl RawAppInsights {
    fn resolve(
        self,
        rel: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<crate::exposition::appinsights::ConnectionString, Error> {
        let (key, source) = match (self.connection_string, self.connection_string_file) {
            (Some(v), None) => (
                "webhooks.sinks.appinsights.connection_string",
                SecretSource::Value(Secret::new(v)),
            ),
            (None, Some(p)) => (
                "webhooks.sinks.appinsights.connection_string_file",
                SecretSource::File(rel(p)),
            ),
            _ => {
                return Err(Error::invalid(
                    "webhooks.sinks.appinsights",
                    None,
                    "needs exactly one of connection_string or connection_string_file",
                ));
            }
        };
        let s = read_secret(key, source)?;
        crate::exposition::appinsights::ConnectionString::parse(s.expose()).ok_or_else(|| {
            Error::invalid(
                key,
                None,
                "is not an Application Insights connection string (needs InstrumentationKey=…)",
            )
        })
    }
}

/// Checks that need other sections: the orgs whose API the runner inventory and the
/// recovery use are configured (with credentials) under `github.orgs`, and delivery ids are
/// remembered at least as long as GitHub may redeliver.
pub fn check_with(config: &crate::config::Config) -> Result<(), Error> {
    let Some(gh) = &config.webhooks.github else {
        return Ok(());
    };
    if config.queue.dedupe_retention < std::time::Duration::from_secs(7 * 86_400) {
        return Err(Error::invalid(
            "queue.dedupe_retention",
            Some(&crate::config::format_duration(
                config.queue.dedupe_retention,
            )),
            "must be at least 7d while webhooks.github is enabled (delivery ids are deduplicated for 7 days)",
        ));
    }
    let known = |org: &str| {
        config
            .github
            .as_ref()
            .is_some_and(|g| g.orgs.iter().any(|o| o.org.eq_ignore_ascii_case(org)))
    };
    for (i, org) in gh.runners.iter().flat_map(|r| r.orgs.iter()).enumerate() {
        if !known(org) {
            return Err(Error::invalid(
                format!("webhooks.github.runners.orgs[{i}]"),
                Some(org),
                "is not configured under github.orgs (its credentials are used)",
            ));
        }
    }
    for (i, r) in gh.recovery.iter().enumerate() {
        if !known(&r.org) {
            return Err(Error::invalid(
                format!("webhooks.github.recovery[{i}].org"),
                Some(&r.org),
                "is not configured under github.orgs (its credentials are used)",
            ));
        }
    }
    Ok(())
}

fn read_secret(key: &str, source: SecretSource) -> Result<Secret, Error> {
    let path = match &source {
        SecretSource::File(p) => Some(p.display().to_string()),
        SecretSource::Value(_) => None,
    };
    let s = source
        .read()
        .map_err(|e| Error::invalid(key, path.as_deref(), format!("cannot read: {e}")))?;
    if s.expose().is_empty() {
        return Err(Error::invalid(key, path.as_deref(), "is empty"));
    }
    Ok(s)
}

impl RawGithub {
    fn resolve(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<HookConfig, Error> {
        let mut secrets = Vec::new();
        let mut secret_files = Vec::new();
        if let Some(s) = self.secret {
            secrets.push(read_secret(
                "webhooks.github.secret",
                SecretSource::Value(Secret::new(s)),
            )?);
            secret_files.push(None);
        }
        if let Some(p) = self.secret_file {
            let p = rel(p);
            secrets.push(read_secret(
                "webhooks.github.secret_file",
                SecretSource::File(p.clone()),
            )?);
            secret_files.push(Some(p));
        }
        for (i, entry) in self.secrets.unwrap_or_default().into_iter().enumerate() {
            let source = match entry {
                RawSecret::Plain(v) => SecretSource::Value(Secret::new(v)),
                RawSecret::Entry(RawSecretEntry {
                    value: Some(v),
                    value_file: None,
                }) => SecretSource::Value(Secret::new(v)),
                RawSecret::Entry(RawSecretEntry {
                    value: None,
                    value_file: Some(p),
                }) => SecretSource::File(rel(p)),
                RawSecret::Entry(_) => {
                    return Err(Error::invalid(
                        format!("webhooks.github.secrets[{i}]"),
                        None,
                        "needs exactly one of value or value_file",
                    ));
                }
            };
            let key = match &source {
                SecretSource::Value(_) => format!("webhooks.github.secrets[{i}].value"),
                SecretSource::File(_) => format!("webhooks.github.secrets[{i}].value_file"),
            };
            secret_files.push(match &source {
                SecretSource::File(p) => Some(p.clone()),
                SecretSource::Value(_) => None,
            });
            secrets.push(read_secret(&key, source)?);
        }
        let insecure_skip_verify = self.insecure_skip_verify.unwrap_or(false);
        if secrets.is_empty() && !insecure_skip_verify {
            return Err(Error::invalid(
                "webhooks.github.secrets",
                None,
                "no webhook secret is configured; set webhooks.github.secrets (or \
                 DEVMETRICS_WEBHOOKS__GITHUB__SECRET), or set \
                 webhooks.github.insecure_skip_verify: true to accept unsigned deliveries",
            ));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(GITHUB_MAX_BODY);
        if max_body_bytes == 0 {
            return Err(Error::invalid(
                "webhooks.github.max_body_bytes",
                Some("0"),
                "must be positive",
            ));
        }
        let max_buffered_bytes = self.max_buffered_bytes.unwrap_or(DEFAULT_MAX_BUFFERED);
        if max_buffered_bytes < max_body_bytes || max_buffered_bytes > u64::from(u32::MAX) {
            return Err(Error::invalid(
                "webhooks.github.max_buffered_bytes",
                Some(&max_buffered_bytes.to_string()),
                "must hold at least one delivery of max_body_bytes and be under 4 GiB",
            ));
        }
        let w = self.workflows.unwrap_or_default();
        let max_runner_labels = w.max_runner_labels.unwrap_or(4);
        if max_runner_labels == 0 || max_runner_labels > 16 {
            return Err(Error::invalid(
                "webhooks.github.workflows.max_runner_labels",
                Some(&max_runner_labels.to_string()),
                "must be between 1 and 16",
            ));
        }
        let series_budget = w.series_budget.unwrap_or(DEFAULT_SERIES_BUDGET);
        if series_budget == 0 {
            return Err(Error::invalid(
                "webhooks.github.workflows.series_budget",
                Some("0"),
                "must be positive",
            ));
        }
        let repo_globs = |key: &str, v: Option<Vec<String>>| -> Result<Vec<String>, Error> {
            let v = v.unwrap_or_default();
            for (i, p) in v.iter().enumerate() {
                if !p.contains('/') {
                    return Err(Error::invalid(
                        format!("webhooks.github.{key}[{i}]"),
                        Some(p),
                        "expected an OWNER/NAME glob such as my-org/* or my-org/api-?",
                    ));
                }
            }
            Ok(v.into_iter().map(|p| p.to_ascii_lowercase()).collect())
        };
        let repos = RepoFilter {
            allow: repo_globs("repo_allowlist", self.repo_allowlist)?,
            exclude: repo_globs("repo_exclude", self.repo_exclude)?,
        };
        // Each delivery waits for two group commits (apply, then ack), so throughput grows
        // with consumers until the writer is busy: 4 drained ~3,000/s, 32 ~12,400/s
        // (docs/performance.md). Order-independent keys make parallel consumers safe.
        let consumers = self.consumers.unwrap_or(32);
        if consumers > 64 {
            return Err(Error::invalid(
                "webhooks.github.consumers",
                Some(&consumers.to_string()),
                "must be at most 64",
            ));
        }
        use crate::config::raw::duration;
        use std::time::Duration;
        let runners = match self.runners {
            None => None,
            Some(r) => {
                let orgs = r.orgs.unwrap_or_default();
                if orgs.is_empty() {
                    return Err(Error::invalid(
                        "webhooks.github.runners.orgs",
                        None,
                        "needs at least one org (configured under github.orgs)",
                    ));
                }
                let repos = r.repos.unwrap_or_default();
                for (i, repo) in repos.iter().enumerate() {
                    let owner = repo.split_once('/').map(|(o, _)| o);
                    if !owner.is_some_and(|o| orgs.iter().any(|x| x.eq_ignore_ascii_case(o))) {
                        return Err(Error::invalid(
                            format!("webhooks.github.runners.repos[{i}]"),
                            Some(repo),
                            "expected OWNER/NAME with OWNER listed in webhooks.github.runners.orgs",
                        ));
                    }
                }
                Some(RunnersConfig {
                    orgs,
                    repos,
                    interval: duration(
                        "webhooks.github.runners.interval",
                        r.interval.as_ref(),
                        Duration::from_secs(60),
                    )?,
                })
            }
        };
        let mut recovery = Vec::new();
        for (i, r) in self.recovery.unwrap_or_default().into_iter().enumerate() {
            let key = |k: &str| format!("webhooks.github.recovery[{i}].{k}");
            let org = r
                .org
                .ok_or_else(|| Error::invalid(key("org"), None, "is required"))?;
            use crate::sources::github::actions::HookTarget;
            let target = match (r.hook_id, r.app_hook.unwrap_or(false)) {
                (Some(id), false) => HookTarget::Org(id),
                (None, true) => HookTarget::App,
                _ => {
                    return Err(Error::invalid(
                        key("hook_id"),
                        None,
                        "needs exactly one of hook_id (an org webhook, from its settings URL) or app_hook: true",
                    ));
                }
            };
            let lookback = duration(
                &key("lookback"),
                r.lookback.as_ref(),
                Duration::from_secs(3 * 3600),
            )?;
            if lookback > Duration::from_secs(3 * 86_400) {
                return Err(Error::invalid(
                    key("lookback"),
                    r.lookback.as_deref(),
                    "must be at most 3d (GitHub keeps deliveries for 3 days)",
                ));
            }
            recovery.push(RecoveryConfig {
                org,
                target,
                interval: duration(
                    &key("interval"),
                    r.interval.as_ref(),
                    Duration::from_secs(300),
                )?,
                lookback,
            });
        }
        Ok(HookConfig {
            secrets,
            secret_files,
            insecure_skip_verify,
            max_body_bytes,
            max_buffered_bytes,
            consumers,
            runners,
            recovery,
            series_budget,
            repos,
            workflows: crate::processors::workflows::Options {
                step_metrics: w.step_metrics.unwrap_or(false),
                branch_label: w.branch_label.unwrap_or(false),
                max_runner_labels,
                normalize_names: w.normalize_names.unwrap_or(false),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<WebhooksConfig, Error> {
        let raw: RawWebhooks = serde_yaml::from_str(yaml).unwrap();
        raw.resolve(&|p| p)
    }

    #[test]
    fn refuses_to_start_without_a_secret_unless_told_to() {
        let e = resolve("github: {}").unwrap_err().to_string();
        assert!(e.contains("webhooks.github.secrets"), "{e}");
        assert!(e.contains("insecure_skip_verify"), "{e}");
        let c = resolve("github: {insecure_skip_verify: true}").unwrap();
        assert!(c.github.unwrap().secrets.is_empty());
    }

    #[test]
    fn accepts_several_secrets_in_each_form() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "from-file\n").unwrap();
        let yaml = format!(
            "listen_address: ':9999'\ngithub:\n  secret: single\n  secrets:\n    - plain\n    - value: entry\n    - value_file: {}\n",
            f.display()
        );
        let c = resolve(&yaml).unwrap();
        assert_eq!(c.listen_address.unwrap().port(), 9999);
        let g = c.github.unwrap();
        let got: Vec<&str> = g.secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(got, ["single", "plain", "entry", "from-file"]);
        assert_eq!(g.max_body_bytes, GITHUB_MAX_BODY);
        // The secret never shows in Debug output.
        assert!(!format!("{g:?}").contains("plain"));
    }

    #[test]
    fn errors_name_the_full_key_and_never_the_secret() {
        let e = resolve("github:\n  secrets:\n    - {value: x, value_file: /y}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks.github.secrets[0]"), "{e}");
        assert!(!e.contains("\"x\""), "{e}");
        let e = resolve("github:\n  secrets: ['']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks.github.secrets[0].value"), "{e}");
        let e = resolve("sinks: {otlp: {endpoint: 'https://c:4317', protocol: grpc}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks.sinks.otlp.protocol"), "{e}");
        let e = resolve("sinks: {otlp: {endpoint: 'http://c', protocol: thrift}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected http/protobuf or grpc"), "{e}");
        let e = resolve("github: {secret: a, workflows: {max_runner_labels: 0}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("webhooks.github.workflows.max_runner_labels"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod example {
    /// The commented webhooks section of `config example`, uncommented, loads as documented.
    #[test]
    fn the_documented_example_loads() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let conn = dir.path().join("ai");
        std::fs::write(&conn, "InstrumentationKey=k;IngestionEndpoint=https://x/\n").unwrap();
        let text = crate::config::EXAMPLE;
        let at = text
            .find("# webhooks:")
            .expect("example has a webhooks section");
        let mut yaml = text[..at].to_string();
        // The section ends at the first blank line; other sections follow.
        for line in text[at..].lines().take_while(|l| !l.trim().is_empty()) {
            yaml.push_str(line.strip_prefix("# ").unwrap_or(line));
            yaml.push('\n');
        }
        let yaml = yaml
            .replace("/run/secrets/github-webhook", &secret.display().to_string())
            .replace(
                "/run/secrets/appinsights-connection-string",
                &conn.display().to_string(),
            );
        // runners and recovery use an org's credentials from the (separately documented)
        // github section.
        let yaml = format!("{yaml}github:\n  orgs:\n    - org: my-org\n      token: t\n");
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, yaml).unwrap();
        let cfg =
            crate::config::load(Some(&file), &Default::default(), &Default::default()).unwrap();
        let gh = cfg.webhooks.github.unwrap();
        assert_eq!(gh.secrets[0].expose(), "s3cret");
        assert_eq!(gh.consumers, 32);
        assert_eq!(gh.runners.unwrap().orgs, ["my-org"]);
        assert_eq!(
            gh.recovery[0].target,
            crate::sources::github::actions::HookTarget::Org(12345678)
        );
        assert_eq!(cfg.webhooks.listen_address.unwrap().port(), 10478);
        assert_eq!(
            cfg.webhooks.sinks.otlp.unwrap().endpoint,
            "http://otel-collector:4318"
        );
        assert_eq!(
            cfg.webhooks.sinks.appinsights.unwrap().ingestion_endpoint,
            "https://x"
        );
    }
}

#[cfg(test)]
mod cross_checks {
    use crate::config::load;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn recovery_and_runners_need_a_configured_org_and_dedupe_lasts_a_week() {
        let e = load(
            None,
            &env(&[
                ("DEVMETRICS_WEBHOOKS__GITHUB__SECRET", "s"),
                ("DEVMETRICS_QUEUE__DEDUPE_RETENTION", "1d"),
            ]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("queue.dedupe_retention"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "webhooks:\n  github:\n    secret: s\n    recovery:\n      - {org: other, hook_id: 1}\n",
        )
        .unwrap();
        let e = load(Some(&f), &env(&[]), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks.github.recovery[0].org"), "{e}");
        assert!(e.contains("github.orgs"), "{e}");
    }
}
