//! GitHub Actions `workflow_run` and `workflow_job` deliveries → metric updates. Pure: no I/O.
//!
//! Exactly-once under duplicates and any delivery order comes from the idempotency keys, not
//! from stored per-job state. A job moves through ranks queued (1) → in_progress (2) →
//! completed (3); a delivery of rank r applies every transition up to r, each under its own
//! key (`…/enter/queued`, `…/leave/queued`, `…/enter/in_progress`, …). Transitions already
//! applied by an earlier (or later-ranked) delivery are skipped by the store, so:
//! - a `completed` that arrives first applies enter+leave of queued and in_progress (net 0 on
//!   the gauges) and the completion; the late `in_progress` finds every key applied;
//! - a duplicate changes nothing;
//! - the consumer may process deliveries in parallel and in any order.

use crate::metrics::{self, FamilyId, Labels, Op, Update, family};
use crate::sources::github::webhook::wire::{
    Job, JobEvent, Repository, Run, RunEvent, RunEventFull,
};
use crate::timestamp::parse_rfc3339;

/// The scope of workflow series without a repository (runner time, invalid durations); each
/// repository's series sit in their own scope under it ([`repo_scope`]), so applying one
/// delivery copies one repository's series when a scrape holds the old ones, not all of them.
pub const SCOPE: &str = "webhooks/workflows";

pub fn repo_scope(repo: &str) -> String {
    format!("{SCOPE}/{repo}")
}

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Opt-in: one histogram observation per step (steps multiply the series count).
    pub step_metrics: bool,
    /// Opt-in: the `branch` label; when off it is empty (feature branches are unbounded).
    pub branch_label: bool,
    /// Runner labels kept (sorted, lower-cased) in `runner_labels`.
    pub max_runner_labels: usize,
    /// Job and step names without matrix values and numeric suffixes, and runner labels
    /// without per-run ones (see [`normalize_name`]).
    pub normalize_names: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            step_metrics: false,
            branch_label: false,
            max_runner_labels: 4,
            normalize_names: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("payload does not decode as a {event} event: {source}")]
    Decode {
        event: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Decode { .. } => "decode",
        }
    }
}

pub use crate::store::Batch;

// ── telemetry items for the sinks (domain types, not wire types) ──────────────────────

/// A finished step of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct StepItem {
    pub name: String,
    pub number: u32,
    pub status: String,
    pub conclusion: String,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobItem {
    pub job_id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub name: String,
    pub workflow: String,
    /// The repository across GitHub instances (see `Repository::instance`).
    pub instance: String,
    pub repo: String,
    pub repo_id: Option<u64>,
    pub branch: String,
    pub action: String,
    pub status: String,
    pub conclusion: String,
    pub runner_name: String,
    pub runner_group: String,
    pub labels: Vec<String>,
    pub created_at: Option<f64>,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub url: String,
    pub steps: Vec<StepItem>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunItem {
    pub run_id: u64,
    pub run_attempt: u32,
    pub run_number: u64,
    pub workflow_id: u64,
    pub workflow: String,
    /// The repository across GitHub instances (see `Repository::instance`).
    pub instance: String,
    pub repo: String,
    pub repo_id: Option<u64>,
    pub branch: String,
    pub event: String,
    pub action: String,
    pub status: String,
    pub conclusion: String,
    pub triggered_by: String,
    pub created_at: Option<f64>,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub url: String,
}

/// A finished run or job, as the sinks see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Run(RunItem),
    Job(JobItem),
}

impl Item {
    /// The completion's idempotency key: the same for every delivery of it, so a sink sends
    /// each run attempt and each job once.
    pub fn key(&self) -> String {
        match self {
            Item::Run(r) => format!(
                "{}/completed",
                run_key(&r.instance, r.run_id, r.run_attempt)
            ),
            Item::Job(j) => format!(
                "{}/completed",
                job_key(&j.instance, j.run_id, j.run_attempt, j.job_id)
            ),
        }
    }
}

