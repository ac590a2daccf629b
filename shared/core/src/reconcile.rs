//! The reconciler: applies accepted callbacks from the reconcile queue to
//! the job lifecycle (conditional writes + HUD outbox), syncs the outbox to
//! HUD, and sweeps:
//! - jobs left IN_PROGRESS past the timeout (default 6 h) → COMPLETED
//!   `timed_out`, with a HUD record;
//! - L2+ targets GitHub accepted a dispatch for but that never called back
//!   within the deadline (default 1 h) → reported as "dispatched but never
//!   started" (`repository_dispatch` gives no run id, and only fires
//!   workflows on the default branch, so a silent downstream is the usual
//!   failure).
//!
//! `nightly` / `periodic` callbacks name an upstream commit SHA: the
//! reconciler checks it exists upstream (cached; on GitHub errors it accepts
//! and logs).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::callback::{self, hud_body, CallbackKind, Reconciled};
use crate::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crate::hud::{sync_outbox, timed_out_callback_body, Hud, HudRetryPolicy, SyncReport};
use crate::lifecycle::{seconds_between, JobRecord, JobState, JobStore, OutboxItem, Violation};
use crate::message::QueueMessage;
use crate::ports::{
    Clock, CommitLookup, DispatchRecord, DispatchStatus, DispatchStore, QueueError, QueueSettle, QueueSide,
    ReceivedMessage, StoreError,
};

/// Tunables, with their defaults.
#[derive(Clone, Debug)]
pub struct ReconcilerSettings {
    /// IN_PROGRESS longer than this → COMPLETED `timed_out` (default 6 h, CONTRACTS.md).
    pub job_timeout: Duration,
    /// Receives before a reconcile message goes to its DLQ (default 5).
    pub max_receive_count: u32,
    /// Outbox items per HUD sync pass (default 100).
    pub hud_batch: usize,
    /// Backoff and limits of records HUD fails ([`HudRetryPolicy`]).
    pub hud_retry: HudRetryPolicy,
    /// An L2+ target dispatched this long ago with no callback is "never
    /// started" (default 1 h).
    pub never_started_after: Duration,
    /// How far back past that deadline the sweep looks (default 24 h).
    pub never_started_lookback: Duration,
    /// On `pull_request.closed`, cancel the L3+ downstream runs of the PR's
    /// head still in progress (`CRCR_CANCEL_ON_CLOSE`, default false).
    pub cancel_on_close: bool,
    /// How long a sweep holds the outbox lease ([`OUTBOX_LEASE_KEY`];
    /// `CRCR_OUTBOX_LEASE_SECS`, default 60 s): at least as long as a sweep
    /// can run (on Lambda: the function timeout, which infra passes), so two
    /// never overlap; a sweep that died blocks the next ones at most this
    /// long (`crcr serve` sweeps one at a time anyway: the default only
    /// bounds the wait after a crash).
    pub outbox_lease: Duration,
    /// How fast check runs are written to the upstream repository
    /// ([`crate::checks::CheckRunPace`]: GitHub's secondary limits).
    pub check_run_pace: crate::checks::CheckRunPace,
    /// The target breakers' settings: the sweep opens a breaker after
    /// [`crate::breaker::BreakerSettings::never_started_to_open`]
    /// never-started dispatches in a row.
    pub breaker: crate::breaker::BreakerSettings,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self {
            job_timeout: Duration::from_secs(6 * 3600),
            max_receive_count: 5,
            hud_batch: 100,
            hud_retry: HudRetryPolicy::default(),
            never_started_after: Duration::from_secs(3600),
            never_started_lookback: Duration::from_secs(24 * 3600),
            cancel_on_close: false,
            outbox_lease: Duration::from_secs(60),
            check_run_pace: Default::default(),
            breaker: Default::default(),
        }
    }
}

