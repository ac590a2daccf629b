//! Downstream callbacks (CONTRACTS.md "Callback input"): the body schema,
//! and the reconciler's lifecycle step that turns an accepted callback into
//! a conditional state change plus its HUD record.
//!
//! Body: the `client_payload` the downstream received plus a `workflow`
//! object (`schema_version` 1; numbers may arrive as strings). `nightly` /
//! `periodic` callbacks have no dispatch: their `delivery_id` is an upstream
//! commit SHA and only `completed` is valid.

use serde_json::{json, Value};

use crate::domain::{DeliveryId, Level, RepoFullName};
use crate::lifecycle::{seconds_between, JobKey, JobLifecycle, JobRecord, JobState, OutboxItem, Violation};
use crate::ports::{DispatchStatus, DispatchStore, StoreError};

/// Conclusions a caller may report for a completed job: those GitHub accepts
/// when a check run is created or updated (REST docs, "Create a check run",
/// `conclusion`: `action_required`, `cancelled`, `failure`, `neutral`,
/// `success`, `skipped`, `timed_out`). `stale` is not one of them: the same
/// page says "You cannot change a check run conclusion to stale, only GitHub
/// can set this" (<https://docs.github.com/rest/checks/runs#create-a-check-run>),
/// so a callback carrying it is refused at request time (400 naming
/// `workflow.conclusion`) instead of stored and later refused by GitHub.
pub const CONCLUSIONS: &[&str] =
    &["action_required", "cancelled", "failure", "neutral", "success", "skipped", "timed_out"];

/// Conclusions GitHub knows but only GitHub itself sets (REST docs, "Create a
/// check run": "only GitHub can set this" for `stale`); refused with their own message.
pub const GITHUB_ONLY_CONCLUSIONS: &[&str] = &["stale"];

/// A callback body that breaks the schema; names the field (answered 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("callback field {field}: {problem}")]
pub struct SchemaError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> SchemaError {
    SchemaError { field, problem: problem.into() }
}

/// Kind of callback: for a dispatched event, or a scheduled run without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    Dispatched,
    /// `nightly` / `periodic`: `delivery_id` is an upstream commit SHA.
    Scheduled,
}

/// A parsed, validated callback.
#[derive(Clone, Debug, PartialEq)]
pub struct Callback {
    pub kind: CallbackKind,
    pub event_type: String,
    pub delivery_id: DeliveryId,
    pub status: JobState,
    pub conclusion: Option<String>,
    pub run_id: u64,
    pub run_attempt: u32,
    pub job_name: String,
    /// `workflow.name`, required and non-empty: part of HUD's row key.
    pub workflow_name: String,
    /// `workflow.check_run_id` as HUD keys it (`String(wf.check_run_id)`): a
    /// non-empty string as sent, or a non-negative integer in decimal.
    pub check_run_id: String,
    pub url: Option<String>,
}

impl Callback {
    /// The job this callback is about, for the verified repository `repo`.
    pub fn key(&self, repo: &RepoFullName) -> JobKey {
        JobKey {
            delivery_id: self.delivery_id.clone(),
            repo: repo.clone(),
            run_id: self.run_id,
            run_attempt: self.run_attempt,
            job_name: self.job_name.clone(),
        }
    }
}

fn string_field<'a>(v: &'a Value, field: &'static str) -> Result<Option<&'a str>, SchemaError> {
    match v.get(field.rsplit('.').next().unwrap_or(field)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

/// A positive integer given as a number or a string of digits.
fn number_field(v: &Value, field: &'static str) -> Result<u64, SchemaError> {
    let name = field.rsplit('.').next().unwrap_or(field);
    match v.get(name) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(field, "must be a positive integer")),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad(field, format!("{s:?} is not a positive integer"))),
        None | Some(Value::Null) => Err(bad(field, "is required")),
        Some(_) => Err(bad(field, "must be a number")),
    }
}

