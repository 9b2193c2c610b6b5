//! The `github` config section. Its keys are a superset of github-stats-exporter's `github`
//! section, and [`translate_legacy`] folds that tool's other top-level sections into ours,
//! so its config files load unchanged.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::raw::{duration, string_or_seq};
use crate::config::{Error, Secret, SecretSource};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithub {
    pub api_base_url: Option<String>,
    pub request_timeout: Option<String>,
    pub unhealthy_failure_threshold: Option<u32>,
    pub unhealthy_cooldown: Option<String>,
    pub proxy_url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub graphql: Option<bool>,
    pub orgs: Option<Vec<RawOrg>>,
    #[serde(default)]
    pub activity: RawActivity,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub loc: RawLoc,
    #[serde(default)]
    pub backfill: RawBackfill,
    #[serde(default)]
    pub scrape_jobs: RawScrapeJobs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrapeJobs {
    pub distribute: Option<String>,
    pub batch_size: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrg {
    pub org: Option<String>,
    pub api_base_url: Option<String>,
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
    pub private_key_path: Option<PathBuf>,
    /// Name of an environment variable holding the PEM.
    pub private_key_env: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub scrape_interval: Option<String>,
    #[serde(default, deserialize_with = "string_or_seq")]
    pub repo_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_seq")]
    pub repo_exclude: Option<Vec<String>>,
    pub per_org_concurrency: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActivity {
    /// Off: the orgs' clients serve other features (Copilot, DORA's lookups) only.
    pub enabled: Option<bool>,
    pub include_archived: Option<bool>,
    pub include_forks: Option<bool>,
    pub include_bots: Option<bool>,
    pub search: Option<bool>,
    #[serde(default, deserialize_with = "string_or_seq")]
    pub user_include: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_seq")]
    pub user_exclude: Option<Vec<String>>,
    pub user_label_mode: Option<String>,
    pub user_label_secret: Option<String>,
    pub user_label_secret_file: Option<PathBuf>,
    pub series_budget_per_org: Option<u64>,
}

// Secrets are plain strings until resolved: these two print without them.
impl std::fmt::Debug for RawOrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawOrg")
            .field("org", &self.org)
            .field("api_base_url", &self.api_base_url)
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("private_key_path", &self.private_key_path)
            .field("private_key_env", &self.private_key_env)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("scrape_interval", &self.scrape_interval)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RawActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawActivity")
            .field("user_label_mode", &self.user_label_mode)
            .field(
                "user_label_secret",
                &self.user_label_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("user_label_secret_file", &self.user_label_secret_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub min_remaining_threshold: Option<u32>,
    pub min_reset_buffer: Option<String>,
    pub secondary_limit_backoff: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub jitter: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoc {
    pub source: Option<String>,
    pub refresh_interval: Option<String>,
    pub fallback_enabled: Option<bool>,
    pub fallback_max_commits_per_repo_per_week: Option<u32>,
    pub fallback_max_commit_detail_calls_per_org_per_hour: Option<u32>,
    pub large_repo_zero_detection_windows: Option<u32>,
    pub large_repo_cooldown: Option<String>,
    /// Delay between polls of a `/stats/contributors` that answered 202, and how many.
    pub stats_retry_delay: Option<String>,
    pub stats_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackfill {
    pub enabled: Option<bool>,
    pub max_message_age: Option<String>,
    pub consumer_count: Option<u32>,
    #[serde(default, deserialize_with = "string_or_seq")]
    pub requeue_delays: Option<Vec<String>>,
    pub coalesce_window: Option<String>,
    pub dedup_ttl: Option<String>,
    pub max_enqueues_per_org_per_minute: Option<u32>,
}

#[derive(Clone, Debug)]
pub enum Auth {
    App {
        app_id: u64,
        installation_id: u64,
        key: SecretSource,
    },
    Token(SecretSource),
}

impl Auth {
    /// The budget key: orgs sharing an installation (or a token) share its rate limit. A
    /// token is known by a hash of its value, or by its file's path, never by itself.
    pub fn budget_key(&self) -> String {
        match self {
            Auth::App {
                installation_id, ..
            } => format!("installation:{installation_id}"),
            Auth::Token(SecretSource::Value(s)) => {
                use sha2::Digest;
                let h = sha2::Sha256::digest(s.expose().as_bytes());
                format!("token:{}", hex::encode(&h[..16]))
            }
            Auth::Token(SecretSource::File(p)) => format!("token_file:{}", p.display()),
        }
    }

    pub fn installation_label(&self) -> String {
        match self {
            Auth::App {
                installation_id, ..
            } => installation_id.to_string(),
            Auth::Token(_) => "token".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct OrgConfig {
    pub org: String,
    pub api_base_url: String,
    pub auth: Auth,
    pub scrape_interval: Duration,
    /// Globs over repo names; empty means every repo.
    pub repo_include: Vec<String>,
    pub repo_exclude: Vec<String>,
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserLabelMode {
    Login,
    Hashed,
    None,
}

#[derive(Clone, Debug)]
pub struct ActivityConfig {
    pub enabled: bool,
    pub include_archived: bool,
    pub include_forks: bool,
    pub include_bots: bool,
    /// Org-wide change detection: one search of issues and pull requests updated since the
    /// last cycle finds the repos with new conversations, instead of two conditional probes
    /// per repo (which cost again each time the installation token is renewed).
    pub search: bool,
    pub user_include: Vec<String>,
    pub user_exclude: Vec<String>,
    pub user_label_mode: UserLabelMode,
    pub user_label_secret: Option<Secret>,
    pub series_budget_per_org: u64,
}

#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// Requests kept in reserve: work waits for the reset rather than spend them.
    pub reserve: u32,
    pub reset_buffer: Duration,
    pub secondary_backoff: Duration,
}

#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Clone, Debug)]
pub struct LocConfig {
    pub refresh_interval: Duration,
    pub fallback_enabled: bool,
    pub fallback_max_commits_per_repo_per_week: u32,
    pub fallback_max_commit_detail_calls_per_org_per_hour: u32,
    /// Consecutive `/stats/contributors` answers with commits but no line counts before the
    /// repo switches to the commit-level fallback (GitHub zeroes LOC for very large repos).
    pub large_repo_zero_detection_windows: u32,
    pub large_repo_cooldown: Duration,
    /// Delay between polls of a `/stats/contributors` that answered 202, and how many.
    pub pending_retry_delay: Duration,
    pub pending_retries: u32,
}

#[derive(Clone, Debug)]
pub struct BackfillConfig {
    pub max_message_age: Duration,
    pub consumer_count: usize,
    pub max_enqueues_per_org_per_minute: u32,
}

/// Whether a cycle's repos are scraped by jobs on the queue, which every replica consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribute {
    /// When the queue is shared by the replicas (RabbitMQ, Redis streams).
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug)]
pub struct ScrapeJobsConfig {
    pub distribute: Distribute,
    /// Repos per job.
    pub batch_size: usize,
}

#[derive(Clone, Debug)]
pub struct GithubConfig {
    pub orgs: Vec<OrgConfig>,
    pub request_timeout: Duration,
    pub unhealthy_failure_threshold: u32,
    pub unhealthy_cooldown: Duration,
    pub proxy_url: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Cold scrapes of a repo's PRs and reviews use one GraphQL query per 50 PRs.
    pub graphql: bool,
    pub activity: ActivityConfig,
    pub rate_limit: RateLimitConfig,
    pub retry: RetryConfig,
    pub loc: LocConfig,
    pub backfill: BackfillConfig,
    pub scrape_jobs: ScrapeJobsConfig,
    /// One line per replaced-tool mechanism found in the file; logged once at start.
    pub compat_warnings: Vec<String>,
}

pub const DEFAULT_API: &str = "https://api.github.com";

fn base_url(key: &str, v: &str) -> Result<String, Error> {
    let t = v.trim().trim_end_matches('/');
    if !(t.starts_with("http://") || t.starts_with("https://")) {
        return Err(Error::invalid(
            key,
            Some(v),
            "expected an http(s) URL, e.g. https://api.github.com or https://ghe.example.com/api/v3",
        ));
    }
    Ok(t.to_string())
}

impl RawGithub {
    pub fn resolve(self, base: Option<&Path>) -> Result<Option<GithubConfig>, Error> {
        let rel = |p: PathBuf| match base {
            Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
            _ => p,
        };
        let Some(raw_orgs) = self.orgs else {
            return Ok(None);
        };
        let default_base = match &self.api_base_url {
            Some(v) if !v.trim().is_empty() => base_url("github.api_base_url", v)?,
            _ => DEFAULT_API.to_string(),
        };
        let mut orgs: Vec<OrgConfig> = Vec::new();
        for (i, o) in raw_orgs.into_iter().enumerate() {
            let k = |f: &str| format!("github.orgs[{i}].{f}");
            let org = o.org.unwrap_or_default().trim().to_string();
            if org.is_empty() {
                return Err(Error::invalid(k("org"), None, "must name an organization"));
            }
            if orgs.iter().any(|x| x.org == org) {
                return Err(Error::invalid(k("org"), Some(&org), "listed twice"));
            }
            let api_base_url = match &o.api_base_url {
                Some(v) => base_url(&k("api_base_url"), v)?,
                None => default_base.clone(),
            };
            let token = match (o.token, o.token_file) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        k("token"),
                        None,
                        "set token or token_file, not both",
                    ));
                }
                (Some(t), None) => Some(SecretSource::Value(Secret::new(t))),
                (None, Some(f)) => Some(SecretSource::File(rel(f))),
                (None, None) => None,
            };
            let key = match (o.private_key_path, o.private_key_env) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        k("private_key_path"),
                        None,
                        "set private_key_path or private_key_env, not both",
                    ));
                }
                (Some(p), None) => Some(SecretSource::File(rel(p))),
                (None, Some(var)) => match std::env::var(&var) {
                    Ok(pem) => Some(SecretSource::Value(Secret::new(pem))),
                    Err(_) => {
                        return Err(Error::invalid(
                            k("private_key_env"),
                            Some(&var),
                            "environment variable is not set",
                        ));
                    }
                },
                (None, None) => None,
            };
            let auth = match (o.app_id, o.installation_id, key, token) {
                (Some(_), _, _, Some(_)) => {
                    return Err(Error::invalid(
                        k("token"),
                        None,
                        "an org uses either a GitHub App (app_id, installation_id, private key) or a token, not both",
                    ));
                }
                (Some(app_id), Some(installation_id), Some(key), None)
                    if app_id > 0 && installation_id > 0 =>
                {
                    Auth::App {
                        app_id,
                        installation_id,
                        key,
                    }
                }
                (Some(_), _, _, None) => {
                    return Err(Error::invalid(
                        k("app_id"),
                        None,
                        "a GitHub App needs app_id > 0, installation_id > 0 and private_key_path (or private_key_env)",
                    ));
                }
                (None, _, _, Some(t)) => Auth::Token(t),
                (None, _, _, None) => {
                    return Err(Error::invalid(
                        k("app_id"),
                        None,
                        "no credentials: set app_id, installation_id and private_key_path, or token/token_file",
                    ));
                }
            };
            let scrape_interval = duration(
                &k("scrape_interval"),
                o.scrape_interval.as_ref(),
                Duration::from_secs(300),
            )?;
            if scrape_interval.is_zero() {
                return Err(Error::invalid(
                    k("scrape_interval"),
                    o.scrape_interval.as_deref(),
                    "must be positive",
                ));
            }
            let repo_include: Vec<String> = o
                .repo_allowlist
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.trim().is_empty())
                .collect();
            // `["*"]` was the replaced tool's "every repo".
            let repo_include = if repo_include.iter().any(|s| s == "*") {
                Vec::new()
            } else {
                repo_include
            };
            orgs.push(OrgConfig {
                org,
                api_base_url,
                auth,
                scrape_interval,
                repo_include,
                repo_exclude: o.repo_exclude.unwrap_or_default(),
                concurrency: o.per_org_concurrency.unwrap_or(4).clamp(1, 64) as usize,
            });
        }
        if orgs.is_empty() {
            return Err(Error::invalid(
                "github.orgs",
                None,
                "needs at least one org (or remove the github section)",
            ));
        }
        let a = self.activity;
        let user_label_mode = match a.user_label_mode.as_deref().unwrap_or("login") {
            "login" => UserLabelMode::Login,
            "hashed" => UserLabelMode::Hashed,
            "none" => UserLabelMode::None,
            other => {
                return Err(Error::invalid(
                    "github.activity.user_label_mode",
                    Some(other),
                    "expected login, hashed or none",
                ));
            }
        };
        let user_label_secret = match (a.user_label_secret, a.user_label_secret_file) {
            (Some(s), None) => Some(Secret::new(s)),
            (None, Some(f)) => {
                let f = rel(f);
                Some(SecretSource::File(f.clone()).read().map_err(|e| {
                    Error::invalid(
                        "github.activity.user_label_secret_file",
                        Some(&f.display().to_string()),
                        format!("cannot read: {e}"),
                    )
                })?)
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "github.activity.user_label_secret",
                    None,
                    "set user_label_secret or user_label_secret_file, not both",
                ));
            }
            (None, None) => None,
        };
        if user_label_mode == UserLabelMode::Hashed
            && user_label_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
        {
            return Err(Error::invalid(
                "github.activity.user_label_secret",
                None,
                "user_label_mode hashed needs a secret (user_label_secret or user_label_secret_file)",
            ));
        }
        let r = self.retry;
        let initial_backoff = duration(
            "github.retry.initial_backoff",
            r.initial_backoff.as_ref(),
            Duration::from_secs(1),
        )?;
        let max_backoff = duration(
            "github.retry.max_backoff",
            r.max_backoff.as_ref(),
            Duration::from_secs(60),
        )?;
        let l = self.loc;
        let fallback_enabled = l.fallback_enabled.unwrap_or(false);
        let per_week = l.fallback_max_commits_per_repo_per_week.unwrap_or(500);
        let per_hour = l
            .fallback_max_commit_detail_calls_per_org_per_hour
            .unwrap_or(1000);
        if fallback_enabled && (per_week == 0 || per_hour == 0) {
            return Err(Error::invalid(
                "github.loc.fallback_max_commit_detail_calls_per_org_per_hour",
                Some(&per_hour.to_string()),
                "the commit-level fallback needs both budgets above 0",
            ));
        }
        let b = self.backfill;
        let distribute = match self.scrape_jobs.distribute.as_deref() {
            None | Some("auto") => Distribute::Auto,
            Some("always") => Distribute::Always,
            Some("never") => Distribute::Never,
            Some(other) => {
                return Err(Error::invalid(
                    "github.scrape_jobs.distribute",
                    Some(other),
                    "expected auto, always or never",
                ));
            }
        };
        let batch_size = self.scrape_jobs.batch_size.unwrap_or(25);
        if !(1..=1000).contains(&batch_size) {
            return Err(Error::invalid(
                "github.scrape_jobs.batch_size",
                Some(&batch_size.to_string()),
                "expected 1 to 1000 repos per job",
            ));
        }
        Ok(Some(GithubConfig {
            orgs,
            request_timeout: duration(
                "github.request_timeout",
                self.request_timeout.as_ref(),
                Duration::from_secs(20),
            )?,
            unhealthy_failure_threshold: self.unhealthy_failure_threshold.unwrap_or(3).max(1),
            unhealthy_cooldown: duration(
                "github.unhealthy_cooldown",
                self.unhealthy_cooldown.as_ref(),
                Duration::from_secs(120),
            )?,
            proxy_url: self.proxy_url.filter(|s| !s.is_empty()),
            ca_file: self.ca_file.map(rel),
            graphql: self.graphql.unwrap_or(true),
            activity: ActivityConfig {
                enabled: a.enabled.unwrap_or(true),
                include_archived: a.include_archived.unwrap_or(false),
                include_forks: a.include_forks.unwrap_or(false),
                include_bots: a.include_bots.unwrap_or(false),
                search: a.search.unwrap_or(true),
                user_include: a.user_include.unwrap_or_default(),
                user_exclude: a.user_exclude.unwrap_or_default(),
                user_label_mode,
                user_label_secret,
                series_budget_per_org: a.series_budget_per_org.unwrap_or(1_000_000),
            },
            rate_limit: RateLimitConfig {
                reserve: self.rate_limit.min_remaining_threshold.unwrap_or(100),
                reset_buffer: duration(
                    "github.rate_limit.min_reset_buffer",
                    self.rate_limit.min_reset_buffer.as_ref(),
                    Duration::from_secs(5),
                )?,
                secondary_backoff: duration(
                    "github.rate_limit.secondary_limit_backoff",
                    self.rate_limit.secondary_limit_backoff.as_ref(),
                    Duration::from_secs(60),
                )?,
            },
            retry: RetryConfig {
                max_attempts: r.max_attempts.unwrap_or(4).max(1),
                initial_backoff,
                max_backoff: max_backoff.max(initial_backoff),
            },
            loc: LocConfig {
                refresh_interval: duration(
                    "github.loc.refresh_interval",
                    l.refresh_interval.as_ref(),
                    Duration::from_secs(86_400),
                )?,
                fallback_enabled,
                fallback_max_commits_per_repo_per_week: per_week,
                fallback_max_commit_detail_calls_per_org_per_hour: per_hour,
                large_repo_zero_detection_windows: l
                    .large_repo_zero_detection_windows
                    .unwrap_or(1)
                    .max(1),
                large_repo_cooldown: duration(
                    "github.loc.large_repo_cooldown",
                    l.large_repo_cooldown.as_ref(),
                    Duration::from_secs(7 * 86_400),
                )?,
                pending_retry_delay: duration(
                    "github.loc.stats_retry_delay",
                    l.stats_retry_delay.as_ref(),
                    Duration::from_secs(2),
                )?,
                pending_retries: l.stats_retries.unwrap_or(3),
            },
            backfill: BackfillConfig {
                max_message_age: duration(
                    "github.backfill.max_message_age",
                    b.max_message_age.as_ref(),
                    Duration::from_secs(86_400),
                )?,
                consumer_count: b.consumer_count.unwrap_or(1).clamp(1, 32) as usize,
                max_enqueues_per_org_per_minute: b.max_enqueues_per_org_per_minute.unwrap_or(0),
            },
            scrape_jobs: ScrapeJobsConfig {
                distribute,
                batch_size: batch_size as usize,
            },
            compat_warnings: Vec::new(),
        }))
    }
}

