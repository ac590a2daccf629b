//! [`JobStore`] on DynamoDB: job lifecycle records, their HUD outbox items
//! and lifecycle violations, as three kinds of item in one table.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{AttributeValue, Put, Select, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;

use crcr_core::checks::CheckStatus;
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{
    CallbackCounts, CheckRunItem, CheckRunOutbox, HudOutbox, HudSync, JobKey, JobLifecycle, JobRecord, JobState,
    JobStats, OutboxBacklog, OutboxItem, Violation,
};
use crcr_core::ports::StoreError;

use super::dispatch_item::{n, s, Item};
use super::now_epoch_secs;

/// Lifetime of every item of the jobs table: 90 days (in seconds) after its
/// last write, written to `expires_at` for the table's TTL.
pub const JOB_TTL_SECS: i64 = 90 * 24 * 3600;

/// Name of the global secondary index on (`status`, `updated_at`).
pub const JOBS_BY_STATUS_INDEX: &str = "by_status";

/// How often `transition` sends its transaction again when DynamoDB cancels
/// it only for `TransactionConflict` (another transaction or write on one of
/// its items in flight); the retry then decides by the conditions.
const TRANSACTION_ROUNDS: usize = 5;

/// Items per page asked of DynamoDB for the by-status sweeps.
const MAX_PAGE: usize = 1000;

/// Sort key prefixes of the three item kinds.
const JOB_PREFIX: &str = "job#";
const HUD_PREFIX: &str = "hud#";
const VIOLATION_PREFIX: &str = "violation#";
const CHECK_PREFIX: &str = "chk#";

/// `status` values of check-run items (`chk_pending`, `chk_sent`, `chk_rejected`).
const CHECK_STATUS_PREFIX: &str = "chk_";

/// `status` values of outbox items (job items carry [`JobState::as_str`]).
const HUD_STATUS_PREFIX: &str = "hud_";

/// Attribute names of the jobs table's items.
pub(crate) mod attr {
    pub const PK: &str = "pk";
    pub const SK: &str = "sk";
    /// GSI hash key: job state, or `hud_<sync>` for an outbox item.
    pub const STATUS: &str = "status";
    /// GSI range key (N, ms): a job's `updated_at_ms`; a pending outbox
    /// item's `next_attempt_at_ms` (its place in the HUD queue: due first),
    /// a final one's `created_at_ms`.
    pub const UPDATED_AT: &str = "updated_at";
    pub const EXPIRES_AT: &str = "expires_at";
    // Job items.
    pub const REPO: &str = "repo";
    pub const RUN_ID: &str = "run_id";
    pub const RUN_ATTEMPT: &str = "run_attempt";
    pub const JOB_NAME: &str = "job_name";
    pub const LEVEL: &str = "level";
    pub const DISPATCHED_AT_MS: &str = "dispatched_at_ms";
    pub const IN_PROGRESS_AT_MS: &str = "in_progress_at_ms";
    pub const COMPLETED_AT_MS: &str = "completed_at_ms";
    pub const CONCLUSION: &str = "conclusion";
    pub const QUEUE_TIME_S: &str = "queue_time_s";
    pub const EXECUTION_TIME_S: &str = "execution_time_s";
    pub const WORKFLOW_NAME: &str = "workflow_name";
    pub const URL: &str = "url";
    // Outbox items.
    pub const ID: &str = "id";
    pub const BODY: &str = "body";
    pub const ATTEMPTS: &str = "attempts";
    pub const LAST_ERROR: &str = "last_error";
    pub const CREATED_AT_MS: &str = "created_at_ms";
    pub const UPDATED_AT_MS: &str = "updated_at_ms";
    /// N, ms: [`crcr_core::lifecycle::OutboxItem::next_attempt_at_ms`]; absent
    /// on items written before it existed (read as `created_at_ms`).
    pub const NEXT_ATTEMPT_AT_MS: &str = "next_attempt_at_ms";
    // Check-run items (plus `id`, `repo`, `attempts`, `last_error`, `created_at_ms`, `updated_at_ms`).
    pub const REQUEST: &str = "request";
    pub const VERSION: &str = "version";
    pub const CHECK_RUN_ID: &str = "check_run_id";
    /// S, the `status` of `request` (`in_progress` / `completed`): what
    /// [`crcr_core::lifecycle::CheckRunOutbox::advance_check_run`]'s condition reads.
    /// Items written before it existed lack it; the condition then looks
    /// into `request` itself.
    pub const REQUEST_STATUS: &str = "request_status";
    // Violation items (plus `repo`).
    pub const REASON: &str = "reason";
    pub const AT_MS: &str = "at_ms";
}

