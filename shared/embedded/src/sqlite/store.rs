//! [`DispatchStore`] on SQLite: one row per (delivery id, [`record_key`]: the
//! lower-cased target and the webhook's id when the delivery named it);
//! claims are conditional updates inside an immediate transaction.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

use super::Db;
use crcr_core::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crcr_core::ports::{
    record_key, AttemptOutcome, Claim, DispatchCounts, DispatchMeta, DispatchRecord, DispatchStatus, DispatchStore,
    StoreError,
};

/// [`DispatchStore`] on SQLite.
#[derive(Clone)]
pub struct SqliteDispatchStore {
    db: Db,
}

impl SqliteDispatchStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

use super::unavailable;

const COLUMNS: &str = "delivery_id, target, status, attempts, last_error, lease_until_ms, created_at_ms,
    updated_at_ms, dispatched_at_ms, payload_trimmed, event, action, head_sha, pr_number, level, check_run, device, received_at_ms,
    hook_id";

/// The tail of [`DispatchStore::records_for_commit`]'s query (`?1` the
/// commit, `?2` the limit): the order of the index `dispatches_head_sha`.
const FOR_COMMIT: &str = "WHERE head_sha = ?1 ORDER BY created_at_ms, delivery_id, target_key LIMIT ?2";

fn record(r: &Row<'_>) -> rusqlite::Result<Result<DispatchRecord, StoreError>> {
    let delivery: String = r.get(0)?;
    let target: String = r.get(1)?;
    let status: String = r.get(2)?;
    let level: String = r.get(14)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("dispatch {delivery}/{target}: {what}"));
    let parsed = (|| {
        Ok(DispatchRecord {
            delivery_id: DeliveryId::parse(&delivery).map_err(|e| corrupt(&e.to_string()))?,
            target: RepoFullName::parse(&target).map_err(|e| corrupt(&e.to_string()))?,
            status: DispatchStatus::parse(&status).ok_or_else(|| corrupt("unknown status"))?,
            attempts: r.get(3).map_err(|e| corrupt(&e.to_string()))?,
            last_error: r.get(4).map_err(|e| corrupt(&e.to_string()))?,
            lease_until_ms: r.get(5).map_err(|e| corrupt(&e.to_string()))?,
            created_at_ms: r.get(6).map_err(|e| corrupt(&e.to_string()))?,
            updated_at_ms: r.get(7).map_err(|e| corrupt(&e.to_string()))?,
            dispatched_at_ms: r.get(8).map_err(|e| corrupt(&e.to_string()))?,
            payload_trimmed: r.get::<_, i64>(9).map_err(|e| corrupt(&e.to_string()))? != 0,
            meta: DispatchMeta {
                event: r.get(10).map_err(|e| corrupt(&e.to_string()))?,
                action: r.get(11).map_err(|e| corrupt(&e.to_string()))?,
                // A value that is not a SHA (stored before the type) names no commit.
                head_sha: r
                    .get::<_, Option<String>>(12)
                    .map_err(|e| corrupt(&e.to_string()))?
                    .and_then(|s| HeadSha::parse(&s).ok()),
                pr_number: r.get::<_, Option<i64>>(13).map_err(|e| corrupt(&e.to_string()))?.map(|n| n as u64),
                level: Level::parse(&level).ok_or_else(|| corrupt("unknown level"))?,
                check_run: r.get::<_, i64>(15).map_err(|e| corrupt(&e.to_string()))? != 0,
                device: r.get(16).map_err(|e| corrupt(&e.to_string()))?,
                received_at_ms: r.get(17).map_err(|e| corrupt(&e.to_string()))?,
                hook_id: r.get::<_, Option<i64>>(18).map_err(|e| corrupt(&e.to_string()))?.map(|n| n as u64),
            },
        })
    })();
    Ok(parsed)
}

