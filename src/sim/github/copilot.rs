//! GitHub's Copilot usage-metrics reports and seats: the report-link endpoints answer signed
//! links to a separate download host ([`Downloads`]) that serves the files (NDJSON split over
//! several files for user reports, one pretty-printed document for aggregates) and refuses
//! any request carrying an `Authorization` header, as a signed-URL host does. Data is
//! generated from a seed: one row per active user per day, with the ground truth the tests
//! sum independently ([`CopilotData::rows`]).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::GithubSim;

pub const DAY: i64 = 86_400;
pub const IDES: &[&str] = &["vscode", "jetbrains", "neovim"];
pub const LANGUAGES: &[&str] = &["rust", "python", "typescript"];
pub const MODELS: &[&str] = &["default", "claude-sonnet-4"];
pub const TEAMS: &[&str] = &["frontend", "backend", "platform"];

pub use crate::timestamp::format_day as day_of;

/// One user's activity on one day, as the fake generated it.
#[derive(Clone, Debug)]
pub struct Row {
    pub login: String,
    pub id: u64,
    pub day: String,
    /// `user_initiated_interaction_count`, `code_generation_activity_count`,
    /// `code_acceptance_activity_count`, `loc_suggested_to_add_sum`,
    /// `loc_suggested_to_delete_sum`, `loc_added_sum`, `loc_deleted_sum`.
    pub counts: [u64; 7],
    pub used_chat: bool,
    pub used_agent: bool,
    pub used_cli: bool,
    pub ide: &'static str,
    pub language: &'static str,
    pub model: &'static str,
}

/// One org's (or enterprise's) generated Copilot activity.
#[derive(Clone, Debug, Default)]
pub struct CopilotData {
    pub rows: Vec<Row>,
    /// `(day, login)` → team slugs.
    pub teams: BTreeMap<(String, String), Vec<&'static str>>,
    /// Per day: pull requests created, reviewed, created by Copilot, reviewed by Copilot.
    pub pull_requests: BTreeMap<String, [u64; 4]>,
    /// `(login, last activity, editor, pending cancellation)`; `None` login: unassigned.
    pub seats: Vec<(Option<String>, Option<i64>, String, bool)>,
}

impl CopilotData {
    /// `users` users over the `days` days before `now`'s day, from `seed`.
    pub fn generate(seed: u64, now: i64, users: usize, days: i64) -> CopilotData {
        let mut rng = StdRng::seed_from_u64(seed);
        let today = now - now.rem_euclid(DAY);
        let mut d = CopilotData::default();
        for k in 1..=days {
            let day = day_of(today - k * DAY);
            for u in 0..users {
                if !rng.random_bool(0.7) {
                    continue;
                }
                let gen_count = rng.random_range(0..40);
                let accepted = rng.random_range(0..=gen_count);
                let row = Row {
                    login: format!("dev{u:02}"),
                    id: 5000 + u as u64,
                    day: day.clone(),
                    counts: [
                        rng.random_range(0..15),
                        gen_count,
                        accepted,
                        rng.random_range(0..200),
                        rng.random_range(0..30),
                        rng.random_range(0..120),
                        rng.random_range(0..20),
                    ],
                    used_chat: rng.random_bool(0.5),
                    used_agent: rng.random_bool(0.2),
                    used_cli: rng.random_bool(0.1),
                    ide: IDES[u % IDES.len()],
                    language: LANGUAGES[rng.random_range(0..LANGUAGES.len())],
                    model: MODELS[rng.random_range(0..MODELS.len())],
                };
                let mut teams = vec![TEAMS[u % TEAMS.len()]];
                if u % 4 == 0 {
                    teams.push(TEAMS[(u + 1) % TEAMS.len()]);
                }
                d.teams.insert((day.clone(), row.login.clone()), teams);
                d.rows.push(row);
            }
            d.pull_requests.insert(
                day,
                [
                    rng.random_range(0..20),
                    rng.random_range(0..20),
                    rng.random_range(0..5),
                    rng.random_range(0..8),
                ],
            );
        }
        for u in 0..users + 2 {
            let login = (u < users).then(|| format!("dev{u:02}"));
            let last = rng
                .random_bool(0.8)
                .then(|| now - rng.random_range(0..40 * DAY));
            d.seats.push((
                login,
                last,
                format!("{}/1.9{}.0/copilot/1.2.3", IDES[u % IDES.len()], u % 10),
                u % 7 == 6,
            ));
        }
        d
    }
}