/// Shortest wait before an upstream event whose GitHub call failed
/// transiently is received again (60 s), and the longest (15 min, SQS's
/// largest message delay): rate limits and outages last minutes, not the
/// seconds a store hiccup does.
const GITHUB_RETRY_MIN: Duration = Duration::from_secs(60);
const GITHUB_RETRY_MAX: Duration = Duration::from_secs(900);

/// The [`crate::ports::StateStore`] lease that lets one sweep at a time send
/// the HUD and check-run outboxes.
pub const OUTBOX_LEASE_KEY: &str = "sweep/outboxes";

/// Dispatched records the never-started sweep reads per pass.
const NEVER_STARTED_SCAN_LIMIT: usize = 1000;

/// When `rec` is waiting for a callback: GitHub accepted the dispatch
/// (status dispatched), the target is L2+ (L1 repositories send none), and
/// `jobs` (the delivery's jobs) holds no job of the target. Returns when it
/// was dispatched (ms since epoch). The never-started sweep and `crcr trace`
/// both decide with this.
pub fn awaiting_callback(rec: &DispatchRecord, jobs: &[JobRecord]) -> Option<i64> {
    let waiting = rec.status == DispatchStatus::Dispatched
        && rec.meta.level >= Level::L2
        && !jobs.iter().any(|j| j.key.repo == rec.target);
    waiting.then(|| rec.dispatched_at_ms.unwrap_or(rec.updated_at_ms))
}

/// Per target, the dispatches a never-started scan looked at: (dispatched
/// at, ms since epoch; never started).
type DispatchesByTarget = std::collections::HashMap<RepoFullName, Vec<(i64, bool)>>;

/// One L2+ target that GitHub accepted a dispatch for and that never called back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeverStarted {
    pub delivery_id: DeliveryId,
    pub target: RepoFullName,
    pub level: Level,
    /// When GitHub answered 204 (ms since epoch).
    pub dispatched_at_ms: i64,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SweepReport {
    /// IN_PROGRESS jobs closed as `timed_out`.
    pub timed_out: usize,
    /// Dispatched L2+ targets with no callback after the deadline, within the lookback.
    pub never_started: Vec<NeverStarted>,
    /// Why the never-started check could not run this time (the rest of the sweep did).
    pub never_started_error: Option<String>,
    pub hud: SyncReport,
    /// Upstream check runs synced (issue 4).
    pub check_runs: crate::checks::CheckSyncReport,
    /// Why the check-run sync could not run this time (HUD sync did).
    pub check_runs_error: Option<String>,
    /// Another sweep held the outbox lease: this one sent nothing to HUD or
    /// GitHub (timeouts and the never-started check still ran).
    pub outboxes_skipped: bool,
    /// Shutdown came while it was sending ([`Reconciler::sweep_until`]): the
    /// rest waits for the next start.
    pub interrupted: bool,
}

/// Processes one queue message; implemented by the dispatcher and the reconciler.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Handles `msg` and settles it on `queue` (delete, requeue or dead-letter).
    async fn handle(&self, queue: &dyn QueueSettle, msg: &ReceivedMessage) -> Result<(), QueueError>;
}

/// The reconciler and its ports.
pub struct Reconciler {
    pub dispatches: Arc<dyn DispatchStore>,
    pub jobs: Arc<dyn JobStore>,
    pub hud: Arc<dyn Hud>,
    pub clock: Arc<dyn Clock>,
    pub settings: ReconcilerSettings,
    /// The upstream repository (`nightly` / `periodic` SHAs are its commits).
    pub upstream: RepoFullName,
    /// Commit existence, cached ([`crate::commits::CachedCommitLookup`]).
    pub commits: Arc<dyn CommitLookup>,
    /// Upstream check runs of L3/L4 jobs ([`crate::checks`]); `None`: the
    /// items wait in the check-run outbox.
    pub checks: Option<Arc<dyn crate::checks::CheckRuns>>,
    /// Re-runs and cancels downstream runs ([`crate::upstream`]); `None`:
    /// re-run requests are received again until one is configured, then
    /// dead-lettered with the reason.
    pub runs: Option<Arc<dyn crate::runs::WorkflowRuns>>,
    /// Per-commit records ("check run wanted", tracking ended, re-run
    /// markers; [`crate::upstream`]): SQLite or DynamoDB `kv`.
    pub state: Arc<dyn crate::ports::StateStore>,
}

