//! Hostile HTTP against the listeners: connections that never speak, header and body
//! slowloris, huge headers, huge and endless bodies, connection floods past the cap, wrong
//! methods and path tricks. Each is cut off within its configured limit, nothing answers 5xx,
//! and a normal scrape still succeeds meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

async fn app(extra: &[(&str, serde_yaml::Value)]) -> (support::Running, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut sections: Vec<(&str, serde_yaml::Value)> = vec![
        ("web.read_header_timeout", "1s".into()),
        ("web.request_timeout", "2s".into()),
        ("web.max_request_body_bytes", 65536.into()),
        (
            "webhooks",
            serde_yaml::from_str("{github: {secrets: [{value: hostile-secret}]}}").unwrap(),
        ),
    ];
    sections.extend(extra.iter().cloned());
    let running = support::start(support::config_with(dir.path(), &sections), "http").await;
    std::mem::forget(dir);
    let addr = running.base.trim_start_matches("http://").to_string();
    (running, addr)
}

/// Reads until the server closes or `limit` passes; the bytes and how long it took.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    (buf, r.is_ok().then(|| started.elapsed()))
}

async fn scrape_ok(base: &str) {
    let r = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("a scrape during the attack");
    assert_eq!(r.status(), 200);
}

/// Declares a 100 MB webhook body and sends none of it: the status of the answer.
async fn declare_a_huge_body(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: big-1\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    status(&buf[..n])
}

fn status(buf: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn silent_connections_and_slowloris_are_cut_off() {
    let (running, addr) = app(&[]).await;
    // 500 connections that never send a byte: closed after read_header_timeout.
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    scrape_ok(&running.base).await;
    for s in idle.iter_mut().take(20) {
        let (_, closed) = until_closed(s, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a silent connection was held open");
    }
    // Headers trickled a byte at a time: cut at read_header_timeout.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let (_, closed) = until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(
        cut || closed.is_some(),
        "trickled headers were accepted past the timeout"
    );
    // A body trickled after complete headers: cut by request_timeout.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: slow-1\r\nContent-Length: 60000\r\n\r\n{")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        buf
    });
    let answer = tokio::time::timeout(Duration::from_secs(12), writer)
        .await
        .expect("the slow body was cut off")
        .unwrap();
    if let Some(code) = status(&answer) {
        assert!((400..500).contains(&code), "slow body answered {code}");
    }
    scrape_ok(&running.base).await;
    running.stop().await;
}

#[tokio::test]
async fn huge_headers_and_bodies_are_refused_without_reading_them() {
    let (running, addr) = app(&[]).await;
    // 200 KB of headers: 431, never a 5xx.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let big = "a".repeat(200 * 1024);
    let _ = s
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let (buf, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status(&buf), Some(431), "{}", String::from_utf8_lossy(&buf));
    // A declared body past web.max_request_body_bytes: 413 before it is sent.
    assert_eq!(declare_a_huge_body(&addr).await, Some(413));
    // An endless chunked body: refused once past the limit, the connection closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: endless-1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 8192;
        if sent > 64 * 1024 * 1024 {
            break;
        }
    }
    assert!(
        sent < 8 * 1024 * 1024,
        "the server read {sent} bytes of an endless body"
    );
    scrape_ok(&running.base).await;
    running.stop().await;
}

#[tokio::test]
async fn a_flood_past_max_connections_is_closed_and_service_resumes() {
    let (running, addr) = app(&[("web.max_connections", 50.into())]).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Half a request line: each holds its slot until read_header_timeout.
        s.write_all(b"GET /metr").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (buf, closed) = until_closed(&mut extra, Duration::from_secs(1)).await;
    assert!(
        closed.is_some() && buf.is_empty(),
        "a connection past the cap was served"
    );
    // The held ones time out; then the listener serves again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    scrape_ok(&running.base).await;
    drop(held);
    running.stop().await;
}

