//! One team's month, played through every receiver, with every figure worked out by hand.
//!
//! Times are `D(k) + h`: `h` hours after midnight UTC `k` days ago, so each window's content
//! is known whatever day the test runs. Team Payments owns acme/pay and Jira project PAY.
//!
//! | event | time | what it does |
//! | --- | --- | --- |
//! | push 0→A: a1, A | a1 D12+1, A D12+2 | |
//! | S1 production success A | D12+10 | ships a1 (9 h), A (8 h) |
//! | push A→B: B | D10+1 | |
//! | F1 production failure B | D10+5 | failed change; delivered after S2 |
//! | staging success B | D10+6 | not production |
//! | S2 production success B | D10+8 | ships B (7 h); recovers F1 (3 h) |
//! | S2b production success B again | D10+9 | redeployment: ships nothing |
//! | Jira PAY-1 created (−0400), resolved (−0500) | D10+10 → D10+12 | a DST change between the two offsets; attributed to S2b, recovery 3 h; reopened at D10+13 and resolved again D10+14 (restore 4 h); its events arrive out of order and twice |
//! | PR #7 branch push 0→H: h1 | h1 D5+0 | first commit |
//! | PR #7 opened by alice | D5+1 | coding 1 h |
//! | alice comments on her own PR | D5+2 | not a pickup |
//! | bob reviews | D5+3 | pickup 2 h |
//! | push B→C: c1, C (C merges PR #7) | c1 D4+1, C D4+2 | PR merged D4+2: review 23 h |
//! | S3 production success C | D3+1 | ships C (23 h), c1 (24 h); PR deploy 23 h |
//! | GitHub issue #90 labelled incident | D3+2 → D3+3 | attributed to S3, recovery 2 h |
//! | push C→D: D | D1+4 | |
//! | S4 production success D, delivered twice | D1+5 | ships D (1 h) |
//! | GitHub issue #91 without the label | | not an incident |

use super::*;
use devmetrics::sim::webhooks::{
    DeploymentStatus, PullRequest, deployment_status_payload, issue_payload, pull_request_payload,
    push_payload, push_to_branch, review_payload,
};

const H: f64 = 3600.0;
const DAY: f64 = 86_400.0;

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

/// Jira's text for the instant `t` at UTC offset `hours` (e.g. `-0400`).
fn jira_at(t: f64, hours: i32) -> String {
    let local = devmetrics::timestamp::format_rfc3339(t + hours as f64 * H);
    let sign = if hours < 0 { '-' } else { '+' };
    format!(
        "{}{sign}{:02}00",
        local.trim_end_matches('Z'),
        hours.unsigned_abs()
    )
}

