//! Upstream events the reconciler acts on (issue 4; CONTRACTS.md "Webhook
//! input" and "Upstream check runs"), next to (not instead of) the
//! `repository_dispatch` fan-out:
//!
//! | event.action | what the reconciler does |
//! |---|---|
//! | `pull_request.labeled` `ciflow/crcr/<device>` (or `ciflow/oot/<device>`) | records "check run wanted" for the PR's head commit and that device, then backfills check runs of that commit's L3 jobs of that device from their stored state |
//! | `pull_request.synchronize` | the previous head (`before`) is superseded: its in-flight jobs stop being tracked, their in-progress check runs complete as `cancelled` ("superseded") |
//! | `pull_request.closed` | the same for the PR's head; with `CRCR_CANCEL_ON_CLOSE=true` also cancels the L3+ downstream runs still in progress |
//! | `check_run.rerequested` of a `crcr/...` check run | `rerun-failed-jobs` of its downstream run: the relay's record of that check run (GitHub's id), else the `<run_id>` of its `external_id` on the target its name names |
//! | `check_suite.rerequested` | `rerun` of every distinct downstream run with a check run on that commit, once |
//!
//! Ingest extracts a small typed [`UpstreamEvent`] from the verified payload
//! and puts it on the reconcile queue as an `upstream_v1` message, so the
//! message is always far below the queue's size limit.
//!
//! Everything is found from the relay's own records by the upstream commit
//! SHA ([`crate::ports::DispatchStore::records_for_commit`]): check-run events of fork
//! PRs carry an empty `pull_requests` list. Only L3+ repositories are ever
//! re-run or cancelled, with an installation token narrowed to that
//! repository and `actions: write` ([`crate::runs::WorkflowRuns`]).
//!
//! Small per-commit records live in the [`StateStore`] (SQLite / DynamoDB
//! `kv`): `check_wanted/<sha>/<device>` and `commit_untracked/<sha>`
//! (see [`Tracking`]), and `rerun/<delivery>/<repo>/<run_id>` markers so a
//! suite re-run reaches each run once; each kept [`RECORD_TTL`] (30 days).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checks::{CheckRunTarget, CheckStatus, LABEL_PREFIXES};
use crate::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crate::lifecycle::{CheckRunItem, JobState};
use crate::ports::{DispatchRecord, GitHubError, StateStore, StoreError};
use crate::reconcile::Reconciler;
use crate::runs::RunRequest;

/// How long the per-commit records are kept (30 days: GitHub re-runs a
/// workflow run up to 30 days after it started, "Re-running workflows and
/// jobs"; dispatch records live as long).
pub const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Dispatch records read per commit (a PR head is dispatched a handful of
/// times: opened, labeled re-dispatches, reopened, closed).
const RECORDS_PER_COMMIT: usize = 500;

/// The part of an upstream webhook the reconciler needs; everything else of
/// the payload stays out of the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UpstreamEvent {
    /// `pull_request.labeled`: `label.name` on PR `number` at head `pull_request.head.sha`.
    Labeled { pr_number: u64, head_sha: HeadSha, label: String },
    /// `pull_request.synchronize`: the head moved from `before` to `after`.
    Synchronize { pr_number: u64, before: HeadSha, after: HeadSha },
    /// `pull_request.closed` (merged or not) at head `pull_request.head.sha`.
    Closed { pr_number: u64, head_sha: HeadSha, merged: bool },
    /// `check_run.rerequested`: the check run's `name`, `external_id` and `head_sha`.
    CheckRunRerequested { check_run_id: u64, name: String, external_id: String, head_sha: HeadSha },
    /// `check_suite.rerequested`: the suite's `head_sha`.
    CheckSuiteRerequested { check_suite_id: u64, head_sha: HeadSha },
}

