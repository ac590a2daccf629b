//! [`DispatchStore`] on DynamoDB: one item per (delivery id, target).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use crcr_core::domain::{DeliveryId, HeadSha, RepoFullName};
use crcr_core::ports::{
    record_key, AttemptOutcome, Claim, DispatchCounts, DispatchMeta, DispatchRecord, DispatchStatus, DispatchStore,
    StoreError,
};

use super::dispatch_item::{attr, key, new_item, parse_record, read};
use super::item::{boolean, n, s, unavailable, Item};
use super::now_epoch_secs;

/// Lifetime of a dispatch record: 30 days (in seconds) after its last write,
/// written to `expires_at` for the table's TTL. Long enough to cover GitHub's
/// redelivery window and the callbacks that read the records.
pub const DISPATCH_TTL_SECS: i64 = 30 * 24 * 3600;

/// The sparse GSI of the dispatch table that serves
/// [`DispatchStore::dispatched_between`]: partition key `dispatch_day` (S,
/// UTC `YYYY-MM-DD`), sort key `dispatched_at_ms` (N), projection ALL. Only
/// dispatched records carry `dispatch_day`, so only they are in the index.
pub const DISPATCH_DAY_INDEX: &str = "by_dispatch_day";

/// The sparse GSI of the dispatch table that serves
/// [`DispatchStore::records_for_commit`]: partition key `head_sha` (S, the
/// upstream commit as the event gave it), sort key `created_at_ms` (N, ms
/// since epoch), projection ALL. Records without a commit carry no
/// `head_sha`, so they are not in the index.
pub const HEAD_SHA_INDEX: &str = "by_head_sha";

/// Items asked of DynamoDB per page of a [`HEAD_SHA_INDEX`] query (its most
/// is 1 MB of items per page whatever this says).
const MAX_PAGE: usize = 1000;

/// UTC day (`YYYY-MM-DD`) of an instant in ms since the epoch.
pub fn dispatch_day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// How often `claim` starts over when the item changes under it (created,
/// expired by TTL or taken over between its calls). Each round is at most
/// three requests; in practice the first round decides.
const CLAIM_ROUNDS: usize = 3;

/// Dispatch records in one DynamoDB table.
///
/// Table shape: partition key `delivery_id` (S), sort key `target` (S,
/// [`record_key`]: the lower-cased [`RepoFullName::key`], with
/// `#hook/<id>` after it when the delivery named its webhook); TTL enabled
/// on `expires_at`. Item
/// attributes, one per [`DispatchRecord`] field: `target_display` (S, the
/// spelling as given), `status` (S: `pending` / `dispatched` / `failed` / `paused`),
/// `attempts` (N), `last_error` (S, absent = none), `lease_until_ms`,
/// `created_at_ms`, `updated_at_ms` (N, ms since epoch), `dispatched_at_ms`
/// (N, absent = none), `payload_trimmed` (BOOL), the [`DispatchMeta`] fields
/// flat: `event` (S), `action` (S, optional), `head_sha` (S, optional),
/// `pr_number` (N, optional), `level` (S, `L1`..`L4`), `check_run` (BOOL,
/// absent = false), `device` (S, optional), `hook_id` (N, optional); `dispatch_day` (S, UTC
/// `YYYY-MM-DD` of `dispatched_at_ms`, once dispatched); and `expires_at`
/// (N, epoch **seconds**, wall clock + [`DISPATCH_TTL_SECS`] at each write).
/// Two sparse GSIs, projection ALL: [`DISPATCH_DAY_INDEX`] (hash
/// `dispatch_day`, range `dispatched_at_ms`) and [`HEAD_SHA_INDEX`] (hash
/// `head_sha`, range `created_at_ms`). An empty `head_sha` is not stored (a
/// GSI key cannot be an empty string): such a record reads back with none.
///
/// Every write is conditional, so two workers never both hold a target. A
/// finished attempt (any outcome) sets `lease_until_ms` to 0: no lease held.
#[derive(Clone, Debug)]
pub struct DynamoDispatchStore {
    client: Client,
    table: String,
}

