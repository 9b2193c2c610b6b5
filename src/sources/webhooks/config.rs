//! `webhooks:` configuration: the GitHub receiver and how workflow events become metrics.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Error, Secret, SecretSource};

/// GitHub's own cap on a delivery's payload.
pub const GITHUB_MAX_BODY: u64 = 25 * 1024 * 1024;

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
    pub workflows: Option<RawWorkflows>,
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
}

#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    pub listen_address: Option<SocketAddr>,
    pub github: Option<GithubConfig>,
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
    /// Header values often carry tokens: kept as secrets.
    pub headers: Vec<(String, Secret)>,
    pub service_name: String,
}

#[derive(Clone, Debug)]
pub struct GithubConfig {
    pub secrets: Vec<Secret>,
    pub insecure_skip_verify: bool,
    pub max_body_bytes: u64,
    pub workflows: crate::processors::workflows::Options,
}

impl RawWebhooks {
    pub fn resolve(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<WebhooksConfig, Error> {
        let listen_address = self
            .listen_address
            .as_deref()
            .map(|s| crate::config::raw::parse_listen("webhooks.listen_address", s))
            .transpose()?;
        let github = self.github.map(|g| g.resolve(rel)).transpose()?;
        let sinks = self.sinks.unwrap_or_default();
        let otlp = sinks.otlp.map(|o| o.resolve()).transpose()?;
        let appinsights = sinks.appinsights.map(|a| a.resolve(rel)).transpose()?;
        Ok(WebhooksConfig {
            listen_address,
            github,
            sinks: SinksConfig { otlp, appinsights },
        })
    }
}

impl RawOtlp {
    fn resolve(self) -> Result<OtlpConfig, Error> {
        let endpoint = self.endpoint.ok_or_else(|| {
            Error::invalid(
                "webhooks.sinks.otlp.endpoint",
                None,
                "is required, e.g. http://otel-collector:4318",
            )
        })?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::invalid(
                "webhooks.sinks.otlp.endpoint",
                Some(&endpoint),
                "must be an http:// or https:// URL",
            ));
        }
        match self.protocol.as_deref().unwrap_or("http/protobuf") {
            "http/protobuf" => {}
            other => {
                return Err(Error::invalid(
                    "webhooks.sinks.otlp.protocol",
                    Some(other),
                    "only http/protobuf is supported (grpc is not yet)",
                ));
            }
        }
        Ok(OtlpConfig {
            endpoint,
            headers: self
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
            service_name: self.service_name.unwrap_or_else(|| "github-actions".into()),
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
    fn resolve(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<GithubConfig, Error> {
        let mut secrets = Vec::new();
        if let Some(s) = self.secret {
            secrets.push(read_secret(
                "webhooks.github.secret",
                SecretSource::Value(Secret::new(s)),
            )?);
        }
        if let Some(p) = self.secret_file {
            secrets.push(read_secret(
                "webhooks.github.secret_file",
                SecretSource::File(rel(p)),
            )?);
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
        let w = self.workflows.unwrap_or_default();
        let max_runner_labels = w.max_runner_labels.unwrap_or(4);
        if max_runner_labels == 0 || max_runner_labels > 16 {
            return Err(Error::invalid(
                "webhooks.github.workflows.max_runner_labels",
                Some(&max_runner_labels.to_string()),
                "must be between 1 and 16",
            ));
        }
        Ok(GithubConfig {
            secrets,
            insecure_skip_verify,
            max_body_bytes,
            workflows: crate::processors::workflows::Options {
                step_metrics: w.step_metrics.unwrap_or(false),
                branch_label: w.branch_label.unwrap_or(false),
                max_runner_labels,
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
        let e = resolve("github: {secret: a, workflows: {max_runner_labels: 0}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("webhooks.github.workflows.max_runner_labels"),
            "{e}"
        );
    }
}
