//! Configuration in two stages. [`load`] merges the YAML file, `DEVMETRICS_SECTION__KEY`
//! environment variables (and the replaced tools' variable names, see [`ENV_ALIASES`]) and
//! flags into one YAML tree, deserializes it into [`raw::RawConfig`] (no I/O, unknown keys
//! refused), then [`raw::RawConfig::resolve`] checks values and reads secret files, producing
//! a [`Config`]. Every error names the key, the value and what is wrong.

mod duration;
pub mod raw;
pub mod reference;
mod secret;

pub use duration::{format_duration, parse_duration};
pub use raw::{
    Config, HaConfig, LogFormat, QueueBackend, QueueConfig, QueueRedisConfig, RabbitMqConfig,
    RedisConfig, SentinelConfig, StorageBackend, StorageConfig, WebConfig,
};
pub use secret::{Secret, SecretSource, from_key as secret};

use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit code for an invalid configuration, as `check-config` documents.
pub const EXIT_INVALID: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{}", describe(.key, .origin, .value.as_deref(), .problem))]
    Invalid {
        key: String,
        origin: Option<String>,
        value: Option<String>,
        problem: String,
    },
}

fn describe(key: &str, origin: &Option<String>, value: Option<&str>, problem: &str) -> String {
    let mut s = format!("config key {key:?}");
    if let Some(o) = origin {
        s.push_str(&format!(" (from {o})"));
    }
    if let Some(v) = value {
        s.push_str(&format!(" = {v:?}"));
    }
    s.push_str(": ");
    s.push_str(problem);
    s
}

impl Error {
    pub fn invalid(
        key: impl Into<String>,
        value: Option<&str>,
        problem: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            key: key.into(),
            origin: None,
            value: value.map(str::to_string),
            problem: problem.into(),
        }
    }
}

/// Environment variables of the replaced tools, honoured as aliases of our keys. Our own
/// `DEVMETRICS_*` form wins when both are set.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    // spacelift-io/prometheus-exporter
    ("SPACELIFT_PROMEX_API_ENDPOINT", "spacelift.api_endpoint"),
    ("SPACELIFT_PROMEX_API_KEY_ID", "spacelift.api_key_id"),
    (
        "SPACELIFT_PROMEX_API_KEY_SECRET",
        "spacelift.api_key_secret",
    ),
    (
        "SPACELIFT_PROMEX_API_KEY_SECRET_FILE",
        "spacelift.api_key_secret_file",
    ),
    (
        "SPACELIFT_PROMEX_SCRAPE_TIMEOUT",
        "spacelift.scrape_timeout",
    ),
    ("SPACELIFT_PROMEX_LISTEN_ADDRESS", "web.listen_addresses"),
    // github-telemetry
    ("GITHUB_WEBHOOK_SECRET", "webhooks.github.secret"),
    (
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "webhooks.sinks.appinsights.connection_string",
    ),
];

/// Settings given as command-line flags, applied last. Each entry is a dotted key and a
/// YAML value, so flags share the env/file validation path.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub entries: Vec<(String, Value, String)>,
    /// Values that apply only where neither the file nor the environment set the key (a
    /// replaced tool's own defaults).
    pub defaults: Vec<(String, Value, String)>,
}

impl Overrides {
    pub fn set(&mut self, key: &str, value: Value, flag: &str) {
        self.set_from(key, value, &format!("flag --{flag}"));
    }

    /// A value from somewhere other than a flag, named by `origin` in errors.
    pub fn set_from(&mut self, key: &str, value: Value, origin: &str) {
        self.entries
            .push((key.to_string(), value, origin.to_string()));
    }

    pub fn set_default(&mut self, key: &str, value: Value, origin: &str) {
        self.defaults
            .push((key.to_string(), value, origin.to_string()));
    }
}

