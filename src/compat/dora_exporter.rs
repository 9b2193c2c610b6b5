//! mprokopov/dora-exporter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::{Body, Endpoint, Error, Family, Kind, Launch, Mapping, Plan, Response, Status, Tool};

/// The README's four labels and its variant's `redeployment`, which its v2 dashboard queries.
const LABELS: &[&str] = &["repo", "environment", "team", "status", "redeployment"];

pub static TOOL: Tool = Tool {
    name: "dora-exporter",
    title: "dora-exporter",
    readme: "dora-exporter.md",
    default_port: 8090,
    usage: "dora-exporter [-config.file=config.yml] [-log=info|debug|warning|error]\n\nReads dora-exporter's own YAML file and serves its endpoints (POST /api/github,\nPOST /api/jira, GET /metrics) and families (served by devmetrics).",
    flags: &[
        Mapping {
            old: "-config.file",
            new: "(read by the persona)",
            note: "default config.yml; teams, server.port and storage.file.path are taken from it (below)",
        },
        Mapping {
            old: "-log, -logs",
            new: "log.level",
            note: "warning means warn",
        },
        Mapping {
            old: "-h, -help",
            new: "",
            note: "this text",
        },
    ],
    env: &[
        Mapping {
            old: "GITHUB_TOKEN",
            new: "",
            note: "accepted; lead time learns commits from push deliveries, and from GitHub's API through a `github` section",
        },
        Mapping {
            old: "STORAGE_FILE_PATH",
            new: "dora.import_snapshot",
            note: "the old snapshot is imported once, and devmetrics' SQLite file is kept in the same directory (the volume that held the snapshot)",
        },
        Mapping {
            old: "BACKSTAGE_TOKEN",
            new: "dora.catalog.token",
            note: "when catalog.token is not set in the file",
        },
        Mapping {
            old: "GITHUB_WEBHOOK_SECRET",
            new: "webhooks.github.secret",
            note: "devmetrics addition: verifies /api/github; without it deliveries are accepted unverified, as before, with a warning",
        },
        Mapping {
            old: "DEVMETRICS_DORA__JIRA__SECRET",
            new: "dora.jira.secret",
            note: "devmetrics addition: verifies /api/jira (X-Hub-Signature); without it, or DEVMETRICS_DORA__JIRA__URL_TOKEN, deliveries are accepted unverified, with a warning",
        },
    ],
    config_keys: &[
        Mapping {
            old: "teams[].{name, github_repositories, jira_projects}",
            new: "dora.teams",
            note: "same shape",
        },
        Mapping {
            old: "server.port",
            new: "web.listen_addresses",
            note: "default 8090 (the old binary picked a random port when it was empty)",
        },
        Mapping {
            old: "storage.file.path",
            new: "dora.import_snapshot, storage.path",
            note: "default dora-exporter.prom; imported once on first start so counters continue",
        },
        Mapping {
            old: "github.owner, github.token",
            new: "",
            note: "accepted; the owner comes from each delivery's repository. Lead time asks GitHub's compare and pull-request APIs (for deployments whose pushes were not seen) through a `github` section naming the org, which also polls its activity",
        },
        Mapping {
            old: "catalog.mode: static",
            new: "dora.teams",
            note: "",
        },
        Mapping {
            old: "catalog.mode: backstage, catalog.endpoint, catalog.token",
            new: "dora.catalog",
            note: "read in the background every dora.catalog.refresh_interval (5m), never once per webhook; a base path in the endpoint is kept; the static teams list is asked first",
        },
    ],
    endpoints: &[
        Endpoint {
            method: "POST",
            path: "/api/github",
            responses: &[
                Response {
                    status: 202,
                    when: "a deployment_status delivery, queued durably",
                    body: Body::JsonHas(r#"{"status": "queued"}"#),
                },
                Response {
                    status: 200,
                    when: "another event type (the old exporter answered 202)",
                    body: Body::JsonHas(r#"{"status": "event type not processed"}"#),
                },
            ],
        },
        Endpoint {
            method: "POST",
            path: "/api/jira",
            responses: &[Response {
                status: 202,
                when: "a Jira delivery, queued durably",
                body: Body::JsonHas(r#"{"status": "queued"}"#),
            }],
        },
        super::METRICS,
    ],
    families: &[
        Family {
            name: "github_deployments_count",
            kind: Kind::Counter,
            labels: LABELS,
            status: Status::ServedAs(
                "github_deployments_total",
                "the README's name; the exporter's code, and its dashboard, use github_deployments_total",
            ),
        },
        Family {
            name: "github_deployments_total",
            kind: Kind::Counter,
            labels: LABELS,
            status: Status::Served,
        },
        Family {
            name: "github_deployments_duration",
            kind: Kind::Gauge,
            labels: LABELS,
            status: Status::Served,
        },
        Family {
            name: "github_deployments_duration_sum",
            kind: Kind::Gauge,
            labels: LABELS,
            status: Status::Served,
        },
        Family {
            name: "jira_incidents",
            kind: Kind::Counter,
            labels: &["project", "team"],
            status: Status::Served,
        },
        Family {
            name: "jira_incidents_duration_sum",
            kind: Kind::Gauge,
            labels: &["project", "team"],
            status: Status::Served,
        },
    ],
    events: &[],
    changes: r#"
- **Each deployment status counts once,** by its id, with GitHub's time: an org hook and a repository hook delivering the same status, or a redelivery, no longer count twice.
- **An incident counts once,** not once per Jira webhook, and its `jira_incidents_duration_sum` share is the final resolution − creation, with Jira's time zones and milliseconds; an open incident adds nothing (the old exporter added `now − created` on every update of the issue, and a date it could not parse became 9.22e9 s).
- **Deliveries are durable before they are answered** (a crash loses nothing) and are verified when a secret is configured (the old exporter verified nothing). Started as `dora-exporter` without secrets, devmetrics keeps accepting unsigned deliveries so nothing stops on the switch, and says so at start.
- **State lives in devmetrics' store;** the old snapshot (`storage.file.path`) is imported once, on first start, so `github_deployments_total`, `jira_incidents` and `jira_incidents_duration_sum` continue from their values.
- **Lead time from GitHub's own times.** `github_deployments_duration` runs from the first change a deployment ships (its oldest commit, learned from `push` deliveries) to the status's `created_at`, never to the arrival, and is absent rather than 9.22e9 s when no commit time is known; no GitHub API call is made. Each commit a successful production deployment ships is also observed once in `dora_change_lead_time_seconds{team}`, for medians.
- **`redeployment`** is the deployment payload's own flag when it sets one (as the variant read it), else `true` when the commit was deployed to that environment successfully before, so the dashboard's `redeployment="false"` panels work for GitHub Actions deployments too (whose payload is `{}`).
- **The Backstage catalog is cached:** read whole in the background, kept across restarts, asked only for repositories the static list does not name; the endpoint's base path is kept.
- **The four keys per team** (`dora_deployment_frequency_per_day`, `dora_lead_time_median_seconds`, `dora_change_failure_rate`, `dora_failed_deployment_recovery_median_seconds`, `dora_performance_level`, per 7d/30d/90d window) come from an event log, so the dashboard's ratios are no longer needed; see `docs/sources/dora.md`.
"#,
    parse,
};

fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Launch, Error> {
    let flags = super::go_flags(TOOL.name, args, &["config.file", "log", "logs"], &[])?;
    if flags.contains_key("help") {
        return Ok(Launch::Print(TOOL.help()));
    }
    let usage = |message: String| Error::Usage {
        tool: TOOL.name,
        message,
    };
    let file = PathBuf::from(
        flags
            .get("config.file")
            .map_or("config.yml", String::as_str),
    );
    let text = std::fs::read_to_string(&file)
        .map_err(|e| usage(format!("reading {}: {e}", file.display())))?;
    let old: Value = serde_yaml::from_str(&text)
        .map_err(|e| usage(format!("{} is not valid YAML: {e}", file.display())))?;
    let mut plan = Plan {
        env: TOOL.own_env(env),
        ..Plan::default()
    };
    let o = &mut plan.overrides;
    let origin = format!("{} (dora-exporter)", file.display());
    let teams = old
        .get("teams")
        .cloned()
        .unwrap_or(Value::Sequence(Vec::new()));
    o.set_from("dora.teams", teams, &origin);
    let port = match old.get("server").and_then(|s| s.get("port")) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => TOOL.default_port.to_string(),
    };
    o.set_from(
        "web.listen_addresses",
        Value::Sequence(vec![Value::String(format!(":{port}"))]),
        &format!("{origin} server.port"),
    );
    let snapshot = env
        .get("STORAGE_FILE_PATH")
        .cloned()
        .or_else(|| {
            old.get("storage")
                .and_then(|s| s.get("file"))
                .and_then(|f| f.get("path"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "dora-exporter.prom".into());
    let snapshot = Path::new(&snapshot);
    o.set_from(
        "dora.import_snapshot",
        Value::String(snapshot.display().to_string()),
        &origin,
    );
    // The snapshot's directory is the volume the old exporter kept its state on.
    let dir = snapshot
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    o.set_default(
        "storage.path",
        Value::String(dir.join("devmetrics.db").display().to_string()),
        &origin,
    );
    if let Some(level) = flags.get("log").or_else(|| flags.get("logs")) {
        let level = if level == "warning" {
            "warn"
        } else {
            level.as_str()
        };
        o.set("log.level", Value::String(level.into()), "log");
    }
    // Senders configured for the old exporter do not sign: keep taking their deliveries,
    // unless a secret is given, and say so.
    let has = |k: &str| env.get(k).is_some_and(|v| !v.is_empty());
    if has("GITHUB_WEBHOOK_SECRET") || has("DEVMETRICS_WEBHOOKS__GITHUB__SECRET") {
        let secret = env
            .get("GITHUB_WEBHOOK_SECRET")
            .or_else(|| env.get("DEVMETRICS_WEBHOOKS__GITHUB__SECRET"))
            .cloned()
            .unwrap_or_default();
        o.set_from(
            "webhooks.github.secret",
            Value::String(secret),
            "environment",
        );
    } else {
        o.set_from(
            "webhooks.github.insecure_skip_verify",
            Value::Bool(true),
            "dora-exporter",
        );
        plan.warnings.push("/api/github accepts unsigned deliveries, as dora-exporter did: set GITHUB_WEBHOOK_SECRET to the webhook's secret to verify them".into());
    }
    if !has("DEVMETRICS_DORA__JIRA__SECRET") && !has("DEVMETRICS_DORA__JIRA__URL_TOKEN") {
        o.set_from(
            "dora.jira.insecure_skip_verify",
            Value::Bool(true),
            "dora-exporter",
        );
        plan.warnings.push("/api/jira accepts unverified deliveries, as dora-exporter did: set DEVMETRICS_DORA__JIRA__SECRET (a Jira admin webhook's secret) or DEVMETRICS_DORA__JIRA__URL_TOKEN to verify them".into());
    }
    let catalog = old
        .get("catalog")
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("static");
    if catalog.eq_ignore_ascii_case("backstage") {
        let c = old.get("catalog");
        let get = |k: &str| c.and_then(|c| c.get(k)).and_then(Value::as_str);
        let from = format!("{origin} catalog");
        o.set_from(
            "dora.catalog.mode",
            Value::String("backstage".into()),
            &from,
        );
        if let Some(e) = get("endpoint") {
            o.set_from("dora.catalog.endpoint", Value::String(e.into()), &from);
        }
        match get("token").filter(|t| !t.is_empty()) {
            Some(t) => o.set_from("dora.catalog.token", Value::String(t.into()), &from),
            None if has("BACKSTAGE_TOKEN") => o.set_from(
                "dora.catalog.token",
                Value::String(env["BACKSTAGE_TOKEN"].clone()),
                "environment",
            ),
            None => {}
        }
    }
    Ok(Launch::Serve(plan))
}
