//! Push sinks: each run and job once, through outages, and dead letters replayed by the CLI.

use super::*;

/// Both sinks receive the run → job → step hierarchy once per run attempt and job, with the
/// payloads' times and deterministic ids, even while they fail at first and while deliveries
/// are duplicated; their receivers decode the real wire formats.
#[tokio::test]
async fn sinks_get_each_run_and_job_once_and_retry_through_outages() {
    use devmetrics::exposition::otlp;
    use devmetrics::sim::sinks::{appinsights_receiver, otlp_receiver};
    use std::sync::atomic::Ordering;

    let (otlp_fake, spans) = otlp_receiver(1).await.unwrap();
    let (ai_fake, events) = appinsights_receiver(2).await.unwrap();
    // Both are down for their first requests.
    otlp_fake.faults.fail_next.store(3, Ordering::Relaxed);
    ai_fake.faults.fail_next.store(2, Ordering::Relaxed);
    let conn = format!(
        "InstrumentationKey=ikey;IngestionEndpoint={}/",
        ai_fake.base_url()
    );
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &otlp_fake.base_url(),
        ),
        ("DEVMETRICS_WEBHOOKS__SINKS__OTLP__SERVICE_NAME", "ci"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", &conn),
        ("DEVMETRICS_QUEUE__INITIAL_BACKOFF", "10ms"),
        ("DEVMETRICS_QUEUE__MAX_BACKOFF", "50ms"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(11);
    let jobs = g.run_plan(1_700_000_000.0, 2);
    let mut n = 0;
    for round in 0..2 {
        for j in &jobs {
            for action in ["queued", "in_progress", "completed"] {
                n += 1;
                let body = g.job_payload(j, action, round == 0);
                assert_eq!(
                    s.send("workflow_job", &format!("s-{n}"), body)
                        .await
                        .unwrap(),
                    202
                );
            }
        }
        n += 1;
        let body = g.run_payload(&jobs, "completed", round == 0);
        assert_eq!(
            s.send("workflow_run", &format!("s-{n}"), body)
                .await
                .unwrap(),
            202
        );
    }
    app.drained().await;
    let steps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let want_spans = 1 + jobs.len() + steps;
    for _ in 0..500 {
        let stats = app.state().queue.stats().await.unwrap();
        let done = |t: &str| {
            stats
                .iter()
                .find(|(name, _)| name == t)
                .is_some_and(|(_, s)| s.depth == 0 && s.published > 0)
        };
        if done("sink/otlp") && done("sink/appinsights") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = spans.spans.lock().clone();
    assert_eq!(spans.len(), want_spans, "{spans:#?}");
    let run_id = jobs[0].run_id;
    let tid = otlp::trace_id(run_id, 1).to_vec();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == tid && s.service_name == "ci")
    );
    let run = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert_eq!(run.span_id, otlp::run_span_id(run_id, 1).to_vec());
    for j in &jobs {
        let js = spans
            .iter()
            .find(|s| s.span_id == otlp::job_span_id(j.job_id).to_vec())
            .unwrap();
        assert_eq!(js.parent_span_id, run.span_id);
        assert_eq!(js.name, j.name);
        assert_eq!(js.start_unix_nano, (j.started_at * 1e9) as u64);
        assert_eq!(js.end_unix_nano, (j.completed_at * 1e9) as u64);
        let children = spans
            .iter()
            .filter(|s| s.parent_span_id == js.span_id)
            .count();
        assert_eq!(children, j.steps.len());
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids never collide");

    let events = events.events.lock().clone();
    let names = |n: &str| {
        events
            .iter()
            .filter(|e| e["data"]["baseData"]["name"] == n)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("WorkflowRun").len(), 1);
    assert_eq!(names("WorkflowJob").len(), jobs.len());
    assert_eq!(names("WorkflowStep").len(), steps);
    let job = names("WorkflowJob")
        .into_iter()
        .find(|e| {
            e["data"]["baseData"]["properties"]["job_id"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                == Some(jobs[0].job_id)
        })
        .unwrap();
    let d = &job["data"]["baseData"];
    assert_eq!(d["properties"]["job_name"], jobs[0].name.as_str());
    assert_eq!(
        d["properties"]["repository_full_name"],
        jobs[0].repo.as_str()
    );
    assert_eq!(d["properties"]["conclusion"], jobs[0].conclusion.as_str());
    assert_eq!(
        d["measurements"]["duration_seconds"].as_f64().unwrap(),
        jobs[0].completed_at - jobs[0].started_at
    );
    assert_eq!(job["iKey"], "ikey");
    app.stop().await;
}

/// OTLP over gRPC (h2c): the same spans reach a collector speaking the gRPC wire format.
#[tokio::test]
async fn otlp_grpc_sink_delivers_the_same_spans() {
    use devmetrics::sim::sinks::otlp_grpc_receiver;
    let (fake, got) = otlp_grpc_receiver(5).await.unwrap();
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &fake.base_url(),
        ),
        ("DEVMETRICS_WEBHOOKS__SINKS__OTLP__PROTOCOL", "grpc"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(8);
    let jobs = g.run_plan(1_700_000_000.0, 1);
    let body = g.job_payload(&jobs[0], "completed", true);
    assert_eq!(s.send("workflow_job", "grpc-1", body).await.unwrap(), 202);
    let body = g.run_payload(&jobs, "completed", true);
    assert_eq!(s.send("workflow_run", "grpc-2", body).await.unwrap(), 202);
    app.drained().await;
    let want = 2 + jobs[0].steps.len();
    for _ in 0..500 {
        if got.spans.lock().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spans = got.spans.lock().clone();
    assert_eq!(spans.len(), want);
    assert_eq!(*got.undecodable.lock(), 0);
    let job = spans.iter().find(|s| s.name == jobs[0].name).unwrap();
    assert_eq!(job.end_unix_nano, (jobs[0].completed_at * 1e9) as u64);
    app.stop().await;
}

/// A sink that refuses everything dead-letters its items (with one attempt allowed); the
/// `devmetrics queue` CLI, run as its own process beside the running service, lists them and
/// replays them once the sink is back, and each item then arrives exactly once.
#[tokio::test]
async fn dead_letters_are_listed_and_replayed_by_the_cli_while_the_service_runs() {
    use devmetrics::sim::sinks::otlp_receiver;
    use std::process::Command;
    use std::sync::atomic::Ordering;

    let (otlp_fake, received) = otlp_receiver(3).await.unwrap();
    otlp_fake
        .faults
        .fail_next
        .store(1_000_000, Ordering::Relaxed);
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &otlp_fake.base_url(),
        ),
        ("DEVMETRICS_QUEUE__MAX_ATTEMPTS", "1"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(5);
    let jobs = g.run_plan(1_700_000_000.0, 1);
    for (n, action) in ["queued", "in_progress", "completed"].iter().enumerate() {
        let body = g.job_payload(&jobs[0], action, true);
        assert_eq!(
            s.send("workflow_job", &format!("dl-{n}"), body)
                .await
                .unwrap(),
            202
        );
    }
    let body = g.run_payload(&jobs, "completed", true);
    assert_eq!(s.send("workflow_run", "dl-run", body).await.unwrap(), 202);
    let sink_stats = || async {
        let stats = app.state().queue.stats().await.unwrap();
        stats
            .into_iter()
            .find(|(t, _)| t == "sink/otlp")
            .map(|(_, s)| s)
            .unwrap_or_default()
    };
    for _ in 0..500 {
        if sink_stats().await.dead_letters == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink_stats().await.dead_letters, 2, "the job and the run");

    let db = app.state().config.storage.path.clone();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(args)
            .arg("--storage.path")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["queue", "dead-letters", "--topic", "sink/otlp"]);
    assert!(listed.contains("2 dead letters"), "{listed}");
    assert!(listed.contains("status"), "the reason is shown: {listed}");
    let id = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let shown = cli(&["queue", "show", &id]);
    assert!(shown.contains("event:      workflow_"), "{shown}");

    otlp_fake.faults.fail_next.store(0, Ordering::Relaxed);
    let replayed = cli(&["queue", "replay", "--topic", "sink/otlp"]);
    assert!(replayed.starts_with("2 dead letters queued"), "{replayed}");
    // Asking twice replays nothing twice.
    cli(&["queue", "replay", "--all"]);
    let steps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let want = 1 + jobs.len() + steps;
    for _ in 0..500 {
        let st = sink_stats().await;
        if received.spans.lock().len() >= want && st.depth == 0 && st.dead_letters == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.spans.lock().len(), want, "each item once");
    let st = sink_stats().await;
    assert_eq!((st.dead_letters, st.replayed, st.depth), (0, 2, 0));
    let listed = cli(&["queue", "dead-letters"]);
    assert!(listed.contains("0 dead letters"), "{listed}");
    app.stop().await;
}
