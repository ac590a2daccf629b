//! HUD sync (CONTRACTS.md "HUD output"): `POST <HUD>/crcr/results` with the
//! header `x-hud-internal-bot: <key>`, https only (plain http only for
//! loopback, in tests). The outbox makes it lossless: an item stays pending
//! until HUD answers 2xx (then it is never sent again) or 4xx (then it is
//! marked rejected with HUD's answer, visible in `crcr trace`).
//!
//! A 5xx is not always transient: torchci's handler
//! (`torchci/pages/api/crcr/results.ts`) answers 500 to any body its
//! `extractDynamoRecord` (`torchci/lib/crcr/crcrUtils.ts`) cannot read. So
//! each record has its own next-attempt time with capped exponential backoff
//! ([`HudRetryPolicy`]): one HUD keeps refusing costs one request per backoff
//! step, records due now go first, and past the attempt or age limit it is
//! parked as [`HudSync::Failed`] with HUD's last answer (metric
//! [`crate::metrics::HUD_OUTBOX_FAILED`], `crcr status`, `crcr trace`,
//! `crcr hud retry`).
//!
//! HUD upserts one row per job (torchci's `writeToDynamo`: `UpdateItem` that
//! SETs only the fields a record carries), so the last record written wins:
//! a job's records are sent in lifecycle order. A `completed` record waits
//! while the job's `in_progress` record is still pending.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use serde_json::Value;

use crate::domain::DeliveryId;
use crate::lifecycle::{HudSync, JobRecord, JobState, JobStore, OutboxItem};
use crate::ports::{Clock, StoreError};

/// Why HUD did not take a record.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HudError {
    /// 4xx about the record (400, 413, 422, ...): it is bad; do not resend.
    #[error("HUD rejected the record ({status}): {answer}")]
    Rejected { status: u16, answer: String },
    /// 5xx, timeout, connection error: try again later.
    #[error("HUD unavailable: {0}")]
    Unavailable(String),
    /// No HUD is configured (`CRCR_HUD_URL` unset): nothing was sent, and
    /// records wait without counting attempts.
    #[error("no HUD configured (CRCR_HUD_URL)")]
    NotConfigured,
}

/// Sends one HUD record.
#[async_trait]
pub trait Hud: Send + Sync {
    async fn send(&self, body: &Value) -> Result<(), HudError>;
}

/// A bad HUD setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CRCR_HUD_URL {0:?} must be https (plain http only for 127.0.0.1 / localhost)")]
pub struct HudUrlError(pub String);

/// Checks HUD's API base URL: https, or plain http only to 127.0.0.1 /
/// localhost (a local HUD in tests and demos). The bot key travels in a
/// header, so it must not cross a network in the clear.
pub fn check_url(base_url: &str) -> Result<(), HudUrlError> {
    let loopback = ["http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://localhost/"];
    if base_url.starts_with("https://") || loopback.iter().any(|p| base_url.starts_with(p)) {
        Ok(())
    } else {
        Err(HudUrlError(base_url.to_owned()))
    }
}

/// Counts of one sync pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub sent: usize,
    pub rejected: usize,
    /// HUD failed them (5xx, no answer): pending, tried again after their backoff.
    pub still_pending: usize,
    /// Failed past the attempt or age limit: parked as failed.
    pub parked: usize,
    /// Waiting for an earlier record of their job (lifecycle order).
    pub waiting: usize,
}

