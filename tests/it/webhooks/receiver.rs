//! The receiver: status codes for bad input, its own listener, and nothing accepted lost under SIGKILL.

use super::*;

#[tokio::test]
async fn every_bad_input_gets_its_documented_code_and_nothing_is_lost() {
    let app = App::start(&[("DEVMETRICS_WEBHOOKS__GITHUB__MAX_BODY_BYTES", "65536")]).await;
    let mut g = Generator::new(1);
    let good = job_body(&mut g);
    let sig = signature(SECRET, &good);
    let big = vec![b' '; 70_000];
    let big_sig = signature(SECRET, &big);
    let bad_json = b"{\"action\": ".to_vec();
    let bad_json_sig = signature(SECRET, &bad_json);
    let array = b"[1,2]".to_vec();
    let array_sig = signature(SECRET, &array);
    let other_secret = signature("not-the-secret", &good);
    let sha1_style = sig.replace("sha256=", "sha1=");
    // (name, event, delivery, signature, body, expected status, queued?)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a [u8],
        u16,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "accepted",
            Some("workflow_job"),
            Some("d-1"),
            Some(&sig),
            &good,
            202,
            true,
        ),
        (
            "duplicate delivery id",
            Some("workflow_job"),
            Some("d-1"),
            Some(&sig),
            &good,
            200,
            false,
        ),
        (
            "missing signature",
            Some("workflow_job"),
            Some("d-2"),
            None,
            &good,
            401,
            false,
        ),
        (
            "wrong secret",
            Some("workflow_job"),
            Some("d-3"),
            Some(&other_secret),
            &good,
            401,
            false,
        ),
        (
            "sha1-style prefix",
            Some("workflow_job"),
            Some("d-4"),
            Some(&sha1_style),
            &good,
            401,
            false,
        ),
        (
            "tampered body",
            Some("workflow_job"),
            Some("d-5"),
            Some(&sig),
            &good[1..],
            401,
            false,
        ),
        (
            "missing event header",
            None,
            Some("d-6"),
            Some(&sig),
            &good,
            400,
            false,
        ),
        (
            "missing delivery header",
            Some("workflow_job"),
            None,
            Some(&sig),
            &good,
            400,
            false,
        ),
        (
            "malformed JSON",
            Some("workflow_job"),
            Some("d-7"),
            Some(&bad_json_sig),
            &bad_json,
            400,
            false,
        ),
        (
            "JSON but not an object",
            Some("workflow_job"),
            Some("d-8"),
            Some(&array_sig),
            &array,
            400,
            false,
        ),
        (
            "over the size limit",
            Some("workflow_job"),
            Some("d-9"),
            Some(&big_sig),
            &big,
            413,
            false,
        ),
        (
            "ping",
            Some("ping"),
            Some("d-10"),
            Some(&sig),
            &good,
            200,
            false,
        ),
        (
            "unknown event",
            Some("issues"),
            Some("d-11"),
            Some(&sig),
            &good,
            200,
            false,
        ),
        // A delivery refused earlier is not remembered: its signed retry is accepted.
        (
            "signed retry of a refused delivery",
            Some("workflow_job"),
            Some("d-2"),
            Some(&sig),
            &good,
            202,
            true,
        ),
    ];
    let c = client();
    for (name, event, delivery, signature, body, want, _) in &cases {
        for path in ["/webhooks/github", "/webhook", "/api/github"] {
            let url = app.url.replace("/webhooks/github", path);
            let mut req = c.post(&url).body(body.to_vec());
            if let Some(e) = event {
                req = req.header("x-github-event", *e);
            }
            if let Some(d) = delivery {
                req = req.header("x-github-delivery", *d);
            }
            if let Some(s) = signature {
                req = req.header("x-hub-signature-256", *s);
            }
            let resp = req.send().await.unwrap();
            // After the first path accepted d-1, the aliases see it as a duplicate.
            let want = if *want == 202 && path != "/webhooks/github" {
                200
            } else {
                *want
            };
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_eq!(status, want, "{name} on {path}: {text}");
            assert!(
                !text.contains("sql") && !text.contains("test-secret"),
                "{name}: {text}"
            );
        }
    }
    app.drained().await;
    let queued = cases.iter().filter(|c| c.6).count() as u64;
    assert_eq!(app.stats().await.published, queued);
    // Both accepted deliveries carry the same job: it counts once.
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 1.0);
    let own = app.state().telemetry.scope().await;
    let deliveries = |o: &str| {
        let fid = devmetrics::metrics::DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL;
        let l = Labels::new(fid, &["github", o]).unwrap();
        own.families.get(&fid).and_then(|m| m.get(&l).cloned())
    };
    assert_eq!(deliveries("accepted"), Some(Value::Number(2.0)));
    assert_eq!(deliveries("duplicate"), Some(Value::Number(7.0)));
    assert_eq!(deliveries("too_large"), Some(Value::Number(3.0)));
    assert_eq!(deliveries("bad_signature"), Some(Value::Number(12.0)));
    app.stop().await;
}

