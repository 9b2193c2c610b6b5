//! GitHub webhooks end to end: the receiver's status codes, the workflow scenario over
//! every real example, and a crash under load.

mod actions;
mod gauges;
mod processing;
mod receiver;
mod sinks;

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

    /// The body of one of the service's own pages (`/metrics`, `/healthz`, …).
    async fn page(&self, path: &str) -> String {
        client()
            .get(self.url.replace("/webhooks/github", path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
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
