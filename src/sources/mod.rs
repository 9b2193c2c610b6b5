//! Upstreams. Each is one folder owning its client, wire types, pollers or webhook handlers,
//! and its fake (under `crate::sim`).
//!
//! A poller never writes metric state: it returns results per scope and the [`run_poller`]
//! loop replaces those scopes in the store. A scope that failed keeps its last good values
//! (their age shows in `devmetrics_source_last_success_timestamp_seconds`).

pub mod copilot;
pub mod dora;
pub mod github;
pub mod signature;
pub mod spacelift;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Sample;
use crate::queue::{Handler, SharedQueue};
use crate::server::Shared;
use crate::store::SharedStore;
use crate::telemetry::{Collect, Telemetry};

/// Every kind of component, in start order. A new source adds its line here.
pub const COMPONENTS: &[Kind] = &[
    Kind {
        name: "github",
        owns: &["github/"],
        build: github::activity,
    },
    Kind {
        name: "webhooks",
        owns: &["webhooks/runners/", "webhooks/recovery/"],
        build: github::webhook::component,
    },
    Kind {
        name: "copilot",
        owns: &["copilot/"],
        build: copilot::component,
    },
    Kind {
        name: "dora",
        owns: &["dora/"],
        build: dora::component,
    },
    Kind {
        name: "spacelift",
        owns: &["spacelift/"],
        build: spacelift::component,
    },
    Kind {
        name: "push",
        owns: &["push/"],
        build: crate::exposition::push::component,
    },
];

/// A kind of component: how to build it from the configuration (`None` when its section is
/// absent), and the scopes it may write, so that series it persisted while it was configured
/// are removed once it no longer is.
pub struct Kind {
    pub name: &'static str,
    /// Scope prefixes (ending in `/`) that only this kind writes.
    pub owns: &'static [&'static str],
    pub build: fn(&Context) -> Result<Option<Component>, BuildError>,
}

/// What every component is built from.
pub struct Context {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub queue: SharedQueue,
    pub telemetry: Arc<Telemetry>,
    /// The GitHub clients of the configured orgs (none without a `github` section).
    pub github: github::Clients,
    pub clock: Clock,
    /// This replica's role, for pollers that spread their work or fence their writes.
    pub leadership: Arc<crate::ha::Leadership>,
    pub shutdown: CancellationToken,
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        store: SharedStore,
        queue: SharedQueue,
        telemetry: Arc<Telemetry>,
        clock: Clock,
        leadership: Arc<crate::ha::Leadership>,
        shutdown: CancellationToken,
    ) -> Result<Context, BuildError> {
        let github = match &config.github {
            Some(gh) => {
                github::Clients::build(gh, store.clone(), telemetry.clone(), shutdown.clone())
                    .map_err(|e| BuildError::new("github", e))?
            }
            None => github::Clients::default(),
        };
        Ok(Context {
            config,
            store,
            queue,
            telemetry,
            github,
            clock,
            leadership,
            shutdown,
        })
    }
}

/// What a component runs. The service starts every part the same way: pollers on their
/// interval, consumers on their topics, routes on the listeners, collectors at scrape time.
#[derive(Default)]
pub struct Component {
    pub pollers: Vec<Arc<dyn Poller>>,
    pub consumers: Vec<Consumer>,
    /// Routes on the main listener.
    pub routes: axum::Router<Shared>,
    /// Webhook receivers: on the webhook listener when one is configured, else the main one.
    pub webhook_routes: axum::Router<Shared>,
    pub collectors: Vec<Arc<dyn Collect>>,
    /// The scopes this instance writes (exact names or prefixes ending in `/`); anything else
    /// under its kind's `owns` is stale.
    pub scopes: Vec<String>,
}

/// `count` consumers of `topic`, each handing deliveries to `handler`.
pub struct Consumer {
    pub topic: String,
    pub handler: Arc<dyn Handler>,
    pub count: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("building the {component} component: {message}")]
pub struct BuildError {
    pub component: &'static str,
    pub message: String,
}

impl BuildError {
    pub fn new(component: &'static str, e: impl std::fmt::Display) -> Self {
        BuildError {
            component,
            message: e.to_string(),
        }
    }
}

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
    /// With a version, the series replace the scope only if it is newer than the stored
    /// one ([`crate::store::Store::replace_scope_if_newer`]).
    pub version: Option<i64>,
    pub result: Result<Vec<Sample>, PollError>,
}

impl ScopeResult {
    pub fn new(scope: impl Into<String>, result: Result<Vec<Sample>, PollError>) -> Self {
        ScopeResult {
            scope: scope.into(),
            version: None,
            result,
        }
    }
}

#[async_trait]
pub trait Poller: Send + Sync {
    /// Source name as shown in `devmetrics_source_*{source}` and on the status page; unique
    /// among the running pollers.
    fn name(&self) -> &str;
    /// The scopes this poller writes: exact names, or prefixes ending in `/`. After a restart
    /// the age of their persisted values is the poller's last success.
    fn scopes(&self) -> Vec<String>;
    fn interval(&self) -> Duration;
    /// Deadline for one whole poll.
    fn timeout(&self) -> Duration;
    /// Every scope fetched this time. An empty result means the poll was skipped (not due,
    /// cooling down after failures): it leaves health and last-success time unchanged.
    async fn poll(&self) -> Vec<ScopeResult>;

    /// What the leader shares of this poller's own state after each poll (cooldowns, budget
    /// figures), so that the other replicas show it and a new leader carries on from it.
    fn shared_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes on the leader's [`Poller::shared_state`] on a replica that does not poll.
    fn adopt_state(&self, _state: serde_json::Value) {}
}