impl UpstreamEvent {
    /// `event.action` of the webhook it came from.
    pub fn name(&self) -> &'static str {
        match self {
            UpstreamEvent::Labeled { .. } => "pull_request.labeled",
            UpstreamEvent::Synchronize { .. } => "pull_request.synchronize",
            UpstreamEvent::Closed { .. } => "pull_request.closed",
            UpstreamEvent::CheckRunRerequested { .. } => "check_run.rerequested",
            UpstreamEvent::CheckSuiteRerequested { .. } => "check_suite.rerequested",
        }
    }
    /// The upstream commit it is about (for `synchronize`: the superseded head).
    pub fn head_sha(&self) -> &HeadSha {
        match self {
            UpstreamEvent::Labeled { head_sha, .. }
            | UpstreamEvent::Closed { head_sha, .. }
            | UpstreamEvent::CheckRunRerequested { head_sha, .. }
            | UpstreamEvent::CheckSuiteRerequested { head_sha, .. } => head_sha,
            UpstreamEvent::Synchronize { before, .. } => before,
        }
    }
    /// The pull request, when the event names one.
    pub fn pr_number(&self) -> Option<u64> {
        match self {
            UpstreamEvent::Labeled { pr_number, .. }
            | UpstreamEvent::Closed { pr_number, .. }
            | UpstreamEvent::Synchronize { pr_number, .. } => Some(*pr_number),
            _ => None,
        }
    }
}

/// On the reconcile queue: a verified upstream webhook's [`UpstreamEvent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamV1 {
    /// `X-GitHub-Delivery` of the webhook.
    pub delivery_id: DeliveryId,
    /// When ingest accepted it (ms since epoch, relay clock).
    pub received_at_ms: i64,
    pub event: UpstreamEvent,
}

/// Whether the reconciler acts on `event.action` (see the module table).
pub fn is_upstream(event: &str, action: Option<&str>) -> bool {
    matches!(
        (event, action),
        ("pull_request", Some("labeled" | "synchronize" | "closed"))
            | ("check_run", Some("rerequested"))
            | ("check_suite", Some("rerequested"))
    )
}

/// A payload of an acted-on event that lacks a field the reconciler needs
/// (names the JSON pointer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{event}.{action} payload has no valid {pointer}")]
pub struct UpstreamPayloadError {
    pub event: String,
    pub action: String,
    pub pointer: &'static str,
}

/// Extracts the [`UpstreamEvent`] of a verified payload; `Ok(None)` for
/// events not acted on ([`is_upstream`] false). SHAs must be 40 hex digits.
pub fn parse_event(
    event: &str,
    action: Option<&str>,
    payload: &Value,
) -> Result<Option<UpstreamEvent>, UpstreamPayloadError> {
    if !is_upstream(event, action) {
        return Ok(None);
    }
    let action = action.unwrap_or_default();
    let err = |pointer| UpstreamPayloadError { event: event.into(), action: action.into(), pointer };
    let u64_at = |p: &'static str| payload.pointer(p).and_then(Value::as_u64).ok_or_else(|| err(p));
    let str_at = |p: &'static str| payload.pointer(p).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| err(p));
    let sha_at = |p: &'static str| str_at(p).and_then(|s| HeadSha::parse(&s).map_err(|_| err(p)));
    Ok(Some(match (event, action) {
        ("pull_request", "labeled") => UpstreamEvent::Labeled {
            pr_number: u64_at("/number")?,
            head_sha: sha_at("/pull_request/head/sha")?,
            label: str_at("/label/name")?,
        },
        ("pull_request", "synchronize") => UpstreamEvent::Synchronize {
            pr_number: u64_at("/number")?,
            before: sha_at("/before")?,
            after: sha_at("/after")?,
        },
        ("pull_request", _) => UpstreamEvent::Closed {
            pr_number: u64_at("/number")?,
            head_sha: sha_at("/pull_request/head/sha")?,
            merged: payload.pointer("/pull_request/merged").and_then(Value::as_bool).unwrap_or(false),
        },
        ("check_run", _) => UpstreamEvent::CheckRunRerequested {
            check_run_id: u64_at("/check_run/id")?,
            name: str_at("/check_run/name")?,
            external_id: payload.pointer("/check_run/external_id").and_then(Value::as_str).unwrap_or("").to_owned(),
            head_sha: sha_at("/check_run/head_sha")?,
        },
        _ => UpstreamEvent::CheckSuiteRerequested {
            check_suite_id: u64_at("/check_suite/id")?,
            head_sha: sha_at("/check_suite/head_sha")?,
        },
    }))
}

