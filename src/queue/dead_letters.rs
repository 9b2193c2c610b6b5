//! The embedded queue's dead letters, for `devmetrics queue`: list, show, replay and purge.
//! These run in their own process on the database file, beside a running service or with it
//! stopped. A replay is a request the queue takes in (within seconds while it runs, else at
//! its next start), so the running queue's schedule learns of the message; a purge deletes
//! at once and the running queue recounts.

use rusqlite::{Connection, params_from_iter};

use super::sqlite::decode_payload;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One dead letter, without its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub topic: String,
    pub attempts: u32,
    pub published_at: f64,
    pub dead_at: f64,
    pub reason: String,
    /// Stored (possibly compressed) size.
    pub stored_bytes: u64,
    /// A replay was asked for and the queue has not taken it in yet.
    pub replay_pending: bool,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    All,
    Topic(String),
    Ids(Vec<i64>),
}

impl Select {
    fn clause(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        match self {
            Select::All => ("1".into(), Vec::new()),
            Select::Topic(t) => ("topic = ?".into(), vec![Value::Text(t.clone())]),
            Select::Ids(ids) => {
                let marks = vec!["?"; ids.len()].join(",");
                (
                    format!("id IN ({marks})"),
                    ids.iter().map(|i| Value::Integer(*i)).collect(),
                )
            }
        }
    }
}

/// A dead letter with its payload, when that decodes.
pub type Shown = (DeadLetter, Option<Vec<u8>>);

pub struct DeadLetters {
    conn: Connection,
}

impl DeadLetters {
    pub fn open(path: &std::path::Path) -> Result<DeadLetters, Error> {
        Ok(DeadLetters {
            conn: crate::db::Db::open_admin(path)?,
        })
    }

    pub fn list(&self, select: &Select) -> Result<Vec<DeadLetter>, Error> {
        let (clause, args) = select.clause();
        let sql = format!(
            "SELECT id, topic, attempts, published_at, dead_at, coalesce(last_error, ''), length(payload),
                    id IN (SELECT id FROM queue_replays)
             FROM dead_letters WHERE {clause} ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                topic: r.get(1)?,
                attempts: r.get(2)?,
                published_at: r.get(3)?,
                dead_at: r.get(4)?,
                reason: r.get(5)?,
                stored_bytes: r.get(6)?,
                replay_pending: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One dead letter and its payload as published (`None` when the stored bytes do not
    /// decode, which is why some rows are here).
    pub fn show(&self, id: i64) -> Result<Option<Shown>, Error> {
        let Some(letter) = self.list(&Select::Ids(vec![id]))?.pop() else {
            return Ok(None);
        };
        let stored: Vec<u8> = self.conn.query_row(
            "SELECT payload FROM dead_letters WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?;
        Ok(Some((letter, decode_payload(&stored))))
    }

    /// Asks the queue to put the selected dead letters back on their topics, with fresh
    /// attempts; each at most once, however often asked. Returns how many were asked for.
    pub fn replay(&self, select: &Select) -> Result<usize, Error> {
        let (clause, args) = select.clause();
        let sql = format!(
            "INSERT OR IGNORE INTO queue_replays (id) SELECT id FROM dead_letters WHERE {clause}"
        );
        Ok(self.conn.execute(&sql, params_from_iter(args))?)
    }

    /// Deletes the selected dead letters. Returns how many went.
    pub fn purge(&self, select: &Select) -> Result<usize, Error> {
        let (clause, args) = select.clause();
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            &format!("DELETE FROM dead_letters WHERE {clause}"),
            params_from_iter(args),
        )?;
        tx.execute(
            "DELETE FROM queue_replays WHERE id NOT IN (SELECT id FROM dead_letters)",
            [],
        )?;
        tx.commit()?;
        Ok(n)
    }
}
