//! copilot-metrics-exporter (naren4b): `GHC_TOKEN`, `ORG`, `CACHE_TTL_SECONDS`, port 8000,
//! its counters and its unprefixed gauges, now filled from the usage-metrics reports.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::{Body, Endpoint, Error, Family, Kind, Launch, Mapping, Plan, Response, Status, Tool};

const GAUGE: &[&str] = &["editor", "language", "stream", "org"];
const GONE: Status = Status::Impossible(
    "the /copilot/metrics API it came from was shut down on 2026-04-02, and the usage-metrics reports that replaced it have no such figure",
);

const fn gauge(name: &'static str, status: Status) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        labels: GAUGE,
        status,
    }
}

pub static TOOL: Tool = Tool {
    name: "copilot-metrics-exporter",
    title: "copilot-metrics-exporter",
    readme: "copilot-metrics-exporter.md",
    default_port: 8000,
    usage: "copilot-metrics-exporter\n\nConfigured by its environment (GHC_TOKEN, ORG, CACHE_TTL_SECONDS) and serving GET /metrics\non port 8000 with its counters and its gauges {editor,language,stream,org}, now read from\nGitHub's Copilot usage-metrics reports (the /copilot/metrics API it called was shut down on\n2026-04-02). Every gh_copilot_usage_* family and the seats are served too.",
    flags: &[],
    env: &[
        Mapping {
            old: "GHC_TOKEN",
            new: "github.orgs[].token",
            note: "a token reading the org's Copilot usage metrics (classic scope read:org, or the fine-grained \"Organization Copilot metrics\" permission); the org's activity is not polled",
        },
        Mapping {
            old: "ORG",
            new: "github.orgs[].org, copilot.orgs",
            note: "the org whose reports are read, and the org label (the old exporter called the enterprise endpoint with it; for an enterprise set DEVMETRICS_COPILOT__ENTERPRISE__SLUG)",
        },
        Mapping {
            old: "CACHE_TTL_SECONDS",
            new: "copilot.scrape_interval",
            note: "default 14400 (4 h): how often the reports are read; every scrape is answered from what was read",
        },
    ],
    config_keys: &[],
    endpoints: &[
        super::METRICS,
        Endpoint {
            method: "GET",
            path: "/test_metrics",
            responses: &[Response {
                status: 200,
                when: "always: adds one to copilot_exporter_requests_total and copilot_exporter_requests_failed_total{status_code=\"test\"}",
                body: Body::Text("Test metrics incremented"),
            }],
        },
    ],
    families: &[
        Family {
            name: "copilot_exporter_requests_total",
            kind: Kind::Counter,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "copilot_exporter_requests_failed_total",
            kind: Kind::Counter,
            labels: &["status_code"],
            status: Status::Served,
        },
        Family {
            name: "copilot_exporter_github_api_requests",
            kind: Kind::Counter,
            labels: &[],
            status: Status::ServedAs(
                "copilot_exporter_github_api_requests_total",
                "the README's name; prometheus_client exposed it with _total, which its dashboard queries",
            ),
        },
        Family {
            name: "copilot_exporter_cache_hits",
            kind: Kind::Counter,
            labels: &[],
            status: Status::ServedAs(
                "copilot_exporter_cache_hits_total",
                "the README's name; prometheus_client exposed it with _total, which its dashboard queries",
            ),
        },
        gauge("total_engaged_users", Status::Served),
        gauge("is_custom_model", GONE),
        gauge("total_chat_copy_events", GONE),
        gauge("total_chat_insertion_events", GONE),
        gauge("total_chats", Status::Served),
        gauge("total_code_acceptances", Status::Served),
        gauge("total_code_lines_accepted", Status::Served),
        gauge("total_code_lines_suggested", Status::Served),
        gauge("total_code_suggestions", Status::Served),
        gauge("total_active_users", Status::Served),
    ],
    events: &[],
    changes: r#"
- **The data comes from the usage-metrics reports.** GitHub shut `/copilot/metrics` down on 2026-04-02; the old exporter has only recorded 404s since. The gauges are filled from the organization's report of the latest complete day as closely as the new data allows; `docs/sources/copilot.md` says what maps and what no longer exists upstream (`is_custom_model`, the chat copy and insertion events, per-model and per editor × language series).
- **One process, one set of counters.** The old image ran two gunicorn workers, each with its own cache and counters, so consecutive scrapes saw two counter sets (Prometheus saw resets).
- **Failures are not cached.** The old exporter cached a failed answer for the whole TTL and kept stale gauges; here a failed read is retried on the next interval and shown in `devmetrics_copilot_report_state` and `devmetrics_source_up`.
- **The reports are read in the background** every `CACHE_TTL_SECONDS`, never on a scrape.
"#,
    parse,
};

fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Launch, Error> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Launch::Print(TOOL.help()));
    }
    if let Some(a) = args.first() {
        return Err(Error::Usage {
            tool: TOOL.name,
            message: format!(
                "takes no arguments (its settings are environment variables), got {a:?}"
            ),
        });
    }
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    // The old exporter failed every scrape with env_missing; failing at start says it once.
    let (Some(token), Some(org)) = (get("GHC_TOKEN"), get("ORG")) else {
        return Err(Error::Usage {
            tool: TOOL.name,
            message: "GHC_TOKEN and ORG are required".into(),
        });
    };
    let ttl = match get("CACHE_TTL_SECONDS") {
        None => 14_400,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| Error::Usage {
                tool: TOOL.name,
                message: format!("CACHE_TTL_SECONDS must be a number of seconds, got {v:?}"),
            })?,
    };
    let mut plan = Plan {
        env: TOOL.own_env(env),
        ..Plan::default()
    };
    let o = &mut plan.overrides;
    let yaml = |s: &str| serde_yaml::from_str::<Value>(s).expect("literal YAML");
    let mut org_entry = serde_yaml::Mapping::new();
    org_entry.insert("org".into(), Value::String(org.into()));
    org_entry.insert("token".into(), Value::String(token.into()));
    o.set_from(
        "github.orgs",
        Value::Sequence(vec![Value::Mapping(org_entry)]),
        "GHC_TOKEN and ORG",
    );
    o.set_from(
        "github.activity.enabled",
        Value::Bool(false),
        "copilot-metrics-exporter",
    );
    o.set_from(
        "copilot",
        yaml("{enabled: true, legacy_metrics: true, include_org_28d: true, include_org_1d: true}"),
        "copilot-metrics-exporter",
    );
    o.set_from(
        "copilot.scrape_interval",
        Value::String(format!("{ttl}s")),
        "CACHE_TTL_SECONDS",
    );
    o.set_default(
        "web.listen_addresses",
        Value::Sequence(vec![Value::String(format!(":{}", TOOL.default_port))]),
        "copilot-metrics-exporter's port",
    );
    Ok(Launch::Serve(plan))
}