/// Job lifecycle, HUD outbox and violations in one DynamoDB table.
///
/// Table shape (infra `jobs`): partition key `pk` (S), sort key `sk` (S);
/// global secondary index [`JOBS_BY_STATUS_INDEX`] on `status` (S) +
/// `updated_at` (N), projection ALL; TTL on `expires_at`. Every item has
/// `pk` = the delivery id and `expires_at` (N, epoch **seconds**, wall clock
/// + [`JOB_TTL_SECS`] at each write). By `sk` prefix:
///
/// - **job** `job#<JobKey::sort_key>`: `repo` (S, as spelled), `run_id`,
///   `run_attempt` (N), `job_name` (S), `status` (S, [`JobState::as_str`]),
///   `level` (S), `updated_at` (N, the record's `updated_at_ms`), and when
///   set: `dispatched_at_ms`, `in_progress_at_ms`, `completed_at_ms` (N),
///   `conclusion` (S), `queue_time_s`, `execution_time_s` (N, the shortest
///   decimal that reads back as the same `f64`), `workflow_name`, `url` (S);
/// - **outbox** `hud#<OutboxItem::id>`: `id` (S), `body` (S, the JSON text),
///   `status` (S, `hud_pending` / `hud_sent` / `hud_rejected` /
///   `hud_failed`), `attempts` (N), `last_error` (S, absent = none),
///   `created_at_ms`, `updated_at_ms`, `next_attempt_at_ms` (N), and
///   `updated_at` (N) = `next_attempt_at_ms` while pending (the GSI orders
///   pending items by when they are due, so one HUD keeps failing never
///   holds the others back), `created_at_ms` once final (parked items are
///   listed oldest first). An outbox id starts with `<delivery id>|`, which is how
///   [`HudOutbox::mark_outbox`](crcr_core::lifecycle::HudOutbox::mark_outbox) finds the item from the id alone;
/// - **check run** `chk#<CheckRunItem::id>` (issue 4): `id`, `repo` (S, the
///   upstream), `request` (S, the check run's JSON), `request_status` (S,
///   the request's `status`: `in_progress` / `completed`; absent on items
///   written before it existed), `version`, `attempts` (N), `check_run_id`
///   (N, once GitHub created it), `last_error` (S), `status` (S,
///   `chk_pending` / `chk_sent` / `chk_rejected`), `created_at_ms`,
///   `updated_at_ms` (N), `updated_at` (N) = `created_at_ms`; upserted by
///   [`CheckRunOutbox::transition_with_check_run`](crcr_core::lifecycle::CheckRunOutbox::transition_with_check_run) in the same transaction as the
///   job, or written alone by [`CheckRunOutbox::advance_check_run`](crcr_core::lifecycle::CheckRunOutbox::advance_check_run);
/// - **violation** `violation#<at_ms, 20 digits>#<uuid>`: `repo`, `reason`
///   (S), `at_ms` (N). No `status`: not in the GSI.
///
/// A transition is one `TransactWriteItems` (job + outbox item, both
/// conditional), so the two are written together or not at all.
///
/// The sweeps ([`HudOutbox::pending_outbox`](crcr_core::lifecycle::HudOutbox::pending_outbox), [`JobLifecycle::in_progress_before`](crcr_core::lifecycle::JobLifecycle::in_progress_before))
/// query the GSI and are eventually consistent (a GSI has no consistent
/// reads): an item changed a moment ago may still show in its old status.
/// The per-delivery reads query the table with `ConsistentRead`.
#[derive(Clone, Debug)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
}

