//! github-telemetry: its README's frontend command and environment, through the real binary;
//! the webhook's documented status codes and the Application Insights events' documented
//! names, properties and measurements.

use super::*;
use devmetrics::sim::sinks::appinsights_receiver;
use devmetrics::sim::webhooks::{Generator, Sender, signature};

const SECRET: &str = "telemetry-webhook-secret";

fn tool() -> &'static Tool {
    devmetrics::compat::tool("github-telemetry").unwrap()
}

fn status_for(tool: &Tool, path: &str, status: u16) -> &'static devmetrics::compat::Response {
    tool.endpoints
        .iter()
        .filter(|e| e.path == path)
        .flat_map(|e| e.responses.iter())
        .find(|r| r.status == status)
        .unwrap_or_else(|| panic!("{status} is not documented for {path}"))
}

#[tokio::test]
async fn github_telemetry_frontend_command_conforms_to_its_readme() {
    let (ai, received) = appinsights_receiver(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "github-telemetry");
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let conn = format!(
        "InstrumentationKey=ikey;IngestionEndpoint={}/",
        ai.base_url()
    );
    let port_s = port.to_string();
    // `python -m uvicorn src.frontend.app:app --host 0.0.0.0 --port 8080`, on loopback.
    let _p = Proc(
        std::process::Command::new(bin)
            .args([
                "-m",
                "uvicorn",
                "src.frontend.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                &port_s,
            ])
            .current_dir(dir.path())
            .env("AZURE_STORAGE_ACCOUNT_NAME", "your-account-name")
            .env("GITHUB_WEBHOOK_SECRET", SECRET)
            .env("APPLICATIONINSIGHTS_CONNECTION_STRING", &conn)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    answer_when_listening(&format!("{base}/health")).await;
    check_get_endpoints(tool(), &base).await;

    let url = format!("{base}/webhook");
    let sender = Sender::new(url.clone(), SECRET);
    let mut g = Generator::new(9);
    let jobs = g.run_plan(1_700_000_000.0, 2);
    let client = reqwest::Client::new();
    let post = async |event: &str, body: Vec<u8>, sig: String| {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("d-{}", body.len()))
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // 202: queued.
    for (n, j) in jobs.iter().enumerate() {
        let body = g.job_payload(j, "completed", true);
        assert_eq!(
            sender
                .send("workflow_job", &format!("job-{n}"), body)
                .await
                .unwrap(),
            202
        );
    }
    let body = g.run_payload(&jobs, "completed", true);
    let (status, text) = post("workflow_run", body.clone(), signature(SECRET, &body)).await;
    assert_eq!(status, 202);
    check_body(
        tool(),
        "/webhook",
        &status_for(tool(), "/webhook", 202).body,
        &text,
    );
    // 200: an event type that is not processed.
    let body = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let (status, text) = post("star", body.clone(), signature(SECRET, &body)).await;
    assert_eq!(status, 200);
    check_body(
        tool(),
        "/webhook",
        &status_for(tool(), "/webhook", 200).body,
        &text,
    );
    // 401: a wrong signature.
    let (status, _) = post(
        "workflow_run",
        body.clone(),
        signature("not-the-secret", &body),
    )
    .await;
    assert_eq!(status, status_for(tool(), "/webhook", 401).status);
    // 400: signed, but not JSON.
    let body = b"not json".to_vec();
    let (status, _) = post("workflow_run", body.clone(), signature(SECRET, &body)).await;
    assert_eq!(status, status_for(tool(), "/webhook", 400).status);

    // The events, with the README's names, properties and measurements.
    let steps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let mut events = Vec::new();
    for _ in 0..200 {
        events = received.events.lock().clone();
        if events.len() >= 1 + jobs.len() + steps {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for want in tool().events {
        let of_kind: Vec<&serde_json::Value> = events
            .iter()
            .map(|e| &e["data"]["baseData"])
            .filter(|d| d["name"] == want.name)
            .collect();
        assert!(
            !of_kind.is_empty(),
            "no {} event among {events:#?}",
            want.name
        );
        for d in of_kind {
            for p in want.properties {
                assert!(
                    d["properties"][p].is_string(),
                    "{}: property {p} missing: {d}",
                    want.name
                );
            }
            for m in want.measurements {
                assert!(
                    d["measurements"][m].is_number(),
                    "{}: measurement {m} missing: {d}",
                    want.name
                );
            }
            assert_eq!(
                d["properties"]["workflow_run_id"],
                jobs[0].run_id.to_string()
            );
        }
    }
    let jobs_seen: BTreeSet<String> = events
        .iter()
        .map(|e| &e["data"]["baseData"])
        .filter(|d| d["name"] == "WorkflowJob")
        .map(|d| d["properties"]["job_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        jobs_seen,
        jobs.iter().map(|j| j.job_id.to_string()).collect()
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.matches("AZURE_STORAGE_ACCOUNT_NAME").count(),
        1,
        "one warning:\n{log}"
    );
    assert!(!log.contains(SECRET));
}

/// The Docker way: no arguments, `PORT` unset, so the tool's port 8080.
#[tokio::test]
async fn github_telemetry_listens_on_8080_by_default() {
    let _port = DEFAULT_PORTS.lock().await;
    if !port_free(tool().default_port) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "github-telemetry");
    let _p = Proc(
        std::process::Command::new(bin)
            .current_dir(dir.path())
            .env("GITHUB_WEBHOOK_SECRET", SECRET)
            .env_remove("PORT")
            .env_remove("HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{}", tool().default_port);
    let answer = answer_when_listening(&format!("{base}/health")).await;
    let (status, body) = answer.expect("listening on 8080");
    assert_eq!(status, 200);
    check_body(
        tool(),
        "/health",
        &tool().endpoints[0].responses[0].body,
        &body,
    );
}
