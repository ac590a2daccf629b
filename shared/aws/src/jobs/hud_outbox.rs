//! [`HudOutbox`] on the jobs table: the HUD outbox items (`hud#<id>`).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::Select;

use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{HudOutbox, HudSync, OutboxBacklog, OutboxItem};
use crcr_core::ports::StoreError;

use super::items::{gsi_sort, hud_status, outbox_pk, parse_outbox, primary_key, read};
use super::{attr, updated, DynamoJobStore, HUD_PREFIX, JOBS_BY_STATUS_INDEX, JOB_TTL_SECS};
use crate::item::{n, s, unavailable};
use crate::now_epoch_secs;

#[async_trait]
impl HudOutbox for DynamoJobStore {
    /// `Query` on `pk` with `begins_with(sk, "hud#")`, `ConsistentRead`, all
    /// pages; sorted by (`created_at_ms`, `id`).
    async fn outbox(&self, delivery: &DeliveryId) -> Result<Vec<OutboxItem>, StoreError> {
        self.query_in_creation_order(delivery, HUD_PREFIX, parse_outbox, |o| (o.created_at_ms, &o.id)).await
    }
    /// `Query` on the GSI, `status = hud_pending AND updated_at <= now_ms`
    /// (`updated_at` = `next_attempt_at_ms` for pending items), ascending,
    /// up to `limit` items plus any sharing the last one's due time, then
    /// sorted by (`next_attempt_at_ms`, `created_at_ms`, `id`) and cut to
    /// `limit`: the same order as the SQLite twin even when due times tie.
    /// Eventually consistent.
    async fn pending_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let status = hud_status(HudSync::Pending);
        let items = self
            .by_status(&status, Some(now_ms.saturating_add(1)), limit + 1, |got, next| {
                got.len() < limit || gsi_sort(next) == got.get(limit - 1).and_then(gsi_sort)
            })
            .await?;
        let mut items: Vec<OutboxItem> = items.iter().map(parse_outbox).collect::<Result<_, _>>()?;
        items.sort_by(|a, b| {
            (a.next_attempt_at_ms, a.created_at_ms, &a.id).cmp(&(b.next_attempt_at_ms, b.created_at_ms, &b.id))
        });
        items.truncate(limit);
        Ok(items)
    }
    /// `UpdateItem` on the item `hud#<id>` of partition `<id up to the first
    /// '|'>`, conditioned on `#status = hud_pending`: sets the new status,
    /// `attempts + 1`, `updated_at_ms`, `expires_at`, `last_error` when
    /// `error` is given (else the previous one stays), and the GSI's
    /// `updated_at`: while pending, the next attempt (also stored as
    /// `next_attempt_at_ms`); once final, `created_at_ms`. A failed condition (final already, or no such item) is `Ok`
    /// and changes nothing.
    async fn mark_outbox(
        &self,
        id: &str,
        sync: HudSync,
        error: Option<&str>,
        next_attempt_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(pk) = outbox_pk(id) else {
            return Ok(()); // no outbox item has such an id
        };
        let next = next_attempt_at_ms.unwrap_or(now_ms);
        let mut update = String::from(
            "SET #status = :status, #attempts = #attempts + :one, #updated_ms = :now, #expires = :expires, ",
        );
        update.push_str(if sync == HudSync::Pending { "#next = :next, #gsi = :next" } else { "#gsi = #created" });
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(primary_key(pk, format!("{HUD_PREFIX}{id}"))))
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#attempts", attr::ATTEMPTS)
            .expression_attribute_names("#updated_ms", attr::UPDATED_AT_MS)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_names("#gsi", attr::UPDATED_AT)
            .expression_attribute_values(":status", s(hud_status(sync)))
            .expression_attribute_values(":pending", s(hud_status(HudSync::Pending)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS));
        req = if sync == HudSync::Pending {
            req.expression_attribute_names("#next", attr::NEXT_ATTEMPT_AT_MS)
                .expression_attribute_values(":next", n(next))
        } else {
            req.expression_attribute_names("#created", attr::CREATED_AT_MS)
        };
        if let Some(error) = error {
            update.push_str(", #error = :error");
            req = req
                .expression_attribute_names("#error", attr::LAST_ERROR)
                .expression_attribute_values(":error", s(error));
        }
        updated(req.update_expression(update).send().await, "UpdateItem (mark outbox)").map(|_| ())
    }
    /// `UpdateItem` on `hud#<id>` conditioned on `#status = hud_pending`:
    /// `next_attempt_at_ms` and the GSI's `updated_at` set to
    /// `next_attempt_at_ms`. A failed condition is `Ok` and changes nothing.
    async fn defer_outbox(&self, id: &str, next_attempt_at_ms: i64) -> Result<(), StoreError> {
        let Some(pk) = outbox_pk(id) else {
            return Ok(());
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(primary_key(pk, format!("{HUD_PREFIX}{id}"))))
            .condition_expression("#status = :pending")
            .update_expression("SET #next = :next, #gsi = :next")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#next", attr::NEXT_ATTEMPT_AT_MS)
            .expression_attribute_names("#gsi", attr::UPDATED_AT)
            .expression_attribute_values(":pending", s(hud_status(HudSync::Pending)))
            .expression_attribute_values(":next", n(next_attempt_at_ms))
            .send()
            .await;
        updated(result, "UpdateItem (defer outbox)").map(|_| ())
    }
    /// `Query` on the GSI, `status = hud_<sync>`, ascending by `updated_at`
    /// (= `created_at_ms` for final items), up to `limit` items. Eventually
    /// consistent.
    async fn outbox_in(&self, sync: HudSync, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items = self.by_status(&hud_status(sync), None, limit, |got, _| got.len() < limit).await?;
        let mut items: Vec<OutboxItem> = items.iter().map(parse_outbox).collect::<Result<_, _>>()?;
        items.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(items)
    }
    /// `UpdateItem` on `hud#<id>` conditioned on the item existing and not
    /// being pending: status `hud_pending`, `attempts` 0, created, due (and
    /// GSI `updated_at`) at `now_ms`. A failed condition is `Ok(false)`.
    async fn requeue_outbox(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let Some(pk) = outbox_pk(id) else {
            return Ok(false);
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(primary_key(pk, format!("{HUD_PREFIX}{id}"))))
            .condition_expression("attribute_exists(#status) AND #status <> :pending")
            .update_expression(
                "SET #status = :pending, #attempts = :zero, #created = :now, #updated_ms = :now, #next = :now, \
                 #gsi = :now, #expires = :expires",
            )
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#attempts", attr::ATTEMPTS)
            .expression_attribute_names("#created", attr::CREATED_AT_MS)
            .expression_attribute_names("#updated_ms", attr::UPDATED_AT_MS)
            .expression_attribute_names("#next", attr::NEXT_ATTEMPT_AT_MS)
            .expression_attribute_names("#gsi", attr::UPDATED_AT)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":pending", s(hud_status(HudSync::Pending)))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS))
            .send()
            .await;
        updated(result, "UpdateItem (requeue outbox)")
    }
    /// Two `Query`s on the GSI: `status = hud_pending` over all pages, projecting `created_at_ms` (the count and the oldest
    /// creation time: pending items are in due order, not creation order),
    /// and `status = hud_failed` with `Select=COUNT`. Eventually consistent,
    /// like every GSI read; O(backlog) in read capacity.
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(JOBS_BY_STATUS_INDEX)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#created", attr::CREATED_AT_MS)
            .expression_attribute_values(":status", s(hud_status(HudSync::Pending)))
            .projection_expression("#created")
            .into_paginator()
            .send();
        let (mut pending, mut oldest_created_at_ms) = (0u64, None::<i64>);
        while let Some(page) = pages.next().await {
            for item in page.map_err(|e| unavailable("Query (outbox backlog)", e))?.items.unwrap_or_default() {
                pending += 1;
                let created: i64 = read(&item).n(attr::CREATED_AT_MS)?;
                oldest_created_at_ms = Some(oldest_created_at_ms.map_or(created, |o| o.min(created)));
            }
        }
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(JOBS_BY_STATUS_INDEX)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":status", s(hud_status(HudSync::Failed)))
            .select(Select::Count)
            .into_paginator()
            .send();
        let mut failed = 0u64;
        while let Some(page) = pages.next().await {
            failed += page.map_err(|e| unavailable("Query (failed outbox count)", e))?.count.max(0) as u64;
        }
        Ok(OutboxBacklog { pending, oldest_created_at_ms, failed })
    }
}
