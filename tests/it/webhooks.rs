//! GitHub webhooks end to end: the receiver's status codes, the workflow scenario over
//! every real example, and a crash under load.

use devmetrics::metrics::Labels;
use devmetrics::metrics::Value;
use devmetrics::queue::topics::GITHUB_WEBHOOKS as GITHUB_TOPIC;
use devmetrics::sim::webhooks::{Generator, Sender, signature};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-secret";

struct App {
    launched: Option<devmetrics::app::Launched>,
    shutdown: CancellationToken,
    url: String,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start(extra_env: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "DEVMETRICS_STORAGE__PATH".into(),
            dir.path().join("d.db").display().to_string(),
        );
        env.insert("DEVMETRICS_WEBHOOKS__GITHUB__SECRET".into(), SECRET.into());
        for (k, v) in extra_env {
            env.insert(k.to_string(), v.to_string());
        }
        let cfg = devmetrics::config::load(None, &env, &Default::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let launched = devmetrics::app::launch(cfg, vec![listener], shutdown.clone())
            .await
            .unwrap();
        let url = format!("http://{}/webhooks/github", launched.addrs[0]);
        App {
            launched: Some(launched),
            shutdown,
            url,
            _dir: dir,
        }
    }

    fn state(&self) -> &devmetrics::server::Shared {
        &self.launched.as_ref().unwrap().state
    }

