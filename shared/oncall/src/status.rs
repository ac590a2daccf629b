//! `crcr status`: queue depths and oldest messages, dispatch outcomes and
//! callbacks over a recent window, the HUD and check-run outbox backlogs, and the
//! allowlist. Each section is read on its own: one that cannot be read
//! carries its error and the others are still shown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crcr_core::lifecycle::{CallbackCounts, JobStore};
use crcr_core::ports::{Clock, DispatchCounts, DispatchStore, EventQueue, QueueSide};

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

/// Callbacks the reconciler applied within the window (from the job
/// store; see [`CallbackCounts`] for what is and is not counted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackWindow {
    pub since_ms: i64,
    pub window_secs: u64,
    pub counts: Option<CallbackCounts>,
    pub error: Option<String>,
}

/// The HUD outbox: results accepted from downstream CI not yet taken by HUD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HudOutboxStatus {
    /// Items pending (never sent, or HUD answered 5xx / nothing so far).
    pub pending: u64,
    /// When the oldest pending item was created (ms since epoch).
    pub oldest_created_at_ms: Option<i64>,
    /// Its age at `generated_at_ms`: how far behind HUD is.
    pub oldest_age_ms: Option<i64>,
    /// Items parked as failed (HUD kept failing them): `crcr hud retry`.
    #[serde(default)]
    pub failed: u64,
    pub error: Option<String>,
}

/// Upstream check runs (issue 4) waiting for GitHub: the check-run outbox
/// items still pending (never sent at their current version, or GitHub
/// answered 5xx / rate limit so far).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRunOutboxStatus {
    /// Pending items, counted up to [`CHECK_RUN_COUNT_LIMIT`].
    pub pending: u64,
    /// More than [`CHECK_RUN_COUNT_LIMIT`] are pending.
    pub more: bool,
    /// When the oldest pending item was created (ms since epoch).
    pub oldest_created_at_ms: Option<i64>,
    /// Its age at `generated_at_ms`.
    pub oldest_age_ms: Option<i64>,
    pub error: Option<String>,
}

/// Pending check-run items `crcr status` reads at most (oldest first).
pub const CHECK_RUN_COUNT_LIMIT: usize = 1000;

/// The allowlist the relay is configured with (`CRCR_ALLOWLIST_FILE` or
/// `CRCR_ALLOWLIST_URL`), as `crcr status` itself read it at `read_at_ms`.
/// The relay reloads it every `CRCR_ALLOWLIST_TTL_SECS` (and keeps its last
/// good one when a reload fails), so the version a running relay holds can
/// lag by that long; the relay's own loaded version and load time are in its
/// `allowlist loaded version=...` log line and the `AllowlistLoaded` metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowlistStatus {
    /// The file path or URL it was read from.
    pub source: String,
    /// When `crcr status` read it (ms since epoch).
    pub read_at_ms: i64,
    pub summary: Option<AllowlistSummary>,
    pub error: Option<String>,
}

/// What `crcr status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub generated_at_ms: i64,
    pub queues: Vec<QueueStatus>,
    pub dispatches: DispatchWindow,
    /// `None` when no job store is configured (AWS without `CRCR_JOBS_TABLE`).
    pub callbacks: Option<CallbackWindow>,
    /// `None` when no job store is configured.
    pub hud_outbox: Option<HudOutboxStatus>,
    /// `None` when no job store is configured.
    #[serde(default)]
    pub check_runs: Option<CheckRunOutboxStatus>,
    pub allowlist: Option<AllowlistStatus>,
    /// Allowlisted targets whose breaker is open or paused (`None`: not
    /// read, e.g. no allowlist).
    #[serde(default)]
    pub paused_targets: Option<PausedTargets>,
}

/// Targets not dispatched to ([`crcr_core::breaker`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedTargets {
    pub targets: Vec<super::targets::TargetLine>,
    pub error: Option<String>,
}

