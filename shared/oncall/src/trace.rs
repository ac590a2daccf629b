//! `crcr trace <delivery-id>`: the whole chain of one delivery — per target,
//! the dispatch outcome and attempts; per job, its lifecycle with
//! timestamps, figures and HUD sync state; its upstream check run (L3/L4);
//! and refused callbacks — from the
//! stores of either runtime: the SQLite file of `crcr serve`
//! ([`TraceStores::sqlite`]) or the DynamoDB dispatch and jobs tables
//! ([`TraceStores::aws`], `crcr trace --aws`).

use std::path::Path;

use serde::Serialize;

use crate::backend::BackendError;
use crcr_core::config::AwsResources;
use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{CheckRunItem, HudSync, JobRecord, JobStore, OutboxItem, Violation};
use crcr_core::ports::{DispatchRecord, DispatchStore, StoreError};

/// The stores a trace reads.
pub struct TraceStores {
    pub dispatches: Box<dyn DispatchStore>,
    pub jobs: Box<dyn JobStore>,
    /// The per-commit records of [`crcr_core::upstream`] (SQLite / DynamoDB
    /// `kv`): whether a dispatch is still tracked. `None`: not shown.
    pub state: Option<Box<dyn crcr_core::ports::StateStore>>,
}

impl TraceStores {
    /// The SQLite file of `crcr serve` at `path`, which must exist (a wrong
    /// path must not create an empty database and report "nothing recorded").
    pub fn sqlite(path: &Path) -> Result<Self, BackendError> {
        let db = super::backend::open_database(path)?;
        Ok(Self {
            dispatches: Box::new(crcr_embedded::sqlite::SqliteDispatchStore::new(db.clone())),
            jobs: Box::new(crcr_embedded::sqlite::SqliteJobStore::new(db.clone())),
            state: Some(Box::new(crcr_embedded::sqlite::SqliteKv::new(
                db,
                std::sync::Arc::new(crcr_core::ports::SystemClock),
            ))),
        })
    }

    /// DynamoDB: `CRCR_DISPATCH_TABLE` and `CRCR_JOBS_TABLE` (errors name
    /// the missing one), and `CRCR_KV_TABLE` when set (whether dispatches are
    /// still tracked), through `CRCR_AWS_ENDPOINT_URL` when set (an
    /// emulator), with the usual AWS credential chain. Reads are `Query`s
    /// with `ConsistentRead` on the delivery id (no scan).
    pub async fn aws(res: &AwsResources) -> Result<Self, BackendError> {
        const BY: &str = "crcr trace --aws";
        let (dispatch_table, jobs_table) = (res.dispatch_table(BY)?, res.jobs_table(BY)?);
        let sdk = crcr_aws::sdk_config(res.endpoint_url.as_deref()).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let state: Option<Box<dyn crcr_core::ports::StateStore>> = res.kv_table.clone().map(|t| {
            Box::new(crcr_aws::DynamoKv::new(dynamo.clone(), t, std::sync::Arc::new(crcr_core::ports::SystemClock)))
                as _
        });
        Ok(Self {
            dispatches: Box::new(crcr_aws::DynamoDispatchStore::new(dynamo.clone(), dispatch_table)),
            jobs: Box::new(crcr_aws::DynamoJobStore::new(dynamo, jobs_table)),
            state,
        })
    }

    /// The trace of `delivery` from these stores.
    pub async fn trace(&self, delivery: &DeliveryId) -> Result<Trace, StoreError> {
        let mut t = trace(delivery, self.dispatches.as_ref(), self.jobs.as_ref()).await?;
        if let Some(state) = &self.state {
            t.add_tracking(state.as_ref()).await?;
        }
        Ok(t)
    }
}

/// Everything the relay recorded about one delivery.
#[derive(Debug, Serialize)]
pub struct Trace {
    pub delivery_id: DeliveryId,
    pub dispatches: Vec<DispatchRecord>,
    pub jobs: Vec<JobRecord>,
    pub hud: Vec<OutboxItem>,
    /// Upstream check runs of the delivery's L3/L4 jobs: sync state,
    /// GitHub's id, GitHub's last answer.
    pub check_runs: Vec<CheckRunItem>,
    pub violations: Vec<Violation>,
    /// L2+ targets GitHub accepted the dispatch for that have not called
    /// back (no job recorded), with how long ago they were dispatched (s).
    /// Past the reconciler's deadline (`CRCR_NEVER_STARTED_SECS`, default
    /// 1 h) these are the "dispatched but never started" ones.
    pub silent_targets: Vec<SilentTarget>,
    /// Targets whose dispatch is no longer tracked (a superseded head or a
    /// closed pull request, [`crcr_core::upstream::Tracking`]), with why; filled
    /// by [`Trace::add_tracking`].
    pub not_tracked: Vec<NotTracked>,
}

/// A dispatch the relay stopped following.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NotTracked {
    pub target: crcr_core::domain::RepoFullName,
    /// `superseded by <sha> (pull request #N)` or `pull request #N closed`.
    pub reason: String,
}

/// A dispatched L2+ target with no callback yet.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SilentTarget {
    pub target: crcr_core::domain::RepoFullName,
    pub dispatched_at_ms: i64,
    /// Seconds between the dispatch and the trace.
    pub silent_for_s: i64,
}

/// The reconciler's default "never started" deadline, used by `render`.
const NEVER_STARTED_DEFAULT_S: i64 = 3600;

