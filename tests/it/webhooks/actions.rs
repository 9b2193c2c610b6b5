//! The Actions API side: runner inventory and missed-delivery recovery.

use super::*;

/// Deliveries GitHub failed to make (the service was down) are found in the hook's delivery
/// log, redelivered once each, and then counted exactly once; recovered ones are reported.
#[tokio::test]
async fn missed_deliveries_are_redelivered_once_and_counted_once() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::github::actions::{HookTarget, Recovery};
    use std::sync::atomic::Ordering;

    let hooks = HooksSim::new();
    *hooks.pat.lock() = Some(ACME_TOKEN.into());
    let fake = FakeServer::start("github", hooks.router(), Faults::new(3))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    hooks.set_target(Sender::new(app.url.clone(), SECRET));
    let mut g = Generator::new(21);
    let now = devmetrics::clock::now_unix();
    // 150 deliveries over the last hour (two pages of the log); every fifth failed.
    let n = 150;
    for i in 0..n {
        let at = now - 3600.0 + i as f64 * 20.0;
        let reachable = i % 5 != 0;
        hooks
            .deliver(
                "workflow_job",
                &format!("guid-{i}"),
                job_body(&mut g),
                reachable,
                at,
            )
            .await;
    }
    // One failed delivery is too recent to touch (GitHub may be retrying it itself).
    hooks
        .deliver("workflow_job", "guid-fresh", job_body(&mut g), false, now)
        .await;
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 120.0);

    let rec = Recovery::new(
        acme_client(&app, &fake.base_url()),
        HookTarget::Org(12345),
        app.state().store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(3 * 3600),
        Default::default(),
    );
    // Failed in the window before this cycle: 30 old ones and the fresh one.
    assert_eq!(rec.run_once().await.unwrap(), 31);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 30);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 30);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 150.0);

    // The next cycle sees them delivered: recovered, not asked again.
    assert_eq!(rec.run_once().await.unwrap(), 1);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 30);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 30);
    assert_eq!(rec.run_once().await.unwrap(), 1);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 30);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 30);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 150.0);
    app.stop().await;
}

/// The runner inventory: online/busy/offline per group and labels, from the API.
#[tokio::test]
async fn runner_inventory_counts_runners_by_group_labels_and_state() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::Poller;
    use devmetrics::sources::github::actions::Runners;
    use serde_json::json;

    let hooks = HooksSim::new();
    *hooks.pat.lock() = Some(ACME_TOKEN.into());
    let label = |n: &str| json!({"id": 1, "name": n, "type": "read-only"});
    *hooks.runner_groups.lock() = vec![
        json!({"id": 1, "name": "Default"}),
        json!({"id": 2, "name": "gpu"}),
    ];
    *hooks.runners.lock() = vec![
        json!({"id": 1, "name": "a", "os": "linux", "status": "online", "busy": true, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 2, "name": "b", "os": "linux", "status": "online", "busy": false, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 3, "name": "c", "os": "linux", "status": "offline", "busy": false, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 4, "name": "d", "os": "linux", "status": "online", "busy": true, "runner_group_id": 2,
               "labels": [label("self-hosted"), label("gpu")]}),
    ];
    let fake = FakeServer::start("github", hooks.router(), Faults::new(4))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    let poller = Runners::new(
        acme_client(&app, &fake.base_url()),
        vec!["acme/api".into()],
        Duration::from_secs(60),
        8,
        false,
    );
    let mut results = poller.poll().await;
    let samples = results.remove(0).result.unwrap();
    let got: BTreeMap<String, f64> = samples
        .iter()
        .map(|s| (s.labels.as_str().to_string(), s.value.as_f64().unwrap()))
        .collect();
    let key = |repo: &str, g: &str, l: &str, st: &str| {
        format!(
            "org=\"acme\",repo=\"{repo}\",runner_group=\"{g}\",runner_labels=\"{l}\",state=\"{st}\""
        )
    };
    // The fake serves the same list for the repo: counted apart under repo="acme/api".
    let want: BTreeMap<String, f64> = [
        (key("", "Default", "linux,self-hosted,x64", "busy"), 1.0),
        (key("", "Default", "linux,self-hosted,x64", "idle"), 1.0),
        (key("", "Default", "linux,self-hosted,x64", "offline"), 1.0),
        (key("", "gpu", "gpu,self-hosted", "busy"), 1.0),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "busy"),
            1.0,
        ),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "idle"),
            1.0,
        ),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "offline"),
            1.0,
        ),
        (key("acme/api", "gpu", "gpu,self-hosted", "busy"), 1.0),
    ]
    .into();
    assert_eq!(got, want);
    app.stop().await;
}

