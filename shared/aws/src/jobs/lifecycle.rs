//! [`JobLifecycle`] on the jobs table: job items and violation items.

use async_trait::async_trait;

use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{JobKey, JobLifecycle, JobRecord, JobState, OutboxItem, Violation};
use crcr_core::ports::StoreError;

use super::items::{parse_job, parse_violation, primary_key};
use super::{attr, DynamoJobStore, JOB_PREFIX, JOB_TTL_SECS, VIOLATION_PREFIX};
use crate::item::{n, s, unavailable};
use crate::now_epoch_secs;

#[async_trait]
impl JobLifecycle for DynamoJobStore {
    /// `GetItem` with `ConsistentRead`.
    async fn get(&self, key: &JobKey) -> Result<Option<JobRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(primary_key(key.delivery_id.as_str(), format!("{JOB_PREFIX}{}", key.sort_key()))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        out.item.as_ref().map(parse_job).transpose()
    }
    /// One `TransactWriteItems`: `Put` of the job item conditioned on
    /// `attribute_not_exists(pk)` (`expected` = `None`) or `#status =
    /// :expected`, and `Put` of the outbox item conditioned on
    /// `attribute_not_exists(pk)`. Cancelled for a failed condition →
    /// `Ok(false)`, nothing written. Cancelled only by `TransactionConflict`
    /// (a concurrent transaction on the same item) → sent again, up to
    /// `TRANSACTION_ROUNDS` (5) times. The outbox id must start with
    /// `<outbox.delivery_id>|` ([`OutboxItem::id_for`]); another id is
    /// refused as [`StoreError::Corrupt`].
    async fn transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
    ) -> Result<bool, StoreError> {
        self.write_transition(expected, record, outbox, None).await
    }
    /// `PutItem` of a violation item (a new `sk` each time).
    async fn record_violation(&self, v: &Violation) -> Result<(), StoreError> {
        let sk = format!("{VIOLATION_PREFIX}{:020}#{}", v.at_ms.max(0), uuid::Uuid::new_v4().simple());
        let mut item = primary_key(v.delivery_id.as_str(), sk);
        item.insert(attr::REPO.into(), s(v.repo.as_str()));
        item.insert(attr::REASON.into(), s(&v.reason));
        item.insert(attr::AT_MS.into(), n(v.at_ms));
        item.insert(attr::EXPIRES_AT.into(), n(now_epoch_secs() + JOB_TTL_SECS));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem (violation)", e))?;
        Ok(())
    }
    /// `Query` on `pk` with `begins_with(sk, "job#")`, `ConsistentRead`, all
    /// pages: ordered by sort key.
    async fn jobs(&self, delivery: &DeliveryId) -> Result<Vec<JobRecord>, StoreError> {
        self.query_prefix(delivery.as_str(), JOB_PREFIX).await?.iter().map(parse_job).collect()
    }
    /// `Query` on `pk` with `begins_with(sk, "violation#")`, `ConsistentRead`,
    /// all pages: ordered by `at_ms` (same-millisecond violations in no
    /// particular order).
    async fn violations(&self, delivery: &DeliveryId) -> Result<Vec<Violation>, StoreError> {
        self.query_prefix(delivery.as_str(), VIOLATION_PREFIX).await?.iter().map(parse_violation).collect()
    }
    /// `Query` on the GSI, `status = in_progress AND updated_at < before_ms`,
    /// ascending by `updated_at`, up to `limit` items. Eventually consistent.
    async fn in_progress_before(&self, before_ms: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items =
            self.by_status(JobState::InProgress.as_str(), Some(before_ms), limit, |got, _| got.len() < limit).await?;
        items.iter().map(parse_job).collect()
    }
}
