//! The binary's command line: exit codes and messages users see.

use std::process::Command;

fn devmetrics() -> Command {
    Command::new(env!("CARGO_BIN_EXE_devmetrics"))
}

fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = devmetrics();
    cmd.arg("check-config").arg("--config.file").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn unknown_key_exits_2_with_suggestion() {
    let (code, msg) = check("web:\n  listen_adress: [':1']\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"web.listen_adress\""), "{msg}");
    assert!(
        msg.contains("did you mean \"web.listen_addresses\""),
        "{msg}"
    );
}

#[test]
fn bad_duration_exits_2_naming_key_and_value() {
    let (code, msg) = check("queue:\n  max_backoff: 5x\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.contains("\"queue.max_backoff\"") && msg.contains("\"5x\""),
        "{msg}"
    );
    assert!(msg.contains("unknown unit"), "{msg}");
}

#[test]
fn idempotency_keys_must_outlive_a_github_run() {
    let (code, msg) = check("storage:\n  idempotency_retention: 1h\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.contains("\"storage.idempotency_retention\"") && msg.contains("35d"),
        "{msg}"
    );
    let (code, msg) = check("storage:\n  idempotency_retention: 35d\n", &[]);
    assert_eq!(code, 0, "{msg}");
}

#[test]
fn env_overrides_file_and_is_named_in_errors() {
    let (code, msg) = check(
        "log:\n  level: info\n",
        &[("DEVMETRICS_LOG__LEVEL", "loud")],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.contains("DEVMETRICS_LOG__LEVEL") && msg.contains("\"log.level\""),
        "{msg}"
    );
    let (code, msg) = check("", &[("DEVMETRICS_STORAGE__PTAH", "/x")]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("did you mean \"storage.path\""), "{msg}");
}

#[test]
fn flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let out = devmetrics()
        .args(["check-config", "--web.listen-address", "127.0.0.1:9999"])
        .env("DEVMETRICS_WEB__LISTEN_ADDRESSES", "bad")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:9999"));
}

#[test]
fn example_config_checks_clean_and_valid_config_exits_0() {
    let out = devmetrics().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let example = String::from_utf8(out.stdout).unwrap();
    let (code, msg) = check(&example, &[]);
    assert_eq!(code, 0, "{msg}");
}

#[test]
fn version_and_help() {
    let out = devmetrics().arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = devmetrics().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "demo", "check-config", "config", "version"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn relative_paths_resolve_from_the_file_but_the_default_from_the_working_directory() {
    let (code, msg) = check("log:\n  level: info\n", &[]);
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("storage ./data/devmetrics.db"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "storage:\n  path: state/x.db\n").unwrap();
    let out = devmetrics()
        .arg("check-config")
        .arg("--config.file")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&dir.path().join("state/x.db").display().to_string()),
        "{text}"
    );
}

#[test]
fn numeric_secret_from_env_is_text_and_never_echoed() {
    // A secret that looks like a number stays a string (and so loads).
    let (code, msg) = check("", &[("DEVMETRICS_WEBHOOKS__GITHUB__SECRET", "84629113")]);
    assert_eq!(code, 0, "{msg}");
    // A type error next to a value never repeats the value.
    let (code, msg) = check("queue:\n  max_attempts: 84629113x\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.contains("queue.max_attempts") && !msg.contains("84629113x"),
        "{msg}"
    );
}

#[test]
fn telemetry_path_may_not_shadow_built_in_routes() {
    for path in ["/healthz", "/webhooks/github", "/api/github"] {
        let (code, msg) = check(&format!("web:\n  telemetry_path: {path}\n"), &[]);
        assert_eq!(code, 2, "{path}: {msg}");
        assert!(msg.contains("web.telemetry_path"), "{msg}");
    }
}

/// The dead-letter commands read the SQLite queue; with the queue on RabbitMQ they refuse,
/// naming the key, instead of showing an empty SQLite queue.
#[test]
fn queue_commands_refuse_when_the_queue_is_on_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "queue:\n  backend: rabbitmq\n  rabbitmq: {url: \"amqp://u:s3cret@127.0.0.1:5672/%2f\"}\n",
    )
    .unwrap();
    let out = devmetrics()
        .args(["queue", "dead-letters", "--config.file"])
        .arg(&path)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains("queue.backend") && msg.contains("rabbitmq"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
}

/// A bad RabbitMQ URL names its key and never shows the password it may hold.
#[test]
fn a_bad_rabbitmq_url_names_the_key_and_hides_the_password() {
    let (code, msg) = check(
        "queue:\n  backend: rabbitmq\n  rabbitmq:\n    url: \"amqp//u:s3cret@host\"\n",
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.rabbitmq.url\""), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (code, msg) = check("queue:\n  backend: rabbitmq\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.rabbitmq.url\""), "{msg}");
}

