//! Workflow deliveries in any order and duplicated count exactly once, against ground truth.

use super::*;

#[tokio::test]
async fn scenario_replays_every_workflow_example_in_any_order() {
    let Some(dir) = shared("github-webhooks") else {
        return;
    };
    let ex = examples(&dir);
    assert_eq!(ex.len(), 11);
    // Files sorted by name: completions come before in_progress and queued.
    let app = App::start(&[]).await;
    let order: Vec<usize> = (0..ex.len()).collect();
    replay(&app, &ex, &order, 0).await;
    assert_order_independent(&app);
    let hello = ("repo", "Codertocat/Hello-World");
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_total",
            &[
                hello,
                ("conclusion", "failure"),
                ("job", "linters"),
                ("workflow", "CodeQL")
            ]
        ),
        1.0
    );
    assert_eq!(
        app.hist("devmetrics_workflow_job_queue_duration_seconds", &[hello]),
        (1, 60.0)
    );
    app.stop().await;

    for seed in 1..=4u64 {
        let app = App::start(&[]).await;
        let mut order: Vec<usize> = (0..ex.len()).collect();
        use rand::seq::SliceRandom;
        order.shuffle(&mut devmetrics::sim::rng(seed));
        let reversed: Vec<usize> = order.iter().rev().copied().collect();
        replay(&app, &ex, &order, 1).await;
        replay(&app, &ex, &reversed, 2).await;
        assert_order_independent(&app);
        app.stop().await;
    }
}

#[tokio::test]
async fn generated_activity_matches_the_senders_ground_truth() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(9);
    let mut n = 0;
    for r in 0..20 {
        let jobs = g.run_plan(1_700_000_000.0 + r as f64 * 100.0, 1 + r % 3);
        let mut bodies = Vec::new();
        // Completed first, then the stale in_progress and queued: nothing may resurrect.
        for action in ["completed", "in_progress", "queued"] {
            for j in &jobs {
                bodies.push(("workflow_job", g.job_payload(j, action, true)));
            }
        }
        bodies.push(("workflow_run", g.run_payload(&jobs, "completed", true)));
        for (event, body) in bodies {
            n += 1;
            assert_eq!(s.send(event, &format!("g-{n}"), body).await.unwrap(), 202);
        }
    }
    app.drained().await;
    let t = &g.truth;
    for (c, want) in &t.jobs_by_conclusion {
        assert_eq!(
            app.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]),
            *want as f64
        );
    }
    let (jobs, secs) = app.hist("devmetrics_workflow_job_duration_seconds", &[]);
    assert_eq!(jobs, t.jobs_by_conclusion.values().sum::<u64>());
    assert!((secs - t.job_seconds).abs() < 1e-6);
    let (_, q) = app.hist("devmetrics_workflow_job_queue_duration_seconds", &[]);
    assert!((q - t.queue_seconds).abs() < 1e-6);
    let (runs, rs) = app.hist("devmetrics_workflow_run_duration_seconds", &[]);
    assert_eq!(runs, t.runs_by_conclusion.values().sum::<u64>());
    assert!((rs - t.run_seconds).abs() < 1e-6);
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
    assert_eq!(app.sum("devmetrics_workflow_jobs_in_progress", &[]), 0.0);
    app.stop().await;
}