/// [`parse_event`] on a payload's JSON text, building only the parts it
/// reads (`number`, `before`, `after`, `label`, `check_run`, `check_suite`,
/// and of `pull_request` only `head.sha` and `merged`): a 28 KB
/// `pull_request.synchronize` is mostly `pull_request`, whose tree ingest
/// would otherwise build per webhook. Text the quick read cannot take as
/// the tree would (a field given twice, where the tree keeps the last; a
/// `pull_request` or `head` that is not an object) is read whole, so the
/// answer is always [`parse_event`]'s on the tree. Errors: the text is not
/// JSON (serde_json's error), or the event's [`UpstreamPayloadError`].
pub fn parse_event_text(
    event: &str,
    action: Option<&str>,
    text: &str,
) -> Result<Result<Option<UpstreamEvent>, UpstreamPayloadError>, serde_json::Error> {
    if !is_upstream(event, action) {
        return Ok(Ok(None));
    }
    #[derive(Deserialize)]
    struct Part {
        number: Option<Value>,
        before: Option<Value>,
        after: Option<Value>,
        label: Option<Value>,
        check_run: Option<Value>,
        check_suite: Option<Value>,
        pull_request: Option<PullRequestPart>,
    }
    #[derive(Deserialize)]
    struct PullRequestPart {
        head: Option<HeadPart>,
        merged: Option<Value>,
    }
    #[derive(Deserialize)]
    struct HeadPart {
        sha: Option<Value>,
    }
    let payload = match serde_json::from_str::<Part>(text) {
        Ok(p) => {
            let mut top = serde_json::Map::new();
            let fields = [
                ("number", p.number),
                ("before", p.before),
                ("after", p.after),
                ("label", p.label),
                ("check_run", p.check_run),
                ("check_suite", p.check_suite),
            ];
            top.extend(fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))));
            if let Some(pr) = p.pull_request {
                let mut part = serde_json::Map::new();
                if let Some(sha) = pr.head.and_then(|h| h.sha) {
                    part.insert("head".into(), serde_json::json!({ "sha": sha }));
                }
                if let Some(merged) = pr.merged {
                    part.insert("merged".into(), merged);
                }
                top.insert("pull_request".into(), Value::Object(part));
            }
            Value::Object(top)
        }
        Err(_) => serde_json::from_str::<Value>(text)?,
    };
    Ok(parse_event(event, action, &payload))
}

/// The device a label asks check runs for: `ciflow/crcr/<device>` or
/// `ciflow/oot/<device>` (prefix compared case-insensitively), lower-cased.
pub fn label_device(label: &str) -> Option<String> {
    LABEL_PREFIXES.iter().find_map(|p| {
        let head = label.get(..p.len())?;
        let device = &label[p.len()..];
        (head.eq_ignore_ascii_case(p) && !device.is_empty()).then(|| device.to_ascii_lowercase())
    })
}

/// `commit_untracked/<sha>`: dispatches of this commit created before
/// `before_ms` by another delivery are no longer tracked (the head was
/// superseded or the pull request closed): no check-run updates, no
/// never-started report, no re-run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// `received_at_ms` of the webhook that ended tracking (relay clock).
    pub before_ms: i64,
    /// The delivery that ended it (its own dispatches stay tracked: a
    /// `closed` delivery is dispatched too, for post-merge runs).
    pub by_delivery: DeliveryId,
    /// Why, for logs and `crcr trace`: `superseded by <sha> (pull request #N)`
    /// or "pull request #N closed".
    pub reason: String,
}

impl Tracking {
    /// Whether `rec` is no longer tracked under this record: another
    /// delivery's dispatch whose webhook ingest accepted before `before_ms`
    /// (both ingest's clock; records without that time use when the
    /// dispatcher first claimed the target).
    pub fn untracks(&self, rec: &DispatchRecord) -> bool {
        let accepted_at = rec.meta.received_at_ms.unwrap_or(rec.created_at_ms);
        rec.delivery_id != self.by_delivery && accepted_at < self.before_ms
    }
}

/// Key of the "check run wanted" record of (`sha`, `device`).
pub fn wanted_key(sha: &HeadSha, device: &str) -> String {
    format!("check_wanted/{}/{}", sha.as_str(), device.to_ascii_lowercase())
}

/// Key of the [`Tracking`] record of `sha`.
pub fn tracking_key(sha: &HeadSha) -> String {
    format!("commit_untracked/{}", sha.as_str())
}

