//! Upstream check runs for L3/L4 downstream jobs (CONTRACTS.md "Upstream
//! check runs", issue 4): what a job's check run on the upstream pull
//! request looks like, which jobs get one, and the [`CheckRuns`] port that
//! creates and updates it.
//!
//! - Name `crcr/<owner>/<repo>/<workflow>/<job>`, at most [`MAX_NAME_CHARS`]
//!   characters; a longer one keeps its head and ends with `~` and 10 hex
//!   digits of the SHA-256 of the full name, so it is stable and two long
//!   names never collide.
//! - `external_id` `<run_id>:<pr number>` (`<run_id>:` without a PR), so a
//!   re-run request can find the downstream run.
//! - `details_url`: the downstream job's URL.
//! - `output.title` / `output.summary` within GitHub's 65,535 bytes, cut at
//!   a char boundary ("Create a check run": `output.summary` "Maximum length:
//!   65535 characters", which GitHub counts in bytes: github/rest-api-description#5399).
//! - Status: IN_PROGRESS → `in_progress`; COMPLETED → `completed` with the
//!   job's conclusion (the callback schema already restricts it to
//!   [`crate::callback::CONCLUSIONS`]).
//! - Who gets one: L4 always; L3 only when the pull request carries
//!   `ciflow/crcr/<device>` (or the older `ciflow/oot/<device>`), `<device>`
//!   being the repository's L3 device key in the allowlist. This slice reads
//!   the labels of the event that was dispatched; `labeled` after the
//!   dispatch is the next slice.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crate::lifecycle::{
    CheckRunItem, HudSync, JobKey, JobLifecycle, JobRecord, JobState, JobStore, OutboxItem, Violation,
};
use crate::ports::{Clock, GitHubError, StoreError};

/// Longest check-run name the relay sends, in characters. GitHub's REST
/// docs ("Create a check run") state no maximum for `name`; 255 is the
/// limit GitHub applies to its other short check-run strings (annotation
/// `title`), and what the stand-in enforces.
pub const MAX_NAME_CHARS: usize = 255;

/// GitHub's limit on `output.summary` (and `output.text`), in bytes
/// ("Create a check run": 65,535).
pub const MAX_OUTPUT_BYTES: usize = 65_535;

/// Hex digits of the SHA-256 suffix a truncated name ends with.
const NAME_HASH_HEX: usize = 10;

/// Label prefixes that ask for L3 check runs: `ciflow/crcr/<device>`, and
/// the older `ciflow/oot/<device>`.
pub const LABEL_PREFIXES: &[&str] = &["ciflow/crcr/", "ciflow/oot/"];

/// The check-run name of a downstream job: `crcr/<owner>/<repo>/<workflow>/<job>`,
/// at most [`MAX_NAME_CHARS`] characters (longer ones: head + `~` + 10 hex
/// digits of SHA-256 of the full name). Same inputs, same name.
pub fn check_run_name(repo: &RepoFullName, workflow: &str, job: &str) -> String {
    let full = format!("crcr/{}/{}/{}", repo.as_str(), workflow, job);
    if full.chars().count() <= MAX_NAME_CHARS {
        return full;
    }
    let digest = hex::encode(Sha256::digest(full.as_bytes()));
    let head: String = full.chars().take(MAX_NAME_CHARS - NAME_HASH_HEX - 1).collect();
    format!("{head}~{}", &digest[..NAME_HASH_HEX])
}

