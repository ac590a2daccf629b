//! Missed-delivery recovery: ask GitHub to redeliver the App's webhook
//! deliveries that never reached the relay.
//!
//! GitHub does not retry a failed webhook delivery by itself; the App's
//! delivery log is the only way to get one again (GitHub docs, "Handling
//! failed webhook deliveries"). A run:
//!
//! 1. reads the log newest → oldest (`GET /app/hook/deliveries`, App JWT,
//!    [`RedeliverSettings::per_page`] a page, cursor paging) down to the
//!    scan's lower bound: where the last complete run stopped (minus
//!    [`CURSOR_OVERLAP`]) or, on a first run or with `--since`, that far
//!    back (default [`DEFAULT_SINCE`]) — never beyond GitHub's 3-day window
//!    ([`GITHUB_WINDOW`] minus [`WINDOW_MARGIN`]);
//! 2. groups the deliveries by GUID (`X-GitHub-Delivery`: the original and
//!    its redeliveries share it). A GUID counts as delivered when any of its
//!    attempts got a 2xx `status_code`. A GUID of an event the relay does
//!    not act on ([`crate::dispatch::is_acted_on`]: ingest answers it 200
//!    ignored) is skipped;
//! 3. asks GitHub to redeliver (`POST /app/hook/deliveries/{id}/attempts`)
//!    the newest delivery of each GUID that was not delivered, oldest GUID
//!    first (events reach the relay in their original order), once per run,
//!    waiting [`RedeliverSettings::request_interval`] between requests
//!    (GitHub, "Best practices for using the REST API": wait at least one
//!    second between mutative requests);
//! 4. remembers, in the [`StateStore`] under [`STATE_KEY`], how far the log
//!    was read and which GUIDs it asked for (attempts, delivery id). A GUID
//!    whose redelivery has not shown up yet is not asked for again; one
//!    whose redelivery failed again is asked for again, at most
//!    [`RedeliverSettings::max_attempts`] times in all (default 3: a
//!    receiver that refused the same event three times will refuse it a
//!    fourth; on-call takes it from there, see `docs/RUNBOOK.md`).
//!
//! A run that cannot finish loses nothing and does not start over:
//!
//! - a scan stopped by the page limit, the time budget, a full waiting list
//!   or an error stores GitHub's cursor of the first page it did not read;
//!   the next run reads on from there first (older deliveries age out of
//!   the 3 days first), then the newest pages down to where that scan
//!   began. A busy log cannot starve older failures;
//! - failed GUIDs found but not asked for (request limit, time budget, a
//!   rate limit) wait in the state ([`MAX_PENDING`] at most: a scan stops
//!   before it could find more) and are asked for by the next run with
//!   what it finds, oldest first, without reading their pages again (a
//!   scan stops at half [`RedeliverSettings::time_budget`] when there is
//!   something to ask for, so the requests get the other half).
//!
//! The cursor (`scanned_to`) advances once a scan reached its lower bound.
//! The GUIDs already asked for are saved after each request, so a run that
//! dies never asks twice. Two runs at once (a CLI run during `crcr serve`'s
//! schedule) may ask for one GUID twice; the relay's per-delivery
//! idempotency makes that harmless. A scheduled run that could not finish
//! sets [`crate::metrics::REDELIVER_INCOMPLETE`] (alarm
//! `redeliver-incomplete`).
//!
//! Runs from `crcr redeliver`, every `CRCR_REDELIVER_INTERVAL_SECS` inside
//! `crcr serve` ([`run_periodic`]), and on AWS from a scheduled Lambda
//! ([`Redeliverer::run_scheduled`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::dispatch::is_acted_on;
use crate::ports::{format_time, Clock, GitHubError, StateStore, StoreError, SystemClock};
use crate::progress::{NoProgress, Progress};

/// How far back GitHub keeps and redelivers deliveries: 3 days (GitHub
/// docs, "Redelivering webhooks").
pub const GITHUB_WINDOW: Duration = Duration::from_secs(3 * 86_400);
/// A run stays this far inside [`GITHUB_WINDOW`]: a delivery listed at
/// 2 days 23:59 would be refused (422) by the time it is asked for.
pub const WINDOW_MARGIN: Duration = Duration::from_secs(10 * 60);
/// How far back a run looks when no cursor is stored and `--since` is not given.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(6 * 3600);
/// A run that starts from the stored cursor re-reads this much before it,
/// in case GitHub lists a delivery slightly out of `delivered_at` order.
pub const CURSOR_OVERLAP: Duration = Duration::from_secs(10 * 60);
/// The [`StateStore`] key of the stored cursor and requested GUIDs.
pub const STATE_KEY: &str = "redeliver";
/// The version of the stored JSON value this code writes and reads.
pub const STATE_VERSION: u64 = 2;
/// At most this many requested GUIDs are remembered (oldest forgotten
/// first): about 100 bytes each.
pub const MAX_REMEMBERED: usize = 2000;
/// At most this many failed GUIDs wait in the state for a later run (about
/// 130 bytes each): a scan stops, to go on next run, before it could find
/// more. With [`MAX_REMEMBERED`] the stored value stays below ~350 KB,
/// inside DynamoDB's 400 KB item limit ("Service, account, and table
/// quotas in Amazon DynamoDB" → item size).
pub const MAX_PENDING: usize = 1000;

