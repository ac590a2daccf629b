//! The reconciler: applies accepted callbacks from the reconcile queue to
//! the job lifecycle (conditional writes + HUD outbox), syncs the outbox to
//! HUD, and sweeps jobs left IN_PROGRESS past the timeout (default 6 h) to
//! COMPLETED `timed_out`, with a HUD record.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use crate::callback::{self, hud_body, Reconciled};
use crate::hud::{sync_outbox, Hud, SyncReport};
use crate::lifecycle::{seconds_between, HudSync, JobState, JobStore, OutboxItem};
use crate::message::QueueMessage;
use crate::ports::{Clock, DispatchStore, EventQueue, QueueError, QueueSide, ReceivedMessage, StoreError};

/// Tunables, with their defaults.
#[derive(Clone, Debug)]
pub struct ReconcilerSettings {
    /// IN_PROGRESS longer than this → COMPLETED `timed_out` (default 6 h, CONTRACTS.md).
    pub job_timeout: Duration,
    /// Receives before a reconcile message goes to its DLQ (default 5).
    pub max_receive_count: u32,
    /// Outbox items per HUD sync pass (default 100).
    pub hud_batch: usize,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self { job_timeout: Duration::from_secs(6 * 3600), max_receive_count: 5, hud_batch: 100 }
    }
}

/// Processes one queue message; implemented by the dispatcher and the reconciler.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Handles `msg` and settles it on `queue` (delete, requeue or dead-letter).
    async fn handle(&self, queue: &dyn EventQueue, msg: &ReceivedMessage) -> Result<(), QueueError>;
}

/// The reconciler and its ports.
pub struct Reconciler {
    pub dispatches: Arc<dyn DispatchStore>,
    pub jobs: Arc<dyn JobStore>,
    pub hud: Arc<dyn Hud>,
    pub clock: Arc<dyn Clock>,
    pub settings: ReconcilerSettings,
}

/// Result of processing one reconcile message.
#[derive(Debug)]
pub enum ReconcileOutcome {
    Done(Reconciled),
    /// The store was unavailable: receive it again.
    Retry(String),
    /// Never processable.
    Poison(String),
}

impl Reconciler {
    pub async fn process(&self, body: &str) -> ReconcileOutcome {
        let msg = match QueueMessage::decode(body) {
            Ok(QueueMessage::CallbackV1(m)) => m,
            Ok(QueueMessage::DispatchV1(_)) => {
                return ReconcileOutcome::Poison("a dispatch_v1 message does not belong on the reconcile queue".into())
            }
            Err(e) => return ReconcileOutcome::Poison(e.to_string()),
        };
        let (cb, value) = match callback::parse(msg.body.get().as_bytes()) {
            Ok(x) => x,
            Err(e) => return ReconcileOutcome::Poison(e.to_string()),
        };
        let span = tracing::info_span!("callback", delivery_id = %cb.delivery_id, repo = %msg.repo, run_id = cb.run_id,
            run_attempt = cb.run_attempt, job = %cb.job_name, status = cb.status.as_str());
        let _g = span.enter();
        match callback::reconcile(
            &cb,
            &value,
            &msg.repo,
            msg.level,
            msg.received_at_ms,
            self.dispatches.as_ref(),
            self.jobs.as_ref(),
        )
        .await
        {
            Ok(r) => {
                match &r {
                    Reconciled::Applied(job) => {
                        tracing::info!(queue_time_s = ?job.queue_time_s, execution_time_s = ?job.execution_time_s, "job state recorded")
                    }
                    Reconciled::Violation(reason) => {
                        tracing::warn!(%reason, metric = "callback_rejections", "lifecycle violation; nothing changed")
                    }
                }
                ReconcileOutcome::Done(r)
            }
            Err(e) => ReconcileOutcome::Retry(e.to_string()),
        }
    }

    /// One pass of the scheduled work: time out stale IN_PROGRESS jobs, then
    /// sync the HUD outbox. Returns (jobs timed out, HUD sync figures).
    pub async fn sweep(&self) -> Result<(usize, SyncReport), StoreError> {
        let now = self.clock.now_ms();
        let cutoff = now - self.settings.job_timeout.as_millis() as i64;
        let mut timed_out = 0;
        for mut job in self.jobs.in_progress_before(cutoff, 500).await? {
            job.state = JobState::Completed;
            job.completed_at_ms = Some(now);
            job.conclusion = Some("timed_out".into());
            job.execution_time_s = seconds_between(job.in_progress_at_ms, job.completed_at_ms);
            job.updated_at_ms = now;
            let note = json!({"relay_note": format!("no completed callback within {} s; closed as timed_out", self.settings.job_timeout.as_secs())});
            let outbox = OutboxItem {
                id: OutboxItem::id_for(&job.key, JobState::Completed),
                delivery_id: job.key.delivery_id.clone(),
                body: hud_body(&job, &note),
                sync: HudSync::Pending,
                attempts: 0,
                last_error: None,
                created_at_ms: now,
                updated_at_ms: now,
            };
            if self.jobs.transition(Some(JobState::InProgress), &job, &outbox).await? {
                tracing::warn!(delivery_id = %job.key.delivery_id, repo = %job.key.repo, job = %job.key.job_name, metric = "jobs_timed_out", "job timed out");
                timed_out += 1;
            }
        }
        let hud =
            sync_outbox(self.jobs.as_ref(), self.hud.as_ref(), self.clock.as_ref(), self.settings.hud_batch).await?;
        Ok((timed_out, hud))
    }
}

#[async_trait]
impl MessageHandler for Reconciler {
    async fn handle(&self, queue: &dyn EventQueue, msg: &ReceivedMessage) -> Result<(), QueueError> {
        match self.process(&msg.body).await {
            ReconcileOutcome::Done(_) => queue.delete(QueueSide::Source, &msg.receipt).await,
            ReconcileOutcome::Poison(reason) => queue.dead_letter(msg, &reason).await,
            ReconcileOutcome::Retry(reason) if msg.receive_count >= self.settings.max_receive_count => {
                queue.dead_letter(msg, &format!("still failing after {} receives: {reason}", msg.receive_count)).await
            }
            ReconcileOutcome::Retry(_) => {
                let delay = Duration::from_secs(1 << msg.receive_count.min(8));
                queue.change_visibility(QueueSide::Source, &msg.receipt, delay).await
            }
        }
    }
}

#[async_trait]
impl MessageHandler for crate::dispatch::Dispatcher {
    async fn handle(&self, queue: &dyn EventQueue, msg: &ReceivedMessage) -> Result<(), QueueError> {
        crate::dispatch::Dispatcher::handle(self, queue, msg).await.map(|_| ())
    }
}
