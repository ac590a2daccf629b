//! Downstream job lifecycle (CONTRACTS.md "Callback input"): per
//! (delivery id, repository, run_id, run_attempt, job_name) a job moves
//! DISPATCHED (the dispatch record) → IN_PROGRESS → COMPLETED, never
//! backwards. Each state change writes, in the same atomic write, a HUD
//! outbox item (CONTRACTS.md "HUD output"): the outbox is what HUD sync
//! sends, so no result is lost between the state change and HUD.
//!
//! A re-run (`run_attempt` + 1) is a new key and starts its own lifecycle.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{DeliveryId, Level, RepoFullName};
use crate::ports::StoreError;

/// Identity of one downstream job run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobKey {
    pub delivery_id: DeliveryId,
    pub repo: RepoFullName,
    pub run_id: u64,
    pub run_attempt: u32,
    pub job_name: String,
}

impl JobKey {
    /// Stable text form, used as a storage sort key:
    /// `<repo key>|<run_id>|<run_attempt>|<job_name>`.
    pub fn sort_key(&self) -> String {
        format!("{}|{}|{}|{}", self.repo.key(), self.run_id, self.run_attempt, self.job_name)
    }
}

/// Lifecycle state after DISPATCHED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    InProgress,
    Completed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::InProgress => "in_progress",
            JobState::Completed => "completed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in_progress" => Some(Self::InProgress),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

/// A job's stored state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub key: JobKey,
    pub state: JobState,
    pub level: Level,
    /// When the relay dispatched the event (ms since epoch), if it did
    /// (`nightly` / `periodic` jobs have no dispatch).
    pub dispatched_at_ms: Option<i64>,
    pub in_progress_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    /// GitHub check-run conclusion, when completed.
    pub conclusion: Option<String>,
    /// Seconds from DISPATCHED to IN_PROGRESS; `None` when a side is unknown.
    pub queue_time_s: Option<f64>,
    /// Seconds from IN_PROGRESS to COMPLETED; `None` when a side is unknown.
    pub execution_time_s: Option<f64>,
    pub workflow_name: Option<String>,
    pub url: Option<String>,
    pub updated_at_ms: i64,
}

/// HUD sync state of an outbox item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HudSync {
    /// Not yet accepted by HUD (never tried, or 5xx / timeout so far).
    Pending,
    /// HUD answered 2xx: never sent again.
    Sent,
    /// HUD answered 4xx: the record is bad; kept with HUD's answer.
    Rejected,
    /// Parked: HUD kept failing it (5xx or no answer) past the attempt or
    /// age limit ([`crate::hud::HudRetryPolicy`]); kept with HUD's last
    /// answer, never sent by the sweep again, only by `crcr hud retry`
    /// ([`HudOutbox::requeue_outbox`]). (A check-run item never takes it.)
    Failed,
}