impl DynamoJobStore {
    /// `table`: the table name (shape above).
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// The items of `delivery` under `prefix` ([`Self::query_prefix`]),
    /// parsed, sorted by `created` ((`created_at_ms`, `id`): the order of
    /// the SQLite twin).
    async fn query_in_creation_order<T>(
        &self,
        delivery: &DeliveryId,
        prefix: &str,
        parse: impl Fn(&Item) -> Result<T, StoreError>,
        created: impl Fn(&T) -> (i64, &str),
    ) -> Result<Vec<T>, StoreError> {
        let mut items: Vec<T> =
            self.query_prefix(delivery.as_str(), prefix).await?.iter().map(parse).collect::<Result<_, _>>()?;
        items.sort_by(|a, b| created(a).cmp(&created(b)));
        Ok(items)
    }

    /// Every item of partition `pk` whose `sk` begins with `prefix`, in `sk`
    /// order: `Query` with `ConsistentRead`, all pages.
    async fn query_prefix(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_names("#sk", attr::SK)
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .scan_index_forward(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Reads the GSI for `status` (optionally `updated_at < before`),
    /// ascending by `updated_at`, page by page. `more(items so far, next
    /// item)` says whether to take the next item; reading stops at the first
    /// it refuses or at the end.
    async fn by_status(
        &self,
        status: &str,
        before: Option<i64>,
        page_size: usize,
        mut more: impl FnMut(&[Item], &Item) -> bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(JOBS_BY_STATUS_INDEX)
                .expression_attribute_names("#status", attr::STATUS)
                .expression_attribute_values(":status", s(status))
                .scan_index_forward(true)
                .limit(page_size.clamp(1, MAX_PAGE) as i32)
                .set_exclusive_start_key(start.take());
            req = match before {
                None => req.key_condition_expression("#status = :status"),
                Some(b) => req
                    .key_condition_expression("#status = :status AND #updated < :before")
                    .expression_attribute_names("#updated", attr::UPDATED_AT)
                    .expression_attribute_values(":before", n(b)),
            };
            let page = req.send().await.map_err(|e| unavailable("Query (by_status)", e))?;
            for item in page.items.unwrap_or_default() {
                if !more(&out, &item) {
                    return Ok(out);
                }
                out.push(item);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// The transition's transaction: job + HUD outbox item (+ check-run
    /// upsert), retried on `TransactionConflict` only (see [`JobLifecycle::transition`](crcr_core::lifecycle::JobLifecycle::transition)).
    async fn write_transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: Option<&CheckRunItem>,
    ) -> Result<bool, StoreError> {
        if outbox_pk(&outbox.id) != Some(outbox.delivery_id.as_str()) {
            return Err(StoreError::Corrupt(format!(
                "outbox item id {:?} does not start with its delivery id {:?} and '|'",
                outbox.id, outbox.delivery_id
            )));
        }
        if let Some(c) = check {
            if outbox_pk(&c.id) != Some(c.delivery_id.as_str()) {
                return Err(StoreError::Corrupt(format!(
                    "check-run item id {:?} does not start with its delivery id",
                    c.id
                )));
            }
        }
        let job_item = job_item(record)?;
        let outbox_item = outbox_item(outbox);
        let check_update = check.map(|c| check_upsert(&self.table, c)).transpose()?;
        for round in 0..TRANSACTION_ROUNDS {
            if round > 0 {
                // Jittered backoff: 20..40 ms, 40..80 ms, ...
                let base = 20u64 << (round - 1).min(4);
                let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(base)) as u64;
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            }
            let mut items = vec![
                conditional_put(&self.table, job_item.clone(), expected)?,
                conditional_put(&self.table, outbox_item.clone(), None)?,
            ];
            items.extend(check_update.clone());
            if let Some(applied) = self.transact(items).await? {
                return Ok(applied);
            }
        }
        Err(StoreError::Unavailable(format!(
            "job {} transition: TransactWriteItems cancelled by conflicting writes {TRANSACTION_ROUNDS} times",
            record.key.sort_key()
        )))
    }

    /// One `TransactWriteItems` round. `Ok(Some(applied))`: decided;
    /// `Ok(None)`: cancelled only by conflicting writes in flight, try again.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Option<bool>, StoreError> {
        let res = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            // Idempotent for 10 minutes: the SDK's own retry of a request
            // that did succeed (timeout on the answer) answers success
            // instead of failing the conditions against its own write.
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .send()
            .await;
        let e = match res {
            Ok(_) => return Ok(Some(true)),
            Err(e) => e,
        };
        let decided = match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                let codes: Vec<&str> = c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                let known = |code: &&str| matches!(*code, "None" | "ConditionalCheckFailed" | "TransactionConflict");
                if codes.is_empty() || !codes.iter().all(known) {
                    None
                } else if codes.contains(&"ConditionalCheckFailed") {
                    Some(Some(false))
                } else if codes.contains(&"TransactionConflict") {
                    Some(None)
                } else {
                    None
                }
            }
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => Some(None),
            _ => None,
        };
        decided.ok_or_else(|| unavailable("TransactWriteItems", e))
    }
}

