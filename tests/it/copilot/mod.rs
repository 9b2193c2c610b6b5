//! Copilot: the real GitHub client and report reader against the GitHub fake's report links
//! and its separate signed-URL host, every exported value checked against the fake's own
//! rows summed here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use devmetrics::clock::Clock;
use devmetrics::sim::github::copilot::{CopilotData, Row, day_of};
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::{FakeServer, Faults};

use crate::support::series;

const ORG: &str = "acme";
const USERS: usize = 8;
const DAY: i64 = 86_400;

struct Env {
    sim: Arc<GithubSim>,
    api: FakeServer,
    downloads: FakeServer,
    data: CopilotData,
    now: i64,
}

impl Env {
    async fn start() -> Env {
        let now = devmetrics::clock::now_secs();
        let sim = GithubSim::new(5, Clock::system(), &[OrgSpec::small(ORG)]);
        let data = CopilotData::generate(11, now, USERS, 40);
        sim.copilot.data.lock().insert(ORG.into(), data.clone());
        sim.copilot.files_per_report.store(3, Ordering::Relaxed);
        let api = FakeServer::start("github", sim.router(), Faults::new(5))
            .await
            .unwrap();
        let downloads = FakeServer::start(
            "copilot-downloads",
            sim.copilot.downloads.router(),
            Faults::new(6),
        )
        .await
        .unwrap();
        *sim.copilot.download_base.lock() = downloads.base_url();
        Env {
            sim,
            api,
            downloads,
            data,
            now,
        }
    }

    fn sections(&self, copilot: &str) -> Vec<(&'static str, serde_yaml::Value)> {
        let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/test-app-key.pem");
        vec![
            (
                "github",
                serde_yaml::from_str(&format!(
                    "api_base_url: {}\norgs:\n  - org: {ORG}\n    app_id: {APP_ID}\n    installation_id: {INSTALLATION_ID}\n    private_key_path: {}\n    scrape_interval: 1h\n",
                    self.api.base_url(),
                    key.display()
                ))
                .unwrap(),
            ),
            ("copilot", serde_yaml::from_str(copilot).unwrap()),
        ]
    }

    fn yesterday(&self) -> String {
        day_of(self.now - self.now.rem_euclid(DAY) - DAY)
    }

    /// The days of the latest 28-day report.
    fn days28(&self) -> BTreeSet<String> {
        let end = self.now - self.now.rem_euclid(DAY) - DAY;
        (0..28).map(|k| day_of(end - k * DAY)).collect()
    }
}