// ---------------------------------------------------------------- port

/// One entry of the App's delivery log ("Simple webhook delivery").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookDelivery {
    /// The delivery's id (what redelivery is asked for).
    pub id: u64,
    /// `X-GitHub-Delivery`, shared by the original and its redeliveries.
    pub guid: String,
    /// `delivered_at`, ms since the epoch.
    pub delivered_at_ms: i64,
    pub redelivery: bool,
    /// GitHub's text (`OK`, `Invalid HTTP Response: 503`, ...).
    pub status: String,
    /// The receiver's HTTP status (0: nothing answered).
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
}

impl HookDelivery {
    /// Whether this attempt reached the receiver (a 2xx answer).
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// One page of the delivery log, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPage {
    pub deliveries: Vec<HookDelivery>,
    /// The `cursor` of the `Link: <...>; rel="next"` URL; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A failed call to the delivery log, classified for the run.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// 401, or a 403 that is not a rate limit: GitHub refused the App JWT.
    #[error(
        "GitHub refused the App's credentials ({status}: {message}). The App's webhook delivery log needs a JWT \
         of the App that owns the webhook (CRCR_GITHUB_APP_ID with its private key, and a correct clock): no \
         App permission grants it and installation tokens do not work (GitHub docs, \"REST API endpoints for \
         GitHub App webhooks\")"
    )]
    Refused { status: u16, message: String },
    /// 404: no delivery with that id (or the App has no webhook).
    #[error("not found (404): {0}")]
    NotFound(String),
    /// 422 (e.g. older than 3 days) and other 4xx: asking again will not help.
    #[error("GitHub rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// 5xx, timeouts, rate limits, unreadable answers: a later run may succeed.
    /// `retry_after` is GitHub's own hint when it gave one.
    #[error("transient GitHub error: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
}

impl From<GitHubError> for HookError {
    fn from(e: GitHubError) -> Self {
        match e {
            GitHubError::Transient { reason, retry_after } => HookError::Transient { reason, retry_after },
            GitHubError::Deferred { reason, retry_after } => {
                HookError::Transient { reason, retry_after: Some(retry_after) }
            }
            GitHubError::Permanent { status: 404, reason } => HookError::NotFound(reason),
            GitHubError::Permanent { status: 403, reason } => HookError::Refused { status: 403, message: reason },
            GitHubError::Permanent { status, reason } => HookError::Rejected { status, message: reason },
        }
    }
}

/// The App's webhook delivery log (GitHub docs, "REST API endpoints for
/// GitHub App webhooks"); both calls authenticate with the App JWT.
#[async_trait]
pub trait HookDeliveries: Send + Sync {
    /// `GET /app/hook/deliveries?per_page=N[&cursor=C]`: one page (N in
    /// 1..=100), newest first.
    async fn list_page(&self, per_page: u8, cursor: Option<&str>) -> Result<DeliveryPage, HookError>;
    /// `POST /app/hook/deliveries/{delivery_id}/attempts`: GitHub answers
    /// 202 and redelivers shortly after, as a new delivery of the same GUID.
    async fn redeliver(&self, delivery_id: u64) -> Result<(), HookError>;
}

// ---------------------------------------------------------------- settings and state

/// Limits of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedeliverSettings {
    /// Deliveries per page (GitHub: 1..=100).
    pub per_page: u8,
    /// Pages read at most; a run that stops here is incomplete (the cursor stays).
    pub max_pages: usize,
    /// Redeliveries asked for at most; the rest wait for the next run.
    pub max_redeliveries: usize,
    /// Redelivery requests per GUID over all runs (the first included).
    pub max_attempts: u32,
    /// Pause between two redelivery requests (GitHub asks for ≥ 1 s between
    /// mutative requests).
    pub request_interval: Duration,
    /// Wall time a run may take; what is left waits for the next run. The
    /// default (90 s; checked between requests, each of which may take up
    /// to GitHub's 10 s) fits the reconciler Lambda's default 120 s timeout.
    pub time_budget: Duration,
}