#[tokio::test]
async fn wrong_methods_types_and_paths_get_4xx() {
    let (running, _) = app(&[]).await;
    let c = reqwest::Client::new();
    let base = &running.base;
    let cases: Vec<(reqwest::Method, String, Option<&str>, u16)> = vec![
        (
            reqwest::Method::DELETE,
            format!("{base}/metrics"),
            None,
            405,
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/webhooks/github"),
            None,
            405,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/webhooks/github"),
            None,
            405,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/../../etc/passwd"),
            None,
            404,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/%2e%2e/%2e%2e/etc/passwd"),
            None,
            404,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/metrics/../healthz/../../x"),
            None,
            404,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/status/%00"),
            None,
            404,
        ),
        // Unsigned: refused before anything is read into a payload.
        (
            reqwest::Method::POST,
            format!("{base}/webhooks/github"),
            Some("text/plain"),
            401,
        ),
        // Signed but not JSON.
        (
            reqwest::Method::POST,
            format!("{base}/webhooks/github"),
            Some("signed"),
            400,
        ),
    ];
    for (method, url, content_type, want) in cases {
        let mut r = c.request(method.clone(), &url);
        if let Some(t) = content_type {
            r = r
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", format!("t-{t}"))
                .body("not json");
            r = if t == "signed" {
                r.header("content-type", "application/json").header(
                    "x-hub-signature-256",
                    devmetrics::sim::webhooks::signature("hostile-secret", b"not json"),
                )
            } else {
                r.header("content-type", t)
            };
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(code == want, "{method} {url}: {code}");
        assert!(!body.contains("root:"), "{url} leaked a file");
    }
    scrape_ok(base).await;
    running.stop().await;
}

/// HTTP/2 (cleartext, prior knowledge) floods: rapid reset (streams opened and cancelled at
/// once, CVE-2023-44487) and streams opened and never finished. The flooding connection is
/// cut or held to its stream limit, and other clients are served throughout.
#[tokio::test]
async fn http2_floods_are_contained() {
    let (running, addr) = app(&[]).await;

    // Rapid reset: 5,000 streams, each cancelled as soon as it is sent.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0u32;
    for _ in 0..5_000 {
        let Ok(c) = client.clone().ready().await else {
            break;
        };
        client = c;
        let req = axum::http::Request::get(format!("http://{addr}/metrics"))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = client.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent.is_multiple_of(500) {
            scrape_ok(&running.base).await;
        }
    }
    drop(client);
    let closed = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the flooding connection ends");
    eprintln!("rapid reset: {sent} streams sent; connection ended with {closed:?}");
    assert!(sent < 5_000, "the server let {sent} reset streams through");
    scrape_ok(&running.base).await;

    // Streams opened and never finished: the server advertises its stream limit, and other
    // clients are served while a thousand wait behind it.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Driven until the server's SETTINGS arrive (it never completes while the client lives).
    let _ = tokio::time::timeout(Duration::from_millis(500), &mut conn).await;
    assert_eq!(conn.max_concurrent_send_streams(), 100);
    let conn = tokio::spawn(conn);
    let mut open = Vec::new();
    while open.len() < 1_000 {
        let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(200), client.clone().ready()).await
        else {
            break;
        };
        client = c;
        let req = axum::http::Request::post(format!("http://{addr}/webhooks/github"))
            .body(())
            .unwrap();
        match client.send_request(req, false) {
            Ok(s) => open.push(s),
            Err(_) => break,
        }
    }
    scrape_ok(&running.base).await;
    drop(open);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
    scrape_ok(&running.base).await;
    running.stop().await;
}

/// The separate webhook listener (`webhooks.listen_address`) holds the same limits as the
/// main one: silent connections closed, huge headers 431, oversized bodies 413 unread,
/// trickled bodies cut, unknown paths 404, and the main listener serves throughout.
#[tokio::test]
async fn the_webhook_listener_holds_the_same_limits() {
    let port = crate::compat::free_port();
    let (running, _) = app(&[(
        "webhooks.listen_address",
        format!("127.0.0.1:{port}").into(),
    )])
    .await;
    let hook = format!("127.0.0.1:{port}");
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(&hook).await.unwrap());
    }
    for s in idle.iter_mut().take(10) {
        let (_, closed) = until_closed(s, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a silent connection was held open");
    }
    let mut s = TcpStream::connect(&hook).await.unwrap();
    let big = "a".repeat(200 * 1024);
    let _ = s
        .write_all(
            format!("POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        )
        .await;
    let (buf, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status(&buf), Some(431));
    assert_eq!(declare_a_huge_body(&hook).await, Some(413));
    // A body trickled after complete headers: cut by web.request_timeout (2 s here).
    let mut s = TcpStream::connect(&hook).await.unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: slow-2\r\nContent-Length: 60000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if s.write_all(b" ").await.is_err() {
                return;
            }
            let mut b = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
            {
                if n > 0 {
                    let code = status(&b[..n]).unwrap_or(0);
                    assert!((400..500).contains(&code), "slow body answered {code}");
                }
                return;
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the trickled body was never cut");
    assert!(started.elapsed() < Duration::from_secs(8));
    for path in ["/metrics", "/../etc/passwd", "/webhooks/%2e%2e/github"] {
        let r = reqwest::get(format!("http://{hook}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    scrape_ok(&running.base).await;
    running.stop().await;
}
