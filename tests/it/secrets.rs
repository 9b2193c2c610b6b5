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
