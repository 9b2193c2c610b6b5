use rusqlite::Connection;

/// Schema versions, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE series (
        scope   TEXT NOT NULL,
        family  TEXT NOT NULL,
        labels  TEXT NOT NULL,
        -- NULL is NaN: SQLite binds NaN as NULL.
        value   REAL,
        buckets TEXT,
        PRIMARY KEY (scope, family, labels)
    ) WITHOUT ROWID;
    CREATE TABLE scopes (
        scope      TEXT PRIMARY KEY,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE applied_keys (
        key        TEXT PRIMARY KEY,
        applied_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX applied_keys_at ON applied_keys(applied_at);
    CREATE TABLE kv (
        ns         TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;
    CREATE TABLE queue (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        topic        TEXT NOT NULL,
        payload      BLOB NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        published_at REAL NOT NULL,
        last_error   TEXT
    );
    CREATE TABLE queue_dedupe (
        topic   TEXT NOT NULL,
        key     TEXT NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (topic, key)
    ) WITHOUT ROWID;
    CREATE INDEX queue_dedupe_seen ON queue_dedupe(seen_at);
    CREATE TABLE dead_letters (
        id           INTEGER PRIMARY KEY,
        topic        TEXT NOT NULL,
        payload      BLOB NOT NULL,
        attempts     INTEGER NOT NULL,
        published_at REAL NOT NULL,
        dead_at      REAL NOT NULL,
        last_error   TEXT
    );
"#,
    r#"
    ALTER TABLE scopes ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    -- GitHub windows were versions kept beside their scopes in kv; they move onto the scopes.
    UPDATE scopes SET version = COALESCE((
        SELECT CAST(CAST(kv.value AS TEXT) AS INTEGER) FROM kv
        WHERE kv.ns = 'github.window' AND 'github/' || kv.key = scopes.scope
    ), 0);
    DELETE FROM kv WHERE ns = 'github.window';
    UPDATE queue SET topic = 'github/backfill' WHERE topic = 'github.backfill';
    UPDATE queue_dedupe SET topic = 'github/backfill' WHERE topic = 'github.backfill';
    UPDATE dead_letters SET topic = 'github/backfill' WHERE topic = 'github.backfill';
    CREATE TABLE leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        fence      INTEGER NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
"#,
    r#"
    -- Deliveries are counted when handed out, attempts when settled as failed: a message
    -- whose deliveries run ahead stopped its consumer (or the process) every time.
    ALTER TABLE queue ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
    -- Scheduling reads this index alone, so start-up never reads the payloads.
    CREATE INDEX queue_schedule ON queue (id, topic, attempts, available_at, published_at);
    -- Dead letters to put back on their topic, asked for by `devmetrics queue replay`
    -- (possibly from another process) and taken in by the running queue.
    CREATE TABLE queue_replays (id INTEGER PRIMARY KEY);
"#,
    r#"
    -- Gauge members (a job queued, a job running) with the exact series each entered, so
    -- leaving takes off what entering put on, and a member never left expires.
    CREATE TABLE members (
        member     TEXT PRIMARY KEY,
        scope      TEXT NOT NULL,
        family     TEXT NOT NULL,
        labels     TEXT NOT NULL,
        entered_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX members_entered ON members(entered_at);
    -- What a deduplicated message carried, so a key reused for different content is told
    -- apart from a redelivery.
    ALTER TABLE queue_dedupe ADD COLUMN fingerprint INTEGER;
    -- Workflow series move from one scope to one per repository (their first label), so a
    -- write copies one repository's series, not all of them.
    UPDATE series
       SET scope = 'webhooks/workflows/' || substr(labels, 7, instr(substr(labels, 7), '"') - 1)
     WHERE scope = 'webhooks/workflows' AND labels LIKE 'repo="%';
    -- Job gauges now count members; counts from before have none to leave with, so they
    -- restart at zero (jobs in flight now go uncounted until they finish, never below zero).
    DELETE FROM series WHERE family IN
        ('devmetrics_workflow_jobs_queued', 'devmetrics_workflow_jobs_in_progress');
    INSERT OR IGNORE INTO scopes (scope, updated_at, version)
        SELECT DISTINCT series.scope, scopes.updated_at, 0
          FROM series JOIN scopes ON scopes.scope = 'webhooks/workflows'
         WHERE series.scope LIKE 'webhooks/workflows/%';
"#,
];

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_series_move_to_a_scope_per_repository() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 3").unwrap();
        conn.execute_batch(
            r#"
            INSERT INTO scopes (scope, updated_at, version) VALUES ('webhooks/workflows', 5, 0);
            INSERT INTO series (scope, family, labels, value) VALUES
              ('webhooks/workflows', 'devmetrics_workflow_jobs_total', 'repo="o/a",job="x"', 1),
              ('webhooks/workflows', 'devmetrics_workflow_runs_total', 'repo="o/b-c.d",workflow="x"', 2),
              ('webhooks/workflows', 'devmetrics_workflow_jobs_queued', 'repo="o/a",runner_labels="x"', 7),
              ('webhooks/workflows', 'devmetrics_workflow_invalid_durations_total', 'kind="job",reason="missing"', 3);
            "#,
        )
        .unwrap();
        migrate(&conn).unwrap();
        let rows: Vec<(String, f64)> = conn
            .prepare("SELECT scope, value FROM series ORDER BY value")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("webhooks/workflows/o/a".to_string(), 1.0),
                ("webhooks/workflows/o/b-c.d".to_string(), 2.0),
                ("webhooks/workflows".to_string(), 3.0),
            ]
        );
        let scopes: Vec<(String, f64)> = conn
            .prepare("SELECT scope, updated_at FROM scopes ORDER BY scope")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(scopes.len(), 3);
        assert!(scopes.iter().all(|(_, t)| *t == 5.0), "{scopes:?}");
    }
}
