//! Building and parsing the items of the jobs table (shapes in [`super::DynamoJobStore`]).

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use crcr_core::checks::CheckStatus;
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{CheckRunItem, HudSync, JobKey, JobRecord, JobState, OutboxItem, Violation};
use crcr_core::ports::StoreError;

use super::{attr, CHECK_PREFIX, CHECK_STATUS_PREFIX, HUD_PREFIX, HUD_STATUS_PREFIX, JOB_PREFIX, JOB_TTL_SECS};
use crate::item::{float, item, n, number_text, s, Attrs, Item};
use crate::now_epoch_secs;

pub(super) fn primary_key(pk: &str, sk: String) -> Item {
    item([(attr::PK, s(pk)), (attr::SK, s(sk))])
}

/// The delivery id an outbox id starts with (`<delivery id>|...`).
pub(super) fn outbox_pk(id: &str) -> Option<&str> {
    id.split_once('|').map(|(pk, _)| pk).filter(|pk| DeliveryId::parse(pk).is_ok())
}

pub(super) fn hud_status(sync: HudSync) -> String {
    format!("{HUD_STATUS_PREFIX}{}", sync.as_str())
}

/// The GSI sort value of an item, if it has a numeric one.
pub(super) fn gsi_sort(item: &Item) -> Option<&str> {
    number_text(item, attr::UPDATED_AT)
}

pub(super) fn job_item(r: &JobRecord) -> Result<Item, StoreError> {
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
            item.insert(name.into(), float("job", name, v)?);
        }
    }
    for (name, v) in [(attr::CONCLUSION, &r.conclusion), (attr::WORKFLOW_NAME, &r.workflow_name), (attr::URL, &r.url)] {
        if let Some(v) = v {
            item.insert(name.into(), s(v));
        }
    }
    Ok(item)
}

pub(super) fn outbox_item(o: &OutboxItem) -> Item {
    let mut item = primary_key(o.delivery_id.as_str(), format!("{HUD_PREFIX}{}", o.id));
    item.insert(attr::ID.into(), s(&o.id));
    item.insert(attr::BODY.into(), s(o.body.to_string()));
    item.insert(attr::STATUS.into(), s(hud_status(o.sync)));
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
pub(super) fn request_json(c: &CheckRunItem) -> Result<String, StoreError> {
    serde_json::to_string(&c.request)
        .map_err(|e| StoreError::Corrupt(format!("check-run item {}: request cannot be written as JSON: {e}", c.id)))
}

/// A check-run status as stored in `request_status` (and inside `request`):
/// its serde name, e.g. `in_progress`.
pub(super) fn request_status(status: CheckStatus) -> Result<String, StoreError> {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        other => Err(StoreError::Corrupt(format!("check-run status {status:?} serializes as {other:?}, not a string"))),
    }
}

/// The whole item of a new check-run item, as given (`version`, `sync`,
/// `attempts` included).
pub(super) fn check_item(c: &CheckRunItem) -> Result<Item, StoreError> {
    let mut item = primary_key(c.delivery_id.as_str(), format!("{CHECK_PREFIX}{}", c.id));
    item.insert(attr::ID.into(), s(&c.id));
    item.insert(attr::REPO.into(), s(c.repo.as_str()));
    item.insert(attr::REQUEST.into(), s(&request_json(c)?));
    item.insert(attr::REQUEST_STATUS.into(), s(&request_status(c.request.status)?));
    item.insert(attr::STATUS.into(), s(format!("{CHECK_STATUS_PREFIX}{}", c.sync.as_str())));
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
pub(super) fn check_upsert(table: &str, c: &CheckRunItem) -> Result<TransactWriteItem, StoreError> {
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
        .expression_attribute_values(":pending", s(format!("{CHECK_STATUS_PREFIX}{}", HudSync::Pending.as_str())))
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":created", n(c.created_at_ms))
        .expression_attribute_values(":updated_ms", n(c.updated_at_ms))
        .expression_attribute_values(":expires", n(now_epoch_secs() + JOB_TTL_SECS))
        .build()
        .map_err(|e| StoreError::unavailable(format!("DynamoDB Update request: {e}")))?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// The sync state in an item's `status` (`<prefix><HudSync>`); `why` names
/// the item kind when it is not one.
fn sync_of(item: &Item, prefix: &str, why: &str) -> Result<HudSync, StoreError> {
    let a = read(item);
    a.s(attr::STATUS)?.strip_prefix(prefix).and_then(HudSync::parse).ok_or_else(|| a.corrupt(attr::STATUS, why))
}

pub(super) fn parse_check(item: &Item) -> Result<CheckRunItem, StoreError> {
    let a = read(item);
    let sync = sync_of(item, CHECK_STATUS_PREFIX, "is not a check-run status")?;
    let request = a.s(attr::REQUEST)?;
    Ok(CheckRunItem {
        id: a.s(attr::ID)?,
        delivery_id: delivery_of(item)?,
        repo: repo_of(item)?,
        request: serde_json::from_str(&request)
            .map_err(|e| a.corrupt(attr::REQUEST, &format!("is not a check run: {e}")))?,
        version: a.n(attr::VERSION)?,
        check_run_id: a.opt_n(attr::CHECK_RUN_ID)?,
        sync,
        attempts: a.n(attr::ATTEMPTS)?,
        last_error: a.opt_s(attr::LAST_ERROR)?,
        created_at_ms: a.n(attr::CREATED_AT_MS)?,
        updated_at_ms: a.n(attr::UPDATED_AT_MS)?,
    })
}

/// Typed reads of a jobs table item; errors name it `jobs table item`.
pub(super) fn read(item: &Item) -> Attrs<'_> {
    Attrs::new(item, "jobs table item")
}