impl HudSync {
    pub fn as_str(self) -> &'static str {
        match self {
            HudSync::Pending => "pending",
            HudSync::Sent => "sent",
            HudSync::Rejected => "rejected",
            HudSync::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "rejected" => Some(Self::Rejected),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One HUD record to deliver (`POST <HUD>/crcr/results`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// `<delivery id>|<job sort key>|<state>`: one item per state change.
    pub id: String,
    pub delivery_id: DeliveryId,
    /// The exact JSON body HUD receives.
    pub body: Value,
    pub sync: HudSync,
    pub attempts: u32,
    /// HUD's last answer or the transport error.
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// While pending: when the sweep may send it next (ms since epoch; the
    /// creation time at first, then the backoff after each failed attempt,
    /// [`crate::hud::HudRetryPolicy`]). Records due now go first, so a
    /// record HUD keeps refusing never delays the others.
    #[serde(default)]
    pub next_attempt_at_ms: i64,
}

impl OutboxItem {
    pub fn id_for(key: &JobKey, state: JobState) -> String {
        format!("{}|{}|{}", key.delivery_id, key.sort_key(), state.as_str())
    }

    /// A new, pending record of `key`'s move to `state` written at `at_ms`
    /// (created, last changed and due then), with HUD's `body`.
    pub fn pending(key: &JobKey, state: JobState, body: Value, at_ms: i64) -> Self {
        OutboxItem {
            id: Self::id_for(key, state),
            delivery_id: key.delivery_id.clone(),
            body,
            sync: HudSync::Pending,
            attempts: 0,
            last_error: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            next_attempt_at_ms: at_ms,
        }
    }

    /// The job this record belongs to: its id without the `|<state>` suffix
    /// (`<delivery id>|<job sort key>`, the same as [`CheckRunItem::id_for`]).
    pub fn job_id(&self) -> &str {
        self.id.rsplit_once('|').map_or(self.id.as_str(), |(job, _)| job)
    }

    /// The lifecycle state this record reports (the id's last segment);
    /// `None` for an id not written by [`OutboxItem::id_for`].
    pub fn state(&self) -> Option<JobState> {
        self.id.rsplit_once('|').and_then(|(_, s)| JobState::parse(s))
    }
}

/// One upstream check run to create, then keep up to date (issue 4; see
/// [`crate::checks`]): one item per job, written in the same atomic write
/// as the job's transition, synced by the sweep like the HUD outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRunItem {
    /// `<delivery id>|<job sort key>` ([`CheckRunItem::id_for`]).
    pub id: String,
    pub delivery_id: DeliveryId,
    /// The upstream repository the check run is on.
    pub repo: RepoFullName,
    /// The check run as it should be now (body of the create / update).
    pub request: crate::checks::CheckRunRequest,
    /// Bumped by each state change; a sync result is final only for the
    /// version it sent (a newer state stays pending).
    pub version: u32,
    /// GitHub's id once created: later syncs update it instead of creating.
    pub check_run_id: Option<u64>,
    /// Pending (not yet in GitHub's hands at this version), sent, or
    /// rejected (GitHub answered 4xx; `last_error` has its answer).
    pub sync: HudSync,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl CheckRunItem {
    pub fn id_for(key: &JobKey) -> String {
        format!("{}|{}", key.delivery_id, key.sort_key())
    }
}

/// A callback that broke the lifecycle contract, kept for `crcr trace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub delivery_id: DeliveryId,
    pub repo: RepoFullName,
    pub reason: String,
    pub at_ms: i64,
}

/// Durable job lifecycle: each downstream job's state and the violations
/// of the lifecycle rule. Writes are conditional so duplicates and
/// out-of-order callbacks never move a job backwards.
#[async_trait]
pub trait JobLifecycle: Send + Sync {
    async fn get(&self, key: &JobKey) -> Result<Option<JobRecord>, StoreError>;
    /// Writes `record` (its `state` is the new state) and `outbox` in one
    /// atomic write, only if the job's stored state is `expected` (`None` =
    /// no job yet). Returns `false`, changing nothing, when it is not.
    async fn transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
    ) -> Result<bool, StoreError>;
    async fn record_violation(&self, violation: &Violation) -> Result<(), StoreError>;
    /// Jobs of one delivery, ordered by sort key.
    async fn jobs(&self, delivery: &DeliveryId) -> Result<Vec<JobRecord>, StoreError>;
    async fn violations(&self, delivery: &DeliveryId) -> Result<Vec<Violation>, StoreError>;
    /// IN_PROGRESS jobs last changed before `before_ms` (for the timeout sweep).
    async fn in_progress_before(&self, before_ms: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError>;
}

/// The HUD outbox: the records each job transition wrote for HUD, and
/// their delivery attempts (`crate::hud::sync_outbox`, `crcr hud retry`).
#[async_trait]
pub trait HudOutbox: Send + Sync {
    /// Outbox items of one delivery, oldest first.
    async fn outbox(&self, delivery: &DeliveryId) -> Result<Vec<OutboxItem>, StoreError>;
    /// Up to `limit` pending outbox items due at `now_ms` (their
    /// `next_attempt_at_ms` is not later), the earliest due first (ties: the
    /// oldest created, then by id), across deliveries.
    async fn pending_outbox(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    /// Records one delivery attempt's result on a pending item: counts the
    /// attempt, keeps `error` as the last answer (when given), and sets
    /// `sync`; when it stays Pending, the next attempt is at
    /// `next_attempt_at_ms` (`None`: now; a final mark leaves the item's
    /// `next_attempt_at_ms` as it was). Sent, Rejected and Failed are
    /// final for the sweep: a later call does not change such an item.
    async fn mark_outbox(
        &self,
        id: &str,
        sync: HudSync,
        error: Option<&str>,
        next_attempt_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Moves a pending item's next attempt to `next_attempt_at_ms` without
    /// counting an attempt: a record waiting for an earlier record of its
    /// job (lifecycle order) steps aside instead of holding a place among
    /// the due ones. An item not pending is left as it is.
    async fn defer_outbox(&self, id: &str, next_attempt_at_ms: i64) -> Result<(), StoreError>;
    /// Up to `limit` outbox items in state `sync` (Failed or Rejected, for
    /// `crcr hud retry` and `crcr status`), oldest created first.
    async fn outbox_in(&self, sync: HudSync, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    /// Puts a final item (Sent, Rejected or Failed) back in the queue: sync
    /// Pending, attempts 0, created and due at `now_ms` (its attempt and age
    /// limits start over: [`crate::hud::HudRetryPolicy`]), its last answer
    /// kept. Returns `false`, changing nothing, when the item is unknown or
    /// already pending. Callers give requeued items distinct `now_ms` (a
    /// DynamoDB pass reads every item tied on its due time).
    async fn requeue_outbox(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// How many outbox items are pending and when the oldest of them was
    /// created: the HUD backlog and lag (metrics after each sync pass,
    /// `crcr status`). Cheap: an index read on both adapters.
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;
}

/// The check-run outbox: what each L3/L4 job's upstream check run should
/// show, written with the job's transition and synced to GitHub by
/// `crate::checks`.
#[async_trait]
pub trait CheckRunOutbox: Send + Sync {
    /// [`JobLifecycle::transition`] that also upserts `check` in the same atomic
    /// write: a new item is stored as given (version 1); an existing one
    /// (same id) takes `check.request`, version + 1 and sync pending, and
    /// keeps its `check_run_id`, `attempts` and `created_at_ms`.
    async fn transition_with_check_run(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
        check: &CheckRunItem,
    ) -> Result<bool, StoreError>;
    /// Writes `check` outside a job transition, only forward: stores it as
    /// given when no item has its id; replaces an existing item's request
    /// (version + 1, sync pending, keeping `check_run_id`, `attempts` and
    /// `created_at_ms`) only when the stored request's status is
    /// `in_progress` and `check.request`'s is `completed`. Returns whether it
    /// wrote. For check runs decided after the job moved: a label added
    /// later (backfill from stored job state), a superseded head or a closed
    /// pull request.
    async fn advance_check_run(&self, check: &CheckRunItem) -> Result<bool, StoreError>;
    /// Up to `limit` pending check-run items, oldest first.
    async fn pending_check_runs(&self, limit: usize) -> Result<Vec<CheckRunItem>, StoreError>;
    /// Check-run items of one delivery (for `crcr trace` and the timeout sweep).
    async fn check_runs(&self, delivery: &DeliveryId) -> Result<Vec<CheckRunItem>, StoreError>;
    /// Records one sync attempt of version `version` of item `id`: stores
    /// `check_run_id` when given (never unsets it), counts the attempt and
    /// `error`; sets `sync` only while the item is still at `version` and
    /// pending (a newer state written meanwhile stays pending).
    async fn mark_check_run(
        &self,
        id: &str,
        version: u32,
        check_run_id: Option<u64>,
        sync: HudSync,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
}

/// Figures for on-call tools (`crcr status`).
#[async_trait]
pub trait JobStats: Send + Sync {
    /// Callback activity at or after `since_ms` (relay clock), for on-call
    /// tools (`crcr status`), not the callback path: an adapter may read the
    /// whole table (DynamoDB: a Scan).
    async fn callback_counts(&self, since_ms: i64) -> Result<CallbackCounts, StoreError>;
}

/// The whole job store, as the SQLite and DynamoDB adapters provide it.
/// Every type with the four capabilities is one.
pub trait JobStore: JobLifecycle + HudOutbox + CheckRunOutbox + JobStats {}

impl<T: JobLifecycle + HudOutbox + CheckRunOutbox + JobStats + ?Sized> JobStore for T {}

/// Answer of [`HudOutbox::outbox_backlog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxBacklog {
    /// Outbox items in [`HudSync::Pending`].
    pub pending: u64,
    /// `created_at_ms` of the oldest pending item (ms since epoch); `None`
    /// when nothing is pending.
    pub oldest_created_at_ms: Option<i64>,
    /// Outbox items parked in [`HudSync::Failed`] (HUD kept failing them
    /// past the limits): each waits for `crcr hud retry`.
    #[serde(default)]
    pub failed: u64,
}

/// Answer of [`JobStats::callback_counts`]: what the reconciler applied in
/// the window, from the job records (their relay-clock times) and the
/// recorded violations. Callbacks refused at request time (401/403/429/400,
/// 409 before enqueueing) are not stored, so not counted here: they are in
/// the `CallbackRejections` metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackCounts {
    /// `in_progress` callbacks applied: jobs whose IN_PROGRESS time is in the window.
    pub in_progress: u64,
    /// `completed` callbacks applied: jobs whose COMPLETED time is in the
    /// window, except those with conclusion `timed_out`.
    pub completed: u64,
    /// Jobs completed in the window with conclusion `timed_out`: closed by
    /// the timeout sweep (or reported so by the downstream).
    pub timed_out: u64,
    /// Lifecycle violations the reconciler recorded in the window (nothing
    /// changed for them).
    pub violations: u64,
}

/// `queue_time` / `execution_time` in seconds from two instants (ms); `None`
/// when a side is unknown; never negative (clock skew between downstream
/// and relay clamps to 0).
pub fn seconds_between(from_ms: Option<i64>, to_ms: Option<i64>) -> Option<f64> {
    Some(((to_ms? - from_ms?).max(0) as f64) / 1000.0)
}
