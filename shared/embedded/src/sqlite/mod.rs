//! SQLite adapters: the embedded default. One database file holds the queues
//! (with their dead-letter queues), the dispatch records and claim-check blobs.
//!
//! Durability: WAL journal with `synchronous=NORMAL`: a committed write
//! survives a crash of the process (what `crcr serve` needs); the last
//! transactions may be lost on power loss. Writes go to one writer thread
//! that commits them in groups, reads to connections of their own, and no
//! SQLite call runs on an async worker ([`Db`]).

mod blobs;
mod jobs;
mod kv;
mod queue;
mod store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// A shared handle on the database file: one writer thread, reader
/// connections on blocking threads, and the checkpointer thread.
///
/// Every write (`Db::write`) is a closure sent to the writer thread, which
/// owns the only write connection. It runs what has queued up since its last
/// commit as one transaction (group commit, at most [`MAX_GROUP`] writes),
/// each write inside its own savepoint: a write that fails is rolled back
/// alone, and no caller hears back before the commit that holds its write.
/// One commit per group instead of one per write is what keeps the WAL's
/// volume and SQLite's per-transaction cost flat as the load grows, and no
/// async worker thread ever waits on SQLite's file lock or a checkpoint.
/// Reads (`Db::read`) take a connection of their own on tokio's blocking
/// pool and see every write whose caller has heard back.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
    /// Woken on every send, so long-polling receivers in this process see new
    /// messages at once.
    sent: Arc<tokio::sync::Notify>,
}

struct Inner {
    path: std::path::PathBuf,
    writer: std::sync::mpsc::Sender<Job>,
    /// Idle reader connections (at most [`MAX_IDLE_READERS`] kept).
    readers: Mutex<Vec<Connection>>,
    /// Shared with the writer and checkpointer threads.
    #[cfg_attr(not(test), allow(dead_code))]
    wal_state: Arc<WalState>,
}

/// What the checkpointer and the writer share about the WAL (the policy
/// of [`Db::open`]).
#[derive(Default)]
struct WalState {
    /// Set by the checkpointer once it has caught up with a WAL past
    /// [`WAL_RESTART_BYTES`]: the writer's RESTART after its next group has
    /// little left to copy.
    restart_due: AtomicBool,
    /// RESTART checkpoints that started the WAL over when the checkpointer
    /// asked.
    restarts_asked: AtomicU64,
    /// RESTART checkpoints that started the WAL over because it passed
    /// [`WAL_HARD_BYTES`] before the checkpointer asked (it fell behind).
    restarts_forced: AtomicU64,
    /// Bytes of frames in the WAL after the writer's last commit.
    wal_bytes: AtomicU64,
}

/// Most writes one transaction holds: bounds how long a write waits behind
/// the group before it (each write is a few tens of microseconds).
pub const MAX_GROUP: usize = 256;

/// Prepared statements each connection keeps (rusqlite's cache): more
/// than the adapters' distinct statements, so none is prepared twice.
const STATEMENTS_CACHED: usize = 128;

/// Page cache of the writer's connection, KiB: the pages every group
/// writes (the tables' and indexes' last leaves, their parents) stay in it.
/// SQLite's default is 2,000 KiB per connection.
const WRITER_CACHE_KIB: i64 = 1024;

/// Page cache of every other connection (readers, the checkpointer's),
/// KiB: a reader's cache starts empty again after each write of another
/// connection, which under load is every read, so a larger one only holds
/// memory (at 500 webhooks/s for 150 s: 256 KiB caches, 66 MiB peak RSS;
/// SQLite's 2,000 KiB, 72 MiB; same CPU and lag).
const READER_CACHE_KIB: i64 = 256;

/// Idle reader connections kept open between reads.
const MAX_IDLE_READERS: usize = 4;

/// Frames in the WAL (bytes: pages and their 24-byte frame headers) past
/// which the checkpointer asks the writer for a RESTART checkpoint between
/// two groups: 16 MiB.
/// See [`Db::open`] for the policy.
pub const WAL_RESTART_BYTES: u64 = 16 * 1024 * 1024;