/// `workflow.check_run_id`: a non-empty string (what the callback action
/// sends: `job.check_run_id`, or `"<run_id>-<run_attempt>"` when the runner
/// has none) or a non-negative integer, at most 200 characters.
fn check_run_id_field(w: &Value) -> Result<String, SchemaError> {
    const FIELD: &str = "workflow.check_run_id";
    let id = match w.get("check_run_id") {
        Some(Value::String(s)) if s.is_empty() => return Err(bad(FIELD, "must not be empty")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => n.to_string(),
            None => return Err(bad(FIELD, "must be a non-negative integer or a string")),
        },
        None | Some(Value::Null) => return Err(bad(FIELD, "is required (HUD refuses a record without it)")),
        Some(_) => return Err(bad(FIELD, "must be a string or a number")),
    };
    if id.len() > 200 {
        return Err(bad(FIELD, "must be at most 200 characters"));
    }
    Ok(id)
}

/// Parses and validates a callback body.
///
/// Besides the schema above, `workflow.job_name`, `workflow.check_run_id`
/// and `workflow.name` are required: torchci's HUD handler
/// (`extractDynamoRecord` in `torchci/lib/crcr/crcrUtils.ts`,
/// pytorch/test-infra) answers 400 without `job_name` or `check_run_id` and
/// keys its row by `verified_repo/delivery_id/workflow.name/job_name/check_run_id`,
/// and the Python relay (`_parse_callback_body` in
/// `aws/lambda/cross_repo_ci_relay/callback/callback_handler.py`) answers 400
/// without `workflow.name`. Refusing them here answers the caller at request
/// time instead of leaving a record HUD will refuse in the outbox.
pub fn parse(body: &[u8]) -> Result<(Callback, Value), SchemaError> {
    parse_with(body, true)
}

/// [`parse`] for a callback the relay already accepted (the reconciler reads
/// it from its queue): the request-time requirements of HUD's fields are not
/// applied again, so a callback accepted by an earlier release without
/// `workflow.check_run_id` or `workflow.name` is still applied, not
/// dead-lettered as unreadable. A missing `check_run_id` reads as the
/// callback action's own fallback `<run_id>-<run_attempt>`
/// (`report_callback.py`), a missing `name` as empty.
pub fn parse_accepted(body: &[u8]) -> Result<(Callback, Value), SchemaError> {
    parse_with(body, false)
}

fn parse_with(body: &[u8], at_request: bool) -> Result<(Callback, Value), SchemaError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad("body", format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("body", "must be a JSON object"));
    }
    let event_type = string_field(&v, "event_type")?.ok_or_else(|| bad("event_type", "is required"))?.to_owned();
    let kind = match event_type.as_str() {
        "nightly" | "periodic" => CallbackKind::Scheduled,
        _ => CallbackKind::Dispatched,
    };
    let delivery_raw = string_field(&v, "delivery_id")?.ok_or_else(|| bad("delivery_id", "is required"))?;
    let delivery_id = DeliveryId::parse(delivery_raw).map_err(|e| bad("delivery_id", e.to_string()))?;
    if kind == CallbackKind::Scheduled
        && !(delivery_raw.len() == 40 && delivery_raw.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad("delivery_id", "must be a 40-character commit SHA for nightly/periodic callbacks"));
    }
    let w = v.get("workflow").filter(|w| w.is_object()).ok_or_else(|| bad("workflow", "is required (an object)"))?;
    let version = match w.get("schema_version") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad("workflow.schema_version", "is required")),
    };
    if version != "1" {
        return Err(bad("workflow.schema_version", format!("{version:?} is not supported (only 1)")));
    }
    let status = match string_field(w, "workflow.status")? {
        Some("in_progress") => JobState::InProgress,
        Some("completed") => JobState::Completed,
        Some(other) => return Err(bad("workflow.status", format!("{other:?} is not in_progress or completed"))),
        None => return Err(bad("workflow.status", "is required")),
    };
    let conclusion = string_field(w, "workflow.conclusion")?.map(str::to_owned);
    match (status, conclusion.as_deref()) {
        (JobState::Completed, None) => return Err(bad("workflow.conclusion", "is required when completed")),
        (JobState::Completed, Some(c)) if GITHUB_ONLY_CONCLUSIONS.contains(&c) => {
            return Err(bad(
                "workflow.conclusion",
                format!("{c:?} can only be set by GitHub, not reported (one of {})", CONCLUSIONS.join(", ")),
            ))
        }
        (JobState::Completed, Some(c)) if !CONCLUSIONS.contains(&c) => {
            return Err(bad(
                "workflow.conclusion",
                format!("{c:?} is not one GitHub accepts ({})", CONCLUSIONS.join(", ")),
            ))
        }
        (JobState::InProgress, Some(_)) => return Err(bad("workflow.conclusion", "must be null while in_progress")),
        _ => {}
    }
    if kind == CallbackKind::Scheduled && status != JobState::Completed {
        return Err(bad("workflow.status", "nightly/periodic callbacks may only be completed"));
    }
    let run_attempt = number_field(w, "workflow.run_attempt")?;
    if run_attempt == 0 || run_attempt > u32::MAX as u64 {
        return Err(bad("workflow.run_attempt", "must be between 1 and 4294967295"));
    }
    let job_name = string_field(w, "workflow.job_name")?.ok_or_else(|| bad("workflow.job_name", "is required"))?;
    if job_name.is_empty() || job_name.len() > 200 {
        return Err(bad("workflow.job_name", "must be 1 to 200 characters"));
    }
    let run_id = number_field(w, "workflow.run_id")?;
    let check_run_id = match check_run_id_field(w) {
        Err(_) if !at_request && w.get("check_run_id").is_none_or(Value::is_null) => format!("{run_id}-{run_attempt}"),
        other => other?,
    };
    let workflow_name = match string_field(w, "workflow.name")? {
        Some("") if at_request => return Err(bad("workflow.name", "must not be empty")),
        Some(n) => n.to_owned(),
        None if at_request => return Err(bad("workflow.name", "is required (part of HUD's row key)")),
        None => String::new(),
    };
    let url = string_field(w, "workflow.url")?.map(str::to_owned);
    if url.as_deref().is_some_and(|u| !u.starts_with("https://")) {
        return Err(bad("workflow.url", "must be an https URL"));
    }
    let cb = Callback {
        kind,
        event_type,
        delivery_id,
        status,
        conclusion,
        run_id,
        run_attempt: run_attempt as u32,
        job_name: job_name.to_owned(),
        workflow_name,
        check_run_id,
        url,
    };
    Ok((cb, v))
}