/// `external_id` of a job's check run: `<run_id>:<pr number>`, or
/// `<run_id>:` when the event had no pull request (a push).
pub fn external_id(run_id: u64, pr_number: Option<u64>) -> String {
    match pr_number {
        Some(pr) => format!("{run_id}:{pr}"),
        None => format!("{run_id}:"),
    }
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a
/// char boundary.
pub fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether a job of a repository at `level` gets an upstream check run:
/// L4 always; L3 when `labels` hold `ciflow/crcr/<device>` or
/// `ciflow/oot/<device>` for the repository's allowlist `device`
/// (compared case-insensitively, as GitHub label names are); never below L3
/// (CONTRACTS.md "Allowlist" table).
pub fn wants_check_run<S: AsRef<str>>(level: Level, device: Option<&str>, labels: &[S]) -> bool {
    match level {
        Level::L4 => true,
        Level::L3 => device.is_some_and(|device| {
            labels.iter().any(|l| {
                let l = l.as_ref();
                LABEL_PREFIXES.iter().any(|p| {
                    l.len() == p.len() + device.len()
                        && l[..p.len()].eq_ignore_ascii_case(p)
                        && l.get(p.len()..).is_some_and(|d| d.eq_ignore_ascii_case(device))
                })
            })
        }),
        _ => false,
    }
}

/// The label names of a `pull_request` webhook payload
/// (`pull_request.labels[].name`); none for other events.
pub fn pr_labels(payload: &Value) -> Vec<String> {
    payload
        .pointer("/pull_request/labels")
        .and_then(Value::as_array)
        .map(|labels| labels.iter().filter_map(|l| l.get("name")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Check-run `status` values the relay sends (GitHub also knows `queued`,
/// and `waiting` / `requested` / `pending`, which only GitHub Actions sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    InProgress,
    Completed,
}

/// `output` of a check run: `title` and `summary` (Markdown), each within
/// [`MAX_OUTPUT_BYTES`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutput {
    pub title: String,
    pub summary: String,
}

/// The body of `POST /repos/{o}/{r}/check-runs` and (without `head_sha`
/// changes) `PATCH /repos/{o}/{r}/check-runs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRunRequest {
    pub name: String,
    /// The upstream commit.
    pub head_sha: HeadSha,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    pub external_id: String,
    pub status: CheckStatus,
    /// Set exactly when `status` is completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<String>,
    /// ISO 8601 (`YYYY-MM-DDTHH:MM:SSZ`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub output: CheckOutput,
}

fn iso(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The check run showing `job` on upstream commit `head_sha` of pull
/// request `pr_number`. Title and summary name the job, its state and its
/// timings (relay clock), within [`MAX_OUTPUT_BYTES`].
pub fn check_run_for(job: &JobRecord, head_sha: &HeadSha, pr_number: Option<u64>) -> CheckRunRequest {
    let workflow = job.workflow_name.as_deref().unwrap_or("workflow");
    let name = check_run_name(&job.key.repo, workflow, &job.key.job_name);
    let (status, conclusion) = match job.state {
        JobState::InProgress => (CheckStatus::InProgress, None),
        JobState::Completed => {
            (CheckStatus::Completed, Some(job.conclusion.clone().unwrap_or_else(|| "neutral".into())))
        }
    };
    let state = conclusion.as_deref().unwrap_or("in progress");
    let title = format!("{} {}: {}", job.key.repo, job.key.job_name, state);
    let mut summary = format!(
        "Downstream job `{}` of workflow `{}` in `{}` (run {}, attempt {}, level {}): **{}**.",
        job.key.job_name,
        workflow,
        job.key.repo,
        job.key.run_id,
        job.key.run_attempt,
        job.level.as_str(),
        state
    );
    if let Some(q) = job.queue_time_s {
        summary.push_str(&format!("\n\nQueue time: {q:.1} s."));
    }
    if let Some(e) = job.execution_time_s {
        summary.push_str(&format!("\n\nExecution time: {e:.1} s."));
    }
    CheckRunRequest {
        name,
        head_sha: head_sha.clone(),
        details_url: job.url.clone(),
        external_id: external_id(job.key.run_id, pr_number),
        status,
        conclusion,
        started_at: iso(job.in_progress_at_ms),
        completed_at: if job.state == JobState::Completed { iso(job.completed_at_ms) } else { None },
        output: CheckOutput {
            title: truncate_utf8(&title, MAX_OUTPUT_BYTES).to_owned(),
            summary: truncate_utf8(&summary, MAX_OUTPUT_BYTES).to_owned(),
        },
    }
}

/// The check run telling an L3/L4 target's reviewers that its CI was not
/// started for this commit because the target's breaker is open
/// ([`crate::breaker`]): completed, `neutral` (not a failure: GitHub takes a
/// neutral conclusion as passing a required check, as palantir/bulldozer
/// v1.12.0 "Fix handling of skipped and neutral check results" notes), named `crcr/<owner>/<repo>/crcr/dispatch`, with `reason` (why, and when
/// dispatches are tried again) in its summary. Item id
/// `<delivery>|<target>|paused`: one per delivery and target, written once.
#[allow(clippy::too_many_arguments)]
pub fn paused_check_run(
    upstream: &RepoFullName,
    delivery: &crate::domain::DeliveryId,
    target: &RepoFullName,
    level: crate::domain::Level,
    head_sha: &HeadSha,
    pr_number: Option<u64>,
    reason: &str,
    now_ms: i64,
) -> CheckRunItem {
    let title = format!("{target}: CI not started (target paused)");
    let summary = format!(
        "crcr did not send this event to `{target}` (level {}): {reason}.\n\n\
         Its CI runs again for the next push once the relay dispatches to it again.",
        level.as_str()
    );
    CheckRunItem {
        id: format!("{delivery}|{}|paused", target.key()),
        delivery_id: delivery.clone(),
        repo: upstream.clone(),
        request: CheckRunRequest {
            name: check_run_name(target, "crcr", "dispatch"),
            head_sha: head_sha.clone(),
            details_url: None,
            external_id: format!("paused:{}", pr_number.map(|n| n.to_string()).unwrap_or_default()),
            status: CheckStatus::Completed,
            conclusion: Some("neutral".into()),
            started_at: iso(Some(now_ms)),
            completed_at: iso(Some(now_ms)),
            output: CheckOutput {
                title: truncate_utf8(&title, MAX_OUTPUT_BYTES).to_owned(),
                summary: truncate_utf8(&summary, MAX_OUTPUT_BYTES).to_owned(),
            },
        },
        version: 1,
        check_run_id: None,
        sync: HudSync::Pending,
        attempts: 0,
        last_error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    }
}

/// Creates and updates check runs on the upstream repository, with an
/// installation token narrowed to that repository and `checks: write`
/// (GitHub REST "Create a check run" / "Update a check run"). Errors are
/// classified once (`crcr_clients::github::classify`): transient (5xx, rate
/// limits, 401) or permanent (404 not installed, 422 validation, other 4xx).
#[async_trait]
pub trait CheckRuns: Send + Sync {
    /// `POST /repos/{o}/{r}/check-runs`; returns the check run's id.
    async fn create_check_run(&self, repo: &RepoFullName, run: &CheckRunRequest) -> Result<u64, GitHubError>;
    /// `PATCH /repos/{o}/{r}/check-runs/{id}` with `run` (status,
    /// conclusion, output, ...).
    async fn update_check_run(&self, repo: &RepoFullName, id: u64, run: &CheckRunRequest) -> Result<(), GitHubError>;
}

/// Where the check runs of one dispatched job go: the upstream repository,
/// the commit and pull request of the dispatched event (from the dispatch
/// record, never from the callback body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRunTarget {
    pub upstream: RepoFullName,
    /// The upstream commit.
    pub head_sha: HeadSha,
    pub pr_number: Option<u64>,
}

impl CheckRunTarget {
    /// The check-run outbox item showing `job` as it is now (pending,
    /// version 1; an existing item keeps its GitHub id, see
    /// [`CheckRunOutbox::transition_with_check_run`](crate::lifecycle::CheckRunOutbox::transition_with_check_run)).
    pub fn item(&self, job: &JobRecord) -> CheckRunItem {
        CheckRunItem {
            id: CheckRunItem::id_for(&job.key),
            delivery_id: job.key.delivery_id.clone(),
            repo: self.upstream.clone(),
            request: check_run_for(job, &self.head_sha, self.pr_number),
            version: 1,
            check_run_id: None,
            sync: HudSync::Pending,
            attempts: 0,
            last_error: None,
            created_at_ms: job.updated_at_ms,
            updated_at_ms: job.updated_at_ms,
        }
    }
}

/// A [`JobLifecycle`] whose transitions also upsert the job's check-run item
/// (same atomic write): how the reconciler adds check runs to the lifecycle
/// code without changing it. Every other call goes to `inner`.
pub struct WithCheckRun<'a> {
    pub inner: &'a dyn JobStore,
    pub target: CheckRunTarget,
}

#[async_trait]
impl JobLifecycle for WithCheckRun<'_> {
    async fn get(&self, key: &JobKey) -> Result<Option<JobRecord>, StoreError> {
        self.inner.get(key).await
    }
    async fn transition(
        &self,
        expected: Option<JobState>,
        record: &JobRecord,
        outbox: &OutboxItem,
    ) -> Result<bool, StoreError> {
        self.inner.transition_with_check_run(expected, record, outbox, &self.target.item(record)).await
    }
    async fn record_violation(&self, violation: &Violation) -> Result<(), StoreError> {
        self.inner.record_violation(violation).await
    }
    async fn jobs(&self, delivery: &DeliveryId) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.jobs(delivery).await
    }
    async fn violations(&self, delivery: &DeliveryId) -> Result<Vec<Violation>, StoreError> {
        self.inner.violations(delivery).await
    }
    async fn in_progress_before(&self, before_ms: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.in_progress_before(before_ms, limit).await
    }
}