/// Keys of github-stats-exporter's sections that we accept but whose mechanism is replaced.
const REPLACED: &[(&str, &str)] = &[
    (
        "leader_election",
        "the Kubernetes lease is replaced by the leader lease in the store (ha.*; leader_election.lease_duration is kept as ha.lease_ttl)",
    ),
    (
        "amqp",
        "amqp.url is kept as queue.backend rabbitmq (queue.rabbitmq.url); exchange, queue and dlq names are replaced by devmetrics' own topology (queue.rabbitmq.prefix, docs/ha.md)",
    ),
    (
        "store",
        "a Redis store is kept as storage.backend redis (storage.redis.url from redis_addr, redis_password and redis_db; in sentinel mode storage.redis.sentinel from redis_master_set and redis_sentinel_addrs), anything else becomes the embedded SQLite store (storage.path); store.max_series_budget is kept as github.activity.series_budget_per_org",
    ),
    (
        "metrics",
        "metrics.topology is implicit: every devmetrics replica serves identical /metrics",
    ),
    (
        "health",
        "the /meta probe is replaced by per-request health (devmetrics_source_up, cooldown after github.unhealthy_failure_threshold failures)",
    ),
    (
        "telemetry",
        "OpenTelemetry tracing settings are not supported; logs and devmetrics_* metrics replace them",
    ),
];