/// Result of processing one reconcile message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per message, moved once; boxing buys nothing")]
pub enum ReconcileOutcome {
    Done(Reconciled),
    /// An upstream event was applied ([`crate::upstream`]).
    Upstream(crate::upstream::UpstreamReport),
    /// The store was unavailable: receive it again.
    Retry(String),
    /// GitHub was unavailable or rate-limited an upstream event's call:
    /// receive it again after at least `after` (GitHub's own hint when it
    /// gave one, else 60 s; at most 15 min).
    RetryAfter {
        reason: String,
        after: Duration,
    },
    /// An upstream event's call was not made: GitHub's primary limit of
    /// its identity is kept for higher priorities until `after` (the
    /// window's reset, [`crate::rate_limit`]). Received again then, this
    /// receive not counted towards the DLQ (postponed, at most 15 min at a
    /// time).
    Postpone {
        reason: String,
        after: Duration,
    },
    /// Never processable.
    Poison(String),
}

impl Reconciler {
    pub async fn process(&self, body: &str) -> ReconcileOutcome {
        let msg = match QueueMessage::decode(body) {
            Ok(QueueMessage::CallbackV1(m)) => m,
            Ok(QueueMessage::UpstreamV1(u)) => {
                let span = tracing::info_span!("upstream", delivery_id = %u.delivery_id, event = u.event.name(), head_sha = %u.event.head_sha());
                let event = u.event.name();
                return match tracing::Instrument::instrument(self.apply_upstream(&u), span.clone()).await {
                    Ok(report) => {
                        let outcome = if report.ignored.is_some() { "ignored" } else { "applied" };
                        if let Some(why) = &report.ignored {
                            span.in_scope(|| tracing::info!(%why, "upstream event: nothing to do"));
                        }
                        ::metrics::counter!(crate::metrics::UPSTREAM_EVENTS, "event" => event, "outcome" => outcome)
                            .increment(1);
                        ReconcileOutcome::Upstream(report)
                    }
                    Err(e) => {
                        ::metrics::counter!(crate::metrics::UPSTREAM_EVENTS, "event" => event, "outcome" => "retry")
                            .increment(1);
                        span.in_scope(|| tracing::warn!(error = %e, "upstream event: will be received again"));
                        match &e {
                            crate::upstream::UpstreamError::GitHub {
                                error: crate::ports::GitHubError::Deferred { retry_after, .. },
                                ..
                            } => ReconcileOutcome::Postpone { reason: e.to_string(), after: *retry_after },
                            crate::upstream::UpstreamError::GitHub { error, .. } => {
                                let hint = error.retry_after();
                                let after = hint.unwrap_or(GITHUB_RETRY_MIN).clamp(GITHUB_RETRY_MIN, GITHUB_RETRY_MAX);
                                ReconcileOutcome::RetryAfter { reason: e.to_string(), after }
                            }
                            _ => ReconcileOutcome::Retry(e.to_string()),
                        }
                    }
                };
            }
            Ok(QueueMessage::DispatchV1(_)) => {
                return ReconcileOutcome::Poison("a dispatch_v1 message does not belong on the reconcile queue".into())
            }
            Err(e) => return ReconcileOutcome::Poison(e.to_string()),
        };
        // Accepted already: HUD's request-time field rules are not applied again.
        let (cb, value) = match callback::parse_accepted(msg.body.get().as_bytes()) {
            Ok(x) => x,
            Err(e) => return ReconcileOutcome::Poison(e.to_string()),
        };
        let span = tracing::info_span!("callback", delivery_id = %cb.delivery_id, repo = %msg.repo, run_id = cb.run_id,
            run_attempt = cb.run_attempt, job = %cb.job_name, status = cb.status.as_str());
        let _g = span.enter();
        if cb.kind == CallbackKind::Scheduled {
            match self.commits.commit_exists(&self.upstream, cb.delivery_id.as_str()).await {
                Ok(true) => {}
                Ok(false) => {
                    let reason = format!("commit {} does not exist on {}", cb.delivery_id, self.upstream);
                    let violation = Violation {
                        delivery_id: cb.delivery_id.clone(),
                        repo: msg.repo.clone(),
                        reason: format!(
                            "{reason} (run {} attempt {} job {:?})",
                            cb.run_id, cb.run_attempt, cb.job_name
                        ),
                        at_ms: msg.received_at_ms,
                    };
                    if let Err(e) = self.jobs.record_violation(&violation).await {
                        return ReconcileOutcome::Retry(e.to_string());
                    }
                    ::metrics::counter!(crate::metrics::CALLBACK_REJECTIONS, "reason" => "unknown_commit").increment(1);
                    tracing::warn!(%reason, metric = "callback_rejections", "scheduled callback for an unknown commit; nothing recorded");
                    return ReconcileOutcome::Done(Reconciled::Violation(reason));
                }
                Err(e) => tracing::warn!(error = %e, "could not check the commit on GitHub; accepting the callback"),
            }
        }
        let target = if cb.kind == CallbackKind::Dispatched && msg.level >= Level::L3 {
            match self.check_run_target(&cb.delivery_id, &msg.repo, msg.level).await {
                Ok(t) => t,
                Err(e) => return ReconcileOutcome::Retry(e.to_string()),
            }
        } else {
            None
        };
        let without_check_run = cb.kind == CallbackKind::Dispatched && msg.level == Level::L3 && target.is_none();
        let with_check_run = target.is_some();
        let with_check;
        let jobs: &dyn crate::lifecycle::JobLifecycle = match target {
            Some(target) => {
                with_check = crate::checks::WithCheckRun { inner: self.jobs.as_ref(), target };
                &with_check
            }
            None => self.jobs.as_ref(),
        };
        match callback::reconcile(&cb, &value, &msg.repo, msg.level, msg.received_at_ms, self.dispatches.as_ref(), jobs)
            .await
        {
            Ok(r) => {
                if let Reconciled::Applied(job) = &r {
                    // A `labeled` / `synchronize` / `closed` applied between
                    // the check above and the write did not see this job:
                    // look again now it is stored (each of them writes its
                    // per-commit record before it reads the jobs). The job
                    // is recorded whatever happens here: a failure is logged,
                    // not retried (a retry would be a repeated callback).
                    let late = if without_check_run {
                        self.late_label_check_run(job).await
                    } else if with_check_run {
                        self.untracked_meanwhile(job).await
                    } else {
                        Ok(())
                    };
                    if let Err(e) = late {
                        tracing::error!(error = %e, "could not look again at the commit's check-run records; the job is recorded");
                    }
                }
                match &r {
                    Reconciled::Applied(job) => {
                        tracing::info!(queue_time_s = ?job.queue_time_s, execution_time_s = ?job.execution_time_s, "job state recorded")
                    }
                    Reconciled::Violation(reason) => {
                        ::metrics::counter!(crate::metrics::CALLBACK_REJECTIONS, "reason" => "lifecycle").increment(1);
                        tracing::warn!(%reason, metric = "callback_rejections", "lifecycle violation; nothing changed")
                    }
                }
                ReconcileOutcome::Done(r)
            }
            Err(e) => ReconcileOutcome::Retry(e.to_string()),
        }
    }

