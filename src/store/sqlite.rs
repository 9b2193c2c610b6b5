//! The embedded store: series, idempotency keys and key-value state in the SQLite file,
//! mirrored in memory for scrapes.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

use super::{Applied, Error, State, Store};
use crate::clock::now_unix;
use crate::db::{Db, Finish};
use crate::metrics::{
    self, FamilyId, HistogramValue, Labels, Op, Sample, ScopeData, Snapshot, Update, Value, family,
};

pub struct SqliteStore {
    db: Db,
    state: Arc<State>,
    pub duplicates: AtomicU64,
}

impl SqliteStore {
    /// Opens the store on `db` and loads every persisted series into memory.
    pub fn open(db: Db) -> Result<SqliteStore, Error> {
        let state = Arc::new(State::default());
        let (scopes, skipped) = db.read_blocking(load)?;
        if skipped > 0 {
            tracing::warn!(
                series = skipped,
                "ignored persisted series of families this version no longer has"
            );
        }
        for data in scopes {
            state.replace(data);
        }
        Ok(SqliteStore {
            db,
            state,
            duplicates: AtomicU64::new(0),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Forgets idempotency keys and expired key-value entries older than `retention`.
    pub async fn gc(&self, retention: Duration) -> Result<usize, Error> {
        let cutoff = now_unix() as i64 - retention.as_secs() as i64;
        let now = now_unix() as i64;
        Ok(self
            .db
            .write(move |c| {
                let a = c.execute("DELETE FROM applied_keys WHERE applied_at < ?1", [cutoff])?;
                let b = c.execute(
                    "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at < ?1",
                    [now],
                )?;
                Ok(a + b)
            })
            .await?)
    }
}

fn load(conn: &Connection) -> rusqlite::Result<(Vec<ScopeData>, usize)> {
    let mut scopes: BTreeMap<String, ScopeData> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT scope, updated_at FROM scopes")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?;
    for row in rows {
        let (name, updated_at) = row?;
        scopes.insert(
            name.clone(),
            ScopeData {
                name: Arc::from(name.as_str()),
                updated_at,
                version: 0,
                families: BTreeMap::new(),
            },
        );
    }
    let mut skipped = 0;
    let mut stmt = conn.prepare("SELECT scope, family, labels, value, buckets FROM series")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let scope: String = r.get(0)?;
        let fam: String = r.get(1)?;
        let Some(fid) = metrics::lookup(&fam) else {
            skipped += 1;
            continue;
        };
        let value = decode_value(
            fid,
            r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
            r.get::<_, Option<String>>(4)?.as_deref(),
        );
        let labels = Labels::from_rendered(&r.get::<_, String>(2)?);
        scopes
            .entry(scope.clone())
            .or_insert_with(|| ScopeData {
                name: Arc::from(scope.as_str()),
                ..Default::default()
            })
            .families
            .entry(fid)
            .or_default()
            .insert(labels, value);
    }
    Ok((scopes.into_values().collect(), skipped))
}

fn decode_value(fid: FamilyId, value: f64, buckets: Option<&str>) -> Value {
    match buckets {
        None => Value::Number(value),
        Some(b) => {
            let n = family(fid).buckets.len() + 1;
            let mut counts: Vec<u64> = b.split(',').filter_map(|x| x.parse().ok()).collect();
            // A catalog change in bucket layout resets the histogram rather than misreading it.
            let sum = if counts.len() == n { value } else { 0.0 };
            if counts.len() != n {
                counts = vec![0; n];
            }
            Value::Histogram(Box::new(HistogramValue {
                counts: counts.into_boxed_slice(),
                sum,
            }))
        }
    }
}

fn encode_value(v: &Value) -> (f64, Option<String>) {
    match v {
        Value::Number(x) => (*x, None),
        Value::Histogram(h) => {
            let mut s = String::with_capacity(h.counts.len() * 3);
            for (i, c) in h.counts.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(itoa::Buffer::new().format(*c));
            }
            (h.sum, Some(s))
        }
    }
}

fn write_series(
    conn: &Connection,
    scope: &str,
    fid: FamilyId,
    labels: &Labels,
    v: &Value,
) -> rusqlite::Result<()> {
    let (value, buckets) = encode_value(v);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO series (scope, family, labels, value, buckets) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![scope, family(fid).name, labels.as_str(), value, buckets])?;
    Ok(())
}