    async fn stats(&self) -> devmetrics::queue::TopicStats {
        self.state()
            .queue
            .stats()
            .await
            .unwrap()
            .into_iter()
            .find(|(t, _)| t == GITHUB_TOPIC)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    /// Waits until every published delivery has been processed and acked.
    async fn drained(&self) {
        for _ in 0..1000 {
            let s = self.stats().await;
            if s.depth == 0 && s.acked == s.published {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("queue did not drain: {:?}", self.stats().await);
    }

    /// Sum of a counter or gauge family's series whose labels contain every `filter` pair.
    fn sum(&self, family: &str, filter: &[(&str, &str)]) -> f64 {
        self.series(family, filter)
            .iter()
            .map(|(_, v)| v.as_f64().unwrap())
            .sum()
    }

    fn series(&self, family: &str, filter: &[(&str, &str)]) -> Vec<(Labels, Value)> {
        let snap = self.state().store.snapshot();
        snap.family(devmetrics::metrics::lookup(family).expect("a catalog family"))
            .filter(|(l, _)| {
                filter
                    .iter()
                    .all(|(k, v)| l.as_str().contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(l, v)| (l.clone(), v.clone()))
            .collect()
    }

    /// (count, sum) of a histogram family across matching series.
    fn hist(&self, family: &str, filter: &[(&str, &str)]) -> (u64, f64) {
        self.series(family, filter)
            .iter()
            .fold((0, 0.0), |(c, s), (_, v)| match v {
                Value::Histogram(h) => (c + h.count(), s + h.sum),
                _ => panic!("{family} is not a histogram"),
            })
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.launched.take().unwrap().wait().await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// `../shared/research-data`, or None (with a message) when it is absent and not required.
fn shared(sub: &str) -> Option<PathBuf> {
    devmetrics::sim::research_dir(sub)
}

fn job_body(g: &mut Generator) -> Vec<u8> {
    let plan = g.run_plan(1_700_000_000.0, 1).remove(0);
    g.job_payload(&plan, "completed", true)
}

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

struct Example {
    event: &'static str,
    file: String,
    body: Vec<u8>,
}

fn examples(dir: &Path) -> Vec<Example> {
    let mut out = Vec::new();
    for event in ["workflow_run", "workflow_job"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(event))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            out.push(Example {
                event,
                file: f.file_name().unwrap().to_string_lossy().into_owned(),
                body: std::fs::read(&f).unwrap(),
            });
        }
    }
    out
}

/// Replays `order` (indices into `ex`), then the same again with new delivery ids
/// (a second webhook or a manual redelivery) and with the same ids (GitHub's redelivery).
async fn replay(app: &App, ex: &[Example], order: &[usize], round: usize) {
    let s = Sender::new(app.url.clone(), SECRET);
    for (pass, (prefix, want)) in [("a", 202), ("b", 202), ("a", 200)].iter().enumerate() {
        for &i in order {
            let d = format!("{round}-{prefix}-{i}");
            let got = s.send(ex[i].event, &d, ex[i].body.clone()).await.unwrap();
            assert_eq!(got, *want, "pass {pass} {} {}", ex[i].event, ex[i].file);
        }
    }
    app.drained().await;
}

/// What every order must produce. octokit's examples reuse job id 289782451 for four
/// different payloads (two completions with different conclusions, an in_progress and a
/// queued of other job names): whichever completion arrives first is the job's, so the
/// conclusion and the queue time (0 s from in_progress or 60 s from completed) depend on
/// order; counts, durations and gauges do not.
fn assert_order_independent(app: &App) {
    let hello = ("repo", "Codertocat/Hello-World");
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[hello]), 1.0);
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 1.0);
    assert_eq!(
        app.hist("devmetrics_workflow_job_duration_seconds", &[hello]),
        (1, 198.0)
    );
    assert_eq!(
        app.sum(
            "devmetrics_workflow_runner_busy_seconds_total",
            &[
                ("runner_group", "GitHub Actions"),
                ("runner_labels", "ubuntu-latest")
            ]
        ),
        198.0
    );
    let (n, sum) = app.hist("devmetrics_workflow_job_queue_duration_seconds", &[]);
    assert_eq!(n, 2);
    assert!(sum == 7.0 || sum == 67.0, "{sum}");
    assert_eq!(
        app.hist(
            "devmetrics_workflow_job_queue_duration_seconds",
            &[("repo", "wolfy1339/github-events-schemas")]
        ),
        (1, 7.0)
    );
    // Gauges: only the job still waiting for a k8s runner and the one still running remain.
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 1.0);
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_queued",
            &[
                ("repo", "lineville/elastic-machines-testing"),
                ("runner_labels", "k8s,self-hosted")
            ]
        ),
        1.0
    );
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[hello]), 0.0);
    assert_eq!(
        app.sum("devmetrics_workflow_jobs_in_progress", &[hello]),
        0.0
    );
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_in_progress",
            &[
                ("repo", "wolfy1339/github-events-schemas"),
                ("runner_group", "GitHub Actions"),
                ("runner_labels", "ubuntu-latest")
            ]
        ),
        1.0
    );
    // One run attempt completed (two payloads of it); `requested` ones are not terminal.
    let run = [
        ("repo", "octo-org/octo-repo"),
        ("workflow", ".github/workflows/test.yml"),
        ("event", "repository_dispatch"),
        ("branch", ""),
        ("conclusion", "success"),
    ];
    assert_eq!(app.sum("devmetrics_workflow_runs_total", &run), 1.0);
    assert_eq!(app.sum("devmetrics_workflow_runs_total", &[]), 1.0);
    assert_eq!(
        app.hist("devmetrics_workflow_run_duration_seconds", &run),
        (1, 0.0)
    );
    assert!(
        app.series("devmetrics_workflow_invalid_durations_total", &[])
            .is_empty()
    );
}

