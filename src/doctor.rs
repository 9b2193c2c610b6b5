//! `devmetrics doctor`: each configured credential tried against its upstream, and what the
//! configured features need of it (GitHub App permissions, the Copilot reports' policy, the
//! rate-limit budget), before the service depends on it. Requests go straight over HTTP with
//! the configured credentials and nothing is stored; no secret is ever printed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::sources::github::config::{Auth, OrgConfig};

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with something worth knowing.
    Warn,
    /// A permission, scope or policy the configuration needs is not granted.
    Missing,
    /// The upstream refused the credential or did not answer.
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Missing => "MISSING",
            Verdict::Failed => "FAILED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Check {
    /// `github/<org>`, `copilot/<org>`, `spacelift`, `backstage`.
    pub subject: String,
    pub what: String,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, subject: &str, what: &str, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check {
            subject: subject.to_string(),
            what: what.to_string(),
            verdict,
            detail: detail.into(),
        });
    }

    /// Whether everything configured can work.
    pub fn ok(&self) -> bool {
        self.checks
            .iter()
            .all(|c| matches!(c.verdict, Verdict::Ok | Verdict::Warn))
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let head = ["SUBJECT", "CHECK", "RESULT", "DETAIL"];
        let rows: Vec<[&str; 4]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    c.subject.as_str(),
                    c.what.as_str(),
                    c.verdict.as_str(),
                    c.detail.as_str(),
                ]
            })
            .collect();
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        };
        let w = [width(0), width(1), width(2)];
        let mut out = String::new();
        for r in std::iter::once(head).chain(rows.iter().copied()) {
            out.push_str(&format!(
                "{:w0$}  {:w1$}  {:w2$}  {}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            ));
        }
        let verdict = if self.ok() {
            "everything configured can work"
        } else {
            "something configured cannot work: see MISSING and FAILED above"
        };
        out.push_str(&format!("\n{verdict}\n"));
        out
    }
}

/// What a configured feature needs of the org's GitHub App installation.
struct Need {
    feature: &'static str,
    permission: &'static str,
    access: &'static str,
}

fn needs(cfg: &Config, org: &str) -> Vec<Need> {
    let mut out = Vec::new();
    let need = |feature, permission, access| Need {
        feature,
        permission,
        access,
    };
    let same = |o: &str| o.eq_ignore_ascii_case(org);
    if cfg.github.as_ref().is_some_and(|g| g.activity.enabled) {
        for p in ["metadata", "contents", "pull_requests", "issues"] {
            out.push(need("contributor activity", p, "read"));
        }
    }
    if let Some(c) = &cfg.copilot
        && (c.orgs.is_empty() || c.orgs.iter().any(|o| same(o)))
    {
        out.push(need(
            "Copilot usage reports",
            "organization_copilot_metrics",
            "read",
        ));
        if c.reports.seats {
            out.push(need(
                "Copilot seats",
                "organization_copilot_seat_management",
                "read",
            ));
        }
    }
    if let Some(h) = &cfg.webhooks.github {
        if h.runners
            .as_ref()
            .is_some_and(|r| r.orgs.iter().any(|o| same(o)))
        {
            out.push(need(
                "runner inventory",
                "organization_self_hosted_runners",
                "read",
            ));
        }
        if h.recovery.iter().any(|r| {
            same(&r.org)
                && matches!(
                    r.target,
                    crate::sources::github::actions::HookTarget::Org(_)
                )
        }) {
            out.push(need(
                "missed-delivery recovery",
                "organization_hooks",
                "write",
            ));
        }
    }
    if cfg.dora.is_some() {
        for p in ["contents", "pull_requests"] {
            out.push(need("DORA lead-time lookups", p, "read"));
        }
    }
    out
}

fn grants(granted: &str, wanted: &str) -> bool {
    granted == wanted || (granted == "write" && wanted == "read") || granted == "admin"
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("devmetrics-doctor/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client with default TLS builds")
}

fn failure(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        // reqwest's message names the URL, which may carry a query token.
        e.without_url().to_string()
    }
}