    /// Where the check run of a job of `repo` (at `level`) for `delivery`
    /// goes, when it gets one: L4 always; L3 when the dispatch recorded the
    /// device label ([`crate::checks::wants_check_run`]) or `labeled` later
    /// recorded it for the commit ([`crate::upstream::wanted`]); never for
    /// a dispatch no longer tracked (superseded head, closed PR). The commit
    /// and pull request come from the dispatch record. `None`: no check run
    /// (or no dispatch with a head SHA, which the lifecycle refuses anyway).
    async fn check_run_target(
        &self,
        delivery: &DeliveryId,
        repo: &RepoFullName,
        level: Level,
    ) -> Result<Option<crate::checks::CheckRunTarget>, StoreError> {
        let Some(rec) = self.dispatches.records(delivery).await?.into_iter().find(|r| &r.target == repo) else {
            return Ok(None);
        };
        let Some(head_sha) = rec.meta.head_sha.clone() else { return Ok(None) };
        if let Some(t) = crate::upstream::tracking(self.state.as_ref(), &head_sha).await? {
            if t.untracks(&rec) {
                return Ok(None);
            }
        }
        if !(level == Level::L4 || rec.meta.check_run || self.wanted_later(&rec, level).await?) {
            return Ok(None);
        }
        Ok(Some(crate::checks::CheckRunTarget {
            upstream: self.upstream.clone(),
            head_sha,
            pr_number: rec.meta.pr_number,
        }))
    }