async fn start_app(
    dir: &std::path::Path,
    sections: &[(&str, serde_yaml::Value)],
) -> crate::support::Running {
    let cfg = crate::support::Backend::from_env().config(dir, sections);
    crate::support::start(cfg, "http").await
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_for(
    base: &str,
    family: &str,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> String {
    let mut text = String::new();
    for _ in 0..150 {
        text = metrics(base).await;
        if pred(&series(&text, family)) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text
}

const FAMILIES: [&str; 7] = [
    "gh_copilot_usage_user_initiated_interaction_count",
    "gh_copilot_usage_code_generation_activity_count",
    "gh_copilot_usage_code_acceptance_activity_count",
    "gh_copilot_usage_loc_suggested_to_add_sum",
    "gh_copilot_usage_loc_suggested_to_delete_sum",
    "gh_copilot_usage_loc_added_sum",
    "gh_copilot_usage_loc_deleted_sum",
];

fn labels(user: &str, scope: &str, window: &str, team: &str) -> String {
    format!(
        "{{org=\"{ORG}\",repo=\"*\",user=\"{user}\",scope=\"{scope}\",window=\"{window}\",team=\"{team}\",ide=\"\",feature=\"\",language=\"\",model=\"\"}}"
    )
}

fn sum<'a>(rows: impl Iterator<Item = &'a Row>) -> [u64; 7] {
    let mut s = [0; 7];
    for r in rows {
        for (a, v) in s.iter_mut().zip(r.counts) {
            *a += v;
        }
    }
    s
}

/// Org, users and team reports over 28 days and one day, with the user reports split over
/// three files each: every count is the sum of the fake's rows; the active users, the
/// used-feature flags and the seats are the fake's too; the GitHub token never reaches the
/// download host.
#[tokio::test]
async fn every_report_sums_the_fakes_rows() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_app(
        dir.path(),
        &env.sections(
            "{enabled: true, include_org_users_28d: true, include_org_users_1d: true, include_teams: true, include_seats: true, scrape_interval: 1h, backfill_days: 0}",
        ),
    )
    .await;
    // The state scope is written last of a poll: with it, every report's series are in.
    let text = wait_for(&running.base, "devmetrics_copilot_report_state", |s| {
        !s.is_empty()
    })
    .await;
    let d = &env.data;
    let days28 = env.days28();
    let yesterday: BTreeSet<String> = [env.yesterday()].into();
    let mut want: BTreeMap<(&str, String), f64> = BTreeMap::new();
    let mut put = |s: [u64; 7], l: String| {
        for (f, v) in FAMILIES.iter().zip(s) {
            want.insert((f, l.clone()), v as f64);
        }
    };
    put(sum(d.rows_of(&days28)), labels("all", "org", "28d", ""));
    put(sum(d.rows_of(&yesterday)), labels("all", "org", "1d", ""));
    let logins: BTreeSet<&str> = d.rows.iter().map(|r| r.login.as_str()).collect();
    for login in &logins {
        let in28: Vec<&Row> = d.rows_of(&days28).filter(|r| r.login == *login).collect();
        if !in28.is_empty() {
            put(sum(in28.into_iter()), labels(login, "users", "28d", ""));
        }
        let in1: Vec<&Row> = d
            .rows_of(&yesterday)
            .filter(|r| r.login == *login)
            .collect();
        if !in1.is_empty() {
            put(sum(in1.into_iter()), labels(login, "users", "1d", ""));
        }
    }
    // Teams: the day's memberships joined with the day's rows; a user in two teams in both.
    let mut teams: BTreeMap<&str, [u64; 7]> = BTreeMap::new();
    for r in d.rows_of(&yesterday) {
        for slug in &d.teams[&(r.day.clone(), r.login.clone())] {
            let t = teams.entry(slug).or_default();
            for (a, v) in t.iter_mut().zip(r.counts) {
                *a += v;
            }
        }
    }
    for (slug, s) in teams {
        put(s, labels("all", "team", "1d", slug));
    }
    for ((family, l), v) in &want {
        assert_eq!(
            series(&text, family).get(l),
            Some(v),
            "{family}{l}\n{}",
            series(&text, family)
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for family in FAMILIES {
        assert_eq!(
            series(&text, family).len(),
            want.keys().filter(|(f, _)| *f == family).count(),
            "{family}: no series beyond the fake's"
        );
    }
    // Pull requests from the aggregate's pull_requests.*, summed over its days.
    let prs = |i: usize| {
        d.pull_requests
            .iter()
            .filter(|(day, _)| days28.contains(*day))
            .map(|(_, p)| p[i] as f64)
            .sum::<f64>()
    };
    for (i, f) in [
        "gh_copilot_usage_pull_requests_total_created",
        "gh_copilot_usage_pull_requests_total_reviewed",
        "gh_copilot_usage_pull_requests_total_created_by_copilot",
        "gh_copilot_usage_pull_requests_total_reviewed_by_copilot",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            series(&text, f).get(&labels("all", "org", "28d", "")),
            Some(&prs(i)),
            "{f}"
        );
    }
    // Active users as of the report's last day.
    let end = env.now - env.now.rem_euclid(DAY) - DAY;
    let active = |n: i64| {
        let from = day_of(end - (n - 1) * DAY);
        d.rows
            .iter()
            .filter(|r| r.day >= from && r.day <= env.yesterday())
            .map(|r| r.login.as_str())
            .collect::<BTreeSet<_>>()
            .len() as f64
    };
    let a = series(&text, "devmetrics_copilot_active_users");
    for (period, n) in [("daily", 1), ("weekly", 7), ("monthly", 28)] {
        assert_eq!(
            a.get(&format!(
                "{{org=\"{ORG}\",scope=\"org\",window=\"28d\",period=\"{period}\"}}"
            )),
            Some(&active(n)),
            "{period}: {a:?}"
        );
    }
    // Used chat in the 28 days, per user.
    let used = series(&text, "devmetrics_copilot_user_used");
    for login in &logins {
        let rows: Vec<&Row> = d.rows_of(&days28).filter(|r| r.login == *login).collect();
        if rows.is_empty() {
            continue;
        }
        let chat = rows.iter().any(|r| r.used_chat) as u8 as f64;
        assert_eq!(
            used.get(&format!(
                "{{org=\"{ORG}\",user=\"{login}\",feature=\"chat\",window=\"28d\"}}"
            )),
            Some(&chat)
        );
    }
    // Seats.
    let seats = series(&text, "devmetrics_copilot_seats");
    let pending = d.seats.iter().filter(|s| s.3).count() as f64;
    assert_eq!(
        seats.get(&format!("{{org=\"{ORG}\",state=\"total\"}}")),
        Some(&(d.seats.len() as f64))
    );
    assert_eq!(
        seats.get(&format!("{{org=\"{ORG}\",state=\"assigned\"}}")),
        Some(&(USERS as f64))
    );
    assert_eq!(
        seats.get(&format!("{{org=\"{ORG}\",state=\"pending_cancellation\"}}")),
        Some(&pending)
    );
    let active7: f64 = series(&text, "devmetrics_copilot_seats_active")
        .iter()
        .filter(|(l, _)| l.contains("period=\"7d\""))
        .map(|(_, v)| v)
        .sum();
    let want7 = d
        .seats
        .iter()
        .filter(|s| s.1.is_some_and(|t| env.now - t <= 7 * DAY))
        .count() as f64;
    assert!((active7 - want7).abs() <= 1.0, "{active7} vs {want7}");
    // Every file was fetched from the signed-URL host, and never with the token.
    assert_eq!(
        env.sim
            .copilot
            .downloads
            .with_authorization
            .load(Ordering::Relaxed),
        0
    );
    // Two user reports of three files, two aggregates and the teams' file.
    assert_eq!(
        env.downloads.requests.total(),
        2 * 3 + 2 + 1,
        "{:?}",
        env.downloads.requests.all()
    );
    // GitHub's parameter name, and only complete days.
    let asked = env.sim.copilot.days_asked.lock().clone();
    assert!(
        !asked.is_empty() && asked.iter().all(|d| *d == env.yesterday()),
        "{asked:?}"
    );
    let state = series(&text, "devmetrics_copilot_report_state");
    assert_eq!(
        state.get(&format!(
            "{{org=\"{ORG}\",report=\"users-28-day\",state=\"ok\"}}"
        )),
        Some(&1.0)
    );
    running.stop().await;
}

/// 204, 404 and 422 are states, not errors; an expired link is an error that keeps the
/// last values.
#[tokio::test]
async fn unavailable_reports_are_states_and_failures_keep_last_values() {
    let env = Env::start().await;
    {
        let mut s = env.sim.copilot.status.lock();
        s.insert("organization-1-day".into(), 204);
        s.insert("users-28-day".into(), 422);
    }
    let dir = tempfile::tempdir().unwrap();
    let running = start_app(
        dir.path(),
        &env.sections("{enabled: true, include_org_users_28d: true, scrape_interval: 1s}"),
    )
    .await;
    let state =
        |report: &str, s: &str| format!("{{org=\"{ORG}\",report=\"{report}\",state=\"{s}\"}}");
    let text = wait_for(&running.base, "devmetrics_copilot_report_state", |m| {
        m.get(&state("users-28-day", "disabled")) == Some(&1.0)
    })
    .await;
    let m = series(&text, "devmetrics_copilot_report_state");
    assert_eq!(m.get(&state("organization-1-day", "no_data")), Some(&1.0));
    assert_eq!(m.get(&state("organization-28-day", "ok")), Some(&1.0));
    let org28 = labels("all", "org", "28d", "");
    let before = series(&text, FAMILIES[1]).get(&org28).copied();
    assert!(before.is_some());
    // The links expire: the next reads fail, the last values stay.
    env.sim
        .copilot
        .downloads
        .expired
        .store(true, Ordering::Relaxed);
    let text = wait_for(&running.base, "devmetrics_copilot_report_state", |m| {
        m.get(&state("organization-28-day", "error")) == Some(&1.0)
    })
    .await;
    assert_eq!(series(&text, FAMILIES[1]).get(&org28).copied(), before);
    running.stop().await;
}

/// The user label in each mode: login, id, HMAC under the secret, and one summed series.
#[tokio::test]
async fn user_label_modes() {
    use hmac::{KeyInit, Mac};
    let env = Env::start().await;
    let days28 = env.days28();
    let d = &env.data;
    let first = d.rows_of(&days28).next().unwrap().clone();
    let mine: Vec<&Row> = d
        .rows_of(&days28)
        .filter(|r| r.login == first.login)
        .collect();
    let want = sum(mine.into_iter())[1] as f64;
    let total = sum(d.rows_of(&days28))[1] as f64;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"label-secret").unwrap();
    mac.update(first.login.as_bytes());
    let hashed = hex::encode(&mac.finalize().into_bytes()[..8]);
    for (mode, user, value) in [
        ("id", first.id.to_string(), want),
        ("hashed", hashed, want),
        ("none", "redacted".to_string(), total),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let running = start_app(
            dir.path(),
            &env.sections(&format!(
                "{{enabled: true, include_org_28d: false, include_org_1d: false, include_org_users_28d: true, user_label_mode: {mode}, user_label_secret: label-secret}}"
            )),
        )
        .await;
        let l = labels(&user, "users", "28d", "");
        let text = wait_for(&running.base, FAMILIES[1], |s| s.contains_key(&l)).await;
        let s = series(&text, FAMILIES[1]);
        assert_eq!(s.get(&l), Some(&value), "{mode}: {s:?}");
        if mode == "none" {
            assert_eq!(s.len(), 1, "every user summed into one series");
        }
        assert!(!text.contains(&first.login), "{mode} never shows the login");
        running.stop().await;
    }
}

/// Every example file of the research data parses, or its records are counted by reason.
#[test]
fn every_research_example_parses_or_is_rejected_with_a_reason() {
    let Some(dir) = devmetrics::sim::research_dir("copilot") else {
        return;
    };
    let mut read = 0;
    for sub in ["github-docs-examples", "copilot-metrics-viewer-mocks"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !(name.ends_with(".json") || name.ends_with(".ndjson")) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let mut r = devmetrics::sources::copilot::wire::Reader::new();
            for c in bytes.chunks(1000) {
                r.feed(c);
            }
            let out = r.finish();
            assert!(!out.is_empty(), "{name}: nothing read and no reason");
            let ok = out.iter().filter(|r| r.is_ok()).count();
            let report =
                name.contains("report") || name.contains("schema") || name.contains("teams_1_day");
            if report {
                assert!(
                    ok > 0,
                    "{name}: a report with no record: {:?}",
                    out.iter()
                        .filter_map(|r| r.as_ref().err())
                        .collect::<Vec<_>>()
                );
                read += ok;
            }
        }
    }
    assert!(read > 100, "{read}");
}