/// The WAL file's size past which SQLite truncates it when the WAL starts
/// over (`journal_size_limit`): 64 MiB. Below it the file is kept and
/// written over from its start (see [`Db::open`]); past it only when a
/// RESTART was held off (a long read), and then truncated back.
pub const WAL_FILE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// How long a connection waits for another one's lock (another process's
/// writer, such as an on-call command) before answering busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Frames in the WAL (bytes) past which the writer runs its RESTART
/// checkpoint without waiting to be asked, and waits for a checkpoint under
/// way (the checkpointer's passive one, slow on a slow disk) to end so that
/// the RESTART can run: 32 MiB, 16 MiB past [`WAL_RESTART_BYTES`], which at
/// 500 webhooks/s (some 90 MB/s into the WAL) leaves the checkpointer
/// 180 ms to catch up. With 8 MiB it ran out at times, and the writer then
/// held every write until the checkpointer's pass ended (90 ms lags). See
/// [`Db::open`].
pub const WAL_HARD_BYTES: u64 = WAL_RESTART_BYTES * 2;

/// The longest the writer waits so ([`WAL_HARD_BYTES`]) after a group.
const RESTART_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the writer's RESTART checkpoint waits for readers of the old WAL.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How often the checkpointer thread runs its PASSIVE checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Most passive checkpoints the checkpointer runs one after another before
/// it asks for the RESTART (see [`checkpointer`]).
const CATCH_UP_PASSES: usize = 3;

/// A pass that copied at most this many frames (256 KiB of 4 KiB pages)
/// leaves the RESTART little to do: no further pass.
const FEW_FRAMES: i64 = 64;

/// One write for the writer thread: runs on its connection inside a
/// savepoint (or not at all, given `None`: the group has no transaction),
/// says whether it succeeded (else its savepoint is rolled back), and gives
/// back what to do once the group's commit is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Reply) + Send>;
/// Tells the caller its answer, or the commit's failure.
type Reply = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// The error types of the adapters' ports, as [`Db::write`] and
/// [`Db::read`] build them when SQLite or its threads fail.
pub(crate) trait DbError: Send + 'static {
    /// A SQLite failure, SQLite's error kept as the source.
    fn sqlite(e: rusqlite::Error) -> Self;
    /// No SQLite answer: the writer thread is gone (the process is
    /// stopping), the call panicked, or a reader connection could not be
    /// opened (`what` says which).
    fn stopped(what: &str) -> Self;
}

impl DbError for StoreError {
    fn sqlite(e: rusqlite::Error) -> Self {
        unavailable(e)
    }
    fn stopped(what: &str) -> Self {
        StoreError::unavailable(what)
    }
}

impl DbError for crcr_core::ports::QueueError {
    fn sqlite(e: rusqlite::Error) -> Self {
        crcr_core::ports::QueueError::backend("SQLite", e)
    }
    fn stopped(what: &str) -> Self {
        crcr_core::ports::QueueError::unavailable(what)
    }
}