    /// The check run of an L3 `job` stored without one, when `labeled`
    /// recorded its device for the commit meanwhile ([`CheckRunOutbox::advance_check_run`](crate::lifecycle::CheckRunOutbox::advance_check_run)).
    async fn late_label_check_run(&self, job: &JobRecord) -> Result<(), StoreError> {
        if let Some(target) = self.check_run_target(&job.key.delivery_id, &job.key.repo, job.level).await? {
            self.jobs.advance_check_run(&target.item(job)).await?;
        }
        Ok(())
    }

    /// Completes the in-progress check run of `job` as `cancelled` when its
    /// dispatch stopped being tracked (superseded, closed) while the job's
    /// transition was written ([`crate::upstream::untracked_item`]).
    async fn untracked_meanwhile(&self, job: &JobRecord) -> Result<(), StoreError> {
        let recs = self.dispatches.records(&job.key.delivery_id).await?;
        let Some(rec) = recs.iter().find(|r| r.target == job.key.repo) else { return Ok(()) };
        let Some(sha) = &rec.meta.head_sha else { return Ok(()) };
        let Some(t) = crate::upstream::tracking(self.state.as_ref(), sha).await? else { return Ok(()) };
        if !t.untracks(rec) {
            return Ok(());
        }
        let id = crate::lifecycle::CheckRunItem::id_for(&job.key);
        let items = self.jobs.check_runs(&job.key.delivery_id).await?;
        if let Some(item) =
            items.into_iter().find(|c| c.id == id && c.request.status == crate::checks::CheckStatus::InProgress)
        {
            self.jobs.advance_check_run(&crate::upstream::untracked_item(item, &t.reason, self.clock.now_ms())).await?;
        }
        Ok(())
    }

    /// Whether `labeled` recorded `ciflow/crcr/<device>` for the commit of
    /// an L3 dispatch `rec` after it was dispatched.
    async fn wanted_later(&self, rec: &DispatchRecord, level: Level) -> Result<bool, StoreError> {
        match (level, &rec.meta.device, &rec.meta.head_sha) {
            (Level::L3, Some(device), Some(sha)) => crate::upstream::wanted(self.state.as_ref(), sha, device).await,
            _ => Ok(false),
        }
    }

    /// Dispatched L2+ targets with no callback (no job of theirs for that
    /// delivery), still tracked (not a superseded head or closed PR; not the
    /// `closed` delivery itself), whose dispatch is between
    /// `never_started_after + never_started_lookback` and
    /// `never_started_after` old, oldest first.
    pub async fn never_started(&self) -> Result<Vec<NeverStarted>, StoreError> {
        Ok(self.never_started_scan().await?.0)
    }