/// The `authorization` header value for the org, and the installation's permissions (App).
async fn authorize(
    http: &reqwest::Client,
    org: &OrgConfig,
    report: &mut Report,
    subject: &str,
) -> Option<(String, Option<BTreeMap<String, String>>)> {
    let api = org.api_base_url.trim_end_matches('/');
    match &org.auth {
        Auth::Token(src) => match src.read() {
            Ok(t) => Some((format!("token {}", t.expose()), None)),
            Err(e) => {
                report.add(
                    subject,
                    "token",
                    Verdict::Failed,
                    format!("reading the token file: {e}"),
                );
                None
            }
        },
        Auth::App {
            app_id,
            installation_id,
            key,
        } => {
            let jwt = match key.read().map_err(|e| e.to_string()).and_then(|pem| {
                crate::sources::github::client::app_jwt(
                    *app_id,
                    pem.expose().as_bytes(),
                    crate::clock::now_secs(),
                )
                .map_err(|e| e.to_string())
            }) {
                Ok(j) => j,
                Err(e) => {
                    report.add(subject, "App key", Verdict::Failed, e);
                    return None;
                }
            };
            let resp = http
                .post(format!(
                    "{api}/app/installations/{installation_id}/access_tokens"
                ))
                .header("authorization", format!("Bearer {jwt}"))
                .header("accept", "application/vnd.github+json")
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    #[derive(serde::Deserialize)]
                    struct Token {
                        token: String,
                        #[serde(default)]
                        permissions: BTreeMap<String, String>,
                    }
                    match r.json::<Token>().await {
                        Ok(t) => {
                            report.add(
                                subject,
                                "App installation token",
                                Verdict::Ok,
                                format!("App {app_id}, installation {installation_id}"),
                            );
                            Some((format!("token {}", t.token), Some(t.permissions)))
                        }
                        Err(_) => {
                            report.add(
                                subject,
                                "App installation token",
                                Verdict::Failed,
                                "the answer is not a token",
                            );
                            None
                        }
                    }
                }
                Ok(r) => {
                    let why = match r.status().as_u16() {
                        401 => "the App id or private key is refused",
                        404 => "no such installation of this App",
                        _ => "refused",
                    };
                    report.add(
                        subject,
                        "App installation token",
                        Verdict::Failed,
                        format!("{} ({why})", r.status().as_u16()),
                    );
                    None
                }
                Err(e) => {
                    report.add(
                        subject,
                        "App installation token",
                        Verdict::Failed,
                        failure(e),
                    );
                    None
                }
            }
        }
    }
}

