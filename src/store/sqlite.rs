//! The embedded store: series, idempotency keys and key-value state in the SQLite file,
//! mirrored in memory for scrapes.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

use super::{Applied, Batch, Error, Grant, Lease, Retention, State, Store, Written};
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

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Replaces `scope`; with a `version`, only when it is newer than the stored one.
    async fn replace(
        &self,
        scope: &str,
        version: Option<i64>,
        samples: Vec<Sample>,
    ) -> Result<Written, Error> {
        let mut data = ScopeData {
            name: Arc::from(scope),
            updated_at: now_unix(),
            version: 0,
            families: BTreeMap::new(),
            encoded: Default::default(),
        };
        for s in samples {
            data.families
                .entry(s.family)
                .or_default()
                .insert(s.labels, s.value);
        }
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db
            .submit(Box::new(move |conn| {
                match write_scope(conn, &mut data, version) {
                    Ok(Written::Written) => {
                        Ok(reply(tx, Written::Written, move || state.replace(data)))
                    }
                    Ok(Written::Superseded) => Ok(reply(tx, Written::Superseded, || {})),
                    Err(e) => Err(fail(tx, e)),
                }
            }))
            .await?;
        recv(rx).await
    }
}

/// Every database failure is treated as passing: SQLite reports a full disk or an I/O error
/// through the same statement errors as a bad statement, and losing an event to a wrongly
/// permanent error is worse than retrying a bug until the horizon.
impl From<crate::db::Error> for Error {
    fn from(e: crate::db::Error) -> Self {
        Error::Unavailable {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Writes `data` as the whole of its scope, unless `version` is not newer than the stored
/// one. Sets `data.version` to what the scope's version is afterwards.
fn write_scope(
    conn: &Connection,
    data: &mut ScopeData,
    version: Option<i64>,
) -> rusqlite::Result<Written> {
    let current: i64 = conn
        .prepare_cached("SELECT version FROM scopes WHERE scope = ?1")?
        .query_row([&*data.name], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if version.is_some_and(|v| v <= current) {
        return Ok(Written::Superseded);
    }
    data.version = version.unwrap_or(current);
    conn.prepare_cached("DELETE FROM series WHERE scope = ?1")?
        .execute([&*data.name])?;
    for (fid, series) in &data.families {
        for (labels, value) in series {
            write_series(conn, &data.name, *fid, labels, value)?;
        }
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO scopes (scope, updated_at, version) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![&*data.name, data.updated_at, data.version])?;
    Ok(Written::Written)
}

fn load(conn: &Connection) -> rusqlite::Result<(Vec<ScopeData>, usize)> {
    let mut scopes: BTreeMap<String, ScopeData> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT scope, updated_at, version FROM scopes")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, f64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (name, updated_at, version) = row?;
        scopes.insert(
            name.clone(),
            ScopeData {
                name: Arc::from(name.as_str()),
                updated_at,
                version,
                families: BTreeMap::new(),
                encoded: Default::default(),
            },
        );
    }
    let mut skipped = 0;
    // Rows come in key order, so a scope's series are together: a label set repeated across
    // its families is held once.
    let mut interner = crate::metrics::Interner::default();
    let mut last_scope = String::new();
    let mut stmt = conn.prepare("SELECT scope, family, labels, value, buckets FROM series")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let scope: String = r.get(0)?;
        if scope != last_scope {
            interner.clear();
            last_scope.clone_from(&scope);
        }
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
        let labels = interner.rendered(r.get_ref(2)?.as_str()?);
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
        // Members move their gauge through `apply_update`; alone they mean ±1.
        Op::Enter(_) => apply_op(fid, current, &Op::Add(1.0)),
        Op::Leave(_) => apply_op(fid, current, &Op::Add(-1.0)),
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

fn mirror(state: &State, values: Vec<SeriesWrite>) {
    if !values.is_empty() {
        state.set_values(now_unix(), values)
    }
}

/// Refuses a batch holding an update the catalog refuses, before anything is written.
pub(crate) fn validate(batches: &[Batch]) -> Result<(), Error> {
    for b in batches {
        for u in &b.updates {
            u.validate()?;
        }
    }
    Ok(())
}

/// Applies each batch whose key is new, in the writer's open transaction; returns what each
/// batch did and the series the mirror takes once the transaction commits.
pub(crate) fn apply_in(
    conn: &Connection,
    batches: Vec<Batch>,
) -> rusqlite::Result<(Vec<Applied>, Vec<SeriesWrite>)> {
    let now = now_unix();
    let mut applied = Vec::with_capacity(batches.len());
    let mut values = Vec::new();
    for b in batches {
        let fresh = conn
            .prepare_cached("INSERT OR IGNORE INTO applied_keys (key, applied_at) VALUES (?1, ?2)")?
            .execute(params![b.key, now as i64])?;
        if fresh == 0 {
            applied.push(Applied::Duplicate);
            continue;
        }
        applied.push(Applied::Applied);
        for u in b.updates {
            if let Some(w) = apply_update(conn, &b.scope, u, now)? {
                values.push(w);
            }
        }
    }
    touch_scopes(conn, &values, now)?;
    Ok((applied, values))
}

impl SqliteStore {
    /// Whether `db` is the database this store writes to.
    pub(crate) fn writes_to(&self, db: &Db) -> bool {
        self.db.path() == db.path()
    }

    /// Takes series written by [`apply_in`] into the mirror; only after their commit.
    pub(crate) fn mirror(&self, values: Vec<SeriesWrite>) {
        mirror(&self.state, values)
    }

    pub(crate) fn count_duplicates(&self, applied: &[Applied]) {
        let dups = applied.iter().filter(|a| **a == Applied::Duplicate).count();
        self.duplicates.fetch_add(dups as u64, Ordering::Relaxed);
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
            Err(e) => Err(Error::Unavailable {
                kind: "commit",
                message: e.to_string(),
            }),
        });
    })
}

fn fail<T: Send + 'static>(tx: oneshot::Sender<Result<T, Error>>, e: rusqlite::Error) -> Finish {
    Box::new(move |_| {
        let _ = tx.send(Err(crate::db::Error::Sql(e).into()));
    })
}