/// When a record HUD failed (5xx, timeout, no answer) is tried again, and
/// when it is given up on (parked as [`HudSync::Failed`] for `crcr hud
/// retry`). The n-th failed attempt waits `first_backoff × 2^(n-1)`, at most
/// `max_backoff`; no jitter (records are sent by one sweep at a time, a few
/// at once, so they do not arrive together anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HudRetryPolicy {
    /// Wait after the first failed attempt (`CRCR_HUD_BACKOFF_SECS`, default 30 s).
    pub first_backoff: Duration,
    /// Longest wait between two attempts (`CRCR_HUD_MAX_BACKOFF_SECS`, default 30 min).
    pub max_backoff: Duration,
    /// Failed attempts before a record is parked (`CRCR_HUD_MAX_ATTEMPTS`,
    /// default 12: about 3.5 h of HUD refusing it with the default backoff).
    pub max_attempts: u32,
    /// A record not accepted this long after it was written is parked at
    /// its next failure (`CRCR_HUD_MAX_AGE_SECS`, default 24 h).
    pub max_age: Duration,
}

impl Default for HudRetryPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30 * 60),
            max_attempts: 12,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl HudRetryPolicy {
    /// The wait after failed attempt number `attempts` (1 = the first).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.first_backoff.saturating_mul(1u32 << doublings).min(self.max_backoff)
    }

    /// Whether a record created at `created_at_ms` whose attempt number
    /// `attempts` just failed at `now_ms` is given up on.
    pub fn gives_up(&self, attempts: u32, created_at_ms: i64, now_ms: i64) -> bool {
        attempts >= self.max_attempts || now_ms.saturating_sub(created_at_ms) >= self.max_age.as_millis() as i64
    }
}

/// HUD requests in flight at once during a pass (each job's records go one
/// after the other; different jobs in parallel), so one slow answer (up to
/// the client's 10 s timeout) does not hold the rest of the pass.
const HUD_CONCURRENCY: usize = 8;

/// One pass over the outbox: up to `limit` pending items due now
/// ([`HudOutbox::pending_outbox`](crate::lifecycle::HudOutbox::pending_outbox)), grouped by job and sent in lifecycle
/// order, `HUD_CONCURRENCY` (8) jobs at a time. One request per item and pass:
/// 2xx → sent; 4xx → rejected; 5xx or no answer → pending until its backoff
/// passed, or parked as failed past `policy`'s limits. A job's `completed`
/// record whose `in_progress` record is still pending is deferred to that
/// record's next attempt. No HUD configured ([`NoHud`]): nothing is tried or
/// counted. Counts each result in [`crate::metrics::HUD_SYNC`], then sets the
/// backlog, lag and failed gauges from [`HudOutbox::outbox_backlog`](crate::lifecycle::HudOutbox::outbox_backlog).
pub async fn sync_outbox(
    jobs: &dyn JobStore,
    hud: &dyn Hud,
    clock: &dyn Clock,
    policy: &HudRetryPolicy,
    limit: usize,
) -> Result<SyncReport, StoreError> {
    let mut report = SyncReport::default();
    let due = jobs.pending_outbox(clock.now_ms(), limit).await?;
    // Group by job, in due order of each job's first item; within a job, in
    // lifecycle order.
    let mut groups: Vec<Vec<OutboxItem>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for item in due {
        match index.get(item.job_id()) {
            Some(&i) => groups[i].push(item),
            None => {
                index.insert(item.job_id().to_owned(), groups.len());
                groups.push(vec![item]);
            }
        }
    }
    for g in &mut groups {
        g.sort_by_key(|i| i.state().map_or(0, |s| s as u8 + 1));
    }
    // Each delivery's records as they are now (a consistent read: the due
    // list may come from an eventually consistent index, DynamoDB's GSI).
    let mut outbox_of: std::collections::HashMap<DeliveryId, Vec<OutboxItem>> = Default::default();
    let mut ready = Vec::with_capacity(groups.len());
    for mut g in groups {
        let delivery = g[0].delivery_id.clone();
        if !outbox_of.contains_key(&delivery) {
            outbox_of.insert(delivery.clone(), jobs.outbox(&delivery).await?);
        }
        let now_of = |id: &str| outbox_of[&delivery].iter().find(|o| o.id == id);
        // A record already settled (a stale index read) is not sent again.
        g.retain(|i| now_of(&i.id).is_some_and(|o| o.sync == HudSync::Pending));
        let Some(first) = g.first() else { continue };
        let job = first.job_id().to_owned();
        let of_state = |state: JobState| now_of(&format!("{job}|{}", state.as_str()));
        // `completed` first while the job's `in_progress` (not due now) is
        // still pending: the job waits, stepping aside until that one's turn.
        if first.state() == Some(JobState::Completed) {
            if let Some(p) = of_state(JobState::InProgress).filter(|p| p.sync == HudSync::Pending) {
                jobs.defer_outbox(&first.id, p.next_attempt_at_ms.max(first.next_attempt_at_ms) + 1).await?;
                report.waiting += g.len();
                continue;
            }
        }
        // `in_progress` alone while HUD already has the job's `completed`
        // (sent before it, e.g. after `crcr hud retry`): HUD's row would end
        // in the older state, so `completed` goes again after it.
        let resend = match (first.state(), g.len()) {
            (Some(JobState::InProgress), 1) => {
                of_state(JobState::Completed).filter(|c| c.sync == HudSync::Sent).map(|c| c.id.clone())
            }
            _ => None,
        };
        ready.push((g, resend));
    }
    let results: Vec<Result<SyncReport, StoreError>> = futures::stream::iter(ready)
        .map(|(g, resend)| send_job(jobs, hud, clock, policy, g, resend))
        .buffer_unordered(HUD_CONCURRENCY)
        .collect()
        .await;
    for r in results {
        let r = r?;
        report.sent += r.sent;
        report.rejected += r.rejected;
        report.still_pending += r.still_pending;
        report.parked += r.parked;
        report.waiting += r.waiting;
    }
    record_backlog(jobs, clock.now_ms()).await;
    Ok(report)
}