/// Loads and resolves the configuration from an optional file, an environment map and flags.
/// A pure function of its inputs apart from reading the file and secret files.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<Config, Error> {
    let mut tree = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
            if text.trim().is_empty() {
                Value::Mapping(Mapping::new())
            } else {
                let v: Value = serde_yaml::from_str(&text).map_err(|e| Error::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                match v {
                    Value::Null => Value::Mapping(Mapping::new()),
                    v => v,
                }
            }
        }
        None => Value::Mapping(Mapping::new()),
    };
    // github-stats-exporter's config files load as they are.
    let github_compat = crate::sources::github::config::translate_legacy(&mut tree);
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    for (var, key) in ENV_ALIASES {
        if let Some(v) = env.get(*var) {
            set_path(&mut tree, key, scalar(key, v));
            origins.insert(key.to_string(), format!("environment variable {var}"));
        }
    }
    for (var, v) in env {
        let Some(rest) = var.strip_prefix("DEVMETRICS_") else {
            continue;
        };
        // Variables the binary itself reads (not config keys).
        if !rest.contains("__") {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace("__", ".");
        set_path(&mut tree, &key, scalar(&key, v));
        origins.insert(key, format!("environment variable {var}"));
    }
    for (key, v, origin) in &overrides.defaults {
        if get_path(&tree, key).is_none() {
            set_path(&mut tree, key, v.clone());
            origins.insert(key.clone(), origin.clone());
        }
    }
    for (key, v, origin) in &overrides.entries {
        set_path(&mut tree, key, v.clone());
        origins.insert(key.clone(), origin.clone());
    }
    let raw: raw::RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        let message = without_values(&e.inner().to_string());
        let (key, problem) = explain_serde(&key, &message);
        let origin = origins.get(&key).cloned();
        Error::Invalid {
            key,
            origin,
            value: None,
            problem,
        }
    })?;
    raw.resolve(file.and_then(Path::parent))
        .map(|mut c| {
            if let Some(g) = c.github.as_mut() {
                g.compat_warnings = github_compat;
            }
            c
        })
        .map_err(|e| match e {
            Error::Invalid {
                key,
                origin: None,
                value,
                problem,
            } => Error::Invalid {
                origin: origins.get(&key).cloned(),
                key,
                value,
                problem,
            },
            e => e,
        })
}

/// Env and flag values are YAML scalars, so `true`, `5` and `[a, b]` keep their types; except
/// for credentials, which stay text whatever they look like (a numeric secret is still a
/// string, and must never be echoed back in a type error).
fn scalar(key: &str, s: &str) -> Value {
    if is_secret_key(key) {
        return Value::String(s.to_string());
    }
    match serde_yaml::from_str::<Value>(s) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Sequence(_))) => v,
        _ => Value::String(s.to_string()),
    }
}

fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    [
        "secret",
        "token",
        "password",
        "connection_string",
        "private_key",
    ]
    .iter()
    .any(|w| last.contains(w))
}

/// serde quotes the offending value in type errors (``invalid type: integer `123`, expected a
/// string``); that value may be a credential, so it is cut out. The key is named instead.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // "<kind> <value>, expected <what>": keep the kind and the expectation only.
            let kind = rest.split([' ', ',']).next().unwrap_or("");
            let expected = rest.rfind(", expected ").map(|i| &rest[i..]).unwrap_or("");
            return format!("{prefix}{kind}{expected}");
        }
    }
    message.to_string()
}

fn get_path<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, part| node.get(part))
}

fn set_path(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node.as_mapping_mut().expect("made a mapping above");
        let k = Value::String(part.to_string());
        if i == parts.len() - 1 {
            map.insert(k, value);
            return;
        }
        if !map.contains_key(&k) {
            map.insert(k.clone(), Value::Mapping(Mapping::new()));
        }
        node = map.get_mut(&k).expect("inserted above");
    }
}

/// Turns serde's message into our form and adds a "did you mean" for unknown keys.
fn explain_serde(path: &str, message: &str) -> (String, String) {
    let path = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        // serde lists the expected fields after "expected one of" / "expected".
        let expected: Vec<&str> = rest
            .split("expected")
            .nth(1)
            .map(|e| e.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let parent = path
            .strip_suffix(field)
            .map(|p| p.trim_end_matches('.').to_string())
            .unwrap_or_else(|| path.clone());
        let full = if parent.is_empty() {
            field.to_string()
        } else {
            format!("{parent}.{field}")
        };
        let best = expected
            .iter()
            .map(|c| (strsim::jaro_winkler(field, c), *c))
            .filter(|(s, _)| *s > 0.75)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let mut problem = "unknown key".to_string();
        if let Some((_, c)) = best {
            let suggestion = if parent.is_empty() {
                c.to_string()
            } else {
                format!("{parent}.{c}")
            };
            problem.push_str(&format!("; did you mean {suggestion:?}?"));
        } else if !expected.is_empty() {
            problem.push_str(&format!("; expected one of: {}", expected.join(", ")));
        }
        return (full, problem);
    }
    (path, message.to_string())
}

/// The annotated example printed by `devmetrics config example`. A test loads it.
pub const EXAMPLE: &str = include_str!("example.yaml");
