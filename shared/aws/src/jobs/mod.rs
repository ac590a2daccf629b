//! [`JobStore`](crcr_core::lifecycle::JobStore) on DynamoDB: job lifecycle records, their HUD outbox items
//! and lifecycle violations, as three kinds of item in one table.

use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use backon::{ExponentialBuilder, Retryable};

use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{CheckRunItem, JobRecord, JobState, OutboxItem};
use crcr_core::ports::StoreError;

use crate::item::{n, s, unavailable, Item};

mod check_runs;
mod hud_outbox;
mod items;
mod lifecycle;
mod stats;

use items::{check_upsert, job_item, outbox_item, outbox_pk};

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
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#sk", attr::SK)
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true)
            .scan_index_forward(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| unavailable("Query", e))
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
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(JOBS_BY_STATUS_INDEX)
            .expression_attribute_names("#status", attr::STATUS)
            .expression_attribute_values(":status", s(status))
            .scan_index_forward(true);
        req = match before {
            None => req.key_condition_expression("#status = :status"),
            Some(b) => req
                .key_condition_expression("#status = :status AND #updated < :before")
                .expression_attribute_names("#updated", attr::UPDATED_AT)
                .expression_attribute_values(":before", n(b)),
        };
        let mut items = req.into_paginator().page_size(page_size.clamp(1, MAX_PAGE) as i32).items().send();
        let mut out = Vec::new();
        while let Some(item) = items.try_next().await.map_err(|e| unavailable("Query (by_status)", e))? {
            if !more(&out, &item) {
                break;
            }
            out.push(item);
        }
        Ok(out)
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
        let mut items = vec![
            conditional_put(&self.table, job_item(record)?, expected)?,
            conditional_put(&self.table, outbox_item(outbox), None)?,
        ];
        items.extend(check.map(|c| check_upsert(&self.table, c)).transpose()?);
        // Jittered backoff before rounds 2..: 20..40 ms, 40..80 ms, ...
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_factor(2.0)
            .with_max_delay(Duration::from_millis(20 << 4))
            .with_max_times(TRANSACTION_ROUNDS - 1)
            .with_jitter();
        let result = (|| self.transact(items.clone()))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, Round::Conflict))
            .await;
        match result {
            Ok(applied) => Ok(applied),
            Err(Round::Failed(e)) => Err(e),
            Err(Round::Conflict) => Err(StoreError::unavailable(format!(
                "job {} transition: TransactWriteItems cancelled by conflicting writes {TRANSACTION_ROUNDS} times",
                record.key.sort_key()
            ))),
        }
    }

    /// One `TransactWriteItems` round. `Ok(applied)`: decided;
    /// `Err(Round::Conflict)`: cancelled only by conflicting writes in
    /// flight, try again.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, Round> {
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
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        let decided = match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                let codes: Vec<&str> = c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                let known = |code: &&str| matches!(*code, "None" | "ConditionalCheckFailed" | "TransactionConflict");
                if codes.is_empty() || !codes.iter().all(known) {
                    None
                } else if codes.contains(&"ConditionalCheckFailed") {
                    Some(Ok(false))
                } else if codes.contains(&"TransactionConflict") {
                    Some(Err(Round::Conflict))
                } else {
                    None
                }
            }
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => Some(Err(Round::Conflict)),
            _ => None,
        };
        decided.unwrap_or_else(|| Err(Round::Failed(unavailable("TransactWriteItems", e))))
    }
}

/// Why a `TransactWriteItems` round did not decide.
#[derive(Debug)]
enum Round {
    /// Cancelled only by conflicting writes in flight (`TransactionConflict`,
    /// `TransactionInProgress`): sent again.
    Conflict,
    /// Any other failure: the store's error, not retried.
    Failed(StoreError),
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
    let put = put.build().map_err(|e| StoreError::unavailable(format!("DynamoDB Put request: {e}")))?;
    Ok(TransactWriteItem::builder().put(put).build())
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