/// GitHub's secondary rate limits on the check-run writes, which all go
/// through the upstream installation (REST docs, "Rate limits for the REST
/// API" → "About secondary rate limits"): "no more than 80
/// content-generating requests per minute and no more than 500
/// content-generating requests per hour" (a check-run create generates
/// content), and "no more than 900 points per minute" per endpoint, a
/// POST or PATCH costing 5 (so 180 updates a minute). The check-run sync
/// spends from this budget before each write and leaves the rest pending
/// for a later sweep when it is spent, instead of sending writes to be
/// refused. A ghstack push of 30 PRs with 3 L4 repositories × 5 jobs is
/// 450 creates: about 6 minutes at 80 a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRunPace {
    /// Creates per [`CheckRunPace::minute`] (GitHub: 80).
    pub creates_per_minute: usize,
    /// Creates per 60 of them (GitHub: 500 per hour).
    pub creates_per_hour: usize,
    /// Updates per minute (GitHub: 900 points / 5).
    pub updates_per_minute: usize,
    /// GitHub's minute (60 s); tests shorten it.
    pub minute: Duration,
    /// Added to each window (default 2 s): a write is counted from when it
    /// is spent, GitHub counts it from when it arrives, later by up to a
    /// token mint and the network.
    pub slack: Duration,
}