fn read_series(
    conn: &Connection,
    scope: &str,
    fid: FamilyId,
    labels: &Labels,
) -> rusqlite::Result<Option<Value>> {
    conn.prepare_cached(
        "SELECT value, buckets FROM series WHERE scope = ?1 AND family = ?2 AND labels = ?3",
    )?
    .query_row(params![scope, family(fid).name, labels.as_str()], |r| {
        Ok(decode_value(
            fid,
            r.get(0)?,
            r.get::<_, Option<String>>(1)?.as_deref(),
        ))
    })
    .optional()
}

fn apply_op(fid: FamilyId, current: Option<Value>, op: &Op) -> Value {
    match op {
        Op::Inc(d) | Op::Add(d) => {
            Value::Number(current.and_then(|v| v.as_f64()).unwrap_or(0.0) + d)
        }
        Op::Set(v) => Value::Number(*v),
        Op::Observe(x) => {
            let bounds = family(fid).buckets;
            let mut h = match current {
                Some(Value::Histogram(h)) => h,
                _ => Box::new(HistogramValue::new(bounds)),
            };
            h.observe(bounds, *x);
            Value::Histogram(h)
        }
    }
}

fn reply<T: Send + 'static>(
    tx: oneshot::Sender<Result<T, Error>>,
    value: T,
    effect: impl FnOnce() + Send + 'static,
) -> Finish {
    Box::new(move |r| {
        let _ = tx.send(match r {
            Ok(()) => {
                effect();
                Ok(value)
            }
            Err(e) => Err(Error::Db(crate::db::Error::Commit(e.to_string()))),
        });
    })
}

fn fail<T: Send + 'static>(tx: oneshot::Sender<Result<T, Error>>, e: rusqlite::Error) -> Finish {
    Box::new(move |_| {
        let _ = tx.send(Err(Error::Db(crate::db::Error::Sql(e))));
    })
}

async fn recv<T>(rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
    rx.await
        .map_err(|_| Error::Db(crate::db::Error::WriterGone))?
}

