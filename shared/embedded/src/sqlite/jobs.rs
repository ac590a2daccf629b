//! [`JobStore`] on SQLite: `jobs`, `hud_outbox` and `violations` tables;
//! a transition and its outbox item are written in one transaction, and
//! only if the job's state is the expected one.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

use super::Db;
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{
    CallbackCounts, CheckRunItem, CheckRunOutbox, HudOutbox, HudSync, JobKey, JobLifecycle, JobRecord, JobState,
    JobStats, OutboxBacklog, OutboxItem, Violation,
};
use crcr_core::ports::StoreError;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    delivery_id TEXT NOT NULL,
    sort_key TEXT NOT NULL,              -- JobKey::sort_key()
    repo TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    run_attempt INTEGER NOT NULL,
    job_name TEXT NOT NULL,
    state TEXT NOT NULL,
    level TEXT NOT NULL,
    dispatched_at_ms INTEGER,
    in_progress_at_ms INTEGER,
    completed_at_ms INTEGER,
    conclusion TEXT,
    queue_time_s REAL,
    execution_time_s REAL,
    workflow_name TEXT,
    url TEXT,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, sort_key)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, updated_at_ms);
CREATE TABLE IF NOT EXISTS hud_outbox (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sync TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL DEFAULT 0 -- OutboxItem::next_attempt_at_ms
);
CREATE INDEX IF NOT EXISTS hud_outbox_pending ON hud_outbox (sync, created_at_ms);
CREATE INDEX IF NOT EXISTS hud_outbox_delivery ON hud_outbox (delivery_id, created_at_ms);
CREATE TABLE IF NOT EXISTS violations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS violations_delivery ON violations (delivery_id);
CREATE TABLE IF NOT EXISTS check_outbox (
    id TEXT PRIMARY KEY,                 -- CheckRunItem::id_for
    delivery_id TEXT NOT NULL,
    repo TEXT NOT NULL,                  -- the upstream repository
    request TEXT NOT NULL,               -- CheckRunRequest JSON
    version INTEGER NOT NULL,
    check_run_id INTEGER,
    sync TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS check_outbox_pending ON check_outbox (sync, created_at_ms);
CREATE INDEX IF NOT EXISTS check_outbox_delivery ON check_outbox (delivery_id);
"#;

/// Columns of `hud_outbox` added after its first release (name, type and
/// default as in [`SCHEMA`]): [`super::Db::open`] adds the missing ones to an
/// older file (its pending items read as due at once), then runs
/// [`SCHEMA_AFTER_COLUMNS`].
pub(super) const ADDED_OUTBOX_COLUMNS: [(&str, &str); 1] = [("next_attempt_at_ms", "INTEGER NOT NULL DEFAULT 0")];

/// Indexes over added columns: created once the columns exist.
pub(super) const SCHEMA_AFTER_COLUMNS: &str = r#"
-- HudOutbox::pending_outbox: due items in due order.
CREATE INDEX IF NOT EXISTS hud_outbox_due ON hud_outbox (sync, next_attempt_at_ms, created_at_ms);
"#;

/// [`JobStore`](crcr_core::lifecycle::JobStore) on SQLite.
#[derive(Clone)]
pub struct SqliteJobStore {
    db: Db,
}

impl SqliteJobStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

use super::unavailable;

const JOB_COLUMNS: &str = "delivery_id, repo, run_id, run_attempt, job_name, state, level, dispatched_at_ms,
    in_progress_at_ms, completed_at_ms, conclusion, queue_time_s, execution_time_s, workflow_name, url, updated_at_ms";

fn job(r: &Row<'_>) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let delivery: String = r.get(0)?;
    let repo: String = r.get(1)?;
    let state: String = r.get(5)?;
    let level: String = r.get(6)?;
    let corrupt = |what: String| StoreError::Corrupt(format!("job {delivery}/{repo}: {what}"));
    let (Ok(delivery_id), Ok(repo_name)) = (DeliveryId::parse(&delivery), RepoFullName::parse(&repo)) else {
        return Ok(Err(corrupt("bad key".into())));
    };
    let (Some(state), Some(level)) = (JobState::parse(&state), Level::parse(&level)) else {
        return Ok(Err(corrupt(format!("state {state:?} / level {level:?}"))));
    };
    Ok(Ok(JobRecord {
        key: JobKey {
            delivery_id,
            repo: repo_name,
            run_id: r.get::<_, i64>(2)? as u64,
            run_attempt: r.get(3)?,
            job_name: r.get(4)?,
        },
        state,
        level,
        dispatched_at_ms: r.get(7)?,
        in_progress_at_ms: r.get(8)?,
        completed_at_ms: r.get(9)?,
        conclusion: r.get(10)?,
        queue_time_s: r.get(11)?,
        execution_time_s: r.get(12)?,
        workflow_name: r.get(13)?,
        url: r.get(14)?,
        updated_at_ms: r.get(15)?,
    }))
}

fn outbox_item(r: &Row<'_>) -> rusqlite::Result<Result<OutboxItem, StoreError>> {
    let id: String = r.get(0)?;
    let delivery: String = r.get(1)?;
    let body: String = r.get(2)?;
    let sync: String = r.get(3)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("outbox {id}: {what}"));
    let parsed = (|| {
        Ok(OutboxItem {
            delivery_id: DeliveryId::parse(&delivery).map_err(|e| corrupt(&e.to_string()))?,
            body: serde_json::from_str(&body).map_err(|e| corrupt(&e.to_string()))?,
            sync: HudSync::parse(&sync).ok_or_else(|| corrupt("sync state"))?,
            attempts: r.get(4).map_err(|e| corrupt(&e.to_string()))?,
            last_error: r.get(5).map_err(|e| corrupt(&e.to_string()))?,
            created_at_ms: r.get(6).map_err(|e| corrupt(&e.to_string()))?,
            updated_at_ms: r.get(7).map_err(|e| corrupt(&e.to_string()))?,
            next_attempt_at_ms: r.get(8).map_err(|e| corrupt(&e.to_string()))?,
            id: id.clone(),
        })
    })();
    Ok(parsed)
}

