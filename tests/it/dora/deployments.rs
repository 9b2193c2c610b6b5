use super::*;
use devmetrics::sim::webhooks::{DeploymentStatus, deployment_status_payload};

fn status(repo: &str, env: &str, state: &str, id: u64) -> Vec<u8> {
    deployment_status_payload(&DeploymentStatus {
        repo: repo.into(),
        environment: env.into(),
        state: state.into(),
        status_id: id,
        deployment_id: id / 10,
        sha: "f95f852bd8fca8fcc58a9a2d6c842781e32a215e".into(),
        created_at: 1_773_050_400.0 + id as f64,
    })
}

/// Every distinct deployment status counts once, whatever delivered it, labelled by the
/// repository's name, environment, owning team and state.
#[tokio::test]
async fn each_deployment_status_counts_once_per_repo_environment_team_and_state() {
    let app = App::start().await;
    let gh = app.github();
    let mut n = 0;
    let mut send = async |event: &str, body: Vec<u8>| {
        n += 1;
        gh.send(event, &format!("d-{n}"), body).await.unwrap()
    };
    for (state, id) in [("queued", 11), ("in_progress", 12), ("success", 13)] {
        assert_eq!(
            send(
                "deployment_status",
                status("acme/pay", "production", state, id)
            )
            .await,
            202
        );
    }
    // The same status from a second hook (another delivery id): counted once.
    assert_eq!(
        send(
            "deployment_status",
            status("acme/pay", "production", "success", 13)
        )
        .await,
        202
    );
    // The same delivery again: the receiver knows it.
    let body = status("acme/pay", "staging", "failure", 21);
    assert_eq!(
        gh.send("deployment_status", "same", body.clone())
            .await
            .unwrap(),
        202
    );
    assert_eq!(
        gh.send("deployment_status", "same", body).await.unwrap(),
        200
    );
    assert_eq!(
        send(
            "deployment_status",
            status("other/repo", "production", "success", 31)
        )
        .await,
        202
    );
    // A deployment without its commit and time, and a status without its deployment, are
    // counted as incomplete.
    assert_eq!(
        send("deployment", br#"{"deployment":{"id":1}}"#.to_vec()).await,
        202
    );
    assert_eq!(
        send(
            "deployment_status",
            br#"{"deployment_status":{"id":5,"state":"success"}}"#.to_vec()
        )
        .await,
        202
    );

    let row = |repo: &str, env: &str, team: &str, state: &str| {
        format!(
            "{{repo=\"{repo}\",environment=\"{env}\",team=\"{team}\",status=\"{state}\",redeployment=\"false\"}}"
        )
    };
    let want: BTreeMap<String, f64> = [
        (row("pay", "production", "Payments", "queued"), 1.0),
        (row("pay", "production", "Payments", "in_progress"), 1.0),
        (row("pay", "production", "Payments", "success"), 1.0),
        (row("pay", "staging", "Payments", "failure"), 1.0),
        (row("repo", "production", "Unknown", "success"), 1.0),
    ]
    .into();
    let got = app
        .series_when("github_deployments_total", |s| *s == want)
        .await;
    assert_eq!(got, want);
    let mut events = BTreeMap::new();
    for _ in 0..100 {
        events = series(&app.metrics(None).await, "devmetrics_dora_events_total");
        if events.get("{source=\"github\",outcome=\"incomplete\"}") == Some(&2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Production successes with no push known: counted, their chain incomplete.
    assert_eq!(
        events["{source=\"github\",outcome=\"applied\"}"], 3.0,
        "{events:?}"
    );
    assert_eq!(
        events["{source=\"github\",outcome=\"chain_incomplete\"}"], 2.0,
        "{events:?}"
    );
    assert_eq!(
        events["{source=\"github\",outcome=\"duplicate\"}"], 1.0,
        "{events:?}"
    );
    assert_eq!(
        events["{source=\"github\",outcome=\"incomplete\"}"], 2.0,
        "{events:?}"
    );
    let om = app
        .metrics(Some("application/openmetrics-text; version=1.0.0"))
        .await;
    assert!(om.contains("# TYPE github_deployments counter"), "{om}");
    assert_eq!(series(&om, "github_deployments_total"), want);
    app.running.stop().await;
}

/// GitHub's own example delivery reads as its status, with GitHub's time, not the arrival.
#[test]
fn the_real_deployment_status_example_is_read() {
    let Some(dir) = devmetrics::sim::research_dir("github-webhooks/deployment_status") else {
        return;
    };
    let body = std::fs::read(dir.join("payload.json")).unwrap();
    let o = devmetrics::sources::dora::deployments::observe(&body).unwrap();
    assert_eq!(o.status_id, 209916254);
    assert_eq!(o.deployment_id, 145988746);
    assert_eq!(o.state, "success");
    assert_eq!(o.environment, "production");
    assert_eq!(
        (o.repo.as_str(), o.repository.as_str()),
        ("Hello-World", "Codertocat/Hello-World")
    );
    assert_eq!(
        o.at,
        devmetrics::timestamp::parse_rfc3339("2019-05-15T15:20:55Z").unwrap()
    );
    // Our simulator's deliveries read the same way.
    let ours = deployment_status_payload(&DeploymentStatus {
        repo: "Codertocat/Hello-World".into(),
        environment: "production".into(),
        state: "success".into(),
        status_id: 209916254,
        deployment_id: 145988746,
        sha: o.sha.clone(),
        created_at: o.at,
    });
    assert_eq!(
        devmetrics::sources::dora::deployments::observe(&ours).unwrap(),
        o
    );
}