/// github-stats-exporter's `store` section: a standalone Redis becomes our Redis store, unless
/// `storage.backend` is set already.
fn legacy_store(map: &mut Mapping, store: &Value, warnings: &mut Vec<String>) {
    let key = |s: &str| Value::String(s.to_string());
    let text = |k: &str| {
        store
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if !text("backend").eq_ignore_ascii_case("redis") {
        return;
    }
    let sentinel = text("redis_mode").eq_ignore_ascii_case("sentinel");
    let sentinels: Vec<String> = store
        .get("redis_sentinel_addrs")
        .and_then(Value::as_sequence)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .filter(|a| !a.trim().is_empty())
                .map(|a| format!("redis://{}", a.trim()))
                .collect()
        })
        .unwrap_or_default();
    let master = text("redis_master_set");
    if sentinel && (sentinels.is_empty() || master.is_empty()) {
        warnings.push(
            "github-stats-exporter store.redis_mode sentinel needs redis_master_set and redis_sentinel_addrs: the embedded store is used".into(),
        );
        return;
    }
    // Through Sentinel the URL carries only the password and database; Sentinel names the
    // master's address.
    let addr = if sentinel {
        master.clone()
    } else {
        text("redis_addr")
    };
    if addr.is_empty() {
        return;
    }
    let storage = entry(map, "storage");
    if storage.contains_key(key("backend")) {
        return;
    }
    let password = text("redis_password");
    let db = store.get("redis_db").and_then(Value::as_u64).unwrap_or(0);
    let auth = if password.is_empty() {
        String::new()
    } else {
        format!(":{}@", percent_encode(&password))
    };
    storage.insert(key("backend"), key("redis"));
    let redis = match storage
        .entry(key("redis"))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
    {
        Value::Mapping(m) => m,
        _ => return,
    };
    redis
        .entry(key("url"))
        .or_insert_with(|| Value::String(format!("redis://{auth}{addr}/{db}")));
    if sentinel {
        let mut s = Mapping::new();
        s.insert(key("master_name"), Value::String(master));
        s.insert(
            key("urls"),
            Value::Sequence(sentinels.into_iter().map(Value::String).collect()),
        );
        redis.entry(key("sentinel")).or_insert(Value::Mapping(s));
    }
}