/// The [`Tracking`] record of `sha`, if tracking of some of its dispatches ended.
pub async fn tracking(state: &dyn StateStore, sha: &HeadSha) -> Result<Option<Tracking>, StoreError> {
    match state.get(&tracking_key(sha)).await? {
        None => Ok(None),
        Some(v) => {
            serde_json::from_str(&v).map(Some).map_err(|e| StoreError::Corrupt(format!("{}: {e}", tracking_key(sha))))
        }
    }
}

/// Whether `ciflow/crcr/<device>` was seen on commit `sha` (by `labeled`).
pub async fn wanted(state: &dyn StateStore, sha: &HeadSha, device: &str) -> Result<bool, StoreError> {
    Ok(state.get(&wanted_key(sha, device)).await?.is_some())
}

/// One downstream run the relay asked GitHub about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunAction {
    pub repo: RepoFullName,
    pub run_id: u64,
    /// GitHub's answer; `None` when it refused (see `error`).
    pub result: Option<RunRequest>,
    /// A permanent refusal (4xx), logged; not retried.
    pub error: Option<String>,
}

/// What one upstream event did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamReport {
    /// Check-run items written from stored job state (label added later).
    pub check_runs_backfilled: usize,
    /// In-progress check runs completed as `cancelled` (superseded / closed).
    pub check_runs_closed: usize,
    /// Dispatches of the commit that stopped being tracked.
    pub untracked: usize,
    /// Re-runs (`rerun-failed-jobs` / `rerun`) and cancels asked for.
    pub runs: Vec<RunAction>,
    /// Why nothing was done, when nothing was.
    pub ignored: Option<String>,
}

/// Why an upstream event must be processed again later.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("GitHub unavailable for {repo} run {run_id}: {error}")]
    GitHub { repo: RepoFullName, run_id: u64, error: GitHubError },
    #[error("no GitHub client for workflow runs is configured")]
    NoRunsClient,
}

/// Which re-run a rerequested event asks for.
#[derive(Clone, Copy)]
enum Rerun {
    FailedJobs,
    Whole,
}

impl Reconciler {
    /// Applies one upstream event. Store outages and transient GitHub
    /// errors are `Err` (the message is received again; every step is
    /// idempotent); GitHub's permanent refusals are logged and reported.
    pub async fn apply_upstream(&self, msg: &UpstreamV1) -> Result<UpstreamReport, UpstreamError> {
        match &msg.event {
            UpstreamEvent::Labeled { pr_number, head_sha, label } => self.labeled(*pr_number, head_sha, label).await,
            UpstreamEvent::Synchronize { pr_number, before, after } => {
                let reason = format!("superseded by {after} (pull request #{pr_number})");
                self.untrack(msg, before, &reason, false).await
            }
            UpstreamEvent::Closed { pr_number, head_sha, merged } => {
                let reason = format!("pull request #{pr_number} {}", if *merged { "merged" } else { "closed" });
                self.untrack(msg, head_sha, &reason, self.settings.cancel_on_close).await
            }
            UpstreamEvent::CheckRunRerequested { check_run_id, name, external_id, head_sha } => {
                self.check_run_rerequested(*check_run_id, name, external_id, head_sha).await
            }
            UpstreamEvent::CheckSuiteRerequested { head_sha, .. } => self.check_suite_rerequested(msg, head_sha).await,
        }
    }

    /// The commit's dispatch records that are still tracked.
    async fn tracked_records(&self, sha: &HeadSha) -> Result<Vec<DispatchRecord>, StoreError> {
        let mut recs = self.dispatches.records_for_commit(sha, RECORDS_PER_COMMIT).await?;
        if let Some(t) = tracking(self.state.as_ref(), sha).await? {
            recs.retain(|r| !t.untracks(r));
        }
        Ok(recs)
    }

