//! `crcr hud retry`: puts HUD records the sweep gave up on back in the
//! outbox queue (issue 11). A record is parked as failed when HUD kept
//! answering 5xx (or nothing) past `CRCR_HUD_MAX_ATTEMPTS` /
//! `CRCR_HUD_MAX_AGE_SECS` ([`crcr_core::hud::HudRetryPolicy`]); a rejected one
//! (HUD answered 4xx) can be asked for too, once HUD is fixed.
//!
//! Requeued records are sent by the relay's next sweeps, at their pace, in
//! lifecycle order: when the record put back is a job's `in_progress` and
//! the job's `completed` record already reached HUD, that one is put back
//! too, so HUD's row (the last record written wins, torchci's
//! `writeToDynamo`) ends in the job's newest state again.

use serde::Serialize;

use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::lifecycle::{HudSync, JobState, JobStore, OutboxItem};
use crcr_core::ports::StoreError;

use super::progress::Progress;

/// Which parked records to put back (all failed ones when nothing is set).
#[derive(Clone, Debug, Default)]
pub struct HudRetryFilter {
    /// Only this delivery's records.
    pub delivery: Option<DeliveryId>,
    /// Only records of this downstream repository (`trusted.verified_repo`).
    pub repo: Option<RepoFullName>,
    /// Only records written at or after this instant (ms since epoch).
    pub created_since_ms: Option<i64>,
    /// Rejected records (HUD answered 4xx) too, not only failed ones.
    pub include_rejected: bool,
}

impl HudRetryFilter {
    fn matches(&self, item: &OutboxItem) -> bool {
        self.delivery.as_ref().is_none_or(|d| &item.delivery_id == d)
            && self.repo.as_ref().is_none_or(|r| {
                item.body
                    .pointer("/trusted/verified_repo")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.eq_ignore_ascii_case(r.as_str()))
            })
            && self.created_since_ms.is_none_or(|t| item.created_at_ms >= t)
    }
}

/// One record put back (or that would be, with `dry_run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetriedRecord {
    pub id: String,
    pub delivery_id: DeliveryId,
    /// `failed` or `rejected` (or `sent`, for a later record of the same job).
    pub was: String,
    pub attempts: u32,
    /// HUD's last answer.
    pub last_error: Option<String>,
}

/// What [`retry`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HudRetryReport {
    /// Parked records read: the oldest `max_scan` of each state asked for
    /// (the filter applies to these; when it equals `max_scan`, there may be
    /// more: give a larger `--max-scan`).
    pub scanned: usize,
    /// Parked records that matched the filter.
    pub matched: usize,
    /// Records put back in the queue (with `dry_run`: that would be), the
    /// later records of their jobs included.
    pub requeued: usize,
    /// Records no longer parked when their turn came (sent or requeued meanwhile).
    pub skipped: usize,
    pub dry_run: bool,
    pub records: Vec<RetriedRecord>,
}

/// Puts the parked records matching `filter` back in the HUD outbox queue
/// (due at `now_ms`, attempts 0), reading at most `max_scan` records of
/// each parked state; with `dry_run` only lists them. Reports each record to
/// `progress`. Errors: the store's (the records put back before it stay put back).
pub async fn retry(
    jobs: &dyn JobStore,
    filter: &HudRetryFilter,
    max_scan: usize,
    dry_run: bool,
    now_ms: i64,
    progress: &mut dyn Progress,
) -> Result<HudRetryReport, StoreError> {
    let mut parked = jobs.outbox_in(HudSync::Failed, max_scan).await?;
    if filter.include_rejected {
        parked.extend(jobs.outbox_in(HudSync::Rejected, max_scan).await?);
    }
    let scanned = parked.len();
    parked.retain(|i| filter.matches(i));
    parked.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let mut report = HudRetryReport { scanned, matched: parked.len(), dry_run, ..Default::default() };
    // Distinct due times: a DynamoDB pass reads every record tied on its due
    // time, so thousands requeued at one instant would all be read each pass.
    let mut at = now_ms;
    let mut next_at = || {
        at += 1;
        at - 1
    };
    progress.start(Some(parked.len() as u64));
    for item in parked {
        let record = |i: &OutboxItem| RetriedRecord {
            id: i.id.clone(),
            delivery_id: i.delivery_id.clone(),
            was: i.sync.as_str().to_owned(),
            attempts: i.attempts,
            last_error: i.last_error.clone(),
        };
        // A later record of the same job that HUD already took is sent again
        // after this one, so HUD's row ends in the job's newest state.
        let later: Vec<OutboxItem> = if item.state() == Some(JobState::InProgress) {
            let completed = format!("{}|{}", item.job_id(), JobState::Completed.as_str());
            jobs.outbox(&item.delivery_id)
                .await?
                .into_iter()
                .filter(|o| o.id == completed && o.sync == HudSync::Sent)
                .collect()
        } else {
            Vec::new()
        };
        if dry_run {
            report.requeued += 1 + later.len();
            report.records.push(record(&item));
            report.records.extend(later.iter().map(record));
        } else if jobs.requeue_outbox(&item.id, next_at()).await? {
            report.requeued += 1;
            report.records.push(record(&item));
            // Should this stop here (the command killed, the store down), the
            // sweep sends the later record again itself once this one is
            // sent ([`crcr_core::hud::sync_outbox`]).
            for l in &later {
                if jobs.requeue_outbox(&l.id, next_at()).await? {
                    report.requeued += 1;
                    report.records.push(record(l));
                }
            }
        } else {
            report.skipped += 1;
        }
        progress.inc(1);
        progress.message(&format!("requeued {}, skipped {}", report.requeued, report.skipped));
    }
    progress.finish();
    Ok(report)
}

/// The report for people: one line per record, then the counts.
pub fn render(report: &HudRetryReport) -> String {
    let mut out = String::new();
    for r in &report.records {
        out.push_str(&format!(
            "{} {:<8} attempts {:<3} {}{}\n",
            if report.dry_run { "would requeue" } else { "requeued" },
            r.was,
            r.attempts,
            r.id,
            r.last_error.as_ref().map(|e| format!("  last answer: {e}")).unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "{} parked record(s) read, {} matched; {} {}; {} skipped (no longer parked)\n",
        report.scanned,
        report.matched,
        report.requeued,
        if report.dry_run { "would be requeued (dry run)" } else { "requeued: the next sweeps send them" },
        report.skipped
    ));
    out
}