impl StatusReport {
    /// Whether any section could not be read.
    pub fn has_errors(&self) -> bool {
        self.queues.iter().any(|q| q.source.error.is_some() || q.dead_letter.error.is_some())
            || self.dispatches.error.is_some()
            || self.callbacks.as_ref().is_some_and(|c| c.error.is_some())
            || self.hud_outbox.as_ref().is_some_and(|h| h.error.is_some())
            || self.check_runs.as_ref().is_some_and(|c| c.error.is_some())
            || self.allowlist.as_ref().is_some_and(|a| a.error.is_some())
            || self.paused_targets.as_ref().is_some_and(|p| p.error.is_some())
    }
}

/// How `status` reads.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Dispatch outcomes and callbacks over this window (default 1 h).
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

/// The job store `crcr status` reads callbacks and the HUD outbox from:
/// the SQLite file at `database` (which must exist), or with `aws` the
/// DynamoDB table named by `CRCR_JOBS_TABLE` (`None` when it is not set;
/// `CRCR_AWS_ENDPOINT_URL` for an emulator; usual credential chain).
pub async fn job_store(
    aws: bool,
    database: &std::path::Path,
    env: &crcr_core::config::Env<'_>,
) -> Result<Option<Box<dyn JobStore>>, super::backend::BackendError> {
    if aws {
        let Some(table) = env.opt("CRCR_JOBS_TABLE") else {
            return Ok(None);
        };
        let sdk = crcr_aws::sdk_config(env.opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
        return Ok(Some(Box::new(crcr_aws::DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), table))));
    }
    let db = super::backend::open_database(database)?;
    Ok(Some(Box::new(crcr_embedded::sqlite::SqliteJobStore::new(db))))
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