#[test]
fn example_copilot_section_is_valid_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let out = crate::support::example_with_section(
        "copilot",
        &[(
            "/run/secrets/copilot-label-secret",
            secret.to_str().unwrap(),
        )],
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, out).unwrap();
    let c = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("uncommented example loads");
    let cp = c.copilot.expect("copilot enabled");
    assert_eq!(cp.orgs, ["my-org"]);
    assert!(cp.reports.teams && cp.reports.seats && cp.reports.users_28d);
    assert_eq!(
        cp.user_label_mode,
        devmetrics::sources::copilot::config::UserLabelMode::Hashed
    );
    assert_eq!(cp.user_label_secret.unwrap().expose(), "s3cret");
    assert_eq!(cp.interval, Duration::from_secs(6 * 3600));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "copilot:\n  enabled: true\n  user_label_mode: email\n",
    )
    .unwrap();
    let e = devmetrics::config::load(Some(&bad), &Default::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("copilot.user_label_mode"), "{e}");
}

/// The enterprise's aggregate and users reports through an org's client, labelled with the
/// enterprise slug; the IDE breakdown beside the totals; a truncated file counted.
#[tokio::test]
async fn enterprise_reports_breakdowns_and_truncated_files() {
    let env = Env::start().await;
    let ent = CopilotData::generate(21, env.now, 5, 35);
    env.sim
        .copilot
        .data
        .lock()
        .insert("acme-ent".into(), ent.clone());
    let dir = tempfile::tempdir().unwrap();
    let running = start_app(
        dir.path(),
        &env.sections(
            "{enabled: true, include_org_1d: false, include_breakdown_ide: true, include_enterprise_28d: true, include_enterprise_users_28d: true, include_enterprise_1d: true, include_enterprise_users_1d: true, include_enterprise_teams: true, enterprise: {enabled: true, slug: acme-ent, via_org: acme}}",
        ),
    )
    .await;
    let days28 = env.days28();
    let ent_total = sum(ent.rows_of(&days28));
    let l = |user: &str, scope: &str, ide: &str| {
        format!(
            "{{org=\"acme-ent\",repo=\"*\",user=\"{user}\",scope=\"{scope}\",window=\"28d\",team=\"\",ide=\"{ide}\",feature=\"\",language=\"\",model=\"\"}}"
        )
    };
    let first = ent.rows_of(&days28).next().unwrap().clone();
    // The state scope is written last of a poll: with the enterprise's, every one of its
    // reports' series are in.
    let text = wait_for(&running.base, "devmetrics_copilot_report_state", |s| {
        s.keys().any(|k| k.contains("org=\"acme-ent\""))
    })
    .await;
    let s = series(&text, FAMILIES[5]);
    assert_eq!(
        s.get(&l("all", "enterprise", "")),
        Some(&(ent_total[5] as f64))
    );
    // The latest complete day, from the enterprise's 1-day report.
    let yesterday: BTreeSet<String> = [env.yesterday()].into();
    let day = sum(ent.rows_of(&yesterday));
    let l1 = |user: &str, scope: &str| {
        format!(
            "{{org=\"acme-ent\",repo=\"*\",user=\"{user}\",scope=\"{scope}\",window=\"1d\",team=\"\",ide=\"\",feature=\"\",language=\"\",model=\"\"}}"
        )
    };
    assert_eq!(s.get(&l1("all", "enterprise")), Some(&(day[5] as f64)));
    let users_1d: f64 = s
        .iter()
        .filter(|(k, _)| k.contains("scope=\"users\",window=\"1d\"") && k.contains("ide=\"\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        users_1d, day[5] as f64,
        "the users' 1-day rows add up to the day"
    );
    // The enterprise's teams: the day's memberships joined with its users' day.
    let mut teams: BTreeMap<&str, u64> = BTreeMap::new();
    for r in ent.rows_of(&yesterday) {
        for slug in &ent.teams[&(r.day.clone(), r.login.clone())] {
            *teams.entry(slug).or_default() += r.counts[5];
        }
    }
    assert!(!teams.is_empty());
    for (slug, v) in teams {
        let k = format!(
            "{{org=\"acme-ent\",repo=\"*\",user=\"all\",scope=\"team\",window=\"1d\",team=\"{slug}\",ide=\"\",feature=\"\",language=\"\",model=\"\"}}"
        );
        assert_eq!(s.get(&k), Some(&(v as f64)), "{slug}");
    }
    // The fake's day totals carry every count under vscode.
    assert_eq!(
        s.get(&l("all", "enterprise", "vscode")),
        Some(&(ent_total[5] as f64))
    );
    // Users: each user's rows, per IDE too (a user works in one IDE in the fake).
    let mine = sum(ent.rows_of(&days28).filter(|r| r.login == first.login));
    assert_eq!(
        s.get(&l(&first.login, "users", "")),
        Some(&(mine[5] as f64))
    );
    assert_eq!(
        s.get(&l(&first.login, "users", first.ide)),
        Some(&(mine[5] as f64))
    );
    running.stop().await;

    // Files cut short (a last record or a document that does not end): showing what was read
    // would show part of the report as all of it, so the read fails and nothing is shown.
    env.sim
        .copilot
        .downloads
        .truncate
        .store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let running = start_app(
        dir.path(),
        &env.sections("{enabled: true, include_org_28d: false, include_org_1d: false, include_org_users_28d: true}"),
    )
    .await;
    let state = format!("{{org=\"{ORG}\",report=\"users-28-day\",state=\"error\"}}");
    let text = wait_for(&running.base, "devmetrics_copilot_report_state", |s| {
        s.get(&state) == Some(&1.0)
    })
    .await;
    let users: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("scope=\"users\""))
        .collect();
    assert!(
        users.is_empty(),
        "a cut file's records were shown: {users:?}"
    );
    running.stop().await;
}