impl Default for RedeliverSettings {
    fn default() -> Self {
        Self {
            per_page: 100,
            max_pages: 300,
            max_redeliveries: 200,
            max_attempts: 3,
            request_interval: Duration::from_secs(1),
            time_budget: Duration::from_secs(90),
        }
    }
}

/// What one run is asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Look back this far instead of from the stored cursor (capped at the
    /// 3-day window). `None`: from the cursor, or [`DEFAULT_SINCE`] without one.
    pub since: Option<Duration>,
    /// Report what would be asked for; ask for nothing and store nothing.
    pub dry_run: bool,
}

/// The stored value (JSON, versioned): how far the log was read, where an
/// interrupted scan goes on, the GUIDs asked for and those found but not
/// asked for yet. Version 1 (no `resume`, no `pending`) is read as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredState {
    version: u64,
    /// `delivered_at` (ms) of the newest delivery of the log read down to
    /// the previous bound: everything older (minus [`CURSOR_OVERLAP`]) was
    /// scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scanned_to_ms: Option<i64>,
    /// A scan that stopped before its lower bound (page, time or pending
    /// limit, or an error): the next run reads on from here first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<Resume>,
    /// GUID → what was asked for it.
    #[serde(default)]
    requested: BTreeMap<String, Requested>,
    /// GUID → its newest failed attempt, found by a scan and not asked for
    /// yet (request limit, time budget, a rate limit): asked for by
    /// the next run, oldest first, without reading its page again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pending: BTreeMap<String, Pending>,
}

/// Where an interrupted scan of `[lower_ms, upper_ms]` goes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Resume {
    /// GitHub's `cursor` of the first page not read (GitHub's cursors name
    /// a delivery, so the page is the same later, minus what aged out).
    cursor: String,
    /// The scan's lower bound (ms).
    lower_ms: i64,
    /// `delivered_at` (ms) of the newest delivery the scan read: once the
    /// scan reaches `lower_ms`, the log is scanned up to here.
    upper_ms: i64,
    /// `delivered_at` (ms) of the oldest delivery it read so far.
    read_to_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Requested {
    /// Redelivery requests made for the GUID.
    n: u32,
    /// The delivery id last asked for.
    id: u64,
    /// When (ms since the epoch, relay clock).
    at_ms: i64,
    /// A 2xx attempt of the GUID was listed since: its older failed
    /// attempts, read again by a later scan, are not asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ok: bool,
}

/// A failed GUID left for a later run: its newest attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    id: u64,
    /// `delivered_at` (ms).
    at_ms: i64,
    event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    code: u16,
    /// Failed attempts listed when it was found.
    failed: usize,
}

/// Errors that stop a run before it reports.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error("redeliver state: {0}")]
    State(#[from] StoreError),
    #[error(
        "redeliver state {STATE_KEY:?} has version {found}, this crcr reads version {STATE_VERSION}: \
         upgrade crcr (nothing was changed)"
    )]
    StateVersion { found: u64 },
}

// ---------------------------------------------------------------- report

/// What a run did about one GUID that was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum GuidOutcome {
    /// GitHub accepted the redelivery request (202); `attempt` counts the
    /// requests for this GUID over all runs.
    Requested { attempt: u32 },
    /// Dry run: this request would have been made.
    WouldRequest { attempt: u32 },
    /// Asked for before and no newer attempt is listed yet.
    AlreadyRequested,
    /// Asked for [`RedeliverSettings::max_attempts`] times already.
    GaveUp { attempts: u32 },
    /// Its newest attempt is older than `--since` or the 3-day window.
    TooOld,
    /// Not asked for in this run (limit, time budget, or the run stopped).
    Deferred,
    /// The request failed.
    Error { error: String },
}

/// One GUID without a successful attempt, with its newest attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuidRow {
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    /// The newest delivery's id (the one asked for).
    pub delivery_id: u64,
    pub delivered_at_ms: i64,
    pub status_code: u16,
    /// Failed attempts listed.
    pub attempts: usize,
    #[serde(flatten)]
    pub outcome: GuidOutcome,
}