impl DynamoDispatchStore {
    /// `table`: the table name (shape above).
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// Creates the record for attempt 1. `Ok(None)`: created. `Ok(Some(item))`:
    /// it exists already; `item` is the stored item when DynamoDB returned it.
    async fn put_new(
        &self,
        delivery: &DeliveryId,
        target: &RepoFullName,
        meta: &DispatchMeta,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<Option<Item>>, StoreError> {
        let item = new_item(delivery, target, meta, now_ms, lease_until_ms);
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(delivery_id)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Some(c.item.clone()))
                }
                _ => Err(unavailable("PutItem", e)),
            },
        }
    }

    /// Takes over a pending record whose lease expired before `now_ms`, or
    /// a paused one (which becomes pending again).
    /// `Ok(Ok(attempt))`: taken, this is attempt number `attempt`.
    /// `Ok(Err(item))`: lost the race; `item` is the stored item if returned.
    async fn take_over(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Result<u32, Option<Item>>, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery, hook_id, target)))
            .update_expression(
                "SET #attempts = #attempts + :one, #lease = :lease, #updated = :now, #expires = :expires, #status = :pending",
            )
            .condition_expression("(#status = :pending AND #lease < :now) OR #status = :paused")
            .expression_attribute_values(":paused", s(DispatchStatus::Paused.as_str()))
            .expression_attribute_names("#attempts", attr::ATTEMPTS)
            .expression_attribute_names("#lease", attr::LEASE_UNTIL_MS)
            .expression_attribute_names("#updated", attr::UPDATED_AT_MS)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":lease", n(lease_until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + DISPATCH_TTL_SECS))
            .expression_attribute_values(":pending", s(DispatchStatus::Pending.as_str()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                Ok(Ok(read(&item).n(attr::ATTEMPTS)?))
            }
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Err(c.item.clone()))
                }
                _ => Err(unavailable("UpdateItem (lease takeover)", e)),
            },
        }
    }

    /// Consistent read of one record's item.
    async fn get_item(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery, hook_id, target)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out.item)
    }

    /// The item returned with a failed condition, or a consistent read when
    /// DynamoDB did not return it. `None`: the item does not exist.
    async fn current(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
        returned: Option<Item>,
    ) -> Result<Option<DispatchRecord>, StoreError> {
        let item = match returned {
            Some(item) if !item.is_empty() => Some(item),
            _ => self.get_item(delivery, hook_id, target).await?,
        };
        item.as_ref().map(parse_record).transpose()
    }
}

/// Whether `next`, read from [`HEAD_SHA_INDEX`] after `kept` (ascending by
/// `created_at_ms`, ties in no particular order), may still be among the
/// first `limit` records in [`in_commit_order`]: always while fewer than
/// `limit` are kept; past that, only a tie of the `limit`-th one.
fn within_commit_limit(kept: &[DispatchRecord], limit: usize, next: &DispatchRecord) -> bool {
    kept.len() < limit
        || limit.checked_sub(1).and_then(|i| kept.get(i)).is_some_and(|last| last.created_at_ms == next.created_at_ms)
}

/// `records` sorted by (`created_at_ms`, delivery id, [`record_key`]), cut to
/// `limit`: the order of [`DispatchStore::records_for_commit`].
fn in_commit_order(mut records: Vec<DispatchRecord>, limit: usize) -> Vec<DispatchRecord> {
    records.sort_by(|a, b| {
        (a.created_at_ms, a.delivery_id.as_str(), record_key(&a.target, a.meta.hook_id)).cmp(&(
            b.created_at_ms,
            b.delivery_id.as_str(),
            record_key(&b.target, b.meta.hook_id),
        ))
    });
    records.truncate(limit);
    records
}

/// The answer for an existing record another attempt holds or finished.
fn settled(rec: &DispatchRecord) -> Claim {
    match rec.status {
        DispatchStatus::Dispatched => Claim::AlreadyDispatched,
        DispatchStatus::Failed => Claim::AlreadyFailed,
        DispatchStatus::Pending => Claim::Leased { until_ms: rec.lease_until_ms },
        // Only seen after losing the race to take it over: the winner holds it now.
        DispatchStatus::Paused => Claim::Leased { until_ms: rec.lease_until_ms },
    }
}

