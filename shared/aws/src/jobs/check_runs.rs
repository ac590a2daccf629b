//! [`CheckRunOutbox`] on the jobs table: the check-run items (`chk#<id>`).

use async_trait::async_trait;

use crcr_core::checks::CheckStatus;
use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{CheckRunItem, CheckRunOutbox, HudSync, JobRecord, JobState, OutboxItem};
use crcr_core::ports::StoreError;

use super::items::{check_item, outbox_pk, parse_check, primary_key, request_json, request_status};
use super::{attr, updated, DynamoJobStore, CHECK_PREFIX, CHECK_STATUS_PREFIX, JOB_TTL_SECS};
use crate::item::{n, s, unavailable};
use crate::now_epoch_secs;

#[async_trait]
impl CheckRunOutbox for DynamoJobStore {
    /// [`JobLifecycle::transition`](crcr_core::lifecycle::JobLifecycle::transition) with a third item in the transaction: an
    /// `Update` of the check-run item that creates it or moves it to the new
    /// request (`version` + 1, `chk_pending`), keeping `check_run_id`,
    /// `attempts` and `created_at_ms` (`if_not_exists`).
    async fn transition_with_check_run(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: &CheckRunItem,
    ) -> Result<bool, StoreError> {
        self.write_transition(expected, record, outbox, Some(check)).await
    }
    /// Up to two conditional writes on `chk#<id>`: a `PutItem` of `check` as
    /// given (`version` and `sync` included) conditioned on
    /// `attribute_not_exists(pk)` → `true`. When the item exists and
    /// `check.request` is completed: an `UpdateItem` of `request`,
    /// `request_status`, `version + 1`, `status = chk_pending`,
    /// `updated_at_ms`, `expires_at` (the rest kept) conditioned on the
    /// stored request being in progress (`request_status = in_progress`, or
    /// for an item written before `request_status` existed, its `request`
    /// JSON containing `"status":"in_progress"`) → `true`. A failed
    /// condition (`ConditionalCheckFailed`) → `false`, nothing written. The
    /// id must start with `<check.delivery_id>|` ([`CheckRunItem::id_for`]);
    /// another id is refused as [`StoreError::Corrupt`].
    async fn advance_check_run(&self, check: &CheckRunItem) -> Result<bool, StoreError> {
        if outbox_pk(&check.id) != Some(check.delivery_id.as_str()) {
            return Err(StoreError::Corrupt(format!(
                "check-run item id {:?} does not start with its delivery id {:?} and '|'",
                check.id, check.delivery_id
            )));
        }
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(check_item(check)?))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", attr::PK)
            .send()
            .await;
        match res {
            Ok(_) => return Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
            Err(e) => return Err(unavailable("PutItem (new check run)", e)),
        }
        if check.request.status != CheckStatus::Completed {
            return Ok(false); // only in_progress -> completed moves an existing item
        }
        let in_progress = request_status(CheckStatus::InProgress)?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(primary_key(check.delivery_id.as_str(), format!("{CHECK_PREFIX}{}", check.id))))
            .update_expression(
                "SET #request = :request, #rs = :rs, #version = #version + :one, #status = :pending, \
                 #updated_ms = :updated_ms, #expires = :expires",
            )
            .condition_expression(
                "#rs = :in_progress OR (attribute_not_exists(#rs) AND contains(#request, :in_progress_json))",
            )
            .expression_attribute_names("#request", attr::REQUEST)
            .expression_attribute_names("#rs", attr::REQUEST_STATUS)
            .expression_attribute_names("#version", attr::VERSION)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#updated_ms", attr::UPDATED_AT_MS)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":request", s(&request_json(check)?))
            .expression_attribute_values(":rs", s(&request_status(check.request.status)?))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":pending", s(format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
            .expression_attribute_values(":updated_ms", n(check.updated_at_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS))
            .expression_attribute_values(":in_progress", s(&in_progress))
            // serde_json's compact form of the request's top-level `status`
            // (a string value's quotes are escaped, so only the key matches).
            .expression_attribute_values(":in_progress_json", s(format!("\"status\":\"{in_progress}\"")))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem (advance check run)", e)),
        }
    }
    /// `Query` on the GSI, `status = chk_pending`, oldest first, up to `limit`.
    async fn pending_check_runs(&self, limit: usize) -> Result<Vec<CheckRunItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let status = format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str());
        let items = self.by_status(&status, None, limit, |got, _| got.len() < limit).await?;
        items.iter().map(parse_check).collect()
    }
    /// `Query` on `pk` with `begins_with(sk, "chk#")`, `ConsistentRead`;
    /// sorted by (`created_at_ms`, `id`).
    async fn check_runs(&self, delivery: &DeliveryId) -> Result<Vec<CheckRunItem>, StoreError> {
        self.query_in_creation_order(delivery, CHECK_PREFIX, parse_check, |c| (c.created_at_ms, &c.id)).await
    }
    /// Two `UpdateItem`s on `chk#<id>`: the attempt (`attempts` + 1,
    /// `check_run_id` and `last_error` when given, `updated_at_ms`), then,
    /// for a final `sync`, the status conditioned on `version = :version AND
    /// status = chk_pending` (a failed condition changes nothing).
    async fn mark_check_run(
        &self,
        id: &str,
        version: u32,
        check_run_id: Option<u64>,
        sync: HudSync,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(pk) = outbox_pk(id) else {
            return Ok(());
        };
        let key = primary_key(pk, format!("{CHECK_PREFIX}{id}"));
        let mut update = String::from("SET #attempts = #attempts + :one, #updated_ms = :now, #expires = :expires");
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.clone()))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#attempts", attr::ATTEMPTS)
            .expression_attribute_names("#updated_ms", attr::UPDATED_AT_MS)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS));
        if let Some(cid) = check_run_id {
            update.push_str(", #cid = :cid");
            req =
                req.expression_attribute_names("#cid", attr::CHECK_RUN_ID).expression_attribute_values(":cid", n(cid));
        }
        if let Some(error) = error {
            update.push_str(", #error = :error");
            req = req
                .expression_attribute_names("#error", attr::LAST_ERROR)
                .expression_attribute_values(":error", s(error));
        }
        match req.update_expression(update).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => return Ok(()),
            Err(e) => return Err(unavailable("UpdateItem (mark check run)", e)),
        }
        if sync == HudSync::Pending {
            return Ok(());
        }
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression("SET #status = :status")
            .condition_expression("#version = :version AND #status = :pending")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#version", attr::VERSION)
            .expression_attribute_values(":status", s(format!("{CHECK_STATUS_PREFIX}{}", sync.as_str())))
            .expression_attribute_values(":pending", s(format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
            .expression_attribute_values(":version", n(version))
            .send()
            .await;
        updated(res, "UpdateItem (check run status)").map(|_| ())
    }
}