impl DbError for crcr_core::ports::BlobError {
    fn sqlite(e: rusqlite::Error) -> Self {
        crcr_core::ports::BlobError::backend("SQLite", e)
    }
    fn stopped(what: &str) -> Self {
        crcr_core::ports::BlobError::unavailable(what)
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and its schema,
    /// and starts the writer and checkpointer threads (they stop when the
    /// last handle is dropped).
    ///
    /// Durability: WAL journal with `synchronous=NORMAL`: a write whose
    /// caller heard back survives a crash of the process; the last
    /// transactions may be lost on power loss.
    ///
    /// Checkpoint policy (the WAL stays bounded under constant writes):
    /// no checkpoint runs inside a commit (`wal_autocheckpoint=0`). The
    /// checkpointer thread runs a PASSIVE checkpoint every 50 ms on its own
    /// connection: it copies committed frames into the database without
    /// blocking the writer, but under constant writes it never catches the
    /// WAL's end, so the WAL would never start over and grows without
    /// bound (SQLite docs, "Write-Ahead Logging" → "Avoiding Excessively
    /// Large WAL Files"; issue 14 saw 2.43 GB after 60 s at 100
    /// webhooks/s). So once the WAL holds [`WAL_RESTART_BYTES`] (16 MiB of
    /// frames), the checkpointer catches up: it fsyncs the database file
    /// and runs more PASSIVE checkpoints at once, each copying what was
    /// committed during the one before (up to three), and then asks
    /// the writer for a RESTART checkpoint after its group: with no write
    /// in flight it copies the last few milliseconds of commits, and the next
    /// group starts the WAL from its beginning, writing over the frames
    /// already copied. The file keeps its size (SQLite truncates it only past
    /// [`WAL_FILE_LIMIT_BYTES`], `journal_size_limit`): truncating it to 16
    /// MiB at every restart cost the writer 1 to 3.4 ms more each time
    /// (`strace -T`: the ftruncate and an fsync), 3 to 4 times a second at
    /// 500 webhooks/s, while every write waited. Writes wait during
    /// the RESTART, so it is left as little as possible to copy and to
    /// fsync: the RESTART the writer ran on its own as soon as the WAL
    /// passed 16 MiB had up to 50 ms of commits (some 4 MB at 500
    /// webhooks/s) to fsync and copy, and held every write 3 to 29 ms.
    /// Should the checkpointer fall behind (a slow disk: its fsync), the
    /// writer runs the RESTART itself once the WAL holds
    /// [`WAL_HARD_BYTES`] (32 MiB), and waits (up to 1 s) for a checkpoint
    /// under way to end (SQLite does not wait for the checkpoint lock). A
    /// RESTART that finds a checkpoint or a reader in the way is tried
    /// again after the next group. The WAL thus holds about 16 MiB plus
    /// 50 ms of writes, and under 32 MiB and a group when the disk is slow;
    /// its file is as large as the most it held.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let conn = open_connection(path)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB).map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        // Files written before a column of `dispatches` existed get it.
        add_missing_columns(&conn, "dispatches", &ADDED_DISPATCH_COLUMNS)?;
        conn.execute_batch(jobs::SCHEMA).map_err(unavailable)?;
        add_missing_columns(&conn, "hud_outbox", &jobs::ADDED_OUTBOX_COLUMNS)?;
        conn.execute_batch(jobs::SCHEMA_AFTER_COLUMNS).map_err(unavailable)?;
        conn.execute_batch(kv::SCHEMA).map_err(unavailable)?;
        let (writer, jobs) = std::sync::mpsc::channel::<Job>();
        let frame_bytes = frame_bytes(&conn)?;
        // After `wal_autocheckpoint` (open_connection), which replaces the hook.
        conn.wal_hook(Some(note_wal_frames));
        let wal_state = Arc::new(WalState::default());
        let state = wal_state.clone();
        std::thread::Builder::new()
            .name("crcr-sqlite-writer".into())
            .spawn(move || write_groups(conn, jobs, frame_bytes, &state))
            .map_err(unavailable)?;
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            writer,
            readers: Mutex::new(Vec::new()),
            wal_state: wal_state.clone(),
        });
        checkpointer(path.to_owned(), Arc::downgrade(&inner), wal_state)?;
        Ok(Db { inner, sent: Arc::new(tokio::sync::Notify::new()) })
    }

    /// Runs `f` on the writer thread inside the next group's transaction
    /// (its own savepoint): its changes are kept if it returns `Ok` and the
    /// group commits. Errors: `f`'s own, or a failed commit or stopped
    /// writer as `E`.
    pub(crate) async fn write<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: DbError,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let out = conn.map(f);
            let ok = matches!(out, Some(Ok(_)));
            let reply: Reply = Box::new(move |commit: Option<&rusqlite::Error>| {
                let out = match (out, commit) {
                    // Done but not committed, or never run: the commit's (or BEGIN's) error.
                    (Some(Ok(_)) | None, Some(e)) => Err(E::sqlite(clone_error(e))),
                    (Some(out), _) => out,
                    (None, None) => Err(E::stopped("the SQLite write did not run")),
                };
                let _ = tx.send(out);
            });
            (ok, reply)
        });
        self.inner.writer.send(job).map_err(|_| E::stopped("the SQLite writer thread stopped"))?;
        rx.await.map_err(|_| E::stopped("the SQLite write failed: the writer thread stopped or the write panicked"))?
    }

    /// Runs `f` on a reader connection on tokio's blocking pool: it sees
    /// every write whose caller has heard back. Errors: `f`'s own, or the
    /// connection could not be opened.
    pub(crate) async fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: DbError,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(c) => c,
                None => open_connection(&inner.path).map_err(|e| E::stopped(&e.to_string()))?,
            };
            let out = f(&conn);
            let mut idle = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|_| E::stopped("the SQLite read panicked"))?
    }
}

impl Db {
    /// The rows of `sql` with `params` on a reader connection
    /// ([`Db::read`]), each made by `row`; a row `row` refuses ends the read
    /// with its error.
    pub(crate) async fn rows<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<rusqlite::types::Value>,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Vec<T>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params), row).map_err(unavailable)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(unavailable)??);
            }
            Ok(out)
        })
        .await
    }
}

