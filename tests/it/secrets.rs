//! Secret hygiene: credentials given by file or environment never show up in logs (at debug
//! level, with failing upstreams), in `/metrics`, `/healthz`, the status page, or in errors.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const SL_SECRET: &str = "sl-secret-6f1d2c9a8b7e";
const GH_TOKEN: &str = "ghp_secrettoken0123456789abcdef";
const LABEL_SECRET: &str = "label-hmac-secret-55aa";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_clean(what: &str, text: &str) {
    for s in [SL_SECRET, GH_TOKEN, LABEL_SECRET] {
        assert!(!text.contains(s), "{what} contains a secret:\n{text}");
    }
}

#[test]
fn secrets_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{GH_TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("label"), LABEL_SECRET).unwrap();
    // Upstreams that refuse connections, so errors are produced and logged.
    let config = format!(
        "github:\n  api_base_url: http://127.0.0.1:1\n  orgs:\n    - org: acme\n      token_file: {}\n      scrape_interval: 1s\n  activity:\n    user_label_mode: hashed\n    user_label_secret_file: {}\nspacelift:\n  api_endpoint: http://127.0.0.1:1\n  api_key_id: key-id\n  interval: 1s\n",
        dir.path().join("token").display(),
        dir.path().join("label").display()
    );
    let cfg_path = dir.path().join("c.yaml");
    std::fs::write(&cfg_path, &config).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["serve", "--log.level", "debug", "--config.file"])
        .arg(&cfg_path)
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--storage.path")
        .arg(dir.path().join("d.db"))
        .env("DEVMETRICS_SPACELIFT__API_KEY_SECRET", SL_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pages = rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{base}/readyz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let both sources fail a couple of times.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut out = Vec::new();
        for p in ["/", "/metrics", "/healthz"] {
            let body = client
                .get(format!("{base}{p}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            out.push((p, body));
        }
        out
    });
    unsafe_kill(&mut child);
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("level=debug") || logs.contains("level=info"),
        "no logs captured: {logs}"
    );
    assert_clean("logs", &logs);
    for (p, body) in &pages {
        assert_clean(p, body);
    }
    // The sources did fail: the check above looked at real error paths.
    let health = &pages.iter().find(|(p, _)| *p == "/healthz").unwrap().1;
    assert!(health.contains("\"spacelift\""), "{health}");

    // An invalid config next to a secret (the spacelift section is last in the file): the error names the key, not the secret.
    std::fs::write(&cfg_path, format!("{config}  scrape_timeout: soon\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["check-config", "--config.file"])
        .arg(&cfg_path)
        .env("DEVMETRICS_SPACELIFT__API_KEY_SECRET", SL_SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spacelift.scrape_timeout"), "{text}");
    assert_clean("check-config", &text);
}

fn unsafe_kill(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A full run: every source working against its fake, every secret-bearing key configured
/// (each from a file, or as a value where that is the only way), debug logs, faults on the
/// way (a GitHub outage, revoked tokens on GitHub and Spacelift, a Backstage outage),
/// refused requests on every authenticated route, every page, and `doctor`. No configured
/// secret value appears in any log line, page, metric, error body or `doctor` line.
#[tokio::test]
async fn a_full_run_shows_no_configured_secret() {
    use devmetrics::sim::{backstage, sinks, spacelift::SpaceliftFake};
    use std::sync::atomic::Ordering;
    let secrets = [
        ("activity label", "activity-label-secret-9f8e7d"),
        ("copilot label", "copilot-label-secret-1a2b3c"),
        ("spacelift", devmetrics::sim::spacelift::KEY_SECRET),
        ("backstage", "backstage-token-77aa88bb"),
        ("jira", "jira-webhook-secret-3c4d5e"),
        ("jira url", "jira-url-token-6f7a8b"),
        ("deployments api", "deployments-api-token-9c0d1e"),
        ("webhook", "github-webhook-secret-2f3a4b"),
        ("app insights", "appinsights-ikey-5c6d7e8f"),
        ("push header", "push-api-key-0a1b2c3d"),
    ];
    let github = crate::faults::GithubRig::start(51).await;
    let spacelift = SpaceliftFake::start(52, 8).await.unwrap();
    spacelift.sim.gate_stacks(false);
    let catalog = backstage::start("", Some(secrets[3].1), &[("acme/repo-000", "group:a")])
        .await
        .unwrap();
    let (otlp, _) = sinks::otlp_receiver(53).await.unwrap();
    let (ai, _) = sinks::appinsights_receiver(54).await.unwrap();
    let (pushed, _) = sinks::otlp_metrics_receiver(55).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, value).unwrap();
        p.display().to_string()
    };
    let hook_port = crate::compat::free_port();
    let config = format!(
        "{github}\
         spacelift:\n  api_endpoint: {spacelift}\n  api_key_id: {key}\n  api_key_secret_file: {sl}\n  interval: 1s\n\
         dora:\n  teams: [{{name: Payments, github_repositories: [acme/repo-001], jira_projects: [PAY]}}]\n  \
         deployments_api: {{token_file: {deploy}}}\n  \
         catalog: {{mode: backstage, endpoint: '{catalog}', token_file: {bs}, refresh_interval: 1s}}\n  \
         jira: {{secret_file: {jira}, url_token_file: {jira_url}}}\n\
         webhooks:\n  listen_address: 127.0.0.1:{hook_port}\n  github:\n    secrets: [{{value_file: {hook}}}]\n  sinks:\n    otlp: {{endpoint: '{otlp}'}}\n    \
         appinsights: {{connection_string_file: {ai}}}\n\
         push:\n  otlp: {{endpoint: '{pushed}', interval: 1s, headers: {{x-api-key: {push}}}}}\n",
        github = github
            .config(dir.path())
            .replace(
                "user_label_mode: login",
                &format!("user_label_mode: hashed\n  user_label_secret_file: {}", file("copilot-label", secrets[1].1)),
            )
            .replace(
                "copilot:\n",
                &format!("  activity: {{user_label_mode: hashed, user_label_secret_file: {}}}\ncopilot:\n", file("activity-label", secrets[0].1)),
            ),
        spacelift = spacelift.base_url(),
        key = devmetrics::sim::spacelift::KEY_ID,
        sl = file("spacelift", secrets[2].1),
        deploy = file("deploy", secrets[6].1),
        catalog = catalog.endpoint,
        bs = file("backstage", secrets[3].1),
        jira = file("jira", secrets[4].1),
        jira_url = file("jira-url", secrets[5].1),
        hook = file("hook", secrets[7].1),
        otlp = otlp.base_url(),
        ai = file(
            "appinsights",
            &format!("InstrumentationKey={};IngestionEndpoint={}/", secrets[8].1, ai.base_url())
        ),
        pushed = pushed.base_url(),
        push = secrets[9].1,
    );
    // The App's private key is a secret too: any line of its base64 body.
    let key_lines: Vec<String> = devmetrics::sim::github::TEST_APP_KEY_PEM
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_string)
        .collect();
    assert!(!key_lines.is_empty());
    let service_dir = tempfile::tempdir().unwrap();
    let mut service = crate::faults::Service::start_logging(service_dir, &config, "debug").await;
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{hook_port}");
    let mut texts: Vec<(String, String)> = Vec::new();
    let keep = |what: String, r: reqwest::Response| async move {
        let status = r.status();
        (
            format!("{what} ({status})"),
            r.text().await.unwrap_or_default(),
        )
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Faults: errors get logged and shown, with whatever they carry.
    github.github.faults.fail_next.store(6, Ordering::Relaxed);
    github.sim.revoke_tokens();
    spacelift.sim.revoke_tokens();
    catalog.server.faults.fail_next.store(2, Ordering::Relaxed);
    // Refused requests on every authenticated route, and accepted ones.
    let sender =
        devmetrics::sim::webhooks::Sender::new(format!("{hook}/webhooks/github"), "wrong-secret");
    let mut g = devmetrics::sim::webhooks::Generator::new(5);
    let plan = g.run_plan(1_700_000_000.0, 1);
    let body = g.job_payload(&plan[0], "completed", false);
    assert_eq!(
        sender
            .send("workflow_job", "s-1", body.clone())
            .await
            .unwrap(),
        401
    );
    let sender =
        devmetrics::sim::webhooks::Sender::new(format!("{hook}/webhooks/github"), secrets[7].1);
    assert_eq!(sender.send("workflow_job", "s-2", body).await.unwrap(), 202);
    let r = http
        .post(format!("{hook}/webhooks/github"))
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "s-3")
        .header("x-hub-signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    texts.push(keep("bad signature".into(), r).await);
    for url in [
        format!("{hook}/webhooks/jira?token=wrong"),
        format!("{hook}/webhooks/jira"),
    ] {
        let r = http.post(&url).body("{}").send().await.unwrap();
        texts.push(keep(format!("jira {url}"), r).await);
    }
    let jira = devmetrics::sim::jira::Sender::new(format!("{hook}/webhooks/jira"), secrets[4].1);
    let _ = jira
        .send("j-1", b"{\"webhookEvent\":\"jira:issue_created\"}".to_vec())
        .await;
    for auth in ["Bearer wrong", ""] {
        let mut req = http
            .post(format!("{}/api/deployments", service.base))
            .body("{\"id\": \"d-1\"}");
        if !auth.is_empty() {
            req = req.header("authorization", auth);
        }
        let r = req.send().await.unwrap();
        texts.push(keep(format!("deployments API, {auth:?}"), r).await);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for p in [
        "/",
        "/metrics",
        "/healthz",
        "/readyz",
        "/livez",
        "/status/queue",
        "/status/ci",
        "/status/dora",
        "/status/copilot",
        "/nope",
    ] {
        let r = http
            .get(format!("{}{p}", service.base))
            .send()
            .await
            .unwrap();
        texts.push(keep(p.to_string(), r).await);
    }
    let r = http
        .get(format!("{}/metrics", service.base))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    texts.push(keep("/metrics (OpenMetrics)".into(), r).await);
    let doctor = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["doctor", "--config.file"])
        .arg(service.config_file())
        .arg("--storage.path")
        .arg(dir.path().join("doctor.db"))
        .output()
        .unwrap();
    let doctor_text = String::from_utf8_lossy(&doctor.stdout).to_string()
        + &String::from_utf8_lossy(&doctor.stderr);
    assert!(
        doctor_text.contains("spacelift"),
        "doctor said: {doctor_text}"
    );
    texts.push(("doctor".into(), doctor_text));
    service.alive();
    let logs = service.logs.lock().clone();
    assert!(
        logs.lines().count() > 10,
        "too few log lines to judge: {logs}"
    );
    texts.push(("logs".into(), logs));
    // What was read is the real thing: every source's data, and debug logs.
    let page = |p: &str| &texts.iter().find(|(w, _)| w.starts_with(p)).unwrap().1;
    for family in [
        "gh_activity_commits_24h",
        "spacelift_worker_pool",
        "devmetrics_copilot_",
        "dora_",
    ] {
        assert!(page("/metrics").contains(family), "no {family} in /metrics");
    }
    assert!(texts.last().unwrap().1.contains("level=debug"));
    for (what, text) in &texts {
        for (name, value) in &secrets {
            assert!(
                !text.contains(value),
                "{what} shows the {name} secret:\n{text}"
            );
        }
        for line in &key_lines {
            assert!(
                !text.contains(line.as_str()),
                "{what} shows the App private key"
            );
        }
    }
}