/// Deliveries between `from_ms` and `to_ms` (ms, `delivered_at`) that a
/// scan has not read yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Unscanned {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What a run read and did. `complete` runs advanced the cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedeliverReport {
    pub dry_run: bool,
    /// The scan's lower bound (ms since the epoch).
    pub from_ms: i64,
    /// Whether the lower bound came from the stored cursor.
    pub from_cursor: bool,
    /// Whether the run first went on with a scan an earlier run could not
    /// finish (from where it stopped, not from the newest page).
    pub resumed: bool,
    /// Pages read.
    pub pages: usize,
    /// Deliveries listed on those pages.
    pub deliveries: usize,
    /// GUIDs with a newest attempt at or after `from_ms`.
    pub guids: usize,
    /// Of those, GUIDs without a 2xx attempt.
    pub failed: usize,
    /// Redelivery requests GitHub accepted (dry run: that would be made).
    pub redelivered: usize,
    /// GUIDs with a 2xx attempt that failed before (on the pages read, or
    /// asked for by an earlier run): nothing to do.
    pub skipped_ok: usize,
    /// Failed GUIDs already asked for, with no newer attempt listed.
    pub skipped_requested: usize,
    /// Failed GUIDs asked for `max_attempts` times already.
    pub skipped_gave_up: usize,
    /// Failed GUIDs outside `--since` or the 3-day window.
    pub skipped_too_old: usize,
    /// Failed GUIDs of events the relay does not act on
    /// ([`crate::dispatch::is_acted_on`]: ingest would answer them 200
    /// ignored): not asked for.
    pub skipped_ignored: usize,
    /// Failed GUIDs found and not asked for yet (limit, budget, rate limit),
    /// stored for the next run, which asks for them with what it finds,
    /// oldest first.
    pub pending: usize,
    /// The part of the log a scan could not read yet (page, time or
    /// pending limit, or an error): the next run reads it first.
    pub unscanned: Option<Unscanned>,
    /// Every run reads to its lower bound and asks for everything it found;
    /// `false` when it stopped early (error, limit, budget): what it left
    /// is in `unscanned` and `pending`, and the next run starts there.
    pub complete: bool,
    /// The stored cursor after the run (ms), when one is stored.
    pub cursor_ms: Option<i64>,
    /// GUIDs without a successful attempt, oldest first.
    pub rows: Vec<GuidRow>,
    /// What went wrong (listing pages, requests); empty when nothing did.
    pub errors: Vec<String>,
}

// ---------------------------------------------------------------- the job

/// Missed-delivery recovery, wired to its ports.
pub struct Redeliverer {
    pub deliveries: Arc<dyn HookDeliveries>,
    pub state: Arc<dyn StateStore>,
    pub clock: Arc<dyn Clock>,
    pub settings: RedeliverSettings,
}

/// Per-GUID view of the deliveries read.
struct GuidView<'a> {
    newest: &'a HookDelivery,
    delivered: bool,
    failed_attempts: usize,
}

impl Redeliverer {
    /// With the system clock and [`RedeliverSettings::default`].
    pub fn new(deliveries: Arc<dyn HookDeliveries>, state: Arc<dyn StateStore>) -> Self {
        Self { deliveries, state, clock: Arc::new(SystemClock), settings: RedeliverSettings::default() }
    }

    async fn load_state(&self) -> Result<StoredState, RedeliverError> {
        let Some(text) = self.state.get(STATE_KEY).await? else {
            return Ok(StoredState { version: STATE_VERSION, ..Default::default() });
        };
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        match version {
            Some(found) if found > STATE_VERSION => Err(RedeliverError::StateVersion { found }),
            _ => Ok(serde_json::from_str::<StoredState>(&text).unwrap_or_else(|e| {
                tracing::warn!(error = %e, key = STATE_KEY, "redeliver state unreadable; starting afresh");
                StoredState { version: STATE_VERSION, ..Default::default() }
            })),
        }
    }

