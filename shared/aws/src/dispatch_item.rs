//! The DynamoDB item of a dispatch record: attribute names, building and
//! parsing (see [`super::DynamoDispatchStore`] for the table shape).

use crcr_core::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crcr_core::ports::{record_key, DispatchMeta, DispatchRecord, DispatchStatus, StoreError};

use super::dynamo::DISPATCH_TTL_SECS;
use super::item::{boolean, item, n, s, Attrs, Item};
use super::now_epoch_secs;

/// Attribute names of a dispatch item.
pub(super) mod attr {
    pub const DELIVERY_ID: &str = "delivery_id";
    pub const TARGET: &str = "target";
    pub const TARGET_DISPLAY: &str = "target_display";
    pub const STATUS: &str = "status";
    pub const ATTEMPTS: &str = "attempts";
    pub const LAST_ERROR: &str = "last_error";
    pub const LEASE_UNTIL_MS: &str = "lease_until_ms";
    pub const CREATED_AT_MS: &str = "created_at_ms";
    pub const UPDATED_AT_MS: &str = "updated_at_ms";
    pub const DISPATCHED_AT_MS: &str = "dispatched_at_ms";
    pub const PAYLOAD_TRIMMED: &str = "payload_trimmed";
    pub const EVENT: &str = "event";
    pub const ACTION: &str = "action";
    /// S, [`crcr_core::ports::DispatchMeta::head_sha`] (absent = none, and for an
    /// empty one: a GSI key cannot be empty). The partition key of the sparse
    /// GSI `by_head_sha` (see `HEAD_SHA_INDEX`), sort key `created_at_ms`.
    pub const HEAD_SHA: &str = "head_sha";
    pub const PR_NUMBER: &str = "pr_number";
    pub const LEVEL: &str = "level";
    /// BOOL, [`crcr_core::ports::DispatchMeta::check_run`] (absent = false).
    pub const CHECK_RUN: &str = "check_run";
    /// S, [`crcr_core::ports::DispatchMeta::device`] (absent = none).
    pub const DEVICE: &str = "device";
    /// N, [`crcr_core::ports::DispatchMeta::received_at_ms`] (absent = none).
    pub const RECEIVED_AT_MS: &str = "received_at_ms";
    /// N, [`crcr_core::ports::DispatchMeta::hook_id`] (absent = none).
    pub const HOOK_ID: &str = "hook_id";
    pub const EXPIRES_AT: &str = "expires_at";
    /// `YYYY-MM-DD` (UTC) of `dispatched_at_ms`, set with it: the partition
    /// key of the sparse GSI `by_dispatch_day` (see `DISPATCH_DAY_INDEX`).
    pub const DISPATCH_DAY: &str = "dispatch_day";
}

/// The primary key: `delivery_id` + `target`, the [`record_key`] of the
/// target and the delivery's webhook.
pub(super) fn key(delivery: &DeliveryId, hook_id: Option<u64>, target: &RepoFullName) -> Item {
    item([(attr::DELIVERY_ID, s(delivery.as_str())), (attr::TARGET, s(record_key(target, hook_id)))])
}

/// The item of a new record: pending, attempt 1, leased until `lease_until_ms`.
pub(super) fn new_item(
    delivery: &DeliveryId,
    target: &RepoFullName,
    meta: &DispatchMeta,
    now_ms: i64,
    lease_until_ms: i64,
) -> Item {
    let mut item = key(delivery, meta.hook_id, target);
    item.insert(attr::TARGET_DISPLAY.into(), s(target.as_str()));
    item.insert(attr::STATUS.into(), s(DispatchStatus::Pending.as_str()));
    item.insert(attr::ATTEMPTS.into(), n(1));
    item.insert(attr::LEASE_UNTIL_MS.into(), n(lease_until_ms));
    item.insert(attr::CREATED_AT_MS.into(), n(now_ms));
    item.insert(attr::UPDATED_AT_MS.into(), n(now_ms));
    item.insert(attr::PAYLOAD_TRIMMED.into(), boolean(false));
    item.insert(attr::EVENT.into(), s(&meta.event));
    if let Some(a) = &meta.action {
        item.insert(attr::ACTION.into(), s(a));
    }
    if let Some(h) = &meta.head_sha {
        item.insert(attr::HEAD_SHA.into(), s(h.as_str()));
    }
    if let Some(p) = meta.pr_number {
        item.insert(attr::PR_NUMBER.into(), n(p));
    }
    item.insert(attr::LEVEL.into(), s(meta.level.as_str()));
    item.insert(attr::CHECK_RUN.into(), boolean(meta.check_run));
    if let Some(d) = &meta.device {
        item.insert(attr::DEVICE.into(), s(d));
    }
    if let Some(t) = meta.received_at_ms {
        item.insert(attr::RECEIVED_AT_MS.into(), n(t));
    }
    if let Some(h) = meta.hook_id {
        item.insert(attr::HOOK_ID.into(), n(h));
    }
    item.insert(attr::EXPIRES_AT.into(), n(now_epoch_secs() + DISPATCH_TTL_SECS));
    item
}

/// Typed reads of a dispatch item; errors name it `dispatch item`.
pub(super) fn read(item: &Item) -> Attrs<'_> {
    Attrs::new(item, "dispatch item")
}

pub(super) fn parse_record(item: &Item) -> Result<DispatchRecord, StoreError> {
    let a = read(item);
    let delivery = a.s(attr::DELIVERY_ID)?;
    let display = match a.opt_s(attr::TARGET_DISPLAY)? {
        Some(d) => d,
        None => a.s(attr::TARGET)?,
    };
    let status = a.s(attr::STATUS)?;
    let level = a.s(attr::LEVEL)?;
    Ok(DispatchRecord {
        delivery_id: DeliveryId::parse(&delivery).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        target: RepoFullName::parse(&display).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: DispatchStatus::parse(&status).ok_or_else(|| a.corrupt(attr::STATUS, "is not a known status"))?,
        attempts: a.n(attr::ATTEMPTS)?,
        last_error: a.opt_s(attr::LAST_ERROR)?,
        lease_until_ms: a.n(attr::LEASE_UNTIL_MS)?,
        created_at_ms: a.n(attr::CREATED_AT_MS)?,
        updated_at_ms: a.n(attr::UPDATED_AT_MS)?,
        dispatched_at_ms: a.opt_n(attr::DISPATCHED_AT_MS)?,
        payload_trimmed: a.flag(attr::PAYLOAD_TRIMMED)?,
        meta: DispatchMeta {
            event: a.s(attr::EVENT)?,
            action: a.opt_s(attr::ACTION)?,
            // A value that is not a SHA (stored before the type) names no commit.
            head_sha: a.opt_s(attr::HEAD_SHA)?.and_then(|h| HeadSha::parse(&h).ok()),
            pr_number: a.opt_n(attr::PR_NUMBER)?,
            level: Level::parse(&level).ok_or_else(|| a.corrupt(attr::LEVEL, "is not L1..L4"))?,
            check_run: a.flag(attr::CHECK_RUN)?,
            device: a.opt_s(attr::DEVICE)?,
            received_at_ms: a.opt_n(attr::RECEIVED_AT_MS)?,
            hook_id: a.opt_n(attr::HOOK_ID)?,
        },
    })
}
