//! dora-exporter: its README's command (`dora-exporter -config.file=config.yml`) with its own
//! config file and snapshot, through the real binary; its senders do not sign.

use super::*;
use devmetrics::sim::webhooks::{DeploymentStatus, deployment_status_payload};

fn tool() -> &'static Tool {
    devmetrics::compat::tool("dora-exporter").unwrap()
}

/// The project's `configs/config.yml.dist`, with the port and snapshot path of the test.
fn config(port: Option<u16>, snapshot: &Path) -> String {
    let server = port
        .map(|p| format!("server:\n  port: {p}\n"))
        .unwrap_or_default();
    format!(
        "teams:\n  - name: platform\n    github_repositories:\n      - mprokopov/dora-exporter\n    jira_projects:\n      - PLATFORM\n\
         \x20 - name: team1\n    github_repositories:\n      - org1/team1-repo\n    jira_projects:\n      - TEAM1\n\
         github:\n  owner: org\n  token: gh_token_here\n\
         {server}storage:\n  file:\n    path: {}\n",
        snapshot.display()
    )
}

/// The README's snapshot example, as the old exporter wrote it.
const SNAPSHOT: &str = r#"# HELP github_deployments_duration The last deployments duration
# TYPE github_deployments_duration gauge
github_deployments_duration{environment="production",repo="adminka-core",status="success",team="Platform"} 2677.657175116
# HELP github_deployments_total The amount of successful deployments.
# TYPE github_deployments_total counter
github_deployments_total{environment="production",repo="adminka-core",status="in_progress",team="Platform"} 2
github_deployments_total{environment="production",repo="adminka-core",status="success",team="Platform"} 2
# HELP jira_incidents The amount of incidents.
# TYPE jira_incidents counter
jira_incidents{project="PLATFORM",team="platform"} 3
# HELP jira_incidents_duration_sum The amount of incidents.
# TYPE jira_incidents_duration_sum gauge
jira_incidents_duration_sum{project="PLATFORM",team="platform"} 5400
"#;

fn start(dir: &Path, args: &[&str]) -> (Proc, PathBuf) {
    let bin = persona(dir, "dora-exporter");
    let log = dir.join("stderr.log");
    let child = std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("GITHUB_TOKEN", "gh_xxxxx")
        .env_remove("GITHUB_WEBHOOK_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), log)
}

#[tokio::test]
async fn dora_exporter_command_serves_its_endpoints_families_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let snapshot = dir.path().join("data/prometheus.prom");
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::fs::write(&snapshot, SNAPSHOT).unwrap();
    std::fs::write(dir.path().join("config.yml"), config(Some(port), &snapshot)).unwrap();
    let (_p, log) = start(dir.path(), &["-config.file=config.yml", "-log", "debug"]);
    let base = format!("http://127.0.0.1:{port}");
    answer_when_listening(&format!("{base}/metrics")).await;
    // Its senders do not sign.
    let c = reqwest::Client::new();
    let post = async |path: &str, event: Option<&str>, body: Vec<u8>| {
        let mut r = c
            .post(format!("{base}{path}"))
            .header("content-type", "application/json");
        if let Some(e) = event {
            r = r
                .header("x-github-event", e)
                .header("x-github-delivery", format!("d-{e}-{}", body.len()));
        }
        let r = r.body(body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let status = deployment_status_payload(&DeploymentStatus {
        repo: "mprokopov/dora-exporter".into(),
        environment: "production".into(),
        state: "success".into(),
        status_id: 77,
        deployment_id: 7,
        sha: "f95f852bd8fca8fcc58a9a2d6c842781e32a215e".into(),
        created_at: 1_773_050_400.0,
    });
    // The change was pushed an hour before it was deployed.
    let pushed = devmetrics::sim::webhooks::push_payload(
        "mprokopov/dora-exporter",
        &"0".repeat(40),
        "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        &[(
            "f95f852bd8fca8fcc58a9a2d6c842781e32a215e".into(),
            1_773_046_800.0,
        )],
    );
    assert_eq!(post("/api/github", Some("push"), pushed).await.0, 202);
    let (code, body) = post("/api/github", Some("deployment_status"), status).await;
    let want = &tool().endpoints[0].responses;
    assert_eq!(code, want[0].status);
    check_body(tool(), "/api/github", &want[0].body, &body);
    let (code, body) = post("/api/github", Some("issues"), b"{}".to_vec()).await;
    assert_eq!(code, want[1].status);
    check_body(tool(), "/api/github", &want[1].body, &body);
    let incident = devmetrics::sim::jira::payload(
        "jira:issue_updated",
        &devmetrics::sim::jira::Issue {
            key: "PLATFORM-9".into(),
            issue_type: "Incident".into(),
            priority: "High".into(),
            labels: Vec::new(),
            created: "2026-03-10T00:00:00.000+0000".into(),
            resolution: Some("2026-03-10T01:00:00.000+0000".into()),
            category: "done".into(),
        },
        1_773_104_400_000,
    );
    let (code, body) = post("/api/jira", None, incident).await;
    let want = &tool().endpoints[1].responses;
    assert_eq!(code, want[0].status);
    check_body(tool(), "/api/jira", &want[0].body, &body);

    let text = wait_for_families(&base, tool(), 20).await;
    let mut om = String::new();
    for _ in 0..100 {
        let t = get(&format!("{base}/metrics"), None).await.unwrap().1;
        om = get(&format!("{base}/metrics"), Some(OPENMETRICS))
            .await
            .unwrap()
            .1;
        if t.contains("jira_incidents{project=\"PLATFORM\",team=\"platform\"} 4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_exposition(tool(), &text, &om);
    check_get_endpoints(tool(), &base).await;
    let text = get(&format!("{base}/metrics"), None).await.unwrap().1;
    // The snapshot's counters continue (an empty redeployment label is Prometheus' absent
    // one, so the old series go on); new events add to them.
    for line in [
        "github_deployments_total{repo=\"adminka-core\",environment=\"production\",team=\"Platform\",status=\"success\",redeployment=\"\"} 2",
        "github_deployments_total{repo=\"adminka-core\",environment=\"production\",team=\"Platform\",status=\"in_progress\",redeployment=\"\"} 2",
        "github_deployments_total{repo=\"dora-exporter\",environment=\"production\",team=\"platform\",status=\"success\",redeployment=\"false\"} 1",
        "jira_incidents{project=\"PLATFORM\",team=\"platform\"} 4",
        "jira_incidents_duration_sum{project=\"PLATFORM\",team=\"platform\"} 9000",
        "github_deployments_duration{repo=\"adminka-core\",environment=\"production\",team=\"Platform\",status=\"success\",redeployment=\"\"} 2677.657175116",
        "github_deployments_duration{repo=\"dora-exporter\",environment=\"production\",team=\"platform\",status=\"success\",redeployment=\"false\"} 3600",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // State lives beside the snapshot, on the volume the old exporter used.
    assert!(dir.path().join("data/devmetrics.db").exists());
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.matches("/api/github accepts unsigned").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("/api/jira accepts unverified").count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn dora_exporter_listens_on_8090_by_default() {
    let _port = DEFAULT_PORTS.lock().await;
    if !port_free(tool().default_port) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yml"),
        config(None, &dir.path().join("dora-exporter.prom")),
    )
    .unwrap();
    // The default file, config.yml, in the working directory.
    let (_p, _) = start(dir.path(), &[]);
    let base = format!("http://127.0.0.1:{}", tool().default_port);
    let answer = answer_when_listening(&format!("{base}/metrics")).await;
    assert_eq!(answer.expect("listening on 8090").0, 200);
}