#[async_trait]
impl DispatchStore for DynamoDispatchStore {
    /// One conditional `PutItem` (`attribute_not_exists(delivery_id)`) for a
    /// new record → `Acquired { attempt: 1 }`. If the record exists, its
    /// stored item (returned with the failed condition, else a consistent
    /// `GetItem`) decides: dispatched / failed / pending under a lease ending
    /// at or after `now_ms` (`Leased`). A pending record whose lease ended
    /// before `now_ms`, or a paused one, is taken over with `UpdateItem`
    /// conditioned on `(#status = :pending AND lease_until_ms < :now) OR
    /// #status = :paused` (pending, attempts + 1, new lease, the record's
    /// original meta kept); losing that race answers by
    /// the winner's record (`Leased { until_ms: <its lease> }` while pending).
    async fn claim(
        &self,
        delivery: &DeliveryId,
        target: &RepoFullName,
        meta: &DispatchMeta,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let lease_until_ms = now_ms.saturating_add(lease.as_millis().min(i64::MAX as u128) as i64);
        let hook = meta.hook_id;
        for _ in 0..CLAIM_ROUNDS {
            let Some(returned) = self.put_new(delivery, target, meta, now_ms, lease_until_ms).await? else {
                return Ok(Claim::Acquired { attempt: 1 });
            };
            let Some(rec) = self.current(delivery, hook, target, returned).await? else {
                continue; // removed (TTL) since the put: create it again
            };
            let free = match rec.status {
                DispatchStatus::Paused => true,
                DispatchStatus::Pending => rec.lease_until_ms < now_ms,
                DispatchStatus::Dispatched | DispatchStatus::Failed => false,
            };
            if !free {
                return Ok(settled(&rec));
            }
            match self.take_over(delivery, hook, target, now_ms, lease_until_ms).await? {
                Ok(attempt) => return Ok(Claim::Acquired { attempt }),
                Err(returned) => {
                    if let Some(rec) = self.current(delivery, hook, target, returned).await? {
                        return Ok(settled(&rec));
                    }
                }
            }
        }
        Err(StoreError::unavailable(format!(
            "dispatch record ({delivery}, {target}) kept appearing and vanishing during {CLAIM_ROUNDS} claim rounds"
        )))
    }

