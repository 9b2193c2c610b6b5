//! From report records to series, pure. Each count is summed over the window's rows: a
//! user's daily rows (one per active day), an org's or enterprise's `day_totals[]`, a team's
//! members' rows of the day. github-stats-exporter let the last row win and read fields at
//! the top level that the real reports nest; these sums are what the reports say.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{Breakdowns, UserLabelMode};
use super::wire::{Counts, DayTotals, Record, TeamRow, UserRow};
use crate::metrics::{self, FamilyId, Labels, Sample};

/// The `scope` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Org,
    Users,
    Enterprise,
    Team,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Users => "users",
            Scope::Enterprise => "enterprise",
            Scope::Team => "team",
        }
    }
}

/// How the user label and the guardrails apply.
pub struct Options<'a> {
    pub mode: UserLabelMode,
    pub secret: &'a [u8],
    pub breakdowns: &'a Breakdowns,
    pub pull_requests: bool,
    pub max_records: u64,
    pub max_users: u64,
}

/// The series of one report, and what was left out, by reason.
#[derive(Debug, Default)]
pub struct Computed {
    pub samples: Vec<Sample>,
    pub dropped: BTreeMap<&'static str, u64>,
}

const COUNT_FAMILIES: [FamilyId; 7] = [
    metrics::GH_COPILOT_USAGE_USER_INITIATED_INTERACTION_COUNT,
    metrics::GH_COPILOT_USAGE_CODE_GENERATION_ACTIVITY_COUNT,
    metrics::GH_COPILOT_USAGE_CODE_ACCEPTANCE_ACTIVITY_COUNT,
    metrics::GH_COPILOT_USAGE_LOC_SUGGESTED_TO_ADD_SUM,
    metrics::GH_COPILOT_USAGE_LOC_SUGGESTED_TO_DELETE_SUM,
    metrics::GH_COPILOT_USAGE_LOC_ADDED_SUM,
    metrics::GH_COPILOT_USAGE_LOC_DELETED_SUM,
];

fn fields(c: &Counts) -> [Option<f64>; 7] {
    [
        c.user_initiated_interaction_count,
        c.code_generation_activity_count,
        c.code_acceptance_activity_count,
        c.loc_suggested_to_add_sum,
        c.loc_suggested_to_delete_sum,
        c.loc_added_sum,
        c.loc_deleted_sum,
    ]
}

/// Sums of each count over rows; `None` while no row carried it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sums(pub [Option<f64>; 7]);

impl Sums {
    pub fn add(&mut self, c: &Counts) {
        for (s, v) in self.0.iter_mut().zip(fields(c)) {
            if let Some(v) = v {
                *s = Some(s.unwrap_or(0.0) + v);
            }
        }
    }
}

/// The breakdown values of one row: `(dimension index, value, counts)`.
fn breakdown_rows<'a>(
    b: &'a super::wire::Breakdown,
    on: &Breakdowns,
) -> Vec<(usize, &'a str, &'a Counts)> {
    let mut out = Vec::new();
    if on.ide {
        out.extend(
            b.totals_by_ide
                .iter()
                .map(|x| (0, x.ide.as_str(), &x.counts)),
        );
    }
    if on.feature {
        out.extend(
            b.totals_by_feature
                .iter()
                .map(|x| (1, x.feature.as_str(), &x.counts)),
        );
    }
    if on.language {
        out.extend(
            b.totals_by_language_feature
                .iter()
                .map(|x| (2, x.language.as_str(), &x.counts)),
        );
    }
    if on.model {
        out.extend(
            b.totals_by_model_feature
                .iter()
                .map(|x| (3, x.model.as_str(), &x.counts)),
        );
    }
    out
}

/// Per `(user, team, breakdown dimension, value)`: the sums.
type Groups = BTreeMap<(String, String, Option<(usize, String)>), Sums>;

fn group(
    groups: &mut Groups,
    user: &str,
    team: &str,
    c: &Counts,
    b: &super::wire::Breakdown,
    on: &Breakdowns,
) {
    groups
        .entry((user.to_string(), team.to_string(), None))
        .or_default()
        .add(c);
    for (dim, value, counts) in breakdown_rows(b, on) {
        groups
            .entry((
                user.to_string(),
                team.to_string(),
                Some((dim, value.to_string())),
            ))
            .or_default()
            .add(counts);
    }
}