/// A conditional `Put` of `item`: `expected` = `None` → `attribute_not_exists(pk)`;
/// `Some(state)` → `status = <state>`.
fn conditional_put(table: &str, item: Item, expected: Option<JobState>) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder().table_name(table).set_item(Some(item));
    let put = match expected {
        None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", attr::PK),
        Some(state) => put
            .condition_expression("#status = :expected")
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":expected", s(state.as_str())),
    };
    let put = put.build().map_err(|e| StoreError::Unavailable(format!("DynamoDB Put request: {e}")))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

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
            .expression_attribute_values(":status", s(&hud_status(sync)))
            .expression_attribute_values(":pending", s(&hud_status(HudSync::Pending)))
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
            .expression_attribute_values(":pending", s(&hud_status(HudSync::Pending)))
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
            .expression_attribute_values(":pending", s(&hud_status(HudSync::Pending)))
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
            .expression_attribute_values(":status", s(&hud_status(HudSync::Pending)))
            .projection_expression("#created")
            .into_paginator()
            .send();
        let (mut pending, mut oldest_created_at_ms) = (0u64, None::<i64>);
        while let Some(page) = pages.next().await {
            for item in page.map_err(|e| unavailable("Query (outbox backlog)", e))?.items.unwrap_or_default() {
                pending += 1;
                let created: i64 = get_n(&item, attr::CREATED_AT_MS)?;
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
            .expression_attribute_values(":status", s(&hud_status(HudSync::Failed)))
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
            .expression_attribute_values(":pending", s(&format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
            .expression_attribute_values(":updated_ms", n(check.updated_at_ms))
            .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS))
            .expression_attribute_values(":in_progress", s(&in_progress))
            // serde_json's compact form of the request's top-level `status`
            // (a string value's quotes are escaped, so only the key matches).
            .expression_attribute_values(":in_progress_json", s(&format!("\"status\":\"{in_progress}\"")))
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
            .expression_attribute_values(":status", s(&format!("{CHECK_STATUS_PREFIX}{}", sync.as_str())))
            .expression_attribute_values(":pending", s(&format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
            .expression_attribute_values(":version", n(version))
            .send()
            .await;
        updated(res, "UpdateItem (check run status)").map(|_| ())
    }
}

#[async_trait]
impl JobStats for DynamoJobStore {
    /// `Scan` of the whole table (all pages) for job items changed in the
    /// window and violation items recorded in it, projecting only the times
    /// and the conclusion: O(table) in read capacity (a filter does not
    /// reduce what DynamoDB reads), for on-call commands only. Eventually
    /// consistent.
    async fn callback_counts(&self, since_ms: i64) -> Result<CallbackCounts, StoreError> {
        let mut items = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "(begins_with(#sk, :job) AND #updated >= :since) OR (begins_with(#sk, :violation) AND #at >= :since)",
            )
            .projection_expression("#sk, #in_progress, #completed, #conclusion, #at")
            .expression_attribute_names("#sk", attr::SK)
            .expression_attribute_names("#updated", attr::UPDATED_AT)
            .expression_attribute_names("#at", attr::AT_MS)
            .expression_attribute_names("#in_progress", attr::IN_PROGRESS_AT_MS)
            .expression_attribute_names("#completed", attr::COMPLETED_AT_MS)
            .expression_attribute_names("#conclusion", attr::CONCLUSION)
            .expression_attribute_values(":job", s(JOB_PREFIX))
            .expression_attribute_values(":violation", s(VIOLATION_PREFIX))
            .expression_attribute_values(":since", n(since_ms))
            .into_paginator()
            .items()
            .send();
        let mut counts = CallbackCounts::default();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan (callback counts)", e))?;
            if get_s(&item, attr::SK)?.starts_with(VIOLATION_PREFIX) {
                counts.violations += 1;
                continue;
            }
            if opt_n::<i64>(&item, attr::IN_PROGRESS_AT_MS)?.is_some_and(|t| t >= since_ms) {
                counts.in_progress += 1;
            }
            if opt_n::<i64>(&item, attr::COMPLETED_AT_MS)?.is_some_and(|t| t >= since_ms) {
                match opt_s(&item, attr::CONCLUSION)?.as_deref() {
                    Some("timed_out") => counts.timed_out += 1,
                    _ => counts.completed += 1,
                }
            }
        }
        Ok(counts)
    }
}

