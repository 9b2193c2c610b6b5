//! Which team owns a repository or Jira project: the static `teams` list, and the Backstage
//! catalog (`github.com/project-slug` annotation → `spec.owner`). The catalog is read whole
//! in the background and kept in memory and in the store, so a webhook never waits on
//! Backstage and a restart starts from the last answer.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::config::{BackstageConfig, Teams, UNKNOWN_TEAM};
use crate::store::SharedStore;
use crate::telemetry::{Outcomes, Telemetry};

const NS: &str = "dora.catalog";
const PAGE: usize = 500;
/// Entities read at most: a bound on memory whatever the catalog holds.
const MAX_ENTITIES: usize = 200_000;
/// How long a webhook waits for the first catalog load after a start.
const FIRST_LOAD: Duration = Duration::from_secs(10);
pub const OUTCOMES: &[&str] = &["refreshed", "failed"];
/// Its health in `devmetrics_source_up` and `/healthz`, like a poller's.
pub const SOURCE: &str = "dora/backstage";
/// A failed refresh is tried again after this, doubling up to the refresh interval.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Backstage answered {0}")]
    Status(u16),
    #[error("Backstage request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("Backstage answer is not a list of entities: {0}")]
    Body(#[from] serde_json::Error),
}

impl Error {
    /// The bounded `result` label of `devmetrics_source_scrapes_total`.
    fn kind(&self) -> &'static str {
        match self {
            Error::Status(s) if *s >= 500 => "http_5xx",
            Error::Status(_) => "http_4xx",
            Error::Http(e) if e.is_timeout() => "timeout",
            Error::Http(_) => "network",
            Error::Body(_) => "decode",
        }
    }
}

// Backstage answers in camelCase; dora-exporter's test stub capitalised the fields.
#[derive(Deserialize)]
struct Entity {
    #[serde(default, alias = "Metadata")]
    metadata: Metadata,
    #[serde(default, alias = "Spec")]
    spec: Spec,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default, alias = "Annotations")]
    annotations: HashMap<String, String>,
}

#[derive(Default, Deserialize)]
struct Spec {
    #[serde(alias = "Owner")]
    owner: Option<String>,
}

pub struct Backstage {
    config: BackstageConfig,
    http: reqwest::Client,
    store: SharedStore,
    owners: parking_lot::RwLock<HashMap<String, String>>,
    loaded: tokio::sync::watch::Sender<bool>,
    pub stats: Arc<Outcomes>,
    telemetry: Arc<Telemetry>,
}