/// A connection with the relay's settings: WAL, `synchronous=NORMAL`, no
/// automatic checkpoint (see [`Db::open`]), a `journal_size_limit` of
/// [`WAL_FILE_LIMIT_BYTES`], a 5 s busy timeout, and three that keep a
/// write's CPU down (measured with `perf` on the writer thread at 500
/// webhooks/s, where they took a fifth of its time):
/// - `temp_store=MEMORY`: the savepoints' sub-journal (a copy of each page
///   a write changes first) stays in memory; by default it spills to a
///   temporary file past 64 KiB, which every write then wrote to.
/// - The query planner's stability guarantee (`SQLITE_DBCONFIG_ENABLE_QPSG`):
///   without it, a statement with `LIMIT ?n` is planned again each time `n`
///   is bound (SQLite reads the bound LIMIT, `sqlite3ExprIsInteger`).
/// - Room for [`STATEMENTS_CACHED`] prepared statements, the adapters' own
///   (rusqlite keeps 16 by default, and the writer runs more than that).
///
/// Its page cache is [`READER_CACHE_KIB`] (the writer's is set larger).
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn =
        Connection::open(path).map_err(|e| StoreError::backend(&format!("SQLite open {}", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(unavailable)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB).map_err(unavailable)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
    conn.pragma_update(None, "journal_size_limit", WAL_FILE_LIMIT_BYTES as i64).map_err(unavailable)?;
    Ok(conn)
}

/// Runs one statement without parameters, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Undoes a write: back to its savepoint, which is then released.
fn rollback_to_savepoint(conn: &Connection) -> rusqlite::Result<()> {
    run(conn, "ROLLBACK TO w")?;
    run(conn, "RELEASE w")
}

/// Runs `f` inside a savepoint of the writer's transaction (nested in the
/// write's own): kept if it answers `Ok`, undone alone otherwise, so one
/// part of a write can fail without the others. Errors: `f`'s own, or the
/// savepoint's.
pub(crate) fn in_savepoint<T>(conn: &Connection, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    run(conn, "SAVEPOINT part").map_err(unavailable)?;
    let out = f();
    let settled = match &out {
        Ok(_) => run(conn, "RELEASE part"),
        Err(_) => run(conn, "ROLLBACK TO part").and_then(|_| run(conn, "RELEASE part")),
    };
    settled.map_err(unavailable)?;
    out
}

/// A SQLite error with primary `code` and `message`.
fn sqlite_error(code: std::ffi::c_int, message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message.to_owned()))
}

/// rusqlite's errors are not `Clone`; a group's commit failure goes to
/// each of its callers as the same code and message.
fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => rusqlite::Error::SqliteFailure(*code, message.clone()),
        other => sqlite_error(rusqlite::ffi::SQLITE_ERROR, &other.to_string()),
    }
}

