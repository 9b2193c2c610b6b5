//! Every metric family, once. Sections follow the data flow: the exporter itself, then one
//! block per source. `docs/metrics.md` is generated from this table (`devmetrics docs metrics`).

use super::{FamilyDef, FamilyId, Kind, Origin};

/// Declares every family once: `FAMILIES` in declaration order, and a [`FamilyId`] constant
/// per family, so a misspelt family does not build and no hot path looks a name up.
macro_rules! families {
    ($($id:ident: $def:expr),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[repr(u16)]
        enum Index { $($id,)* }
        $(pub const $id: FamilyId = FamilyId(Index::$id as u16);)*
        pub static FAMILIES: &[FamilyDef] = &[$($def,)*];
    };
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The one constructor; the per-source helpers below only fix its source and origin.
#[allow(clippy::too_many_arguments)]
const fn def(
    source: &'static str,
    origin: Origin,
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> FamilyDef {
    FamilyDef {
        name,
        kind,
        unit,
        help,
        labels,
        origin,
        source,
        buckets,
    }
}

/// A family of ours (no replaced tool's contract to keep) produced by `source`.
const fn ours(
    source: &'static str,
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    def(
        source,
        Origin::Devmetrics,
        name,
        kind,
        unit,
        help,
        labels,
        &[],
    )
}

const fn core(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    ours("core", name, kind, unit, help, labels)
}

const fn core_histogram(
    name: &'static str,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> FamilyDef {
    def(
        "core",
        Origin::Devmetrics,
        name,
        Kind::Histogram,
        unit,
        help,
        labels,
        buckets,
    )
}

use Kind::{Counter, Gauge, Histogram, LegacyCounter};

/// Labels of every `gh_copilot_usage_*` series: github-stats-exporter's, then the team and
/// the opt-in breakdown dimensions (empty, Prometheus' absent, when not broken down).
const COPILOT_LABELS: &[&str] = &[
    "org", "repo", "user", "scope", "window", "team", "ide", "feature", "language", "model",
];

const fn gh_copilot(name: &'static str, help: &'static str) -> FamilyDef {
    def(
        "copilot",
        Origin::GithubStatsExporter,
        name,
        Kind::Gauge,
        None,
        help,
        COPILOT_LABELS,
        &[],
    )
}

const fn copilot(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    ours("copilot", name, kind, unit, help, labels)
}

/// A counter of the org's or enterprise's days, read once each from the 1-day reports.
const fn copilot_day(name: &'static str, help: &'static str) -> FamilyDef {
    ours(
        "copilot",
        name,
        Kind::Counter,
        None,
        help,
        &["org", "scope"],
    )
}

/// copilot-metrics-exporter's unprefixed gauges, under `copilot.legacy_metrics`.
const fn copilot_legacy(name: &'static str, help: &'static str) -> FamilyDef {
    def(
        "copilot",
        Origin::CopilotMetricsExporter,
        name,
        Kind::Gauge,
        None,
        help,
        &["editor", "language", "stream", "org"],
        &[],
    )
}

const fn copilot_exporter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    def(
        "copilot",
        Origin::CopilotMetricsExporter,
        name,
        Kind::Counter,
        None,
        help,
        labels,
        &[],
    )
}

const fn spacelift(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    origin: Origin,
) -> FamilyDef {
    def("spacelift", origin, name, kind, unit, help, labels, &[])
}

const fn dora(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    origin: Origin,
) -> FamilyDef {
    def("dora", origin, name, kind, unit, help, labels, &[])
}

/// Lead times: an hour to six months, DORA's bands among them.
const LEAD_BUCKETS: &[f64] = &[
    300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0, 1209600.0,
    2592000.0, 7776000.0, 15552000.0,
];

const fn dora_histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> FamilyDef {
    def(
        "dora",
        Origin::Devmetrics,
        name,
        Histogram,
        Some("seconds"),
        help,
        labels,
        buckets,
    )
}

const fn github(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    ours("github", name, kind, unit, help, labels)
}

/// github-stats-exporter's activity gauges: names and labels kept exactly.
const fn gh_activity(name: &'static str, help: &'static str) -> FamilyDef {
    def(
        "github",
        Origin::GithubStatsExporter,
        name,
        Kind::Gauge,
        None,
        help,
        &["org", "repo", "user"],
        &[],
    )
}

const CI_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0,
];
const CI_QUEUE_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const RUN_LABELS: &[&str] = &["repo", "workflow", "event", "branch", "conclusion"];
const JOB_LABELS: &[&str] = &[
    "repo",
    "workflow",
    "job",
    "branch",
    "conclusion",
    "runner_group",
    "runner_labels",
];