/// Where the leader shares each source's health and state with the other replicas.
const SHARED_NS: &str = "ha.sources";
/// How often a replica that does not poll shows the leader's view of its sources.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// A shared record outlives any pause of the pollers.
const SHARED_TTL: Duration = Duration::from_secs(7 * 86_400);

/// A source as the leader last left it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRecord {
    health: crate::telemetry::SharedHealth,
    #[serde(default)]
    state: Option<serde_json::Value>,
}

/// Runs `poller` every interval until `shutdown`, while this replica leads (at once when it
/// becomes leader, so a takeover misses no window). A poll that overruns its timeout is
/// abandoned and counted as a `timeout`. After each poll the leader shares the source's
/// health and state through the store (a fenced write); the other replicas show them, so
/// every replica's `/`, `/healthz` and `devmetrics_source_*` agree, and a new leader carries
/// on from the old one's cooldowns.
pub async fn run_poller(
    poller: Arc<dyn Poller>,
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    leadership: Arc<crate::ha::Leadership>,
    shutdown: CancellationToken,
) {
    let name = poller.name();
    telemetry.register_source(name);
    // After a restart the values persisted by the last run are served at once; their age
    // must be too.
    let owned = poller.scopes();
    let last = store
        .snapshot()
        .scopes
        .iter()
        .filter(|s| owns(&owned, &s.name))
        .map(|s| s.updated_at)
        .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
    if let Some(t) = last {
        telemetry.seed_last_success(name, t);
    }
    let mut leader = leadership.subscribe();
    let mut ticker = tokio::time::interval(poller.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow = tokio::time::interval(FOLLOW_EVERY);
    follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            _ = follow.tick() => {
                if !*leader.borrow() {
                    adopt(&*poller, &*store, &telemetry).await;
                }
                continue;
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*leader.borrow_and_update() {
                    continue;
                }
                ticker.reset();
            }
        }
        if *leader.borrow() {
            // The ticker's next tick is one interval after this one (later if this poll
            // overruns it).
            telemetry.source_next_poll(
                poller.name(),
                crate::clock::now_unix() + poller.interval().as_secs_f64(),
            );
            poll_once(&*poller, &*store, &telemetry).await;
            share(&*poller, &telemetry, &leadership).await;
        }
    }
}

async fn share(poller: &dyn Poller, telemetry: &Telemetry, leadership: &crate::ha::Leadership) {
    let Some(health) = telemetry.shared_health(poller.name()) else {
        return;
    };
    let record = SharedRecord {
        health,
        state: poller.shared_state(),
    };
    let value = serde_json::to_vec(&record).expect("a source record serializes");
    if let Err(e) = leadership
        .put_fenced(SHARED_NS, poller.name(), value, Some(SHARED_TTL))
        .await
    {
        tracing::debug!(source = poller.name(), error = %e, "could not share the source's health");
    }
}

async fn adopt(poller: &dyn Poller, store: &dyn crate::store::Store, telemetry: &Telemetry) {
    let record = match store.kv_get(SHARED_NS, poller.name()).await {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(source = poller.name(), error = %e, "the leader's view of the source is unavailable");
            return;
        }
    };
    match serde_json::from_slice::<SharedRecord>(&record) {
        Ok(r) => {
            telemetry.adopt_health(poller.name(), r.health);
            if let Some(state) = r.state {
                poller.adopt_state(state);
            }
        }
        Err(e) => {
            tracing::warn!(source = poller.name(), error = %e, "ignoring an unreadable shared source record")
        }
    }
}

/// Whether `scope` is one of `owned`: an exact name, or under a prefix ending in `/`.
pub fn owns(owned: &[String], scope: &str) -> bool {
    owned.iter().any(|o| {
        if o.ends_with('/') {
            scope.starts_with(o.as_str()) || scope == &o[..o.len() - 1]
        } else {
            scope == o
        }
    })
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
            use futures_util::StreamExt;
            // Written concurrently, so the store groups them into a few commits: a cycle of
            // 10,000 repos is 10,000 scopes, and one durable commit each would take seconds.
            let writes = results.into_iter().map(|r| async move {
                match r.result {
                    Ok(samples) => {
                        let written = match r.version {
                            Some(v) => store
                                .replace_scope_if_newer(&r.scope, v, samples)
                                .await
                                .map(|_| ()),
                            None => store.replace_scope(&r.scope, samples).await,
                        };
                        written.err().map(|e| PollError::new("store", e.to_string()))
                    }
                    Err(e) => {
                        tracing::warn!(source = poller.name(), scope = %r.scope, kind = e.kind, error = %e.message, "poll of scope failed; keeping its last values");
                        Some(e)
                    }
                }
            });
            let errors: Vec<Option<PollError>> = futures_util::stream::iter(writes)
                .buffered(64)
                .collect()
                .await;
            let first_error = errors.into_iter().flatten().next();
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
        fn name(&self) -> &str {
            "testsrc"
        }
        fn scopes(&self) -> Vec<String> {
            vec!["testsrc/".into()]
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn poll(&self) -> Vec<ScopeResult> {
            vec![ScopeResult::new(
                "testsrc/a",
                Err(PollError::new("http_status", "503")),
            )]
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
        let leadership =
            crate::ha::Leadership::new("solo".into(), Duration::from_secs(10), store.clone());
        leadership.step().await;
        let task = tokio::spawn(run_poller(
            Arc::new(Failing),
            store.clone(),
            telemetry.clone(),
            leadership,
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