/// What the relay knows at request time about a callback's place in the
/// lifecycle: a violation that can already be answered 409.
pub async fn precheck(
    cb: &Callback,
    repo: &RepoFullName,
    dispatches: &dyn DispatchStore,
    jobs: &dyn JobLifecycle,
) -> Result<Result<(), String>, StoreError> {
    if cb.kind == CallbackKind::Dispatched {
        let records = dispatches.records(&cb.delivery_id).await?;
        let dispatched = records.iter().any(|r| &r.target == repo && r.status == DispatchStatus::Dispatched);
        if !dispatched {
            return Ok(Err(format!("the relay never dispatched delivery {} to {repo}", cb.delivery_id)));
        }
    }
    let current = jobs.get(&cb.key(repo)).await?.map(|j| j.state);
    Ok(lifecycle_rule(cb, current))
}

/// The lifecycle rule: which state a callback may move from.
fn lifecycle_rule(cb: &Callback, current: Option<JobState>) -> Result<(), String> {
    match (cb.kind, cb.status, current) {
        (_, JobState::InProgress, None) => Ok(()),
        (CallbackKind::Dispatched, JobState::Completed, Some(JobState::InProgress)) => Ok(()),
        (CallbackKind::Scheduled, JobState::Completed, None) => Ok(()),
        (_, JobState::InProgress, Some(s)) => Err(format!("in_progress repeated (job is {})", s.as_str())),
        (_, JobState::Completed, Some(JobState::Completed)) => Err("completed repeated".into()),
        (_, JobState::Completed, _) => Err("completed without in_progress".into()),
    }
}

/// Outcome of [`reconcile`].
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "one per callback, moved once; boxing buys nothing")]
pub enum Reconciled {
    Applied(JobRecord),
    /// Nothing changed; recorded with its reason.
    Violation(String),
}