/// The writer thread: takes every write queued (at most [`MAX_GROUP`]),
/// runs them in one transaction, each in its own savepoint, commits, then
/// answers them; between groups, the RESTART checkpoint of [`Db::open`]'s
/// policy when [`WalState::restart_due`] (the checkpointer asks) or past
/// [`WAL_HARD_BYTES`]. Ends when every [`Db`] handle is dropped.
fn write_groups(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>, frame_bytes: u64, state: &WalState) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Once anything goes wrong with the transaction itself (BEGIN, a
        // savepoint, a rollback to one, or SQLite rolling the whole
        // transaction back after an I/O error), no further write of the
        // group runs and none is committed: every caller hears the error.
        let mut broken = run(&conn, "BEGIN IMMEDIATE").err();
        let mut replies = Vec::with_capacity(group.len());
        for job in group {
            if broken.is_none() && conn.is_autocommit() {
                broken = Some(sqlite_error(rusqlite::ffi::SQLITE_ABORT, "SQLite rolled the group's transaction back"));
            }
            if broken.is_none() {
                broken = run(&conn, "SAVEPOINT w").err();
            }
            if broken.is_some() {
                replies.push(job(None).1);
                continue;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&conn))));
            let (settled, reply) = match ran {
                Ok((true, reply)) => (run(&conn, "RELEASE w"), Some(reply)),
                Ok((false, reply)) => (rollback_to_savepoint(&conn), Some(reply)),
                // The job's answer channel was dropped with it: its caller hears "stopped".
                Err(_) => (rollback_to_savepoint(&conn), None),
            };
            broken = settled.err();
            replies.extend(reply);
        }
        let failed = match broken {
            Some(e) => Some(e),
            None => run(&conn, "COMMIT").err(),
        };
        if failed.is_some() && !conn.is_autocommit() {
            let _ = run(&conn, "ROLLBACK");
        }
        for reply in replies {
            reply(failed.as_ref());
        }
        let wal_len = WAL_FRAMES.get() * frame_bytes;
        state.wal_bytes.store(wal_len, Ordering::Relaxed);
        let asked = state.restart_due.swap(false, Ordering::AcqRel);
        if wal_len > WAL_HARD_BYTES || (asked && wal_len > WAL_RESTART_BYTES) {
            // (busy, frames in the WAL, frames checkpointed); busy 1: another
            // checkpoint or a reader was in the way, tried after the next group.
            // RESTART waits for readers of the old WAL with the busy handler:
            // at most 100 ms here, so a long read (an on-call scan) delays
            // the restart, not the writes queued behind it.
            let _ = conn.busy_timeout(RESTART_WAIT);
            let attempt = || {
                conn.prepare_cached("PRAGMA wal_checkpoint(RESTART)").and_then(|mut s| {
                    s.query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                })
            };
            let mut restart = attempt();
            // (1, -1, -1): another checkpoint holds the checkpoint lock,
            // which SQLite does not wait for. Past WAL_HARD_BYTES the
            // writer waits for it to end (up to RESTART_HOLD: writes
            // wait, the WAL stops growing).
            let hold_until = std::time::Instant::now() + RESTART_HOLD;
            while matches!(restart, Ok((1, -1, _)))
                && wal_len > WAL_HARD_BYTES
                && std::time::Instant::now() < hold_until
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
                restart = attempt();
            }
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
            match restart {
                Ok((0, _, _)) => {
                    let counter = if asked { &state.restarts_asked } else { &state.restarts_forced };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                // Busy (a checkpoint or a reader in the way) or failed:
                // tried again after the next group.
                _ => state.restart_due.store(true, Ordering::Release),
            }
            tracing::debug!(?restart, "WAL RESTART checkpoint");
        }
    }
}

thread_local! {
    /// Frames in the WAL after the writer's last commit ([`note_wal_frames`];
    /// it holds them until the next commit after a RESTART starts it over).
    static WAL_FRAMES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The writer connection's WAL hook (`sqlite3_wal_hook`): SQLite calls it
/// after each commit with the frames now in the WAL.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(u64::try_from(frames).unwrap_or(0));
    Ok(())
}

/// Bytes a WAL frame takes: a page and its 24-byte header ("Database File
/// Format" → "WAL File Format", SQLite docs).
fn frame_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let page: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0)).map_err(unavailable)?;
    Ok(page + 24)
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

/// Every 50 ms while any handle on the database lives: a PASSIVE
/// checkpoint, which never blocks the writer (see [`Db::open`]). Past
/// [`WAL_RESTART_BYTES`] of frames in the WAL: an fsync of the database file and up to
/// [`CATCH_UP_PASSES`] more passive checkpoints, each copying what was
/// committed during the one before, until one copies at most
/// [`FEW_FRAMES`]; then an fsync of both files, and
/// [`WalState::restart_due`] for the
/// writer. Its RESTART, which holds every write while it runs, is left the
/// last milliseconds of commits to copy and to fsync.
fn checkpointer(
    path: std::path::PathBuf,
    alive: std::sync::Weak<Inner>,
    state: Arc<WalState>,
) -> Result<(), StoreError> {
    let conn = Connection::open(&path).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_millis(100)).map_err(unavailable)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB).map_err(unavailable)?;
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let frame_bytes = frame_bytes(&conn)?;
    // (frames in the WAL, frames checkpointed), or None on an error.
    let passive = move || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))).ok()
    };
    std::thread::Builder::new()
        .name("crcr-sqlite-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if alive.strong_count() == 0 {
                break;
            }
            let mut done = passive();
            if done.is_some_and(|(frames, _)| u64::try_from(frames).unwrap_or(0) * frame_bytes > WAL_RESTART_BYTES) {
                // A passive checkpoint that does not reach the WAL's end
                // (under constant writes, none does) leaves the database
                // file unsynced: the RESTART would fsync every page copied
                // since the WAL began. Flushed here, off the writer; then
                // what was committed meanwhile is copied, until a pass
                // finds little, and the WAL's newest frames flushed.
                for _ in 0..CATCH_UP_PASSES {
                    sync_data(&path);
                    let before = done.map(|(_, checkpointed)| checkpointed);
                    done = passive();
                    match (before, done) {
                        (Some(before), Some((_, after))) if after >= before && after - before > FEW_FRAMES => {}
                        _ => break,
                    }
                }
                sync_data(&path);
                sync_data(&wal);
                state.restart_due.store(true, Ordering::Release);
            }
        })
        .map_err(unavailable)?;
    Ok(())
}