fn labels(
    org: &str,
    user: &str,
    scope: Scope,
    window: &str,
    team: &str,
    dim: &Option<(usize, String)>,
) -> [String; 10] {
    let mut b = [String::new(), String::new(), String::new(), String::new()];
    if let Some((i, v)) = dim {
        b[*i] = v.clone();
    }
    let [ide, feature, language, model] = b;
    [
        org.to_string(),
        "*".to_string(),
        user.to_string(),
        scope.as_str().to_string(),
        window.to_string(),
        team.to_string(),
        ide,
        feature,
        language,
        model,
    ]
}

fn emit(out: &mut Vec<Sample>, family: FamilyId, values: &[String; 10], v: f64) {
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let l = Labels::new(family, &refs).expect("ten label values for ten names");
    out.push(Sample::number(family, l, v));
}

fn emit_groups(out: &mut Vec<Sample>, org: &str, scope: Scope, window: &str, groups: &Groups) {
    for ((user, team, dim), sums) in groups {
        let values = labels(org, user, scope, window, team, dim);
        for (family, v) in COUNT_FAMILIES.iter().zip(sums.0) {
            if let Some(v) = v {
                emit(out, *family, &values, v);
            }
        }
    }
}

/// The `user` label of a row under `mode`.
pub fn user_label(
    mode: UserLabelMode,
    secret: &[u8],
    login: Option<&str>,
    id: Option<u64>,
) -> String {
    let id_text = id.map(|i| i.to_string());
    let name = login
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .or(id_text.clone());
    match mode {
        UserLabelMode::Login => name.unwrap_or_else(|| "unknown".into()),
        UserLabelMode::Id => id_text.or(name).unwrap_or_else(|| "unknown".into()),
        UserLabelMode::Hashed => name.map_or_else(
            || "unknown".into(),
            |n| crate::metrics::hashed_label(secret, &n),
        ),
        UserLabelMode::None => "redacted".into(),
    }
}

/// Keeps the rows the guardrails allow, counting the rest.
fn guard<'a>(
    rows: Vec<&'a UserRow>,
    o: &Options,
    dropped: &mut BTreeMap<&'static str, u64>,
) -> Vec<(String, &'a UserRow)> {
    let mut users = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        if o.max_records > 0 && i as u64 >= o.max_records {
            *dropped.entry("max_records_per_report").or_default() += 1;
            continue;
        }
        let user = user_label(o.mode, o.secret, r.user_login.as_deref(), r.user_id);
        if o.max_users > 0 && !users.contains(&user) && users.len() as u64 >= o.max_users {
            *dropped.entry("max_users_per_report").or_default() += 1;
            continue;
        }
        users.insert(user.clone());
        out.push((user, r));
    }
    out
}

/// A users report (`users-28-day` or `users-1-day`): per user, each count summed over the
/// user's daily rows; and whether the user used chat, agent mode or the CLI in the window.
pub fn users(org: &str, window: &str, records: &[Record], o: &Options) -> Computed {
    let mut c = Computed::default();
    let rows: Vec<&UserRow> = records
        .iter()
        .filter_map(|r| match r {
            Record::User(u) => Some(u.as_ref()),
            _ => None,
        })
        .collect();
    let kept = guard(rows, o, &mut c.dropped);
    let mut groups = Groups::new();
    let mut used: BTreeMap<String, [bool; 3]> = BTreeMap::new();
    for (user, r) in &kept {
        group(&mut groups, user, "", &r.counts, &r.breakdown, o.breakdowns);
        let u = used.entry(user.clone()).or_default();
        u[0] |= r.used_chat;
        u[1] |= r.used_agent;
        u[2] |= r.used_cli;
    }
    emit_groups(&mut c.samples, org, Scope::Users, window, &groups);
    for (user, flags) in used {
        for (feature, on) in ["chat", "agent", "cli"].into_iter().zip(flags) {
            let l = Labels::new(
                metrics::DEVMETRICS_COPILOT_USER_USED,
                &[org, &user, feature, window],
            )
            .expect("four labels");
            c.samples.push(Sample::number(
                metrics::DEVMETRICS_COPILOT_USER_USED,
                l,
                on as u8 as f64,
            ));
        }
    }
    c
}

/// `pull_requests.*` (created, reviewed, created and reviewed by Copilot) summed over days;
/// `None` where no day carried the count.
pub fn pull_requests(days: &[&DayTotals]) -> [Option<f64>; 4] {
    let mut prs = [None::<f64>; 4];
    for p in days.iter().filter_map(|d| d.pull_requests.as_ref()) {
        for (s, v) in prs.iter_mut().zip([
            p.total_created,
            p.total_reviewed,
            p.total_created_by_copilot,
            p.total_reviewed_by_copilot,
        ]) {
            if let Some(v) = v {
                *s = Some(s.unwrap_or(0.0) + v);
            }
        }
    }
    prs
}