/// The daily counters: every day of the horizon counted once from its 1-day report, days
/// that failed read again from the queue, a day with no data counted as such, and nothing
/// counted twice across a restart.
#[tokio::test]
async fn missed_days_are_backfilled_and_counted_once() {
    let env = Env::start().await;
    let end = env.now - env.now.rem_euclid(DAY) - DAY;
    let h: Vec<String> = (0..5).rev().map(|k| day_of(end - k * DAY)).collect();
    {
        let mut s = env.sim.copilot.day_status.lock();
        s.insert(h[0].clone(), 500);
        s.insert(h[1].clone(), 500);
        s.insert(h[3].clone(), 204);
    }
    let dir = tempfile::tempdir().unwrap();
    let sections = env
        .sections("{enabled: true, include_org_28d: false, backfill_days: 5, scrape_interval: 1h}");
    let days = |text: &str, result: &str| {
        series(text, "devmetrics_copilot_days_total")
            .get(&format!(
                "{{org=\"{ORG}\",report=\"organization-1-day\",result=\"{result}\"}}"
            ))
            .copied()
    };
    let counters = |text: &str| -> Vec<Option<f64>> {
        COUNTERS
            .iter()
            .map(|f| {
                series(text, f)
                    .get(&format!("{{org=\"{ORG}\",scope=\"org\"}}"))
                    .copied()
            })
            .collect()
    };
    let truth = |counted: &[&String]| -> Vec<Option<f64>> {
        let set: BTreeSet<String> = counted.iter().map(|d| (*d).clone()).collect();
        let s = sum(env.data.rows_of(&set));
        let mut out: Vec<Option<f64>> = s.iter().map(|v| Some(*v as f64)).collect();
        for i in 0..4 {
            out.push(Some(
                set.iter()
                    .map(|d| env.data.pull_requests.get(d).map_or(0, |p| p[i]) as f64)
                    .sum(),
            ));
        }
        out
    };
    let running = start_app(dir.path(), &sections).await;
    let text = wait_for(&running.base, "devmetrics_copilot_days_total", |_| true).await;
    let mut text = text;
    for _ in 0..200 {
        text = metrics(&running.base).await;
        if days(&text, "counted") == Some(2.0) && days(&text, "no_data") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(days(&text, "counted"), Some(2.0), "{text}");
    assert_eq!(days(&text, "no_data"), Some(1.0));
    assert_eq!(counters(&text), truth(&[&h[2], &h[4]]));
    assert_eq!(
        series(&text, "devmetrics_copilot_days_uncounted")
            .get(&format!("{{org=\"{ORG}\",report=\"organization-1-day\"}}")),
        Some(&5.0),
        "the first poll found every day of the horizon uncounted"
    );
    // GitHub recovers: the failed days' jobs, retried with backoff, count them.
    env.sim.copilot.day_status.lock().retain(|_, s| *s == 204);
    for _ in 0..400 {
        text = metrics(&running.base).await;
        if days(&text, "counted") == Some(4.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(days(&text, "counted"), Some(4.0), "{text}");
    assert_eq!(counters(&text), truth(&[&h[0], &h[1], &h[2], &h[4]]));
    running.stop().await;

    // After a restart the poll finds every day counted: none is read or counted again.
    let asked = env.sim.copilot.days_asked.lock().len();
    let running = start_app(dir.path(), &sections).await;
    let text = wait_for(&running.base, "devmetrics_copilot_days_uncounted", |m| {
        m.get(&format!("{{org=\"{ORG}\",report=\"organization-1-day\"}}")) == Some(&0.0)
    })
    .await;
    assert_eq!(counters(&text), truth(&[&h[0], &h[1], &h[2], &h[4]]));
    assert_eq!(days(&text, "counted"), Some(4.0));
    // Only the poll's own read of yesterday for the 1d gauges.
    assert_eq!(env.sim.copilot.days_asked.lock().len(), asked + 1);
    running.stop().await;
}

const COUNTERS: [&str; 11] = [
    "devmetrics_copilot_user_initiated_interactions_total",
    "devmetrics_copilot_code_generations_total",
    "devmetrics_copilot_code_acceptances_total",
    "devmetrics_copilot_loc_suggested_to_add_total",
    "devmetrics_copilot_loc_suggested_to_delete_total",
    "devmetrics_copilot_loc_added_total",
    "devmetrics_copilot_loc_deleted_total",
    "devmetrics_copilot_pull_requests_created_total",
    "devmetrics_copilot_pull_requests_reviewed_total",
    "devmetrics_copilot_pull_requests_created_by_copilot_total",
    "devmetrics_copilot_pull_requests_reviewed_by_copilot_total",
];