/// [`DispatchStore::claim`] inside the writer's transaction.
fn claim_row(
    tx: &rusqlite::Connection,
    delivery: &DeliveryId,
    target: &RepoFullName,
    meta: &DispatchMeta,
    now_ms: i64,
    lease: Duration,
) -> Result<Claim, StoreError> {
    let lease_until = now_ms + lease.as_millis() as i64;
    let key = record_key(target, meta.hook_id);
    let existing: Option<(String, i64, u32)> = tx
        .prepare_cached(
            "SELECT status, lease_until_ms, attempts FROM dispatches WHERE delivery_id = ?1 AND target_key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![delivery.as_str(), key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
        })
        .map_err(unavailable)?;
    Ok(match existing {
        None => {
            tx.prepare_cached(
                "INSERT INTO dispatches (delivery_id, target_key, target, status, attempts, lease_until_ms,
                        created_at_ms, updated_at_ms, event, action, head_sha, pr_number, level, check_run, device,
                        received_at_ms, hook_id)
                     VALUES (?1, ?2, ?3, 'pending', 1, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    delivery.as_str(),
                    key,
                    target.as_str(),
                    lease_until,
                    now_ms,
                    meta.event,
                    meta.action,
                    meta.head_sha.as_ref().map(HeadSha::as_str),
                    meta.pr_number.map(|n| n as i64),
                    meta.level.as_str(),
                    meta.check_run,
                    meta.device,
                    meta.received_at_ms,
                    meta.hook_id.map(|n| n as i64)
                ])
            })
            .map_err(unavailable)?;
            Claim::Acquired { attempt: 1 }
        }
        Some((status, until, attempts)) => match DispatchStatus::parse(&status) {
            Some(DispatchStatus::Dispatched) => Claim::AlreadyDispatched,
            Some(DispatchStatus::Failed) => Claim::AlreadyFailed,
            // A lease holds up to and including its last millisecond (as
            // DynamoDB's `lease_until_ms < :now` take-over condition).
            Some(DispatchStatus::Pending) if until >= now_ms => Claim::Leased { until_ms: until },
            // An expired lease, or paused by the target's breaker: taken
            // again, pending.
            Some(DispatchStatus::Pending | DispatchStatus::Paused) => {
                tx.execute(
                    "UPDATE dispatches SET status = 'pending', attempts = attempts + 1, lease_until_ms = ?3,
                         updated_at_ms = ?4 WHERE delivery_id = ?1 AND target_key = ?2",
                    params![delivery.as_str(), key, lease_until, now_ms],
                )
                .map_err(unavailable)?;
                Claim::Acquired { attempt: attempts + 1 }
            }
            None => return Err(StoreError::Corrupt(format!("dispatch {delivery}/{target}: status {status:?}"))),
        },
    })
}

#[async_trait]
impl DispatchStore for SqliteDispatchStore {
    async fn claim(
        &self,
        delivery: &DeliveryId,
        target: &RepoFullName,
        meta: &DispatchMeta,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let (delivery, target, meta) = (delivery.clone(), target.clone(), meta.clone());
        self.db.write(move |tx| claim_row(tx, &delivery, &target, &meta, now_ms, lease)).await
    }

    /// One write for all of them: each claim in its own savepoint, so one
    /// that fails is undone alone and answers its own error.
    async fn claim_each(
        &self,
        delivery: &DeliveryId,
        targets: &[(RepoFullName, DispatchMeta)],
        now_ms: i64,
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        let (delivery, owned) = (delivery.clone(), targets.to_vec());
        let claimed: Result<Vec<Result<Claim, StoreError>>, StoreError> = self
            .db
            .write(move |tx| {
                Ok(owned
                    .iter()
                    .map(|(target, meta)| {
                        super::in_savepoint(tx, || claim_row(tx, &delivery, target, meta, now_ms, lease))
                    })
                    .collect::<Vec<_>>())
            })
            .await;
        match claimed {
            Ok(each) => each,
            // The write as a whole failed (its commit, or the writer stopped): every claim did.
            Err(e) => targets.iter().map(|_| Err(StoreError::unavailable(e.to_string()))).collect(),
        }
    }

    async fn finish_for_hook(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // A finished attempt (any outcome) releases the lease: lease_until_ms = 0.
        // ?8: whether only attempt ?9 may write (all outcomes but a 204).
        let sql = "UPDATE dispatches SET status = ?3, last_error = COALESCE(?4, last_error), lease_until_ms = 0,
                   updated_at_ms = ?5, dispatched_at_ms = ?6, payload_trimmed = ?7
                   WHERE delivery_id = ?1 AND target_key = ?2 AND status = 'pending' AND (?8 = 0 OR attempts = ?9)";
        let own_attempt_only = !matches!(outcome, AttemptOutcome::Dispatched { .. });
        let (status, error, dispatched_at, trimmed) = match outcome {
            AttemptOutcome::Dispatched { payload_trimmed } => ("dispatched", None, Some(now_ms), *payload_trimmed),
            AttemptOutcome::Failed { reason } => ("failed", Some(reason.as_str()), None, false),
            AttemptOutcome::Retry { reason } => ("pending", Some(reason.as_str()), None, false),
            AttemptOutcome::Paused { reason } => ("paused", Some(reason.as_str()), None, false),
        };
        let (delivery, key, status, error) =
            (delivery.as_str().to_owned(), record_key(target, hook_id), status.to_owned(), error.map(str::to_owned));
        self.db
            .write(move |conn| {
                conn.prepare_cached(sql)
                    .and_then(|mut s| {
                        s.execute(params![
                            delivery,
                            key,
                            status,
                            error,
                            now_ms,
                            dispatched_at,
                            trimmed as i64,
                            own_attempt_only as i64,
                            attempt
                        ])
                    })
                    .map(|_| ())
                    .map_err(unavailable)
            })
            .await
    }