#[async_trait]
impl Store for SqliteStore {
    fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }

    fn health(&self) -> Result<(), String> {
        match self.db.stats.last_error.lock().clone() {
            None => Ok(()),
            Some(e) => Err(format!("last commit failed: {e}")),
        }
    }

    async fn replace_scope(&self, scope: &str, samples: Vec<Sample>) -> Result<(), Error> {
        let now = now_unix();
        let mut data = ScopeData {
            name: Arc::from(scope),
            updated_at: now,
            version: 0,
            families: BTreeMap::new(),
        };
        for s in samples {
            data.families
                .entry(s.family)
                .or_default()
                .insert(s.labels, s.value);
        }
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db.submit(Box::new(move |conn| {
            let run = || -> rusqlite::Result<()> {
                conn.prepare_cached("DELETE FROM series WHERE scope = ?1")?
                    .execute([&*data.name])?;
                for (fid, series) in &data.families {
                    for (labels, value) in series {
                        write_series(conn, &data.name, *fid, labels, value)?;
                    }
                }
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO scopes (scope, updated_at) VALUES (?1, ?2)",
                )?
                .execute(params![&*data.name, data.updated_at])?;
                Ok(())
            };
            match run() {
                Ok(()) => Ok(reply(tx, (), move || state.replace(data))),
                Err(e) => Err(fail(tx, e)),
            }
        }))?;
        recv(rx).await
    }

    async fn apply_once(
        &self,
        key: &str,
        scope: &str,
        updates: Vec<Update>,
    ) -> Result<Applied, Error> {
        for u in &updates {
            u.validate()?;
        }
        let key = key.to_string();
        let scope = scope.to_string();
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db.submit(Box::new(move |conn| {
            let run = || -> rusqlite::Result<Option<Vec<(FamilyId, Labels, Value)>>> {
                let now = now_unix();
                let fresh = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO applied_keys (key, applied_at) VALUES (?1, ?2)",
                    )?
                    .execute(params![key, now as i64])?;
                if fresh == 0 {
                    return Ok(None);
                }
                // Current values come from the transaction, not from memory: an earlier job of
                // the same group may have moved the same series and is not in memory yet.
                let mut out = Vec::with_capacity(updates.len());
                for u in updates {
                    let cur = read_series(conn, &scope, u.family, &u.labels)?;
                    let next = apply_op(u.family, cur, &u.op);
                    write_series(conn, &scope, u.family, &u.labels, &next)?;
                    out.push((u.family, u.labels, next));
                }
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO scopes (scope, updated_at) VALUES (?1, ?2)",
                )?
                .execute(params![scope, now])?;
                Ok(Some(out))
            };
            match run() {
                Ok(None) => Ok(reply(tx, Applied::Duplicate, || {})),
                Ok(Some(values)) => Ok(reply(tx, Applied::Applied, move || {
                    state.set_values(&scope, now_unix(), values)
                })),
                Err(e) => Err(fail(tx, e)),
            }
        }))?;
        let applied = recv(rx).await?;
        if applied == Applied::Duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(applied)
    }

    async fn apply_each_once(
        &self,
        scope: &str,
        batches: Vec<(String, Vec<Update>)>,
    ) -> Result<Vec<Applied>, Error> {
        for (_, updates) in &batches {
            for u in updates {
                u.validate()?;
            }
        }
        let scope = scope.to_string();
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db.submit(Box::new(move |conn| {
            type Out = (Vec<Applied>, Vec<(FamilyId, Labels, Value)>);
            let run = || -> rusqlite::Result<Out> {
                let now = now_unix();
                let mut applied = Vec::with_capacity(batches.len());
                let mut values = Vec::new();
                for (key, updates) in batches {
                    let fresh = conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO applied_keys (key, applied_at) VALUES (?1, ?2)",
                        )?
                        .execute(params![key, now as i64])?;
                    if fresh == 0 {
                        applied.push(Applied::Duplicate);
                        continue;
                    }
                    applied.push(Applied::Applied);
                    for u in updates {
                        let cur = read_series(conn, &scope, u.family, &u.labels)?;
                        let next = apply_op(u.family, cur, &u.op);
                        write_series(conn, &scope, u.family, &u.labels, &next)?;
                        values.push((u.family, u.labels, next));
                    }
                }
                if !values.is_empty() {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO scopes (scope, updated_at) VALUES (?1, ?2)",
                    )?
                    .execute(params![scope, now])?;
                }
                Ok((applied, values))
            };
            match run() {
                Ok((applied, values)) => Ok(reply(tx, applied, move || {
                    // Later values of the same series come later in `values`, so the last
                    // write wins as it did in the transaction.
                    if !values.is_empty() {
                        state.set_values(&scope, now_unix(), values)
                    }
                })),
                Err(e) => Err(fail(tx, e)),
            }
        }))?;
        let applied = recv(rx).await?;
        let dups = applied.iter().filter(|a| **a == Applied::Duplicate).count();
        self.duplicates.fetch_add(dups as u64, Ordering::Relaxed);
        Ok(applied)
    }

    async fn drop_scopes(&self, scopes: Vec<String>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db.submit(Box::new(move |conn| {
            let run = || -> rusqlite::Result<()> {
                for scope in &scopes {
                    conn.prepare_cached("DELETE FROM series WHERE scope = ?1")?
                        .execute([scope])?;
                    conn.prepare_cached("DELETE FROM scopes WHERE scope = ?1")?
                        .execute([scope])?;
                }
                Ok(())
            };
            match run() {
                Ok(()) => Ok(reply(tx, (), move || {
                    for scope in &scopes {
                        state.remove(scope);
                    }
                })),
                Err(e) => Err(fail(tx, e)),
            }
        }))?;
        recv(rx).await
    }

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (ns, key) = (ns.to_string(), key.to_string());
        let now = now_unix() as i64;
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT value FROM kv WHERE ns = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at >= ?3)",
                )?
                .query_row(params![ns, key, now], |r| r.get(0))
                .optional()
            })
            .await?)
    }

    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let (ns, key) = (ns.to_string(), key.to_string());
        let expires = ttl.map(|t| now_unix() as i64 + t.as_secs() as i64);
        Ok(self
            .db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![ns, key, value, expires])
                .map(|_| ())
            })
            .await?)
    }
}

impl crate::telemetry::Collect for SqliteStore {
    fn collect(&self, out: &mut Vec<(FamilyId, Labels, Value)>) {
        let stats = &self.db.stats;
        let mut push = |fid: FamilyId, v: Value| out.push((fid, Labels::empty(), v));
        push(
            metrics::DEVMETRICS_STORE_SERIES,
            Value::Number(self.state.series_count() as f64),
        );
        push(
            metrics::DEVMETRICS_STORE_SCOPES,
            Value::Number(self.state.scope_count() as f64),
        );
        push(
            metrics::DEVMETRICS_STORE_COMMITS_TOTAL,
            Value::Number(stats.commits.load(Ordering::Relaxed) as f64),
        );
        push(
            metrics::DEVMETRICS_STORE_COMMIT_DURATION_SECONDS,
            Value::Histogram(Box::new(stats.commit_seconds.value())),
        );
        push(
            metrics::DEVMETRICS_STORE_COMMIT_BATCH_SIZE,
            Value::Histogram(Box::new(stats.batch_size.value())),
        );
        push(
            metrics::DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL,
            Value::Number(self.duplicates.load(Ordering::Relaxed) as f64),
        );
    }
}