impl Backstage {
    pub fn new(
        config: BackstageConfig,
        store: SharedStore,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Backstage> {
        Arc::new(Backstage {
            http: reqwest::Client::builder()
                .timeout(config.request_timeout)
                .build()
                .expect("client builds"),
            config,
            store,
            owners: Default::default(),
            loaded: tokio::sync::watch::channel(false).0,
            stats: Arc::new(Outcomes::new(
                crate::metrics::DEVMETRICS_DORA_EVENTS_TOTAL,
                "backstage",
                OUTCOMES,
            )),
            telemetry,
        })
    }

    /// Reads the whole catalog: every entity with the project-slug annotation, page by page.
    pub async fn fetch(&self) -> Result<HashMap<String, String>, Error> {
        let url = format!("{}/api/catalog/entities", self.config.endpoint);
        let mut owners = HashMap::new();
        let mut offset = 0;
        loop {
            let mut req = self.http.get(&url).query(&[
                ("filter", "metadata.annotations.github.com/project-slug"),
                ("fields", "metadata.annotations,spec.owner"),
                ("limit", &PAGE.to_string()),
                ("offset", &offset.to_string()),
            ]);
            if let Some(t) = &self.config.token {
                req = req.bearer_auth(t.expose());
            }
            let resp = req.send().await?;
            if !resp.status().is_success() {
                return Err(Error::Status(resp.status().as_u16()));
            }
            let page: Vec<Entity> = serde_json::from_slice(&resp.bytes().await?)?;
            let n = page.len();
            for e in page {
                let slug = e.metadata.annotations.get("github.com/project-slug");
                if let (Some(slug), Some(owner)) = (slug, e.spec.owner.filter(|o| !o.is_empty())) {
                    owners
                        .entry(slug.trim().to_ascii_lowercase())
                        .or_insert(owner);
                }
            }
            offset += n;
            // A short page is the last; a catalog that ignores paging answers everything at
            // once (a longer page).
            if n != PAGE || offset >= MAX_ENTITIES {
                return Ok(owners);
            }
        }
    }

    fn adopt(&self, owners: HashMap<String, String>) {
        *self.owners.write() = owners;
        self.loaded.send_replace(true);
    }

    /// Refreshes now; on failure the last answer stays.
    pub async fn refresh(&self) -> Result<usize, Error> {
        let started = std::time::Instant::now();
        let fetched = self.fetch().await;
        let health = match &fetched {
            Ok(_) => Ok(()),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        self.telemetry
            .source_scraped(SOURCE, started.elapsed(), health);
        match fetched {
            Ok(owners) => {
                let n = owners.len();
                let saved = serde_json::to_vec(&owners).expect("owners encode");
                if let Err(e) = self.store.kv_put(NS, "owners", saved, None).await {
                    tracing::warn!(error = %e, "the Backstage catalog could not be saved");
                }
                self.adopt(owners);
                self.stats.count("refreshed");
                Ok(n)
            }
            Err(e) => {
                self.stats.count("failed");
                Err(e)
            }
        }
    }

    /// Loads the saved catalog, then refreshes every interval until `shutdown`.
    pub fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        tokio::spawn(async move {
            if let Ok(Some(b)) = self.store.kv_get(NS, "owners").await
                && let Ok(owners) = serde_json::from_slice(&b)
            {
                self.adopt(owners);
            }
            let mut retry = RETRY_AFTER;
            loop {
                let wait = match self.refresh().await {
                    Ok(n) => {
                        tracing::debug!(repositories = n, "Backstage catalog refreshed");
                        retry = RETRY_AFTER;
                        self.config.refresh_interval
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?retry, "Backstage catalog not refreshed; the last answer stays");
                        let wait = retry.min(self.config.refresh_interval);
                        retry = (retry * 2).min(self.config.refresh_interval);
                        wait
                    }
                };
                // Tried once: webhooks stop waiting, even with no catalog to answer them.
                self.loaded.send_replace(true);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    fn owner(&self, repository: &str) -> Option<String> {
        self.owners
            .read()
            .get(&repository.to_ascii_lowercase())
            .cloned()
    }

    async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = tokio::time::timeout(FIRST_LOAD, rx.wait_for(|l| *l)).await;
    }
}

/// The owning team of a repository or project.
#[derive(Clone, Default)]
pub struct TeamOf {
    pub teams: Teams,
    pub backstage: Option<Arc<Backstage>>,
}

impl TeamOf {
    /// The static list first, then the catalog's owner, else `Unknown`.
    pub async fn of_repository(&self, repository: &str) -> String {
        let t = self.teams.of_repository(repository);
        if t != UNKNOWN_TEAM {
            return t.to_string();
        }
        let Some(b) = &self.backstage else {
            return t.to_string();
        };
        b.wait_loaded().await;
        b.owner(repository)
            .unwrap_or_else(|| UNKNOWN_TEAM.to_string())
    }

    /// Jira projects are mapped by the static list only (Backstage does not name them).
    pub fn of_project(&self, key: &str) -> &str {
        self.teams.of_project(key)
    }

    /// Every team the static list names, so each shows its four keys from the start.
    pub fn names(&self) -> Vec<String> {
        self.teams.0.iter().map(|t| t.name.clone()).collect()
    }
}
