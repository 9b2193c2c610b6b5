//! Wiring on one screen: open the database, build store and queue, start sources and
//! listeners, and shut everything down in order.

use anyhow::Context;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::queue::{self, RetryPolicy, SharedQueue, sqlite::SqliteQueue};
use crate::server::{self, AppState, Shared, WebSettings, webconfig};
use crate::sources::{self, Poller};
use crate::store::{SharedStore, sqlite::SqliteStore};
use crate::telemetry::Telemetry;

/// How long shutdown waits for in-flight requests and polls.
const DRAIN: Duration = Duration::from_secs(10);
/// How often idempotency and deduplication keys past their retention are removed.
const GC_EVERY: Duration = Duration::from_secs(3600);

pub struct Launched {
    pub addrs: Vec<SocketAddr>,
    /// The separate webhook listener's address, when `webhooks.listen_address` is set.
    pub webhook_addr: Option<SocketAddr>,
    pub state: Shared,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Launched {
    /// Waits until shutdown is requested and every task has drained.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        self.state.ready.store(false, Ordering::Relaxed);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tracing::warn!("shutdown: some tasks did not stop in time");
        }
    }
}

/// Builds the sources enabled in `config`.
fn pollers(config: &Config, telemetry: &Arc<Telemetry>) -> anyhow::Result<Vec<Arc<dyn Poller>>> {
    let _ = (config, telemetry);
    #[allow(unused_mut)]
    let mut out: Vec<Arc<dyn Poller>> = Vec::new();
    // github (issue 4)
    //
    // spacelift (issue 6)
    if let Some(c) = &config.spacelift {
        let poller = sources::spacelift::Source::new(c.clone(), telemetry.clone())
            .context("building the Spacelift client")?;
        out.push(Arc::new(poller));
    }
    Ok(out)
}