/// github-stats-exporter's `amqp` section: its broker becomes our RabbitMQ queue, unless
/// `queue.backend` is set already. Its Go client reads an empty vhost (`…:5672/`) as `/`,
/// which an AMQP URI spells `%2f`.
fn legacy_amqp(map: &mut Mapping, amqp: &Value) {
    let key = |s: &str| Value::String(s.to_string());
    let Some(url) = amqp.get("url").and_then(Value::as_str).map(str::trim) else {
        return;
    };
    if url.is_empty() {
        return;
    }
    let queue = entry(map, "queue");
    if queue.contains_key(key("backend")) {
        return;
    }
    let url = match url.split_once("://") {
        Some((scheme, rest)) if !rest.contains('/') => format!("{scheme}://{rest}/%2f"),
        Some((scheme, rest)) if rest.ends_with('/') && rest.matches('/').count() == 1 => {
            format!("{scheme}://{rest}%2f")
        }
        _ => url.to_string(),
    };
    queue.insert(key("backend"), key("rabbitmq"));
    let rabbitmq = match queue
        .entry(key("rabbitmq"))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
    {
        Value::Mapping(m) => m,
        _ => return,
    };
    rabbitmq.entry(key("url")).or_insert(Value::String(url));
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a password in a URL.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rewrites a github-stats-exporter config tree into ours in place, returning one warning per
/// replaced mechanism. A tree without those sections is left untouched.
pub fn translate_legacy(tree: &mut Value) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(map) = tree.as_mapping_mut() else {
        return warnings;
    };
    let key = |s: &str| Value::String(s.to_string());
    if let Some(Value::Mapping(server)) = map.remove(key("server")) {
        let web = entry(map, "web");
        if let Some(addr) = server.get(key("listen_addr")).and_then(Value::as_str)
            && !addr.is_empty()
            && !web.contains_key(key("listen_addresses"))
        {
            web.insert(
                key("listen_addresses"),
                Value::Sequence(vec![Value::String(addr.to_string())]),
            );
        }
        if let Some(level) = server.get(key("log_level")).and_then(Value::as_str) {
            let log = entry(map, "log");
            if !log.contains_key(key("level")) {
                log.insert(key("level"), Value::String(level.to_string()));
            }
        }
    }
    let mut series_budget = None;
    for (name, why) in REPLACED {
        if let Some(v) = map.remove(key(name)) {
            if *name == "store" {
                series_budget = v.get("max_series_budget").cloned();
                legacy_store(map, &v, &mut warnings);
            }
            if *name == "amqp" {
                legacy_amqp(map, &v);
            }
            if *name == "leader_election"
                && let Some(ttl) = v.get("lease_duration").filter(|t| t.is_string())
            {
                entry(map, "ha")
                    .entry(key("lease_ttl"))
                    .or_insert(ttl.clone());
            }
            warnings.push(format!(
                "github-stats-exporter section {name:?} accepted and ignored: {why}"
            ));
        }
    }
    for name in ["rate_limit", "retry", "loc", "backfill"] {
        if let Some(v) = map.remove(key(name)) {
            entry(map, "github").insert(key(name), v);
        }
    }
    if let Some(b) = series_budget.filter(|b| b.as_u64().is_some_and(|n| n > 0)) {
        let gh = entry(map, "github");
        let act = match gh
            .entry(key("activity"))
            .or_insert_with(|| Value::Mapping(Mapping::new()))
        {
            Value::Mapping(m) => m,
            _ => return warnings,
        };
        act.entry(key("series_budget_per_org")).or_insert(b);
    }
    // Keys parsed but unused by the replaced tool itself, and keys whose mechanism we replace.
    if let Some(Value::Mapping(gh)) = map.get_mut(key("github")) {
        for (section, dropped) in [
            ("loc", &["source"][..]),
            ("retry", &["jitter"][..]),
            (
                "backfill",
                &["enabled", "requeue_delays", "coalesce_window", "dedup_ttl"][..],
            ),
        ] {
            if let Some(Value::Mapping(m)) = gh.get_mut(key(section)) {
                let mut gone = Vec::new();
                for d in dropped {
                    if m.remove(key(d)).is_some() {
                        gone.push(format!("{section}.{d}"));
                    }
                }
                if !gone.is_empty() && section == "backfill" {
                    warnings.push(format!(
                        "github-stats-exporter keys {} accepted and ignored: backfill is always on, retried by the embedded queue (queue.*), deduplicated per exact window",
                        gone.join(", ")
                    ));
                }
            }
        }
    }
    warnings
}