/// How long a signed link's file is kept: a reader follows a link as soon as it gets it,
/// and every read of a report gets new links, so a host keeping every file forever grows
/// with each read (a long `demo` did, by megabytes a minute).
const LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// The signed-URL host's files, and what it saw.
#[derive(Default)]
pub struct Downloads {
    files: Mutex<HashMap<String, (std::time::Instant, Vec<u8>)>>,
    next: AtomicU64,
    /// Requests that carried an `Authorization` header (refused).
    pub with_authorization: AtomicU64,
    /// Links answer 403 as expired signatures do.
    pub expired: AtomicBool,
    /// Files are cut in half.
    pub truncate: AtomicBool,
}

impl Downloads {
    fn put(&self, body: Vec<u8>) -> String {
        let id = format!(
            "f{}-{:x}",
            self.next.fetch_add(1, Ordering::Relaxed),
            rand::random::<u64>()
        );
        let now = std::time::Instant::now();
        let mut files = self.files.lock();
        files.retain(|_, (made, _)| now.duration_since(*made) < LINK_LIFETIME);
        files.insert(id.clone(), (now, body));
        id
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/reports/{id}", axum::routing::get(download))
            .with_state(self.clone())
    }
}

async fn download(
    State(d): State<Arc<Downloads>>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    if h.contains_key("authorization") {
        d.with_authorization.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidAuthenticationInfo</Code><Message>Only one auth mechanism allowed</Message></Error>",
        )
            .into_response();
    }
    if d.expired.load(Ordering::Relaxed) {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time has passed</Message></Error>",
        )
            .into_response();
    }
    match d.files.lock().get(&id) {
        Some((_, b)) if d.truncate.load(Ordering::Relaxed) => {
            b[..b.len() / 2].to_vec().into_response()
        }
        Some((_, b)) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Copilot's state in the GitHub fake.
#[derive(Default)]
pub struct CopilotSim {
    pub data: Mutex<BTreeMap<String, CopilotData>>,
    pub downloads: Arc<Downloads>,
    /// The download host's base URL, once it listens.
    pub download_base: Mutex<String>,
    /// Report name → the status its link endpoint answers instead (204, 404, 422).
    pub status: Mutex<BTreeMap<String, u16>>,
    /// Files each user report is split into.
    pub files_per_report: AtomicU32,
    /// `day=` values asked of 1-day reports.
    pub days_asked: Mutex<Vec<String>>,
    /// Day → the status every 1-day report link of that day answers instead (204, 500).
    pub day_status: Mutex<BTreeMap<String, u16>>,
}

fn counts_json(c: &[u64; 7], interactions: bool) -> serde_json::Map<String, Value> {
    let names = [
        "user_initiated_interaction_count",
        "code_generation_activity_count",
        "code_acceptance_activity_count",
        "loc_suggested_to_add_sum",
        "loc_suggested_to_delete_sum",
        "loc_added_sum",
        "loc_deleted_sum",
    ];
    names
        .iter()
        .zip(c)
        .filter(|(n, _)| interactions || **n != "user_initiated_interaction_count")
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect()
}

fn with(mut m: serde_json::Map<String, Value>, extra: Value) -> Value {
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Value::Object(m)
}

/// The breakdown arrays of counts `c` in one IDE, language and model: code completion holds
/// the code counts, chat the prompts.
fn breakdowns(c: &[u64; 7], ide: &str, language: &str, model: &str) -> Value {
    let code = [0, c[1], c[2], c[3], c[4], c[5], c[6]];
    let chat = [c[0], 0, 0, 0, 0, 0, 0];
    json!({
        "totals_by_ide": [with(counts_json(c, true), json!({"ide": ide}))],
        "totals_by_feature": [
            with(counts_json(&code, true), json!({"feature": "code_completion"})),
            with(counts_json(&chat, true), json!({"feature": "chat_panel_ask_mode"})),
        ],
        "totals_by_language_feature": [with(counts_json(&code, false), json!({"language": language, "feature": "code_completion"}))],
        "totals_by_language_model": [],
        "totals_by_model_feature": [
            with(counts_json(&code, true), json!({"model": model, "feature": "code_completion"})),
            with(counts_json(&chat, true), json!({"model": model, "feature": "chat_panel_ask_mode"})),
        ],
    })
}

fn user_row(r: &Row, entity: Value) -> Value {
    let mut v = with(
        counts_json(&r.counts, true),
        json!({
            "day": r.day, "user_id": r.id, "user_login": r.login,
            "used_chat": r.used_chat, "used_agent": r.used_agent, "used_cli": r.used_cli,
        }),
    );
    if let (Value::Object(m), Value::Object(b), Value::Object(e)) = (
        &mut v,
        breakdowns(&r.counts, r.ide, r.language, r.model),
        entity,
    ) {
        m.extend(b);
        m.extend(e);
    }
    v
}

impl CopilotData {
    /// The rows of `days`.
    pub fn rows_of<'a>(&'a self, days: &'a BTreeSet<String>) -> impl Iterator<Item = &'a Row> {
        self.rows.iter().filter(move |r| days.contains(&r.day))
    }

    fn day_totals(&self, day: &str) -> Value {
        let rows: Vec<&Row> = self.rows.iter().filter(|r| r.day == day).collect();
        let mut sum = [0u64; 7];
        for r in &rows {
            for (s, v) in sum.iter_mut().zip(r.counts) {
                *s += v;
            }
        }
        let window = |n: i64| -> BTreeSet<&str> {
            let end = crate::timestamp::parse_day(day).unwrap_or(0.0) as i64;
            let from = day_of(end - (n - 1) * DAY);
            self.rows
                .iter()
                .filter(|r| r.day.as_str() >= from.as_str() && r.day.as_str() <= day)
                .map(|r| r.login.as_str())
                .collect()
        };
        let monthly = |f: fn(&Row) -> bool| -> usize {
            let end = crate::timestamp::parse_day(day).unwrap_or(0.0) as i64;
            let from = day_of(end - 27 * DAY);
            self.rows
                .iter()
                .filter(|r| r.day.as_str() >= from.as_str() && r.day.as_str() <= day && f(r))
                .map(|r| r.login.as_str())
                .collect::<BTreeSet<_>>()
                .len()
        };
        let pr = self.pull_requests.get(day).copied().unwrap_or_default();
        let mut v = with(
            counts_json(&sum, true),
            json!({
                "day": day,
                "organization_id": "100000001",
                "daily_active_users": rows.len(),
                "weekly_active_users": window(7).len(),
                "monthly_active_users": window(28).len(),
                "monthly_active_chat_users": monthly(|r| r.used_chat),
                "monthly_active_agent_users": monthly(|r| r.used_agent),
                "daily_active_cli_users": rows.iter().filter(|r| r.used_cli).count(),
                "pull_requests": {
                    "total_created": pr[0], "total_reviewed": pr[1],
                    "total_created_by_copilot": pr[2], "total_reviewed_by_copilot": pr[3],
                    "total_merged": pr[0] / 2, "median_minutes_to_merge": 42.5,
                },
            }),
        );
        // One IDE, language and model per day keeps the day's breakdown exact.
        if let (Value::Object(m), Value::Object(b)) =
            (&mut v, breakdowns(&sum, "vscode", "rust", "default"))
        {
            m.extend(b);
        }
        v
    }
}

/// `/orgs/{org}/copilot/metrics/reports/{report}` and `…/{report}/latest`, and the
/// enterprise equivalents.
pub(super) async fn report_link(
    State(sim): State<Arc<GithubSim>>,
    Path((owner, report)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = sim.refuse(&h, &uri) {
        return refused;
    }
    if let Some(refused) = sim.not_granted(&h, &uri, "organization_copilot_metrics") {
        return refused;
    }
    let c = &sim.copilot;
    let latest = uri.path().ends_with("/latest");
    if let Some(status) = c.status.lock().get(&report).copied() {
        if status == 204 {
            return StatusCode::NO_CONTENT.into_response();
        }
        let message = match status {
            422 => {
                "Copilot Usage Metrics API setting is disabled at the organization or enterprise level."
            }
            _ => "Not Found",
        };
        return sim.answer(
            &h,
            &uri,
            StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
            json!({"message": message, "documentation_url": "https://docs.github.com/rest/copilot/copilot-usage-metrics"}),
            None,
        );
    }
    let Some(data) = c.data.lock().get(&owner).cloned() else {
        return super::not_found();
    };
    let now = sim.clock.now();
    let yesterday = day_of(now - now.rem_euclid(DAY) - DAY);
    let entity = if uri.path().starts_with("/enterprises/") {
        json!({"enterprise_id": "200001"})
    } else {
        json!({"organization_id": "100000001", "enterprise_id": "200001"})
    };
    let (days, one_day): (Vec<String>, bool) = if latest {
        let end = now - now.rem_euclid(DAY) - DAY;
        (
            (0..28).rev().map(|k| day_of(end - k * DAY)).collect(),
            false,
        )
    } else {
        let Some(day) = q.get("day").cloned() else {
            return sim.answer(
                &h,
                &uri,
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "Invalid request.\n\n\"day\" wasn't supplied."}),
                None,
            );
        };
        c.days_asked.lock().push(day.clone());
        if day.as_str() > yesterday.as_str() {
            return StatusCode::NO_CONTENT.into_response();
        }
        match c.day_status.lock().get(&day).copied() {
            Some(204) => return StatusCode::NO_CONTENT.into_response(),
            Some(status) => {
                return sim.answer(
                    &h,
                    &uri,
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    json!({"message": "Server Error"}),
                    None,
                );
            }
            None => {}
        }
        (vec![day], true)
    };
    let set: BTreeSet<String> = days.iter().cloned().collect();
    let files: Vec<Vec<u8>> = if report.starts_with("users") {
        let lines: Vec<String> = data
            .rows_of(&set)
            .map(|r| user_row(r, entity.clone()).to_string())
            .collect();
        let n = c.files_per_report.load(Ordering::Relaxed).max(1) as usize;
        let per = lines.len().div_ceil(n).max(1);
        lines
            .chunks(per)
            .map(|ls| (ls.join("\n") + "\n").into_bytes())
            .collect()
    } else if report.starts_with("user-teams") {
        let lines: Vec<String> = data
            .teams
            .iter()
            .filter(|((d, _), _)| set.contains(d))
            .flat_map(|((d, login), slugs)| {
                let id = data.rows.iter().find(|r| &r.login == login).map_or(0, |r| r.id);
                slugs.iter().enumerate().map(move |(i, s)| {
                    json!({"user_id": id, "user_login": login, "day": d, "organization_id": "100000001", "team_id": 40 + i, "slug": s})
                        .to_string()
                })
            })
            .collect();
        vec![(lines.join("\n") + "\n").into_bytes()]
    } else {
        let doc = json!({
            "report_start_day": days.first(),
            "report_end_day": days.last(),
            "organization_id": "100000001",
            "created_at": crate::timestamp::format_rfc3339_secs(now),
            "day_totals": days.iter().map(|d| data.day_totals(d)).collect::<Vec<_>>(),
        });
        vec![serde_json::to_vec_pretty(&doc).expect("json")]
    };
    let base = c.download_base.lock().clone();
    let links: Vec<String> = files
        .into_iter()
        .map(|f| {
            format!(
                "{base}/reports/{}?sv=2025-01-05&se=2099-01-01&sig=c2lnbmF0dXJl",
                c.downloads.put(f)
            )
        })
        .collect();
    let body = if one_day {
        json!({"download_links": links, "report_day": days[0]})
    } else {
        json!({"download_links": links, "report_start_day": days.first(), "report_end_day": days.last()})
    };
    sim.answer(&h, &uri, StatusCode::OK, body, None)
}