// ---------------------------------------------------------------- items

fn primary_key(pk: &str, sk: String) -> Item {
    HashMap::from([(attr::PK.to_owned(), s(pk)), (attr::SK.to_owned(), AttributeValue::S(sk))])
}

/// The delivery id an outbox id starts with (`<delivery id>|...`).
fn outbox_pk(id: &str) -> Option<&str> {
    id.split_once('|').map(|(pk, _)| pk).filter(|pk| DeliveryId::parse(pk).is_ok())
}

fn hud_status(sync: HudSync) -> String {
    format!("{HUD_STATUS_PREFIX}{}", sync.as_str())
}

/// The GSI sort value of an item, if it has a numeric one.
fn gsi_sort(item: &Item) -> Option<&str> {
    match item.get(attr::UPDATED_AT) {
        Some(AttributeValue::N(v)) => Some(v.as_str()),
        _ => None,
    }
}

/// A finite `f64` as a DynamoDB number: Rust's shortest decimal that parses
/// back to the same value (no exponent; DynamoDB keeps 38 significant digits).
fn float(name: &str, v: f64) -> Result<AttributeValue, StoreError> {
    if v.is_finite() {
        Ok(n(v))
    } else {
        Err(StoreError::Corrupt(format!("job attribute {name:?}: {v} cannot be stored (not a finite number)")))
    }
}

fn job_item(r: &JobRecord) -> Result<Item, StoreError> {
    let k = &r.key;
    let mut item = primary_key(k.delivery_id.as_str(), format!("{JOB_PREFIX}{}", k.sort_key()));
    item.insert(attr::REPO.into(), s(k.repo.as_str()));
    item.insert(attr::RUN_ID.into(), n(k.run_id));
    item.insert(attr::RUN_ATTEMPT.into(), n(k.run_attempt));
    item.insert(attr::JOB_NAME.into(), s(&k.job_name));
    item.insert(attr::STATUS.into(), s(r.state.as_str()));
    item.insert(attr::LEVEL.into(), s(r.level.as_str()));
    item.insert(attr::UPDATED_AT.into(), n(r.updated_at_ms));
    item.insert(attr::EXPIRES_AT.into(), n(now_epoch_secs() + JOB_TTL_SECS));
    for (name, v) in [
        (attr::DISPATCHED_AT_MS, r.dispatched_at_ms),
        (attr::IN_PROGRESS_AT_MS, r.in_progress_at_ms),
        (attr::COMPLETED_AT_MS, r.completed_at_ms),
    ] {
        if let Some(v) = v {
            item.insert(name.into(), n(v));
        }
    }
    for (name, v) in [(attr::QUEUE_TIME_S, r.queue_time_s), (attr::EXECUTION_TIME_S, r.execution_time_s)] {
        if let Some(v) = v {
            item.insert(name.into(), float(name, v)?);
        }
    }
    for (name, v) in [(attr::CONCLUSION, &r.conclusion), (attr::WORKFLOW_NAME, &r.workflow_name), (attr::URL, &r.url)] {
        if let Some(v) = v {
            item.insert(name.into(), s(v));
        }
    }
    Ok(item)
}

