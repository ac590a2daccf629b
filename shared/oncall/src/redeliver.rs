//! `crcr redeliver`'s report for people.

use crcr_core::redeliver::{GuidOutcome, RedeliverReport};

use crate::table::Table;
use crate::{format_age, format_time};

/// The report for people: a summary, one row per GUID not delivered,
/// and the errors. `now_ms` gives the ages.
pub fn render(report: &RedeliverReport, now_ms: i64) -> String {
    let mut out = format!(
        "{}read {} page(s), {} deliveries back to {} ({} ago{})\n",
        if report.dry_run { "dry run: " } else { "" },
        report.pages,
        report.deliveries,
        format_time(report.from_ms),
        format_age(now_ms - report.from_ms),
        if report.resumed {
            ", going on where the last run stopped"
        } else if report.from_cursor {
            ", where the last complete run stopped"
        } else {
            ""
        },
    );
    out.push_str(&format!(
        "{} GUID(s), {} without a successful attempt; {} {}; skipped: {} already OK, {} already requested, \
         {} given up, {} too old, {} of events the relay does not act on\n",
        report.guids,
        report.failed,
        if report.dry_run { "would redeliver" } else { "redelivered" },
        report.redelivered,
        report.skipped_ok,
        report.skipped_requested,
        report.skipped_gave_up,
        report.skipped_too_old,
        report.skipped_ignored,
    ));
    if !report.rows.is_empty() {
        let mut t = Table::new(["GUID", "EVENT", "DELIVERY", "AGE", "STATUS", "FAILED", "OUTCOME"]);
        for r in &report.rows {
            let event = match &r.action {
                Some(a) => format!("{}.{a}", r.event),
                None => r.event.clone(),
            };
            let outcome = match &r.outcome {
                GuidOutcome::Requested { attempt } => format!("redelivery requested (attempt {attempt})"),
                GuidOutcome::WouldRequest { attempt } => format!("would request (attempt {attempt})"),
                GuidOutcome::AlreadyRequested => "already requested, waiting for GitHub".to_owned(),
                GuidOutcome::GaveUp { attempts } => format!("gave up after {attempts} requests"),
                GuidOutcome::TooOld => "too old".to_owned(),
                GuidOutcome::Deferred => "left for the next run".to_owned(),
                GuidOutcome::Error { error } => format!("error: {error}"),
            };
            t.row([
                r.guid.clone(),
                event,
                r.delivery_id.to_string(),
                format_age(now_ms - r.delivered_at_ms),
                r.status_code.to_string(),
                r.attempts.to_string(),
                outcome,
            ]);
        }
        out.push_str(&t.max_cell(80).render());
    }
    if !report.complete {
        out.push_str("incomplete: the next run goes on from here");
        if let Some(u) = &report.unscanned {
            out.push_str(&format!(
                "; not read yet: deliveries from {} to {}",
                format_time(u.from_ms),
                format_time(u.to_ms)
            ));
        }
        if report.pending > 0 {
            out.push_str(&format!("; {} failed GUID(s) wait to be asked for", report.pending));
        }
        out.push('\n');
    }
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}