#[cfg(test)]
#[allow(clippy::items_after_test_module)]
mod tests {
    use super::*;
    use crate::metrics;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(Db::open(&dir.path().join("t.db")).unwrap()).unwrap()
    }

    fn labels(route: &str) -> Labels {
        Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &[route, "200"]).unwrap()
    }

    #[tokio::test]
    async fn replace_scope_drops_absent_series_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let fam = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
        {
            let store = open(&dir);
            store
                .replace_scope(
                    "s",
                    vec![
                        Sample::number(fam, labels("/a"), 1.0),
                        Sample::number(fam, labels("/b"), 2.0),
                    ],
                )
                .await
                .unwrap();
            store
                .replace_scope("s", vec![Sample::number(fam, labels("/b"), 3.0)])
                .await
                .unwrap();
            let snap = store.snapshot();
            assert_eq!(snap.get("s", fam, &labels("/a")), None);
            assert_eq!(snap.get("s", fam, &labels("/b")), Some(&Value::Number(3.0)));
        }
        let store = open(&dir);
        let snap = store.snapshot();
        assert_eq!(snap.family(fam).count(), 1);
        assert_eq!(snap.get("s", fam, &labels("/b")), Some(&Value::Number(3.0)));
    }

    #[tokio::test]
    async fn apply_once_counts_each_key_once_even_when_concurrent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let fam = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
        let hist = metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS;
        let hl = Labels::new(hist, &["/x"]).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            let hl = hl.clone();
            tasks.push(tokio::spawn(async move {
                // Every key is sent twice; only the first application may count.
                let key = format!("k{}", i % 100);
                store
                    .apply_once(
                        &key,
                        "events",
                        vec![
                            Update {
                                family: fam,
                                labels: labels("/x"),
                                op: Op::Inc(1.0),
                            },
                            Update {
                                family: hist,
                                labels: hl,
                                op: Op::Observe(0.2),
                            },
                        ],
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut applied = 0;
        for t in tasks {
            if t.await.unwrap() == Applied::Applied {
                applied += 1;
            }
        }
        assert_eq!(applied, 100);
        assert_eq!(store.duplicates.load(Ordering::Relaxed), 100);
        let snap = store.snapshot();
        assert_eq!(
            snap.get("events", fam, &labels("/x")),
            Some(&Value::Number(100.0))
        );
        let Some(Value::Histogram(h)) = snap.get("events", hist, &hl) else {
            panic!()
        };
        assert_eq!(h.count(), 100);
        assert!((h.sum - 20.0).abs() < 1e-9);
        drop(snap);
        drop(store);
        let store = open(&dir);
        assert_eq!(
            store.snapshot().get("events", fam, &labels("/x")),
            Some(&Value::Number(100.0))
        );
    }

    #[tokio::test]
    async fn wrong_operation_for_kind_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let err = store
            .apply_once(
                "k",
                "s",
                vec![Update {
                    family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
                    labels: labels("/"),
                    op: Op::Observe(1.0),
                }],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongKind { .. }));
    }

    #[tokio::test]
    async fn apply_each_once_applies_each_key_once_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let fam = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
        let inc = || {
            vec![Update {
                family: fam,
                labels: labels("/a"),
                op: Op::Inc(1.0),
            }]
        };
        let got = store
            .apply_each_once(
                "s",
                vec![
                    ("k1".into(), inc()),
                    ("k1".into(), inc()),
                    ("k2".into(), inc()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            got,
            [Applied::Applied, Applied::Duplicate, Applied::Applied]
        );
        let again = store
            .apply_each_once("s", vec![("k2".into(), inc()), ("k3".into(), inc())])
            .await
            .unwrap();
        assert_eq!(again, [Applied::Duplicate, Applied::Applied]);
        assert_eq!(
            store.snapshot().get("s", fam, &labels("/a")),
            Some(&Value::Number(3.0))
        );
        drop(store);
        assert_eq!(
            open(&dir).snapshot().get("s", fam, &labels("/a")),
            Some(&Value::Number(3.0))
        );
    }

    #[tokio::test]
    async fn kv_round_trips_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .kv_put("etag", "a", b"x".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(
            store.kv_get("etag", "a").await.unwrap(),
            Some(b"x".to_vec())
        );
        assert_eq!(store.kv_get("etag", "b").await.unwrap(), None);
    }
}
