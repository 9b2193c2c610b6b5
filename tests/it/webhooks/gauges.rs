//! Event-driven gauges that cannot drift, and cardinality that stays bounded: members leave
//! exactly what they entered, expire when their ending is lost, never go below zero; the
//! series budget, repository filters and name normalisation hold the series count.

use super::*;
use devmetrics::store::Retention;

fn plans(g: &mut Generator, runs: usize) -> Vec<devmetrics::sim::webhooks::JobPlan> {
    (0..runs)
        .flat_map(|r| g.run_plan(1_700_000_000.0 + r as f64 * 100.0, 2))
        .collect()
}

fn gauges(app: &App) -> Vec<f64> {
    [
        "devmetrics_workflow_jobs_queued",
        "devmetrics_workflow_jobs_in_progress",
    ]
    .iter()
    .flat_map(|f| app.series(f, &[]))
    .map(|(_, v)| v.as_f64().unwrap())
    .collect()
}

#[tokio::test]
async fn a_lost_completed_delivery_leaves_no_gauge_above_zero_after_expiry() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(21);
    let jobs = plans(&mut g, 5);
    let mut n = 0;
    let mut send = async |body: Vec<u8>| {
        n += 1;
        assert_eq!(
            s.send("workflow_job", &format!("l-{n}"), body)
                .await
                .unwrap(),
            202
        );
    };
    for j in &jobs {
        send(g.job_payload(j, "queued", false)).await;
        send(g.job_payload(j, "in_progress", false)).await;
    }
    // Half the jobs finish; the other half's `completed` deliveries are lost.
    let (done, lost) = jobs.split_at(jobs.len() / 2);
    for j in done {
        send(g.job_payload(j, "completed", false)).await;
    }
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
    assert_eq!(
        app.sum("devmetrics_workflow_jobs_in_progress", &[]),
        lost.len() as f64
    );

    // GC with a zero member expiry is expiry after the configured time has passed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retention = Retention {
        keys: Duration::from_secs(40 * 86_400),
        members: Duration::ZERO,
    };
    app.state().store.gc(&retention).await.unwrap();
    let after = gauges(&app);
    assert!(after.iter().all(|v| *v == 0.0), "{after:?}");

    // The lost deliveries arriving after all count their jobs and move no gauge below zero.
    for j in lost {
        send(g.job_payload(j, "completed", false)).await;
    }
    app.drained().await;
    let after = gauges(&app);
    assert!(after.iter().all(|v| *v == 0.0), "{after:?}");
    assert_eq!(
        app.sum("devmetrics_workflow_jobs_total", &[]),
        jobs.len() as f64
    );
    app.stop().await;
}