    /// [`Reconciler::never_started`], and per target the dispatches it
    /// looked at: (dispatched at, never started), for the breakers.
    async fn never_started_scan(&self) -> Result<(Vec<NeverStarted>, DispatchesByTarget), StoreError> {
        let mut by_target = DispatchesByTarget::new();
        let now = self.clock.now_ms();
        let to = now - self.settings.never_started_after.as_millis() as i64;
        let from = to - self.settings.never_started_lookback.as_millis() as i64;
        let mut out = Vec::new();
        let mut jobs_of: std::collections::HashMap<DeliveryId, Vec<JobRecord>> = Default::default();
        let mut tracking_of: std::collections::HashMap<HeadSha, Option<crate::upstream::Tracking>> = Default::default();
        for rec in self.dispatches.dispatched_between(from, to, NEVER_STARTED_SCAN_LIMIT).await? {
            if rec.meta.level < Level::L2 {
                continue; // no job lookup for L1 targets
            }
            if rec.meta.event == "pull_request" && rec.meta.action.as_deref() == Some("closed") {
                continue; // downstreams run on `closed` only for post-merge work, if at all: not owed
            }
            if !jobs_of.contains_key(&rec.delivery_id) {
                jobs_of.insert(rec.delivery_id.clone(), self.jobs.jobs(&rec.delivery_id).await?);
            }
            let Some(dispatched_at_ms) = awaiting_callback(&rec, &jobs_of[&rec.delivery_id]) else {
                let at = rec.dispatched_at_ms.unwrap_or(rec.updated_at_ms);
                by_target.entry(rec.target.clone()).or_default().push((at, false));
                continue;
            };
            if let Some(sha) = &rec.meta.head_sha {
                if !tracking_of.contains_key(sha) {
                    tracking_of.insert(sha.clone(), crate::upstream::tracking(self.state.as_ref(), sha).await?);
                }
                if tracking_of[sha].as_ref().is_some_and(|t| t.untracks(&rec)) {
                    continue; // superseded head or closed PR: not waited for
                }
            }
            by_target.entry(rec.target.clone()).or_default().push((dispatched_at_ms, true));
            out.push(NeverStarted {
                dispatched_at_ms,
                delivery_id: rec.delivery_id,
                target: rec.target,
                level: rec.meta.level,
            });
        }
        Ok((out, by_target))
    }

    /// Opens the breaker of each target whose newest dispatches since its
    /// breaker last closed never started, as many in a row as
    /// [`crate::breaker::BreakerSettings::never_started_to_open`]
    /// ([`crate::breaker::Breakers::never_started`]). A breaker that cannot
    /// be read or written is logged; the sweep goes on.
    async fn open_breakers_of_silent_targets(&self, by_target: DispatchesByTarget) {
        let settings = self.settings.breaker;
        if settings.never_started_to_open == 0 || settings.failures_to_open == 0 {
            return;
        }
        let breakers = crate::breaker::Breakers::new(self.state.clone(), settings, self.clock.clone());
        for (target, mut dispatches) in by_target {
            if dispatches.iter().filter(|(_, silent)| *silent).count() < settings.never_started_to_open as usize {
                continue;
            }
            let result = async {
                let since = breakers.get(&target).await?.closed_at_ms.unwrap_or(i64::MIN);
                dispatches.retain(|(at, _)| *at > since);
                dispatches.sort_by_key(|d| std::cmp::Reverse(d.0));
                let in_a_row = dispatches.iter().take_while(|(_, silent)| *silent).count() as u32;
                breakers.never_started(&target, in_a_row, self.settings.never_started_after).await
            };
            if let Err(e) = result.await {
                tracing::warn!(target_repo = %target, error = %e, "could not update the target's breaker");
            }
        }
    }