#[tokio::test]
async fn a_month_of_one_team_gives_every_figure_worked_out_by_hand() {
    let now = devmetrics::clock::now_unix();
    let midnight = (now / DAY).floor() * DAY;
    // A test running in the first hours of a UTC day would see D1+5 in the future.
    let d = |k: f64, h: f64| midnight - k * DAY + h * H;
    assert!(d(1.0, 5.0) < now);

    let app = App::start().await;
    let gh = app.github();
    let mut n = 0;
    let mut send = async |event: &str, body: Vec<u8>| {
        n += 1;
        assert_eq!(gh.send(event, &format!("s-{n}"), body).await.unwrap(), 202);
    };
    let deploy = |id: u64, env: &str, state: &str, at: f64, commit: &str| {
        deployment_status_payload(&DeploymentStatus {
            repo: "acme/pay".into(),
            environment: env.into(),
            state: state.into(),
            status_id: id * 10,
            deployment_id: id,
            sha: commit.into(),
            created_at: at,
        })
    };
    let (a1, a, b, c1, c, dd, h1, hh) = (
        sha('1'),
        sha('a'),
        sha('b'),
        sha('2'),
        sha('c'),
        sha('d'),
        sha('3'),
        sha('e'),
    );
    send(
        "push",
        push_payload(
            "acme/pay",
            &sha('0'),
            &a,
            &[(a1.clone(), d(12.0, 1.0)), (a.clone(), d(12.0, 2.0))],
        ),
    )
    .await;
    send(
        "deployment_status",
        deploy(1, "production", "success", d(12.0, 10.0), &a),
    )
    .await;
    send(
        "push",
        push_payload("acme/pay", &a, &b, &[(b.clone(), d(10.0, 1.0))]),
    )
    .await;
    send(
        "deployment_status",
        deploy(4, "staging", "success", d(10.0, 6.0), &b),
    )
    .await;
    send(
        "deployment_status",
        deploy(3, "production", "success", d(10.0, 8.0), &b),
    )
    .await;
    // The failure S2 fixed, delivered after it.
    send(
        "deployment_status",
        deploy(2, "production", "failure", d(10.0, 5.0), &b),
    )
    .await;
    send(
        "deployment_status",
        deploy(5, "production", "success", d(10.0, 9.0), &b),
    )
    .await;
    // Wait for the deployments before the incident that is attributed to one of them.
    app.series_when("dora_changes_total", |s| {
        s.get("{team=\"Payments\"}") == Some(&4.0)
    })
    .await;

    // PAY-1: created at 06:00 −0400 (D10+10 UTC), resolved at 07:00 −0500 (D10+12 UTC):
    // two hours, though the wall clock moved one.
    let jira = app.sender();
    let created = jira_at(d(10.0, 10.0), -4);
    let open = issue("PAY-1", &created);
    let first = resolved(open.clone(), &jira_at(d(10.0, 12.0), -5));
    let again = resolved(open.clone(), &jira_at(d(10.0, 14.0), -5));
    let ms = |t: f64| (t * 1000.0) as i64;
    let deliveries = [
        ("j1", body("jira:issue_created", &open, ms(d(10.0, 10.0)))),
        ("j2", body("jira:issue_updated", &first, ms(d(10.0, 12.0)))),
        // Resolved again, delivered before the reopening it follows.
        ("j4", body("jira:issue_updated", &again, ms(d(10.0, 14.0)))),
        ("j3", body("jira:issue_updated", &open, ms(d(10.0, 13.0)))),
        // A duplicate delivery.
        ("j4", body("jira:issue_updated", &again, ms(d(10.0, 14.0)))),
    ];
    for (id, b) in deliveries {
        let code = jira.send(id, b).await.unwrap();
        assert!(code == 202 || code == 200, "{code}");
    }

    let pr = PullRequest {
        repo: "acme/pay".into(),
        number: 7,
        author: "alice".into(),
        head_sha: hh.clone(),
        opened_at: d(5.0, 1.0),
        merged: None,
    };
    send(
        "push",
        push_to_branch(
            "acme/pay",
            "change-7",
            &sha('0'),
            &hh,
            &[(h1.clone(), d(5.0, 0.0)), (hh.clone(), d(5.0, 0.5))],
        ),
    )
    .await;
    send("pull_request", pull_request_payload(&pr)).await;
    send(
        "pull_request_review",
        review_payload(&pr, "alice", "commented", d(5.0, 2.0)),
    )
    .await;
    send(
        "pull_request_review",
        review_payload(&pr, "bob", "approved", d(5.0, 3.0)),
    )
    .await;
    let merged = PullRequest {
        merged: Some((d(4.0, 2.0), c.clone())),
        ..pr.clone()
    };
    send("pull_request", pull_request_payload(&merged)).await;
    send(
        "push",
        push_payload(
            "acme/pay",
            &b,
            &c,
            &[(c1.clone(), d(4.0, 1.0)), (c.clone(), d(4.0, 2.0))],
        ),
    )
    .await;
    send(
        "deployment_status",
        deploy(6, "production", "success", d(3.0, 1.0), &c),
    )
    .await;
    app.series_when("dora_changes_total", |s| {
        s.get("{team=\"Payments\"}") == Some(&5.0)
    })
    .await;
    send(
        "issues",
        issue_payload(
            "acme/pay",
            90,
            &["incident"],
            d(3.0, 2.0),
            None,
            d(3.0, 2.0),
        ),
    )
    .await;
    send(
        "issues",
        issue_payload(
            "acme/pay",
            90,
            &["Incident"],
            d(3.0, 2.0),
            Some(d(3.0, 3.0)),
            d(3.0, 3.0),
        ),
    )
    .await;
    send(
        "issues",
        issue_payload("acme/pay", 91, &["bug"], d(3.0, 2.0), None, d(3.0, 2.0)),
    )
    .await;
    send(
        "push",
        push_payload("acme/pay", &c, &dd, &[(dd.clone(), d(1.0, 4.0))]),
    )
    .await;
    let s4 = deploy(7, "production", "success", d(1.0, 5.0), &dd);
    send("deployment_status", s4.clone()).await;
    send("deployment_status", s4).await;

    // The counters, each from the events as they arrived.
    let team = "{team=\"Payments\"}";
    app.series_when("dora_incidents_total", |s| s.len() == 2)
        .await;
    app.series_when("dora_failed_deployment_recovery_seconds_count", |s| {
        s.get(team) == Some(&3.0)
    })
    .await;
    let changes = app
        .series_when("dora_changes_total", |s| s.get(team) == Some(&6.0))
        .await;
    assert_eq!(changes[team], 6.0, "S1, F1, S2, S2b, S3, S4");
    let row = |state: &str, env: &str, again: bool| {
        format!(
            "{{repo=\"pay\",environment=\"{env}\",team=\"Payments\",status=\"{state}\",redeployment=\"{again}\"}}"
        )
    };
    let want: BTreeMap<String, f64> = [
        (row("success", "production", false), 4.0),
        (row("success", "production", true), 1.0),
        (row("failure", "production", false), 1.0),
        (row("success", "staging", false), 1.0),
    ]
    .into();
    // Statuses are applied by their own consumers: wait for all of them, not for the changes.
    let deployments = app
        .series_when("github_deployments_total", |s| *s == want)
        .await;
    assert_eq!(deployments, want);
    let text = app.metrics(None).await;
    assert_eq!(
        series(&text, "dora_failed_changes_total"),
        [
            (
                "{team=\"Payments\",reason=\"failed_deployment\"}".into(),
                1.0
            ),
            ("{team=\"Payments\",reason=\"incident\"}".into(), 2.0),
        ]
        .into()
    );
    assert_eq!(
        series(&text, "dora_incidents_total"),
        [
            ("{team=\"Payments\",source=\"github\"}".into(), 1.0),
            ("{team=\"Payments\",source=\"jira\"}".into(), 1.0),
        ]
        .into()
    );
    let one = |family: &str| series(&text, family).get(team).copied();
    assert_eq!(one("dora_change_lead_time_seconds_count"), Some(6.0));
    assert_eq!(
        one("dora_change_lead_time_seconds_sum"),
        Some((9.0 + 8.0 + 7.0 + 24.0 + 23.0 + 1.0) * H)
    );
    // The three recoveries: F1 → S2, PAY-1's first resolution − S2b, #90 − S3.
    assert_eq!(
        one("dora_failed_deployment_recovery_seconds_sum"),
        Some((3.0 + 3.0 + 2.0) * H)
    );
    let pay = "{project=\"PAY\",team=\"Payments\"}";
    assert_eq!(series(&text, "jira_incidents").get(pay), Some(&1.0));
    assert_eq!(
        series(&text, "jira_incidents_duration_sum").get(pay),
        Some(&(4.0 * H)),
        "final resolution − creation, across the offsets"
    );
    for (family, want) in [
        ("dora_pr_coding_seconds", 1.0 * H),
        ("dora_pr_pickup_seconds", 2.0 * H),
        ("dora_pr_review_seconds", 23.0 * H),
        ("dora_pr_deploy_seconds", 23.0 * H),
    ] {
        assert_eq!(one(&format!("{family}_count")), Some(1.0), "{family}");
        assert_eq!(one(&format!("{family}_sum")), Some(want), "{family}");
    }
    // Buckets: lead times of 1, 7, 8, 9, 23, 24 hours.
    let buckets = series(&text, "dora_change_lead_time_seconds_bucket");
    // Encoders write 3600 or 3600.0.
    let bucket = |le: f64| {
        buckets
            .iter()
            .find(|(k, _)| {
                k.split("le=\"")
                    .nth(1)
                    .and_then(|v| v.trim_end_matches("\"}").parse::<f64>().ok())
                    == Some(le)
            })
            .map(|(_, v)| *v)
    };
    assert_eq!(bucket(3600.0), Some(1.0));
    assert_eq!(bucket(28800.0), Some(3.0));
    assert_eq!(bucket(86400.0), Some(6.0));

    // The four keys, from the log, per window.
    let keys = keys_text(&app).await;
    let k = |family: &str, window: &str| {
        series(&keys, family)
            .get(&format!("{{team=\"Payments\",window=\"{window}\"}}"))
            .copied()
    };
    assert_eq!(
        k("dora_deployment_frequency_per_day", "7d"),
        Some(2.0 / 7.0)
    );
    assert_eq!(k("dora_deployment_days", "7d"), Some(2.0));
    assert_eq!(k("dora_lead_time_median_seconds", "7d"), Some(23.0 * H));
    assert_eq!(k("dora_lead_time_p90_seconds", "7d"), Some(23.8 * H));
    assert_eq!(k("dora_change_failure_rate", "7d"), Some(0.5));
    assert_eq!(
        k("dora_failed_deployment_recovery_median_seconds", "7d"),
        Some(2.0 * H)
    );
    assert_eq!(
        k("dora_deployment_frequency_per_day", "30d"),
        Some(5.0 / 30.0)
    );
    assert_eq!(k("dora_deployment_days", "30d"), Some(4.0));
    assert_eq!(k("dora_lead_time_median_seconds", "30d"), Some(8.5 * H));
    assert_eq!(k("dora_lead_time_p90_seconds", "30d"), Some(23.5 * H));
    assert_eq!(k("dora_change_failure_rate", "30d"), Some(3.0 / 6.0));
    assert_eq!(
        k("dora_failed_deployment_recovery_median_seconds", "30d"),
        Some(3.0 * H)
    );
    assert_eq!(
        k("dora_deployment_frequency_per_day", "90d"),
        Some(5.0 / 90.0)
    );
    let level = |window: &str, metric: &str| {
        let s = series(&keys, "dora_performance_level");
        let on: Vec<String> = s
            .iter()
            .filter(|(l, v)| {
                **v == 1.0
                    && l.contains("team=\"Payments\"")
                    && l.contains(&format!("window=\"{window}\""))
                    && l.contains(&format!("metric=\"{metric}\""))
            })
            .map(|(l, _)| {
                l.split("level=\"")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("\"}")
                    .to_string()
            })
            .collect();
        assert_eq!(on.len(), 1, "{window} {metric}: {s:?}");
        on[0].clone()
    };
    assert_eq!(level("7d", "deployment_frequency"), "high");
    assert_eq!(level("7d", "lead_time"), "elite");
    assert_eq!(level("7d", "change_failure_rate"), "low");
    assert_eq!(level("7d", "recovery_time"), "high");
    assert_eq!(level("7d", "overall"), "low");
    assert_eq!(level("30d", "deployment_frequency"), "medium");
    assert_eq!(level("90d", "deployment_frequency"), "medium");
    // A team with no events yet shows its frequency at zero.
    assert_eq!(
        series(&keys, "dora_deployment_frequency_per_day").get("{team=\"Platform\",window=\"7d\"}"),
        Some(&0.0)
    );
    app.running.stop().await;
}

/// The exposition once the four keys have been recomputed after the last event.
async fn keys_text(app: &App) -> String {
    let want = "dora_deployment_days{team=\"Payments\",window=\"7d\"} 2";
    let mut text = String::new();
    for _ in 0..100 {
        text = app.metrics(None).await;
        if text.lines().any(|l| l == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text
}
