//! Opens the storage backends the configuration names: the one place the service, the CLI
//! and the tests get a store, a queue and a lease from.

use std::sync::Arc;

use crate::config::{Config, QueueBackend, StorageBackend};
use crate::db::Db;
use crate::queue::rabbitmq::DedupeKeys;
use crate::queue::sqlite::{DedupeTable, SqliteQueue};
use crate::queue::{RetryPolicy, SharedQueue};
use crate::store::{SharedLease, SharedStore, redis::RedisStore, sqlite::SqliteStore};
use crate::telemetry::Collect;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the embedded database: {0}")]
    Open(#[from] crate::db::Error),
    #[error("loading the store: {0}")]
    Store(#[from] crate::store::Error),
    #[error("loading the queue: {0}")]
    Queue(#[from] crate::queue::Error),
}

/// The opened backends.
pub struct Backends {
    pub store: SharedStore,
    pub queue: SharedQueue,
    pub lease: SharedLease,
    /// The backends' own figures (`devmetrics_store_*`, `devmetrics_queue_*`).
    pub collectors: Vec<Arc<dyn Collect>>,
}

/// Opens the backends; async because network backends connect (and check) before the
/// service starts.
pub async fn open(config: &Config) -> Result<Backends, Error> {
    let policy = RetryPolicy {
        max_attempts: config.queue.max_attempts,
        initial_backoff: config.queue.initial_backoff,
        max_backoff: config.queue.max_backoff,
        horizon: config.queue.retry_horizon,
    };
    match (config.storage.backend, config.queue.backend) {
        (StorageBackend::Sqlite, QueueBackend::Sqlite) => {
            open_sqlite(&config.storage.path, policy, config.queue.max_depth)
        }
        (StorageBackend::Sqlite, QueueBackend::RabbitMq) => {
            let db = Db::open(&config.storage.path)?;
            let store = Arc::new(SqliteStore::open(db.clone())?);
            let keys = Arc::new(DedupeTable::new(db.clone()));
            open_rabbitmq(db, keys, store, Rabbit::of(config, policy)).await
        }
        (StorageBackend::Redis, QueueBackend::RabbitMq) => {
            let store = open_redis_store(config).await?;
            // Deduplication keys are shared in Redis, so a delivery that reaches two replicas
            // is queued once; the local file keeps only the spool for broker outages.
            let db = Db::open(&config.storage.path)?;
            open_rabbitmq(db, store.clone(), store, Rabbit::of(config, policy)).await
        }
        (StorageBackend::Sqlite, QueueBackend::Redis) => {
            let db = Db::open(&config.storage.path)?;
            let store = Arc::new(SqliteStore::open(db.clone())?);
            open_redis_queue(db, store, config, policy).await
        }
        (StorageBackend::Redis, QueueBackend::Redis) => {
            let store = open_redis_store(config).await?;
            let db = Db::open(&config.storage.path)?;
            open_redis_queue(db, store, config, policy).await
        }
        (StorageBackend::Redis, QueueBackend::Sqlite) => {
            let store = open_redis_store(config).await?;
            // The queue stays in the local file: it holds only what this replica accepted.
            let db = Db::open(&config.storage.path)?;
            let queue: SharedQueue = Arc::new(SqliteQueue::open_with_depth(
                db,
                policy,
                config.queue.max_depth,
            )?);
            Ok(Backends {
                store: store.clone(),
                lease: store.clone(),
                collectors: vec![store, Arc::new(crate::queue::Collector(queue.clone()))],
                queue,
            })
        }
    }
}

/// The store in Redis, as `storage.redis` says.
async fn open_redis_store(config: &Config) -> Result<Arc<RedisStore>, Error> {
    let redis = config
        .storage
        .redis
        .as_ref()
        .expect("storage.redis is resolved when storage.backend is redis");
    Ok(RedisStore::open(redis).await?)
}

impl Rabbit {
    fn of(config: &Config, policy: RetryPolicy) -> Rabbit {
        Rabbit {
            config: config
                .queue
                .rabbitmq
                .clone()
                .expect("resolving requires queue.rabbitmq with queue.backend rabbitmq"),
            policy,
            max_depth: config.queue.max_depth,
        }
    }
}

/// What the queue on RabbitMQ is opened with.
struct Rabbit {
    config: crate::config::RabbitMqConfig,
    policy: RetryPolicy,
    /// Messages the spool holds per topic.
    max_depth: u64,
}

/// The queue on RabbitMQ beside `store` (also the lease), with its deduplication keys in
/// `keys` and, for outages, a spool in the SQLite file `db` (`queue::spool`).
async fn open_rabbitmq<S: crate::store::Store + crate::store::Lease + Collect + 'static>(
    db: Db,
    keys: Arc<dyn DedupeKeys>,
    store: Arc<S>,
    rabbit: Rabbit,
) -> Result<Backends, Error> {
    use crate::queue::rabbitmq::{RabbitMqQueue, Settings};
    use crate::queue::spool::Spooled;
    let Rabbit {
        config,
        policy,
        max_depth,
    } = rabbit;
    let settings = Settings {
        url: config.url,
        prefix: config.prefix,
        policy: policy.clone(),
        queue_expiry: config.test_queue_expiry,
        ca_pem: config.ca_pem,
    };
    let broker = RabbitMqQueue::open(settings, keys, store.clone()).await?;
    let spool_keys = Arc::new(DedupeTable::new(db.clone()));
    let spool = SqliteQueue::open_with_depth(db, policy, max_depth)?;
    let queue: SharedQueue = Arc::new(Spooled::open(broker, spool, spool_keys).await?);
    Ok(Backends {
        store: store.clone(),
        lease: store.clone(),
        collectors: vec![store, Arc::new(crate::queue::Collector(queue.clone()))],
        queue,
    })
}

/// The queue on Redis streams beside `store` (also the lease); its deduplication keys live
/// beside the streams, so every replica shares them. While Redis cannot be reached, publishes
/// spool in the SQLite file `db` (`queue::spool`).
async fn open_redis_queue<S: crate::store::Store + crate::store::Lease + Collect + 'static>(
    db: Db,
    store: Arc<S>,
    config: &Config,
    policy: RetryPolicy,
) -> Result<Backends, Error> {
    use crate::queue::redis::{RedisQueue, Settings};
    let redis = config
        .queue
        .redis
        .clone()
        .expect("resolving requires queue.redis with queue.backend redis");
    let settings = Settings {
        redis: redis.connection,
        url_key: redis.url_key,
        policy: policy.clone(),
        max_depth: config.queue.max_depth,
        visibility_timeout: redis.visibility_timeout,
    };
    let broker = RedisQueue::open(settings).await?;
    let spool_keys = Arc::new(DedupeTable::new(db.clone()));
    let spool = SqliteQueue::open_with_depth(db, policy, config.queue.max_depth)?;
    let queue: SharedQueue =
        Arc::new(crate::queue::spool::Spooled::open(broker, spool, spool_keys).await?);
    Ok(Backends {
        store: store.clone(),
        lease: store.clone(),
        collectors: vec![store, Arc::new(crate::queue::Collector(queue.clone()))],
        queue,
    })
}

/// Store, queue and lease in one SQLite file, sharing its writer.
pub fn open_sqlite(
    path: &std::path::Path,
    policy: RetryPolicy,
    max_depth: u64,
) -> Result<Backends, Error> {
    let db = Db::open(path)?;
    let store = Arc::new(SqliteStore::open(db.clone())?);
    // One database, one writer: a message's handling can commit with its publish.
    let queue: SharedQueue =
        Arc::new(SqliteQueue::open_with_depth(db, policy, max_depth)?.handling_into(store.clone()));
    Ok(Backends {
        store: store.clone(),
        lease: store.clone(),
        collectors: vec![store, Arc::new(crate::queue::Collector(queue.clone()))],
        queue,
    })
}
