//! The binary started under a replaced tool's name speaks that tool's command line: its
//! README's own commands, verbatim apart from the addresses, through the real binary.

use std::time::Duration;

use devmetrics::sim::spacelift::{KEY_ID, KEY_SECRET, SpaceliftFake};

/// A link named `name` to the devmetrics binary, in `dir`.
fn persona(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devmetrics"), &link).unwrap();
    link
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn spacelift_promex_prints_its_version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "spacelift-promex");
    for args in [&["--version"][..], &["-v"][..]] {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("spacelift-promex version "), "{text}");
    }
    let out = std::process::Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--api-endpoint",
        "--api-key-id",
        "--api-key-secret",
        "--listen-address",
        "--scrape-timeout",
        "--is-development",
        "SPACELIFT_PROMEX_API_ENDPOINT",
        ":9953",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // The same persona through the subcommand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["compat", "spacelift-promex", "--version"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spacelift-promex version "));
}

/// The README's `spacelift-promex serve --listen-address … --api-endpoint … --api-key-id …
/// --api-key-secret …` serves its metrics and its `/health`, with short flags too.
#[tokio::test]
async fn spacelift_promex_serve_serves_its_metrics_and_health() {
    let fake = SpaceliftFake::start(42, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "spacelift-promex");
    for long in [true, false] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let endpoint = fake.base_url();
        let args: Vec<&str> = if long {
            vec![
                "serve",
                "--listen-address",
                &listen,
                "--api-endpoint",
                &endpoint,
                "--api-key-id",
                KEY_ID,
                "--api-key-secret",
                KEY_SECRET,
            ]
        } else {
            vec![
                "serve", "-l", &listen, "-e", &endpoint, "-k", KEY_ID, "-s", KEY_SECRET, "-t", "5s",
            ]
        };
        let mut child = std::process::Command::new(&bin)
            .args(&args)
            .current_dir(dir.path())
            .env_remove("SPACELIFT_PROMEX_LISTEN_ADDRESS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let mut body = String::new();
        for _ in 0..100 {
            if let Ok(r) = client.get(format!("http://{listen}/metrics")).send().await {
                body = r.text().await.unwrap_or_default();
                if body.contains("spacelift_public_worker_pool_runs_pending") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let health = client
            .get(format!("http://{listen}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let health = health.text().await.unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            body.contains("spacelift_public_worker_pool_runs_pending"),
            "{body}"
        );
        assert!(body.contains("spacelift_worker_pool_workers{"), "{body}");
        assert!(!body.contains(KEY_SECRET), "the secret is never shown");
        assert_eq!(health, devmetrics::sources::spacelift::HEALTH_BODY);
    }
}