const CHECK_COLUMNS: &str =
    "id, delivery_id, repo, request, version, check_run_id, sync, attempts, last_error, created_at_ms, updated_at_ms";

fn check_item(r: &Row<'_>) -> rusqlite::Result<Result<CheckRunItem, StoreError>> {
    let id: String = r.get(0)?;
    let (delivery, repo, request, sync): (String, String, String, String) =
        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(6)?);
    let corrupt = |what: String| StoreError::Corrupt(format!("check-run item {id}: {what}"));
    let parsed = (|| {
        Ok(CheckRunItem {
            delivery_id: DeliveryId::parse(&delivery).map_err(|e| corrupt(e.to_string()))?,
            repo: RepoFullName::parse(&repo).map_err(|e| corrupt(e.to_string()))?,
            request: serde_json::from_str(&request).map_err(|e| corrupt(e.to_string()))?,
            version: r.get(4).map_err(|e| corrupt(e.to_string()))?,
            check_run_id: r.get::<_, Option<i64>>(5).map_err(|e| corrupt(e.to_string()))?.map(|n| n as u64),
            sync: HudSync::parse(&sync).ok_or_else(|| corrupt("sync state".into()))?,
            attempts: r.get(7).map_err(|e| corrupt(e.to_string()))?,
            last_error: r.get(8).map_err(|e| corrupt(e.to_string()))?,
            created_at_ms: r.get(9).map_err(|e| corrupt(e.to_string()))?,
            updated_at_ms: r.get(10).map_err(|e| corrupt(e.to_string()))?,
            id: id.clone(),
        })
    })();
    Ok(parsed)
}

const OUTBOX_COLUMNS: &str =
    "id, delivery_id, body, sync, attempts, last_error, created_at_ms, updated_at_ms, next_attempt_at_ms";

fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<Result<T, StoreError>>>) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(unavailable)??);
    }
    Ok(out)
}