/// Reads the figures of `queues` (name, queue pair), `store` and `jobs`
/// (callbacks and HUD outbox, when given); the caller adds the allowlist.
pub async fn status(
    queues: &[(&str, &dyn EventQueue)],
    store: &dyn DispatchStore,
    jobs: Option<&dyn JobStore>,
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
    let (callbacks, hud_outbox, check_runs) = match jobs {
        None => (None, None, None),
        Some(jobs) => {
            let callbacks = match jobs.callback_counts(since_ms).await {
                Ok(c) => CallbackWindow { since_ms, window_secs: opts.window.as_secs(), counts: Some(c), error: None },
                Err(e) => CallbackWindow {
                    since_ms,
                    window_secs: opts.window.as_secs(),
                    counts: None,
                    error: Some(e.to_string()),
                },
            };
            let hud = match jobs.outbox_backlog().await {
                Ok(b) => HudOutboxStatus {
                    pending: b.pending,
                    oldest_created_at_ms: b.oldest_created_at_ms,
                    oldest_age_ms: b.oldest_created_at_ms.map(|t| (now - t).max(0)),
                    failed: b.failed,
                    error: None,
                },
                Err(e) => HudOutboxStatus { error: Some(e.to_string()), ..Default::default() },
            };
            let checks = match jobs.pending_check_runs(CHECK_RUN_COUNT_LIMIT + 1).await {
                Ok(items) => {
                    let oldest = items.first().map(|c| c.created_at_ms);
                    CheckRunOutboxStatus {
                        pending: items.len().min(CHECK_RUN_COUNT_LIMIT) as u64,
                        more: items.len() > CHECK_RUN_COUNT_LIMIT,
                        oldest_created_at_ms: oldest,
                        oldest_age_ms: oldest.map(|t| (now - t).max(0)),
                        error: None,
                    }
                }
                Err(e) => CheckRunOutboxStatus { error: Some(e.to_string()), ..Default::default() },
            };
            (Some(callbacks), Some(hud), Some(checks))
        }
    };
    StatusReport {
        generated_at_ms: now,
        queues: out,
        dispatches: DispatchWindow { since_ms, window_secs: opts.window.as_secs(), counts, error },
        callbacks,
        hud_outbox,
        check_runs,
        allowlist: None,
        paused_targets: None,
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
            "  dispatched {}  failed {}  paused {}  pending {} (in progress {}, waiting {})\n",
            c.dispatched,
            c.failed,
            c.paused,
            c.pending,
            c.in_progress,
            c.pending - c.in_progress.min(c.pending)
        )),
        (None, Some(e)) => out.push_str(&format!("  error: {e}\n")),
        (None, None) => out.push_str("  unknown\n"),
    }
    match &r.callbacks {
        None => out.push_str("\ncallbacks: no job store (on AWS set CRCR_JOBS_TABLE)\n"),
        Some(c) => {
            out.push_str(&format!("\ncallbacks applied in the last {}:\n", format_age(c.window_secs as i64 * 1000)));
            match (&c.counts, &c.error) {
                (Some(n), _) => out.push_str(&format!(
                    "  in_progress {}  completed {}  timed out {}  lifecycle violations {}\n",
                    n.in_progress, n.completed, n.timed_out, n.violations
                )),
                (None, e) => out.push_str(&format!("  error: {}\n", e.as_deref().unwrap_or("unknown"))),
            }
        }
    }
    if let Some(h) = &r.hud_outbox {
        let failed = if h.failed > 0 {
            format!("; {} failed (HUD kept refusing them: crcr hud retry)", h.failed)
        } else {
            String::new()
        };
        match (&h.error, h.oldest_age_ms) {
            (Some(e), _) => out.push_str(&format!("HUD outbox: error: {e}\n")),
            (None, Some(age)) => {
                out.push_str(&format!("HUD outbox: {} pending, oldest {} ago{failed}\n", h.pending, format_age(age)))
            }
            (None, None) => out.push_str(&format!("HUD outbox: {} pending{failed}\n", h.pending)),
        }
    }
    if let Some(c) = &r.check_runs {
        let more = if c.more { "+" } else { "" };
        match (&c.error, c.oldest_age_ms) {
            (Some(e), _) => out.push_str(&format!("check runs: error: {e}\n")),
            (None, Some(age)) => out.push_str(&format!(
                "check runs: {}{more} pending for GitHub, oldest {} ago\n",
                c.pending,
                format_age(age)
            )),
            (None, None) => out.push_str(&format!("check runs: {} pending for GitHub\n", c.pending)),
        }
    }
    match &r.allowlist {
        None => out.push_str("\nallowlist: not configured (CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL)\n"),
        Some(a) => match (&a.summary, &a.error) {
            (Some(s), _) => out.push_str(&format!(
                "\nallowlist: version {} from {} ({} repositories: {}), as read by crcr status at {}\n  \
                 (a running relay reloads it every CRCR_ALLOWLIST_TTL_SECS; its loaded version: log \
                 `allowlist loaded`, metric AllowlistLoaded)\n",
                s.version,
                a.source,
                s.repos,
                s.levels_text(),
                format_time(a.read_at_ms)
            )),
            (None, e) => out.push_str(&format!(
                "\nallowlist: {} cannot be read: {}\n",
                a.source,
                e.as_deref().unwrap_or("unknown error")
            )),
        },
    }
    match &r.paused_targets {
        None => {}
        Some(PausedTargets { error: Some(e), .. }) => out.push_str(&format!("targets: breakers cannot be read: {e}\n")),
        Some(PausedTargets { targets, .. }) if targets.is_empty() => {
            out.push_str("targets: none paused (crcr target list)\n")
        }
        Some(PausedTargets { targets, .. }) => {
            out.push_str(&format!("targets: {} paused, not dispatched to (crcr target list):\n", targets.len()));
            for t in targets {
                let why = t.breaker.open.as_ref().map(|o| o.reason.as_str()).unwrap_or_default();
                out.push_str(&format!("  {} ({}): {why}\n", t.repo, t.state));
            }
        }
    }
    out
}
