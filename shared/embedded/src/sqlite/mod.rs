//! SQLite adapters: the embedded default. One database file holds the queues
//! (with their dead-letter queues), the dispatch records and claim-check blobs.
//!
//! Durability: WAL journal with `synchronous=NORMAL`: a committed write
//! survives a crash of the process (what `crcr serve` needs); the last
//! transactions may be lost on power loss. All access goes through one
//! connection behind a mutex; each call is one short transaction.

mod blobs;
mod jobs;
mod kv;
mod queue;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

pub use blobs::SqliteBlobStore;
pub use jobs::SqliteJobStore;
pub use kv::SqliteKv;
pub use queue::SqliteQueue;
pub use store::SqliteDispatchStore;

use crcr_core::ports::StoreError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,                 -- "<name>" or "<name>-dlq"
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead_letter_reason TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (queue, visible_at_ms, seq);
CREATE TABLE IF NOT EXISTS dispatches (
    delivery_id TEXT NOT NULL,
    target_key TEXT NOT NULL,            -- ports::record_key: lower-cased owner/repo[#hook/<id>]
    target TEXT NOT NULL,                -- as spelled in the allowlist
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    lease_until_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    dispatched_at_ms INTEGER,
    payload_trimmed INTEGER NOT NULL DEFAULT 0,
    event TEXT NOT NULL,
    action TEXT,
    head_sha TEXT,
    pr_number INTEGER,
    level TEXT NOT NULL,
    check_run INTEGER NOT NULL DEFAULT 0, -- DispatchMeta::check_run
    device TEXT,                         -- DispatchMeta::device
    received_at_ms INTEGER,              -- DispatchMeta::received_at_ms
    hook_id INTEGER,                     -- DispatchMeta::hook_id (then target_key is ports::record_key)
    PRIMARY KEY (delivery_id, target_key)
);
CREATE INDEX IF NOT EXISTS dispatches_dispatched_at ON dispatches (dispatched_at_ms)
    WHERE dispatched_at_ms IS NOT NULL;
-- DispatchStore::records_for_commit: in its order, so no sort step.
CREATE INDEX IF NOT EXISTS dispatches_head_sha ON dispatches (head_sha, created_at_ms, delivery_id, target_key)
    WHERE head_sha IS NOT NULL;
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"#;

/// Columns of `dispatches` added after its first release: (name, type and
/// default as in [`SCHEMA`]). [`Db::open`] adds the missing ones to an older
/// file, so its existing rows read the default (`check_run` 0, `device`,
/// `received_at_ms` and `hook_id` NULL).
const ADDED_DISPATCH_COLUMNS: [(&str, &str); 4] = [
    ("check_run", "INTEGER NOT NULL DEFAULT 0"),
    ("device", "TEXT"),
    ("received_at_ms", "INTEGER"),
    ("hook_id", "INTEGER"),
];

/// A shared handle on the database file.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Woken on every send, so long-polling receivers in this process see new
    /// messages at once.
    sent: Arc<tokio::sync::Notify>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and its schema.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let conn =
            Connection::open(path).map_err(|e| StoreError::backend(&format!("SQLite open {}", path.display()), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        // No checkpoint inside a request's commit: `checkpointer` runs them
        // on its own connection and thread (a checkpoint copies the WAL and
        // fsyncs, which would otherwise stall an ingest answer now and then).
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024).map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        // Files written before a column of `dispatches` existed get it.
        add_missing_columns(&conn, "dispatches", &ADDED_DISPATCH_COLUMNS)?;
        conn.execute_batch(jobs::SCHEMA).map_err(unavailable)?;
        add_missing_columns(&conn, "hud_outbox", &jobs::ADDED_OUTBOX_COLUMNS)?;
        conn.execute_batch(jobs::SCHEMA_AFTER_COLUMNS).map_err(unavailable)?;
        conn.execute_batch(kv::SCHEMA).map_err(unavailable)?;
        let conn = Arc::new(Mutex::new(conn));
        checkpointer(path.to_owned(), Arc::downgrade(&conn))?;
        Ok(Db { conn, sent: Arc::new(tokio::sync::Notify::new()) })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every call is
        // one transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds to `table` each of `columns` (name, type and default) it lacks: a
/// file written by an older release gains them, its rows reading the default.
fn add_missing_columns(conn: &Connection, table: &str, columns: &[(&str, &str)]) -> Result<(), StoreError> {
    for (column, ddl) in columns {
        let present: bool = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, column], |r| {
                r.get::<_, i64>(0).map(|n| n > 0)
            })
            .map_err(unavailable)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
                .map_err(|e| StoreError::backend(&format!("SQLite add column {table}.{column}"), e))?;
        }
    }
    Ok(())
}