#[tokio::test]
async fn scenario_replays_every_workflow_example_in_any_order() {
    let Some(dir) = shared("github-webhooks") else {
        return;
    };
    let ex = examples(&dir);
    assert_eq!(ex.len(), 11);
    // Files sorted by name: completions come before in_progress and queued.
    let app = App::start(&[]).await;
    let order: Vec<usize> = (0..ex.len()).collect();
    replay(&app, &ex, &order, 0).await;
    assert_order_independent(&app);
    let hello = ("repo", "Codertocat/Hello-World");
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_total",
            &[
                hello,
                ("conclusion", "failure"),
                ("job", "linters"),
                ("workflow", "CodeQL")
            ]
        ),
        1.0
    );
    assert_eq!(
        app.hist("devmetrics_workflow_job_queue_duration_seconds", &[hello]),
        (1, 60.0)
    );
    app.stop().await;

    for seed in 1..=4u64 {
        let app = App::start(&[]).await;
        let mut order: Vec<usize> = (0..ex.len()).collect();
        use rand::seq::SliceRandom;
        order.shuffle(&mut devmetrics::sim::rng(seed));
        let reversed: Vec<usize> = order.iter().rev().copied().collect();
        replay(&app, &ex, &order, 1).await;
        replay(&app, &ex, &reversed, 2).await;
        assert_order_independent(&app);
        app.stop().await;
    }
}

#[tokio::test]
async fn generated_activity_matches_the_senders_ground_truth() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(9);
    let mut n = 0;
    for r in 0..20 {
        let jobs = g.run_plan(1_700_000_000.0 + r as f64 * 100.0, 1 + r % 3);
        let mut bodies = Vec::new();
        // Completed first, then the stale in_progress and queued: nothing may resurrect.
        for action in ["completed", "in_progress", "queued"] {
            for j in &jobs {
                bodies.push(("workflow_job", g.job_payload(j, action, true)));
            }
        }
        bodies.push(("workflow_run", g.run_payload(&jobs, "completed", true)));
        for (event, body) in bodies {
            n += 1;
            assert_eq!(s.send(event, &format!("g-{n}"), body).await.unwrap(), 202);
        }
    }
    app.drained().await;
    let t = &g.truth;
    for (c, want) in &t.jobs_by_conclusion {
        assert_eq!(
            app.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]),
            *want as f64
        );
    }
    let (jobs, secs) = app.hist("devmetrics_workflow_job_duration_seconds", &[]);
    assert_eq!(jobs, t.jobs_by_conclusion.values().sum::<u64>());
    assert!((secs - t.job_seconds).abs() < 1e-6);
    let (_, q) = app.hist("devmetrics_workflow_job_queue_duration_seconds", &[]);
    assert!((q - t.queue_seconds).abs() < 1e-6);
    let (runs, rs) = app.hist("devmetrics_workflow_run_duration_seconds", &[]);
    assert_eq!(runs, t.runs_by_conclusion.values().sum::<u64>());
    assert!((rs - t.run_seconds).abs() < 1e-6);
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
    assert_eq!(app.sum("devmetrics_workflow_jobs_in_progress", &[]), 0.0);
    app.stop().await;
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