    async fn labeled(&self, pr: u64, sha: &HeadSha, label: &str) -> Result<UpstreamReport, UpstreamError> {
        let mut report = UpstreamReport::default();
        let Some(device) = label_device(label) else {
            report.ignored = Some(format!("label {label:?} is not ciflow/crcr/<device>"));
            return Ok(report);
        };
        // The record first, then the backfill: a callback applied meanwhile
        // reads the record after its own write (see `Reconciler::process`).
        self.state.put_expiring(&wanted_key(sha, &device), &pr.to_string(), RECORD_TTL).await?;
        let recs = self.tracked_records(sha).await?;
        for rec in recs {
            let device_matches = rec.meta.device.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(&device));
            if rec.meta.level != Level::L3 || !device_matches || rec.meta.check_run {
                continue; // L4 and labelled-at-dispatch jobs have theirs already
            }
            let target = CheckRunTarget {
                upstream: self.upstream.clone(),
                head_sha: sha.to_owned(),
                pr_number: rec.meta.pr_number,
            };
            for job in self.jobs.jobs(&rec.delivery_id).await?.into_iter().filter(|j| j.key.repo == rec.target) {
                if self.jobs.advance_check_run(&target.item(&job)).await? {
                    report.check_runs_backfilled += 1;
                }
            }
        }
        tracing::info!(pr, head_sha = %sha, %device, backfilled = report.check_runs_backfilled, "check runs wanted for this commit");
        Ok(report)
    }

    async fn untrack(
        &self,
        msg: &UpstreamV1,
        sha: &HeadSha,
        reason: &str,
        cancel: bool,
    ) -> Result<UpstreamReport, UpstreamError> {
        let mut report = UpstreamReport::default();
        let record =
            Tracking { before_ms: msg.received_at_ms, by_delivery: msg.delivery_id.clone(), reason: reason.to_owned() };
        let record = match tracking(self.state.as_ref(), sha).await? {
            // The same webhook again (redelivered, or received again): its
            // first time stands, or a reopen in between would be untracked.
            Some(stored) if stored.by_delivery == record.by_delivery => stored,
            // Applied out of order: a later end of tracking stands.
            Some(stored) if stored.before_ms >= record.before_ms => stored,
            _ => {
                let value = serde_json::to_string(&record).expect("tracking serializes");
                self.state.put_expiring(&tracking_key(sha), &value, RECORD_TTL).await?;
                record
            }
        };
        let now = self.clock.now_ms();
        let mut to_cancel = BTreeSet::new();
        for rec in self.dispatches.records_for_commit(sha, RECORDS_PER_COMMIT).await? {
            if !record.untracks(&rec) {
                continue;
            }
            report.untracked += 1;
            for item in self.jobs.check_runs(&rec.delivery_id).await? {
                let of_target = item.id.starts_with(&format!("{}|{}|", rec.delivery_id, rec.target.key()));
                if item.request.status != CheckStatus::InProgress || !of_target {
                    continue;
                }
                if self.jobs.advance_check_run(&untracked_item(item, &record.reason, now)).await? {
                    report.check_runs_closed += 1;
                }
            }
            if cancel && rec.meta.level >= Level::L3 {
                for job in self.jobs.jobs(&rec.delivery_id).await? {
                    if job.key.repo == rec.target && job.state == JobState::InProgress {
                        to_cancel.insert((job.key.repo.clone(), job.key.run_id));
                    }
                }
            }
        }
        for (repo, run_id) in to_cancel {
            let runs = self.runs.as_ref().ok_or(UpstreamError::NoRunsClient)?;
            report.runs.push(settle(runs.cancel(&repo, run_id).await, repo, run_id, "cancel")?);
        }
        tracing::info!(head_sha = %sha, %reason, untracked = report.untracked, check_runs_closed = report.check_runs_closed,
            cancelled = report.runs.len(), "dispatches of this commit no longer tracked");
        Ok(report)
    }

    /// The downstream run of a re-requested check run: the relay's own
    /// record of that check run (by GitHub's id) on a tracked L3+ dispatch
    /// of the commit; for one whose id the relay did not keep, the
    /// `<run_id>` of its `external_id`, on a target its name
    /// (`crcr/<owner>/<repo>/...`) names, that has a job of that run.
    async fn check_run_rerequested(
        &self,
        check_run_id: u64,
        name: &str,
        external_id: &str,
        sha: &HeadSha,
    ) -> Result<UpstreamReport, UpstreamError> {
        let mut report = UpstreamReport::default();
        if !name.starts_with("crcr/") {
            report.ignored = Some(format!("check run {name:?} is not one of crcr's"));
            return Ok(report);
        }
        let from_external_id = external_id.split_once(':').and_then(|(run, _)| run.parse::<u64>().ok());
        let recs = self.tracked_records(sha).await?;
        let mut found = None;
        for rec in recs.iter().filter(|r| r.meta.level >= Level::L3) {
            let prefix = format!("{}|{}|", rec.delivery_id, rec.target.key());
            let items = self.jobs.check_runs(&rec.delivery_id).await?;
            let by_id = items.iter().find(|c| c.check_run_id == Some(check_run_id) && c.id.starts_with(&prefix));
            if let Some(run) = by_id.and_then(|c| c.request.external_id.split_once(':')?.0.parse::<u64>().ok()) {
                found = Some((rec.target.clone(), run));
                break;
            }
            let named = name.len() > 5 && name[5..].to_ascii_lowercase().starts_with(&format!("{}/", rec.target.key()));
            if let (Some(run), true) = (from_external_id, named) {
                let jobs = self.jobs.jobs(&rec.delivery_id).await?;
                if jobs.iter().any(|j| j.key.repo == rec.target && j.key.run_id == run) {
                    found = Some((rec.target.clone(), run));
                    break;
                }
            }
        }
        let Some((repo, run_id)) = found else {
            report.ignored = Some(format!(
                "check run {check_run_id} ({name:?}, external_id {external_id:?}) is not a tracked L3/L4 job of \
                 commit {sha} in the relay's records"
            ));
            return Ok(report);
        };
        report.runs.push(self.rerun(Rerun::FailedJobs, repo, run_id).await?);
        Ok(report)
    }

    async fn check_suite_rerequested(&self, msg: &UpstreamV1, sha: &HeadSha) -> Result<UpstreamReport, UpstreamError> {
        let mut report = UpstreamReport::default();
        let recs = self.tracked_records(sha).await?;
        let mut runs = BTreeSet::new();
        for rec in recs.iter().filter(|r| r.meta.level >= Level::L3) {
            let items: BTreeSet<String> =
                self.jobs.check_runs(&rec.delivery_id).await?.into_iter().map(|c| c.id).collect();
            for job in self.jobs.jobs(&rec.delivery_id).await? {
                if job.key.repo == rec.target && items.contains(&CheckRunItem::id_for(&job.key)) {
                    runs.insert((job.key.repo.clone(), job.key.run_id));
                }
            }
        }
        if runs.is_empty() {
            report.ignored = Some(format!("no tracked L3/L4 run with a check run on commit {sha}"));
        }
        for (repo, run_id) in runs {
            let marker = format!("rerun/{}/{}/{run_id}", msg.delivery_id, repo.key());
            if self.state.get(&marker).await?.is_some() {
                continue; // this suite re-run already reached it (message received again)
            }
            let action = self.rerun(Rerun::Whole, repo, run_id).await?;
            self.state.put_expiring(&marker, &self.clock.now_ms().to_string(), RECORD_TTL).await?;
            report.runs.push(action);
        }
        Ok(report)
    }

    async fn rerun(&self, kind: Rerun, repo: RepoFullName, run_id: u64) -> Result<RunAction, UpstreamError> {
        let runs = self.runs.as_ref().ok_or(UpstreamError::NoRunsClient)?;
        match kind {
            Rerun::FailedJobs => settle(runs.rerun_failed_jobs(&repo, run_id).await, repo, run_id, "rerun-failed-jobs"),
            Rerun::Whole => settle(runs.rerun(&repo, run_id).await, repo, run_id, "rerun"),
        }
    }
}