fn outbox_item(o: &OutboxItem) -> Item {
    let mut item = primary_key(o.delivery_id.as_str(), format!("{HUD_PREFIX}{}", o.id));
    item.insert(attr::ID.into(), s(&o.id));
    item.insert(attr::BODY.into(), s(&o.body.to_string()));
    item.insert(attr::STATUS.into(), s(&hud_status(o.sync)));
    item.insert(attr::ATTEMPTS.into(), n(o.attempts));
    if let Some(e) = &o.last_error {
        item.insert(attr::LAST_ERROR.into(), s(e));
    }
    item.insert(attr::CREATED_AT_MS.into(), n(o.created_at_ms));
    item.insert(attr::UPDATED_AT_MS.into(), n(o.updated_at_ms));
    item.insert(attr::NEXT_ATTEMPT_AT_MS.into(), n(o.next_attempt_at_ms));
    let gsi = if o.sync == HudSync::Pending { o.next_attempt_at_ms } else { o.created_at_ms };
    item.insert(attr::UPDATED_AT.into(), n(gsi));
    item.insert(attr::EXPIRES_AT.into(), n(now_epoch_secs() + JOB_TTL_SECS));
    item
}

/// The JSON text stored in a check-run item's `request`.
fn request_json(c: &CheckRunItem) -> Result<String, StoreError> {
    serde_json::to_string(&c.request)
        .map_err(|e| StoreError::Corrupt(format!("check-run item {}: request cannot be written as JSON: {e}", c.id)))
}

/// A check-run status as stored in `request_status` (and inside `request`):
/// its serde name, e.g. `in_progress`.
fn request_status(status: CheckStatus) -> Result<String, StoreError> {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        other => Err(StoreError::Corrupt(format!("check-run status {status:?} serializes as {other:?}, not a string"))),
    }
}

/// The whole item of a new check-run item, as given (`version`, `sync`,
/// `attempts` included).
fn check_item(c: &CheckRunItem) -> Result<Item, StoreError> {
    let mut item = primary_key(c.delivery_id.as_str(), format!("{CHECK_PREFIX}{}", c.id));
    item.insert(attr::ID.into(), s(&c.id));
    item.insert(attr::REPO.into(), s(c.repo.as_str()));
    item.insert(attr::REQUEST.into(), s(&request_json(c)?));
    item.insert(attr::REQUEST_STATUS.into(), s(&request_status(c.request.status)?));
    item.insert(attr::STATUS.into(), s(&format!("{CHECK_STATUS_PREFIX}{}", c.sync.as_str())));
    item.insert(attr::VERSION.into(), n(c.version));
    item.insert(attr::ATTEMPTS.into(), n(c.attempts));
    if let Some(id) = c.check_run_id {
        item.insert(attr::CHECK_RUN_ID.into(), n(id));
    }
    if let Some(e) = &c.last_error {
        item.insert(attr::LAST_ERROR.into(), s(e));
    }
    item.insert(attr::CREATED_AT_MS.into(), n(c.created_at_ms));
    item.insert(attr::UPDATED_AT_MS.into(), n(c.updated_at_ms));
    item.insert(attr::UPDATED_AT.into(), n(c.created_at_ms));
    item.insert(attr::EXPIRES_AT.into(), n(now_epoch_secs() + JOB_TTL_SECS));
    Ok(item)
}

/// The transaction `Update` that creates or moves a check-run item.
fn check_upsert(table: &str, c: &CheckRunItem) -> Result<TransactWriteItem, StoreError> {
    let request = request_json(c)?;
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(primary_key(c.delivery_id.as_str(), format!("{CHECK_PREFIX}{}", c.id))))
        .update_expression(
            "SET #id = :id, #repo = :repo, #request = :request, #rs = :rs, #status = :pending, \
             #version = if_not_exists(#version, :zero) + :one, #attempts = if_not_exists(#attempts, :zero), \
             #created = if_not_exists(#created, :created), #updated = if_not_exists(#updated, :created), \
             #updated_ms = :updated_ms, #expires = :expires",
        )
        .expression_attribute_names("#id", attr::ID)
        .expression_attribute_names("#repo", attr::REPO)
        .expression_attribute_names("#request", attr::REQUEST)
        .expression_attribute_names("#rs", attr::REQUEST_STATUS)
        .expression_attribute_names("#status", attr::STATUS)
        .expression_attribute_names("#version", attr::VERSION)
        .expression_attribute_names("#attempts", attr::ATTEMPTS)
        .expression_attribute_names("#created", attr::CREATED_AT_MS)
        .expression_attribute_names("#updated", attr::UPDATED_AT)
        .expression_attribute_names("#updated_ms", attr::UPDATED_AT_MS)
        .expression_attribute_names("#expires", attr::EXPIRES_AT)
        .expression_attribute_values(":id", s(&c.id))
        .expression_attribute_values(":repo", s(c.repo.as_str()))
        .expression_attribute_values(":request", s(&request))
        .expression_attribute_values(":rs", s(&request_status(c.request.status)?))
        .expression_attribute_values(":pending", s(&format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":created", n(c.created_at_ms))
        .expression_attribute_values(":updated_ms", n(c.updated_at_ms))
        .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("DynamoDB Update request: {e}")))?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// The sync state in an item's `status` (`<prefix><HudSync>`); `why` names
