use super::*;
use devmetrics::sim::webhooks::{DeploymentStatus, deployment_status_payload, push_payload};

const T0: f64 = 1_773_050_400.0; // 2026-03-09T10:00:00Z

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

fn deploy(id: u64, env: &str, state: &str, at: f64, commit: &str) -> Vec<u8> {
    deployment_status_payload(&DeploymentStatus {
        repo: "acme/pay".into(),
        environment: env.into(),
        state: state.into(),
        status_id: id,
        deployment_id: id,
        sha: commit.into(),
        created_at: at,
    })
}

/// Pushes, then deployments: each successful production deployment ships the commits since
/// the previous one, each commit's lead time observed once; a redeploy ships nothing new;
/// dora-exporter's duration families follow each status. Worked out by hand:
///
/// - push 0→A: a1 at T0, A at T0+600; push A→B: B at T0+3600
/// - 101 production success B at T0+7200 ships B, A, a1: 3600, 6600, 7200; duration 7200
/// - push B→C: c1 at T0+8000, C at T0+9000
/// - 102 production in_progress C at T0+9500: ships nothing; duration from C: 500
/// - 105 staging success C at T0+9800: not production; duration from C: 800
/// - 103 production success C at T0+10000 ships C, c1: 1000, 2000; duration 2000
/// - 104 production success C again at T0+11000: nothing new; duration from C: 2000
/// - 106 production success D at T0+12000, no push known: incomplete, no duration
#[tokio::test]
async fn successful_production_deployments_ship_their_pushed_commits_once() {
    let app = App::start().await;
    let gh = app.github();
    let mut n = 0;
    let mut send = async |event: &str, body: Vec<u8>| {
        n += 1;
        assert_eq!(gh.send(event, &format!("lt-{n}"), body).await.unwrap(), 202);
    };
    let (a1, a, b, c1, c) = (sha('1'), sha('a'), sha('b'), sha('2'), sha('c'));
    send(
        "push",
        push_payload(
            "acme/pay",
            &sha('0'),
            &a,
            &[(a1.clone(), T0), (a.clone(), T0 + 600.0)],
        ),
    )
    .await;
    send(
        "push",
        push_payload("acme/pay", &a, &b, &[(b.clone(), T0 + 3600.0)]),
    )
    .await;
    send(
        "deployment_status",
        deploy(101, "production", "success", T0 + 7200.0, &b),
    )
    .await;
    send(
        "push",
        push_payload(
            "acme/pay",
            &b,
            &c,
            &[(c1.clone(), T0 + 8000.0), (c.clone(), T0 + 9000.0)],
        ),
    )
    .await;
    send(
        "deployment_status",
        deploy(102, "production", "in_progress", T0 + 9500.0, &c),
    )
    .await;
    send(
        "deployment_status",
        deploy(105, "staging", "success", T0 + 9800.0, &c),
    )
    .await;
    send(
        "deployment_status",
        deploy(103, "production", "success", T0 + 10000.0, &c),
    )
    .await;
    send(
        "deployment_status",
        deploy(104, "production", "success", T0 + 11000.0, &c),
    )
    .await;
    send(
        "deployment_status",
        deploy(106, "production", "success", T0 + 12000.0, &sha('d')),
    )
    .await;

    let row_of = |env: &str, state: &str, again: bool| {
        format!(
            "{{repo=\"pay\",environment=\"{env}\",team=\"Payments\",status=\"{state}\",redeployment=\"{again}\"}}"
        )
    };
    let row = |env: &str, state: &str| row_of(env, state, false);
    // 104 deploys C to production again: a redeployment.
    let again = row_of("production", "success", true);
    let want_total: BTreeMap<String, f64> = [
        (row("production", "success"), 3.0),
        (again.clone(), 1.0),
        (row("production", "in_progress"), 1.0),
        (row("staging", "success"), 1.0),
    ]
    .into();
    app.series_when("github_deployments_total", |s| *s == want_total)
        .await;
    let text = app.metrics(None).await;
    assert_eq!(
        series(&text, "github_deployments_total"),
        want_total,
        "{text}"
    );
    let want_last: BTreeMap<String, f64> = [
        (row("production", "success"), 2000.0),
        (again.clone(), 2000.0),
        (row("production", "in_progress"), 500.0),
        (row("staging", "success"), 800.0),
    ]
    .into();
    assert_eq!(series(&text, "github_deployments_duration"), want_last);
    let want_sum: BTreeMap<String, f64> = [
        (row("production", "success"), 7200.0 + 2000.0),
        (again.clone(), 2000.0),
        (row("production", "in_progress"), 500.0),
        (row("staging", "success"), 800.0),
    ]
    .into();
    assert_eq!(series(&text, "github_deployments_duration_sum"), want_sum);
    let team = "team=\"Payments\"";
    let h = |suffix: &str| series(&text, &format!("dora_change_lead_time_seconds{suffix}"));
    assert_eq!(
        h("_count").get(&format!("{{{team}}}")),
        Some(&5.0),
        "{text}"
    );
    assert_eq!(
        h("_sum")[&format!("{{{team}}}")],
        3600.0 + 6600.0 + 7200.0 + 1000.0 + 2000.0
    );
    let buckets = h("_bucket");
    // The bucket whose `le` is `le` as a number (encoders write 900 or 900.0).
    let bucket = |le: &str| {
        let want: f64 = le.parse().unwrap();
        *buckets
            .iter()
            .find(|(k, _)| {
                k.split("le=\"")
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    == Some(want)
            })
            .unwrap_or_else(|| panic!("no bucket {le}: {buckets:?}"))
            .1
    };
    assert_eq!(bucket("900"), 0.0);
    assert_eq!(bucket("1800"), 1.0);
    assert_eq!(bucket("3600"), 3.0);
    assert_eq!(bucket("7200"), 5.0);
    assert_eq!(bucket("+Inf"), 5.0);
    let events = series(&text, "devmetrics_dora_events_total");
    assert_eq!(
        events["{source=\"github\",outcome=\"push\"}"], 3.0,
        "{events:?}"
    );
    assert_eq!(
        events["{source=\"github\",outcome=\"chain_incomplete\"}"], 1.0,
        "{events:?}"
    );
    app.running.stop().await;
}