#[tokio::test]
async fn leaving_takes_off_exactly_what_entering_put_on() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(22);
    let job = g.run_plan(1_700_000_000.0, 1).remove(0);
    // Queued and running under the old name and group; completed after the repository was
    // renamed (same repository id) and with another runner group in the payload.
    let mut renamed = job.clone();
    renamed.repo = format!("{}-renamed", job.repo);
    renamed.runner_group = "other-group".into();
    for (i, (plan, action)) in [
        (&job, "queued"),
        (&job, "in_progress"),
        (&renamed, "completed"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = g.job_payload(plan, action, false);
        assert_eq!(
            s.send("workflow_job", &format!("r-{i}"), body)
                .await
                .unwrap(),
            202
        );
    }
    app.drained().await;
    let after = gauges(&app);
    assert!(!after.is_empty());
    assert!(after.iter().all(|v| *v == 0.0), "{after:?}");
    assert!(
        app.series(
            "devmetrics_workflow_jobs_in_progress",
            &[("runner_group", "other-group")]
        )
        .is_empty(),
        "the leave created no series of its own"
    );
    assert_eq!(
        app.sum("devmetrics_workflow_jobs_total", &[("repo", &renamed.repo)]),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_late_in_progress_never_re_enters_a_job_cancelled_while_queued() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(23);
    let job = g.run_plan(1_700_000_000.0, 1).remove(0);
    let mut cancelled: serde_json::Value =
        serde_json::from_slice(&g.job_payload(&job, "completed", false)).unwrap();
    cancelled["workflow_job"]["runner_name"] = serde_json::Value::Null;
    cancelled["workflow_job"]["conclusion"] = "cancelled".into();
    let bodies = [
        g.job_payload(&job, "queued", false),
        serde_json::to_vec(&cancelled).unwrap(),
        g.job_payload(&job, "in_progress", false),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        assert_eq!(
            s.send("workflow_job", &format!("c-{i}"), body)
                .await
                .unwrap(),
            202
        );
        // In this order, one at a time.
        app.drained().await;
    }
    let after = gauges(&app);
    assert!(after.iter().all(|v| *v == 0.0), "{after:?}");
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_total",
            &[("conclusion", "cancelled")]
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn the_series_budget_drops_new_series_and_says_so_on_healthz() {
    let app = App::start(&[("DEVMETRICS_WEBHOOKS__GITHUB__WORKFLOWS__SERIES_BUDGET", "3")]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(24);
    let mut jobs = g.run_plan(1_700_000_000.0, 6);
    for (i, j) in jobs.iter_mut().enumerate() {
        j.name = format!("job-{i}");
        j.conclusion = "success".into();
    }
    for (i, j) in jobs.iter().enumerate() {
        let body = g.job_payload(j, "completed", false);
        assert_eq!(
            s.send("workflow_job", &format!("b-{i}"), body)
                .await
                .unwrap(),
            202
        );
        app.drained().await;
    }
    // The first three job names fit; the rest are dropped, each update counted.
    let series = app.series("devmetrics_workflow_jobs_total", &[]);
    assert_eq!(series.len(), 3, "{series:?}");
    let health: serde_json::Value = serde_json::from_str(&app.page("/healthz").await).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let b = &health["components"]["store"]["series_budgets_exceeded"];
    assert_eq!(b["devmetrics_workflow_jobs_total"]["limit"], 3, "{health}");
    assert_eq!(
        b["devmetrics_workflow_jobs_total"]["dropped"], 3,
        "{health}"
    );
    let metrics = app.page("/metrics").await;
    assert!(
        metrics.contains(
            "devmetrics_series_dropped_total{family=\"devmetrics_workflow_jobs_total\"} 3"
        ),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn repository_filters_answer_without_queuing() {
    let app = App::start(&[
        ("DEVMETRICS_WEBHOOKS__GITHUB__REPO_ALLOWLIST", "Acme/*"),
        ("DEVMETRICS_WEBHOOKS__GITHUB__REPO_EXCLUDE", "acme/secret-*"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(25);
    let job = g.run_plan(1_700_000_000.0, 1).remove(0);
    for (i, (repo, want)) in [
        ("acme/api", 202),
        ("ACME/web", 202),
        ("acme/secret-keys", 200),
        ("other/api", 200),
    ]
    .into_iter()
    .enumerate()
    {
        let mut j = job.clone();
        j.repo = repo.into();
        j.job_id += i as u64;
        let body = g.job_payload(&j, "completed", false);
        assert_eq!(
            s.send("workflow_job", &format!("f-{i}"), body)
                .await
                .unwrap(),
            want,
            "{repo}"
        );
    }
    app.drained().await;
    assert_eq!(app.stats().await.published, 2);
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 2.0);
    let metrics = app.page("/metrics").await;
    assert!(
        metrics.contains(
            "devmetrics_webhook_deliveries_total{source=\"github\",outcome=\"filtered\"} 2"
        ),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn normalised_names_fold_matrix_jobs_into_one_series() {
    let app = App::start(&[(
        "DEVMETRICS_WEBHOOKS__GITHUB__WORKFLOWS__NORMALIZE_NAMES",
        "true",
    )])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(26);
    let mut jobs = g.run_plan(1_700_000_000.0, 4);
    for (i, j) in jobs.iter_mut().enumerate() {
        j.name = format!("test (ubuntu-latest, {})", 18 + i);
        j.conclusion = "success".into();
        j.runner_group = "Default".into();
        j.labels = vec!["self-hosted".into(), format!("run-{}", 987_654_321 + i)];
    }
    for (i, j) in jobs.iter().enumerate() {
        let body = g.job_payload(j, "completed", false);
        assert_eq!(
            s.send("workflow_job", &format!("n-{i}"), body)
                .await
                .unwrap(),
            202
        );
    }
    app.drained().await;
    let series = app.series("devmetrics_workflow_jobs_total", &[]);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_total",
            &[("job", "test"), ("runner_labels", "self-hosted")]
        ),
        4.0
    );
    app.stop().await;
}
