//! DORA's upstreams: the Backstage catalog for teams, and GitHub's compare and pull-request
//! APIs for what a deployment ships when its pushes were not seen.

use super::*;
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::webhooks::{DeploymentStatus, deployment_status_payload};
use devmetrics::sim::{FakeServer, Faults};

const H: f64 = 3600.0;
const T: f64 = 1_773_050_400.0; // 2026-03-09T10:00:00Z

fn status(repo: &str, id: u64, sha: &str, at: f64) -> Vec<u8> {
    deployment_status_payload(&DeploymentStatus {
        repo: repo.into(),
        environment: "production".into(),
        state: "success".into(),
        status_id: id * 10,
        deployment_id: id,
        sha: sha.into(),
        created_at: at,
    })
}

fn sections_with(
    dora_extra: &str,
    extra: Vec<(&'static str, serde_yaml::Value)>,
) -> Vec<(&'static str, serde_yaml::Value)> {
    let mut dora = dora_section();
    let more: serde_yaml::Mapping = serde_yaml::from_str(dora_extra).unwrap();
    for (k, v) in more {
        dora.as_mapping_mut().unwrap().insert(k, v);
    }
    let mut out = vec![
        ("dora", dora),
        (
            "webhooks",
            serde_yaml::from_str(&format!("github: {{secret: {GITHUB_SECRET}}}")).unwrap(),
        ),
    ];
    out.extend(extra);
    out
}

async fn start_in(
    dir: &std::path::Path,
    sections: &[(&str, serde_yaml::Value)],
) -> crate::support::Running {
    let cfg = crate::support::Backend::from_env().config(dir, sections);
    crate::support::start(cfg, "http").await
}

/// Teams the static list does not name come from Backstage's `spec.owner`, read in the
/// background (one request however many webhooks), with the base path kept and the bearer
/// token sent; after a restart with Backstage down the saved catalog still answers.
#[tokio::test]
async fn backstage_owners_name_teams_without_a_call_per_webhook() {
    let fake = devmetrics::sim::backstage::start(
        "/backstage",
        Some("backstage-token"),
        &[
            ("acme/shop", "group:default/checkout"),
            ("acme/pay", "group:default/wrong"),
        ],
    )
    .await
    .unwrap();
    let sections = sections_with(
        &format!(
            "catalog: {{mode: backstage, endpoint: '{}', token: backstage-token, refresh_interval: 1h}}",
            fake.endpoint
        ),
        Vec::new(),
    );
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path(), &sections).await;
    let app = App { running, dir };
    let gh = app.github();
    for i in 0..5u64 {
        let body = status("acme/shop", 100 + i, &"a".repeat(40), T + i as f64);
        assert_eq!(
            gh.send("deployment_status", &format!("b-{i}"), body)
                .await
                .unwrap(),
            202
        );
    }
    let body = status("acme/pay", 200, &"b".repeat(40), T);
    assert_eq!(
        gh.send("deployment_status", "b-pay", body).await.unwrap(),
        202
    );
    let row = |repo: &str, team: &str, again: bool| {
        format!(
            "{{repo=\"{repo}\",environment=\"production\",team=\"{team}\",status=\"success\",redeployment=\"{again}\"}}"
        )
    };
    let want: BTreeMap<String, f64> = [
        (row("shop", "group:default/checkout", false), 1.0),
        (row("shop", "group:default/checkout", true), 4.0),
        // The static list is asked first.
        (row("pay", "Payments", false), 1.0),
    ]
    .into();
    let got = app
        .series_when("github_deployments_total", |s| *s == want)
        .await;
    assert_eq!(got, want);
    let route = "GET /backstage/api/catalog/entities";
    assert_eq!(
        fake.server.requests.count(route),
        1,
        "{:?}",
        fake.server.requests.all()
    );
    let events = series(&app.metrics(None).await, "devmetrics_dora_events_total");
    assert_eq!(events["{source=\"backstage\",outcome=\"refreshed\"}"], 1.0);
    let App { running, dir } = app;
    running.stop().await;
    drop(fake);

    // Backstage is gone: the saved catalog answers, and the failed refresh is counted.
    let running = start_in(dir.path(), &sections).await;
    let app = App { running, dir };
    let body = status("acme/shop", 300, &"c".repeat(40), T + 100.0);
    assert_eq!(
        app.github()
            .send("deployment_status", "b-after", body)
            .await
            .unwrap(),
        202
    );
    let got = app
        .series_when("github_deployments_total", |s| {
            s.get(&row("shop", "group:default/checkout", false)) == Some(&2.0)
        })
        .await;
    assert_eq!(
        got.get(&row("shop", "group:default/checkout", false)),
        Some(&2.0),
        "{got:?}"
    );
    // Counted, and tried again within seconds (1 s, doubling), not after the interval.
    let events = series(&app.metrics(None).await, "devmetrics_dora_events_total");
    assert!(
        events
            .get("{source=\"backstage\",outcome=\"failed\"}")
            .is_some_and(|n| *n >= 1.0),
        "{events:?}"
    );
    app.running.stop().await;

    // A wrong token is an error the operator sees, not an empty catalog.
    let fake = devmetrics::sim::backstage::start("", Some("right"), &[])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backends = crate::support::Backend::from_env()
        .open(dir.path(), &devmetrics::queue::RetryPolicy::default())
        .await;
    let telemetry = std::sync::Arc::new(devmetrics::telemetry::Telemetry::default());
    let b = devmetrics::sources::dora::catalog::Backstage::new(
        devmetrics::sources::dora::config::BackstageConfig {
            endpoint: fake.endpoint.clone(),
            token: Some(devmetrics::config::Secret::new("wrong")),
            refresh_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        },
        backends.store.clone(),
        telemetry.clone(),
    );
    let e = b.refresh().await.unwrap_err().to_string();
    assert!(e.contains("401") && !e.contains("wrong"), "{e}");
    assert_eq!(b.stats.get("failed"), 1);
    // Shown like a poller's health, with its reason.
    let health = &telemetry.sources()[devmetrics::sources::dora::catalog::SOURCE];
    assert!(
        !health.up
            && health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("401"))
    );
}

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