/// An aggregate report (organization or enterprise): each count summed over `day_totals[]`,
/// pull requests from `pull_requests.*`, and the active and engaged users of its last day.
pub fn aggregate(
    org: &str,
    scope: Scope,
    window: &str,
    records: &[Record],
    o: &Options,
) -> Computed {
    let mut c = Computed::default();
    let days: Vec<&DayTotals> = records
        .iter()
        .filter_map(|r| match r {
            Record::Day(d) => Some(d.as_ref()),
            _ => None,
        })
        .collect();
    let mut groups = Groups::new();
    for d in &days {
        group(
            &mut groups,
            "all",
            "",
            &d.counts,
            &d.breakdown,
            o.breakdowns,
        );
    }
    let prs = pull_requests(&days);
    emit_groups(&mut c.samples, org, scope, window, &groups);
    if o.pull_requests {
        let values = labels(org, "all", scope, window, "", &None);
        for (family, v) in [
            metrics::GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_CREATED,
            metrics::GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_REVIEWED,
            metrics::GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_CREATED_BY_COPILOT,
            metrics::GH_COPILOT_USAGE_PULL_REQUESTS_TOTAL_REVIEWED_BY_COPILOT,
        ]
        .into_iter()
        .zip(prs)
        {
            if let Some(v) = v {
                emit(&mut c.samples, family, &values, v);
            }
        }
    }
    // The last day of the report states the active users as of its end.
    if let Some(last) = days.iter().max_by(|a, b| a.day.cmp(&b.day)) {
        for (period, v) in [
            ("daily", last.daily_active_users),
            ("weekly", last.weekly_active_users),
            ("monthly", last.monthly_active_users),
        ] {
            if let Some(v) = v {
                let l = Labels::new(
                    metrics::DEVMETRICS_COPILOT_ACTIVE_USERS,
                    &[org, scope.as_str(), window, period],
                )
                .expect("four labels");
                c.samples.push(Sample::number(
                    metrics::DEVMETRICS_COPILOT_ACTIVE_USERS,
                    l,
                    v,
                ));
            }
        }
        for (feature, period, v) in [
            ("chat", "monthly", last.monthly_active_chat_users),
            ("agent", "monthly", last.monthly_active_agent_users),
            ("cli", "daily", last.daily_active_cli_users),
        ] {
            if let Some(v) = v {
                let l = Labels::new(
                    metrics::DEVMETRICS_COPILOT_ENGAGED_USERS,
                    &[org, scope.as_str(), window, feature, period],
                )
                .expect("five labels");
                c.samples.push(Sample::number(
                    metrics::DEVMETRICS_COPILOT_ENGAGED_USERS,
                    l,
                    v,
                ));
            }
        }
    }
    c
}

/// Per team: the day's `user-teams` rows joined with the same day's users report on the
/// user (a user in two teams counts in both). Never the 28-day file: membership is a day's.
pub fn teams(org: &str, teams: &[Record], users: &[Record], o: &Options) -> Computed {
    let mut c = Computed::default();
    let key = |id: Option<u64>, login: Option<&str>, day: Option<&str>| {
        (
            id.map(|i| i.to_string())
                .or(login.map(str::to_ascii_lowercase))
                .unwrap_or_default(),
            day.unwrap_or_default().to_string(),
        )
    };
    let mut rows: BTreeMap<(String, String), Vec<&UserRow>> = BTreeMap::new();
    for r in users {
        if let Record::User(u) = r {
            rows.entry(key(u.user_id, u.user_login.as_deref(), u.day.as_deref()))
                .or_default()
                .push(u);
        }
    }
    let mut groups = Groups::new();
    let mut seen = BTreeSet::new();
    for r in teams {
        let Record::Team(TeamRow {
            user_id,
            user_login,
            day,
            slug: Some(slug),
        }) = r
        else {
            continue;
        };
        let k = key(*user_id, user_login.as_deref(), day.as_deref());
        // A membership listed twice counts once.
        if !seen.insert((k.clone(), slug.clone())) {
            continue;
        }
        for u in rows.get(&k).into_iter().flatten() {
            group(
                &mut groups,
                "all",
                slug,
                &u.counts,
                &u.breakdown,
                o.breakdowns,
            );
        }
    }
    emit_groups(&mut c.samples, org, Scope::Team, "1d", &groups);
    c
}