impl SqliteJobStore {
    /// The transition, its HUD outbox item and (when given) the check-run
    /// item upsert, in one transaction.
    async fn write_transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: Option<&CheckRunItem>,
    ) -> Result<bool, StoreError> {
        let (record, outbox, check) = (record.clone(), outbox.clone(), check.cloned());
        self.db.write(move |tx| Self::transition_in(tx, expected, &record, &outbox, check.as_ref())).await
    }

    fn transition_in(
        tx: &rusqlite::Connection,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: Option<&CheckRunItem>,
    ) -> Result<bool, StoreError> {
        let k = &record.key;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM jobs WHERE delivery_id = ?1 AND sort_key = ?2",
                params![k.delivery_id.as_str(), k.sort_key()],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        if current.as_deref() != expected.map(JobState::as_str) {
            return Ok(false);
        }
        let outbox_exists: bool = tx
            .query_row("SELECT 1 FROM hud_outbox WHERE id = ?1", [&outbox.id], |_| Ok(true))
            .optional()
            .map_err(unavailable)?
            .unwrap_or(false);
        if outbox_exists {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO jobs (delivery_id, sort_key, repo, run_id, run_attempt, job_name, state, level,
                dispatched_at_ms, in_progress_at_ms, completed_at_ms, conclusion, queue_time_s, execution_time_s,
                workflow_name, url, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                k.delivery_id.as_str(),
                k.sort_key(),
                k.repo.as_str(),
                k.run_id as i64,
                k.run_attempt,
                k.job_name,
                record.state.as_str(),
                record.level.as_str(),
                record.dispatched_at_ms,
                record.in_progress_at_ms,
                record.completed_at_ms,
                record.conclusion,
                record.queue_time_s,
                record.execution_time_s,
                record.workflow_name,
                record.url,
                record.updated_at_ms
            ],
        )
        .map_err(unavailable)?;
        tx.execute(
            &format!("INSERT INTO hud_outbox ({OUTBOX_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                outbox.id,
                outbox.delivery_id.as_str(),
                outbox.body.to_string(),
                outbox.sync.as_str(),
                outbox.attempts,
                outbox.last_error,
                outbox.created_at_ms,
                outbox.updated_at_ms,
                outbox.next_attempt_at_ms
            ],
        )
        .map_err(unavailable)?;
        if let Some(c) = check {
            upsert_check(tx, c, false)?;
        }
        Ok(true)
    }
}

/// Inserts check-run item `c` as given or, when one with its id exists,
/// takes its request with version + 1, sync pending and its
/// `updated_at_ms` (GitHub's id, attempts, last error and creation time
/// kept). With `forward_only`, the existing one is changed only from an
/// in-progress request to a completed one. Returns the rows written (0 or 1).
fn upsert_check(conn: &rusqlite::Connection, c: &CheckRunItem, forward_only: bool) -> Result<usize, StoreError> {
    let request = serde_json::to_string(&c.request)
        .map_err(|e| StoreError::Corrupt(format!("check-run item {}: request: {e}", c.id)))?;
    conn.execute(
        &format!(
            "INSERT INTO check_outbox ({CHECK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (id) DO UPDATE SET request = excluded.request, version = version + 1,
                sync = 'pending', updated_at_ms = excluded.updated_at_ms
             WHERE ?12 = 0 OR (json_extract(check_outbox.request, '$.status') = 'in_progress'
                AND json_extract(excluded.request, '$.status') = 'completed')"
        ),
        params![
            c.id,
            c.delivery_id.as_str(),
            c.repo.as_str(),
            request,
            c.version,
            c.check_run_id.map(|n| n as i64),
            c.sync.as_str(),
            c.attempts,
            c.last_error,
            c.created_at_ms,
            c.updated_at_ms,
            forward_only as i64
        ],
    )
    .map_err(unavailable)
}

