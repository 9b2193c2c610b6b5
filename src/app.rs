//! Wiring on one screen: open the storage backends, build every configured component, start
//! what each runs, serve the listeners, and shut everything down in order.

use anyhow::Context;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::queue::{self, SharedQueue};
use crate::server::{self, AppState, Shared, WebSettings, webconfig};
use crate::sources;
use crate::storage;
use crate::store::SharedStore;
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

/// The seam for tests and `demo`: runs the service on already-bound listeners until
/// `shutdown` fires.
pub async fn launch(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Launched> {
    launch_with(config, listeners, shutdown, sources::COMPONENTS).await
}

/// [`launch`] with another list of component kinds.
pub async fn launch_with(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
    kinds: &'static [sources::Kind],
) -> anyhow::Result<Launched> {
    let config = Arc::new(config);
    let web = match &config.web.config_file {
        Some(p) => webconfig::load(p).context("loading --web.config.file")?,
        None => WebSettings::none(),
    };
    let web = Arc::new(web);
    let backends = storage::open(&config).await?;
    let (store, queue) = (backends.store.clone(), backends.queue.clone());
    let telemetry = Arc::new(Telemetry::default());
    for c in backends.collectors {
        telemetry.add_collector(c);
    }
    let leadership = crate::ha::Leadership::new(
        config.ha.replica_id.clone(),
        config.ha.lease_ttl,
        backends.lease.clone(),
    );
    telemetry.add_collector(leadership.clone());
    // Asked once before the pollers start, so a lone replica polls at once.
    leadership.step().await;
    let state = Arc::new(AppState {
        config: config.clone(),
        store: store.clone(),
        queue: queue.clone(),
        telemetry: telemetry.clone(),
        leadership: leadership.clone(),
        ready: Default::default(),
        renders: Arc::new(tokio::sync::Semaphore::new(server::MAX_RENDERS)),
        basic_auth: web.basic_auth.clone(),
    });

    let ctx = sources::Context::new(
        config.clone(),
        store.clone(),
        queue.clone(),
        telemetry.clone(),
        Clock::system(),
        leadership.clone(),
        shutdown.clone(),
    )?;
    let mut built = Vec::new();
    for kind in kinds {
        built.push((kind, (kind.build)(&ctx)?));
    }
    drop_stale_scopes(&built, &*store).await?;

    let mut tasks = JoinSet::new();
    tasks.spawn(leadership.clone().run(shutdown.clone()));
    let mut routes: Router<Shared> = Router::new();
    let mut webhook_routes: Router<Shared> = Router::new();
    for component in built.into_iter().filter_map(|(_, c)| c) {
        for c in component.collectors {
            telemetry.add_collector(c);
        }
        for p in component.pollers {
            tasks.spawn(sources::run_poller(
                p,
                store.clone(),
                telemetry.clone(),
                leadership.clone(),
                shutdown.clone(),
            ));
        }
        for c in component.consumers {
            for _ in 0..c.count {
                tasks.spawn(queue::run_consumer(
                    queue.clone(),
                    c.topic.clone(),
                    c.handler.clone(),
                    shutdown.clone(),
                ));
            }
        }
        routes = routes.merge(component.routes);
        webhook_routes = webhook_routes.merge(component.webhook_routes);
    }
    tasks.spawn(collect_garbage(
        store.clone(),
        queue.clone(),
        crate::store::Retention {
            keys: config.storage.idempotency_retention,
            members: config.storage.gauge_expiry,
        },
        config.queue.dedupe_retention,
        shutdown.clone(),
    ));

    let limits = server::ConnLimits {
        read_header_timeout: config.web.read_header_timeout,
        max_connections: config.web.max_connections,
    };
    let mut webhook_addr = None;
    match config.webhooks.listen_address {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (webhooks.listen_address)"))?;
            webhook_addr = Some(listener.local_addr()?);
            tasks.spawn(server::serve(
                listener,
                server::webhook_router(state.clone(), webhook_routes),
                web.clone(),
                limits,
                shutdown.clone(),
                DRAIN,
            ));
        }
        None => routes = routes.merge(webhook_routes),
    }
    let router = server::router(state.clone(), routes);
    let mut addrs = Vec::new();
    for listener in listeners {
        addrs.push(listener.local_addr()?);
        tasks.spawn(server::serve(
            listener,
            router.clone(),
            web.clone(),
            limits,
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

/// Removes idempotency and deduplication keys past their retention and expires gauge
/// members, hourly.
async fn collect_garbage(
    store: SharedStore,
    queue: SharedQueue,
    keys: crate::store::Retention,
    dedupe: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(GC_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.gc(&keys).await {
            tracing::warn!(error = %e, "removing expired idempotency keys and gauge members failed");
        }
        if let Err(e) = queue.gc(dedupe).await {
            tracing::warn!(error = %e, "removing expired deduplication keys failed");
        }
    }
}

/// Scopes persisted by a component that is no longer configured (or a part of it, such as a
/// GitHub org no longer listed) would otherwise be served forever with a frozen age; they are
/// removed at start. Scopes no kind owns (event counters, which are history) stay.
async fn drop_stale_scopes(
    built: &[(&sources::Kind, Option<sources::Component>)],
    store: &dyn crate::store::Store,
) -> anyhow::Result<()> {
    let stale: Vec<String> = store
        .snapshot()
        .scopes
        .iter()
        .map(|s| s.name.to_string())
        .filter(|name| {
            built.iter().any(|(kind, c)| {
                kind.owns.iter().any(|o| name.starts_with(o))
                    && !c.as_ref().is_some_and(|c| sources::owns(&c.scopes, name))
            })
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