/// Both sinks receive the run → job → step hierarchy once per run attempt and job, with the
/// payloads' times and deterministic ids, even while they fail at first and while deliveries
/// are duplicated; their receivers decode the real wire formats.
#[tokio::test]
async fn sinks_get_each_run_and_job_once_and_retry_through_outages() {
    use devmetrics::exposition::otlp;
    use devmetrics::sim::sinks::{appinsights_receiver, otlp_receiver};
    use std::sync::atomic::Ordering;

    let (otlp_fake, spans) = otlp_receiver(1).await.unwrap();
    let (ai_fake, events) = appinsights_receiver(2).await.unwrap();
    // Both are down for their first requests.
    otlp_fake.faults.fail_next.store(3, Ordering::Relaxed);
    ai_fake.faults.fail_next.store(2, Ordering::Relaxed);
    let conn = format!(
        "InstrumentationKey=ikey;IngestionEndpoint={}/",
        ai_fake.base_url()
    );
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &otlp_fake.base_url(),
        ),
        ("DEVMETRICS_WEBHOOKS__SINKS__OTLP__SERVICE_NAME", "ci"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", &conn),
        ("DEVMETRICS_QUEUE__INITIAL_BACKOFF", "10ms"),
        ("DEVMETRICS_QUEUE__MAX_BACKOFF", "50ms"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(11);
    let jobs = g.run_plan(1_700_000_000.0, 2);
    let mut n = 0;
    for round in 0..2 {
        for j in &jobs {
            for action in ["queued", "in_progress", "completed"] {
                n += 1;
                let body = g.job_payload(j, action, round == 0);
                assert_eq!(
                    s.send("workflow_job", &format!("s-{n}"), body)
                        .await
                        .unwrap(),
                    202
                );
            }
        }
        n += 1;
        let body = g.run_payload(&jobs, "completed", round == 0);
        assert_eq!(
            s.send("workflow_run", &format!("s-{n}"), body)
                .await
                .unwrap(),
            202
        );
    }
    app.drained().await;
    let steps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let want_spans = 1 + jobs.len() + steps;
    for _ in 0..500 {
        let stats = app.state().queue.stats().await.unwrap();
        let done = |t: &str| {
            stats
                .iter()
                .find(|(name, _)| name == t)
                .is_some_and(|(_, s)| s.depth == 0 && s.published > 0)
        };
        if done("sink/otlp") && done("sink/appinsights") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = spans.spans.lock().clone();
    assert_eq!(spans.len(), want_spans, "{spans:#?}");
    let run_id = jobs[0].run_id;
    let tid = otlp::trace_id(run_id, 1).to_vec();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == tid && s.service_name == "ci")
    );
    let run = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert_eq!(run.span_id, otlp::run_span_id(run_id, 1).to_vec());
    for j in &jobs {
        let js = spans
            .iter()
            .find(|s| s.span_id == otlp::job_span_id(j.job_id).to_vec())
            .unwrap();
        assert_eq!(js.parent_span_id, run.span_id);
        assert_eq!(js.name, j.name);
        assert_eq!(js.start_unix_nano, (j.started_at * 1e9) as u64);
        assert_eq!(js.end_unix_nano, (j.completed_at * 1e9) as u64);
        let children = spans
            .iter()
            .filter(|s| s.parent_span_id == js.span_id)
            .count();
        assert_eq!(children, j.steps.len());
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids never collide");

    let events = events.events.lock().clone();
    let names = |n: &str| {
        events
            .iter()
            .filter(|e| e["data"]["baseData"]["name"] == n)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("WorkflowRun").len(), 1);
    assert_eq!(names("WorkflowJob").len(), jobs.len());
    assert_eq!(names("WorkflowStep").len(), steps);
    let job = names("WorkflowJob")
        .into_iter()
        .find(|e| {
            e["data"]["baseData"]["properties"]["job_id"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                == Some(jobs[0].job_id)
        })
        .unwrap();
    let d = &job["data"]["baseData"];
    assert_eq!(d["properties"]["job_name"], jobs[0].name.as_str());
    assert_eq!(
        d["properties"]["repository_full_name"],
        jobs[0].repo.as_str()
    );
    assert_eq!(d["properties"]["conclusion"], jobs[0].conclusion.as_str());
    assert_eq!(
        d["measurements"]["duration_seconds"].as_f64().unwrap(),
        jobs[0].completed_at - jobs[0].started_at
    );
    assert_eq!(job["iKey"], "ikey");
    app.stop().await;
}

/// The personal access token [`acme_client`] authenticates with.
const ACME_TOKEN: &str = "test-token";

/// A GitHub client for org `acme` against `base`, with the service's store and telemetry.
fn acme_client(
    app: &App,
    base: &str,
) -> std::sync::Arc<devmetrics::sources::github::client::Client> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!("github:\n  orgs:\n    - org: acme\n      token: {ACME_TOKEN}\n      api_base_url: {base}\n"),
    )
    .unwrap();
    let cfg =
        devmetrics::config::load(Some(&file), &Default::default(), &Default::default()).unwrap();
    let gh = cfg.github.unwrap();
    std::sync::Arc::new(
        devmetrics::sources::github::client::Client::new(
            &gh,
            &gh.orgs[0],
            app.state().store.clone(),
            app.state().telemetry.clone(),
            &Default::default(),
            CancellationToken::new(),
        )
        .unwrap(),
    )
}