/// `/orgs/{org}/copilot/billing/seats`, paginated (`per_page` default 50, at most 100).
pub(super) async fn seats(
    State(sim): State<Arc<GithubSim>>,
    Path(org): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = sim.not_granted(&h, &uri, "organization_copilot_seat_management") {
        return refused;
    }
    let Some(data) = sim.copilot.data.lock().get(&org).cloned() else {
        return super::not_found();
    };
    let per: usize = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let all: Vec<Value> = data
        .seats
        .iter()
        .enumerate()
        .map(|(i, (login, last, editor, pending))| {
            json!({
                "created_at": "2025-01-02T03:04:05Z",
                "pending_cancellation_date": pending.then_some("2099-01-01"),
                "last_activity_at": last.map(crate::timestamp::format_rfc3339_secs),
                "last_activity_editor": last.map(|_| editor.clone()),
                "plan_type": "business",
                "assignee": login.as_ref().map(|l| json!({"login": l, "id": 5000 + i, "type": "User"})),
            })
        })
        .collect();
    let pages = all.len().div_ceil(per).max(1);
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .cloned()
        .collect();
    let host = h
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let link = (page < pages).then(|| {
        format!(
            "<http://{host}{}?per_page={per}&page={}>; rel=\"next\"",
            uri.path(),
            page + 1
        )
    });
    sim.answer(
        &h,
        &uri,
        StatusCode::OK,
        json!({"total_seats": data.seats.len(), "seats": items}),
        link,
    )
}
