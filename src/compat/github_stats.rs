//! cam3ron2/github-stats-exporter.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Value;

use super::{Body, Endpoint, Error, Family, Kind, Launch, Mapping, Plan, Response, Status, Tool};

const ACTIVITY: &[&str] = &["org", "repo", "user"];
/// Every `gh_copilot_usage_*` series carries the team and breakdown labels too (empty, as
/// absent, unless broken down).
const COPILOT: &[&str] = &[
    "org", "repo", "user", "scope", "window", "team", "ide", "feature", "language", "model",
];

pub static TOOL: Tool = Tool {
    name: "github-stats-exporter",
    title: "github-stats-exporter",
    readme: "github-stats-exporter.md",
    default_port: 8080,
    usage: "github-stats-exporter [--config=PATH]\n\nReads github-stats-exporter's own YAML file (default config/local.yaml) and serves its\nendpoints and gh_activity_* families (served by devmetrics).",
    flags: &[
        Mapping {
            old: "--config, -config",
            new: "--config.file",
            note: "default config/local.yaml; the file is read as it is, its keys translated (below)",
        },
        Mapping {
            old: "-h, --help",
            new: "",
            note: "this text",
        },
    ],
    env: &[
        Mapping {
            old: "GITHUB_STATS_INITIAL_ROLE",
            new: "",
            note: "leadership is a lease in the store (ha.*): alone on the embedded store a process always leads; replicas sharing Redis elect one, so a static role is not needed",
        },
        Mapping {
            old: "HOSTNAME",
            new: "ha.replica_id",
            note: "the replica's name in the lease, with the process id appended",
        },
    ],
    config_keys: &[
        Mapping {
            old: "server.listen_addr",
            new: "web.listen_addresses",
            note: "default :8080 when absent (the old binary fell back to port 80)",
        },
        Mapping {
            old: "server.log_level",
            new: "log.level",
            note: "",
        },
        Mapping {
            old: "metrics.*",
            new: "",
            note: "every replica serves identical /metrics; there is one topology",
        },
        Mapping {
            old: "leader_election.lease_duration",
            new: "ha.lease_ttl",
            note: "the other leader_election keys name a Kubernetes Lease, replaced by the lease in the store",
        },
        Mapping {
            old: "github.api_base_url, request_timeout, orgs[].*",
            new: "github.*",
            note: "same keys; orgs[].repo_allowlist globs and per_org_concurrency kept",
        },
        Mapping {
            old: "github.unhealthy_failure_threshold, unhealthy_cooldown",
            new: "github.*",
            note: "cooldown after consecutive failures, shown in /healthz and devmetrics_source_*",
        },
        Mapping {
            old: "rate_limit.*, retry.*, loc.*, backfill.*",
            new: "github.rate_limit.*, github.retry.*, github.loc.*, github.backfill.*",
            note: "loc.source, retry.jitter and backfill.enabled/requeue_delays/coalesce_window/dedup_ttl are accepted and ignored: backfill is always on, retried by the queue, deduplicated per exact window",
        },
        Mapping {
            old: "amqp.url",
            new: "queue.backend: rabbitmq, queue.rabbitmq.url",
            note: "an empty vhost means `/`; exchange, queue and dlq names are replaced by devmetrics' topology (docs/ha.md)",
        },
        Mapping {
            old: "store.backend: redis, redis_addr, redis_password, redis_db",
            new: "storage.backend: redis, storage.redis.url",
            note: "the password is percent-encoded into the URL",
        },
        Mapping {
            old: "store.redis_mode: sentinel, redis_master_set, redis_sentinel_addrs",
            new: "storage.redis.sentinel",
            note: "",
        },
        Mapping {
            old: "store.max_series_budget",
            new: "github.activity.series_budget_per_org",
            note: "",
        },
        Mapping {
            old: "store.retention, metric_refresh_interval, index_shards, export_cache_mode",
            new: "",
            note: "the store keeps current values only; the mirror refreshes on change",
        },
        Mapping {
            old: "health.*",
            new: "",
            note: "health is read from every request, not a separate probe",
        },
        Mapping {
            old: "telemetry.*",
            new: "",
            note: "OpenTelemetry tracing of the exporter itself is not offered; logs and devmetrics_* metrics replace it",
        },
        Mapping {
            old: "copilot.*",
            new: "copilot.*",
            note: "the same keys; user_label_mode hashed is HMAC-SHA256 under copilot.user_label_secret (a random key kept in the store when none is given), emit_day_label and refresh_if_report_unchanged have no effect (each window is summed and read every interval), enterprise reports go through the client of copilot.enterprise.via_org",
        },
    ],
    endpoints: &[
        Endpoint {
            method: "GET",
            path: "/livez",
            responses: &[Response {
                status: 200,
                when: "always",
                body: Body::Text("ok"),
            }],
        },
        Endpoint {
            method: "GET",
            path: "/readyz",
            responses: &[
                Response {
                    status: 200,
                    when: "started and able to persist",
                    body: Body::Text("ready"),
                },
                Response {
                    status: 503,
                    when: "starting, or the embedded store cannot persist (the reason follows)",
                    body: Body::Prefix("not ready"),
                },
            ],
        },
        Endpoint {
            method: "GET",
            path: "/healthz",
            responses: &[
                Response {
                    status: 200,
                    when: "started",
                    body: Body::JsonKeys(&["role", "mode", "ready", "components"]),
                },
                Response {
                    status: 503,
                    when: "starting (the old exporter answered 200 with mode unhealthy)",
                    body: Body::JsonKeys(&["role", "mode", "ready"]),
                },
            ],
        },
        super::METRICS,
    ],
    families: &[
        Family {
            name: "gh_activity_commits_24h",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_prs_opened_24h",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_prs_merged_24h",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_reviews_submitted_24h",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_issue_comments_24h",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_loc_added_weekly",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_loc_removed_weekly",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_activity_last_event_unixtime",
            kind: Kind::Gauge,
            labels: ACTIVITY,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_user_initiated_interaction_count",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_code_generation_activity_count",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_code_acceptance_activity_count",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_loc_suggested_to_add_sum",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_loc_suggested_to_delete_sum",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_loc_added_sum",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_loc_deleted_sum",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_pull_requests_total_created",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_pull_requests_total_reviewed",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_pull_requests_total_created_by_copilot",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
        Family {
            name: "gh_copilot_usage_pull_requests_total_reviewed_by_copilot",
            kind: Kind::Gauge,
            labels: COPILOT,
            status: Status::Served,
        },
    ],
    events: &[],
    changes: r#"
- **The activity families keep their names and labels,** computed from the same endpoints, with the attribution rules the old exporter's tests define. Windows end at the scrape, not at a 15-minute bucket.
- **Operational families are devmetrics' own.** The old `gh_exporter_*` gauges mostly held "the count in the last cycle", so rate alerts on them could not fire. devmetrics has real counters (`devmetrics_github_requests_total`, `devmetrics_queue_*`, `devmetrics_source_*`, `devmetrics_github_rate_limit_*`); `deploy/prometheus/github-stats-exporter-rules.yaml` is the old rule file translated to them, with the same alert names, and passes `promtool check rules`.
- **Redis and RabbitMQ are optional.** One process keeps everything in its SQLite file; replicas share Redis (and RabbitMQ or Redis streams for jobs) as docs/ha.md describes, and readiness does not follow the queue: a broker outage spools jobs locally instead of taking every replica out of the Service.
- **Backfill is per exact window**, deduplicated by its key and retried with backoff, instead of 15-minute buckets whose dedupe key outlived the retries.
- **`/healthz`** keeps `role`, `mode` (healthy, degraded, unhealthy) and `ready` at the top, and its `components` describe devmetrics' store, queue, sources and leadership.
- **Kubernetes Lease election is replaced** by a lease in the shared store, so no RBAC for Leases is needed.
"#,
    parse,
};

fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Launch, Error> {
    let flags = super::go_flags(TOOL.name, args, &["config"], &[])?;
    if flags.contains_key("help") {
        return Ok(Launch::Print(TOOL.help()));
    }
    let file = PathBuf::from(
        flags
            .get("config")
            .cloned()
            .unwrap_or_else(|| "config/local.yaml".into()),
    );
    let mut plan = Plan {
        file: Some(file),
        env: TOOL.own_env(env),
        ..Plan::default()
    };
    // A file without `server.listen_addr` listens where the tool's manifests expect it.
    plan.overrides.set_default(
        "web.listen_addresses",
        Value::Sequence(vec![Value::String(format!(":{}", TOOL.default_port))]),
        "github-stats-exporter's port",
    );
    if let Some(role) = env.get("GITHUB_STATS_INITIAL_ROLE") {
        plan.warnings.push(format!(
            "GITHUB_STATS_INITIAL_ROLE={role:?} accepted and ignored: leadership is a lease in the store (ha.*), so replicas sharing Redis elect one leader and a lone process leads"
        ));
    }
    Ok(Launch::Serve(plan))
}