/// Deliveries GitHub failed to make (the service was down) are found in the hook's delivery
/// log, redelivered once each, and then counted exactly once; recovered ones are reported.
#[tokio::test]
async fn missed_deliveries_are_redelivered_once_and_counted_once() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::github::actions::{HookTarget, Recovery};
    use std::sync::atomic::Ordering;

    let hooks = HooksSim::new();
    *hooks.pat.lock() = Some(ACME_TOKEN.into());
    let fake = FakeServer::start("github", hooks.router(), Faults::new(3))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    hooks.set_target(Sender::new(app.url.clone(), SECRET));
    let mut g = Generator::new(21);
    let now = devmetrics::clock::now_unix();
    // 150 deliveries over the last hour (two pages of the log); every fifth failed.
    let n = 150;
    for i in 0..n {
        let at = now - 3600.0 + i as f64 * 20.0;
        let reachable = i % 5 != 0;
        hooks
            .deliver(
                "workflow_job",
                &format!("guid-{i}"),
                job_body(&mut g),
                reachable,
                at,
            )
            .await;
    }
    // One failed delivery is too recent to touch (GitHub may be retrying it itself).
    hooks
        .deliver("workflow_job", "guid-fresh", job_body(&mut g), false, now)
        .await;
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 120.0);

    let rec = Recovery::new(
        acme_client(&app, &fake.base_url()),
        HookTarget::Org(12345),
        app.state().store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(3 * 3600),
        Default::default(),
    );
    // Failed in the window before this cycle: 30 old ones and the fresh one.
    assert_eq!(rec.run_once().await.unwrap(), 31);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 30);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 30);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 150.0);

    // The next cycle sees them delivered: recovered, not asked again.
    assert_eq!(rec.run_once().await.unwrap(), 1);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 30);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 30);
    assert_eq!(rec.run_once().await.unwrap(), 1);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 30);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 30);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 150.0);
    app.stop().await;
}

/// The runner inventory: online/busy/offline per group and labels, from the API.
#[tokio::test]
async fn runner_inventory_counts_runners_by_group_labels_and_state() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::Poller;
    use devmetrics::sources::github::actions::Runners;
    use serde_json::json;

    let hooks = HooksSim::new();
    *hooks.pat.lock() = Some(ACME_TOKEN.into());
    let label = |n: &str| json!({"id": 1, "name": n, "type": "read-only"});
    *hooks.runner_groups.lock() = vec![
        json!({"id": 1, "name": "Default"}),
        json!({"id": 2, "name": "gpu"}),
    ];
    *hooks.runners.lock() = vec![
        json!({"id": 1, "name": "a", "os": "linux", "status": "online", "busy": true, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 2, "name": "b", "os": "linux", "status": "online", "busy": false, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 3, "name": "c", "os": "linux", "status": "offline", "busy": false, "runner_group_id": 1,
               "labels": [label("self-hosted"), label("Linux"), label("X64")]}),
        json!({"id": 4, "name": "d", "os": "linux", "status": "online", "busy": true, "runner_group_id": 2,
               "labels": [label("self-hosted"), label("gpu")]}),
    ];
    let fake = FakeServer::start("github", hooks.router(), Faults::new(4))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    let poller = Runners::new(
        acme_client(&app, &fake.base_url()),
        vec!["acme/api".into()],
        Duration::from_secs(60),
        8,
    );
    let mut results = poller.poll().await;
    let samples = results.remove(0).result.unwrap();
    let got: BTreeMap<String, f64> = samples
        .iter()
        .map(|s| (s.labels.as_str().to_string(), s.value.as_f64().unwrap()))
        .collect();
    let key = |repo: &str, g: &str, l: &str, st: &str| {
        format!(
            "org=\"acme\",repo=\"{repo}\",runner_group=\"{g}\",runner_labels=\"{l}\",state=\"{st}\""
        )
    };
    // The fake serves the same list for the repo: counted apart under repo="acme/api".
    let want: BTreeMap<String, f64> = [
        (key("", "Default", "linux,self-hosted,x64", "busy"), 1.0),
        (key("", "Default", "linux,self-hosted,x64", "idle"), 1.0),
        (key("", "Default", "linux,self-hosted,x64", "offline"), 1.0),
        (key("", "gpu", "gpu,self-hosted", "busy"), 1.0),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "busy"),
            1.0,
        ),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "idle"),
            1.0,
        ),
        (
            key("acme/api", "Default", "linux,self-hosted,x64", "offline"),
            1.0,
        ),
        (key("acme/api", "gpu", "gpu,self-hosted", "busy"), 1.0),
    ]
    .into();
    assert_eq!(got, want);
    app.stop().await;
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