impl Default for CheckRunPace {
    fn default() -> Self {
        CheckRunPace {
            creates_per_minute: 80,
            creates_per_hour: 500,
            updates_per_minute: 180,
            minute: Duration::from_secs(60),
            slack: Duration::from_secs(2),
        }
    }
}

/// The `kv` key of the check-run writes sent recently ([`CheckRunPace`]):
/// only the sweep holding the outbox lease sends, so one reader-writer at a
/// time, shared by every process.
pub const CHECK_RUN_PACE_KEY: &str = "github_budget/check_runs";

/// Check-run writes sent within the pace's windows (ms since epoch).
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct SentWrites {
    creates: crate::budget::SendLog,
    updates: crate::budget::SendLog,
}

impl SentWrites {
    async fn load(state: &dyn crate::ports::StateStore) -> Result<SentWrites, StoreError> {
        Ok(state.get(CHECK_RUN_PACE_KEY).await?.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default())
    }

    /// Spends one write of the kind (a create when `create`) at `now_ms`, or
    /// says how long until the pace allows it.
    fn spend(&mut self, pace: &CheckRunPace, create: bool, now_ms: i64) -> Result<(), Duration> {
        let (minute, hour) = crate::budget::minute_and_hour_spans(pace.minute, pace.slack);
        if create {
            self.creates.spend(now_ms, &[(minute, pace.creates_per_minute), (hour, pace.creates_per_hour)])
        } else {
            self.updates.spend(now_ms, &[(minute, pace.updates_per_minute)])
        }
    }

    /// Writes the record to `state`, for a minute and an hour of `pace` (its
    /// longest window).
    async fn save(&self, state: &dyn crate::ports::StateStore, pace: &CheckRunPace) -> Result<(), StoreError> {
        let record = serde_json::to_string(self).expect("timestamps serialize");
        state.put_expiring(CHECK_RUN_PACE_KEY, &record, pace.minute * 61 + pace.slack).await
    }

    /// Gives back a write spent at `at_ms` and not sent.
    fn refund(&mut self, create: bool, at_ms: i64) {
        let log = if create { &mut self.creates } else { &mut self.updates };
        log.refund(at_ms);
    }
}

/// Counts of one check-run sync pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckSyncReport {
    /// Check runs created on GitHub.
    pub created: usize,
    /// Existing check runs updated.
    pub updated: usize,
    /// GitHub answered 4xx: kept as rejected with its answer.
    pub rejected: usize,
    /// 5xx, rate limits, no answer: pending for the next sweep.
    pub still_pending: usize,
    /// Not sent this pass: GitHub's limits allow no more writes yet
    /// ([`CheckRunPace`], or the upstream installation's primary limit is
    /// kept for dispatches: [`crate::rate_limit`]); pending for a later sweep.
    pub deferred: usize,
}