/// the item kind when it is not one.
fn sync_of(item: &Item, prefix: &str, why: &str) -> Result<HudSync, StoreError> {
    get_s(item, attr::STATUS)?.strip_prefix(prefix).and_then(HudSync::parse).ok_or_else(|| corrupt(attr::STATUS, why))
}

fn parse_check(item: &Item) -> Result<CheckRunItem, StoreError> {
    let sync = sync_of(item, CHECK_STATUS_PREFIX, "is not a check-run status")?;
    let request = get_s(item, attr::REQUEST)?;
    Ok(CheckRunItem {
        id: get_s(item, attr::ID)?,
        delivery_id: delivery_of(item)?,
        repo: repo_of(item)?,
        request: serde_json::from_str(&request)
            .map_err(|e| corrupt(attr::REQUEST, &format!("is not a check run: {e}")))?,
        version: get_n(item, attr::VERSION)?,
        check_run_id: opt_n(item, attr::CHECK_RUN_ID)?,
        sync,
        attempts: get_n(item, attr::ATTEMPTS)?,
        last_error: opt_s(item, attr::LAST_ERROR)?,
        created_at_ms: get_n(item, attr::CREATED_AT_MS)?,
        updated_at_ms: get_n(item, attr::UPDATED_AT_MS)?,
    })
}

fn corrupt(name: &str, why: &str) -> StoreError {
    StoreError::Corrupt(format!("jobs table item attribute {name:?} {why}"))
}

fn opt_s(item: &Item, name: &str) -> Result<Option<String>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(corrupt(name, "is not a string")),
    }
}

fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    opt_s(item, name)?.ok_or_else(|| corrupt(name, "is missing"))
}

fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name, "is out of range")),
        Some(_) => Err(corrupt(name, "is not a number")),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    opt_n(item, name)?.ok_or_else(|| corrupt(name, "is missing"))
}