/// OTLP over gRPC (h2c): the same spans reach a collector speaking the gRPC wire format.
#[tokio::test]
async fn otlp_grpc_sink_delivers_the_same_spans() {
    use devmetrics::sim::sinks::otlp_grpc_receiver;
    let (fake, got) = otlp_grpc_receiver(5).await.unwrap();
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &fake.base_url(),
        ),
        ("DEVMETRICS_WEBHOOKS__SINKS__OTLP__PROTOCOL", "grpc"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(8);
    let jobs = g.run_plan(1_700_000_000.0, 1);
    let body = g.job_payload(&jobs[0], "completed", true);
    assert_eq!(s.send("workflow_job", "grpc-1", body).await.unwrap(), 202);
    let body = g.run_payload(&jobs, "completed", true);
    assert_eq!(s.send("workflow_run", "grpc-2", body).await.unwrap(), 202);
    app.drained().await;
    let want = 2 + jobs[0].steps.len();
    for _ in 0..500 {
        if got.spans.lock().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spans = got.spans.lock().clone();
    assert_eq!(spans.len(), want);
    assert_eq!(*got.undecodable.lock(), 0);
    let job = spans.iter().find(|s| s.name == jobs[0].name).unwrap();
    assert_eq!(job.end_unix_nano, (jobs[0].completed_at * 1e9) as u64);
    app.stop().await;
}

/// The GitHub App's own webhook: its delivery log and redeliveries, with the App's JWT.
#[tokio::test]
async fn app_hook_deliveries_are_recovered_with_the_app_jwt() {
    use devmetrics::sim::github::HooksSim;
    use devmetrics::sim::{FakeServer, Faults};
    use devmetrics::sources::github::actions::{HookTarget, Recovery};
    use std::sync::atomic::Ordering;

    let hooks = HooksSim::new();
    let fake = FakeServer::start("github", hooks.router(), Faults::new(6))
        .await
        .unwrap();
    let app = App::start(&[]).await;
    hooks.set_target(Sender::new(app.url.clone(), SECRET));
    let mut g = Generator::new(31);
    let now = devmetrics::clock::now_unix();
    for i in 0..10 {
        let at = now - 600.0 + i as f64;
        hooks
            .deliver(
                "workflow_job",
                &format!("app-{i}"),
                job_body(&mut g),
                i % 3 != 0,
                at,
            )
            .await;
    }
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 6.0);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
    std::fs::write(
        &file,
        format!(
            "github:\n  orgs:\n    - org: acme\n      app_id: 4242\n      installation_id: 777\n      private_key_path: {}\n      api_base_url: {}\n",
            key.display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let cfg =
        devmetrics::config::load(Some(&file), &Default::default(), &Default::default()).unwrap();
    let gh = cfg.github.unwrap();
    let client = std::sync::Arc::new(
        devmetrics::sources::github::client::Client::new(
            &gh,
            &gh.orgs[0],
            app.state().store.clone(),
            app.state().telemetry.clone(),
            &Default::default(),
            CancellationToken::new(),
        )
        .unwrap(),
    );
    let rec = Recovery::new(
        client,
        HookTarget::App,
        app.state().store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(3600),
        Default::default(),
    );
    assert_eq!(rec.run_once().await.unwrap(), 4);
    assert_eq!(rec.stats.requested.load(Ordering::Relaxed), 4);
    app.drained().await;
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 10.0);
    assert_eq!(rec.run_once().await.unwrap(), 0);
    assert_eq!(rec.stats.recovered.load(Ordering::Relaxed), 4);
    assert_eq!(hooks.redeliveries.load(Ordering::Relaxed), 4);
    app.stop().await;
}

/// A sink that refuses everything dead-letters its items (with one attempt allowed); the
/// `devmetrics queue` CLI, run as its own process beside the running service, lists them and
/// replays them once the sink is back, and each item then arrives exactly once.
#[tokio::test]
async fn dead_letters_are_listed_and_replayed_by_the_cli_while_the_service_runs() {
    use devmetrics::sim::sinks::otlp_receiver;
    use std::process::Command;
    use std::sync::atomic::Ordering;

    let (otlp_fake, received) = otlp_receiver(3).await.unwrap();
    otlp_fake
        .faults
        .fail_next
        .store(1_000_000, Ordering::Relaxed);
    let app = App::start(&[
        (
            "DEVMETRICS_WEBHOOKS__SINKS__OTLP__ENDPOINT",
            &otlp_fake.base_url(),
        ),
        ("DEVMETRICS_QUEUE__MAX_ATTEMPTS", "1"),
    ])
    .await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(5);
    let jobs = g.run_plan(1_700_000_000.0, 1);
    for (n, action) in ["queued", "in_progress", "completed"].iter().enumerate() {
        let body = g.job_payload(&jobs[0], action, true);
        assert_eq!(
            s.send("workflow_job", &format!("dl-{n}"), body)
                .await
                .unwrap(),
            202
        );
    }
    let body = g.run_payload(&jobs, "completed", true);
    assert_eq!(s.send("workflow_run", "dl-run", body).await.unwrap(), 202);
    let sink_stats = || async {
        let stats = app.state().queue.stats().await.unwrap();
        stats
            .into_iter()
            .find(|(t, _)| t == "sink/otlp")
            .map(|(_, s)| s)
            .unwrap_or_default()
    };
    for _ in 0..500 {
        if sink_stats().await.dead_letters == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink_stats().await.dead_letters, 2, "the job and the run");

    let db = app.state().config.storage.path.clone();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(args)
            .arg("--storage.path")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["queue", "dead-letters", "--topic", "sink/otlp"]);
    assert!(listed.contains("2 dead letters"), "{listed}");
    assert!(listed.contains("status"), "the reason is shown: {listed}");
    let id = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let shown = cli(&["queue", "show", &id]);
    assert!(shown.contains("event:      workflow_"), "{shown}");

    otlp_fake.faults.fail_next.store(0, Ordering::Relaxed);
    let replayed = cli(&["queue", "replay", "--topic", "sink/otlp"]);
    assert!(replayed.starts_with("2 dead letters queued"), "{replayed}");
    // Asking twice replays nothing twice.
    cli(&["queue", "replay", "--all"]);
    let steps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let want = 1 + jobs.len() + steps;
    for _ in 0..500 {
        let st = sink_stats().await;
        if received.spans.lock().len() >= want && st.depth == 0 && st.dead_letters == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.spans.lock().len(), want, "each item once");
    let st = sink_stats().await;
    assert_eq!((st.dead_letters, st.replayed, st.depth), (0, 2, 0));
    let listed = cli(&["queue", "dead-letters"]);
    assert!(listed.contains("0 dead letters"), "{listed}");
    app.stop().await;
}