/// Sends one job's due records in order; stops at the first that stays
/// pending (the later ones wait for it). `resend`: the job's newer record
/// HUD already took, put back in the queue once the older one was sent.
async fn send_job(
    jobs: &dyn JobStore,
    hud: &dyn Hud,
    clock: &dyn Clock,
    policy: &HudRetryPolicy,
    items: Vec<OutboxItem>,
    resend: Option<String>,
) -> Result<SyncReport, StoreError> {
    let mut report = SyncReport::default();
    let total = items.len();
    for (done, item) in items.into_iter().enumerate() {
        let result = hud.send(&item.body).await;
        let now = clock.now_ms();
        match result {
            Ok(()) => {
                jobs.mark_outbox(&item.id, HudSync::Sent, None, None, now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "sent").increment(1);
                report.sent += 1;
                if let Some(newer) = resend.as_deref().filter(|_| item.state() == Some(JobState::InProgress)) {
                    tracing::info!(outbox_id = %newer, "HUD took an older record of the job after its newer one; sending the newer one again");
                    jobs.requeue_outbox(newer, now).await?;
                }
            }
            Err(e @ HudError::Rejected { .. }) => {
                tracing::error!(outbox_id = %item.id, delivery_id = %item.delivery_id, error = %e, metric = "hud_rejected", "HUD rejected a record");
                jobs.mark_outbox(&item.id, HudSync::Rejected, Some(&e.to_string()), None, now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "rejected").increment(1);
                report.rejected += 1;
            }
            Err(HudError::NotConfigured) => {
                // Nothing tried: the records wait, their attempts uncounted.
                report.waiting += total - done;
                return Ok(report);
            }
            Err(e) => {
                let attempts = item.attempts + 1;
                if policy.gives_up(attempts, item.created_at_ms, now) {
                    tracing::error!(outbox_id = %item.id, delivery_id = %item.delivery_id, attempts, error = %e,
                        metric = "hud_outbox_failed", "HUD kept failing a record; parked as failed (crcr hud retry)");
                    jobs.mark_outbox(&item.id, HudSync::Failed, Some(&e.to_string()), None, now).await?;
                    ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "parked").increment(1);
                    report.parked += 1;
                    continue; // parked: the job's later records may go
                }
                let next = now.saturating_add(policy.backoff(attempts).as_millis() as i64);
                tracing::warn!(outbox_id = %item.id, attempts, next_attempt_in_s = policy.backoff(attempts).as_secs(),
                    error = %e, metric = "hud_sync_failures", "HUD unavailable; record stays pending");
                jobs.mark_outbox(&item.id, HudSync::Pending, Some(&e.to_string()), Some(next), now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "failed").increment(1);
                report.still_pending += 1;
                report.waiting += total - done - 1;
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// The callback body of the HUD record for a job the relay closes as timed
/// out: what HUD stores for any finished job. As the Python relay does
/// (pytorch/test-infra `aws/lambda/cross_repo_ci_relay/callback/cleanup_handler.py`,
/// `_build_timeout_payload`): the job's last accepted callback body (`last`,
/// the body of its `in_progress` record) with `workflow.status` =
/// `completed`, `workflow.conclusion` = `timed_out` and
/// `workflow.completed_at` = `completed_at_ms` (RFC 3339, UTC, seconds).
/// Without one (a record lost or unreadable), a body built from the job
/// record with every field torchci's `extractDynamoRecord` reads
/// (`check_run_id` as the callback action's fallback `<run_id>-<run_attempt>`).
pub fn timed_out_callback_body(last: Option<&Value>, job: &JobRecord, completed_at_ms: i64) -> Value {
    let completed_at = chrono::DateTime::from_timestamp_millis(completed_at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let usable = last.filter(|b| b.get("workflow").is_some_and(Value::is_object));
    let mut body = match usable {
        Some(b) => b.clone(),
        None => serde_json::json!({
            "delivery_id": job.key.delivery_id.as_str(),
            "workflow": {
                "schema_version": "1",
                "name": job.workflow_name.clone().unwrap_or_default(),
                "url": job.url,
                "run_id": job.key.run_id.to_string(),
                "run_attempt": job.key.run_attempt.to_string(),
                "job_name": job.key.job_name,
                "check_run_id": format!("{}-{}", job.key.run_id, job.key.run_attempt),
                "started_at": null,
            },
        }),
    };
    let w = &mut body["workflow"];
    w["status"] = "completed".into();
    w["conclusion"] = "timed_out".into();
    w["completed_at"] = completed_at.into();
    body
}

/// Sets the [`crate::metrics::HUD_OUTBOX_BACKLOG`] and
/// [`crate::metrics::HUD_OUTBOX_LAG`] gauges from the store (after a pass).
/// A store that cannot tell is logged; the gauges keep their last values.
async fn record_backlog(jobs: &dyn JobStore, now_ms: i64) {
    match jobs.outbox_backlog().await {
        Ok(b) => {
            let lag_s = b.oldest_created_at_ms.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            ::metrics::gauge!(crate::metrics::HUD_OUTBOX_BACKLOG).set(b.pending as f64);
            ::metrics::gauge!(crate::metrics::HUD_OUTBOX_LAG).set(lag_s);
            ::metrics::gauge!(crate::metrics::HUD_OUTBOX_FAILED).set(b.failed as f64);
        }
        Err(e) => tracing::warn!(error = %e, "could not read the HUD outbox backlog"),
    }
}

/// No HUD configured: records wait in the outbox, their attempts uncounted.
pub struct NoHud;

#[async_trait]
impl Hud for NoHud {
    async fn send(&self, _: &Value) -> Result<(), HudError> {
        Err(HudError::NotConfigured)
    }
}

/// Convenience for wiring.
pub type SharedHud = Arc<dyn Hud>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hud_url_must_be_https_except_loopback() {
        assert!(check_url("https://hud.pytorch.org/api").is_ok());
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://localhost/").is_ok());
        assert!(check_url("http://hud.pytorch.org/api").is_err());
        assert!(check_url("http://localhost.evil.com/").is_err());
        assert!(check_url("http://127.0.0.1.evil.com/").is_err());
    }
}