fn delivery_of(item: &Item) -> Result<DeliveryId, StoreError> {
    DeliveryId::parse(&read(item).s(attr::PK)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn repo_of(item: &Item) -> Result<RepoFullName, StoreError> {
    RepoFullName::parse(&read(item).s(attr::REPO)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn parse_job(item: &Item) -> Result<JobRecord, StoreError> {
    let a = read(item);
    let state = a.s(attr::STATUS)?;
    let level = a.s(attr::LEVEL)?;
    Ok(JobRecord {
        key: JobKey {
            delivery_id: delivery_of(item)?,
            repo: repo_of(item)?,
            run_id: a.n(attr::RUN_ID)?,
            run_attempt: a.n(attr::RUN_ATTEMPT)?,
            job_name: a.s(attr::JOB_NAME)?,
        },
        state: JobState::parse(&state).ok_or_else(|| a.corrupt(attr::STATUS, "is not a job state"))?,
        level: Level::parse(&level).ok_or_else(|| a.corrupt(attr::LEVEL, "is not L1..L4"))?,
        dispatched_at_ms: a.opt_n(attr::DISPATCHED_AT_MS)?,
        in_progress_at_ms: a.opt_n(attr::IN_PROGRESS_AT_MS)?,
        completed_at_ms: a.opt_n(attr::COMPLETED_AT_MS)?,
        conclusion: a.opt_s(attr::CONCLUSION)?,
        queue_time_s: a.opt_n(attr::QUEUE_TIME_S)?,
        execution_time_s: a.opt_n(attr::EXECUTION_TIME_S)?,
        workflow_name: a.opt_s(attr::WORKFLOW_NAME)?,
        url: a.opt_s(attr::URL)?,
        updated_at_ms: a.n(attr::UPDATED_AT)?,
    })
}

pub(super) fn parse_outbox(item: &Item) -> Result<OutboxItem, StoreError> {
    let a = read(item);
    let sync = sync_of(item, HUD_STATUS_PREFIX, "is not an outbox status")?;
    let body = a.s(attr::BODY)?;
    Ok(OutboxItem {
        id: a.s(attr::ID)?,
        delivery_id: delivery_of(item)?,
        body: serde_json::from_str(&body).map_err(|e| a.corrupt(attr::BODY, &format!("is not JSON: {e}")))?,
        sync,
        attempts: a.n(attr::ATTEMPTS)?,
        last_error: a.opt_s(attr::LAST_ERROR)?,
        created_at_ms: a.n(attr::CREATED_AT_MS)?,
        updated_at_ms: a.n(attr::UPDATED_AT_MS)?,
        next_attempt_at_ms: match a.opt_n(attr::NEXT_ATTEMPT_AT_MS)? {
            Some(t) => t,
            None => a.n(attr::CREATED_AT_MS)?,
        },
    })
}

pub(super) fn parse_violation(item: &Item) -> Result<Violation, StoreError> {
    Ok(Violation {
        delivery_id: delivery_of(item)?,
        repo: repo_of(item)?,
        reason: read(item).s(attr::REASON)?,
        at_ms: read(item).n(attr::AT_MS)?,
    })
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
            head_sha: crcr_core::domain::HeadSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
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
}