/// Without pushes, a repository's first deployment ships its pull request's commits and
/// the next one the comparison with it, each answer asked of GitHub once. Worked out by hand:
///
/// - PR 41: p1 at T−9h, p2 at T−8h, merged by m1 at T−5h; deployed at T−4h: 5h, 4h, 1h
/// - PR 42: q1 at T−3h, merged by m2 at T−2h; deployed at T−1h: compare m1...m2: 2h, 1h,
///   and whatever else the fake's history holds between the two merges
#[tokio::test]
async fn deployments_without_pushes_ask_github_once() {
    let now = T as i64;
    let sim = GithubSim::new(
        3,
        devmetrics::clock::Clock::from_fn(move || now),
        &[OrgSpec::small("acme")],
    );
    let fake = FakeServer::start("github", sim.router(), Faults::new(3))
        .await
        .unwrap();
    let repo = sim.with_org("acme", |o| o.repos[0].name.clone());
    let t = |h: f64| (T + h * H) as i64;
    sim.add_merged_pr(
        "acme",
        &repo,
        41,
        "alice",
        t(-10.0),
        &[(sha('1'), t(-9.0)), (sha('2'), t(-8.0))],
        t(-5.0),
        &sha('a'),
    );
    sim.add_merged_pr(
        "acme",
        &repo,
        42,
        "bob",
        t(-3.5),
        &[(sha('3'), t(-3.0))],
        t(-2.0),
        &sha('b'),
    );
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/test-app-key.pem");
    let github: serde_yaml::Value = serde_yaml::from_str(&format!(
        "api_base_url: {}\norgs:\n  - org: acme\n    app_id: {APP_ID}\n    installation_id: {INSTALLATION_ID}\n    private_key_path: {}\n    scrape_interval: 1h\n",
        fake.base_url(),
        key.display()
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path(), &sections_with("{}", vec![("github", github)])).await;
    let app = App { running, dir };
    let gh = app.github();
    let full = format!("acme/{repo}");
    for (id, delivery, s, at) in [
        (1, "f-1", sha('a'), T - 4.0 * H),
        (2, "f-2", sha('b'), T - H),
        // The same status again under another delivery id: counted once, asked nothing.
        (2, "f-3", sha('b'), T - H),
    ] {
        let body = status(&full, id, &s, at);
        assert_eq!(
            gh.send("deployment_status", delivery, body).await.unwrap(),
            202
        );
    }
    // The fake's own history between the two merges (its generated commits among them).
    let compared: Vec<f64> = sim.with_org("acme", |o| {
        let r = o.repos.iter().find(|r| r.name == repo).unwrap();
        let m1 = r.commits.iter().position(|c| c.sha == sha('a')).unwrap();
        let m2 = r.commits.iter().position(|c| c.sha == sha('b')).unwrap();
        r.commits[m2..m1]
            .iter()
            .map(|c| c.authored as f64)
            .collect()
    });
    assert!(compared.len() >= 2);
    let want_count = 3.0 + compared.len() as f64;
    let want_sum = (5.0 + 4.0 + 1.0) * H + compared.iter().map(|c| (T - H) - c).sum::<f64>();
    let team = "{team=\"Unknown\"}";
    let count = app
        .series_when("dora_change_lead_time_seconds_count", |s| {
            s.get(team) == Some(&want_count)
        })
        .await;
    assert_eq!(count.get(team), Some(&want_count));
    let events = app
        .series_when("devmetrics_dora_events_total", |s| {
            s.get("{source=\"github\",outcome=\"duplicate\"}") == Some(&1.0)
        })
        .await;
    assert_eq!(
        events
            .get("{source=\"github\",outcome=\"chain_incomplete\"}")
            .copied()
            .unwrap_or(0.0),
        0.0,
        "{events:?}"
    );
    let text = app.metrics(None).await;
    assert_eq!(
        series(&text, "dora_change_lead_time_seconds_sum").get(team),
        Some(&want_sum)
    );
    let r = &fake.requests;
    assert_eq!(
        r.count("GET /repos/{owner}/{repo}/commits/{sha}/pulls"),
        1,
        "{:?}",
        r.all()
    );
    assert_eq!(
        r.count("GET /repos/{owner}/{repo}/pulls/{number}/commits"),
        1
    );
    assert_eq!(r.count("GET /repos/{owner}/{repo}/compare/{basehead}"), 1);
    app.running.stop().await;
}