async fn recv<T>(rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
    rx.await.map_err(|_| crate::db::Error::WriterGone)?
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
        self.replace(scope, None, samples).await.map(|_| ())
    }

    async fn replace_scope_if_newer(
        &self,
        scope: &str,
        version: i64,
        samples: Vec<Sample>,
    ) -> Result<Written, Error> {
        self.replace(scope, Some(version), samples).await
    }

    async fn apply_each_once(&self, batches: Vec<Batch>) -> Result<Vec<Applied>, Error> {
        validate(&batches)?;
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db
            .submit(Box::new(move |conn| match apply_in(conn, batches) {
                Ok((applied, values)) => Ok(reply(tx, applied, move || mirror(&state, values))),
                Err(e) => Err(fail(tx, e)),
            }))
            .await?;
        let applied = recv(rx).await?;
        self.count_duplicates(&applied);
        Ok(applied)
    }

    async fn drop_scopes(&self, scopes: Vec<String>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let state = self.state.clone();
        self.db
            .submit(Box::new(move |conn| {
                let run = || -> rusqlite::Result<()> {
                    for scope in &scopes {
                        conn.prepare_cached("DELETE FROM series WHERE scope = ?1")?
                            .execute([scope])?;
                        conn.prepare_cached("DELETE FROM scopes WHERE scope = ?1")?
                            .execute([scope])?;
                        conn.prepare_cached("DELETE FROM members WHERE scope = ?1")?
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
            }))
            .await?;
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
        let expires = kv_expiry(ttl);
        Ok(self
            .db
            .write(move |c| kv_write(c, &ns, &key, &value, expires))
            .await?)
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<(), Error> {
        let (ns, key) = (ns.to_string(), key.to_string());
        Ok(self
            .db
            .write(move |c| {
                c.prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?
                    .execute(params![ns, key])
                    .map(|_| ())
            })
            .await?)
    }

    async fn kv_scan(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let (ns, prefix) = (ns.to_string(), prefix.to_string());
        let now = now_unix() as i64;
        let limit = limit.min(i64::MAX as usize) as i64;
        Ok(self
            .db
            .read(move |c| {
                // A range on the primary key rather than LIKE, whose wildcards a key may hold.
                let mut st = c.prepare_cached(
                    "SELECT key, value FROM kv WHERE ns = ?1 AND key >= ?2 AND substr(key, 1, length(?2)) = ?2 \
                     AND (expires_at IS NULL OR expires_at >= ?3) ORDER BY key LIMIT ?4",
                )?;
                let rows = st.query_map(params![ns, prefix, now, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                rows.collect()
            })
            .await?)
    }

    async fn gc(&self, retention: &Retention) -> Result<u64, Error> {
        let now = now_unix();
        let key_cutoff = now as i64 - retention.keys.as_secs() as i64;
        let member_cutoff = now - retention.members.as_secs_f64();
        let removed = self
            .db
            .write(move |c| {
                let a = c.execute(
                    "DELETE FROM applied_keys WHERE applied_at < ?1",
                    [key_cutoff],
                )?;
                let b = c.execute(
                    "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at < ?1",
                    [now as i64],
                )?;
                Ok((a + b) as u64)
            })
            .await?;
        Ok(removed + self.expire_members(member_cutoff).await?)
    }
}

impl SqliteStore {
    /// Takes members that entered before `cutoff` off their series, a bounded batch per
    /// write so the writer is never held for long.
    async fn expire_members(&self, cutoff: f64) -> Result<u64, Error> {
        const BATCH: usize = 1_000;
        let mut total = 0;
        loop {
            let (tx, rx) = oneshot::channel();
            let state = self.state.clone();
            self.db
                .submit(Box::new(move |conn| {
                    let run = || -> rusqlite::Result<(usize, Vec<SeriesWrite>)> {
                        let now = now_unix();
                        let members: Vec<String> = conn
                            .prepare_cached(
                                "SELECT member FROM members WHERE entered_at < ?1 LIMIT ?2",
                            )?
                            .query_map(params![cutoff, BATCH as i64], |r| r.get(0))?
                            .collect::<rusqlite::Result<_>>()?;
                        let mut values = Vec::new();
                        for m in &members {
                            if let Some(w) = leave(conn, m)? {
                                values.push(w);
                            }
                        }
                        touch_scopes(conn, &values, now)?;
                        Ok((members.len(), values))
                    };
                    match run() {
                        Ok((n, values)) => Ok(reply(tx, n, move || {
                            if !values.is_empty() {
                                state.set_values(now_unix(), values)
                            }
                        })),
                        Err(e) => Err(fail(tx, e)),
                    }
                }))
                .await?;
            let n = recv(rx).await?;
            total += n as u64;
            if n < BATCH {
                return Ok(total);
            }
        }
    }
}

/// A series' new value, in its scope, as written.
pub(crate) type SeriesWrite = (String, FamilyId, Labels, Value);

/// Applies one update in the open transaction; returns the series written, if any.
fn apply_update(
    conn: &Connection,
    scope: &str,
    u: Update,
    now: f64,
) -> rusqlite::Result<Option<SeriesWrite>> {
    match &u.op {
        Op::Leave(member) => leave(conn, member),
        Op::Enter(member) => {
            let fresh = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO members (member, scope, family, labels, entered_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![member, scope, family(u.family).name, u.labels.as_str(), now])?;
            if fresh == 0 {
                return Ok(None);
            }
            add(conn, scope.to_string(), u.family, u.labels, &Op::Add(1.0)).map(Some)
        }
        _ => add(conn, scope.to_string(), u.family, u.labels, &u.op).map(Some),
    }
}

/// Removes `member` and takes 1 off the series it entered.
fn leave(conn: &Connection, member: &str) -> rusqlite::Result<Option<SeriesWrite>> {
    let row: Option<(String, String, String)> = conn
        .prepare_cached("DELETE FROM members WHERE member = ?1 RETURNING scope, family, labels")?
        .query_row([member], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((scope, fam, labels)) = row else {
        return Ok(None);
    };
    // A member of a family this version no longer has leaves nothing to take off.
    let Some(fid) = metrics::lookup(&fam) else {
        return Ok(None);
    };
    add(
        conn,
        scope,
        fid,
        Labels::from_rendered(&labels),
        &Op::Add(-1.0),
    )
    .map(Some)
}

fn add(
    conn: &Connection,
    scope: String,
    fid: FamilyId,
    labels: Labels,
    op: &Op,
) -> rusqlite::Result<SeriesWrite> {
    let cur = read_series(conn, &scope, fid, &labels)?;
    let next = apply_op(fid, cur, op);
    write_series(conn, &scope, fid, &labels, &next)?;
    Ok((scope, fid, labels, next))
}

/// Records that each written scope changed now.
fn touch_scopes(conn: &Connection, values: &[SeriesWrite], now: f64) -> rusqlite::Result<()> {
    let mut done: Vec<&str> = Vec::new();
    for (scope, ..) in values {
        if done.contains(&scope.as_str()) {
            continue;
        }
        done.push(scope);
        conn.prepare_cached(
            "INSERT INTO scopes (scope, updated_at) VALUES (?1, ?2)
             ON CONFLICT (scope) DO UPDATE SET updated_at = excluded.updated_at",
        )?
        .execute(params![scope, now])?;
    }
    Ok(())
}

#[async_trait]
impl crate::telemetry::Collect for SqliteStore {
    async fn collect(&self, out: &mut crate::telemetry::Rows) {
        let stats = &self.db.stats;
        let n = |v: u64| Value::Number(v as f64);
        for (fid, v) in [
            (
                metrics::DEVMETRICS_STORE_UP,
                n(Store::health(self).is_ok() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_SERIES,
                n(self.state.series_count() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_SCOPES,
                n(self.state.scope_count() as u64),
            ),
            (
                metrics::DEVMETRICS_STORE_COMMITS_TOTAL,
                n(stats.commits.load(Ordering::Relaxed)),
            ),
            (
                metrics::DEVMETRICS_STORE_COMMIT_DURATION_SECONDS,
                Value::Histogram(Box::new(stats.commit_seconds.value())),
            ),
            (
                metrics::DEVMETRICS_STORE_COMMIT_BATCH_SIZE,
                Value::Histogram(Box::new(stats.batch_size.value())),
            ),
            (
                metrics::DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL,
                n(self.duplicates.load(Ordering::Relaxed)),
            ),
        ] {
            out.push(fid, &[], v);
        }
    }
}

/// Leases as rows: the row outlives its holder (expired, not deleted) so fences only grow.
#[async_trait]
impl Lease for SqliteStore {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error> {
        let (name, holder) = (name.to_string(), holder.to_string());
        Ok(self
            .db
            .write(move |c| {
                let now = now_unix();
                let expires_at = now + ttl.as_secs_f64();
                let fence = match lease_row(c, &name)? {
                    Some((h, _, exp)) if exp > now && h != holder => return Ok(None),
                    Some((h, fence, exp)) if exp > now && h == holder => fence,
                    Some((_, fence, _)) => fence + 1,
                    None => 1,
                };
                c.prepare_cached(
                    "INSERT OR REPLACE INTO leases (name, holder, fence, expires_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![name, holder, fence as i64, expires_at])?;
                Ok(Some(Grant { fence, expires_at }))
            })
            .await?)
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error> {
        let (name, holder) = (name.to_string(), holder.to_string());
        Ok(self
            .db
            .write(move |c| {
                if !holds(c, &name, &holder, fence)? {
                    return Ok(None);
                }
                let expires_at = now_unix() + ttl.as_secs_f64();
                c.prepare_cached("UPDATE leases SET expires_at = ?2 WHERE name = ?1")?
                    .execute(params![name, expires_at])?;
                Ok(Some(Grant { fence, expires_at }))
            })
            .await?)
    }

    async fn release(&self, name: &str, holder: &str, fence: u64) -> Result<bool, Error> {
        let (name, holder) = (name.to_string(), holder.to_string());
        Ok(self
            .db
            .write(move |c| {
                if !holds(c, &name, &holder, fence)? {
                    return Ok(false);
                }
                c.prepare_cached("UPDATE leases SET expires_at = 0 WHERE name = ?1")?
                    .execute([&name])?;
                Ok(true)
            })
            .await?)
    }

    async fn holder(&self, name: &str) -> Result<Option<(String, Grant)>, Error> {
        let name = name.to_string();
        Ok(self
            .db
            .read(move |c| {
                Ok(lease_row(c, &name)?
                    .filter(|(_, _, exp)| *exp > now_unix())
                    .map(|(h, fence, expires_at)| (h, Grant { fence, expires_at })))
            })
            .await?)
    }

    async fn kv_put_fenced(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let (name, holder, ns, key) = (
            name.to_string(),
            holder.to_string(),
            ns.to_string(),
            key.to_string(),
        );
        let expires = kv_expiry(ttl);
        Ok(self
            .db
            .write(move |c| {
                if !holds(c, &name, &holder, fence)? {
                    return Ok(false);
                }
                kv_write(c, &ns, &key, &value, expires)?;
                Ok(true)
            })
            .await?)
    }
}

/// Whether `holder` holds the live grant `fence` of `name`.
fn holds(c: &Connection, name: &str, holder: &str, fence: u64) -> rusqlite::Result<bool> {
    Ok(
        lease_row(c, name)?
            .is_some_and(|(h, f, exp)| h == holder && f == fence && exp > now_unix()),
    )
}

/// When a kv entry written now with `ttl` expires (Unix seconds).
fn kv_expiry(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| now_unix() as i64 + t.as_secs() as i64)
}

fn kv_write(
    c: &Connection,
    ns: &str,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![ns, key, value, expires])
    .map(|_| ())
}

fn lease_row(c: &Connection, name: &str) -> rusqlite::Result<Option<(String, u64, f64)>> {
    c.prepare_cached("SELECT holder, fence, expires_at FROM leases WHERE name = ?1")?
        .query_row([name], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })
        .optional()
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

    /// A label set repeated across a scope's families is held once after a restart, as the
    /// source that wrote it held it; other scopes have their own.
    #[tokio::test]
    async fn a_reopened_store_shares_label_sets_across_a_scopes_families() {
        let dir = tempfile::tempdir().unwrap();
        let (commits, last) = (
            metrics::GH_ACTIVITY_COMMITS_24H,
            metrics::GH_ACTIVITY_LAST_EVENT_UNIXTIME,
        );
        let user = |u: &str| Labels::new(commits, &["o", "o/r", u]).unwrap();
        {
            let store = open(&dir);
            for scope in ["s1", "s2"] {
                let samples = ["a", "b"]
                    .iter()
                    .flat_map(|u| {
                        [
                            Sample::number(commits, user(u), 1.0),
                            Sample::number(last, user(u), 2.0),
                        ]
                    })
                    .collect();
                store.replace_scope(scope, samples).await.unwrap();
            }
        }
        let snap = open(&dir).snapshot();
        let held = |scope: &str, fid, u: &str| {
            snap.scope(scope).unwrap().families[&fid]
                .keys()
                .find(|l| **l == user(u))
                .unwrap()
                .clone()
        };
        assert!(held("s1", commits, "a").shares(&held("s1", last, "a")));
        assert!(held("s2", commits, "b").shares(&held("s2", last, "b")));
        assert!(!held("s1", commits, "a").shares(&held("s1", commits, "b")));
        assert!(!held("s1", commits, "a").shares(&held("s2", commits, "a")));
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
    async fn gauge_members_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fam = metrics::DEVMETRICS_WORKFLOW_JOBS_IN_PROGRESS;
        let l = |repo: &str| Labels::new(fam, &[repo, "g", "x"]).unwrap();
        let update = |repo: &str, op: Op| Update {
            family: fam,
            labels: l(repo),
            op,
        };
        {
            let store = open(&dir);
            let got = store
                .apply_each_once(vec![
                    Batch {
                        key: "k1".into(),
                        scope: "s/a".into(),
                        updates: vec![update("o/a", Op::Enter("j1".into()))],
                    },
                    Batch {
                        key: "k1".into(),
                        scope: "s/a".into(),
                        updates: vec![update("o/a", Op::Enter("j2".into()))],
                    },
                ])
                .await
                .unwrap();
            assert_eq!(got, [Applied::Applied, Applied::Duplicate]);
        }
        let store = open(&dir);
        assert_eq!(
            store.snapshot().get("s/a", fam, &l("o/a")),
            Some(&Value::Number(1.0))
        );
        store
            .apply_once("k2", "s/b", vec![update("o/b", Op::Leave("j1".into()))])
            .await
            .unwrap();
        assert_eq!(
            store.snapshot().get("s/a", fam, &l("o/a")),
            Some(&Value::Number(0.0))
        );
        assert_eq!(store.snapshot().get("s/b", fam, &l("o/b")), None);
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

#[cfg(test)]
mod contract_tests {
    #[tokio::test]
    async fn the_sqlite_store_and_lease_pass_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            super::SqliteStore::open(crate::db::Db::open(&dir.path().join("c.db")).unwrap())
                .unwrap(),
        );
        crate::store::contract::run(store.clone(), store).await;
    }
}
