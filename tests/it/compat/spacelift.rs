//! spacelift-promex: its README's commands through the real binary.

use super::*;
use devmetrics::sim::spacelift::{KEY_ID, KEY_SECRET, SpaceliftFake};

fn tool() -> &'static Tool {
    devmetrics::compat::tool("spacelift-promex").unwrap()
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
    for args in [&["serve", "--help"][..], &["help", "serve"][..]] {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
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
            // Where each lands.
            "→ spacelift.api_endpoint",
            "→ web.listen_addresses",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
    }
    let out = std::process::Command::new(&bin)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The same persona through the subcommand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["compat", "spacelift-promex", "--version"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spacelift-promex version "));
}

fn start(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SPACELIFT_PROMEX_LISTEN_ADDRESS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

/// The README's `spacelift-promex serve --listen-address … --api-endpoint … --api-key-id …
/// --api-key-secret …` (long and short flags) serves every documented family with its type
/// and labels in both formats, and `/health`, and never shows the secret.
#[tokio::test]
async fn spacelift_promex_serve_conforms_to_its_readme() {
    let fake = SpaceliftFake::start(42, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "spacelift-promex");
    for long in [true, false] {
        let listen = format!("127.0.0.1:{}", free_port());
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
        let _p = start(&bin, dir.path(), &args, &[]);
        let base = format!("http://{listen}");
        let text = wait_for_families(&base, tool(), 20).await;
        let (_, om) = get(&format!("{base}/metrics"), Some(OPENMETRICS))
            .await
            .unwrap();
        check_exposition(tool(), &text, &om);
        check_get_endpoints(tool(), &base).await;
        assert!(!text.contains(KEY_SECRET), "the secret is never shown");
    }
}

/// The README's Docker and Kubernetes way: only environment variables, and the default port.
#[tokio::test]
async fn spacelift_promex_takes_its_environment_and_default_port() {
    let _port = DEFAULT_PORTS.lock().await;
    if !port_free(tool().default_port) {
        return;
    }
    let fake = SpaceliftFake::start(43, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = persona(dir.path(), "spacelift-promex");
    let endpoint = fake.base_url();
    let _p = start(
        &bin,
        dir.path(),
        &["serve"],
        &[
            ("SPACELIFT_PROMEX_API_ENDPOINT", &endpoint),
            ("SPACELIFT_PROMEX_API_KEY_ID", KEY_ID),
            ("SPACELIFT_PROMEX_API_KEY_SECRET", KEY_SECRET),
        ],
    );
    let base = format!("http://127.0.0.1:{}", tool().default_port);
    let text = wait_for_families(&base, tool(), 20).await;
    assert!(text.contains("spacelift_worker_pool_workers{"), "{text}");
    check_get_endpoints(tool(), &base).await;
}