/// Reads everything recorded about `delivery`: dispatch records, jobs, HUD
/// outbox items and lifecycle violations.
pub async fn trace(
    delivery: &DeliveryId,
    dispatches: &dyn DispatchStore,
    jobs: &dyn JobStore,
) -> Result<Trace, StoreError> {
    let dispatches = dispatches.records(delivery).await?;
    let jobs_of_delivery = jobs.jobs(delivery).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let silent_targets = dispatches
        .iter()
        .filter_map(|d| {
            let at = crcr_core::reconcile::awaiting_callback(d, &jobs_of_delivery)?;
            Some(SilentTarget {
                target: d.target.clone(),
                dispatched_at_ms: at,
                silent_for_s: (now_ms - at).max(0) / 1000,
            })
        })
        .collect();
    Ok(Trace {
        delivery_id: delivery.clone(),
        dispatches,
        jobs: jobs_of_delivery,
        hud: jobs.outbox(delivery).await?,
        check_runs: jobs.check_runs(delivery).await?,
        violations: jobs.violations(delivery).await?,
        silent_targets,
        not_tracked: Vec::new(),
    })
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
}

impl Trace {
    /// Marks the dispatches the relay stopped following (per commit, in
    /// `state`); they are not waited for, so they leave `silent_targets`.
    pub async fn add_tracking(&mut self, state: &dyn crcr_core::ports::StateStore) -> Result<(), StoreError> {
        for d in &self.dispatches {
            let Some(sha) = &d.meta.head_sha else { continue };
            if let Some(t) = crcr_core::upstream::tracking(state, sha).await? {
                if t.untracks(d) {
                    self.not_tracked.push(NotTracked { target: d.target.clone(), reason: t.reason.clone() });
                }
            }
        }
        let not_tracked = &self.not_tracked;
        self.silent_targets.retain(|s| !not_tracked.iter().any(|n| n.target == s.target));
        Ok(())
    }

    /// The trace as text for people.
    pub fn render(&self) -> String {
        let mut out = format!("delivery {}\n", self.delivery_id);
        if self.dispatches.is_empty() && self.jobs.is_empty() {
            out.push_str("  nothing recorded (not dispatched: ignored, refused, or not yet processed)\n");
            return out;
        }
        out.push_str("dispatches:\n");
        for d in &self.dispatches {
            out.push_str(&format!(
                "  {:<40} {:<3} {:<10} attempts {}  dispatched {}{}{}{}\n",
                d.target.as_str(),
                d.meta.level.as_str(),
                d.status.as_str(),
                d.attempts,
                time(d.dispatched_at_ms),
                // Two webhooks' deliveries of one GUID: one line per hook.
                d.meta.hook_id.map(|h| format!("  (hook {h})")).unwrap_or_default(),
                if d.payload_trimmed { "  (payload trimmed)" } else { "" },
                d.last_error.as_ref().map(|e| format!("  last error: {e}")).unwrap_or_default()
            ));
            if let Some(n) = self.not_tracked.iter().find(|n| n.target == d.target) {
                out.push_str(&format!("    not tracked any more: {}\n", n.reason));
            }
            if let Some(s) = self.silent_targets.iter().find(|s| s.target == d.target) {
                out.push_str(&if s.silent_for_s >= NEVER_STARTED_DEFAULT_S {
                    format!(
                        "    never started: no callback {} s after the dispatch (repository_dispatch fires only \
                         workflows on the downstream's default branch; ask its oncall)\n",
                        s.silent_for_s
                    )
                } else {
                    format!("    no callback yet ({} s since the dispatch)\n", s.silent_for_s)
                });
            }
        }
        if !self.jobs.is_empty() {
            out.push_str("jobs:\n");
        }
        for j in &self.jobs {
            out.push_str(&format!(
                "  {} run {} attempt {} job {:?}: {}{}\n    dispatched {}  in progress {}  completed {}  queue {}  execution {}\n",
                j.key.repo,
                j.key.run_id,
                j.key.run_attempt,
                j.key.job_name,
                j.state.as_str(),
                j.conclusion.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                time(j.dispatched_at_ms),
                time(j.in_progress_at_ms),
                time(j.completed_at_ms),
                secs(j.queue_time_s),
                secs(j.execution_time_s),
            ));
        }
        if !self.hud.is_empty() {
            out.push_str("HUD records:\n");
        }
        for h in &self.hud {
            let next = match h.sync {
                HudSync::Pending if h.attempts > 0 => format!("  next attempt {}", time(Some(h.next_attempt_at_ms))),
                HudSync::Failed => "  (parked: crcr hud retry)".to_owned(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {:<9} attempts {}  {}{}{next}\n",
                h.sync.as_str(),
                h.attempts,
                h.id.split('|').skip(1).collect::<Vec<_>>().join(" "),
                h.last_error.as_ref().map(|e| format!("  last answer: {e}")).unwrap_or_default()
            ));
        }
        if !self.check_runs.is_empty() {
            out.push_str("upstream check runs:\n");
        }
        for c in &self.check_runs {
            out.push_str(&format!(
                "  {:<9} {} on {} {} ({}{})  check run {}  attempts {}{}\n",
                c.sync.as_str(),
                c.request.name,
                c.repo,
                c.request.head_sha.as_str().chars().take(12).collect::<String>(),
                serde_json::to_value(c.request.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                c.request.conclusion.as_ref().map(|x| format!(": {x}")).unwrap_or_default(),
                c.check_run_id.map_or_else(|| "not created".to_owned(), |id| id.to_string()),
                c.attempts,
                c.last_error.as_ref().map(|e| format!("  last answer: {e}")).unwrap_or_default()
            ));
        }
        if !self.violations.is_empty() {
            out.push_str("refused callbacks:\n");
        }
        for v in &self.violations {
            out.push_str(&format!("  {} {}: {}\n", time(Some(v.at_ms)), v.repo, v.reason));
        }
        out
    }
}