#[async_trait]
impl JobLifecycle for SqliteJobStore {
    async fn get(&self, key: &JobKey) -> Result<Option<JobRecord>, StoreError> {
        let (delivery, sort_key) = (key.delivery_id.as_str().to_owned(), key.sort_key());
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE delivery_id = ?1 AND sort_key = ?2"),
                    params![delivery, sort_key],
                    job,
                )
                .optional()
                .map_err(unavailable)?
                .transpose()
            })
            .await
    }
    async fn transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
    ) -> Result<bool, StoreError> {
        self.write_transition(expected, record, outbox, None).await
    }
    async fn record_violation(&self, v: &Violation) -> Result<(), StoreError> {
        let v = v.clone();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO violations (delivery_id, repo, reason, at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![v.delivery_id.as_str(), v.repo.as_str(), v.reason, v.at_ms],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }
    async fn jobs(&self, delivery: &DeliveryId) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE delivery_id = ?1 ORDER BY sort_key");
        self.db.rows(sql, vec![delivery.as_str().to_owned().into()], job).await
    }
    async fn violations(&self, delivery: &DeliveryId) -> Result<Vec<Violation>, StoreError> {
        let delivery = delivery.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT repo, reason, at_ms FROM violations WHERE delivery_id = ?1 ORDER BY seq")
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([delivery.as_str()], |r| {
                        let (repo, reason, at_ms): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                        Ok(RepoFullName::parse(&repo)
                            .map(|repo| Violation { delivery_id: delivery.clone(), repo, reason, at_ms })
                            .map_err(|e| StoreError::Corrupt(e.to_string())))
                    })
                    .map_err(unavailable)?;
                collect(rows)
            })
            .await
    }
    async fn in_progress_before(&self, before_ms: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'in_progress' AND updated_at_ms < ?1
             ORDER BY updated_at_ms LIMIT ?2"
        );
        self.db.rows(sql, vec![before_ms.into(), (limit as i64).into()], job).await
    }
}

#[async_trait]
impl HudOutbox for SqliteJobStore {
    async fn outbox(&self, delivery: &DeliveryId) -> Result<Vec<OutboxItem>, StoreError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM hud_outbox WHERE delivery_id = ?1 ORDER BY created_at_ms, id");
        self.db.rows(sql, vec![delivery.as_str().to_owned().into()], outbox_item).await
    }
    async fn pending_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM hud_outbox WHERE sync = 'pending' AND next_attempt_at_ms <= ?1
             ORDER BY next_attempt_at_ms, created_at_ms, id LIMIT ?2"
        );
        self.db.rows(sql, vec![now_ms.into(), (limit as i64).into()], outbox_item).await
    }
    async fn mark_outbox(
        &self,
        id: &str,
        sync: HudSync,
        error: Option<&str>,
        next_attempt_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (id, error) = (id.to_owned(), error.map(str::to_owned));
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE hud_outbox SET sync = ?2, attempts = attempts + 1, last_error = COALESCE(?3, last_error),
                     updated_at_ms = ?4,
                     next_attempt_at_ms = CASE WHEN ?2 = 'pending' THEN ?5 ELSE next_attempt_at_ms END
                     WHERE id = ?1 AND sync = 'pending'",
                    params![id, sync.as_str(), error, now_ms, next_attempt_at_ms.unwrap_or(now_ms)],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }
    async fn defer_outbox(&self, id: &str, next_attempt_at_ms: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE hud_outbox SET next_attempt_at_ms = ?2 WHERE id = ?1 AND sync = 'pending'",
                    params![id, next_attempt_at_ms],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }
    async fn outbox_in(&self, sync: HudSync, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let sql =
            format!("SELECT {OUTBOX_COLUMNS} FROM hud_outbox WHERE sync = ?1 ORDER BY created_at_ms, id LIMIT ?2");
        self.db.rows(sql, vec![sync.as_str().to_owned().into(), (limit as i64).into()], outbox_item).await
    }
    async fn requeue_outbox(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let changed = self
            .db
            .write(move |conn| {
                conn.execute(
                    "UPDATE hud_outbox SET sync = 'pending', attempts = 0, created_at_ms = ?2, updated_at_ms = ?2,
                     next_attempt_at_ms = ?2 WHERE id = ?1 AND sync <> 'pending'",
                    params![id, now_ms],
                )
                .map_err(unavailable)
            })
            .await?;
        Ok(changed > 0)
    }
    /// `COUNT` and `MIN(created_at_ms)` over the pending items, `COUNT` of
    /// the failed ones (index `hud_outbox_pending`).
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        self.db
            .read(|conn| {
                let (pending, oldest_created_at_ms) = conn
                    .query_row("SELECT COUNT(*), MIN(created_at_ms) FROM hud_outbox WHERE sync = 'pending'", [], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?))
                    })
                    .map_err(unavailable)?;
                let failed = conn
                    .query_row("SELECT COUNT(*) FROM hud_outbox WHERE sync = 'failed'", [], |r| r.get::<_, i64>(0))
                    .map_err(unavailable)? as u64;
                Ok(OutboxBacklog { pending, oldest_created_at_ms, failed })
            })
            .await
    }
}