/// Applies an accepted callback: a conditional state change with its HUD
/// record (one atomic write). `received_at_ms` is when the relay accepted
/// it: the trusted timing figures use the relay's own clock.
pub async fn reconcile(
    cb: &Callback,
    body: &Value,
    repo: &RepoFullName,
    level: Level,
    received_at_ms: i64,
    dispatches: &dyn DispatchStore,
    jobs: &dyn JobLifecycle,
) -> Result<Reconciled, StoreError> {
    let key = cb.key(repo);
    let current = jobs.get(&key).await?;
    let violation = |reason: String| async move {
        jobs.record_violation(&Violation {
            delivery_id: cb.delivery_id.clone(),
            repo: repo.clone(),
            reason: format!("{} (run {} attempt {} job {:?})", reason, cb.run_id, cb.run_attempt, cb.job_name),
            at_ms: received_at_ms,
        })
        .await?;
        Ok(Reconciled::Violation(reason))
    };
    if let Err(reason) = lifecycle_rule(cb, current.as_ref().map(|j| j.state)) {
        return violation(reason).await;
    }
    let dispatched_at_ms = match cb.kind {
        CallbackKind::Scheduled => None,
        CallbackKind::Dispatched => dispatches
            .records(&cb.delivery_id)
            .await?
            .into_iter()
            .find(|r| &r.target == repo && r.status == DispatchStatus::Dispatched)
            .and_then(|r| r.dispatched_at_ms),
    };
    if cb.kind == CallbackKind::Dispatched && dispatched_at_ms.is_none() {
        return violation(format!("no dispatch of {} to {repo}", cb.delivery_id)).await;
    }
    let mut record = current.clone().unwrap_or(JobRecord {
        key: key.clone(),
        state: cb.status,
        level,
        dispatched_at_ms,
        in_progress_at_ms: None,
        completed_at_ms: None,
        conclusion: None,
        queue_time_s: None,
        execution_time_s: None,
        workflow_name: Some(cb.workflow_name.clone()),
        url: cb.url.clone(),
        updated_at_ms: received_at_ms,
    });
    record.state = cb.status;
    record.updated_at_ms = received_at_ms;
    match cb.status {
        JobState::InProgress => {
            record.in_progress_at_ms = Some(received_at_ms);
            record.queue_time_s = seconds_between(record.dispatched_at_ms, record.in_progress_at_ms);
        }
        JobState::Completed => {
            record.completed_at_ms = Some(received_at_ms);
            record.conclusion = cb.conclusion.clone();
            record.execution_time_s = seconds_between(record.in_progress_at_ms, record.completed_at_ms);
        }
    }
    let outbox = OutboxItem::pending(&key, cb.status, hud_body(&record, body), received_at_ms);
    if jobs.transition(current.map(|j| j.state), &record, &outbox).await? {
        Ok(Reconciled::Applied(record))
    } else {
        // Lost a race with a concurrent callback for the same job.
        violation("state changed concurrently; duplicate or out-of-order callback".into()).await
    }
}