    async fn save_state(&self, state: &StoredState) -> Result<(), RedeliverError> {
        let text = serde_json::to_string(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(self.state.put(STATE_KEY, &text).await?)
    }

    /// One run (see the module docs). `Err` only when the state cannot be
    /// read or written; GitHub's failures are in the report's `errors`.
    pub async fn run(&self, opts: &RunOptions) -> Result<RedeliverReport, RedeliverError> {
        self.run_with_progress(opts, &mut NoProgress).await
    }

    /// [`Redeliverer::run`], reporting to `progress` in two phases: reading
    /// the delivery log (`start(None)`, `inc(1)` per page, a `message` with
    /// the pages and deliveries read), then the failed GUIDs
    /// (`start(Some(n))`, `inc(1)` per GUID decided: asked for, skipped or
    /// left for the next run, one second apart when asked for, a `message`
    /// with the tallies); `finish` at the end.
    pub async fn run_with_progress(
        &self,
        opts: &RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<RedeliverReport, RedeliverError> {
        let started = tokio::time::Instant::now();
        let s = &self.settings;
        let now = self.clock.now_ms();
        let mut state = self.load_state().await?;
        // The cursor as stored, for a dry run's report (it stores nothing).
        let stored_cursor = state.scanned_to_ms;
        let ms = |d: Duration| d.as_millis() as i64;
        let window_floor = now - ms(GITHUB_WINDOW.saturating_sub(WINDOW_MARGIN));
        let since_floor = (now - ms(opts.since.unwrap_or(DEFAULT_SINCE))).max(window_floor);
        let cursor_floor = state.scanned_to_ms.filter(|_| opts.since.is_none()).map(|c| c - ms(CURSOR_OVERLAP));
        let (top_lower, too_old_floor) = match cursor_floor {
            Some(c) => (c.max(window_floor), window_floor),
            None => (since_floor, since_floor),
        };
        // An interrupted scan goes on first (older deliveries age out of
        // GitHub's window first); then the newest pages, down to where
        // that scan started.
        let mut scanned_to = state.scanned_to_ms;
        let mut resume = state.resume.clone().filter(|_| opts.since.is_none());
        if let Some(r) = resume.as_ref().filter(|r| r.read_to_ms <= window_floor) {
            // All it had left to read has aged out of GitHub's window.
            scanned_to = scanned_to.max(Some(r.upper_ms));
            resume = None;
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(2);
        if let Some(r) = &resume {
            let lower = r.lower_ms.max(window_floor);
            segments.push(Segment {
                cursor: Some(r.cursor.clone()),
                lower,
                reach: lower,
                newest: Some(r.upper_ms),
                oldest: Some(r.read_to_ms),
            });
        }
        // Scanned before up to `reach`; read down to `CURSOR_OVERLAP` below it
        // when the run has pages left.
        let (reach, lower) = match (&resume, cursor_floor) {
            (Some(r), _) => (r.upper_ms.max(window_floor), (r.upper_ms - ms(CURSOR_OVERLAP)).max(window_floor)),
            (None, Some(_)) => (scanned_to.unwrap_or(top_lower), top_lower),
            (None, None) => (top_lower, top_lower),
        };
        segments.push(Segment { cursor: None, lower, reach, newest: None, oldest: None });
        let lower = segments.iter().map(|g| g.lower).min().unwrap_or(top_lower);
        let too_old_floor = too_old_floor.min(lower);
        let mut report = RedeliverReport {
            dry_run: opts.dry_run,
            from_ms: lower,
            from_cursor: cursor_floor.is_some_and(|c| c >= window_floor),
            resumed: resume.is_some(),
            ..Default::default()
        };

        // 1. Read the log, segment by segment, down to each lower bound.
        progress.start(None);
        let mut read: Vec<HookDelivery> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Failed deliveries of acted-on events read: a bound on the GUIDs
        // this run may add to `pending`.
        let mut found_failed = 0usize;
        let mut refused = false;
        // The scan leaves half the time budget to the requests when there
        // is anything to ask for.
        let scan_budget = |waiting: usize| if waiting > 0 { s.time_budget / 2 } else { s.time_budget };
        let mut new_resume: Option<Resume> = None;
        let mut scan_done = true;
        let mut i = 0;
        while i < segments.len() {
            let seg = segments[i].clone();
            let mut page_cursor = seg.cursor.clone();
            let (mut newest, mut oldest) = (seg.newest, seg.oldest);
            let (mut interrupted, mut cursor_refused) = (false, false);
            loop {
                let limit = if report.pages >= s.max_pages {
                    Some("page limit")
                } else if started.elapsed() > scan_budget(state.pending.len() + found_failed) {
                    Some("time budget")
                } else if state.pending.len() + found_failed + usize::from(s.per_page) > MAX_PENDING {
                    Some("too many failed deliveries waiting to be asked for")
                } else {
                    None
                };
                if limit.is_some() && oldest.is_some_and(|o| o <= seg.reach) {
                    // Stopped inside the overlap with what was scanned
                    // before: every delivery newer than that was read.
                    break;
                }
                if let Some(why) = limit {
                    report.errors.push(format!(
                        "stopped after {} page(s) ({} deliveries) before reaching {}: {why}; the next run goes on \
                         from there",
                        report.pages,
                        report.deliveries,
                        format_time(seg.lower)
                    ));
                    interrupted = true;
                    break;
                }
                let page = match self.deliveries.list_page(s.per_page, page_cursor.as_deref()).await {
                    Ok(page) => page,
                    Err(e @ (HookError::Rejected { .. } | HookError::NotFound(_)))
                        if seg.cursor.is_some() && page_cursor == seg.cursor =>
                    {
                        // GitHub no longer takes the stored cursor: read
                        // that part again from the newest page, all of it.
                        tracing::warn!(error = %e, "GitHub refused the stored redeliver cursor; scanning from the newest page");
                        let top = &mut segments[i + 1];
                        top.lower = top.lower.min(seg.lower);
                        top.reach = top.lower;
                        cursor_refused = true;
                        break;
                    }
                    Err(e) => {
                        refused = matches!(e, HookError::Refused { .. });
                        report.errors.push(format!("listing deliveries (page {}): {e}", report.pages + 1));
                        interrupted = true;
                        break;
                    }
                };
                report.pages += 1;
                progress.inc(1);
                let page_oldest = page.deliveries.iter().map(|d| d.delivered_at_ms).min();
                for d in page.deliveries {
                    if !seen.insert(d.id) {
                        continue;
                    }
                    report.deliveries += 1;
                    if !d.delivered() && d.delivered_at_ms >= seg.lower && is_acted_on(&d.event, d.action.as_deref()) {
                        found_failed += 1;
                    }
                    newest = newest.max(Some(d.delivered_at_ms));
                    read.push(d);
                }
                oldest = match (oldest, page_oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                progress.message(&format!("read {} page(s), {} deliveries", report.pages, report.deliveries));
                match (page_oldest, page.next_cursor) {
                    (Some(o), Some(next)) if o >= seg.lower => page_cursor = Some(next),
                    _ => break,
                }
            }
            if interrupted {
                scan_done = false;
                // The next run reads on from the first page not read; a scan
                // that read nothing simply starts again.
                if let (Some(cursor), Some(upper_ms)) = (page_cursor, newest) {
                    new_resume =
                        Some(Resume { cursor, lower_ms: seg.lower, upper_ms, read_to_ms: oldest.unwrap_or(upper_ms) });
                }
                break;
            }
            if !cursor_refused {
                // Read down to its lower bound: scanned up to its newest delivery.
                if let Some(up) = newest {
                    scanned_to = Some(scanned_to.map_or(up, |a| a.max(up)));
                }
            }
            i += 1;
        }

        // 2. Group by GUID.
        let mut by_guid: BTreeMap<&str, GuidView<'_>> = BTreeMap::new();
        for d in &read {
            let v = by_guid.entry(&d.guid).or_insert(GuidView { newest: d, delivered: false, failed_attempts: 0 });
            if d.id > v.newest.id {
                v.newest = d;
            }
            if d.delivered() {
                v.delivered = true;
            } else {
                v.failed_attempts += 1;
            }
        }
        let mut candidates: Vec<Candidate> = Vec::new();
        for (guid, v) in &by_guid {
            let at = v.newest.delivered_at_ms;
            if at >= lower {
                report.guids += 1;
            }
            if v.delivered {
                // Failed once, delivered since: on this run's pages, or asked for by an earlier run.
                let asked_before = match state.requested.get_mut(*guid) {
                    Some(r) if !r.ok => {
                        r.ok = true;
                        true
                    }
                    _ => false,
                };
                let was_pending = state.pending.remove(*guid).is_some();
                if asked_before || was_pending || (v.failed_attempts > 0 && at >= too_old_floor) {
                    report.skipped_ok += 1;
                }
                continue;
            }
            if !is_acted_on(&v.newest.event, v.newest.action.as_deref()) {
                // Ingest would answer it 200 ignored: nothing to recover.
                state.pending.remove(*guid);
                if at >= lower {
                    report.skipped_ignored += 1;
                }
                continue;
            }
            if state.requested.get(*guid).is_some_and(|r| r.ok) {
                // Delivered after a request (an older scan read the 2xx).
                state.pending.remove(*guid);
                continue;
            }
            if let Some(p) = state.pending.get_mut(*guid) {
                // Found by an earlier run: asked for below, as its newest attempt.
                if v.newest.id > p.id {
                    *p = Candidate::of(v).pending();
                }
                continue;
            }
            if at >= lower {
                report.failed += 1;
                candidates.push(Candidate::of(v));
            } else if at < too_old_floor {
                report.skipped_too_old += 1;
                report.rows.push(Candidate::of(v).row(GuidOutcome::TooOld));
            }
            // Between the window and the cursor: handled by an earlier run.
        }
        // Found by earlier runs and not asked for yet. They stay stored until
        // settled below, so a run cut off halfway loses none of them.
        for (guid, p) in state.pending.clone() {
            if by_guid.get(guid.as_str()).is_none_or(|v| v.newest.delivered_at_ms < lower) {
                report.guids += 1;
            }
            let c = Candidate::from_pending(guid, p);
            if c.delivered_at_ms < window_floor {
                state.pending.remove(&c.guid);
                report.skipped_too_old += 1;
                report.rows.push(c.row(GuidOutcome::TooOld));
            } else {
                report.failed += 1;
                candidates.push(c);
            }
        }
        candidates.sort_by_key(|c| (c.delivered_at_ms, c.id));

        // 3. Ask for redelivery.
        let candidates_n = candidates.len();
        progress.start(Some(candidates_n as u64));
        let mut asked = 0usize;
        let mut stop: Option<&'static str> = refused.then_some("GitHub refused the App's credentials");
        for (i, c) in candidates.into_iter().enumerate() {
            // The previous GUID is decided (each arm below ends with `continue` or falls through).
            if i > 0 {
                progress.inc(1);
                progress.message(&tally(&report));
            }
            let guid = c.guid.as_str();
            let previous = state.requested.get(guid).cloned();
            // Settled unless deferred or failed for a reason a later run may not meet.
            state.pending.remove(guid);
            if previous.as_ref().is_some_and(|p| p.id >= c.id) {
                report.skipped_requested += 1;
                report.rows.push(c.row(GuidOutcome::AlreadyRequested));
                continue;
            }
            let attempt = previous.as_ref().map_or(1, |p| p.n + 1);
            if attempt > s.max_attempts {
                report.skipped_gave_up += 1;
                tracing::warn!(guid, delivery_id = c.id, event = %c.event, attempts = attempt - 1,
                    metric = "redeliver_gave_up", "redelivery keeps failing; not asking again");
                report.rows.push(c.row(GuidOutcome::GaveUp { attempts: attempt - 1 }));
                continue;
            }
            if stop.is_none() && (asked >= s.max_redeliveries || started.elapsed() > s.time_budget) {
                stop = Some("redelivery limit or time budget reached");
            }
            if stop.is_some() {
                state.pending.insert(c.guid.clone(), c.pending());
                report.rows.push(c.row(GuidOutcome::Deferred));
                continue;
            }
            if opts.dry_run {
                report.redelivered += 1;
                report.rows.push(c.row(GuidOutcome::WouldRequest { attempt }));
                continue;
            }
            if asked > 0 {
                tokio::time::sleep(s.request_interval).await;
            }
            asked += 1;
            match self.deliveries.redeliver(c.id).await {
                Ok(()) => {
                    tracing::info!(guid, delivery_id = c.id, event = %c.event, attempt, "asked GitHub to redeliver");
                    report.redelivered += 1;
                    state.requested.insert(c.guid.clone(), Requested { n: attempt, id: c.id, at_ms: now, ok: false });
                    self.save_state(&state).await?;
                    report.rows.push(c.row(GuidOutcome::Requested { attempt }));
                }
                Err(e) => {
                    tracing::warn!(guid, delivery_id = c.id, error = %e, "redelivery request failed");
                    match &e {
                        HookError::Transient { retry_after, .. } => {
                            state.pending.insert(c.guid.clone(), c.pending());
                            if retry_after.is_some() {
                                stop = Some("rate limited by GitHub");
                            }
                        }
                        HookError::Refused { .. } => {
                            state.pending.insert(c.guid.clone(), c.pending());
                            stop = Some("GitHub refused the App's credentials");
                        }
                        // Asking again will not help: count it as given up.
                        HookError::NotFound(_) | HookError::Rejected { .. } => {
                            state.requested.insert(
                                c.guid.clone(),
                                Requested { n: s.max_attempts, id: c.id, at_ms: now, ok: false },
                            );
                        }
                    }
                    report.errors.push(format!("redelivering {guid} (delivery {}): {e}", c.id));
                    report.rows.push(c.row(GuidOutcome::Error { error: e.to_string() }));
                }
            }
        }
        if candidates_n > 0 {
            progress.inc(1);
            progress.message(&tally(&report));
        }
        progress.finish();
        if let Some(why) = stop.filter(|_| !refused) {
            tracing::warn!(reason = why, "redeliver run stopped asking; the rest waits for the next run");
        }

        // 4. Remember. A `--since` run that does not reach back to the
        // stored cursor (or to an interrupted scan's bound) leaves both as
        // they are: the stretch between them and its bound is still unread.
        let covers = opts.since.is_none()
            || (state.scanned_to_ms.is_none_or(|c| lower <= c - ms(CURSOR_OVERLAP))
                && state.resume.as_ref().is_none_or(|r| lower <= r.lower_ms));
        if covers {
            state.resume = new_resume;
            state.scanned_to_ms = scanned_to;
        }
        report.pending = state.pending.len();
        report.unscanned = state.resume.as_ref().map(|r| Unscanned { from_ms: r.lower_ms, to_ms: r.read_to_ms });
        report.complete = scan_done && state.pending.is_empty();
        if !opts.dry_run {
            let forget_before = now - ms(GITHUB_WINDOW);
            state.requested.retain(|_, r| r.at_ms >= forget_before);
            if state.requested.len() > MAX_REMEMBERED {
                let mut by_age: Vec<(i64, String)> =
                    state.requested.iter().map(|(g, r)| (r.at_ms, g.clone())).collect();
                by_age.sort();
                for (_, g) in by_age.into_iter().take(state.requested.len() - MAX_REMEMBERED) {
                    state.requested.remove(&g);
                }
            }
            state.version = STATE_VERSION;
            self.save_state(&state).await?;
            report.cursor_ms = state.scanned_to_ms;
        } else {
            report.cursor_ms = stored_cursor;
        }
        Ok(report)
    }

    /// A scheduled run (`crcr serve`, the scheduled Lambda): from the stored
    /// cursor, not a dry run; logs a summary (`metric=redeliver`) and every
    /// error.
    pub async fn run_scheduled(&self) -> Result<RedeliverReport, RedeliverError> {
        let report = self.run(&RunOptions::default()).await?;
        for e in &report.errors {
            tracing::error!(error = %e, "redeliver");
        }
        ::metrics::gauge!(crate::metrics::REDELIVER_INCOMPLETE).set(if report.complete { 0.0 } else { 1.0 });
        ::metrics::gauge!(crate::metrics::REDELIVER_PENDING).set(report.pending as f64);
        if report.pages > 0 || !report.errors.is_empty() {
            tracing::info!(
                pages = report.pages,
                deliveries = report.deliveries,
                failed = report.failed,
                redelivered = report.redelivered,
                skipped_ok = report.skipped_ok,
                skipped_requested = report.skipped_requested,
                skipped_gave_up = report.skipped_gave_up,
                skipped_too_old = report.skipped_too_old,
                skipped_ignored = report.skipped_ignored,
                pending = report.pending,
                resumed = report.resumed,
                unscanned_from_ms = report.unscanned.map(|u| u.from_ms),
                unscanned_to_ms = report.unscanned.map(|u| u.to_ms),
                errors = report.errors.len(),
                complete = report.complete,
                metric = "redeliver",
                "redeliver run"
            );
        }
        Ok(report)
    }
}

/// The progress message of the redelivery phase.
fn tally(r: &RedeliverReport) -> String {
    let skipped = r.skipped_requested + r.skipped_gave_up;
    format!("requested {}, skipped {skipped}, errors {}", r.redelivered, r.errors.len())
}

/// A failed GUID the run may ask for: its newest attempt, read now or
/// stored by an earlier run.
struct Candidate {
    guid: String,
    id: u64,
    delivered_at_ms: i64,
    event: String,
    action: Option<String>,
    status_code: u16,
    failed_attempts: usize,
}

impl Candidate {
    fn of(v: &GuidView<'_>) -> Self {
        let d = v.newest;
        Self {
            guid: d.guid.clone(),
            id: d.id,
            delivered_at_ms: d.delivered_at_ms,
            event: d.event.clone(),
            action: d.action.clone(),
            status_code: d.status_code,
            failed_attempts: v.failed_attempts,
        }
    }

    fn from_pending(guid: String, p: Pending) -> Self {
        Self {
            guid,
            id: p.id,
            delivered_at_ms: p.at_ms,
            event: p.event,
            action: p.action,
            status_code: p.code,
            failed_attempts: p.failed,
        }
    }

    fn pending(&self) -> Pending {
        Pending {
            id: self.id,
            at_ms: self.delivered_at_ms,
            event: self.event.clone(),
            action: self.action.clone(),
            code: self.status_code,
            failed: self.failed_attempts,
        }
    }

    fn row(&self, outcome: GuidOutcome) -> GuidRow {
        GuidRow {
            guid: self.guid.clone(),
            event: self.event.clone(),
            action: self.action.clone(),
            delivery_id: self.id,
            delivered_at_ms: self.delivered_at_ms,
            status_code: self.status_code,
            attempts: self.failed_attempts,
            outcome,
        }
    }
}

/// One stretch of the log a run reads, newest to oldest.
#[derive(Clone)]
struct Segment {
    /// The first page (`None`: the newest).
    cursor: Option<String>,
    /// Read down to deliveries this old (ms).
    lower: i64,
    /// Done once read down to here (ms): `lower`, or for the newest pages
    /// the newest delivery scanned before (`lower` adds the overlap).
    reach: i64,
    /// An interrupted scan's newest and oldest delivery read so far (ms).
    newest: Option<i64>,
    oldest: Option<i64>,
}

/// Runs [`Redeliverer::run_scheduled`] now and then every `interval` until
/// `stop` turns true (or its sender is dropped); a zero `interval` returns
/// at once (disabled). A run in progress is abandoned on stop: the GUIDs it
/// asked for are already saved.
pub async fn run_periodic(
    redeliverer: Arc<Redeliverer>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            r = redeliverer.run_scheduled() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "redeliver run failed; retrying next interval");
                }
            }
            _ = stop.changed() => break,
        }
    }
}