/// Every 100 ms while any handle on the database lives: a PASSIVE
/// checkpoint, which never blocks writers. Once all frames are copied the
/// next writer restarts the WAL from its start, and `journal_size_limit`
/// (64 MiB) truncates a WAL that grew during a burst.
fn checkpointer(path: std::path::PathBuf, alive: std::sync::Weak<Mutex<Connection>>) -> Result<(), StoreError> {
    let conn = Connection::open(&path).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_millis(100)).map_err(unavailable)?;
    std::thread::Builder::new()
        .name("crcr-sqlite-checkpoint".into())
        .spawn(move || {
            while alive.strong_count() > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .map_err(unavailable)?;
    Ok(())
}

/// A SQLite failure as a store error, the SQLite error kept as its source.
pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend("SQLite", e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crcr_core::domain::{DeliveryId, RepoFullName};
    use crcr_core::ports::DispatchStore;

    /// A backend failure keeps SQLite's error as its source, and its text in
    /// the message (what logs show).
    #[test]
    fn a_backend_failure_keeps_its_source() {
        let dir = std::env::temp_dir().join(format!("crcr-no-such-dir-{}", uuid::Uuid::new_v4()));
        let e = Db::open(&dir.join("a").join("crcr.sqlite")).err().expect("no such directory");
        assert!(matches!(e, StoreError::Unavailable { source: Some(_), .. }), "{e:?}");
        let source = std::error::Error::source(&e).expect("the SQLite error");
        assert!(source.downcast_ref::<rusqlite::Error>().is_some(), "{source:?}");
        assert!(e.to_string().contains(&source.to_string()), "{e}");
    }

    /// A file written before `hud_outbox.next_attempt_at_ms` existed opens,
    /// gains it and its index; its pending records are due at once.
    #[tokio::test]
    async fn old_files_gain_the_outbox_next_attempt_column() {
        use crcr_core::lifecycle::{HudOutbox, HudSync};
        let path = std::env::temp_dir().join(format!("crcr-migrate-outbox-{}.sqlite", uuid::Uuid::new_v4()));
        let column = ",\n    next_attempt_at_ms INTEGER NOT NULL DEFAULT 0 -- OutboxItem::next_attempt_at_ms";
        assert!(jobs::SCHEMA.contains(column), "jobs::SCHEMA no longer contains {column:?}");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&jobs::SCHEMA.replace(column, "")).unwrap();
            conn.execute(
                "INSERT INTO hud_outbox (id, delivery_id, body, sync, attempts, created_at_ms, updated_at_ms)
                 VALUES ('d-1|org/a|1|1|build|in_progress', 'd-1', '{}', 'pending', 2, 1000, 2000)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let jobs = SqliteJobStore::new(db.clone());
        let due = jobs.pending_outbox(1, 10).await.unwrap();
        assert_eq!(due.len(), 1, "an old pending record is due at once");
        assert_eq!((due[0].sync, due[0].attempts, due[0].next_attempt_at_ms), (HudSync::Pending, 2, 0));
        let indexed: i64 = db
            .lock()
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'hud_outbox_due'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(indexed, 1, "the due index was not created");
        drop(jobs);
        drop(db);
        Db::open(&path).expect("a second open finds the column and changes nothing");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// A file written before `dispatches.check_run`, `dispatches.device` and
    /// the head_sha index existed opens, gains them, and its records read as
    /// `check_run: false`, `device: None` and are found by commit.
    #[tokio::test]
    async fn old_files_gain_the_added_columns_and_index() {
        let path = std::env::temp_dir().join(format!("crcr-migrate-{}.sqlite", uuid::Uuid::new_v4()));
        let index = "-- DispatchStore::records_for_commit: in its order, so no sort step.
CREATE INDEX IF NOT EXISTS dispatches_head_sha ON dispatches (head_sha, created_at_ms, delivery_id, target_key)
    WHERE head_sha IS NOT NULL;
";
        let mut old_schema = SCHEMA.to_owned();
        for part in [
            "    check_run INTEGER NOT NULL DEFAULT 0, -- DispatchMeta::check_run\n",
            "    device TEXT,                         -- DispatchMeta::device\n",
            "    received_at_ms INTEGER,              -- DispatchMeta::received_at_ms\n",
            "    hook_id INTEGER,                     -- DispatchMeta::hook_id (then target_key is ports::record_key)\n",
            index,
        ] {
            assert!(old_schema.contains(part), "SCHEMA no longer contains {part:?}");
            old_schema = old_schema.replace(part, "");
        }
        let sha = "ec26c78d6d7e1b2a3c4d5e6f708192a3b4c5d6e7";
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&old_schema).unwrap();
            conn.execute(
                "INSERT INTO dispatches (delivery_id, target_key, target, status, attempts, lease_until_ms,
                    created_at_ms, updated_at_ms, event, head_sha, level)
                 VALUES ('d-1', 'org/a', 'org/a', 'dispatched', 1, 0, 1, 1, 'push', ?1, 'L4')",
                [sha],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let store = SqliteDispatchStore::new(db.clone());
        let records = store.records(&DeliveryId::parse("d-1").unwrap()).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].target, RepoFullName::parse("org/a").unwrap());
        assert!(!records[0].meta.check_run);
        assert_eq!(records[0].meta.device, None);
        assert_eq!(records[0].meta.received_at_ms, None);
        assert_eq!(records[0].meta.hook_id, None);
        assert_eq!(
            store.records_for_commit(&crcr_core::domain::HeadSha::parse(sha).unwrap(), 10).await.unwrap(),
            records
        );
        let indexed: i64 = db
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'dispatches_head_sha'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1, "the head_sha index was not created");
        drop(store);
        drop(db);
        Db::open(&path).expect("a second open finds the columns and changes nothing");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