    /// `UpdateItem` conditioned on `#status = :pending`; a failed condition
    /// (finished by another attempt, or no record) is `Ok` and changes
    /// nothing. Dispatched: status, `dispatched_at_ms`, `payload_trimmed`.
    /// Failed: status, `last_error`. Retry: `last_error`, stays pending. All:
    /// `updated_at_ms` = `now_ms`, `lease_until_ms` = 0 (lease released).
    async fn finish_for_hook(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery, hook_id, target)))
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#lease", attr::LEASE_UNTIL_MS)
            .expression_attribute_names("#updated", attr::UPDATED_AT_MS)
            .expression_attribute_names("#expires", attr::EXPIRES_AT)
            .expression_attribute_values(":pending", s(DispatchStatus::Pending.as_str()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + DISPATCH_TTL_SECS));
        const COMMON: &str = "SET #lease = :zero, #updated = :now, #expires = :expires";
        // A 204 is recorded whichever attempt got it; anything else only by
        // the attempt that still holds the record.
        req = match outcome {
            AttemptOutcome::Dispatched { .. } => req.condition_expression("#status = :pending"),
            _ => req
                .condition_expression("#status = :pending AND #attempts = :attempt")
                .expression_attribute_names("#attempts", attr::ATTEMPTS)
                .expression_attribute_values(":attempt", n(attempt)),
        };
        req = match outcome {
            AttemptOutcome::Dispatched { payload_trimmed } => req
                .update_expression(format!(
                    "{COMMON}, #status = :status, #dispatched = :now, #trimmed = :trimmed, #day = :day"
                ))
                .expression_attribute_names("#dispatched", attr::DISPATCHED_AT_MS)
                .expression_attribute_names("#day", attr::DISPATCH_DAY)
                .expression_attribute_values(":day", s(dispatch_day(now_ms)))
                .expression_attribute_names("#trimmed", attr::PAYLOAD_TRIMMED)
                .expression_attribute_values(":status", s(DispatchStatus::Dispatched.as_str()))
                .expression_attribute_values(":trimmed", boolean(*payload_trimmed)),
            AttemptOutcome::Failed { reason } => req
                .update_expression(format!("{COMMON}, #status = :status, #error = :error"))
                .expression_attribute_names("#error", attr::LAST_ERROR)
                .expression_attribute_values(":status", s(DispatchStatus::Failed.as_str()))
                .expression_attribute_values(":error", s(reason)),
            AttemptOutcome::Retry { reason } => req
                .update_expression(format!("{COMMON}, #error = :error"))
                .expression_attribute_names("#error", attr::LAST_ERROR)
                .expression_attribute_values(":error", s(reason)),
            AttemptOutcome::Paused { reason } => req
                .update_expression(format!("{COMMON}, #status = :status, #error = :error"))
                .expression_attribute_names("#error", attr::LAST_ERROR)
                .expression_attribute_values(":status", s(DispatchStatus::Paused.as_str()))
                .expression_attribute_values(":error", s(reason)),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(unavailable("UpdateItem (finish)", e)),
        }
    }

    /// `Query` on `delivery_id` with `ConsistentRead`, ascending by `target`
    /// ([`record_key`], as the SQLite twin orders), all pages.
    async fn records(&self, delivery: &DeliveryId) -> Result<Vec<DispatchRecord>, StoreError> {
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#d = :d")
            .expression_attribute_names("#d", attr::DELIVERY_ID)
            .expression_attribute_values(":d", s(delivery.as_str()))
            .consistent_read(true)
            .scan_index_forward(true)
            .into_paginator()
            .items()
            .send();
        let mut out = Vec::new();
        while let Some(item) = items.try_next().await.map_err(|e| unavailable("Query", e))? {
            out.push(parse_record(&item)?);
        }
        Ok(out)
    }

    /// One `Query` per UTC day of the range on [`DISPATCH_DAY_INDEX`]
    /// (`dispatch_day = :day AND dispatched_at_ms BETWEEN`), oldest first,
    /// stopping at `limit`. Eventually consistent (a GSI is).
    async fn dispatched_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<DispatchRecord>, StoreError> {
        const DAY_MS: i64 = 24 * 3600 * 1000;
        let mut out = Vec::new();
        if to_ms <= from_ms {
            return Ok(out);
        }
        let mut day_start = from_ms.div_euclid(DAY_MS) * DAY_MS;
        while day_start < to_ms && out.len() < limit {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DISPATCH_DAY_INDEX)
                .key_condition_expression("#day = :day AND #at BETWEEN :from AND :last")
                .expression_attribute_names("#day", attr::DISPATCH_DAY)
                .expression_attribute_names("#at", attr::DISPATCHED_AT_MS)
                .expression_attribute_values(":day", s(dispatch_day(day_start)))
                .expression_attribute_values(":from", n(from_ms))
                .expression_attribute_values(":last", n(to_ms - 1))
                .scan_index_forward(true)
                .into_paginator()
                .send();
            // Whole pages, as many as it takes to reach `limit` (no request
            // for the next page once it is reached).
            while out.len() < limit {
                let Some(page) = pages.try_next().await.map_err(|e| unavailable("Query (by_dispatch_day)", e))? else {
                    break;
                };
                for item in page.items.unwrap_or_default() {
                    let rec = parse_record(&item)?;
                    if rec.status == DispatchStatus::Dispatched && out.len() < limit {
                        out.push(rec);
                    }
                }
            }
            day_start += DAY_MS;
        }
        Ok(out)
    }

    /// `Query` on [`HEAD_SHA_INDEX`] (`head_sha = :sha`), ascending by
    /// `created_at_ms`, page after page (`LastEvaluatedKey`) until `limit`
    /// records plus any sharing the last one's `created_at_ms`, then sorted
    /// by (`created_at_ms`, delivery id, target key) and cut to `limit`: the
    /// SQLite twin's order even when creation times tie. Eventually
    /// consistent (a GSI has no consistent reads): a record claimed a moment
    /// ago may be missing, or show an older status.
    async fn records_for_commit(&self, head_sha: &HeadSha, limit: usize) -> Result<Vec<DispatchRecord>, StoreError> {
        let mut out: Vec<DispatchRecord> = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(HEAD_SHA_INDEX)
            .key_condition_expression("#sha = :sha")
            .expression_attribute_names("#sha", attr::HEAD_SHA)
            .expression_attribute_values(":sha", s(head_sha.as_str()))
            .scan_index_forward(true)
            .into_paginator()
            .page_size(limit.saturating_add(1).min(MAX_PAGE) as i32)
            .items()
            .send();
        while let Some(item) = items.try_next().await.map_err(|e| unavailable("Query (by_head_sha)", e))? {
            let rec = parse_record(&item)?;
            if !within_commit_limit(&out, limit, &rec) {
                break;
            }
            out.push(rec);
        }
        Ok(in_commit_order(out, limit))
    }

    /// A `Scan` of the whole table, all pages, filtered on
    /// `updated_at_ms >= since_ms` and projecting `status` and
    /// `lease_until_ms`: O(table) in read capacity and time (a filter does
    /// not reduce what DynamoDB reads). Fine for an on-call command run by
    /// hand; not for anything on the dispatch path. Eventually consistent.
    async fn outcome_counts(&self, since_ms: i64, now_ms: i64) -> Result<DispatchCounts, StoreError> {
        let mut items = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("#updated >= :since")
            .projection_expression("#status, #lease")
            .expression_attribute_names("#updated", attr::UPDATED_AT_MS)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_names("#lease", attr::LEASE_UNTIL_MS)
            .expression_attribute_values(":since", n(since_ms))
            .into_paginator()
            .items()
            .send();
        let mut counts = DispatchCounts::default();
        while let Some(item) = items.try_next().await.map_err(|e| unavailable("Scan", e))? {
            let a = read(&item);
            let status = a.s(attr::STATUS)?;
            match DispatchStatus::parse(&status) {
                Some(DispatchStatus::Dispatched) => counts.dispatched += 1,
                Some(DispatchStatus::Failed) => counts.failed += 1,
                Some(DispatchStatus::Paused) => counts.paused += 1,
                Some(DispatchStatus::Pending) => {
                    counts.pending += 1;
                    if a.n::<i64>(attr::LEASE_UNTIL_MS)? >= now_ms {
                        counts.in_progress += 1;
                    }
                }
                None => return Err(StoreError::Corrupt(format!("dispatch status {status:?}"))),
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crcr_core::domain::Level;

    fn rec(delivery: &str, target: &str, created_at_ms: i64) -> DispatchRecord {
        DispatchRecord {
            delivery_id: DeliveryId::parse(delivery).unwrap(),
            target: RepoFullName::parse(target).unwrap(),
            status: DispatchStatus::Pending,
            attempts: 1,
            last_error: None,
            lease_until_ms: 0,
            created_at_ms,
            updated_at_ms: created_at_ms,
            dispatched_at_ms: None,
            payload_trimmed: false,
            meta: DispatchMeta {
                event: "push".into(),
                action: None,
                head_sha: Some(crcr_core::domain::HeadSha::parse(&"ab".repeat(20)).unwrap()),
                pr_number: None,
                level: Level::L4,
                check_run: false,
                device: None,
                received_at_ms: None,
                hook_id: None,
            },
        }
    }

    /// Records as the GSI may return them (ascending `created_at_ms`, ties
    /// in any order), read as `records_for_commit` reads pages: for every
    /// `limit`, the first `limit` of the commit order, ties included.
    #[test]
    fn commit_order_breaks_ties_by_delivery_then_target() {
        let expected = [
            rec("d-1", "org/c", 50),
            rec("d-1", "org/z", 100),
            rec("d-2", "Org/A", 100),
            rec("d-2", "org/b", 100),
            rec("d-1", "org/late", 200),
        ];
        let as_read = [&expected[0], &expected[3], &expected[2], &expected[1], &expected[4]];
        for limit in 0..=expected.len() + 1 {
            let mut kept = Vec::new();
            for next in as_read {
                if !within_commit_limit(&kept, limit, next) {
                    break;
                }
                kept.push(next.clone());
            }
            let want = &expected[..limit.min(expected.len())];
            assert_eq!(in_commit_order(kept, limit), want, "limit {limit}");
        }
    }
}
