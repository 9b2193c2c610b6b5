//! The storage contracts, run on every backend through the storage factory, and the
//! component interface, exercised by a component this test adds.

use std::sync::Arc;
use std::time::Duration;

use devmetrics::app;
use devmetrics::metrics::{self, Labels, Sample};
use devmetrics::sources::{BuildError, Component, Context, Kind, PollError, Poller, ScopeResult};
use tokio_util::sync::CancellationToken;

use crate::support::Backend;

#[tokio::test]
async fn every_backend_passes_the_store_and_lease_contract() {
    for backend in Backend::all() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend
            .open(dir.path(), &devmetrics::queue::contract::policy())
            .await;
        devmetrics::store::contract::run(b.store, b.lease).await;
        backend.clean_up(dir.path());
    }
}

#[tokio::test]
async fn every_backend_passes_the_queue_contract() {
    for backend in Backend::all() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend
            .open(dir.path(), &devmetrics::queue::contract::policy())
            .await;
        devmetrics::queue::contract::run(b.queue).await;
        backend.clean_up(dir.path());
    }
}

/// A component written against the component interface alone.
struct Toy {
    replica: String,
}

/// The replicas whose toy poller ran, to tell which replica polls.
pub static TOY_POLLED_ON: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[async_trait::async_trait]
impl Poller for Toy {
    fn name(&self) -> &str {
        "toy"
    }
    fn scopes(&self) -> Vec<String> {
        vec!["toy/".into()]
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(50)
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn poll(&self) -> Vec<ScopeResult> {
        {
            let mut polled = TOY_POLLED_ON.lock().unwrap();
            if !polled.contains(&self.replica) {
                polled.push(self.replica.clone());
            }
        }
        let fid = metrics::DEVMETRICS_UPSTREAM_REQUESTS_TOTAL;
        let labels = Labels::new(fid, &["toy", "things", "200"]).unwrap();
        let samples: Result<_, PollError> = Ok(vec![Sample::number(fid, labels, 42.0)]);
        vec![ScopeResult::new("toy/things", samples)]
    }
}

fn toy(ctx: &Context) -> Result<Option<Component>, BuildError> {
    Ok(Some(Component {
        pollers: vec![Arc::new(Toy {
            replica: ctx.config.ha.replica_id.clone(),
        })],
        routes: axum::Router::new().route("/toy", axum::routing::get(|| async { "toy\n" })),
        scopes: vec!["toy/".into()],
        ..Default::default()
    }))
}

pub static WITH_TOY: &[Kind] = &[Kind {
    name: "toy",
    owns: &["toy/"],
    build: toy,
}];

#[tokio::test]
async fn a_component_added_through_the_interface_alone_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = Backend::Sqlite.config(dir.path(), &[]);
    let listeners = app::bind(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let launched = app::launch_with(config, listeners, shutdown.clone(), WITH_TOY)
        .await
        .unwrap();
    let base = format!("http://{}", launched.addrs[0]);
    let want =
        r#"devmetrics_upstream_requests_total{upstream="toy",endpoint="things",status="200"} 42"#;
    // The poll's health is recorded just after its series are stored.
    let up = r#"devmetrics_source_up{source="toy"} 1"#;
    let mut body = String::new();
    for _ in 0..100 {
        body = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains(want) && body.contains(up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains(want), "{body}");
    assert!(body.contains(up), "{body}");
    let page = reqwest::get(format!("{base}/toy")).await.unwrap();
    assert_eq!(page.text().await.unwrap(), "toy\n");
    shutdown.cancel();
    launched.wait().await;
}