/// Keys name the GitHub instance and repository as well as the ids, so deliveries from
/// github.com and a GHES posting to one receiver never swallow each other's runs.
fn run_key(instance: &str, run_id: u64, attempt: u32) -> String {
    format!("wr/{instance}/{run_id}/{attempt}")
}

fn job_key(instance: &str, run_id: u64, attempt: u32, job_id: u64) -> String {
    format!("wj/{instance}/{run_id}/{attempt}/{job_id}")
}

fn ts(s: &Option<String>) -> Option<f64> {
    s.as_deref().and_then(parse_rfc3339)
}

fn text(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// The sink item of a terminal delivery (`completed`), or None for any other.
pub fn item(event: &str, body: &[u8]) -> Result<Option<Item>, Error> {
    match event {
        "workflow_job" => {
            let e: JobEvent = serde_json::from_slice(body).map_err(|source| Error::Decode {
                event: "workflow_job",
                source,
            })?;
            let j = e.workflow_job;
            if rank(&e.action, j.status.as_deref()) != 3 {
                return Ok(None);
            }
            Ok(Some(Item::Job(JobItem {
                job_id: j.id,
                run_id: j.run_id,
                run_attempt: j.run_attempt.unwrap_or(1),
                workflow: text(&j.workflow_name),
                instance: e.repository.instance(),
                repo: e.repository.full_name,
                repo_id: e.repository.id,
                branch: text(&j.head_branch),
                action: e.action,
                status: text(&j.status),
                conclusion: j.conclusion.clone().unwrap_or_else(|| "unknown".into()),
                runner_name: text(&j.runner_name),
                runner_group: text(&j.runner_group_name),
                created_at: ts(&j.created_at),
                started_at: ts(&j.started_at),
                completed_at: ts(&j.completed_at),
                url: text(&j.html_url),
                steps: j
                    .steps
                    .iter()
                    .map(|s| StepItem {
                        name: s.name.clone(),
                        number: s.number,
                        status: text(&s.status),
                        conclusion: text(&s.conclusion),
                        started_at: ts(&s.started_at),
                        completed_at: ts(&s.completed_at),
                    })
                    .collect(),
                labels: j.labels,
                name: j.name,
            })))
        }
        "workflow_run" => {
            let e: RunEventFull = serde_json::from_slice(body).map_err(|source| Error::Decode {
                event: "workflow_run",
                source,
            })?;
            if e.action != "completed" {
                return Ok(None);
            }
            let r = &e.workflow_run;
            Ok(Some(Item::Run(RunItem {
                run_id: r.id,
                run_attempt: r.run_attempt.unwrap_or(1),
                run_number: r.run_number.unwrap_or(0),
                workflow_id: r.workflow_id.unwrap_or(0),
                workflow: workflow_name(r).to_string(),
                instance: e.repository.instance(),
                repo: e.repository.full_name.clone(),
                repo_id: e.repository.id,
                branch: text(&r.head_branch),
                event: text(&r.event),
                action: e.action.clone(),
                status: text(&r.status),
                conclusion: r.conclusion.clone().unwrap_or_else(|| "unknown".into()),
                triggered_by: e.sender.map(|s| s.login).unwrap_or_default(),
                created_at: ts(&r.created_at),
                started_at: ts(&r.run_started_at),
                completed_at: ts(&r.updated_at),
                url: text(&r.html_url),
            })))
        }
        _ => Ok(None),
    }
}

// ── processing ─────────────────────────────────────────────────────────────────────────

/// Event types this processor wants; the receiver answers 200 without queuing the rest.
pub const EVENTS: &[&str] = &["workflow_run", "workflow_job"];

pub fn process(event: &str, body: &[u8], opts: &Options) -> Result<Vec<Batch>, Error> {
    match event {
        "workflow_job" => {
            let e: JobEvent = serde_json::from_slice(body).map_err(|source| Error::Decode {
                event: "workflow_job",
                source,
            })?;
            Ok(job(&e.action, &e.workflow_job, &e.repository, opts))
        }
        "workflow_run" => {
            let e: RunEvent = serde_json::from_slice(body).map_err(|source| Error::Decode {
                event: "workflow_run",
                source,
            })?;
            Ok(run(&e.action, &e.workflow_run, &e.repository, opts))
        }
        _ => Ok(Vec::new()),
    }
}

fn labels(family: FamilyId, values: &[&str]) -> Labels {
    Labels::new(family, values).expect("label arity matches the catalog")
}

fn upd(family: FamilyId, values: &[&str], op: Op) -> Update {
    Update {
        family,
        labels: labels(family, values),
        op,
    }
}

/// A duration between two payload timestamps, or why it cannot be used.
enum Span {
    Ok(f64),
    Missing,
    Negative,
}

fn span(from: Option<&str>, to: Option<&str>) -> Span {
    match (from.and_then(parse_rfc3339), to.and_then(parse_rfc3339)) {
        (Some(a), Some(b)) if b >= a => Span::Ok(b - a),
        (Some(_), Some(_)) => Span::Negative,
        _ => Span::Missing,
    }
}

/// Observes `s` in `family`, or counts it as invalid under `kind`.
fn observe(
    out: &mut Vec<Update>,
    s: Span,
    family: FamilyId,
    values: &[&str],
    kind: &str,
) -> Option<f64> {
    match s {
        Span::Ok(v) => {
            out.push(upd(family, values, Op::Observe(v)));
            Some(v)
        }
        Span::Missing => {
            out.push(invalid(kind, "missing"));
            None
        }
        Span::Negative => {
            out.push(invalid(kind, "negative"));
            None
        }
    }
}

fn invalid(kind: &str, reason: &str) -> Update {
    upd(
        metrics::DEVMETRICS_WORKFLOW_INVALID_DURATIONS_TOTAL,
        &[kind, reason],
        Op::Inc(1.0),
    )
}

/// Sorted, lower-cased, de-duplicated and capped: GitHub lists `runs-on` labels in the
/// workflow's order, and the same runner must not yield two series. With `normalize`,
/// labels that name one run (a run id or a hash in them) are left out.
pub fn runner_labels(raw: &[String], max: usize, normalize: bool) -> String {
    let mut v: Vec<String> = raw.iter().map(|l| l.trim().to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v.retain(|l| !(l.is_empty() || normalize && names_one_run(l)));
    v.truncate(max);
    v.join(",")
}

/// A label with six digits in a row, or a run of twelve hex digits with one, is taken for a
/// run id or hash (`runs-on: gpu-${{ github.run_id }}`); fixed labels have neither.
fn names_one_run(label: &str) -> bool {
    let (mut digits, mut hex, mut hex_has_digit) = (0, 0, false);
    for c in label.chars() {
        digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
        if c.is_ascii_hexdigit() {
            hex += 1;
            hex_has_digit |= c.is_ascii_digit();
        } else {
            hex = 0;
            hex_has_digit = false;
        }
        if digits >= 6 || (hex >= 12 && hex_has_digit) {
            return true;
        }
    }
    false
}

/// A job or step name with what varies between runs of the same job taken off: matrix
/// values (`test (ubuntu-latest, 18)` → `test`), numeric suffixes (`shard-3`, `e2e 12` →
/// `shard`, `e2e`), and the command of an unnamed step (`Run npm test` → `Run`).
pub fn normalize_name(name: &str) -> String {
    let mut n = name.trim();
    if n.strip_prefix("Run ")
        .is_some_and(|rest| !rest.trim().is_empty())
    {
        return "Run".to_string();
    }
    if let Some(open) = n.rfind(" (").filter(|_| n.ends_with(')')) {
        n = n[..open].trim_end();
    }
    let stripped = n.trim_end_matches(|c: char| c.is_ascii_digit());
    if stripped.len() < n.len() {
        let base = stripped.trim_end_matches([' ', '-', '_', '/', '#', '.']);
        if !base.is_empty() {
            n = base;
        }
    }
    n.to_string()
}

fn rank(action: &str, status: Option<&str>) -> u8 {
    match action {
        "queued" | "waiting" => 1,
        "in_progress" => 2,
        "completed" => 3,
        _ => match status {
            Some("queued" | "waiting" | "pending" | "requested") => 1,
            Some("in_progress") => 2,
            Some("completed") => 3,
            _ => 0,
        },
    }
}

/// Splits one keyed set of updates by scope: series with a repository go to its scope, the
/// rest to [`SCOPE`] under the key with `/shared` added. The repository batch is kept even
/// when empty, so the key marks the transition as done.
fn keyed(out: &mut Vec<Batch>, repo: &str, key: String, updates: Vec<Update>) {
    let (own, shared): (Vec<Update>, Vec<Update>) = updates
        .into_iter()
        .partition(|u| family(u.family).labels.contains(&"repo"));
    if !shared.is_empty() {
        out.push(Batch {
            key: format!("{key}/shared"),
            scope: SCOPE.to_string(),
            updates: shared,
        });
    }
    out.push(Batch {
        key,
        scope: repo_scope(repo),
        updates: own,
    });
}

fn job(action: &str, j: &Job, repository: &Repository, opts: &Options) -> Vec<Batch> {
    let r = rank(action, j.status.as_deref());
    if r == 0 {
        return Vec::new();
    }
    let repo = repository.full_name.as_str();
    let key = job_key(
        &repository.instance(),
        j.run_id,
        j.run_attempt.unwrap_or(1),
        j.id,
    );
    let rl = runner_labels(&j.labels, opts.max_runner_labels, opts.normalize_names);
    let group = j.runner_group_name.as_deref().unwrap_or("");
    let workflow = j.workflow_name.as_deref().unwrap_or("");
    let name = match opts.normalize_names {
        true => normalize_name(&j.name),
        false => j.name.clone(),
    };
    let branch = if opts.branch_label {
        j.head_branch.as_deref().unwrap_or("")
    } else {
        ""
    };
    // A job cancelled while queued completes without ever running: it has no runner and
    // never entered in_progress.
    let ran = r == 2 || j.runner_name.as_deref().is_some_and(|n| !n.is_empty());
    // The gauges count members: each leave takes off exactly what its enter put on, even
    // when the leaving delivery names another repository or runner group.
    let (queued, running) = (format!("{key}/queued"), format!("{key}/in_progress"));
    let queue_gauge = |op| {
        vec![upd(
            metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED,
            &[repo, &rl],
            op,
        )]
    };
    let running_gauge = |op| {
        vec![upd(
            metrics::DEVMETRICS_WORKFLOW_JOBS_IN_PROGRESS,
            &[repo, group, &rl],
            op,
        )]
    };
    let mut out = Vec::new();
    keyed(
        &mut out,
        repo,
        format!("{key}/enter/queued"),
        queue_gauge(Op::Enter(queued.clone())),
    );
    if r >= 2 {
        keyed(
            &mut out,
            repo,
            format!("{key}/leave/queued"),
            queue_gauge(Op::Leave(queued)),
        );
        // A job that never ran still marks its running transitions as done, so a late
        // `in_progress` cannot enter a finished job.
        let mut enter = Vec::new();
        let mut queue_time = Vec::new();
        if ran {
            enter = running_gauge(Op::Enter(running.clone()));
            observe(
                &mut queue_time,
                span(j.created_at.as_deref(), j.started_at.as_deref()),
                metrics::DEVMETRICS_WORKFLOW_JOB_QUEUE_DURATION_SECONDS,
                &[repo, workflow, &name, group, &rl],
                "job_queue",
            );
        }
        keyed(&mut out, repo, format!("{key}/enter/in_progress"), enter);
        keyed(&mut out, repo, format!("{key}/queue_time"), queue_time);
    }
    if r >= 3 {
        keyed(
            &mut out,
            repo,
            format!("{key}/leave/in_progress"),
            running_gauge(Op::Leave(running)),
        );
        let conclusion = j.conclusion.as_deref().unwrap_or("unknown");
        let values = [repo, workflow, &name, branch, conclusion, group, &rl];
        let mut u = vec![upd(
            metrics::DEVMETRICS_WORKFLOW_JOBS_TOTAL,
            &values,
            Op::Inc(1.0),
        )];
        if ran {
            let d = observe(
                &mut u,
                span(j.started_at.as_deref(), j.completed_at.as_deref()),
                metrics::DEVMETRICS_WORKFLOW_JOB_DURATION_SECONDS,
                &values,
                "job",
            );
            if let Some(d) = d {
                u.push(upd(
                    metrics::DEVMETRICS_WORKFLOW_RUNNER_BUSY_SECONDS_TOTAL,
                    &[group, &rl],
                    Op::Inc(d),
                ));
            }
        }
        if opts.step_metrics {
            for s in &j.steps {
                if s.status.as_deref() != Some("completed") {
                    continue;
                }
                let step = match opts.normalize_names {
                    true => normalize_name(&s.name),
                    false => s.name.clone(),
                };
                let c = s.conclusion.as_deref().unwrap_or("unknown");
                observe(
                    &mut u,
                    span(s.started_at.as_deref(), s.completed_at.as_deref()),
                    metrics::DEVMETRICS_WORKFLOW_STEP_DURATION_SECONDS,
                    &[repo, workflow, &name, &step, c],
                    "step",
                );
            }
        }
        keyed(&mut out, repo, format!("{key}/completed"), u);
    }
    out
}

/// The workflow's display name; runs of a workflow without `name:` carry an empty one, and
/// GitHub then shows the file path.
pub(crate) fn workflow_name(r: &Run) -> &str {
    match r.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => r.path.as_deref().unwrap_or(""),
    }
}

fn run(action: &str, r: &Run, repository: &Repository, opts: &Options) -> Vec<Batch> {
    // `requested` can carry status completed (a run that needs approval); only the
    // `completed` action is terminal.
    if action != "completed" {
        return Vec::new();
    }
    let repo = repository.full_name.as_str();
    let key = format!(
        "{}/completed",
        run_key(&repository.instance(), r.id, r.run_attempt.unwrap_or(1))
    );
    let branch = if opts.branch_label {
        r.head_branch.as_deref().unwrap_or("")
    } else {
        ""
    };
    let values = [
        repo,
        workflow_name(r),
        r.event.as_deref().unwrap_or(""),
        branch,
        r.conclusion.as_deref().unwrap_or("unknown"),
    ];
    let mut u = vec![upd(
        metrics::DEVMETRICS_WORKFLOW_RUNS_TOTAL,
        &values,
        Op::Inc(1.0),
    )];
    // For a completed run `updated_at` is its completion; `run_started_at` is this attempt's
    // start (`created_at` is the first attempt's).
    observe(
        &mut u,
        span(r.run_started_at.as_deref(), r.updated_at.as_deref()),
        metrics::DEVMETRICS_WORKFLOW_RUN_DURATION_SECONDS,
        &values,
        "run",
    );
    let mut out = Vec::new();
    keyed(&mut out, repo, key, u);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_body(action: &str, id: u64, started: Option<&str>, completed: Option<&str>) -> Vec<u8> {
        serde_json::json!({
            "action": action,
            "workflow_job": {
                "id": id, "run_id": 7, "run_attempt": 1, "name": "build",
                "workflow_name": "CI", "head_branch": "main", "status": action,
                "conclusion": if action == "completed" { Some("success") } else { None },
                "created_at": "2024-01-01T00:00:00Z",
                "started_at": started, "completed_at": completed,
                "labels": ["Ubuntu-Latest", "ubuntu-latest"],
                "runner_name": if action == "queued" { None } else { Some("r1") },
                "runner_group_name": "Default",
                "steps": [{"name": "s", "number": 1, "status": "completed", "conclusion": "success",
                           "started_at": started, "completed_at": completed}]
            },
            "repository": {"full_name": "o/r"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_same_ids_on_two_github_instances_never_share_keys() {
        let on = |html_url: &str| {
            let mut v: serde_json::Value = serde_json::from_slice(&job_body(
                "completed",
                1,
                Some("2024-01-01T00:00:10Z"),
                Some("2024-01-01T00:01:10Z"),
            ))
            .unwrap();
            v["repository"] =
                serde_json::json!({"full_name": "o/r", "id": 42, "html_url": html_url});
            let body = v.to_string().into_bytes();
            let keys: Vec<String> = process("workflow_job", &body, &Options::default())
                .unwrap()
                .into_iter()
                .map(|b| b.key)
                .collect();
            let item = item("workflow_job", &body).unwrap().unwrap();
            (keys, item.key())
        };
        let (dotcom, dotcom_item) = on("https://github.com/o/r");
        let (ghes, ghes_item) = on("https://GHE.example.com/o/r");
        assert_eq!(dotcom[0], "wj/github.com/42/7/1/1/enter/queued");
        assert_eq!(ghes[0], "wj/ghe.example.com/42/7/1/1/enter/queued");
        assert!(dotcom.iter().all(|k| !ghes.contains(k)));
        assert_eq!(dotcom_item, "wj/github.com/42/7/1/1/completed");
        assert_ne!(dotcom_item, ghes_item);
    }

    #[test]
    fn completed_first_applies_every_transition_with_net_zero_gauges() {
        let b = job_body(
            "completed",
            1,
            Some("2024-01-01T00:00:10Z"),
            Some("2024-01-01T00:01:10Z"),
        );
        let batches = process("workflow_job", &b, &Options::default()).unwrap();
        let keys: Vec<(&str, &str)> = batches
            .iter()
            .map(|b| (b.key.as_str(), b.scope.as_str()))
            .collect();
        let repo = "webhooks/workflows/o/r";
        assert_eq!(
            keys,
            [
                ("wj/github.com/o/r/7/1/1/enter/queued", repo),
                ("wj/github.com/o/r/7/1/1/leave/queued", repo),
                ("wj/github.com/o/r/7/1/1/enter/in_progress", repo),
                ("wj/github.com/o/r/7/1/1/queue_time", repo),
                ("wj/github.com/o/r/7/1/1/leave/in_progress", repo),
                ("wj/github.com/o/r/7/1/1/completed/shared", SCOPE),
                ("wj/github.com/o/r/7/1/1/completed", repo),
            ]
        );
        // Leaves name the member their enter created, never labels of their own.
        assert_eq!(
            batches[0].updates[0].op,
            Op::Enter("wj/github.com/o/r/7/1/1/queued".into())
        );
        assert_eq!(
            batches[1].updates[0].op,
            Op::Leave("wj/github.com/o/r/7/1/1/queued".into())
        );
        assert_eq!(
            batches[4].updates[0].op,
            Op::Leave("wj/github.com/o/r/7/1/1/in_progress".into())
        );
        let shared = &batches[5];
        assert_eq!(shared.updates.len(), 1);
        assert_eq!(shared.updates[0].op, Op::Inc(60.0));
        let done = batches.last().unwrap();
        assert!(done.updates.iter().any(|u| u.op == Op::Observe(60.0)));
        assert!(
            done.updates[0]
                .labels
                .as_str()
                .contains("runner_labels=\"ubuntu-latest\""),
            "{:?}",
            done.updates[0].labels
        );
        // Steps are opt-in.
        assert_eq!(done.updates.len(), 2);
        let with_steps = Options {
            step_metrics: true,
            ..Options::default()
        };
        let batches = process("workflow_job", &b, &with_steps).unwrap();
        assert_eq!(batches.last().unwrap().updates.len(), 3);
    }

    #[test]
    fn a_job_that_never_ran_still_closes_its_running_transitions() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&job_body("completed", 1, None, None)).unwrap();
        v["workflow_job"]["runner_name"] = serde_json::Value::Null;
        v["workflow_job"]["conclusion"] = "cancelled".into();
        let batches = process(
            "workflow_job",
            v.to_string().as_bytes(),
            &Options::default(),
        )
        .unwrap();
        let running: Vec<&Batch> = batches
            .iter()
            .filter(|b| b.key.ends_with("in_progress") || b.key.ends_with("queue_time"))
            .collect();
        assert_eq!(running.len(), 3, "{batches:?}");
        // Nothing enters; the leave (of a member that never entered) takes nothing off.
        assert!(running[..2].iter().all(|b| b.updates.is_empty()));
        // So a late in_progress finds every key it would apply already taken.
        let late = process(
            "workflow_job",
            &job_body("in_progress", 1, Some("2024-01-01T00:00:10Z"), None),
            &Options::default(),
        )
        .unwrap();
        let taken: Vec<&str> = batches.iter().map(|b| b.key.as_str()).collect();
        assert!(
            late.iter().all(|b| taken.contains(&b.key.as_str())),
            "{late:?}"
        );
    }

    #[test]
    fn negative_and_missing_durations_are_counted_not_observed() {
        let b = job_body(
            "completed",
            1,
            Some("2024-01-01T00:02:00Z"),
            Some("2024-01-01T00:01:00Z"),
        );
        let batches = process("workflow_job", &b, &Options::default()).unwrap();
        let all: Vec<&Update> = batches.iter().flat_map(|b| &b.updates).collect();
        assert!(
            batches
                .iter()
                .filter(|b| b.key.contains("completed"))
                .flat_map(|b| &b.updates)
                .all(|u| !matches!(u.op, Op::Observe(_)))
        );
        assert!(
            all.iter()
                .any(|u| u.labels.as_str() == "kind=\"job\",reason=\"negative\"")
        );
        let b = job_body("completed", 1, Some("2024-01-01T00:02:00Z"), None);
        let shared = process("workflow_job", &b, &Options::default())
            .unwrap()
            .into_iter()
            .find(|b| b.key.ends_with("completed/shared"))
            .unwrap();
        assert_eq!(shared.scope, SCOPE);
        assert!(
            shared
                .updates
                .iter()
                .any(|u| u.labels.as_str() == "kind=\"job\",reason=\"missing\"")
        );
    }

    #[test]
    fn queued_only_enters_the_queue_and_unknown_actions_do_nothing() {
        let b = job_body("queued", 1, None, None);
        let batches = process("workflow_job", &b, &Options::default()).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0].updates[0].op,
            Op::Enter("wj/github.com/o/r/7/1/1/queued".into())
        );
        let b = String::from_utf8(job_body("queued", 1, None, None))
            .unwrap()
            .replace("\"queued\"", "\"mystery\"");
        assert!(
            process("workflow_job", b.as_bytes(), &Options::default())
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            process("workflow_job", b"{}", &Options::default()),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn runner_labels_are_normalised_and_capped() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            runner_labels(&l(&["self-hosted", "Linux", "X64", "linux"]), 4, false),
            "linux,self-hosted,x64"
        );
        assert_eq!(runner_labels(&l(&["c", "b", "a"]), 2, false), "a,b");
        let per_run = l(&["self-hosted", "gpu-9876543210", "pool-3f2a9c1be4d7"]);
        assert_eq!(
            runner_labels(&per_run, 4, false),
            "gpu-9876543210,pool-3f2a9c1be4d7,self-hosted"
        );
        assert_eq!(runner_labels(&per_run, 4, true), "self-hosted");
        // Fixed labels with a few digits or hex-looking words stay.
        let fixed = l(&[
            "ubuntu-24.04",
            "x64",
            "arm64",
            "deadbeefcafe",
            "m7i-4xlarge",
        ]);
        assert_eq!(
            runner_labels(&fixed, 8, true),
            "arm64,deadbeefcafe,m7i-4xlarge,ubuntu-24.04,x64"
        );
    }

    #[test]
    fn names_lose_matrix_values_numeric_suffixes_and_commands() {
        for (raw, want) in [
            ("test (ubuntu-latest, 18)", "test"),
            ("shard-3", "shard"),
            ("e2e 12", "e2e"),
            ("Run npm test -- --shard=3/8", "Run"),
            ("build", "build"),
            ("deploy (prod)", "deploy"),
            ("py3", "py"),
            ("42", "42"),
            ("(matrix)", "(matrix)"),
            ("Run", "Run"),
        ] {
            assert_eq!(normalize_name(raw), want, "{raw}");
        }
    }
}