#[async_trait]
impl CheckRunOutbox for SqliteJobStore {
    async fn transition_with_check_run(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: &CheckRunItem,
    ) -> Result<bool, StoreError> {
        self.write_transition(expected, record, outbox, Some(check)).await
    }
    /// One immediate transaction: reads the stored item's `request`; none →
    /// `INSERT` of `check` as given (every column, `version` and `sync`
    /// included); stored request `in_progress` and `check.request`
    /// `completed` → `UPDATE` of `request`, `version + 1`, `sync =
    /// 'pending'`, `updated_at_ms` (the other columns kept); otherwise no
    /// write. A stored request that is not a check run's JSON is
    /// [`StoreError::Corrupt`].
    /// One upsert, its update conditioned on the stored request being in
    /// progress and the new one completed (`json_extract` of `status`).
    async fn advance_check_run(&self, check: &CheckRunItem) -> Result<bool, StoreError> {
        let check = check.clone();
        Ok(self.db.write(move |conn| upsert_check(conn, &check, true)).await? == 1)
    }
    async fn pending_check_runs(&self, limit: usize) -> Result<Vec<CheckRunItem>, StoreError> {
        let sql = format!(
            "SELECT {CHECK_COLUMNS} FROM check_outbox WHERE sync = 'pending' ORDER BY created_at_ms, id LIMIT ?1"
        );
        self.db.rows(sql, vec![(limit as i64).into()], check_item).await
    }
    async fn check_runs(&self, delivery: &DeliveryId) -> Result<Vec<CheckRunItem>, StoreError> {
        let sql = format!("SELECT {CHECK_COLUMNS} FROM check_outbox WHERE delivery_id = ?1 ORDER BY created_at_ms, id");
        self.db.rows(sql, vec![delivery.as_str().to_owned().into()], check_item).await
    }
    async fn mark_check_run(
        &self,
        id: &str,
        version: u32,
        check_run_id: Option<u64>,
        sync: HudSync,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (id, error) = (id.to_owned(), error.map(str::to_owned));
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE check_outbox SET check_run_id = COALESCE(?3, check_run_id), attempts = attempts + 1,
                        last_error = COALESCE(?5, last_error), updated_at_ms = ?6,
                        sync = CASE WHEN version = ?2 AND sync = 'pending' THEN ?4 ELSE sync END
                     WHERE id = ?1",
                    params![id, version, check_run_id.map(|n| n as i64), sync.as_str(), error, now_ms],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }
}

#[async_trait]
impl JobStats for SqliteJobStore {
    async fn callback_counts(&self, since_ms: i64) -> Result<CallbackCounts, StoreError> {
        self.db
            .read(move |conn| {
                let (in_progress, completed, timed_out) = conn
                    .query_row(
                        "SELECT COALESCE(SUM(in_progress_at_ms >= ?1), 0),
                        COALESCE(SUM(completed_at_ms >= ?1 AND COALESCE(conclusion, '') <> 'timed_out'), 0),
                        COALESCE(SUM(completed_at_ms >= ?1 AND conclusion = 'timed_out'), 0)
                 FROM jobs WHERE updated_at_ms >= ?1",
                        [since_ms],
                        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
                    )
                    .map_err(unavailable)?;
                let violations = conn
                    .query_row("SELECT COUNT(*) FROM violations WHERE at_ms >= ?1", [since_ms], |r| r.get::<_, i64>(0))
                    .map_err(unavailable)? as u64;
                Ok(CallbackCounts { in_progress, completed, timed_out, violations })
            })
            .await
    }
}
