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