    async fn records(&self, delivery: &DeliveryId) -> Result<Vec<DispatchRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM dispatches WHERE delivery_id = ?1 ORDER BY target_key");
        self.db.rows(sql, vec![delivery.as_str().to_owned().into()], record).await
    }

    /// Reads the partial index on `dispatched_at_ms`.
    async fn dispatched_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<DispatchRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM dispatches WHERE dispatched_at_ms IS NOT NULL AND dispatched_at_ms >= ?1
             AND dispatched_at_ms < ?2 AND status = 'dispatched' ORDER BY dispatched_at_ms, delivery_id, target_key LIMIT ?3"
        );
        self.db.rows(sql, vec![from_ms.into(), to_ms.into(), (limit as i64).into()], record).await
    }

    /// Reads the partial index `dispatches_head_sha` (head_sha, created_at_ms,
    /// delivery_id, target_key): rows in the answer's order, no sort step.
    async fn records_for_commit(&self, head_sha: &HeadSha, limit: usize) -> Result<Vec<DispatchRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("SELECT {COLUMNS} FROM dispatches {FOR_COMMIT}");
        self.db.rows(sql, vec![head_sha.as_str().to_owned().into(), limit.into()], record).await
    }

    /// One `GROUP BY status` over the records with `updated_at_ms >= since_ms`
    /// (a table scan; fine for on-call use).
    async fn outcome_counts(&self, since_ms: i64, now_ms: i64) -> Result<DispatchCounts, StoreError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT status, COUNT(*), COALESCE(SUM(lease_until_ms >= ?2), 0) FROM dispatches
                         WHERE updated_at_ms >= ?1 GROUP BY status",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![since_ms, now_ms], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
                    })
                    .map_err(unavailable)?;
                let mut counts = DispatchCounts::default();
                for row in rows {
                    let (status, n, leased) = row.map_err(unavailable)?;
                    match DispatchStatus::parse(&status) {
                        Some(DispatchStatus::Dispatched) => counts.dispatched += n,
                        Some(DispatchStatus::Failed) => counts.failed += n,
                        Some(DispatchStatus::Paused) => counts.paused += n,
                        Some(DispatchStatus::Pending) => {
                            counts.pending += n;
                            counts.in_progress += leased;
                        }
                        None => return Err(StoreError::Corrupt(format!("dispatch status {status:?}"))),
                    }
                }
                Ok(counts)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `records_for_commit` is answered from `dispatches_head_sha`, in index
    /// order: no table scan, no temporary sort.
    #[test]
    fn records_for_commit_reads_the_head_sha_index() {
        super::super::assert_plan_reads_index(
            &format!("SELECT {COLUMNS} FROM dispatches {FOR_COMMIT}"),
            "dispatches_head_sha",
        );
    }

    /// In one `claim_each` write, a claim that fails (a record whose status
    /// is unreadable) answers its own error and changes nothing; the claims
    /// before and after it are kept.
    #[tokio::test]
    async fn a_failed_claim_in_claim_each_fails_alone() {
        let path = std::env::temp_dir().join(format!("crcr-claim-each-{}.sqlite", uuid::Uuid::new_v4()));
        let db = Db::open(&path).unwrap();
        let store = SqliteDispatchStore::new(db.clone());
        let d = DeliveryId::parse("d-1").unwrap();
        let meta = DispatchMeta::new("push", Level::L2);
        let repo = |r: &str| RepoFullName::parse(r).unwrap();
        assert_eq!(
            store.claim(&d, &repo("org/b"), &meta, 1, Duration::from_secs(60)).await.unwrap(),
            Claim::Acquired { attempt: 1 }
        );
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE dispatches SET status = 'bogus' WHERE target_key = 'org/b'", [])
            .unwrap();
        let targets = [(repo("org/a"), meta.clone()), (repo("org/b"), meta.clone()), (repo("org/c"), meta.clone())];
        let answers = store.claim_each(&d, &targets, 2, Duration::from_secs(60)).await;
        assert!(matches!(answers[0], Ok(Claim::Acquired { attempt: 1 })), "{answers:?}");
        assert!(matches!(&answers[1], Err(StoreError::Corrupt(m)) if m.contains("bogus")), "{answers:?}");
        assert!(matches!(answers[2], Ok(Claim::Acquired { attempt: 1 })), "{answers:?}");
        let kept: Vec<(String, String)> = {
            let c = rusqlite::Connection::open(&path).unwrap();
            let mut q = c.prepare("SELECT target_key, status FROM dispatches ORDER BY target_key").unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(
            kept,
            [("org/a".into(), "pending".into()), ("org/b".into(), "bogus".into()), ("org/c".into(), "pending".into())]
        );
        drop((store, db));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