/// `item` (a check run in progress) completed as `cancelled` because the
/// relay stopped following its job for `reason` (superseded, closed).
pub fn untracked_item(mut item: CheckRunItem, reason: &str, now_ms: i64) -> CheckRunItem {
    let r = &mut item.request;
    r.status = CheckStatus::Completed;
    r.conclusion = Some("cancelled".into());
    r.completed_at =
        chrono::DateTime::from_timestamp_millis(now_ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    r.output.title =
        crate::checks::truncate_utf8(&format!("{}: not tracked any more", r.name), crate::checks::MAX_OUTPUT_BYTES)
            .to_owned();
    r.output.summary =
        format!("crcr stopped following this downstream job: {reason}. Results of this commit are no longer current.");
    item.updated_at_ms = now_ms;
    item
}

/// GitHub's answer to a re-run / cancel: taken (or nothing to do), refused
/// for good (logged, reported), or try again later (`Err`).
fn settle(
    answer: Result<RunRequest, GitHubError>,
    repo: RepoFullName,
    run_id: u64,
    what: &'static str,
) -> Result<RunAction, UpstreamError> {
    let result = match &answer {
        Ok(RunRequest::Accepted) => "accepted",
        Ok(RunRequest::AlreadyRunning) => "already_running",
        Ok(RunRequest::AlreadyCompleted) => "already_completed",
        Err(GitHubError::Permanent { .. }) => "refused",
        Err(_) => "failed",
    };
    ::metrics::counter!(crate::metrics::RUN_REQUESTS, "kind" => what, "result" => result).increment(1);
    match answer {
        Ok(result) => {
            tracing::info!(%repo, run_id, what, ?result, "downstream run request");
            Ok(RunAction { repo, run_id, result: Some(result), error: None })
        }
        Err(e @ GitHubError::Permanent { .. }) => {
            tracing::error!(%repo, run_id, what, error = %e, "GitHub refused a downstream run request");
            Ok(RunAction { repo, run_id, result: None, error: Some(e.to_string()) })
        }
        Err(error) => Err(UpstreamError::GitHub { repo, run_id, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELED: &str = include_str!("../../../fixtures/webhooks/pull_request.labeled.json");
    const SYNC: &str = include_str!("../../../fixtures/webhooks/pull_request.synchronize.json");
    const CLOSED: &str = include_str!("../../../fixtures/webhooks/pull_request.closed.json");
    const RUN: &str = include_str!("../../../fixtures/webhooks/check_run.rerequested.json");
    const SUITE: &str = include_str!("../../../fixtures/webhooks/check_suite.rerequested.json");

    fn parse(event: &str, action: &str, body: &str) -> Result<Option<UpstreamEvent>, UpstreamPayloadError> {
        parse_event(event, Some(action), &serde_json::from_str(body).unwrap())
    }

    #[test]
    fn real_payloads_give_their_fields() {
        let sha = HeadSha::parse("ec26c3e57ca3a959ca5aad62de7213c562f8c821").unwrap();
        assert_eq!(
            parse("pull_request", "labeled", LABELED).unwrap(),
            Some(UpstreamEvent::Labeled { pr_number: 2, head_sha: sha.clone(), label: "bug".into() })
        );
        assert_eq!(
            parse("pull_request", "synchronize", SYNC).unwrap(),
            Some(UpstreamEvent::Synchronize {
                pr_number: 2,
                before: HeadSha::parse("f95f852bd8fca8fcc58a9a2d6c842781e32a215e").unwrap(),
                after: sha.clone()
            })
        );
        assert_eq!(
            parse("pull_request", "closed", CLOSED).unwrap(),
            Some(UpstreamEvent::Closed { pr_number: 2, head_sha: sha.clone(), merged: false })
        );
        assert_eq!(
            parse("check_run", "rerequested", RUN).unwrap(),
            Some(UpstreamEvent::CheckRunRerequested {
                check_run_id: 4,
                name: "randscape".into(),
                external_id: String::new(),
                head_sha: HeadSha::parse("d6fde92930d4715a2b49857d24b940956b26d2d3").unwrap()
            })
        );
        assert_eq!(
            parse("check_suite", "rerequested", SUITE).unwrap(),
            Some(UpstreamEvent::CheckSuiteRerequested { check_suite_id: 118578147, head_sha: sha.clone() })
        );
        assert_eq!(parse("pull_request", "opened", LABELED).unwrap(), None);
        assert_eq!(parse("check_run", "completed", RUN).unwrap(), None);
    }

    /// Read from the text, an event is what the whole tree gives: on the
    /// real payloads, and on texts the quick read must hand to the tree (a
    /// field given twice, `pull_request` or `head` not an object, `null`s).
    #[test]
    fn read_from_text_is_what_the_tree_gives() {
        let mut cases: Vec<(&str, &str, String)> = vec![
            ("pull_request", "labeled", LABELED.into()),
            ("pull_request", "synchronize", SYNC.into()),
            ("pull_request", "closed", CLOSED.into()),
            ("check_run", "rerequested", RUN.into()),
            ("check_suite", "rerequested", SUITE.into()),
            ("pull_request", "opened", SYNC.into()),
        ];
        let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        let other = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";
        for text in [
            format!(r#"{{"number": 1, "before": "{other}", "after": "{sha}", "number": 2}}"#),
            format!(
                r#"{{"number": 3, "pull_request": {{"head": {{"sha": "{other}", "sha": "{sha}"}}, "merged": true}}}}"#
            ),
            format!(r#"{{"number": 4, "pull_request": {{"head": "{sha}"}}}}"#),
            format!(r#"{{"number": 5, "pull_request": "{sha}", "label": {{"name": "x"}}}}"#),
            r#"{"number": null, "pull_request": {"head": null, "merged": null}}"#.to_owned(),
            format!(r#"{{"number": 7, "pull_request": {{"head": {{"sha": "{sha}"}}, "merged": true}}}}"#),
            format!(
                r#"{{"number": 6, "pull_request": {{"head": {{"sha": "{sha}"}}, "merged": "yes"}}, "label": {{"name": "ciflow/crcr/cuda"}}}}"#
            ),
            format!(
                r#"{{"check_run": {{"id": 9, "name": "crcr/a", "head_sha": "{sha}"}}, "check_run": {{"id": 10, "name": "crcr/b", "head_sha": "{sha}"}}}}"#
            ),
        ] {
            for (event, action) in [
                ("pull_request", "labeled"),
                ("pull_request", "synchronize"),
                ("pull_request", "closed"),
                ("check_run", "rerequested"),
            ] {
                cases.push((event, action, text.clone()));
            }
        }
        for (event, action, text) in &cases {
            let tree = parse_event(event, Some(action), &serde_json::from_str(text).unwrap());
            assert_eq!(parse_event_text(event, Some(action), text).unwrap(), tree, "{event}.{action} {text}");
        }
        assert!(parse_event_text("pull_request", Some("closed"), "{\"number\": ").is_err());
    }

    #[test]
    fn a_missing_or_bad_field_is_named() {
        let mut v: Value = serde_json::from_str(SYNC).unwrap();
        v["before"] = Value::String("not-a-sha".into());
        let e = parse_event("pull_request", Some("synchronize"), &v).unwrap_err();
        assert_eq!(e.to_string(), "pull_request.synchronize payload has no valid /before");
        let mut v: Value = serde_json::from_str(LABELED).unwrap();
        v.as_object_mut().unwrap().remove("label");
        assert_eq!(parse_event("pull_request", Some("labeled"), &v).unwrap_err().pointer, "/label/name");
    }

    #[test]
    fn tracking_orders_by_when_ingest_accepted_the_dispatched_webhook() {
        let d = |s: &str| DeliveryId::parse(s).unwrap();
        let t = Tracking { before_ms: 1_000, by_delivery: d("closed"), reason: "pull request #2 closed".into() };
        let rec = |delivery: &str, received: Option<i64>, created: i64| DispatchRecord {
            delivery_id: d(delivery),
            target: RepoFullName::parse("org/a").unwrap(),
            status: crate::ports::DispatchStatus::Dispatched,
            attempts: 1,
            last_error: None,
            lease_until_ms: 0,
            created_at_ms: created,
            updated_at_ms: created,
            dispatched_at_ms: Some(created),
            payload_trimmed: false,
            meta: crate::ports::DispatchMeta {
                event: "pull_request".into(),
                action: Some("opened".into()),
                head_sha: Some(HeadSha::parse(&"a".repeat(40)).unwrap()),
                pr_number: Some(2),
                level: Level::L4,
                check_run: true,
                device: None,
                received_at_ms: received,
                hook_id: None,
            },
        };
        // Accepted before the close, dispatched long after it (a backlog): untracked.
        assert!(t.untracks(&rec("opened", Some(500), 5_000)));
        // Accepted after the close (a reopen): tracked.
        assert!(!t.untracks(&rec("reopened", Some(1_500), 1_600)));
        // The closing delivery's own dispatches stay tracked.
        assert!(!t.untracks(&rec("closed", Some(900), 950)));
        // Records without the ingest time: the claim time decides.
        assert!(t.untracks(&rec("old", None, 999)));
        assert!(!t.untracks(&rec("old", None, 1_000)));
    }

    #[test]
    fn labels_name_a_device() {
        assert_eq!(label_device("ciflow/crcr/NPU").as_deref(), Some("npu"));
        assert_eq!(label_device("CIFlow/OOT/gpu").as_deref(), Some("gpu"));
        assert_eq!(label_device("ciflow/crcr/"), None);
        assert_eq!(label_device("ciflow/trunk"), None);
        assert_eq!(label_device("bug"), None);
        assert_eq!(label_device("ciflow/crc"), None);
    }
}