async fn github_org(cfg: &Config, org: &OrgConfig, report: &mut Report) {
    let subject = format!("github/{}", org.org);
    let gh = cfg
        .github
        .as_ref()
        .expect("orgs come from the github section");
    let http = client(gh.request_timeout);
    let Some((auth, permissions)) = authorize(&http, org, report, &subject).await else {
        return;
    };
    let api = org.api_base_url.trim_end_matches('/');
    let get = |path: String| {
        http.get(format!("{api}{path}"))
            .header("authorization", auth.clone())
            .header("accept", "application/vnd.github+json")
            .send()
    };
    match get(format!("/orgs/{}", org.org)).await {
        Ok(r) if r.status().is_success() => {
            let scopes = r
                .headers()
                .get("x-oauth-scopes")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            report.add(
                &subject,
                "organization",
                Verdict::Ok,
                match scopes {
                    Some(s) => format!("readable; token scopes: {s}"),
                    None => "readable".into(),
                },
            );
        }
        Ok(r) => {
            report.add(
                &subject,
                "organization",
                Verdict::Failed,
                format!(
                    "{}: no such org, or the credential cannot see it",
                    r.status().as_u16()
                ),
            );
            return;
        }
        Err(e) => {
            report.add(&subject, "organization", Verdict::Failed, failure(e));
            return;
        }
    }
    // What each configured feature needs of the installation.
    if let Some(granted) = &permissions {
        for n in needs(cfg, &org.org) {
            let have = granted.get(n.permission).map(String::as_str);
            let ok = have.is_some_and(|h| grants(h, n.access));
            report.add(
                &subject,
                &format!("{}: {}", n.feature, n.permission),
                if ok { Verdict::Ok } else { Verdict::Missing },
                match have {
                    Some(h) if ok => format!("{h} granted"),
                    Some(h) => format!("{h} granted, {} needed", n.access),
                    None => format!("not granted; the App needs {} {}", n.permission, n.access),
                },
            );
        }
    }
    // The budget, and what the configured interval asks of it.
    #[derive(serde::Deserialize)]
    struct Limit {
        limit: f64,
        remaining: f64,
    }
    #[derive(serde::Deserialize)]
    struct Limits {
        resources: BTreeMap<String, Limit>,
    }
    let limits = match get("/rate_limit".into()).await {
        Ok(r) if r.status().is_success() => r.json::<Limits>().await.ok(),
        _ => None,
    };
    let Some(limits) = limits else {
        report.add(
            &subject,
            "rate limit",
            Verdict::Warn,
            "GET /rate_limit did not answer",
        );
        return;
    };
    let fmt = |k: &str| {
        limits
            .resources
            .get(k)
            .map(|l| format!("{k} {:.0}/{:.0}", l.remaining, l.limit))
    };
    let core = limits.resources.get("core").map_or(0.0, |l| l.limit);
    let parts: Vec<String> = ["core", "graphql", "search"]
        .into_iter()
        .filter_map(fmt)
        .collect();
    report.add(&subject, "rate limit", Verdict::Ok, parts.join(", "));
    if cfg.github.as_ref().is_some_and(|g| g.activity.enabled) {
        let repos = repo_count(&http, api, &auth, &org.org).await;
        if let Some(n) = repos {
            // Change probes are conditional (free while unchanged) but their ETags die with the
            // hourly installation token: about two probes per repo and hour, plus the work on
            // repos that changed.
            let per_hour = 2.0 * n as f64 + (3600.0 / org.scrape_interval.as_secs_f64().max(1.0));
            let verdict = if per_hour > core * 0.8 {
                Verdict::Warn
            } else {
                Verdict::Ok
            };
            report.add(
                &subject,
                "budget for the interval",
                verdict,
                format!(
                    "{n} repos every {}: about {per_hour:.0} requests an hour of {core:.0} before work on changed repos{}",
                    humantime(org.scrape_interval),
                    if verdict == Verdict::Warn {
                        "; the interval will be stretched (devmetrics_github_budget_overcommitted)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    // Copilot: the reports' endpoint itself says whether the policy and permission allow it.
    if let Some(c) = &cfg.copilot
        && (c.orgs.is_empty() || c.orgs.iter().any(|o| o.eq_ignore_ascii_case(&org.org)))
    {
        let path = format!(
            "/orgs/{}/copilot/metrics/reports/organization-28-day/latest",
            org.org
        );
        let (verdict, detail) = match get(path).await {
            Ok(r) => match r.status().as_u16() {
                200 => (Verdict::Ok, "the 28-day report is available".to_string()),
                204 => (Verdict::Ok, "reachable; no data yet".to_string()),
                422 => (
                    Verdict::Missing,
                    "the \"Copilot usage metrics\" policy is disabled for the org or enterprise"
                        .to_string(),
                ),
                403 | 404 => (
                    Verdict::Missing,
                    format!(
                        "{}: the credential lacks Copilot metrics access (App: organization_copilot_metrics read; token: manage_billing:copilot or read:org)",
                        r.status().as_u16()
                    ),
                ),
                s => (Verdict::Failed, format!("answered {s}")),
            },
            Err(e) => (Verdict::Failed, failure(e)),
        };
        report.add(
            &format!("copilot/{}", org.org),
            "usage reports",
            verdict,
            detail,
        );
    }
}

/// The org's repository count, from the last page of a one-per-page listing.
async fn repo_count(http: &reqwest::Client, api: &str, auth: &str, org: &str) -> Option<u64> {
    let r = http
        .get(format!("{api}/orgs/{org}/repos?per_page=1"))
        .header("authorization", auth)
        .send()
        .await
        .ok()?;
    let link = r
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Vec<serde_json::Value> = r.json().await.ok()?;
    match link.and_then(|l| {
        l.split(',')
            .find(|p| p.contains("rel=\"last\""))
            .and_then(|p| p.split("page=").last())
            .and_then(|p| p.split(['>', '&']).next())
            .and_then(|n| n.parse().ok())
    }) {
        Some(n) => Some(n),
        None => Some(body.len() as u64),
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn spacelift(cfg: &crate::sources::spacelift::SpaceliftConfig, report: &mut Report) {
    let client = match crate::sources::spacelift::client::Client::new(
        &cfg.api_endpoint,
        &cfg.api_key_id,
        cfg.api_key_secret.clone(),
        cfg.scrape_timeout,
        std::sync::Arc::new(crate::telemetry::Telemetry::default()),
    ) {
        Ok(c) => c,
        Err(e) => {
            report.add("spacelift", "API key", Verdict::Failed, e.to_string());
            return;
        }
    };
    let r: Result<serde_json::Value, _> = client
        .query(
            "doctor",
            crate::sources::spacelift::wire::PUBLIC_WORKER_POOL,
            None,
        )
        .await;
    match r {
        Ok(_) => report.add(
            "spacelift",
            "API key",
            Verdict::Ok,
            format!("key {} exchanged; queries answer", cfg.api_key_id),
        ),
        Err(e) => report.add("spacelift", "API key", Verdict::Failed, e.to_string()),
    }
}

async fn backstage(cfg: &crate::sources::dora::config::BackstageConfig, report: &mut Report) {
    let http = client(Duration::from_secs(20));
    let mut req = http.get(format!(
        "{}/api/catalog/entities/by-query?limit=1",
        cfg.endpoint.trim_end_matches('/')
    ));
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t.expose());
    }
    let (verdict, detail) = match req.send().await {
        Ok(r) if r.status().is_success() => (Verdict::Ok, "the catalog answers".to_string()),
        Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => (
            Verdict::Failed,
            format!("{}: the token is refused", r.status().as_u16()),
        ),
        Ok(r) => (Verdict::Failed, format!("answered {}", r.status().as_u16())),
        Err(e) => (Verdict::Failed, failure(e)),
    };
    report.add("backstage", "catalog", verdict, detail);
}

/// Every check the configuration calls for.
pub async fn run(cfg: &Config) -> Report {
    let mut report = Report::default();
    if let Some(g) = &cfg.github {
        for org in &g.orgs {
            github_org(cfg, org, &mut report).await;
        }
    }
    if let Some(s) = &cfg.spacelift {
        spacelift(s, &mut report).await;
    }
    if let Some(b) = cfg.dora.as_ref().and_then(|d| d.backstage.as_ref()) {
        backstage(b, &mut report).await;
    }
    if report.checks.is_empty() {
        report.add(
            "-",
            "configuration",
            Verdict::Ok,
            "no upstream credentials configured (webhook receivers only)",
        );
    }
    report
}