/// The seam for tests and `demo`: runs the service on already-bound listeners until
/// `shutdown` fires.
pub async fn launch(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Launched> {
    let config = Arc::new(config);
    let web = match &config.web.config_file {
        Some(p) => webconfig::load(p).context("loading --web.config.file")?,
        None => WebSettings::none(),
    };
    let web = Arc::new(web);
    let db = Db::open(&config.storage.path).context("opening the embedded database")?;
    let store = Arc::new(SqliteStore::open(db.clone()).context("loading the store")?);
    let sqlite_queue = SqliteQueue::open(
        db,
        RetryPolicy {
            max_attempts: config.queue.max_attempts,
            initial_backoff: config.queue.initial_backoff,
            max_backoff: config.queue.max_backoff,
        },
    )
    .context("loading the queue")?;
    let queue: SharedQueue = Arc::new(sqlite_queue.clone());
    let telemetry = Arc::new(Telemetry::default());
    telemetry.add_collector(store.clone());
    telemetry.add_collector(Arc::new(queue::Collector(queue.clone())));
    let shared_store: SharedStore = store.clone();

    let state = Arc::new(AppState {
        config: config.clone(),
        store: shared_store.clone(),
        queue: queue.clone(),
        telemetry: telemetry.clone(),
        ready: Default::default(),
        renders: Arc::new(tokio::sync::Semaphore::new(server::MAX_RENDERS)),
        basic_auth: web.basic_auth.clone(),
    });

    drop_unconfigured_scopes(&config, &*shared_store).await?;

    let mut tasks = JoinSet::new();
    for poller in pollers(&config, &telemetry)? {
        tasks.spawn(sources::run_poller(
            poller,
            shared_store.clone(),
            telemetry.clone(),
            shutdown.clone(),
        ));
    }
    // github (issue 4): one activity poller per org, and the backfill consumers.
    if let Some(gh) = &config.github {
        let github = sources::github::Github::build(
            gh,
            shared_store.clone(),
            queue.clone(),
            telemetry.clone(),
            shutdown.clone(),
            crate::clock::Clock::system(),
        )
        .context("building the GitHub clients")?;
        for p in &github.pollers {
            tasks.spawn(sources::run_poller(
                p.clone(),
                shared_store.clone(),
                telemetry.clone(),
                shutdown.clone(),
            ));
        }
        for c in github.consumers(shutdown.clone()) {
            tasks.spawn(c);
        }
    }
    {
        let (store, queue, shutdown) = (store.clone(), sqlite_queue, shutdown.clone());
        let (keys, dedupe) = (
            config.storage.idempotency_retention,
            config.queue.dedupe_retention,
        );
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(GC_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = store.gc(keys).await {
                    tracing::warn!(error = %e, "removing expired idempotency keys failed");
                }
                if let Err(e) = queue.gc(dedupe).await {
                    tracing::warn!(error = %e, "removing expired deduplication keys failed");
                }
            }
        });
    }

    #[allow(unused_mut)]
    let mut extra: Router<Shared> = Router::new();
    // webhooks (issue 5)
    let mut webhook_addr = None;
    if let Some(gh) = &config.webhooks.github {
        use crate::sources::webhooks::github;
        let receiver = github::Receiver::new(gh, queue.clone());
        telemetry.add_collector(receiver.stats.clone());
        let routes = github::routes(receiver);
        match config.webhooks.listen_address {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (webhooks.listen_address)"))?;
                webhook_addr = Some(listener.local_addr()?);
                tasks.spawn(server::serve(
                    listener,
                    server::webhook_router(state.clone(), routes),
                    web.clone(),
                    config.web.read_header_timeout,
                    shutdown.clone(),
                    DRAIN,
                ));
            }
            None => extra = extra.merge(routes),
        }
        use crate::exposition::{appinsights, otlp, sink};
        let mut sinks: Vec<Arc<dyn sink::Sink>> = Vec::new();
        if let Some(o) = &config.webhooks.sinks.otlp {
            let headers = o
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            sinks.push(Arc::new(otlp::Otlp::new(
                &o.endpoint,
                o.protocol,
                headers,
                o.service_name.clone(),
            )));
        }
        if let Some(c) = &config.webhooks.sinks.appinsights {
            sinks.push(Arc::new(appinsights::AppInsights::new(c.clone())));
        }
        let sink_topics: Arc<Vec<String>> =
            Arc::new(sinks.iter().map(|s| sink::topic(s.name())).collect());
        for s in sinks {
            tasks.spawn(sink::run(queue.clone(), s, shutdown.clone()));
        }
        for p in webhook_pollers(&config, gh, &shared_store, &telemetry, &shutdown)? {
            tasks.spawn(sources::run_poller(
                p,
                shared_store.clone(),
                telemetry.clone(),
                shutdown.clone(),
            ));
        }
        let opts = Arc::new(gh.workflows.clone());
        for _ in 0..gh.consumers {
            tasks.spawn(crate::processors::run_consumer(
                queue.clone(),
                shared_store.clone(),
                opts.clone(),
                sink_topics.clone(),
                shutdown.clone(),
            ));
        }
    }
    // spacelift compatibility routes (issue 6)
    if config.spacelift.is_some() {
        extra = extra.merge(sources::spacelift::compat_routes());
    }
    let router = server::router(state.clone(), extra);
    let mut addrs = Vec::new();
    for listener in listeners {
        addrs.push(listener.local_addr()?);
        tasks.spawn(server::serve(
            listener,
            router.clone(),
            web.clone(),
            config.web.read_header_timeout,
            shutdown.clone(),
            DRAIN,
        ));
    }
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        addresses = ?addrs,
        tls = web.tls.is_some(),
        basic_auth = web.basic_auth.is_some(),
        storage = %config.storage.path.display(),
        "devmetrics started"
    );
    Ok(Launched {
        addrs,
        webhook_addr,
        state,
        tasks,
        shutdown,
    })
}