/// Flushes `path`'s written data to the disk (fdatasync), so that SQLite's
/// own fsync of it, on the writer thread, has little left to write. A
/// failure is left to SQLite's fsync to meet and report.
fn sync_data(path: &Path) {
    let _ = std::fs::File::open(path).and_then(|f| f.sync_data());
}

/// For tests: the steps of SQLite's plan for `sql` (three parameters bound
/// to `'x'`, 1 and 10, as many as it takes) on a fresh database and a
/// connection with the relay's settings (`open_connection`), asserting
/// it reads index `index` in its order: no table scan, no temporary sort.
#[cfg(test)]
pub(crate) fn assert_plan_reads_index(sql: &str, index: &str) {
    let path = std::env::temp_dir().join(format!("crcr-plan-{}.sqlite", uuid::Uuid::new_v4()));
    let db = Db::open(&path).unwrap();
    let plan: Vec<String> = {
        let conn = open_connection(&path).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values: [&dyn rusqlite::ToSql; 3] = [&"x", &1, &10];
        let n = stmt.parameter_count();
        let rows = stmt.query_map(&values[..n], |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    drop(db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    assert!(plan.iter().any(|step| step.contains(&format!("USING INDEX {index}"))), "{plan:?}");
    assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE") || step.starts_with("SCAN")), "{plan:?}");
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

    fn temp_db(name: &str) -> (std::path::PathBuf, Db) {
        let path = std::env::temp_dir().join(format!("crcr-{name}-{}.sqlite", uuid::Uuid::new_v4()));
        let db = Db::open(&path).unwrap();
        (path, db)
    }

    fn remove(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// Writes sent at once share a transaction, each in its own savepoint: a
    /// failing one is rolled back alone and hears its own error, the others
    /// are kept, and every caller hears back only after the commit (a read
    /// then sees its write).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_in_a_group_is_rolled_back_alone() {
        let (path, db) = temp_db("group");
        let writes = (0..50).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO blobs (key, data, created_at_ms) VALUES (?1, x'00', 0)", [format!("k{i}")])
                        .map_err(StoreError::sqlite)?;
                    if i % 10 == 3 {
                        return Err(StoreError::Corrupt(format!("write {i} refused after its insert")));
                    }
                    Ok(i)
                })
                .await
            })
        });
        let answers: Vec<_> = futures::future::join_all(writes).await.into_iter().map(Result::unwrap).collect();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Ok(n) => assert_eq!(*n, i),
                Err(StoreError::Corrupt(m)) => {
                    assert_eq!((i % 10, m.as_str()), (3, format!("write {i} refused after its insert").as_str()))
                }
                Err(e) => panic!("write {i}: {e}"),
            }
        }
        let keys: Vec<String> = db
            .read(|c| {
                let mut s = c
                    .prepare("SELECT key FROM blobs ORDER BY CAST(substr(key, 2) AS INTEGER)")
                    .map_err(StoreError::sqlite)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(StoreError::sqlite)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(StoreError::sqlite)
            })
            .await
            .unwrap();
        let kept: Vec<String> = (0..50).filter(|i| i % 10 != 3).map(|i| format!("k{i}")).collect();
        assert_eq!(keys, kept);
        drop(db);
        remove(&path);
    }

    /// A write that panics is rolled back and its caller hears an error; the
    /// writer thread goes on with the next one.
    #[tokio::test]
    async fn a_panicking_write_is_rolled_back_and_the_writer_goes_on() {
        let (path, db) = temp_db("panic");
        let err = db
            .write::<(), StoreError>(|c| {
                c.execute("INSERT INTO blobs (key, data, created_at_ms) VALUES ('p', x'00', 0)", []).unwrap();
                panic!("a bug in a write");
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let n: i64 = db
            .write(|c| {
                c.execute("INSERT INTO blobs (key, data, created_at_ms) VALUES ('q', x'00', 0)", [])
                    .map_err(StoreError::sqlite)?;
                c.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0)).map_err(StoreError::sqlite)
            })
            .await
            .unwrap();
        assert_eq!(n, 1, "the panicking write's insert was rolled back; the next write ran");
        drop(db);
        remove(&path);
    }

    /// Under constant writes (a 28 KB row in and one out per write, as the
    /// queue under load) the WAL stays near [`WAL_RESTART_BYTES`]: at least
    /// 96 MiB go through it and neither its frames nor its file ever pass
    /// [`WAL_HARD_BYTES`] and a group, even with the disk busy (a passive
    /// checkpoint's fsync slow: it once passed the bound by 8 MiB on a
    /// clean-clone CI run with a build beside it, before the writer waited
    /// for it). Without the RESTART the passive checkpoints never catch the
    /// WAL's end and it grows by every write (issue 14: 2.43 GB after 60 s
    /// at 100/s). The checkpointer catches up and asks for the RESTART (the
    /// writes go on until it has, at most 280 MiB): were it never to ask,
    /// the writer would still start the WAL over at 32 MiB, each time
    /// copying and fsyncing all the passive checkpoints had left while
    /// every write waits (3 to 29 ms at 500 webhooks/s). And the file is
    /// written over from its start, never truncated (the WAL started over,
    /// its file did not shrink), which cost every restart 1 to 3.4 ms more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_constant_writes() {
        let (path, db) = temp_db("wal");
        let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
        let state = db.inner.wal_state.clone();
        let row = vec![7u8; 28 * 1024];
        let (mut peak_file, mut peak_frames) = (0, 0);
        let (mut started_over, mut shrank) = (0, 0);
        let (mut last_file, mut last_frames) = (0, 0);
        for i in 0..10_000i64 {
            if i >= 3500 && state.restarts_asked.load(Ordering::Relaxed) > 0 {
                break;
            }
            let row = row.clone();
            db.write(move |c| {
                c.prepare_cached("INSERT INTO blobs (key, data, created_at_ms) VALUES (?1, ?2, 0)")
                    .and_then(|mut s| s.execute(rusqlite::params![format!("r{i}"), row]))
                    .and_then(|_| c.prepare_cached("DELETE FROM blobs WHERE key = ?1"))
                    .and_then(|mut s| s.execute([format!("r{}", i - 1)]))
                    .map_err(StoreError::sqlite)
            })
            .await
            .unwrap();
            let file = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            let frames = state.wal_bytes.load(Ordering::Relaxed);
            (peak_file, peak_frames) = (peak_file.max(file), peak_frames.max(frames));
            started_over += usize::from(frames < last_frames);
            shrank += usize::from(file < last_file);
            (last_file, last_frames) = (file, frames);
        }
        assert!(peak_file > 0 && peak_frames > 0, "no WAL was seen");
        // The writer holds writes past WAL_HARD_BYTES until its RESTART can
        // run: at most a group (here one 28 KB write) more.
        assert!(peak_frames <= WAL_HARD_BYTES + 1024 * 1024, "the WAL held {peak_frames} bytes of frames");
        assert!(peak_file <= WAL_HARD_BYTES + 1024 * 1024, "the WAL file reached {peak_file} bytes");
        assert!(started_over > 0, "the WAL never started over");
        assert_eq!(shrank, 0, "the WAL file was truncated when the WAL started over");
        let (asked, forced) =
            (state.restarts_asked.load(Ordering::Relaxed), state.restarts_forced.load(Ordering::Relaxed));
        assert!(asked > 0, "the checkpointer never asked for the RESTART ({forced} past 32 MiB)");
        drop(db);
        remove(&path);
    }

    /// Every connection has the settings that keep a write's CPU down
    /// (see `open_connection`): nothing measures them otherwise.
    #[test]
    fn connections_keep_sub_journals_in_memory_and_plans_stable() {
        let (path, db) = temp_db("settings");
        let conn = open_connection(&path).unwrap();
        let temp_store: i64 = conn.pragma_query_value(None, "temp_store", |r| r.get(0)).unwrap();
        assert_eq!(temp_store, 2, "temp_store=MEMORY");
        assert!(conn.db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG).unwrap());
        drop((conn, db));
        remove(&path);
    }

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
        let indexed: i64 = Connection::open(&path)
            .unwrap()
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
        let indexed: i64 = Connection::open(&path)
            .unwrap()
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
