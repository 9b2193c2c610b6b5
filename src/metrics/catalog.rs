//! Every metric family, once. Sections follow the data flow: the exporter itself, then one
//! block per source. `docs/metrics.md` is generated from this table (`devmetrics docs metrics`).

use super::{FamilyDef, Kind, Origin};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

const fn core(
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
) -> FamilyDef {
    FamilyDef {
        name,
        kind,
        unit,
        help,
        labels,
        origin: Origin::Devmetrics,
        source: "core",
        buckets: &[],
    }
}

const fn core_histogram(
    name: &'static str,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> FamilyDef {
    FamilyDef {
        name,
        kind: Kind::Histogram,
        unit,
        help,
        labels,
        origin: Origin::Devmetrics,
        source: "core",
        buckets,
    }
}

use Kind::{Counter, Gauge, Histogram};

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
    FamilyDef {
        name,
        kind,
        unit,
        help,
        labels,
        origin: Origin::Devmetrics,
        source: "webhooks",
        buckets,
    }
}

pub static FAMILIES: &[FamilyDef] = &[
    // ── the exporter itself ─────────────────────────────────────────────────────────────
    core(
        "devmetrics_build_info",
        Gauge,
        None,
        "A metric with a constant '1' value labeled by version and revision of devmetrics.",
        &["version", "revision"],
    ),
    core(
        "devmetrics_start_time_seconds",
        Gauge,
        Some("seconds"),
        "Unix time at which the process started.",
        &[],
    ),
    core(
        "devmetrics_source_up",
        Gauge,
        None,
        "1 if the last scrape of the source succeeded, 0 otherwise.",
        &["source"],
    ),
    core(
        "devmetrics_source_scrape_duration_seconds",
        Gauge,
        Some("seconds"),
        "Duration of the last scrape of the source.",
        &["source"],
    ),
    core(
        "devmetrics_source_scrapes_total",
        Counter,
        None,
        "Scrapes of the source by result (success or the error kind).",
        &["source", "result"],
    ),
    core(
        "devmetrics_source_last_success_timestamp_seconds",
        Gauge,
        Some("seconds"),
        "Unix time of the last successful scrape of the source; the age of its values.",
        &["source"],
    ),
    core(
        "devmetrics_http_requests_total",
        Counter,
        None,
        "HTTP requests served, by route and status code.",
        &["route", "code"],
    ),
    core_histogram(
        "devmetrics_http_request_duration_seconds",
        Some("seconds"),
        "Time to answer an HTTP request, by route.",
        &["route"],
        LATENCY_BUCKETS,
    ),
    core(
        "devmetrics_upstream_requests_total",
        Counter,
        None,
        "Requests to upstream APIs, by upstream, endpoint class and status (a code, or the error kind).",
        &["upstream", "endpoint", "status"],
    ),
    core_histogram(
        "devmetrics_upstream_request_duration_seconds",
        Some("seconds"),
        "Latency of upstream API requests, by upstream and endpoint class.",
        &["upstream", "endpoint"],
        LATENCY_BUCKETS,
    ),
    core(
        "devmetrics_queue_depth",
        Gauge,
        None,
        "Messages waiting in the queue (ready, scheduled for retry or in flight).",
        &["topic"],
    ),
    core(
        "devmetrics_queue_oldest_message_age_seconds",
        Gauge,
        Some("seconds"),
        "Age of the oldest message still in the queue; 0 when empty.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_published_total",
        Counter,
        None,
        "Messages durably published to the queue.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_duplicates_total",
        Counter,
        None,
        "Publishes refused because a message with the same deduplication key was seen.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_acked_total",
        Counter,
        None,
        "Messages acknowledged (processed) and removed from the queue.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_retried_total",
        Counter,
        None,
        "Messages scheduled for another attempt after a failure.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_dead_lettered_total",
        Counter,
        None,
        "Messages moved to the dead-letter table after their last attempt.",
        &["topic"],
    ),
    core(
        "devmetrics_queue_dead_letters",
        Gauge,
        None,
        "Messages currently held in the dead-letter table.",
        &["topic"],
    ),
    core(
        "devmetrics_store_series",
        Gauge,
        None,
        "Series held by the store, across all scopes.",
        &[],
    ),
    core(
        "devmetrics_store_scopes",
        Gauge,
        None,
        "Scopes (units of atomic replacement) held by the store.",
        &[],
    ),
    core(
        "devmetrics_store_commits_total",
        Counter,
        None,
        "Transactions committed by the embedded database writer.",
        &[],
    ),
    core_histogram(
        "devmetrics_store_commit_duration_seconds",
        Some("seconds"),
        "Time to execute and durably commit one group of writes.",
        &[],
        LATENCY_BUCKETS,
    ),
    core_histogram(
        "devmetrics_store_commit_batch_size",
        None,
        "Operations grouped into one commit.",
        &[],
        BATCH_BUCKETS,
    ),
    core(
        "devmetrics_store_duplicate_updates_total",
        Counter,
        None,
        "Event updates skipped because their idempotency key was already applied.",
        &[],
    ),
    core(
        "devmetrics_exposition_render_duration_seconds",
        Gauge,
        Some("seconds"),
        "Duration of the last /metrics render, by format.",
        &["format"],
    ),
    // ── source: github (activity; issue 4) ──────────────────────────────────────────────
    //
    // ── source: workflows (webhooks and CI; issue 5) ─────────────────────────────────────
    //
    workflows(
        "devmetrics_webhook_deliveries_total",
        Counter,
        None,
        "Webhook deliveries received, by outcome (accepted, duplicate, ping, ignored, bad_signature, missing_header, malformed_json, too_large, bad_body, unavailable).",
        &["source", "outcome"],
        &[],
    ),
    workflows(
        "devmetrics_workflow_runs_total",
        Counter,
        None,
        "GitHub Actions workflow run attempts completed, by conclusion.",
        RUN_LABELS,
        &[],
    ),
    workflows(
        "devmetrics_workflow_run_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed workflow run attempts (run_started_at to completion).",
        RUN_LABELS,
        CI_DURATION_BUCKETS,
    ),
    workflows(
        "devmetrics_workflow_jobs_total",
        Counter,
        None,
        "GitHub Actions jobs completed, by conclusion.",
        JOB_LABELS,
        &[],
    ),
    workflows(
        "devmetrics_workflow_job_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed jobs (started_at to completed_at).",
        JOB_LABELS,
        CI_DURATION_BUCKETS,
    ),
    workflows(
        "devmetrics_workflow_job_queue_duration_seconds",
        Histogram,
        Some("seconds"),
        "Time jobs waited for a runner (created_at to started_at).",
        &["repo", "workflow", "job", "runner_group", "runner_labels"],
        CI_QUEUE_BUCKETS,
    ),
    workflows(
        "devmetrics_workflow_step_duration_seconds",
        Histogram,
        Some("seconds"),
        "Duration of completed steps (opt-in: webhooks.github.workflows.step_metrics).",
        &["repo", "workflow", "job", "step", "conclusion"],
        CI_DURATION_BUCKETS,
    ),
    workflows(
        "devmetrics_workflow_jobs_queued",
        Gauge,
        None,
        "Jobs currently queued or waiting, by requested runner labels.",
        &["repo", "runner_labels"],
        &[],
    ),
    workflows(
        "devmetrics_workflow_jobs_in_progress",
        Gauge,
        None,
        "Jobs currently running.",
        &["repo", "runner_group", "runner_labels"],
        &[],
    ),
    workflows(
        "devmetrics_workflow_runner_busy_seconds_total",
        Counter,
        Some("seconds"),
        "Runner time spent on completed jobs; rate() over the runner count gives utilisation.",
        &["runner_group", "runner_labels"],
        &[],
    ),
    workflows(
        "devmetrics_workflow_invalid_durations_total",
        Counter,
        None,
        "Durations not observed because a payload timestamp was missing or the span negative.",
        &["kind", "reason"],
        &[],
    ),
    // ── source: spacelift (issue 6) ──────────────────────────────────────────────────────
    //
];
