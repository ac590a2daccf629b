//! The DynamoDB item of a dispatch record: attribute names, building and
//! parsing (see [`super::DynamoDispatchStore`] for the table shape).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::ports::{record_key, DispatchMeta, DispatchRecord, DispatchStatus, StoreError};

use super::dynamo::DISPATCH_TTL_SECS;
use super::now_epoch_secs;

/// A DynamoDB item: attribute name → value.
pub(super) type Item = HashMap<String, AttributeValue>;

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
    HashMap::from([
        (attr::DELIVERY_ID.to_owned(), s(delivery.as_str())),
        (attr::TARGET.to_owned(), s(&record_key(target, hook_id))),
    ])
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
    item.insert(attr::PAYLOAD_TRIMMED.into(), AttributeValue::Bool(false));
    item.insert(attr::EVENT.into(), s(&meta.event));
    if let Some(a) = &meta.action {
        item.insert(attr::ACTION.into(), s(a));
    }
    // DynamoDB refuses an empty string as an index key: an empty head_sha
    // (no commit) is stored as none.
    if let Some(h) = meta.head_sha.as_deref().filter(|h| !h.is_empty()) {
        item.insert(attr::HEAD_SHA.into(), s(h));
    }
    if let Some(p) = meta.pr_number {
        item.insert(attr::PR_NUMBER.into(), n(p));
    }
    item.insert(attr::LEVEL.into(), s(meta.level.as_str()));
    item.insert(attr::CHECK_RUN.into(), AttributeValue::Bool(meta.check_run));
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

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn corrupt(name: &str, why: &str) -> StoreError {
    StoreError::Corrupt(format!("dispatch item attribute {name:?} {why}"))
}

fn opt_s(item: &Item, name: &str) -> Result<Option<String>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(corrupt(name, "is not a string")),
    }
}

pub(super) fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    opt_s(item, name)?.ok_or_else(|| corrupt(name, "is missing"))
}

fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name, "is out of range")),
        Some(_) => Err(corrupt(name, "is not a number")),
    }
}

pub(super) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    opt_n(item, name)?.ok_or_else(|| corrupt(name, "is missing"))
}

pub(super) fn get_u32(item: &Item, name: &str) -> Result<u32, StoreError> {
    get_n(item, name)
}

pub(super) fn parse_record(item: &Item) -> Result<DispatchRecord, StoreError> {
    let delivery = get_s(item, attr::DELIVERY_ID)?;
    let display = match opt_s(item, attr::TARGET_DISPLAY)? {
        Some(d) => d,
        None => get_s(item, attr::TARGET)?,
    };
    let status = get_s(item, attr::STATUS)?;
    let level = get_s(item, attr::LEVEL)?;
    Ok(DispatchRecord {
        delivery_id: DeliveryId::parse(&delivery).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        target: RepoFullName::parse(&display).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: DispatchStatus::parse(&status).ok_or_else(|| corrupt(attr::STATUS, "is not a known status"))?,
        attempts: get_u32(item, attr::ATTEMPTS)?,
        last_error: opt_s(item, attr::LAST_ERROR)?,
        lease_until_ms: get_n(item, attr::LEASE_UNTIL_MS)?,
        created_at_ms: get_n(item, attr::CREATED_AT_MS)?,
        updated_at_ms: get_n(item, attr::UPDATED_AT_MS)?,
        dispatched_at_ms: opt_n(item, attr::DISPATCHED_AT_MS)?,
        payload_trimmed: match item.get(attr::PAYLOAD_TRIMMED) {
            None => false,
            Some(AttributeValue::Bool(b)) => *b,
            Some(_) => return Err(corrupt(attr::PAYLOAD_TRIMMED, "is not a boolean")),
        },
        meta: DispatchMeta {
            event: get_s(item, attr::EVENT)?,
            action: opt_s(item, attr::ACTION)?,
            head_sha: opt_s(item, attr::HEAD_SHA)?,
            pr_number: opt_n(item, attr::PR_NUMBER)?,
            level: Level::parse(&level).ok_or_else(|| corrupt(attr::LEVEL, "is not L1..L4"))?,
            check_run: match item.get(attr::CHECK_RUN) {
                None => false,
                Some(AttributeValue::Bool(b)) => *b,
                Some(_) => return Err(corrupt(attr::CHECK_RUN, "is not a boolean")),
            },
            device: opt_s(item, attr::DEVICE)?,
            received_at_ms: opt_n(item, attr::RECEIVED_AT_MS)?,
            hook_id: opt_n(item, attr::HOOK_ID)?,
        },
    })
}
