use rusqlite::Connection;

/// Schema versions, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

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