/// The same `X-GitHub-Delivery` with another validly signed body is not a redelivery: it is
/// answered 200 (GitHub must not retry it) as a conflict, counted once as such and never
/// queued, while a true redelivery of the first body stays a plain duplicate.
#[tokio::test]
async fn a_reused_delivery_id_with_another_body_is_a_conflict_and_not_queued() {
    let app = App::start(&[]).await;
    let mut g = Generator::new(31);
    let (first, second) = (job_body(&mut g), job_body(&mut g));
    assert_ne!(first, second);
    let c = client();
    let post = |body: &[u8]| {
        c.post(&app.url)
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", "reused-1")
            .header("x-hub-signature-256", signature(SECRET, body))
            .body(body.to_vec())
            .send()
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    assert_eq!(answer(post(&first).await.unwrap()).await.0, 202);
    let status_of = |(code, body): (u16, String)| {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (code, v["status"].as_str().unwrap().to_string())
    };
    assert_eq!(
        status_of(answer(post(&second).await.unwrap()).await),
        (200, "conflicting delivery".to_string())
    );
    assert_eq!(
        status_of(answer(post(&first).await.unwrap()).await),
        (200, "duplicate delivery".to_string())
    );
    app.drained().await;
    let s = app.stats().await;
    assert_eq!(
        (s.published, s.acked, s.duplicates, s.conflicts),
        (1, 1, 1, 1)
    );
    assert_eq!(
        app.sum("devmetrics_workflow_jobs_total", &[]),
        1.0,
        "only the first body's job is counted"
    );
    let own = app.state().telemetry.scope().await;
    let deliveries = |o: &str| {
        let fid = devmetrics::metrics::DEVMETRICS_WEBHOOK_DELIVERIES_TOTAL;
        let l = Labels::new(fid, &["github", o]).unwrap();
        own.families.get(&fid).and_then(|m| m.get(&l).cloned())
    };
    for (outcome, n) in [("accepted", 1.0), ("conflict", 1.0), ("duplicate", 1.0)] {
        assert_eq!(deliveries(outcome), Some(Value::Number(n)), "{outcome}");
    }
    app.stop().await;
}

#[tokio::test]
async fn refuses_to_start_without_a_secret() {
    let env: BTreeMap<String, String> = [(
        "DEVMETRICS_WEBHOOKS__GITHUB__MAX_BODY_BYTES".to_string(),
        "10".to_string(),
    )]
    .into();
    let e = devmetrics::config::load(None, &env, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("insecure_skip_verify"), "{e}");
}

/// The real binary, SIGKILLed under a flood of signed deliveries and restarted: every
/// delivery that got 202 was durable (its redelivery is a duplicate), and after GitHub-style
/// redelivery of everything, each job is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_accepted_delivery_and_counts_none_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "web: {{listen_addresses: ['127.0.0.1:{port}']}}\nstorage: {{path: {}}}\nlog: {{level: error}}\nwebhooks: {{github: {{secrets: [{SECRET}]}}}}\n",
            dir.path().join("d.db").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(["serve", "--config.file"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let c = client();
    let ready = |c: reqwest::Client, base: String| async move {
        for _ in 0..500 {
            if let Ok(r) = c.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("devmetrics did not become ready");
    };

    const N: usize = 3000;
    let mut g = Generator::new(5);
    let deliveries: Arc<Vec<Vec<u8>>> = Arc::new((0..N).map(|_| job_body(&mut g)).collect());
    let mut child = start();
    ready(c.clone(), base.clone()).await;

    let url = format!("{base}/webhooks/github");
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut flood = Vec::new();
    for _ in 0..32 {
        let (s, next, accepted, deliveries) = (
            Sender::new(url.clone(), SECRET),
            next.clone(),
            accepted.clone(),
            deliveries.clone(),
        );
        flood.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    return;
                }
                match s
                    .send("workflow_job", &format!("crash-{i}"), deliveries[i].clone())
                    .await
                {
                    Ok(202) => accepted.lock().push(i),
                    Ok(other) => panic!("delivery {i} got {other}"),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill mid-flood, once a good share has been accepted.
    for _ in 0..3000 {
        if accepted.lock().len() >= N / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for t in flood {
        t.await.unwrap();
    }
    let accepted = accepted.lock().clone();
    assert!(
        !accepted.is_empty() && accepted.len() < N,
        "the kill should land mid-flood ({} accepted)",
        accepted.len()
    );

    eprintln!(
        "killed after {} of {N} deliveries got 202 ({} sent)",
        accepted.len(),
        next.load(Ordering::Relaxed).min(N)
    );
    let mut child = start();
    ready(c.clone(), base.clone()).await;
    let s = Sender::new(url.clone(), SECRET);
    let accepted: std::collections::HashSet<usize> = accepted.into_iter().collect();
    for (i, body) in deliveries.iter().enumerate() {
        let got = s
            .send("workflow_job", &format!("crash-{i}"), body.clone())
            .await
            .unwrap();
        if accepted.contains(&i) {
            assert_eq!(
                got, 200,
                "delivery {i} got 202 before the crash but was not kept"
            );
        } else {
            assert!(got == 202 || got == 200, "delivery {i}: {got}");
        }
    }
    let scrape = |c: reqwest::Client| {
        let base = base.clone();
        async move {
            let text = c
                .get(format!("{base}/metrics"))
                .header("accept", "text/plain; version=0.0.4")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let sum = |prefix: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                    .sum()
            };
            (
                sum("devmetrics_workflow_jobs_total{"),
                sum("devmetrics_queue_depth{topic=\"webhooks/github\"}"),
            )
        }
    };
    let mut last = (0.0, 0.0);
    for _ in 0..3000 {
        last = scrape(c.clone()).await;
        if last.1 == 0.0 && last.0 >= N as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, (N as f64, 0.0), "jobs counted, queue depth");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// With `webhooks.listen_address` the receiver answers only there, and that listener serves
/// nothing else; `insecure_skip_verify` accepts unsigned deliveries.
#[tokio::test]
async fn own_listener_keeps_metrics_private_and_insecure_mode_accepts_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        (
            "DEVMETRICS_STORAGE__PATH",
            dir.path().join("d.db").display().to_string(),
        ),
        ("DEVMETRICS_WEBHOOKS__LISTEN_ADDRESS", "127.0.0.1:0".into()),
        (
            "DEVMETRICS_WEBHOOKS__GITHUB__INSECURE_SKIP_VERIFY",
            "true".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = devmetrics::config::load(None, &env, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let launched = devmetrics::app::launch(cfg, vec![listener], shutdown.clone())
        .await
        .unwrap();
    let main = launched.addrs[0];
    let hook = launched.webhook_addr.expect("own listener");
    let c = client();
    let mut g = Generator::new(2);
    let body = job_body(&mut g);
    let post = |addr: std::net::SocketAddr, d: &str| {
        c.post(format!("http://{addr}/webhooks/github"))
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", d)
            .body(body.clone())
            .send()
    };
    assert_eq!(post(hook, "u-1").await.unwrap().status(), 202);
    assert_eq!(post(main, "u-2").await.unwrap().status(), 404);
    let metrics = c
        .get(format!("http://{hook}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);
    let metrics = c
        .get(format!("http://{main}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    shutdown.cancel();
    launched.wait().await;
}

/// A full disk: deliveries are answered 503 (GitHub redelivers them), `/readyz` says why,
/// `/livez` and `/metrics` keep answering, nothing panics. Once the disk has room again the
/// redelivered and the new deliveries are accepted, and every job counts exactly once.
#[tokio::test]
async fn a_full_disk_answers_503_and_loses_nothing_once_it_has_room() {
    let app = App::start(&[]).await;
    let db = app.state().config.storage.path.clone();
    let base = app.url.replace("/webhooks/github", "");
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(21);
    let jobs = g.run_plan(1_700_000_000.0, 3);
    let mut send_job = |i: usize| {
        let body = g.job_payload(&jobs[i], "completed", true);
        let s = &s;
        async move {
            s.send("workflow_job", &format!("full-{i}"), body)
                .await
                .unwrap()
        }
    };
    assert_eq!(send_job(0).await, 202);
    app.drained().await;

    devmetrics::db::inject_write_failures(&db, true);
    assert_eq!(send_job(1).await, 503);
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, why) = get("/readyz").await;
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("disk is full"), "{why}");
    assert_eq!(get("/livez").await.0, 200);
    assert_eq!(get("/metrics").await.0, 200);

    devmetrics::db::inject_write_failures(&db, false);
    // GitHub redelivers the refused delivery with its id; a new one arrives too.
    assert_eq!(send_job(1).await, 202);
    assert_eq!(send_job(2).await, 202);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 3.0);
    assert_eq!(get("/readyz").await.0, 200);
    app.stop().await;
}