const fn workflows(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> FamilyDef {
    def(
        "webhooks",
        Origin::Devmetrics,
        name,
        kind,
        unit,
        help,
        labels,
        buckets,
    )
}

families! {
    // ── the exporter itself ─────────────────────────────────────────────────────────────
    DEVMETRICS_BUILD_INFO: core(
        "devmetrics_build_info",
        Gauge,
        None,
        "A metric with a constant '1' value labeled by version and revision of devmetrics.",
        &["version", "revision"],
    ),
    DEVMETRICS_START_TIME_SECONDS: core(
        "devmetrics_start_time_seconds",
        Gauge,
        Some("seconds"),
        "Unix time at which the process started.",
        &[],
    ),
    DEVMETRICS_SOURCE_UP: core(
        "devmetrics_source_up",
        Gauge,
        None,
        "1 if the last scrape of the source succeeded, 0 otherwise.",
        &["source"],
    ),
    DEVMETRICS_SOURCE_SCRAPE_DURATION_SECONDS: core(
        "devmetrics_source_scrape_duration_seconds",
        Gauge,
        Some("seconds"),
        "Duration of the last scrape of the source.",
        &["source"],
    ),
    DEVMETRICS_SOURCE_SCRAPES_TOTAL: core(
        "devmetrics_source_scrapes_total",
        Counter,
        None,
        "Scrapes of the source by result (success or the error kind).",
        &["source", "result"],
    ),
    DEVMETRICS_SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS: core(
        "devmetrics_source_last_success_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Unix time of the last successful scrape of the source; the age of its values.",
        &["source"],
    ),
    DEVMETRICS_SOURCE_NEXT_POLL_TIMESTAMP_SECONDS: core(
        "devmetrics_source_next_poll_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Unix time the source's next poll is due on the leader; in the past, polls fall behind their interval.",
        &["source"],
    ),
    DEVMETRICS_HTTP_REQUESTS_TOTAL: core(
        "devmetrics_http_requests_total",
        Counter,
        None,
        "HTTP requests served, by route and status code.",
        &["route", "code"],
    ),
    DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS: core_histogram(
        "devmetrics_http_request_duration_seconds",
        Some("seconds"),
        "Time to answer an HTTP request, by route.",
        &["route"],
        LATENCY_BUCKETS,
    ),
    DEVMETRICS_UPSTREAM_REQUESTS_TOTAL: core(
        "devmetrics_upstream_requests_total",
        Counter,
        None,
        "Requests to upstream APIs, by upstream, endpoint class and status (a code, or the error kind).",
        &["upstream", "endpoint", "status"],
    ),
    DEVMETRICS_UPSTREAM_REQUEST_DURATION_SECONDS: core_histogram(
        "devmetrics_upstream_request_duration_seconds",
        Some("seconds"),
        "Latency of upstream API requests, by upstream and endpoint class.",
        &["upstream", "endpoint"],
        LATENCY_BUCKETS,
    ),
    DEVMETRICS_QUEUE_DEPTH: core(
        "devmetrics_queue_depth",
        Gauge,
        None,
        "Messages waiting in the queue (ready, scheduled for retry or in flight).",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_OLDEST_MESSAGE_AGE_SECONDS: core(
        "devmetrics_queue_oldest_message_age_seconds",
        Gauge,
        Some("seconds"),
        "Age of the oldest message still in the queue; 0 when empty.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_PUBLISHED_TOTAL: core(
        "devmetrics_queue_published_total",
        Counter,
        None,
        "Messages durably published to the queue.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_DUPLICATES_TOTAL: core(
        "devmetrics_queue_duplicates_total",
        Counter,
        None,
        "Publishes refused because a message with the same deduplication key was seen.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_CONFLICTS_TOTAL: core(
        "devmetrics_queue_conflicts_total",
        Counter,
        None,
        "Publishes refused because their deduplication key was seen with different content (a reused key).",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_ACKED_TOTAL: core(
        "devmetrics_queue_acked_total",
        Counter,
        None,
        "Messages acknowledged (processed) and removed from the queue.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_HANDLED_AT_PUBLISH_TOTAL: core(
        "devmetrics_queue_handled_at_publish_total",
        Counter,
        None,
        "Messages handled in their publish's own commit, never waiting in the queue (also counted as published and acked).",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_RETRIED_TOTAL: core(
        "devmetrics_queue_retried_total",
        Counter,
        None,
        "Messages scheduled for another attempt after a failure.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_DEAD_LETTERED_TOTAL: core(
        "devmetrics_queue_dead_lettered_total",
        Counter,
        None,
        "Messages moved to the dead-letter table after their last attempt.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_DEAD_LETTERS: core(
        "devmetrics_queue_dead_letters",
        Gauge,
        None,
        "Messages currently held in the dead-letter table.",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_REPLAYED_TOTAL: core(
        "devmetrics_queue_replayed_total",
        Counter,
        None,
        "Dead letters put back on their topic (`devmetrics queue replay`).",
        &["topic"],
    ),
    DEVMETRICS_QUEUE_REJECTED_TOTAL: core(
        "devmetrics_queue_rejected_total",
        Counter,
        None,
        "Publishes refused, by reason (full: the topic held queue.max_depth messages).",
        &["topic", "reason"],
    ),
    DEVMETRICS_STORE_UP: core(
        "devmetrics_store_up",
        Gauge,
        None,
        "1 while the store persists writes, 0 while its last write failed (a full disk, Redis unreachable); /metrics then serves the last values.",
        &[],
    ),
    DEVMETRICS_STORE_SERIES: core(
        "devmetrics_store_series",
        Gauge,
        None,
        "Series held by the store, across all scopes.",
        &[],
    ),
    DEVMETRICS_STORE_SCOPES: core(
        "devmetrics_store_scopes",
        Gauge,
        None,
        "Scopes (units of atomic replacement) held by the store.",
        &[],
    ),
    DEVMETRICS_STORE_COMMITS_TOTAL: core(
        "devmetrics_store_commits_total",
        Counter,
        None,
        "Transactions committed by the embedded database writer.",
        &[],
    ),
    DEVMETRICS_STORE_COMMIT_DURATION_SECONDS: core_histogram(
        "devmetrics_store_commit_duration_seconds",
        Some("seconds"),
        "Time to execute and durably commit one group of writes.",
        &[],
        LATENCY_BUCKETS,
    ),
    DEVMETRICS_STORE_COMMIT_BATCH_SIZE: core_histogram(
        "devmetrics_store_commit_batch_size",
        None,
        "Operations grouped into one commit.",
        &[],
        BATCH_BUCKETS,
    ),
    DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL: core(
        "devmetrics_store_duplicate_updates_total",
        Counter,
        None,
        "Event updates skipped because their idempotency key was already applied.",
        &[],
    ),
    DEVMETRICS_LEADER: core(
        "devmetrics_leader",
        Gauge,
        None,
        "1 on the replica holding the leader lease (it runs the pollers), 0 on the others.",
        &["replica"],
    ),
    DEVMETRICS_LEADER_CHANGES_TOTAL: core(
        "devmetrics_leader_changes_total",
        Counter,
        None,
        "Times this replica became or stopped being the leader.",
        &[],
    ),
    DEVMETRICS_SERIES_DROPPED_TOTAL: core(
        "devmetrics_series_dropped_total",
        Counter,
        None,
        "Updates dropped because they would add a series past the family's series budget (webhooks.github.workflows.series_budget); also on /healthz.",
        &["family"],
    ),
    DEVMETRICS_EXPOSITION_RENDER_DURATION_SECONDS: core(
        "devmetrics_exposition_render_duration_seconds",
        Gauge,
        Some("seconds"),
        "Duration of the last /metrics render, by format.",
        &["format"],
    ),
    DEVMETRICS_EXPOSITION_GZIP_SCOPES_TOTAL: core(
        "devmetrics_exposition_gzip_scopes_total",
        Counter,
        None,
        "Scopes in gzip-compressed /metrics renders, by format: reused (compressed parts kept from an earlier scrape, the scope unchanged) or encoded (compressed for this scrape).",
        &["format", "result"],
    ),
    // ── source: github (activity) ──────────────────────────────────────────────
    //
    GH_ACTIVITY_COMMITS_24H: gh_activity(
        "gh_activity_commits_24h",
        "Commits on the default branch in the 24 hours ending at the repo's last scrape, by attributed user.",
    ),
    GH_ACTIVITY_PRS_OPENED_24H: gh_activity(
        "gh_activity_prs_opened_24h",
        "Pull requests opened in the 24 hours ending at the repo's last scrape, by PR author.",
    ),
    GH_ACTIVITY_PRS_MERGED_24H: gh_activity(
        "gh_activity_prs_merged_24h",
        "Pull requests merged in the 24 hours ending at the repo's last scrape, by PR author.",
    ),
    GH_ACTIVITY_REVIEWS_SUBMITTED_24H: gh_activity(
        "gh_activity_reviews_submitted_24h",
        "Pull request reviews submitted (any state) in the 24 hours ending at the repo's last scrape, by reviewer.",
    ),
    GH_ACTIVITY_ISSUE_COMMENTS_24H: gh_activity(
        "gh_activity_issue_comments_24h",
        "Issue and pull request conversation comments created in the 24 hours ending at the repo's last scrape, by commenter.",
    ),
    GH_ACTIVITY_LOC_ADDED_WEEKLY: gh_activity(
        "gh_activity_loc_added_weekly",
        "Lines added in the last complete statistics week (Sunday 00:00 UTC), from /stats/contributors.",
    ),
    GH_ACTIVITY_LOC_REMOVED_WEEKLY: gh_activity(
        "gh_activity_loc_removed_weekly",
        "Lines removed in the last complete statistics week (Sunday 00:00 UTC), from /stats/contributors.",
    ),
    GH_ACTIVITY_LAST_EVENT_UNIXTIME: gh_activity(
        "gh_activity_last_event_unixtime",
        "Unix time of the user's latest commit, PR opened or merged, review or comment in the 24-hour window.",
    ),
    DEVMETRICS_GITHUB_RATE_LIMIT_REMAINING: github(
        "devmetrics_github_rate_limit_remaining",
        Gauge,
        None,
        "Primary rate limit left for the org's installation (or token), from the last x-ratelimit-remaining.",
        &["org", "installation_id"],
    ),
    DEVMETRICS_GITHUB_RATE_LIMIT_RESET_TIMESTAMP_SECONDS: github(
        "devmetrics_github_rate_limit_reset_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "When the org's primary rate-limit window resets.",
        &["org", "installation_id"],
    ),
    DEVMETRICS_GITHUB_SECONDARY_LIMIT_HITS_TOTAL: github(
        "devmetrics_github_secondary_limit_hits_total",
        Counter,
        None,
        "Secondary rate-limit answers (403/429 with Retry-After or a secondary-limit message).",
        &["org"],
    ),
    DEVMETRICS_GITHUB_NOT_MODIFIED_TOTAL: github(
        "devmetrics_github_not_modified_total",
        Counter,
        None,
        "Conditional requests answered 304 (no primary rate limit spent).",
        &["org"],
    ),
    DEVMETRICS_GITHUB_CYCLE_REQUESTS: github(
        "devmetrics_github_cycle_requests",
        Gauge,
        None,
        "Requests of the org's last scrape cycle that counted against the primary rate limit.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_BUDGET_OVERCOMMITTED: github(
        "devmetrics_github_budget_overcommitted",
        Gauge,
        None,
        "1 when the org's scrape interval cannot fit its rate-limit budget and the interval is being stretched.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_COLD_START_PENDING_REPOS: github(
        "devmetrics_github_cold_start_pending_repos",
        Gauge,
        None,
        "Repos never fetched yet that the last cycle left for later ones because the rate-limit budget was running low (a cold start spread over cycles, newest activity first); 0 once the org is fully shown.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_EFFECTIVE_INTERVAL_SECONDS: github(
        "devmetrics_github_effective_interval_seconds",
        Gauge,
        Some("seconds"),
        "The org's scrape interval after stretching to fit the rate-limit budget.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_ORG_COOLDOWN: github(
        "devmetrics_github_org_cooldown",
        Gauge,
        None,
        "1 while the org is in cooldown after repeated failures (its skipped cycles are backfilled).",
        &["org"],
    ),
    DEVMETRICS_GITHUB_SCRAPE_PROGRESS_RATIO: github(
        "devmetrics_github_scrape_progress_ratio",
        Gauge,
        Some("ratio"),
        "Repos done of the total in the org's current (or last) scrape cycle.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_SCRAPE_ETA_SECONDS: github(
        "devmetrics_github_scrape_eta_seconds",
        Gauge,
        Some("seconds"),
        "Estimated time left in the org's current scrape cycle; 0 when idle.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_SERIES_BUDGET_EXCEEDED: github(
        "devmetrics_github_series_budget_exceeded",
        Gauge,
        None,
        "1 when the org's last cycle hit github.activity.series_budget_per_org and dropped series.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_GRAPHQL_FALLBACKS_TOTAL: github(
        "devmetrics_github_graphql_fallbacks_total",
        Counter,
        None,
        "Repo fetches that fell back from GraphQL to REST because GraphQL failed (5xx, errors, timeouts, bad answers), by error kind; GraphQL then rests for 15 minutes.",
        &["org", "reason"],
    ),
    DEVMETRICS_GITHUB_CHANGE_DETECTION_FALLBACKS_TOTAL: github(
        "devmetrics_github_change_detection_fallbacks_total",
        Counter,
        None,
        "Cycles whose org-wide change detection (the search of updated issues and pull requests) failed, so each repo was probed instead.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_CHANGED_REPOS: github(
        "devmetrics_github_changed_repos",
        Gauge,
        None,
        "Repos the org's last change detection found with an issue or pull request updated (opened, commented, reviewed, merged) since the detection before.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_SEARCH_REQUESTS_TOTAL: github(
        "devmetrics_github_search_requests_total",
        Counter,
        None,
        "Search API requests of the org's change detection; they spend search's own limit (30 a minute), not the REST budget.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_LOC_FALLBACK_DEFERRED_TOTAL: github(
        "devmetrics_github_loc_fallback_deferred_total",
        Counter,
        None,
        "Repos whose commit-level LOC fallback was postponed because the org's hourly commit-detail budget could not cover the whole week.",
        &["org"],
    ),
    DEVMETRICS_GITHUB_BACKFILL_JOBS_TOTAL: github(
        "devmetrics_github_backfill_jobs_total",
        Counter,
        None,
        "Backfill jobs by result: enqueued, dropped (per-minute cap), applied, superseded (a newer window already shown), failed, expired.",
        &["org", "result"],
    ),
    // ── source: workflows (webhooks and CI ) ─────────────────────────────────────
    //
    DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL: workflows(
        "devmetrics_webhook_deliveries_total",
        Counter,
        None,
        "Webhook deliveries received, by outcome (accepted, duplicate (a redelivery: same delivery id and body), conflict (a delivery id seen before with a different body; not queued), ping, ignored, filtered (repository not admitted by webhooks.github.repo_allowlist/repo_exclude), bad_signature, missing_header, malformed_json, too_large, bad_body, unavailable, overloaded).",
        &["source", "outcome"],
        &[],
    ),
    DEVMETRICS_WEBHOOK_REDELIVERIES_TOTAL: workflows(
        "devmetrics_webhook_redeliveries_total",
        Counter,
        None,
        "Failed webhook deliveries whose redelivery was requested from GitHub (requested), refused by GitHub (refused), or later seen delivered (recovered).",
        &["source", "result"],
        &[],
    ),
    DEVMETRICS_WEBHOOK_FAILED_DELIVERIES: workflows(
        "devmetrics_webhook_failed_deliveries",
        Gauge,
        None,
        "Deliveries of the org webhook within the recovery lookback that have no successful attempt.",
        &["org", "hook"],
        &[],
    ),
    DEVMETRICS_WORKFLOW_RUNNERS: workflows(
        "devmetrics_workflow_runners",
        Gauge,
        None,
        "Self-hosted runners by state (idle, busy, offline): the org's (repo empty) and those of listed repositories; the denominator of utilisation.",
        &["org", "repo", "runner_group", "runner_labels", "state"],
        &[],
    ),
    DEVMETRICS_WORKFLOW_RUNS_TOTAL: workflows(
        "devmetrics_workflow_runs_total",
        Counter,
        None,
        "GitHub Actions workflow run attempts completed, by conclusion.",
        RUN_LABELS,
        &[],
    ),
    DEVMETRICS_WORKFLOW_RUN_DURATION_SECONDS: workflows(
        "devmetrics_workflow_run_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed workflow run attempts (run_started_at to completion).",
        RUN_LABELS,
        CI_DURATION_BUCKETS,
    ),
    DEVMETRICS_WORKFLOW_JOBS_TOTAL: workflows(
        "devmetrics_workflow_jobs_total",
        Counter,
        None,
        "GitHub Actions jobs completed, by conclusion.",
        JOB_LABELS,
        &[],
    ),
    DEVMETRICS_WORKFLOW_JOB_DURATION_SECONDS: workflows(
        "devmetrics_workflow_job_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed jobs (started_at to completed_at).",
        JOB_LABELS,
        CI_DURATION_BUCKETS,
    ),
    DEVMETRICS_WORKFLOW_JOB_QUEUE_DURATION_SECONDS: workflows(
        "devmetrics_workflow_job_queue_duration_seconds",
        Histogram,
        Some("seconds"),
        "Time jobs waited for a runner (created_at to started_at).",
        &["repo", "workflow", "job", "runner_group", "runner_labels"],
        CI_QUEUE_BUCKETS,
    ),
    DEVMETRICS_WORKFLOW_STEP_DURATION_SECONDS: workflows(
        "devmetrics_workflow_step_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed steps (opt-in: webhooks.github.workflows.step_metrics).",
        &["repo", "workflow", "job", "step", "conclusion"],
        CI_DURATION_BUCKETS,
    ),
    DEVMETRICS_WORKFLOW_JOBS_QUEUED: workflows(
        "devmetrics_workflow_jobs_queued",
        Gauge,
        None,
        "Jobs currently queued or waiting, by requested runner labels.",
        &["repo", "runner_labels"],
        &[],
    ),
    DEVMETRICS_WORKFLOW_JOBS_IN_PROGRESS: workflows(
        "devmetrics_workflow_jobs_in_progress",
        Gauge,
        None,
        "Jobs currently running.",
        &["repo", "runner_group", "runner_labels"],
        &[],
    ),
    DEVMETRICS_WORKFLOW_RUNNER_BUSY_SECONDS_TOTAL: workflows(
        "devmetrics_workflow_runner_busy_seconds_total",
        Counter,
        Some("seconds"),
        "Runner time spent on completed jobs; rate() over the runner count gives utilisation.",
        &["runner_group", "runner_labels"],
        &[],
    ),
    DEVMETRICS_WORKFLOW_INVALID_DURATIONS_TOTAL: workflows(
        "devmetrics_workflow_invalid_durations_total",
        Counter,
        None,
        "Durations not observed because a payload timestamp was missing or the span negative.",
        &["kind", "reason"],
        &[],
    ),
    // ── source: spacelift ──────────────────────────────────────────────────────
    //
    SPACELIFT_PUBLIC_WORKER_POOL_RUNS_PENDING: spacelift(
        "spacelift_public_worker_pool_runs_pending",
        Gauge,
        None,
        "The number of runs in your account currently queued and waiting for a public worker",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_PUBLIC_WORKER_POOL_WORKERS_BUSY: spacelift(
        "spacelift_public_worker_pool_workers_busy",
        Gauge,
        None,
        "The number of currently busy workers in the public worker pool for this account",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_PUBLIC_WORKER_POOL_PARALLELISM: spacelift(
        "spacelift_public_worker_pool_parallelism",
        Gauge,
        None,
        "The maximum number of simultaneously executing runs on the public worker pool for this account",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_WORKER_POOL_RUNS_PENDING: spacelift(
        "spacelift_worker_pool_runs_pending",
        Gauge,
        None,
        "The number of runs currently queued and waiting for a worker from a particular pool",
        &["worker_pool_id", "worker_pool_name"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_WORKER_POOL_WORKERS_BUSY: spacelift(
        "spacelift_worker_pool_workers_busy",
        Gauge,
        None,
        "The number of currently busy workers in a worker pool",
        &["worker_pool_id", "worker_pool_name"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_WORKER_POOL_WORKERS: spacelift(
        "spacelift_worker_pool_workers",
        Gauge,
        None,
        "The number of workers in a worker pool",
        &["worker_pool_id", "worker_pool_name"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_WORKER_POOL_WORKERS_DRAINED: spacelift(
        "spacelift_worker_pool_workers_drained",
        Gauge,
        None,
        "The number of workers in a worker pool that have been drained",
        &["worker_pool_id", "worker_pool_name"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_BILLING_PERIOD_START_TIMESTAMP_SECONDS: spacelift(
        "spacelift_current_billing_period_start_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "The timestamp of the start of the current billing period",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_BILLING_PERIOD_END_TIMESTAMP_SECONDS: spacelift(
        "spacelift_current_billing_period_end_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "The timestamp of the end of the current billing period",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_BILLING_PERIOD_USED_PRIVATE_SECONDS: spacelift(
        "spacelift_current_billing_period_used_private_seconds",
        Gauge,
        Some("seconds"),
        "The amount of private worker usage in the current billing period",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_BILLING_PERIOD_USED_PUBLIC_SECONDS: spacelift(
        "spacelift_current_billing_period_used_public_seconds",
        Gauge,
        Some("seconds"),
        "The amount of public worker usage in the current billing period",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_BILLING_PERIOD_USED_SEATS: spacelift(
        "spacelift_current_billing_period_used_seats",
        Gauge,
        None,
        "The number of seats used in the current billing period",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_STACKS_COUNT_BY_STATE: spacelift(
        "spacelift_current_stacks_count_by_state",
        Gauge,
        None,
        "The number of stacks grouped by state",
        &["state", "stack", "space"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_RESOURCES_COUNT_BY_DRIFT: spacelift(
        "spacelift_current_resources_count_by_drift",
        Gauge,
        None,
        "The number of resources by drift",
        &["state", "stack", "space"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_AVG_STACK_SIZE_BY_RESOURCE_COUNT: spacelift(
        "spacelift_current_avg_stack_size_by_resource_count",
        Gauge,
        None,
        "The average stack size by resource count",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_AVERAGE_RUN_DURATION: spacelift(
        "spacelift_current_average_run_duration",
        Gauge,
        None,
        "The average run duration (nanoseconds, as Spacelift reports it, over its 30-day window)",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_CURRENT_MEDIAN_RUN_DURATION: spacelift(
        "spacelift_current_median_run_duration",
        Gauge,
        None,
        "The median run duration (nanoseconds, as Spacelift reports it, over its 30-day window)",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_SCRAPE_DURATION_SECONDS: spacelift(
        "spacelift_scrape_duration_seconds",
        Gauge,
        Some("seconds"),
        "The duration in seconds of the request to the Spacelift API for metrics",
        &[],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_BUILD_INFO: spacelift(
        "spacelift_build_info",
        Gauge,
        None,
        "Contains build information about the exporter",
        &["version", "commit", "goversion"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_SCRAPE_COLLECTOR_SUCCESS: spacelift(
        "spacelift_scrape_collector_success",
        Gauge,
        None,
        "Whether a collector succeeded on the last scrape (1) or failed (0).",
        &["collector"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_SCRAPE_COLLECTOR_DURATION_SECONDS: spacelift(
        "spacelift_scrape_collector_duration_seconds",
        Gauge,
        Some("seconds"),
        "Duration of a collector's Spacelift API request on the last scrape.",
        &["collector"],
        Origin::SpaceliftExporter,
    ),
    SPACELIFT_SCRAPE_COLLECTOR_SUPPORTED: spacelift(
        "spacelift_scrape_collector_supported",
        Gauge,
        None,
        "Whether Spacelift serves a collector's data to this API key and release (1) or refuses it (0: the collector's series are absent, which is not a failure). Spacelift refuses per-stack data (the stacks collector) to API keys.",
        &["collector"],
        Origin::SpaceliftExporter,
    ),
    DEVMETRICS_SPACELIFT_COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS: spacelift(
        "devmetrics_spacelift_collector_last_success_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Unix time of a Spacelift collector's last successful query: the age of the values it holds.",
        &["collector"],
        Origin::Devmetrics,
    ),
    DEVMETRICS_SPACELIFT_STACKS_OMITTED: spacelift(
        "devmetrics_spacelift_stacks_omitted",
        Gauge,
        None,
        "Stacks left out of the per-stack families on the last scrape, by reason (filtered by the space/stack lists, or over the series budget).",
        &["reason"],
        Origin::Devmetrics,
    ),
    SPACELIFT_RUNS_NEEDING_APPROVAL: spacelift(
        "spacelift_runs_needing_approval",
        Gauge,
        None,
        "Runs waiting for someone to approve them.",
        &[],
        Origin::Devmetrics,
    ),
    SPACELIFT_RUNS_REQUIRING_ATTENTION: spacelift(
        "spacelift_runs_requiring_attention",
        Gauge,
        None,
        "Runs that need a person: unconfirmed plans and failures Spacelift flags for attention.",
        &[],
        Origin::Devmetrics,
    ),
    SPACELIFT_STACK_STATE: spacelift(
        "spacelift_stack_state",
        Gauge,
        None,
        "1 for each stack, labelled with its current state (the state of its most recent tracked run).",
        &["stack", "space", "state"],
        Origin::Devmetrics,
    ),
    SPACELIFT_STACK_RESOURCES: spacelift(
        "spacelift_stack_resources",
        Gauge,
        None,
        "Resources a stack manages.",
        &["stack", "space"],
        Origin::Devmetrics,
    ),
    SPACELIFT_STACK_RESOURCES_DRIFTED: spacelift(
        "spacelift_stack_resources_drifted",
        Gauge,
        None,
        "Resources of a stack on which drift detection found drift.",
        &["stack", "space"],
        Origin::Devmetrics,
    ),
    SPACELIFT_RUNS: spacelift(
        "spacelift_runs",
        Gauge,
        None,
        "Runs by space, type and state, among each exported stack's most recent runs page.",
        &["space", "type", "state"],
        Origin::Devmetrics,
    ),
    // ── source: dora ─────────────────────────────────────────────────────────────────
    GITHUB_DEPLOYMENTS_TOTAL: dora(
        "github_deployments_total",
        Counter,
        None,
        "Deployment statuses, each distinct status once, by the repository's name, environment, owning team and state (every state counts, as dora-exporter counted them; filter status=\"success\" for deployments). redeployment is the deployment payload's own flag when it sets one, else \"true\" when the commit was deployed to the environment successfully before.",
        &["repo", "environment", "team", "status", "redeployment"],
        Origin::DoraExporter,
    ),
    GITHUB_DEPLOYMENTS_DURATION: dora(
        "github_deployments_duration",
        Gauge,
        None,
        "The last deployment status's lead time in seconds: from the first change it ships (the oldest commit, from pushes), else the deployed commit, to GitHub's time of the status; absent when neither commit time is known.",
        &["repo", "environment", "team", "status", "redeployment"],
        Origin::DoraExporter,
    ),
    GITHUB_DEPLOYMENTS_DURATION_SUM: dora(
        "github_deployments_duration_sum",
        Gauge,
        None,
        "Running sum of github_deployments_duration over the statuses counted (each status once), for increase(_sum)/increase(github_deployments_total) as dora-exporter's dashboard divides it.",
        &["repo", "environment", "team", "status", "redeployment"],
        Origin::DoraExporter,
    ),
    DORA_CHANGE_LEAD_TIME_SECONDS: dora_histogram(
        "dora_change_lead_time_seconds",
        "Lead time for changes: each commit a successful production deployment ships (between the previous successful deployment of that repository and environment and this one), from its commit time to the deployment, observed once.",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_CHANGES_TOTAL: dora(
        "dora_changes_total",
        Counter,
        None,
        "Production deployments that count as changes for the change failure rate: each successful one, and each failed one while dora.failed_deployments_are_failures holds (the default).",
        &["team"],
        Origin::Devmetrics,
    ),
    DORA_FAILED_CHANGES_TOTAL: dora(
        "dora_failed_changes_total",
        Counter,
        None,
        "Failed changes: a production deployment that failed (reason=\"failed_deployment\"), or the latest successful production deployment of the team before an incident started (reason=\"incident\", DevLake's rule; a deployment counts once however many incidents follow it).",
        &["team", "reason"],
        Origin::Devmetrics,
    ),
    DORA_FAILED_DEPLOYMENT_RECOVERY_SECONDS: dora_histogram(
        "dora_failed_deployment_recovery_seconds",
        "Failed-deployment recovery time: an incident's first resolution − the time of the deployment it is attributed to, and a failed production deployment's next successful deployment of that repository and environment − its time; each observed once.",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_INCIDENTS_TOTAL: dora(
        "dora_incidents_total",
        Counter,
        None,
        "Incidents, each once, by team and where it was reported (jira, or github: issues carrying dora.github_incidents.label).",
        &["team", "source"],
        Origin::Devmetrics,
    ),
    DORA_PR_CODING_SECONDS: dora_histogram(
        "dora_pr_coding_seconds",
        "Coding time of a pull request reaching production: its first commit → opened. Observed once per pull request, when a successful production deployment first ships its merge commit.",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_PR_PICKUP_SECONDS: dora_histogram(
        "dora_pr_pickup_seconds",
        "Pickup time of a pull request reaching production: opened → first review (absent when merged unreviewed).",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_PR_REVIEW_SECONDS: dora_histogram(
        "dora_pr_review_seconds",
        "Review time of a pull request reaching production: first review → merged.",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_PR_DEPLOY_SECONDS: dora_histogram(
        "dora_pr_deploy_seconds",
        "Deploy time of a pull request: merged → the first successful production deployment shipping its merge commit.",
        &["team"],
        LEAD_BUCKETS,
    ),
    DORA_DEPLOYMENT_FREQUENCY: dora(
        "dora_deployment_frequency_per_day",
        Gauge,
        None,
        "Successful production deployments per day over the trailing window (7d, 30d, 90d), from the event log; recomputed every dora.four_keys_interval.",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_DEPLOYMENT_DAYS: dora(
        "dora_deployment_days",
        Gauge,
        None,
        "Distinct UTC days with at least one successful production deployment in the trailing window.",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_LEAD_TIME_MEDIAN_SECONDS: dora(
        "dora_lead_time_median_seconds",
        Gauge,
        Some("seconds"),
        "Median lead time for changes of the commits shipped to production in the trailing window (absent when none).",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_LEAD_TIME_P90_SECONDS: dora(
        "dora_lead_time_p90_seconds",
        Gauge,
        Some("seconds"),
        "90th percentile lead time for changes of the commits shipped to production in the trailing window (absent when none).",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_CHANGE_FAILURE_RATE: dora(
        "dora_change_failure_rate",
        Gauge,
        None,
        "Failed changes / changes among the production deployments of the trailing window, each attributed as dora_failed_changes_total says (absent without deployments).",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_RECOVERY_MEDIAN_SECONDS: dora(
        "dora_failed_deployment_recovery_median_seconds",
        Gauge,
        Some("seconds"),
        "Median failed-deployment recovery time of the recoveries (incident resolutions, fixing deployments) in the trailing window (absent when none).",
        &["team", "window"],
        Origin::Devmetrics,
    ),
    DORA_PERFORMANCE_LEVEL: dora(
        "dora_performance_level",
        Gauge,
        None,
        "1 for the DORA performance level (elite, high, medium, low) each key reaches in the trailing window, 0 for the others; metric=\"overall\" is the lowest of the keys measured. Thresholds in docs/sources/dora.md.",
        &["team", "window", "metric", "level"],
        Origin::Devmetrics,
    ),
    JIRA_INCIDENTS: dora(
        "jira_incidents",
        LegacyCounter,
        None,
        "The amount of incidents.",
        &["project", "team"],
        Origin::DoraExporter,
    ),
    JIRA_INCIDENTS_DURATION_SUM: dora(
        "jira_incidents_duration_sum",
        Gauge,
        None,
        "The amount of incidents.",
        &["project", "team"],
        Origin::DoraExporter,
    ),
    DEVMETRICS_DORA_EVENTS_TOTAL: dora(
        "devmetrics_dora_events_total",
        Counter,
        None,
        "DORA deliveries processed, by source and outcome. jira: applied, unchanged (nothing to add), stale (older than the newest event of its issue; counted once if first), or why it is not an incident (malformed, no_issue, no_created, bad_date, filtered by dora.jira). github: applied, duplicate (a status counted before), or why it is not a deployment status (malformed, incomplete, bad_date).",
        &["source", "outcome"],
        Origin::Devmetrics,
    ),
    GH_COPILOT_USAGE_USER_INITIATED_INTERACTION_COUNT: gh_copilot(
        "gh_copilot_usage_user_initiated_interaction_count",
        "Prompts users sent to Copilot (chat, agent, CLI), summed over the window's days: per user (scope=\"users\"), per team, or the org's or enterprise's day totals (user=\"all\").",
    ),
    GH_COPILOT_USAGE_CODE_GENERATION_ACTIVITY_COUNT: gh_copilot(
        "gh_copilot_usage_code_generation_activity_count",
        "Code suggestions and generations Copilot made, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_CODE_ACCEPTANCE_ACTIVITY_COUNT: gh_copilot(
        "gh_copilot_usage_code_acceptance_activity_count",
        "Suggestions and generations users accepted, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_LOC_SUGGESTED_TO_ADD_SUM: gh_copilot(
        "gh_copilot_usage_loc_suggested_to_add_sum",
        "Lines Copilot suggested adding, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_LOC_SUGGESTED_TO_DELETE_SUM: gh_copilot(
        "gh_copilot_usage_loc_suggested_to_delete_sum",
        "Lines Copilot suggested deleting, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_LOC_ADDED_SUM: gh_copilot(
        "gh_copilot_usage_loc_added_sum",
        "Lines added from accepted suggestions, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_LOC_DELETED_SUM: gh_copilot(
        "gh_copilot_usage_loc_deleted_sum",
        "Lines deleted from accepted suggestions, summed over the window's days.",
    ),
    GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_CREATED: gh_copilot(
        "gh_copilot_usage_pull_requests_total_created",
        "Pull requests created, from the aggregate report's pull_requests.total_created summed over its days (org and enterprise scopes).",
    ),
    GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_REVIEWED: gh_copilot(
        "gh_copilot_usage_pull_requests_total_reviewed",
        "Pull requests reviewed, from pull_requests.total_reviewed summed over the report's days.",
    ),
    GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_CREATED_BY_COPILOT: gh_copilot(
        "gh_copilot_usage_pull_requests_total_created_by_copilot",
        "Pull requests Copilot created, from pull_requests.total_created_by_copilot summed over the report's days.",
    ),
    GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_REVIEWED_BY_COPILOT: gh_copilot(
        "gh_copilot_usage_pull_requests_total_reviewed_by_copilot",
        "Pull requests Copilot reviewed, from pull_requests.total_reviewed_by_copilot summed over the report's days.",
    ),
    DEVMETRICS_COPILOT_ACTIVE_USERS: copilot(
        "devmetrics_copilot_active_users",
        Gauge,
        None,
        "Daily, weekly and monthly active Copilot users of the org or enterprise, as the last day of the window's aggregate report states them.",
        &["org", "scope", "window", "period"],
    ),
    DEVMETRICS_COPILOT_ENGAGED_USERS: copilot(
        "devmetrics_copilot_engaged_users",
        Gauge,
        None,
        "Users engaged with a feature (monthly chat and agent users, daily CLI users), from the last day of the aggregate report.",
        &["org", "scope", "window", "feature", "period"],
    ),
    DEVMETRICS_COPILOT_USER_USED: copilot(
        "devmetrics_copilot_user_used",
        Gauge,
        None,
        "1 when the user used chat, agent mode or the CLI on any day of the window (the users report's used_* flags), else 0; user as copilot.user_label_mode names them.",
        &["org", "user", "feature", "window"],
    ),
    DEVMETRICS_COPILOT_REPORT_STATE: copilot(
        "devmetrics_copilot_report_state",
        Gauge,
        None,
        "1 for each report's state at its last read, 0 for the others: ok, no_data (204: nothing for the day), disabled (422: the usage metrics policy is off), not_found (404: no access or no such org), error (anything else; see the logs).",
        &["org", "report", "state"],
    ),
    DEVMETRICS_COPILOT_REPORT_LAST_DAY_TIMESTAMP_SECONDS: copilot(
        "devmetrics_copilot_report_last_day_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Midnight UTC of the last day the report read covers; time() minus it is the data's age.",
        &["org", "report"],
    ),
    DEVMETRICS_COPILOT_RECORDS: copilot(
        "devmetrics_copilot_records",
        Gauge,
        None,
        "Records of the report's last read, by outcome: read, or left out (max_records_per_report, max_users_per_report, malformed, unknown_record, truncated when the file passed copilot.max_download_bytes).",
        &["org", "report", "outcome"],
    ),
    DEVMETRICS_COPILOT_SEATS: copilot(
        "devmetrics_copilot_seats",
        Gauge,
        None,
        "Copilot seats of the org: total (GitHub's total_seats), assigned (with an assignee), pending_cancellation.",
        &["org", "state"],
    ),
    DEVMETRICS_COPILOT_SEATS_ACTIVE: copilot(
        "devmetrics_copilot_seats_active",
        Gauge,
        None,
        "Seats whose last activity is within the period (1d, 7d, 28d), by the editor of that activity (the first part of last_activity_editor).",
        &["org", "period", "editor"],
    ),
    DEVMETRICS_COPILOT_SEAT_LAST_ACTIVITY_TIMESTAMP_SECONDS: copilot(
        "devmetrics_copilot_seat_last_activity_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Each seat's last Copilot activity (opt-in: copilot.include_seat_activity_per_user), user as copilot.user_label_mode names them.",
        &["org", "user"],
    ),
    DEVMETRICS_COPILOT_USER_INITIATED_INTERACTIONS_TOTAL: copilot_day(
        "devmetrics_copilot_user_initiated_interactions_total",
        "Prompts users sent to Copilot, each complete day's 1-day aggregate report counted once (days missed while down are read later from the queue, so increase() over any range adds up).",
    ),
    DEVMETRICS_COPILOT_CODE_GENERATIONS_TOTAL: copilot_day(
        "devmetrics_copilot_code_generations_total",
        "Code suggestions and generations Copilot made, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_CODE_ACCEPTANCES_TOTAL: copilot_day(
        "devmetrics_copilot_code_acceptances_total",
        "Suggestions and generations users accepted, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_LOC_SUGGESTED_TO_ADD_TOTAL: copilot_day(
        "devmetrics_copilot_loc_suggested_to_add_total",
        "Lines Copilot suggested adding, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_LOC_SUGGESTED_TO_DELETE_TOTAL: copilot_day(
        "devmetrics_copilot_loc_suggested_to_delete_total",
        "Lines Copilot suggested deleting, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_LOC_ADDED_TOTAL: copilot_day(
        "devmetrics_copilot_loc_added_total",
        "Lines added from accepted suggestions, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_LOC_DELETED_TOTAL: copilot_day(
        "devmetrics_copilot_loc_deleted_total",
        "Lines deleted from accepted suggestions, each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_PULL_REQUESTS_CREATED_TOTAL: copilot_day(
        "devmetrics_copilot_pull_requests_created_total",
        "Pull requests created (pull_requests.total_created), each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_PULL_REQUESTS_REVIEWED_TOTAL: copilot_day(
        "devmetrics_copilot_pull_requests_reviewed_total",
        "Pull requests reviewed (pull_requests.total_reviewed), each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_PULL_REQUESTS_CREATED_BY_COPILOT_TOTAL: copilot_day(
        "devmetrics_copilot_pull_requests_created_by_copilot_total",
        "Pull requests Copilot created (pull_requests.total_created_by_copilot), each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_PULL_REQUESTS_REVIEWED_BY_COPILOT_TOTAL: copilot_day(
        "devmetrics_copilot_pull_requests_reviewed_by_copilot_total",
        "Pull requests Copilot reviewed (pull_requests.total_reviewed_by_copilot), each day's 1-day aggregate report counted once.",
    ),
    DEVMETRICS_COPILOT_DAYS_TOTAL: copilot(
        "devmetrics_copilot_days_total",
        Counter,
        None,
        "Days whose 1-day aggregate report was counted into the devmetrics_copilot_*_total counters, by result: counted, or no_data (GitHub answered 204: nothing for the day).",
        &["org", "report", "result"],
    ),
    DEVMETRICS_COPILOT_DAYS_UNCOUNTED: copilot(
        "devmetrics_copilot_days_uncounted",
        Gauge,
        None,
        "Days of the copilot.backfill_days horizon (yesterday included) not yet counted when the poll last looked; each was queued for its 1-day report. Above 1 for long: a day keeps failing (see the queue's dead letters).",
        &["org", "report"],
    ),
    COPILOT_EXPORTER_REQUESTS_TOTAL: copilot_exporter(
        "copilot_exporter_requests_total",
        "Requests to /metrics (copilot-metrics-exporter's counter).",
        &[],
    ),
    COPILOT_EXPORTER_REQUESTS_FAILED_TOTAL: copilot_exporter(
        "copilot_exporter_requests_failed_total",
        "Failed or empty answers of GitHub's Copilot API, by HTTP status or error type (request_exception).",
        &["status_code"],
    ),
    COPILOT_EXPORTER_GITHUB_API_REQUESTS_TOTAL: copilot_exporter(
        "copilot_exporter_github_api_requests_total",
        "Requests made to GitHub's Copilot API (report links and seats; the report files' downloads are not GitHub API requests).",
        &[],
    ),
    COPILOT_EXPORTER_CACHE_HITS_TOTAL: copilot_exporter(
        "copilot_exporter_cache_hits_total",
        "Scrapes of /metrics answered from the Copilot figures already read (all of them: reports are read in the background every copilot.scrape_interval).",
        &[],
    ),
    TOTAL_ACTIVE_USERS: copilot_legacy(
        "total_active_users",
        "copilot-metrics-exporter's gauge, under copilot.legacy_metrics: the daily active users of the latest complete day (stream=\"\").",
    ),
    TOTAL_ENGAGED_USERS: copilot_legacy(
        "total_engaged_users",
        "copilot-metrics-exporter's gauge: the day's engaged users where the new reports state them (the day's CLI users for stream copilot_cli; monthly chat users for copilot_ide_chat).",
    ),
    TOTAL_CODE_SUGGESTIONS: copilot_legacy(
        "total_code_suggestions",
        "copilot-metrics-exporter's gauge: the day's code completions' code_generation_activity_count by language (editor=\"\") and by IDE (language=\"\").",
    ),
    TOTAL_CODE_ACCEPTANCES: copilot_legacy(
        "total_code_acceptances",
        "copilot-metrics-exporter's gauge: the day's code completions' code_acceptance_activity_count, by language and by IDE.",
    ),
    TOTAL_CODE_LINES_SUGGESTED: copilot_legacy(
        "total_code_lines_suggested",
        "copilot-metrics-exporter's gauge: the day's code completions' loc_suggested_to_add_sum, by language and by IDE.",
    ),
    TOTAL_CODE_LINES_ACCEPTED: copilot_legacy(
        "total_code_lines_accepted",
        "copilot-metrics-exporter's gauge: the day's code completions' loc_added_sum, by language and by IDE.",
    ),
    TOTAL_CHATS: copilot_legacy(
        "total_chats",
        "copilot-metrics-exporter's gauge: the day's chat prompts (user_initiated_interaction_count of the chat features), stream copilot_ide_chat.",
    ),
}