fn delivery_of(item: &Item) -> Result<DeliveryId, StoreError> {
    DeliveryId::parse(&get_s(item, attr::PK)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn repo_of(item: &Item) -> Result<RepoFullName, StoreError> {
    RepoFullName::parse(&get_s(item, attr::REPO)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_job(item: &Item) -> Result<JobRecord, StoreError> {
    let state = get_s(item, attr::STATUS)?;
    let level = get_s(item, attr::LEVEL)?;
    Ok(JobRecord {
        key: JobKey {
            delivery_id: delivery_of(item)?,
            repo: repo_of(item)?,
            run_id: get_n(item, attr::RUN_ID)?,
            run_attempt: get_n(item, attr::RUN_ATTEMPT)?,
            job_name: get_s(item, attr::JOB_NAME)?,
        },
        state: JobState::parse(&state).ok_or_else(|| corrupt(attr::STATUS, "is not a job state"))?,
        level: Level::parse(&level).ok_or_else(|| corrupt(attr::LEVEL, "is not L1..L4"))?,
        dispatched_at_ms: opt_n(item, attr::DISPATCHED_AT_MS)?,
        in_progress_at_ms: opt_n(item, attr::IN_PROGRESS_AT_MS)?,
        completed_at_ms: opt_n(item, attr::COMPLETED_AT_MS)?,
        conclusion: opt_s(item, attr::CONCLUSION)?,
        queue_time_s: opt_n(item, attr::QUEUE_TIME_S)?,
        execution_time_s: opt_n(item, attr::EXECUTION_TIME_S)?,
        workflow_name: opt_s(item, attr::WORKFLOW_NAME)?,
        url: opt_s(item, attr::URL)?,
        updated_at_ms: get_n(item, attr::UPDATED_AT)?,
    })
}

fn parse_outbox(item: &Item) -> Result<OutboxItem, StoreError> {
    let sync = sync_of(item, HUD_STATUS_PREFIX, "is not an outbox status")?;
    let body = get_s(item, attr::BODY)?;
    Ok(OutboxItem {
        id: get_s(item, attr::ID)?,
        delivery_id: delivery_of(item)?,
        body: serde_json::from_str(&body).map_err(|e| corrupt(attr::BODY, &format!("is not JSON: {e}")))?,
        sync,
        attempts: get_n(item, attr::ATTEMPTS)?,
        last_error: opt_s(item, attr::LAST_ERROR)?,
        created_at_ms: get_n(item, attr::CREATED_AT_MS)?,
        updated_at_ms: get_n(item, attr::UPDATED_AT_MS)?,
        next_attempt_at_ms: match opt_n(item, attr::NEXT_ATTEMPT_AT_MS)? {
            Some(t) => t,
            None => get_n(item, attr::CREATED_AT_MS)?,
        },
    })
}

fn parse_violation(item: &Item) -> Result<Violation, StoreError> {
    Ok(Violation {
        delivery_id: delivery_of(item)?,
        repo: repo_of(item)?,
        reason: get_s(item, attr::REASON)?,
        at_ms: get_n(item, attr::AT_MS)?,
    })
}

/// Whether a conditional `UpdateItem` wrote: `Ok(false)` when its
/// condition failed (nothing changed), the store's error otherwise.
fn updated(
    result: Result<UpdateItemOutput, aws_sdk_dynamodb::error::SdkError<UpdateItemError>>,
    what: &str,
) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(unavailable(what, e)),
    }
}

fn unavailable<E: std::error::Error>(what: &str, e: E) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB {what}: {}", DisplayErrorContext(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_pk_is_the_delivery_prefix() {
        assert_eq!(outbox_pk("abc-1|org/repo|1|1|build|in_progress"), Some("abc-1"));
        assert_eq!(outbox_pk("no-separator"), None);
        assert_eq!(outbox_pk("bad id|x"), None);
    }

    /// The fallback condition of `advance_check_run` for items without
    /// `request_status` looks for `"status":"in_progress"` in the stored
    /// JSON: it is there for an in-progress request, and absent from a
    /// completed one even when its text fields quote that very string.
    #[test]
    fn in_progress_marker_matches_only_the_request_status() {
        use crcr_core::checks::{CheckOutput, CheckRunRequest};
        let in_progress = request_status(CheckStatus::InProgress).unwrap();
        assert_eq!(in_progress, "in_progress");
        assert_eq!(request_status(CheckStatus::Completed).unwrap(), "completed");
        let marker = format!("\"status\":\"{in_progress}\"");
        let tricky = format!("{marker} {{{marker}}}");
        let request = |status, conclusion: Option<&str>| CheckRunRequest {
            name: tricky.clone(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            details_url: None,
            external_id: tricky.clone(),
            status,
            conclusion: conclusion.map(str::to_owned),
            started_at: None,
            completed_at: None,
            output: CheckOutput { title: tricky.clone(), summary: tricky.clone() },
        };
        let json = |r: &CheckRunRequest| serde_json::to_string(r).unwrap();
        assert!(json(&request(CheckStatus::InProgress, None)).contains(&marker));
        assert!(!json(&request(CheckStatus::Completed, Some("success"))).contains(&marker));
    }

    #[test]
    fn floats_round_trip_through_their_number_text() {
        for v in [0.0, 0.1, 1.0 / 3.0, 12_345.678, 86_400.5, 1e-7, 123_456_789.123_456_78] {
            let AttributeValue::N(text) = float("x", v).unwrap() else { panic!("not N") };
            assert_eq!(text.parse::<f64>().unwrap(), v, "{text}");
            assert!(!text.contains('e'), "{text}");
        }
        assert!(float("x", f64::NAN).is_err());
        assert!(float("x", f64::INFINITY).is_err());
    }
}
