//! The `copilot` config section. github-stats-exporter's keys read as they are (its
//! `copilot:` section loads unchanged); ours extend them.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::raw::duration;
use crate::config::{Error, Secret, secret};

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCopilot {
    pub enabled: Option<bool>,
    /// Orgs whose reports are read; each must be an org of the `github` section (its client).
    /// Empty: every org of the `github` section.
    #[serde(default, deserialize_with = "crate::config::raw::string_or_seq")]
    pub orgs: Option<Vec<String>>,
    pub scrape_interval: Option<String>,
    pub request_timeout: Option<String>,
    pub download_timeout: Option<String>,
    pub include_org_28d: Option<bool>,
    pub include_org_users_28d: Option<bool>,
    pub include_org_1d: Option<bool>,
    pub include_org_users_1d: Option<bool>,
    pub include_teams: Option<bool>,
    pub include_enterprise_28d: Option<bool>,
    pub include_enterprise_users_28d: Option<bool>,
    pub include_enterprise_1d: Option<bool>,
    pub include_enterprise_users_1d: Option<bool>,
    pub include_enterprise_teams: Option<bool>,
    pub include_breakdown_ide: Option<bool>,
    pub include_breakdown_feature: Option<bool>,
    pub include_breakdown_language: Option<bool>,
    pub include_breakdown_model: Option<bool>,
    pub include_pull_request_activity: Option<bool>,
    pub include_seats: Option<bool>,
    pub include_seat_activity_per_user: Option<bool>,
    pub user_label_mode: Option<String>,
    pub user_label_secret: Option<String>,
    pub user_label_secret_file: Option<PathBuf>,
    /// github-stats-exporter's: one series per report day. Each window is summed here, so
    /// the day is not a label; accepted and ignored with a warning.
    pub emit_day_label: Option<bool>,
    pub max_records_per_report: Option<i64>,
    pub max_users_per_report: Option<i64>,
    pub max_download_bytes: Option<u64>,
    /// github-stats-exporter's: every report is read each interval here (a 28-day report
    /// changes daily), so this is accepted and has no effect.
    pub refresh_if_report_unchanged: Option<bool>,
    /// copilot-metrics-exporter's unprefixed gauges `{editor,language,stream,org}`.
    pub legacy_metrics: Option<bool>,
    /// Days back the daily counters are kept whole: each day of this horizon not yet
    /// counted is read from its 1-day report through the queue. 0: no daily counters.
    pub backfill_days: Option<u32>,
    #[serde(default)]
    pub enterprise: RawEnterprise,
}

impl std::fmt::Debug for RawCopilot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCopilot")
            .field("enabled", &self.enabled)
            .field("orgs", &self.orgs)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnterprise {
    pub enabled: Option<bool>,
    pub slug: Option<String>,
    /// The org of the `github` section whose client (its App installation or token, which
    /// needs the enterprise's Copilot metrics permission) reads the enterprise's reports;
    /// default: the first Copilot org.
    pub via_org: Option<String>,
    /// github-stats-exporter's separate App keys for the enterprise: accepted; give that
    /// App's installation as an org of the `github` section and name it in `via_org`.
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
    pub private_key_path: Option<PathBuf>,
}

/// How a user is named in the `user` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserLabelMode {
    Login,
    Id,
    /// HMAC-SHA256 of the login under a configured secret (not a bare hash anyone can
    /// reverse by hashing the org's member list).
    Hashed,
    /// Every user summed into one `user="redacted"` series.
    None,
}

/// Which reports of an org are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reports {
    pub org_28d: bool,
    pub users_28d: bool,
    pub org_1d: bool,
    pub users_1d: bool,
    pub teams: bool,
    pub enterprise_28d: bool,
    pub enterprise_users_28d: bool,
    pub enterprise_1d: bool,
    pub enterprise_users_1d: bool,
    pub enterprise_teams: bool,
    pub seats: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakdowns {
    pub ide: bool,
    pub feature: bool,
    pub language: bool,
    pub model: bool,
}

#[derive(Clone, Debug)]
pub struct EnterpriseConfig {
    pub slug: String,
    /// The `github` org whose client reads it.
    pub via_org: Option<String>,
}

/// A day is counted once by an idempotency key kept `storage.idempotency_retention`; the
/// component refuses a horizon that outlives those keys.
pub const MAX_BACKFILL_DAYS: u32 = 90;

#[derive(Clone, Debug)]
pub struct CopilotConfig {
    pub orgs: Vec<String>,
    pub interval: Duration,
    pub request_timeout: Duration,
    pub download_timeout: Duration,
    pub reports: Reports,
    pub breakdowns: Breakdowns,
    pub pull_requests: bool,
    pub seat_activity_per_user: bool,
    pub user_label_mode: UserLabelMode,
    pub user_label_secret: Option<Secret>,
    /// 0: unlimited.
    pub max_records_per_report: u64,
    pub max_users_per_report: u64,
    pub max_download_bytes: u64,
    pub legacy_metrics: bool,
    pub backfill_days: u32,
    pub enterprise: Option<EnterpriseConfig>,
}