/// The GitHub App's own webhook: its delivery log and redeliveries, with the App's JWT.
#[tokio::test]
async fn app_hook_deliveries_are_recovered_with_the_app_jwt() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::github::actions::{HookTarget, Recovery};
    use std::sync::atomic::Ordering;

    let hooks = HooksSim::new();
    let fake = FakeServer::start("github", hooks.router(), Faults::new(6))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    hooks.set_target(Sender::new(app.url.clone(), SECRET));
    let mut g = Generator::new(31);
    let now = devmetrics::clock::now_unix();
    for i in 0..10 {
        let at = now - 600.0 + i as f64;
        hooks
            .deliver(
                "workflow_job",
                &format!("app-{i}"),
                job_body(&mut g),
                i % 3 != 0,
                at,
            )
            .await;
    }
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 6.0);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
    std::fs::write(
        &file,
        format!(
            "github:\n  orgs:\n    - org: acme\n      app_id: 4242\n      installation_id: 777\n      private_key_path: {}\n      api_base_url: {}\n",
            key.display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let cfg =
        devmetrics::config::load(Some(&file), &Default::default(), &Default::default()).unwrap();
    let gh = cfg.github.unwrap();
    let client = std::sync::Arc::new(
        devmetrics::sources::github::client::Client::new(
            &gh,
            &gh.orgs[0],
            app.state().store.clone(),
            app.state().telemetry.clone(),
            &Default::default(),
            CancellationToken::new(),
        )
        .unwrap(),
    );
    let rec = Recovery::new(
        client,
        HookTarget::App,
        app.state().store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(3600),
        Default::default(),
    );
    assert_eq!(rec.run_once().await.unwrap(), 4);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 4);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 10.0);
    assert_eq!(rec.run_once().await.unwrap(), 0);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 4);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 4);
    app.stop().await;
}

/// A redelivery that fails too (the service could not take it) is asked for again on a later
/// cycle, at most three times per delivery, and counts once when it finally lands.
#[tokio::test]
async fn a_redelivery_that_fails_too_is_asked_again_boundedly() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::github::actions::{HookTarget, Recovery};
    use std::sync::atomic::Ordering;

    let hooks = HooksSim::new();
    *hooks.pat.lock() = Some(ACME_TOKEN.into());
    let fake = FakeServer::start("github", hooks.router(), Faults::new(4))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    // Redeliveries fail as long as the fake signs with the wrong secret.
    let refused = || Sender::new(app.url.clone(), "not-the-secret");
    hooks.set_target(refused());
    let mut g = Generator::new(31);
    let now = devmetrics::clock::now_unix();
    hooks
        .deliver(
            "workflow_job",
            "guid-a",
            job_body(&mut g),
            false,
            now - 3600.0,
        )
        .await;
    let rec = Recovery::new(
        acme_client(&app, &fake.base_url()),
        HookTarget::Org(12345),
        app.state().store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(3 * 3600),
        Default::default(),
    );
    // Each failed attempt is made to look a minute old, past the grace GitHub's own retries get.
    let age = || {
        for a in hooks.attempts.lock().iter_mut() {
            a.delivered_at -= 60.0;
        }
    };
    for ask in 1..=2 {
        assert_eq!(rec.run_once().await.unwrap(), 1);
        assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), ask);
        age();
    }
    hooks.set_target(Sender::new(app.url.clone(), SECRET));
    assert_eq!(rec.run_once().await.unwrap(), 1);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 3);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 1.0);
    assert_eq!(rec.run_once().await.unwrap(), 0);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 1);

    // One that keeps failing is asked three times, then left alone.
    hooks.set_target(refused());
    hooks
        .deliver(
            "workflow_job",
            "guid-b",
            job_body(&mut g),
            false,
            now - 3600.0,
        )
        .await;
    for _ in 0..5 {
        assert_eq!(rec.run_once().await.unwrap(), 1);
        age();
    }
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 3 + 3);
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 1.0);
    app.stop().await;
}