/// The HUD record (CONTRACTS.md "HUD output"): `trusted` holds only what the
/// relay established (its own timings, the verified repository, its level);
/// the callback body goes, as received, under `untrusted`.
pub fn hud_body(job: &JobRecord, callback_body: &Value) -> Value {
    json!({
        "trusted": {
            "ci_metrics": {"queue_time": job.queue_time_s, "execution_time": job.execution_time_s},
            "verified_repo": job.key.repo.as_str(),
            "downstream_repo_level": job.level.as_str(),
        },
        "untrusted": {"callback_payload": callback_body},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(workflow: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"event_type": "pull_request", "delivery_id": "d-1", "payload": {}, "workflow": workflow}),
        )
        .unwrap()
    }

    fn check_err(workflow: Value, field: &str) {
        let e = parse(&body(workflow.clone())).unwrap_err();
        assert_eq!(e.field, field, "{workflow}: {e}");
    }

    /// A callback accepted by an earlier release without HUD's fields is
    /// still readable from the queue; at request time it is refused.
    #[test]
    fn queued_callbacks_without_hud_fields_are_still_applied() {
        let old = body(json!({"schema_version": "1", "status": "in_progress", "run_id": "77", "run_attempt": "2",
            "job_name": "build"}));
        assert_eq!(parse(&old).unwrap_err().field, "workflow.check_run_id");
        let (cb, _) = parse_accepted(&old).unwrap();
        assert_eq!((cb.check_run_id.as_str(), cb.workflow_name.as_str()), ("77-2", ""));
        let bad = body(json!({"schema_version": "1", "status": "in_progress", "run_id": "77", "run_attempt": "2",
            "job_name": "build", "check_run_id": ["x"]}));
        assert_eq!(parse_accepted(&bad).unwrap_err().field, "workflow.check_run_id", "a malformed one still is not");
    }

    #[test]
    fn numbers_as_strings_and_the_schema() {
        let (cb, _) = parse(&body(json!({"schema_version": "1", "status": "completed", "conclusion": "success",
            "name": "CI", "url": "https://github.com/o/r/actions/runs/123", "run_id": "123", "run_attempt": 2,
            "job_name": "build", "check_run_id": "456"})))
        .unwrap();
        assert_eq!((cb.run_id, cb.run_attempt, cb.status), (123, 2, JobState::Completed));
        assert_eq!((cb.workflow_name.as_str(), cb.check_run_id.as_str()), ("CI", "456"));
        let base = json!({"schema_version": "1", "status": "in_progress", "run_id": 1, "run_attempt": 1,
            "job_name": "b", "name": "CI", "check_run_id": 7});
        assert_eq!(parse(&body(base.clone())).unwrap().0.check_run_id, "7");
        let with = |k: &str, v: Value| {
            let mut w = base.clone();
            w[k] = v;
            w
        };
        check_err(with("schema_version", json!("2")), "workflow.schema_version");
        check_err(with("status", json!("queued")), "workflow.status");
        check_err(with("run_id", json!("12x")), "workflow.run_id");
        check_err(with("run_id", json!(-1)), "workflow.run_id");
        check_err(with("run_attempt", json!(0)), "workflow.run_attempt");
        check_err(with("job_name", json!("")), "workflow.job_name");
        check_err(with("url", json!("http://evil")), "workflow.url");
        // HUD's row key (torchci lib/crcr/crcrUtils.ts extractDynamoRecord).
        let without = |k: &str| {
            let mut w = base.clone();
            w.as_object_mut().unwrap().remove(k);
            w
        };
        check_err(without("check_run_id"), "workflow.check_run_id");
        check_err(with("check_run_id", Value::Null), "workflow.check_run_id");
        check_err(with("check_run_id", json!("")), "workflow.check_run_id");
        check_err(with("check_run_id", json!(-1)), "workflow.check_run_id");
        check_err(with("check_run_id", json!(true)), "workflow.check_run_id");
        check_err(without("name"), "workflow.name");
        check_err(with("name", Value::Null), "workflow.name");
        check_err(with("name", json!("")), "workflow.name");
        check_err(with("name", json!(3)), "workflow.name");
        // The action's fallback when the runner has no check run id.
        assert_eq!(parse(&body(with("check_run_id", json!("123-1")))).unwrap().0.check_run_id, "123-1");
        assert_eq!(parse(&body(with("check_run_id", json!(0)))).unwrap().0.check_run_id, "0");
        check_err(with("conclusion", json!("success")), "workflow.conclusion");
        let mut done = with("status", json!("completed"));
        check_err(done.clone(), "workflow.conclusion");
        done["conclusion"] = json!("great");
        check_err(done.clone(), "workflow.conclusion");
        // Only GitHub sets `stale` (REST "Create a check run").
        done["conclusion"] = json!("stale");
        let e = parse(&body(done)).unwrap_err();
        assert_eq!(e.field, "workflow.conclusion");
        assert!(e.problem.contains("only be set by GitHub"), "{e}");
        let e = parse(b"{\"event_type\": \"nightly\", \"delivery_id\": \"abc\", \"workflow\": {}}").unwrap_err();
        assert_eq!(e.field, "delivery_id");
    }

    #[test]
    fn lifecycle_table() {
        let (cb, _) = parse(&body(json!({"schema_version": 1, "status": "in_progress", "run_id": 1, "run_attempt": 1,
            "job_name": "b", "name": "CI", "check_run_id": "1-1"})))
        .unwrap();
        let done = Callback { status: JobState::Completed, conclusion: Some("success".into()), ..cb.clone() };
        let nightly = Callback { kind: CallbackKind::Scheduled, ..done.clone() };
        let table: &[(&Callback, Option<JobState>, bool)] = &[
            (&cb, None, true),
            (&cb, Some(JobState::InProgress), false),
            (&cb, Some(JobState::Completed), false),
            (&done, None, false),
            (&done, Some(JobState::InProgress), true),
            (&done, Some(JobState::Completed), false),
            (&nightly, None, true),
            (&nightly, Some(JobState::Completed), false),
        ];
        for (c, state, ok) in table {
            assert_eq!(lifecycle_rule(c, *state).is_ok(), *ok, "{:?} from {state:?}", c.status);
        }
    }
}
