//! The HTTP surface: probes, landing page, exporter-toolkit web config (basic auth, TLS),
//! header-read timeout.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

#[tokio::test]
async fn probes_landing_and_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let c = reqwest::Client::new();
    let get = |p: &str| c.get(format!("{}{p}", running.base)).send();
    assert_eq!(get("/livez").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let landing = get("/").await.unwrap().text().await.unwrap();
    assert!(landing.contains("devmetrics") && landing.contains(env!("CARGO_PKG_VERSION")));
    assert!(landing.contains("href=\"/metrics\""));
    let health: serde_json::Value = get("/healthz").await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"]["store"]["state"], "ok");
    running.stop().await;
}

#[tokio::test]
async fn custom_telemetry_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config_with(dir.path(), &[("web.telemetry_path", "/m".into())]);
    let running = support::start(cfg, "http").await;
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/m", running.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("devmetrics_build_info"));
    assert_eq!(
        c.get(format!("{}/metrics", running.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    running.stop().await;
}

struct Certs {
    ca_pem: String,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, written into `dir`.
fn write_certs(dir: &std::path::Path) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    Certs { ca_pem: ca.pem() }
}

#[tokio::test]
async fn basic_auth_and_tls_from_web_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = write_certs(dir.path());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    // Relative paths resolve from the web config's directory, as in exporter-toolkit.
    std::fs::write(
        dir.path().join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .unwrap();
    let cfg = support::config_with(
        dir.path(),
        &[(
            "web.config_file",
            dir.path().join("web.yml").display().to_string().into(),
        )],
    );
    let running = support::start(cfg, "https").await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/metrics", running.base);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let r = client
        .get(&url)
        .basic_auth("prometheus", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .basic_auth("nobody", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for _ in 0..2 {
        // The second success comes from the verification cache.
        let r = client
            .get(&url)
            .basic_auth("prometheus", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("devmetrics_build_info"));
    }
    // Plain HTTP to the TLS listener gets no answer.
    let plain = format!(
        "http://{}/metrics",
        running.base.trim_start_matches("https://")
    );
    assert!(
        reqwest::get(&plain)
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    running.stop().await;
}

#[tokio::test]
async fn invalid_web_config_fails_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yml"),
        "basic_auth_users:\n  admin: plaintext\n",
    )
    .unwrap();
    let cfg = support::config_with(
        dir.path(),
        &[(
            "web.config_file",
            dir.path().join("web.yml").display().to_string().into(),
        )],
    );
    let listeners = devmetrics::app::bind(&cfg).await.unwrap();
    let err = devmetrics::app::launch(cfg, listeners, Default::default())
        .await
        .err()
        .expect("plaintext password must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("basic_auth_users.admin") && msg.contains("bcrypt"),
        "{msg}"
    );
    assert!(
        !msg.contains("plaintext"),
        "the secret must not be echoed: {msg}"
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config_with(dir.path(), &[("web.read_header_timeout", "1s".into())]);
    let running = support::start(cfg, "http").await;
    let addr = running.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server must close (possibly after a 408) well before our own 5 s guard.
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "connection with incomplete headers was held open"
    );
    running.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_listening() {
    let dir = tempfile::tempdir().unwrap();
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let base = running.base.clone();
    running.stop().await;
    assert!(reqwest::get(format!("{base}/livez")).await.is_err());
}

#[tokio::test]
async fn series_of_unconfigured_sources_are_dropped_at_start() {
    use devmetrics::metrics::Labels;
    use devmetrics::metrics::Sample;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = crate::support::Backend::from_env()
            .open(dir.path(), &Default::default())
            .await
            .store;
        let fid = devmetrics::metrics::DEVMETRICS_SOURCE_UP;
        for scope in [
            "spacelift/usage",
            "github/acme/repo",
            "webhooks/runners/acme",
            "webhooks/recovery/acme/org",
            "events/other",
        ] {
            let s = Sample::number(fid, Labels::new(fid, &[scope]).unwrap(), 1.0);
            store.replace_scope(scope, vec![s]).await.unwrap();
        }
    }
    let running = support::start(support::config_with(dir.path(), &[]), "http").await;
    let names: Vec<String> = running
        .launched
        .as_ref()
        .unwrap()
        .state
        .store
        .snapshot()
        .scopes
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, vec!["events/other".to_string()]);
    running.stop().await;
}