/// `queue.backend: redis` shares `storage.redis`, or takes a URL of its own; without either
/// the error names `queue.redis.url`, and a bad URL names its key without showing it.
#[test]
fn the_redis_queue_names_its_url_key_and_hides_the_password() {
    let (code, msg) = check("queue:\n  backend: redis\n", &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.redis.url\""), "{msg}");
    let (code, msg) = check(
        "queue:\n  backend: redis\n  redis:\n    url: \"redis//u:s3cret@host\"\n",
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.redis.url\""), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (code, msg) = check(
        "storage:\n  backend: redis\n  redis: {url: \"redis://127.0.0.1:6379/0\"}\nqueue:\n  backend: redis\n  redis: {visibility_timeout: 10ms}\n",
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.redis.visibility_timeout\""), "{msg}");
    let (code, msg) = check(
        "storage:\n  backend: redis\n  redis: {url: \"redis://127.0.0.1:6379/0\"}\nqueue:\n  backend: redis\n",
        &[],
    );
    assert_eq!(code, 0, "one URL serves store and queue: {msg}");
}

/// `amqps://` is accepted, with a private CA from `queue.rabbitmq.tls.ca_file`; a CA file
/// that holds no certificate is refused naming its key.
#[test]
fn amqps_urls_and_a_ca_file_are_accepted_and_a_bad_ca_file_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["rabbit.internal".into()]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let yaml = |ca: &std::path::Path| {
        format!(
            "queue:\n  backend: rabbitmq\n  rabbitmq:\n    url: \"amqps://u:s3cret@rabbit.internal:5671/%2f\"\n    tls: {{ca_file: {}}}\n",
            ca.display()
        )
    };
    let (code, msg) = check(&yaml(&ca), &[]);
    assert_eq!(code, 0, "{msg}");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let (code, msg) = check(&yaml(&bad), &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.rabbitmq.tls.ca_file\""), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

/// The queue on Redis streams cannot share a connection that goes through Sentinel.
#[test]
fn redis_streams_refuse_to_share_a_sentinel_connection() {
    let (code, msg) = check(
        "storage:\n  backend: redis\n  redis:\n    url: redis://:s3cret@m/0\n    sentinel: {master_name: m, urls: [redis://127.0.0.1:26379]}\nqueue:\n  backend: redis\n",
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.backend\""), "{msg}");
    assert!(msg.contains("Sentinel"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

/// Sentinel settings are checked at start, each problem naming its key.
#[test]
fn sentinel_settings_name_the_key_at_fault() {
    let base =
        "storage:\n  backend: redis\n  redis:\n    url: redis://:s3cret@x/0\n    sentinel:\n";
    let (code, msg) = check(
        &format!("{base}      urls: [redis://127.0.0.1:26379]\n"),
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(
        msg.contains("\"storage.redis.sentinel.master_name\""),
        "{msg}"
    );
    let (code, msg) = check(&format!("{base}      master_name: m\n"), &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"storage.redis.sentinel.urls\""), "{msg}");
    let (code, msg) = check(
        &format!("{base}      master_name: m\n      urls: [\"nope://s3cret\"]\n"),
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"storage.redis.sentinel.urls[0]\""), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (code, msg) = check(
        &format!("{base}      master_name: m\n      urls: [redis://127.0.0.1:26379]\n"),
        &[],
    );
    assert_eq!(code, 0, "{msg}");
}

/// `storage.redis.tls.ca_file` is read at start: a file without a certificate, or a CA for
/// a connection that does not speak TLS, is refused naming the key and not the password.
#[test]
fn a_redis_ca_file_is_checked_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["redis.internal".into()]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let yaml = |url: &str, ca: &std::path::Path| {
        format!(
            "storage:\n  backend: redis\n  redis:\n    url: \"{url}\"\n    tls: {{ca_file: {}}}\nqueue:\n  backend: redis\n",
            ca.display()
        )
    };
    let (code, msg) = check(&yaml("rediss://:s3cret@redis.internal:6380/0", &ca), &[]);
    assert_eq!(code, 0, "{msg}");
    let (code, msg) = check(&yaml("rediss://:s3cret@redis.internal:6380/0", &bad), &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"storage.redis.tls.ca_file\""), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (code, msg) = check(&yaml("redis://:s3cret@redis.internal:6379/0", &ca), &[]);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"storage.redis.tls.ca_file\""), "{msg}");
    assert!(msg.contains("rediss://"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    // Through Sentinel, a TLS Sentinel alone is reason enough for the CA.
    let (code, msg) = check(
        &format!(
            "storage:\n  backend: redis\n  redis:\n    url: redis://:s3cret@x/0\n    tls: {{ca_file: {}}}\n    sentinel: {{master_name: m, urls: [\"rediss://127.0.0.1:26379\"]}}\n",
            ca.display()
        ),
        &[],
    );
    assert_eq!(code, 0, "{msg}");
    // The queue's own URL has its own CA; sharing the store's connection, it has none.
    let (code, msg) = check(
        &format!(
            "storage:\n  backend: redis\nqueue:\n  backend: redis\n  redis:\n    tls: {{ca_file: {}}}\n",
            ca.display()
        ),
        &[],
    );
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("\"queue.redis.tls.ca_file\""), "{msg}");
    let (code, msg) = check(
        &format!(
            "queue:\n  backend: redis\n  redis:\n    url: rediss://q.internal:6380/0\n    tls: {{ca_file: {}}}\n",
            ca.display()
        ),
        &[],
    );
    assert_eq!(code, 0, "{msg}");
}