fn count(key: &str, v: Option<i64>) -> Result<u64, Error> {
    match v {
        None => Ok(0),
        Some(n) if n >= 0 => Ok(n as u64),
        Some(n) => Err(Error::invalid(
            key,
            Some(&n.to_string()),
            "must be 0 (unlimited) or more",
        )),
    }
}

impl RawCopilot {
    pub fn resolve(self, base: Option<&Path>) -> Result<Option<CopilotConfig>, Error> {
        // github-stats-exporter's switch: off unless enabled.
        if self.enabled != Some(true) {
            return Ok(None);
        }
        let user_label_mode = match self
            .user_label_mode
            .as_deref()
            .map(str::trim)
            .unwrap_or("login")
        {
            "login" => UserLabelMode::Login,
            "id" => UserLabelMode::Id,
            "hashed" => UserLabelMode::Hashed,
            "none" => UserLabelMode::None,
            other => {
                return Err(Error::invalid(
                    "copilot.user_label_mode",
                    Some(other),
                    "is login, id, hashed or none",
                ));
            }
        };
        let user_label_secret = secret(
            "copilot.user_label_secret",
            self.user_label_secret,
            self.user_label_secret_file,
            base,
        )?;
        if user_label_mode == UserLabelMode::Hashed && user_label_secret.is_none() {
            tracing::warn!(
                "copilot.user_label_mode hashed without copilot.user_label_secret: a random key is made once and kept in the store, so labels stay stable but differ from any other deployment's"
            );
        }
        if self.emit_day_label == Some(true) {
            tracing::warn!(
                "copilot.emit_day_label is ignored: each window's days are summed into one series per user, so no day's series lingers"
            );
        }
        let e = self.enterprise;
        let enterprise = if e.enabled == Some(true) {
            let slug = e
                .slug
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        "copilot.enterprise.slug",
                        None,
                        "is required with enterprise.enabled",
                    )
                })?;
            if e.app_id.is_some() && e.via_org.is_none() {
                tracing::warn!(
                    "copilot.enterprise.app_id is not read: enterprise reports go through the client of copilot.enterprise.via_org (default: the first Copilot org)"
                );
            }
            Some(EnterpriseConfig {
                slug,
                via_org: e.via_org,
            })
        } else {
            None
        };
        let on = |v: Option<bool>, default: bool| v.unwrap_or(default);
        Ok(Some(CopilotConfig {
            orgs: self.orgs.unwrap_or_default(),
            interval: duration(
                "copilot.scrape_interval",
                self.scrape_interval.as_ref(),
                Duration::from_secs(6 * 3600),
            )?
            .max(Duration::from_secs(1)),
            request_timeout: duration(
                "copilot.request_timeout",
                self.request_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            download_timeout: duration(
                "copilot.download_timeout",
                self.download_timeout.as_ref(),
                Duration::from_secs(90),
            )?,
            reports: Reports {
                org_28d: on(self.include_org_28d, true),
                users_28d: on(self.include_org_users_28d, false),
                org_1d: on(self.include_org_1d, true),
                users_1d: on(self.include_org_users_1d, false),
                teams: on(self.include_teams, false),
                enterprise_28d: enterprise.is_some() && on(self.include_enterprise_28d, false),
                enterprise_users_28d: enterprise.is_some()
                    && on(self.include_enterprise_users_28d, false),
                enterprise_1d: enterprise.is_some() && on(self.include_enterprise_1d, false),
                enterprise_users_1d: enterprise.is_some()
                    && on(self.include_enterprise_users_1d, false),
                enterprise_teams: enterprise.is_some() && on(self.include_enterprise_teams, false),
                seats: on(self.include_seats, false),
            },
            breakdowns: Breakdowns {
                ide: on(self.include_breakdown_ide, false),
                feature: on(self.include_breakdown_feature, false),
                language: on(self.include_breakdown_language, false),
                model: on(self.include_breakdown_model, false),
            },
            pull_requests: on(self.include_pull_request_activity, true),
            seat_activity_per_user: on(self.include_seat_activity_per_user, false),
            user_label_mode,
            user_label_secret,
            max_records_per_report: count(
                "copilot.max_records_per_report",
                self.max_records_per_report,
            )?,
            max_users_per_report: count("copilot.max_users_per_report", self.max_users_per_report)?,
            max_download_bytes: self.max_download_bytes.unwrap_or(512 * 1024 * 1024),
            legacy_metrics: on(self.legacy_metrics, false),
            backfill_days: match self.backfill_days {
                None => 28,
                // GitHub keeps 1-day reports for a year; the idempotency keys that count a
                // day once are what bound the horizon (checked against the storage section).
                Some(n) if n <= MAX_BACKFILL_DAYS => n,
                Some(n) => {
                    return Err(Error::invalid(
                        "copilot.backfill_days",
                        Some(&n.to_string()),
                        "must be at most 90",
                    ));
                }
            },
            enterprise,
        }))
    }
}