fn entry<'a>(map: &'a mut Mapping, name: &str) -> &'a mut Mapping {
    let k = Value::String(name.to_string());
    if !matches!(map.get(&k), Some(Value::Mapping(_))) {
        map.insert(k.clone(), Value::Mapping(Mapping::new()));
    }
    match map.get_mut(&k) {
        Some(Value::Mapping(m)) => m,
        _ => unreachable!("inserted a mapping above"),
    }
}

/// `*` and `?` globs, case-sensitive, over a whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orgs_sharing_a_token_share_its_budget() {
        let raw: RawGithub = serde_yaml::from_str(
            "orgs: [{org: a, token: ghp_shared}, {org: b, token: ghp_shared}, {org: c, token: ghp_other}, {org: d, token_file: /run/t}, {org: e, token_file: /run/t}]\n",
        )
        .unwrap();
        let cfg = raw.resolve(None).unwrap().unwrap();
        let k: Vec<String> = cfg.orgs.iter().map(|o| o.auth.budget_key()).collect();
        assert_eq!(k[0], k[1]);
        assert_ne!(k[0], k[2]);
        assert_eq!(k[3], k[4]);
        assert_ne!(k[0], k[3]);
        assert!(k.iter().all(|k| !k.contains("ghp_")), "{k:?}");
    }

    #[test]
    fn secrets_never_print() {
        let raw: RawGithub = serde_yaml::from_str(
            "orgs: [{org: a, token: ghp_topsecret}]\nactivity: {user_label_mode: hashed, user_label_secret: hmac-topsecret}\n",
        )
        .unwrap();
        let dbg = format!("{raw:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        let cfg = raw.resolve(None).unwrap().unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    #[test]
    fn a_standalone_redis_store_with_a_password_maps_to_a_url() {
        let mut tree: Value = serde_yaml::from_str(
            "store: {backend: Redis, redis_mode: standalone, redis_addr: 'r:6380', redis_password: 'p@ss/w:rd', redis_db: 2}\nleader_election: {enabled: true, lease_duration: 15s}\n",
        )
        .unwrap();
        translate_legacy(&mut tree);
        assert_eq!(tree["storage"]["backend"], "redis");
        assert_eq!(
            tree["storage"]["redis"]["url"],
            "redis://:p%40ss%2Fw%3Ard@r:6380/2"
        );
        assert_eq!(tree["ha"]["lease_ttl"], "15s");
        // Our own storage section wins.
        let mut tree: Value = serde_yaml::from_str(
            "storage: {backend: sqlite}\nstore: {backend: redis, redis_addr: 'r:6379'}\n",
        )
        .unwrap();
        translate_legacy(&mut tree);
        assert_eq!(tree["storage"]["backend"], "sqlite");
    }

    #[test]
    fn a_sentinel_store_maps_to_sentinel_settings() {
        let mut tree: Value = serde_yaml::from_str(
            "store: {backend: redis, redis_mode: sentinel, redis_addr: '', redis_master_set: mymaster, redis_sentinel_addrs: ['s1:26379', 's2:26379'], redis_password: pw, redis_db: 1}\n",
        )
        .unwrap();
        translate_legacy(&mut tree);
        assert_eq!(tree["storage"]["backend"], "redis");
        assert_eq!(tree["storage"]["redis"]["url"], "redis://:pw@mymaster/1");
        assert_eq!(
            tree["storage"]["redis"]["sentinel"]["master_name"],
            "mymaster"
        );
        assert_eq!(
            tree["storage"]["redis"]["sentinel"]["urls"][1],
            "redis://s2:26379"
        );
        // Without its sentinels the embedded store is used, with a warning.
        let mut tree: Value = serde_yaml::from_str(
            "store: {backend: redis, redis_mode: sentinel, redis_master_set: m}\n",
        )
        .unwrap();
        let w = translate_legacy(&mut tree);
        assert!(
            tree.get("storage")
                .is_none_or(|s| s.get("backend").is_none())
        );
        assert!(
            w.iter().any(|w| w.contains("redis_sentinel_addrs")),
            "{w:?}"
        );
    }

    #[test]
    fn its_broker_becomes_the_rabbitmq_queue() {
        let mut tree: Value = serde_yaml::from_str(
            "amqp: {url: 'amqp://u:p@rabbitmq:5672/', exchange: gh.backfill, queue: gh.backfill.jobs, dlq: gh.backfill.dlq}\n",
        )
        .unwrap();
        translate_legacy(&mut tree);
        assert_eq!(tree["queue"]["backend"], "rabbitmq");
        assert_eq!(
            tree["queue"]["rabbitmq"]["url"],
            "amqp://u:p@rabbitmq:5672/%2f"
        );
        for (given, want) in [
            ("amqp://h:5672", "amqp://h:5672/%2f"),
            ("amqp://h:5672/prod", "amqp://h:5672/prod"),
        ] {
            let mut tree: Value =
                serde_yaml::from_str(&format!("amqp: {{url: '{given}'}}\n")).unwrap();
            translate_legacy(&mut tree);
            assert_eq!(tree["queue"]["rabbitmq"]["url"], want);
        }
        // Our own queue section wins.
        let mut tree: Value =
            serde_yaml::from_str("queue: {backend: sqlite}\namqp: {url: 'amqp://h/'}\n").unwrap();
        translate_legacy(&mut tree);
        assert_eq!(tree["queue"]["backend"], "sqlite");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("svc-*", "svc-api"));
        assert!(!glob_match("svc-*", "lib-api"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*-bot*", "x-bot[bot]"));
    }

    #[test]
    fn legacy_tree_is_translated_with_warnings() {
        let mut tree: Value = serde_yaml::from_str(
            "server: {listen_addr: ':8080', log_level: debug}\nleader_election: {enabled: true}\namqp: {url: x}\nstore: {max_series_budget: 7}\nretry: {max_attempts: 2, jitter: true}\ngithub: {orgs: []}\n",
        )
        .unwrap();
        let w = translate_legacy(&mut tree);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("leader_election"));
        assert_eq!(tree["web"]["listen_addresses"][0], Value::from(":8080"));
        assert_eq!(tree["log"]["level"], Value::from("debug"));
        assert_eq!(tree["github"]["retry"]["max_attempts"], Value::from(2));
        assert!(tree["github"]["retry"].get("jitter").is_none());
        assert_eq!(
            tree["github"]["activity"]["series_budget_per_org"],
            Value::from(7)
        );
    }
}
