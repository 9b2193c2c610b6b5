//! Upstreams. Each is one folder owning its client, wire types, pollers or webhook handlers,
//! and its fake (under `crate::sim`).
//!
//! A poller never writes metric state: it returns results per scope and the [`run_poller`]
//! loop replaces those scopes in the store. A scope that failed keeps its last good values
//! (their age shows in `devmetrics_source_last_success_timestamp_seconds`).

pub mod github;
pub mod spacelift;
pub mod webhooks;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::metrics::Sample;
use crate::store::SharedStore;
use crate::telemetry::Telemetry;

/// A failed part of a poll: a bounded kind for metric labels, a message for people.
#[derive(Clone, Debug)]
pub struct PollError {
    pub kind: &'static str,
    pub message: String,
}

impl PollError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        PollError {
            kind,
            message: message.into(),
        }
    }
}

/// One scope of a poll: its complete new series, or why they could not be fetched.
pub struct ScopeResult {
    pub scope: String,
    pub result: Result<Vec<Sample>, PollError>,
}

#[async_trait]
pub trait Poller: Send + Sync {
    /// Source name as shown in `devmetrics_source_*{source}` and on the status page.
    fn name(&self) -> &'static str;
    fn interval(&self) -> Duration;
    /// Deadline for one whole poll.
    fn timeout(&self) -> Duration;
    /// Every scope fetched this time. An empty result means the poll was skipped (not due,
    /// cooling down after failures): it leaves health and last-success time unchanged.
    async fn poll(&self) -> Vec<ScopeResult>;
}

/// Runs `poller` every interval until `shutdown`. A poll that overruns its timeout is
/// abandoned and counted as a `timeout`.
pub async fn run_poller(
    poller: Arc<dyn Poller>,
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    telemetry.register_source(poller.name());
    // After a restart the values persisted by the last run are served at once; their age
    // must be too. A source's scopes are named after it (`spacelift/…`, `github/<org>/…`).
    let name = poller.name();
    let nested = format!("{name}/");
    let last = store
        .snapshot()
        .scopes
        .iter()
        .filter(|s| &*s.name == name || s.name.starts_with(&nested))
        .map(|s| s.updated_at)
        .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
    if let Some(t) = last {
        telemetry.seed_last_success(name, t);
    }
    let mut ticker = tokio::time::interval(poller.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        poll_once(&*poller, &*store, &telemetry).await;
    }
}

pub async fn poll_once(
    poller: &dyn Poller,
    store: &dyn crate::store::Store,
    telemetry: &Telemetry,
) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(poller.timeout(), poller.poll()).await {
        // A poll that fetched nothing (a stretched interval's idle tick) is neither a success
        // nor a failure: the age of the last good values keeps growing.
        Ok(results) if results.is_empty() => {
            telemetry.source_skipped(poller.name());
            return;
        }
        Ok(results) => {
            let mut first_error: Option<PollError> = None;
            for r in results {
                match r.result {
                    Ok(samples) => {
                        if let Err(e) = store.replace_scope(&r.scope, samples).await {
                            first_error.get_or_insert(PollError::new("store", e.to_string()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = poller.name(), scope = %r.scope, kind = e.kind, error = %e.message, "poll of scope failed; keeping its last values");
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => Ok(()),
                Some(e) => Err((e.kind, e.message)),
            }
        }
        Err(_) => {
            tracing::warn!(source = poller.name(), timeout = ?poller.timeout(), "poll timed out");
            Err(("timeout", format!("poll exceeded {:?}", poller.timeout())))
        }
    };
    telemetry.source_scraped(poller.name(), started.elapsed(), outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{self, Labels};
    use crate::store::Store;

    struct Failing;

    #[async_trait]
    impl Poller for Failing {
        fn name(&self) -> &'static str {
            "testsrc"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn poll(&self) -> Vec<ScopeResult> {
            vec![ScopeResult {
                scope: "testsrc/a".into(),
                result: Err(PollError::new("http_status", "503")),
            }]
        }
    }

    #[tokio::test]
    async fn age_of_persisted_values_survives_a_restart_and_a_failing_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("s.db")).unwrap();
        let store = Arc::new(crate::store::sqlite::SqliteStore::open(db).unwrap());
        let fid = metrics::DEVMETRICS_SOURCE_UP;
        let sample = Sample::number(fid, Labels::new(fid, &["x"]).unwrap(), 1.0);
        store
            .replace_scope("testsrc/a", vec![sample])
            .await
            .unwrap();
        let written = store.snapshot().scope("testsrc/a").unwrap().updated_at;

        let telemetry = Arc::new(Telemetry::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_poller(
            Arc::new(Failing),
            store.clone(),
            telemetry.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        task.await.unwrap();
        let h = &telemetry.sources()["testsrc"];
        assert!(!h.up);
        assert_eq!(h.last_success_timestamp, Some(written));
        // The failed scope kept its values.
        assert_eq!(
            store.snapshot().scope("testsrc/a").unwrap().series_count(),
            1
        );
    }
}
