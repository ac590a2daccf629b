//! `crcr status`: queue depths and oldest messages, dispatch outcomes over a
//! recent window, and the allowlist in use. Each section is read on its own:
//! one that cannot be read carries its error and the others are still shown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ports::{Clock, DispatchCounts, DispatchStore, EventQueue, QueueSide};

use super::allowlist::AllowlistSummary;
use super::dlq::ScanOptions;
use super::table::Table;
use super::{format_age, format_time};

/// One side (source or DLQ) of a queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideStatus {
    /// visible + in flight + delayed.
    pub depth: u64,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// When the oldest message was sent (ms since epoch), when known.
    pub oldest_sent_at_ms: Option<i64>,
    pub oldest_age_ms: Option<i64>,
    /// Where the oldest time comes from: `queue` (the adapter knows it) or
    /// `peek` (read from the messages themselves; DLQs only).
    pub oldest_from: Option<String>,
    pub error: Option<String>,
}

/// A queue and its DLQ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub name: String,
    pub source: SideStatus,
    pub dead_letter: SideStatus,
}

/// Dispatch outcomes of the records written within the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchWindow {
    pub since_ms: i64,
    pub window_secs: u64,
    pub counts: Option<DispatchCounts>,
    pub error: Option<String>,
}

/// The allowlist the relay is configured with, as read now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowlistStatus {
    /// The file path or URL it was read from.
    pub source: String,
    pub summary: Option<AllowlistSummary>,
    pub error: Option<String>,
}

/// What `crcr status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub generated_at_ms: i64,
    pub queues: Vec<QueueStatus>,
    pub dispatches: DispatchWindow,
    pub allowlist: Option<AllowlistStatus>,
}

impl StatusReport {
    /// Whether any section could not be read.
    pub fn has_errors(&self) -> bool {
        self.queues.iter().any(|q| q.source.error.is_some() || q.dead_letter.error.is_some())
            || self.dispatches.error.is_some()
            || self.allowlist.as_ref().is_some_and(|a| a.error.is_some())
    }
}

/// How `status` reads.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Dispatch outcomes over this window (default 1 h).
    pub window: Duration,
    /// When the adapter cannot tell the oldest DLQ message (SQS), read the
    /// DLQ to find it (a peek: every message released at once). Default on.
    pub peek_dlq: bool,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self { window: Duration::from_secs(3600), peek_dlq: true }
    }
}

async fn side(queue: &dyn EventQueue, which: QueueSide, now_ms: i64, peek: bool) -> SideStatus {
    let mut s = SideStatus::default();
    match queue.stats(which).await {
        Ok(st) => {
            s.visible = st.visible;
            s.in_flight = st.in_flight;
            s.delayed = st.delayed;
            s.depth = st.visible + st.in_flight + st.delayed;
            if st.oldest_sent_at_ms.is_some() {
                s.oldest_sent_at_ms = st.oldest_sent_at_ms;
                s.oldest_from = Some("queue".into());
            }
        }
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    }
    // The source queue is never received from here: a receive counts toward
    // its maxReceiveCount and hides the message from the consumers.
    if which == QueueSide::DeadLetter && peek && s.oldest_sent_at_ms.is_none() && s.depth > 0 {
        match super::dlq::peek_oldest(queue, &ScanOptions::peek()).await {
            Ok(oldest) => {
                s.oldest_sent_at_ms = oldest;
                s.oldest_from = oldest.map(|_| "peek".into());
            }
            Err(e) => s.error = Some(format!("reading the DLQ for its oldest message: {e}")),
        }
    }
    s.oldest_age_ms = s.oldest_sent_at_ms.map(|t| (now_ms - t).max(0));
    s
}

/// Reads the figures of `queues` (name, queue pair) and `store`; the caller
/// adds the allowlist.
pub async fn status(
    queues: &[(&str, &dyn EventQueue)],
    store: &dyn DispatchStore,
    clock: &dyn Clock,
    opts: &StatusOptions,
) -> StatusReport {
    let now = clock.now_ms();
    let mut out = Vec::new();
    for (name, q) in queues {
        out.push(QueueStatus {
            name: (*name).to_owned(),
            source: side(*q, QueueSide::Source, now, opts.peek_dlq).await,
            dead_letter: side(*q, QueueSide::DeadLetter, now, opts.peek_dlq).await,
        });
    }
    let since_ms = now - opts.window.as_millis() as i64;
    let (counts, error) = match store.outcome_counts(since_ms, now).await {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    StatusReport {
        generated_at_ms: now,
        queues: out,
        dispatches: DispatchWindow { since_ms, window_secs: opts.window.as_secs(), counts, error },
        allowlist: None,
    }
}

/// What `crcr status` prints.
pub fn render_status(r: &StatusReport) -> String {
    let mut out = format!("crcr status at {}\n\n", format_time(r.generated_at_ms));
    let mut t = Table::new(["QUEUE", "DEPTH", "VISIBLE", "IN FLIGHT", "DELAYED", "OLDEST"]);
    for q in &r.queues {
        for (label, s) in [(q.name.clone(), &q.source), (format!("{}-dlq", q.name), &q.dead_letter)] {
            if let Some(e) = &s.error {
                t.row([label, "?".into(), "?".into(), "?".into(), "?".into(), format!("error: {e}")]);
                continue;
            }
            let oldest = match (s.oldest_age_ms, s.depth) {
                (Some(age), _) => format!("{} ago", format_age(age)),
                (None, 0) => "-".into(),
                (None, _) => "n/a (CloudWatch ApproximateAgeOfOldestMessage)".into(),
            };
            t.row([
                label,
                s.depth.to_string(),
                s.visible.to_string(),
                s.in_flight.to_string(),
                s.delayed.to_string(),
                oldest,
            ]);
        }
    }
    out.push_str(&t.render());
    out.push_str(&format!(
        "\ndispatches written in the last {}:\n",
        format_age(r.dispatches.window_secs as i64 * 1000)
    ));
    match (&r.dispatches.counts, &r.dispatches.error) {
        (Some(c), _) => out.push_str(&format!(
            "  dispatched {}  failed {}  pending {} (in progress {}, waiting {})\n",
            c.dispatched,
            c.failed,
            c.pending,
            c.in_progress,
            c.pending - c.in_progress.min(c.pending)
        )),
        (None, Some(e)) => out.push_str(&format!("  error: {e}\n")),
        (None, None) => out.push_str("  unknown\n"),
    }
    match &r.allowlist {
        None => out.push_str("\nallowlist: not configured (CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL)\n"),
        Some(a) => match (&a.summary, &a.error) {
            (Some(s), _) => out.push_str(&format!(
                "\nallowlist: version {} from {} ({} repositories: {})\n",
                s.version,
                a.source,
                s.repos,
                s.levels_text()
            )),
            (None, e) => out.push_str(&format!(
                "\nallowlist: {} cannot be read: {}\n",
                a.source,
                e.as_deref().unwrap_or("unknown error")
            )),
        },
    }
    out
}