/// Sends up to `limit` pending check-run items: creates the check run once
/// (remembering GitHub's id), then updates it. 2xx → sent (for that
/// version); permanent errors (4xx) → rejected with GitHub's answer (shown
/// by `crcr trace`); transient ones → pending until a later sweep. A create
/// GitHub took whose id could not be stored is created again next time
/// (GitHub shows the newest check run of a name, so the copy is harmless).
///
/// Each write first spends from `pace` (its record in `state`, written
/// before the write is sent, so a crash can only waste budget); a write the
/// pace does not allow yet stays pending (`deferred`) for a later sweep,
/// and the items after it still go if theirs does (updates have a budget
/// of their own). Called by the sweep holding the outbox lease only.
pub async fn sync_check_runs(
    jobs: &dyn JobStore,
    checks: &dyn CheckRuns,
    clock: &dyn Clock,
    limit: usize,
    state: &dyn crate::ports::StateStore,
    pace: &CheckRunPace,
) -> Result<CheckSyncReport, StoreError> {
    let mut report = CheckSyncReport::default();
    let mut sent = SentWrites::load(state).await?;
    let mut next_write: Option<Duration> = None;
    // Deferred by the pace (the rest of `report.deferred` by GitHub's primary limit, counted as they come).
    let mut paced = 0;
    let items = jobs.pending_check_runs(limit).await?;
    let count = items.len();
    for (n, item) in items.into_iter().enumerate() {
        // A create the pace does not allow yet waits; an update behind it
        // (its own budget) still goes.
        let spent_at = clock.now_ms();
        if let Err(wait) = sent.spend(pace, item.check_run_id.is_none(), spent_at) {
            report.deferred += 1;
            paced += 1;
            next_write = Some(next_write.map_or(wait, |w| w.min(wait)));
            continue;
        }
        sent.save(state, pace).await?;
        let result = match item.check_run_id {
            None => checks.create_check_run(&item.repo, &item.request).await.map(Some),
            Some(id) => checks.update_check_run(&item.repo, id, &item.request).await.map(|()| None),
        };
        let now = clock.now_ms();
        let counted = match &result {
            Ok(Some(_)) => "created",
            Ok(None) => "updated",
            Err(GitHubError::Permanent { .. }) => "rejected",
            Err(GitHubError::Deferred { .. }) => "deferred",
            Err(GitHubError::Transient { .. }) => "failed",
        };
        ::metrics::counter!(crate::metrics::CHECK_RUN_SYNC, "result" => counted).increment(1);
        match result {
            Ok(created) => {
                jobs.mark_check_run(&item.id, item.version, created, HudSync::Sent, None, now).await?;
                if created.is_some() {
                    report.created += 1;
                } else {
                    report.updated += 1;
                }
            }
            Err(e @ GitHubError::Permanent { .. }) => {
                tracing::error!(check_run_item = %item.id, delivery_id = %item.delivery_id, error = %e, metric = "check_run_rejected", "GitHub refused a check run");
                jobs.mark_check_run(&item.id, item.version, None, HudSync::Rejected, Some(&e.to_string()), now).await?;
                report.rejected += 1;
            }
            Err(GitHubError::Deferred { retry_after, .. }) => {
                // Not sent: the upstream installation's primary limit is
                // kept for dispatches until its reset. Its pace is given
                // back, and the rest (the same installation's) wait too.
                sent.refund(item.check_run_id.is_none(), spent_at);
                sent.save(state, pace).await?;
                report.deferred += count - n;
                next_write = Some(next_write.map_or(retry_after, |w| w.min(retry_after)));
                ::metrics::counter!(crate::metrics::CHECK_RUN_SYNC, "result" => "deferred")
                    .increment((count - n - 1) as u64);
                break;
            }
            Err(e) => {
                tracing::warn!(check_run_item = %item.id, error = %e, metric = "check_run_sync_failures", "GitHub unavailable; check run stays pending");
                jobs.mark_check_run(&item.id, item.version, None, HudSync::Pending, Some(&e.to_string()), now).await?;
                report.still_pending += 1;
            }
        }
    }
    if let Some(wait) = next_write {
        ::metrics::counter!(crate::metrics::CHECK_RUN_SYNC, "result" => "deferred").increment(paced);
        tracing::info!(
            deferred = report.deferred,
            next_in_s = wait.as_secs_f64(),
            metric = "check_run_writes_paced",
            "GitHub's limits allow no more check-run writes yet; the rest wait for a later sweep"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spends_creates_per_minute_and_hour_and_updates_per_minute() {
        let pace = CheckRunPace {
            creates_per_minute: 3,
            creates_per_hour: 5,
            updates_per_minute: 2,
            minute: Duration::from_millis(1000),
            slack: Duration::ZERO,
        };
        let mut sent = SentWrites::default();
        for t in [0, 1, 2] {
            assert_eq!(sent.spend(&pace, true, t), Ok(()));
        }
        // The fourth create waits for the first to be a minute old.
        assert_eq!(sent.spend(&pace, true, 10), Err(Duration::from_millis(990)));
        // Updates have their own count.
        assert_eq!(sent.spend(&pace, false, 10), Ok(()));
        assert_eq!(sent.spend(&pace, false, 11), Ok(()));
        assert_eq!(sent.spend(&pace, false, 12), Err(Duration::from_millis(998)));
        assert_eq!(sent.spend(&pace, true, 1000), Ok(()));
        assert_eq!(sent.spend(&pace, true, 1001), Ok(()));
        // Five creates in the hour: the sixth waits for the first to be an hour old, whatever the minute says.
        assert_eq!(sent.spend(&pace, true, 5000), Err(Duration::from_millis(55_000)));
        assert_eq!(sent.spend(&pace, true, 60_000), Ok(()));
        // Kept across sweeps as the kv record.
        let again: SentWrites = serde_json::from_str(&serde_json::to_string(&sent).unwrap()).unwrap();
        assert_eq!(again.creates, sent.creates);
    }
    use crate::domain::DeliveryId;
    use crate::lifecycle::JobKey;

    fn repo(s: &str) -> RepoFullName {
        RepoFullName::parse(s).unwrap()
    }

    fn job(state: JobState, conclusion: Option<&str>) -> JobRecord {
        JobRecord {
            key: JobKey {
                delivery_id: DeliveryId::parse("d-1").unwrap(),
                repo: repo("org4/four"),
                run_id: 123,
                run_attempt: 2,
                job_name: "build".into(),
            },
            state,
            level: Level::L4,
            dispatched_at_ms: Some(1_700_000_000_000),
            in_progress_at_ms: Some(1_700_000_001_500),
            completed_at_ms: conclusion.map(|_| 1_700_000_061_500),
            conclusion: conclusion.map(str::to_owned),
            queue_time_s: Some(1.5),
            execution_time_s: conclusion.map(|_| 60.0),
            workflow_name: Some("CI".into()),
            url: Some("https://github.com/org4/four/actions/runs/123/job/9".into()),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn short_names_are_kept_whole() {
        assert_eq!(check_run_name(&repo("Org/Repo"), "CI", "build (linux)"), "crcr/Org/Repo/CI/build (linux)");
    }

    #[test]
    fn long_names_are_cut_stably_with_a_hash_suffix() {
        let long_a = format!("{}a", "x".repeat(400));
        let long_b = format!("{}b", "x".repeat(400));
        let a = check_run_name(&repo("o/r"), "CI", &long_a);
        let b = check_run_name(&repo("o/r"), "CI", &long_b);
        assert_eq!(a.chars().count(), MAX_NAME_CHARS);
        assert_eq!(b.chars().count(), MAX_NAME_CHARS);
        assert_ne!(a, b, "two long names that differ only past the cut must not collide");
        assert_eq!(a, check_run_name(&repo("o/r"), "CI", &long_a), "stable");
        assert!(a.starts_with("crcr/o/r/CI/xxx"));
        assert_eq!(a.as_bytes()[MAX_NAME_CHARS - NAME_HASH_HEX - 1], b'~');
        // Multi-byte characters count as one each and are never split.
        let wide = check_run_name(&repo("o/r"), "CI", &"é".repeat(300));
        assert_eq!(wide.chars().count(), MAX_NAME_CHARS);
        // Exactly at the limit: kept whole.
        let exact = "j".repeat(MAX_NAME_CHARS - "crcr/o/r/CI/".len());
        assert_eq!(check_run_name(&repo("o/r"), "CI", &exact), format!("crcr/o/r/CI/{exact}"));
    }

    #[test]
    fn external_id_is_run_and_pr() {
        assert_eq!(external_id(123, Some(45)), "123:45");
        assert_eq!(external_id(123, None), "123:");
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate_utf8("abc", 5), "abc");
        assert_eq!(truncate_utf8("abcdef", 3), "abc");
        assert_eq!(truncate_utf8("aé", 2), "a", "é is 2 bytes: cut before it");
        let big = "€".repeat(30_000); // 90,000 bytes
        let cut = truncate_utf8(&big, MAX_OUTPUT_BYTES);
        assert!(cut.len() <= MAX_OUTPUT_BYTES && cut.len() > MAX_OUTPUT_BYTES - 3);
    }

    #[test]
    fn l4_always_l3_only_with_its_device_label() {
        let none: [&str; 0] = [];
        assert!(wants_check_run(Level::L4, None, &none));
        assert!(!wants_check_run(Level::L3, Some("gpu"), &none));
        assert!(wants_check_run(Level::L3, Some("gpu"), &["ciflow/crcr/gpu"]));
        assert!(wants_check_run(Level::L3, Some("gpu"), &["ciflow/oot/gpu"]));
        assert!(wants_check_run(Level::L3, Some("gpu"), &["CIFlow/CRCR/GPU"]));
        assert!(!wants_check_run(Level::L3, Some("gpu"), &["ciflow/crcr/npu"]));
        assert!(!wants_check_run(Level::L3, Some("gpu"), &["ciflow/crcr/gpu2", "ciflow/trunk"]));
        assert!(!wants_check_run(Level::L3, None, &["ciflow/crcr/gpu"]));
        assert!(!wants_check_run(Level::L2, Some("gpu"), &["ciflow/crcr/gpu"]));
        assert!(!wants_check_run(Level::L1, None, &none));
    }

    #[test]
    fn labels_are_read_from_the_pull_request() {
        let p =
            serde_json::json!({"pull_request": {"labels": [{"name": "ciflow/crcr/gpu"}, {"id": 1}, {"name": "x"}]}});
        assert_eq!(pr_labels(&p), vec!["ciflow/crcr/gpu", "x"]);
        assert!(pr_labels(&serde_json::json!({"ref": "refs/heads/main"})).is_empty());
    }

    #[test]
    fn in_progress_and_completed_map_to_github_values() {
        let sha = HeadSha::parse(&"a".repeat(40)).unwrap();
        let run = check_run_for(&job(JobState::InProgress, None), &sha, Some(7));
        assert_eq!(run.name, "crcr/org4/four/CI/build");
        assert_eq!(run.status, CheckStatus::InProgress);
        assert_eq!(run.conclusion, None);
        assert_eq!(run.external_id, "123:7");
        assert_eq!(run.details_url.as_deref(), Some("https://github.com/org4/four/actions/runs/123/job/9"));
        assert_eq!(run.started_at.as_deref(), Some("2023-11-14T22:13:21Z"));
        assert_eq!(run.completed_at, None);
        let body = serde_json::to_value(&run).unwrap();
        assert_eq!(body["status"], "in_progress");
        assert!(body.get("conclusion").is_none(), "no conclusion while in progress: {body}");

        let done = check_run_for(&job(JobState::Completed, Some("failure")), &sha, Some(7));
        assert_eq!(done.status, CheckStatus::Completed);
        assert_eq!(done.conclusion.as_deref(), Some("failure"));
        assert_eq!(done.completed_at.as_deref(), Some("2023-11-14T22:14:21Z"));
        assert_eq!(done.name, run.name, "the same check run name through the lifecycle");
        assert!(done.output.summary.contains("Execution time: 60.0 s"), "{}", done.output.summary);
        assert_eq!(serde_json::to_value(&done).unwrap()["status"], "completed");
    }

    #[test]
    fn output_stays_within_githubs_limit() {
        let mut j = job(JobState::InProgress, None);
        j.key.job_name = "€".repeat(40_000);
        let run = check_run_for(&j, &HeadSha::parse(&"b".repeat(40)).unwrap(), None);
        assert!(run.output.title.len() <= MAX_OUTPUT_BYTES);
        assert!(run.output.summary.len() <= MAX_OUTPUT_BYTES);
        assert!(run.name.chars().count() <= MAX_NAME_CHARS);
    }
}