    /// One pass of the scheduled work: time out stale IN_PROGRESS jobs, look
    /// for never-started dispatches, then, under the outbox lease
    /// ([`OUTBOX_LEASE_KEY`]), sync the HUD and check-run outboxes. A failing
    /// never-started check is reported in the result and does not stop the
    /// rest; a failing job store stops the sweep (the next one retries).
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.sweep_until(std::future::pending()).await
    }

    /// [`Reconciler::sweep`] that gives up sending as soon as `stop`
    /// resolves (shutdown): the HUD and check-run requests in flight are
    /// dropped, their records stay pending for the next start, and the
    /// outbox lease is given back, so a restart sends at once
    /// ([`SweepReport::interrupted`]). The store-only steps before it run to
    /// their end (they are quick).
    pub async fn sweep_until(&self, stop: impl std::future::Future<Output = ()>) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let now = self.clock.now_ms();
        let cutoff = now - self.settings.job_timeout.as_millis() as i64;
        for mut job in self.jobs.in_progress_before(cutoff, 500).await? {
            job.state = JobState::Completed;
            job.completed_at_ms = Some(now);
            job.conclusion = Some("timed_out".into());
            job.execution_time_s = seconds_between(job.in_progress_at_ms, job.completed_at_ms);
            job.updated_at_ms = now;
            // The job's last accepted callback body is its `in_progress`
            // record's, written in the same transaction as that state.
            let outbox_items = self.jobs.outbox(&job.key.delivery_id).await?;
            let started = OutboxItem::id_for(&job.key, JobState::InProgress);
            let last_body = outbox_items
                .iter()
                .find(|o| o.id == started)
                .and_then(|o| o.body.pointer("/untrusted/callback_payload"));
            if last_body.is_none() {
                tracing::warn!(delivery_id = %job.key.delivery_id, repo = %job.key.repo, job = %job.key.job_name,
                    "no in_progress record for a timed-out job; its HUD record is built from the job");
            }
            let body = hud_body(&job, &timed_out_callback_body(last_body, &job, now));
            let outbox = OutboxItem::pending(&job.key, JobState::Completed, body, now);
            let check = self
                .jobs
                .check_runs(&job.key.delivery_id)
                .await?
                .into_iter()
                .find(|c| {
                    // Only a check run still in progress: one closed as
                    // superseded stays closed.
                    c.id == crate::lifecycle::CheckRunItem::id_for(&job.key)
                        && c.request.status == crate::checks::CheckStatus::InProgress
                })
                .map(|mut c| {
                    let external_id = c.request.external_id.clone();
                    c.request = crate::checks::check_run_for(&job, &c.request.head_sha, None);
                    c.request.external_id = external_id;
                    c.updated_at_ms = now;
                    c
                });
            let moved = match &check {
                Some(c) => self.jobs.transition_with_check_run(Some(JobState::InProgress), &job, &outbox, c).await?,
                None => self.jobs.transition(Some(JobState::InProgress), &job, &outbox).await?,
            };
            if moved {
                tracing::warn!(delivery_id = %job.key.delivery_id, repo = %job.key.repo, job = %job.key.job_name, metric = "jobs_timed_out", "job timed out");
                report.timed_out += 1;
            }
        }
        match self.never_started_scan().await {
            Ok((list, by_target)) => {
                self.open_breakers_of_silent_targets(by_target).await;
                // Every sweep, 0 included, so the alarm clears.
                ::metrics::gauge!(crate::metrics::NEVER_STARTED_DISPATCHES).set(list.len() as f64);
                if !list.is_empty() {
                    let sample: Vec<String> =
                        list.iter().take(10).map(|n| format!("{} -> {}", n.delivery_id, n.target)).collect();
                    tracing::warn!(
                        count = list.len(),
                        ?sample,
                        after_s = self.settings.never_started_after.as_secs(),
                        metric = "never_started_dispatches",
                        "dispatched but never started: no callback from these targets; see crcr trace <delivery id>"
                    );
                }
                report.never_started = list;
            }
            Err(e) => {
                tracing::error!(error = %e, "never-started check failed; the rest of the sweep goes on");
                report.never_started_error = Some(e.to_string());
            }
        }
        // One sender at a time (two overlapping scheduled sweeps on AWS
        // would both create the same check run and both post to HUD).
        let holder = uuid::Uuid::new_v4().to_string();
        match self.state.try_lease(OUTBOX_LEASE_KEY, &holder, self.settings.outbox_lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("another sweep is sending the HUD and check-run outboxes; skipped this time");
                report.outboxes_skipped = true;
                return Ok(report);
            }
            // Without the kv store, sending twice beats not sending.
            Err(e) => tracing::warn!(error = %e, "outbox lease unavailable; sending without it"),
        }
        let mut synced = SweepReport::default();
        let sent = tokio::select! {
            sent = self.sync_outboxes(&mut synced) => sent,
            () = stop => {
                tracing::info!("shutting down: the sweep stops sending; unsent records stay pending");
                report.interrupted = true;
                Ok(())
            }
        };
        (report.hud, report.check_runs, report.check_runs_error) =
            (synced.hud, synced.check_runs, synced.check_runs_error);
        if let Err(e) = self.state.release_lease(OUTBOX_LEASE_KEY, &holder).await {
            tracing::warn!(error = %e, "could not release the outbox lease; it expires by itself");
        }
        sent?;
        Ok(report)
    }

    /// HUD sync, then check-run sync (under the outbox lease).
    async fn sync_outboxes(&self, report: &mut SweepReport) -> Result<(), StoreError> {
        report.hud = sync_outbox(
            self.jobs.as_ref(),
            self.hud.as_ref(),
            self.clock.as_ref(),
            &self.settings.hud_retry,
            self.settings.hud_batch,
        )
        .await?;
        if let Some(checks) = &self.checks {
            let synced = crate::checks::sync_check_runs(
                self.jobs.as_ref(),
                checks.as_ref(),
                self.clock.as_ref(),
                self.settings.hud_batch,
                self.state.as_ref(),
                &self.settings.check_run_pace,
            )
            .await;
            match synced {
                Ok(r) => report.check_runs = r,
                Err(e) => {
                    tracing::error!(error = %e, "check-run sync failed; the next sweep retries");
                    report.check_runs_error = Some(e.to_string());
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MessageHandler for Reconciler {
    async fn handle(&self, queue: &dyn QueueSettle, msg: &ReceivedMessage) -> Result<(), QueueError> {
        match self.process(&msg.body).await {
            ReconcileOutcome::Done(_) | ReconcileOutcome::Upstream(_) => {
                queue.delete(QueueSide::Source, &msg.receipt).await
            }
            ReconcileOutcome::Poison(reason) => {
                queue.dead_letter(msg, &reason).await?;
                ::metrics::counter!(crate::metrics::DLQ_SENDS, "queue" => "reconcile").increment(1);
                Ok(())
            }
            ReconcileOutcome::Retry(reason) | ReconcileOutcome::RetryAfter { reason, .. }
                if msg.receive_count >= self.settings.max_receive_count =>
            {
                queue
                    .dead_letter(msg, &format!("still failing after {} receives: {reason}", msg.receive_count))
                    .await?;
                ::metrics::counter!(crate::metrics::DLQ_SENDS, "queue" => "reconcile").increment(1);
                Ok(())
            }
            ReconcileOutcome::Retry(_) => {
                let delay = Duration::from_secs(1 << msg.receive_count.min(8));
                queue.change_visibility(QueueSide::Source, &msg.receipt, delay).await
            }
            ReconcileOutcome::RetryAfter { after, .. } => {
                let delay = after.max(Duration::from_secs(1 << msg.receive_count.min(8)));
                queue.change_visibility(QueueSide::Source, &msg.receipt, delay).await
            }
            ReconcileOutcome::Postpone { after, .. } => queue.postpone(msg, after.min(GITHUB_RETRY_MAX)).await,
        }
    }
}

#[async_trait]
impl MessageHandler for crate::dispatch::Dispatcher {
    async fn handle(&self, queue: &dyn QueueSettle, msg: &ReceivedMessage) -> Result<(), QueueError> {
        crate::dispatch::Dispatcher::handle(self, queue, msg).await.map(|_| ())
    }
}