/// The runner inventory and missed-delivery recovery, on the GitHub client of the org they
/// name (its credentials and base URL from `github.orgs`).
fn webhook_pollers(
    config: &Config,
    gh: &crate::sources::webhooks::GithubConfig,
    store: &SharedStore,
    telemetry: &Arc<Telemetry>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Arc<dyn Poller>>> {
    use crate::sources::github::client::{Budgets, Client};
    use crate::sources::webhooks::actions::{Recovery, Runners};
    let mut out: Vec<Arc<dyn Poller>> = Vec::new();
    let Some(github) = &config.github else {
        return Ok(out);
    };
    let budgets = Budgets::default();
    let client = |org: &str| -> anyhow::Result<Arc<Client>> {
        let o = github
            .orgs
            .iter()
            .find(|o| o.org.eq_ignore_ascii_case(org))
            .with_context(|| format!("org {org} is not configured under github.orgs"))?;
        Ok(Arc::new(
            Client::new(
                github,
                o,
                store.clone(),
                telemetry.clone(),
                &budgets,
                shutdown.clone(),
            )
            .with_context(|| format!("building the GitHub client for {org}"))?,
        ))
    };
    if let Some(r) = &gh.runners {
        for org in &r.orgs {
            let repos = r
                .repos
                .iter()
                .filter(|repo| {
                    repo.split_once('/')
                        .is_some_and(|(o, _)| o.eq_ignore_ascii_case(org))
                })
                .cloned()
                .collect();
            out.push(Arc::new(Runners::new(
                client(org)?,
                repos,
                r.interval,
                gh.workflows.max_runner_labels.max(8),
            )));
        }
    }
    for r in &gh.recovery {
        let poller = Recovery::new(
            client(&r.org)?,
            r.target,
            store.clone(),
            r.interval,
            r.lookback,
        );
        telemetry.add_collector(poller.stats.clone());
        out.push(Arc::new(poller));
    }
    Ok(out)
}

/// Scopes persisted by a source that is no longer configured (or a GitHub org no longer
/// listed) would otherwise be served forever with a frozen age; they are removed at start.
async fn drop_unconfigured_scopes(
    config: &Config,
    store: &dyn crate::store::Store,
) -> anyhow::Result<()> {
    let orgs: Vec<String> = config
        .github
        .as_ref()
        .map(|g| g.orgs.iter().map(|o| o.org.clone()).collect())
        .unwrap_or_default();
    let stale: Vec<String> = store
        .snapshot()
        .scopes
        .iter()
        .map(|s| s.name.to_string())
        .filter(|name| {
            if name.starts_with("spacelift/") {
                return config.spacelift.is_none();
            }
            if let Some(rest) = name.strip_prefix("github/") {
                let org = rest.split('/').next().unwrap_or("");
                return !orgs.iter().any(|o| o == org);
            }
            // Runner inventory and recovery figures are gauges of what is polled now. The
            // workflow counters (`webhooks/workflows`) stay: they are history, not state.
            let gh = config.webhooks.github.as_ref();
            if name.starts_with("webhooks/runners/") {
                return gh.and_then(|g| g.runners.as_ref()).is_none();
            }
            if let Some(rest) = name.strip_prefix("webhooks/recovery/") {
                let org = rest.split('/').next().unwrap_or("");
                return !gh.is_some_and(|g| g.recovery.iter().any(|r| r.org == org));
            }
            false
        })
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            scopes = stale.len(),
            "removing stored series of sources no longer configured"
        );
        store
            .drop_scopes(stale)
            .await
            .context("removing unconfigured scopes")?;
    }
    Ok(())
}

pub async fn bind(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in &config.web.listen_addresses {
        out.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        );
    }
    Ok(out)
}

/// Resolves when SIGTERM or SIGINT arrives, then cancels `token`.
pub async fn signals(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
        _ = token.cancelled() => return,
    }
    tracing::info!("shutdown requested; draining");
    token.cancel();
}
