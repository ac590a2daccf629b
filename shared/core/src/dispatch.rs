//! The dispatcher: one queue message in, `repository_dispatch` to every
//! allowlisted repository where the App is installed, once each.
//!
//! Per target: look up the installation (cached in the GitHub adapter),
//! claim the (delivery, target) record (the delivery named by its hook and
//! GUID, see [`crate::ports::record_key`]) under a lease, call GitHub with
//! exponential backoff + jitter inside a bounded budget (honouring
//! `Retry-After` / `x-ratelimit-reset`), and record the outcome. Targets go
//! in turns of `concurrency`: a turn's claims are one store call
//! ([`DispatchStore::claim_each`]: one SQLite write), then its targets are
//! sent concurrently; a target's lease starts with its turn. A message whose targets all
//! ended (dispatched, failed permanently, or not installed) is done; one with
//! a transient failure goes back to the queue, and after `max_receive_count`
//! receives to the DLQ with the reason.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::allowlist::{AllowlistEntry, AllowlistProvider};
use crate::breaker::Admission;
use crate::budget::DispatchBudget;
use crate::client_payload::{self, DispatchBody};
use crate::domain::{DeliveryId, Level, RepoFullName};
use crate::message::{DispatchV1, PayloadRef, QueueMessage};
use crate::ports::{
    AttemptOutcome, BlobError, BlobStore, Claim, Clock, DispatchMeta, DispatchStore, GitHubApp, GitHubError,
    InstallationId, QueueError, QueueSettle, QueueSide, ReceivedMessage,
};

/// Tunables, with their defaults.
#[derive(Clone, Debug)]
pub struct DispatcherSettings {
    /// Targets dispatched at once per message (default 64, below GitHub's
    /// guidance of at most 100 concurrent requests, "Rate limits for the REST API").
    pub concurrency: usize,
    /// How long a claim on a target holds (default 60 s): longer than one
    /// target's retry budget, so only a dead attempt's lease ever expires.
    pub lease: Duration,
    /// Time one target may spend retrying within one receive (default 20 s).
    pub retry_budget: Duration,
    /// Calls per target per receive, first included (default 4).
    pub max_calls: usize,
    /// First backoff delay (default 250 ms), doubling up to `max_backoff` (default 5 s), with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// SQS redrive `maxReceiveCount` of the queue (default 5): on that
    /// receive a still-failing message goes to the DLQ with its reason.
    pub max_receive_count: u32,
    /// Delay before a requeued message is seen again, doubled per receive,
    /// capped at 15 min (default 5 s), unless GitHub asked for longer.
    pub requeue_base_delay: Duration,
    /// How many dispatches one target installation may take (default
    /// GitHub's content-creation limits, 80 a minute and 500 an hour:
    /// [`crate::budget`]); `None`: unpaced (`CRCR_DISPATCH_PACE=off`, for
    /// the load benchmark). A dispatch waits for the budget within
    /// `retry_budget`; past it the message is postponed
    /// ([`crate::ports::QueueSettle::postpone`]), which does not count as
    /// a failed receive.
    pub pace: Option<crate::budget::DispatchPace>,
    /// When a target's breaker opens, and for how long ([`crate::breaker`]).
    pub breaker: crate::breaker::BreakerSettings,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            lease: Duration::from_secs(60),
            retry_budget: Duration::from_secs(20),
            max_calls: 4,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_receive_count: 5,
            requeue_base_delay: Duration::from_secs(5),
            pace: Some(Default::default()),
            breaker: Default::default(),
        }
    }
}

/// What happened to one target in one processing of a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TargetOutcome {
    /// GitHub answered 204 after `calls` calls in this receive.
    Dispatched {
        attempt: u32,
        calls: u32,
    },
    /// A previous attempt already dispatched it: nothing sent.
    AlreadyDispatched,
    /// The App is not installed on the repository: not a target.
    NotInstalled,
    /// Permanent failure, recorded; not retried.
    Failed {
        reason: String,
    },
    AlreadyFailed,
    /// Transient failure: the message will be received again.
    Retry {
        reason: String,
        retry_after_ms: Option<u64>,
    },
    /// Not sent: GitHub's budget for the target's installation allows no
    /// dispatch for `retry_after_ms` ([`crate::budget`]); the message is
    /// postponed that long.
    Paced {
        retry_after_ms: u64,
    },
    /// Not sent: the target's breaker is open ([`crate::breaker`]);
    /// recorded `paused` with the reason. `probe_at_ms`: when a probe will
    /// be sent (`None`: paused by on-call).
    Paused {
        reason: String,
        probe_at_ms: Option<i64>,
    },
}

impl TargetOutcome {
    /// The outcome class counted in [`crate::metrics::DISPATCHES`] (label
    /// `outcome`): the variant's snake_case name.
    pub fn class(&self) -> &'static str {
        match self {
            TargetOutcome::Dispatched { .. } => "dispatched",
            TargetOutcome::AlreadyDispatched => "already_dispatched",
            TargetOutcome::NotInstalled => "not_installed",
            TargetOutcome::Failed { .. } => "failed",
            TargetOutcome::AlreadyFailed => "already_failed",
            TargetOutcome::Retry { .. } => "retry",
            TargetOutcome::Paced { .. } => "paced",
            TargetOutcome::Paused { .. } => "paused",
        }
    }
}

/// One target's line in a [`DeliveryReport`].
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub repo: RepoFullName,
    pub level: Level,
    #[serde(flatten)]
    pub outcome: TargetOutcome,
}

/// What one processing of a message did.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryReport {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub payload_trimmed: bool,
    pub targets: Vec<TargetReport>,
}

/// A target before its claim ([`Dispatcher::prepare`]).
enum Prepared {
    /// Ended without a record: not installed, or its installation lookup failed.
    Ended(TargetOutcome),
    /// To claim and send (or pause, as `admission` says).
    Ready { installation: InstallationId, admission: Admission },
}

/// A target ready to send, with its turn's answer to its claim.
struct Claimed {
    installation: InstallationId,
    admission: Admission,
    meta: DispatchMeta,
    claim: Result<Claim, crate::ports::StoreError>,
}

/// The verdict on a message.
#[derive(Debug)]
pub enum MessageOutcome {
    /// Every target ended (or the event needs no dispatch): delete it.
    Done(DeliveryReport),
    /// Some target failed transiently: receive it again later.
    Retry { report: Option<DeliveryReport>, reason: String, delay: Option<Duration> },
    /// No target failed, but some wait for GitHub's budget: receive it
    /// again after `delay`, without counting this receive.
    Postpone { report: DeliveryReport, delay: Duration },
    /// The message can never be processed (unknown version, payload lost).
    Poison { reason: String },
}

/// What to do with a received message, given its outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    Delete,
    /// Make it visible again after `delay`.
    Requeue {
        delay: Duration,
    },
    /// Receive it again after `delay`, this receive not counted
    /// ([`QueueSettle::postpone`]).
    Postpone {
        delay: Duration,
    },
    DeadLetter {
        reason: String,
    },
}

/// Whether the relay acts on an event at all: fanned out
/// ([`is_dispatched`]) or applied by the reconciler
/// ([`crate::upstream::is_upstream`]). Ingest answers every other event 200
/// ignored, so a failed delivery of one is not worth redelivering
/// (`crate::redeliver`).
pub fn is_acted_on(event: &str, action: Option<&str>) -> bool {
    is_dispatched(event, action) || crate::upstream::is_upstream(event, action)
}

/// Events and actions that are fanned out (CONTRACTS.md "Webhook input").
pub fn is_dispatched(event: &str, action: Option<&str>) -> bool {
    match event {
        "push" => true,
        "pull_request" => matches!(action, Some("opened" | "reopened" | "synchronize" | "closed")),
        _ => false,
    }
}

/// The check-run outbox of the upstream repository, for paused dispatches.
#[derive(Clone)]
pub struct PausedChecks {
    pub outbox: Arc<dyn crate::lifecycle::CheckRunOutbox>,
    pub upstream: RepoFullName,
}

/// The dispatcher and the ports it needs.
pub struct Dispatcher {
    pub store: Arc<dyn DispatchStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub github: Arc<dyn GitHubApp>,
    /// Spent before each dispatch ([`crate::budget`]).
    pub budget: Arc<dyn DispatchBudget>,
    /// Asked before each dispatch, told of its result ([`crate::breaker`]).
    pub breakers: Arc<crate::breaker::Breakers>,
    /// Where a paused L3/L4 dispatch's neutral check run is queued for the
    /// reconciler's sweep ([`crate::checks::paused_check_run`]); `None`:
    /// none is written.
    pub paused_checks: Option<PausedChecks>,
    pub allowlist: Arc<AllowlistProvider>,
    pub clock: Arc<dyn Clock>,
    pub settings: DispatcherSettings,
}

impl Dispatcher {
    /// Decides what becomes of `msg` after `outcome`.
    pub fn disposition(&self, msg: &ReceivedMessage, outcome: &MessageOutcome) -> Disposition {
        match outcome {
            MessageOutcome::Done(_) => Disposition::Delete,
            MessageOutcome::Poison { reason } => Disposition::DeadLetter { reason: reason.clone() },
            MessageOutcome::Postpone { delay, .. } => Disposition::Postpone { delay: *delay },
            MessageOutcome::Retry { reason, delay, .. } => {
                if msg.receive_count >= self.settings.max_receive_count {
                    Disposition::DeadLetter {
                        reason: format!("still failing after {} receives: {reason}", msg.receive_count),
                    }
                } else {
                    let backoff = self
                        .settings
                        .requeue_base_delay
                        .saturating_mul(1 << msg.receive_count.saturating_sub(1).min(16))
                        .min(Duration::from_secs(900));
                    Disposition::Requeue { delay: delay.map_or(backoff, |d| d.max(backoff)) }
                }
            }
        }
    }

    /// Processes a received message and settles it on `queue` (the embedded
    /// worker's loop; the Lambda maps dispositions to a batch response).
    pub async fn handle(&self, queue: &dyn QueueSettle, msg: &ReceivedMessage) -> Result<MessageOutcome, QueueError> {
        let span = tracing::info_span!("message", message_id = %msg.message_id, receive_count = msg.receive_count);
        let outcome = self.process(&msg.body).instrument(span).await;
        match self.disposition(msg, &outcome) {
            Disposition::Delete => queue.delete(QueueSide::Source, &msg.receipt).await?,
            Disposition::Requeue { delay } => queue.change_visibility(QueueSide::Source, &msg.receipt, delay).await?,
            Disposition::Postpone { delay } => {
                tracing::info!(message_id = %msg.message_id, delay_s = delay.as_secs_f64(), metric = "dispatch_postponed",
                    "GitHub's budget allows no more dispatches to some targets yet; message postponed");
                queue.postpone(msg, delay).await?
            }
            Disposition::DeadLetter { reason } => {
                tracing::error!(message_id = %msg.message_id, %reason, metric = "dlq_sends", "message sent to the dead-letter queue");
                queue.dead_letter(msg, &reason).await?;
                ::metrics::counter!(crate::metrics::DLQ_SENDS, "queue" => "dispatch").increment(1);
            }
        }
        Ok(outcome)
    }

    /// Processes one queue body: fans the event out to its targets.
    pub async fn process(&self, body: &str) -> MessageOutcome {
        let msg =
            match QueueMessage::decode(body) {
                Ok(QueueMessage::DispatchV1(m)) => m,
                Ok(QueueMessage::CallbackV1(_) | QueueMessage::UpstreamV1(_)) => return MessageOutcome::Poison {
                    reason:
                        "a reconcile-queue message (callback_v1 / upstream_v1) does not belong on the dispatch queue"
                            .into(),
                },
                Err(e) => return MessageOutcome::Poison { reason: e.to_string() },
            };
        let span = tracing::info_span!("delivery", delivery_id = %msg.delivery_id, hook_id = msg.hook_id, event = %msg.event,
            action = msg.action.as_deref().unwrap_or(""));
        self.process_dispatch(msg).instrument(span).await
    }

    async fn process_dispatch(&self, msg: DispatchV1) -> MessageOutcome {
        let mut report = DeliveryReport {
            delivery_id: msg.delivery_id.clone(),
            event: msg.event.clone(),
            action: msg.action.clone(),
            payload_trimmed: false,
            targets: vec![],
        };
        if !is_dispatched(&msg.event, msg.action.as_deref()) {
            return MessageOutcome::Done(report);
        }
        let payload = match self.load_payload(&msg.payload).await {
            Ok(p) => p,
            Err(LoadError::Gone(reason)) => return MessageOutcome::Poison { reason },
            Err(LoadError::Unavailable(reason)) => {
                return MessageOutcome::Retry { report: None, reason, delay: None };
            }
        };
        let allowlist = match self.allowlist.current().await {
            Ok(a) => a,
            Err(e) => {
                return MessageOutcome::Retry { report: None, reason: format!("no allowlist: {e}"), delay: None };
            }
        };
        // Built from the text: no tree of the payload (several times its
        // size) is made unless it must be trimmed.
        let body = match client_payload::build_from_text(&msg.event, msg.delivery_id.as_str(), &payload) {
            Err(client_payload::PayloadError::NotJson(e)) => {
                return MessageOutcome::Poison { reason: format!("payload is not JSON: {e}") }
            }
            body => body,
        };
        report.payload_trimmed = matches!(&body, Ok(b) if b.trimmed);
        let PayloadFacts { labels, head_sha, pr_number } = PayloadFacts::read(&payload);
        drop(payload);
        let meta = |entry: &AllowlistEntry| DispatchMeta {
            event: msg.event.clone(),
            action: msg.action.clone(),
            head_sha: head_sha.clone(),
            pr_number,
            level: entry.level,
            check_run: crate::checks::wants_check_run(entry.level, entry.device.as_deref(), &labels),
            device: entry.device.clone(),
            received_at_ms: Some(msg.received_at_ms),
            hook_id: msg.hook_id,
        };
        let body = &body;
        let delivery = &msg.delivery_id;
        // In turns of `concurrency` targets, so that a target's lease starts
        // when it is about to be sent, not while it waits for its turn.
        for turn in allowlist.entries().chunks(self.settings.concurrency.max(1)) {
            let reports = self.dispatch_turn(delivery, turn, &meta, body).await;
            report.targets.extend(reports);
        }
        for t in &report.targets {
            ::metrics::counter!(crate::metrics::DISPATCHES, "outcome" => t.outcome.class()).increment(1);
        }
        let retrying: Vec<_> = report
            .targets
            .iter()
            .filter_map(|t| match &t.outcome {
                TargetOutcome::Retry { reason, retry_after_ms } => Some((t, reason, *retry_after_ms)),
                _ => None,
            })
            .collect();
        if retrying.is_empty() {
            let paced = report
                .targets
                .iter()
                .filter_map(|t| match t.outcome {
                    TargetOutcome::Paced { retry_after_ms } => Some(retry_after_ms),
                    _ => None,
                })
                .max();
            return match paced {
                // The longest wait: every paced target's budget is free by then.
                Some(ms) => MessageOutcome::Postpone { report, delay: Duration::from_millis(ms) },
                None => MessageOutcome::Done(report),
            };
        }
        let reason = retrying.iter().map(|(t, r, _)| format!("{}: {r}", t.repo)).collect::<Vec<_>>().join("; ");
        let delay = retrying.iter().filter_map(|(_, _, ms)| *ms).max().map(Duration::from_millis);
        MessageOutcome::Retry { report: Some(report), reason, delay }
    }

    /// One turn of targets (at most `concurrency`): each one's installation
    /// and breaker (both cached: no call for a healthy target), then one
    /// claim write for all of them to send to
    /// ([`DispatchStore::claim_each`]), then their dispatches, concurrently.
    async fn dispatch_turn(
        &self,
        delivery: &DeliveryId,
        entries: &[AllowlistEntry],
        meta: &(dyn Fn(&AllowlistEntry) -> DispatchMeta + Sync),
        body: &Result<DispatchBody, client_payload::PayloadError>,
    ) -> Vec<TargetReport> {
        let concurrency = entries.len().max(1);
        let repos: Vec<RepoFullName> = entries.iter().map(|e| e.repo.clone()).collect();
        let prepared: Vec<Prepared> = futures::stream::iter(repos)
            .map(|repo| {
                let span = tracing::info_span!("target", repo = %repo);
                async move { self.prepare(&repo).await }.instrument(span)
            })
            .buffered(concurrency)
            .collect()
            .await;
        let to_claim: Vec<(RepoFullName, DispatchMeta)> = entries
            .iter()
            .zip(&prepared)
            .filter(|(_, p)| matches!(p, Prepared::Ready { .. }))
            .map(|(entry, _)| (entry.repo.clone(), meta(entry)))
            .collect();
        let claims = match to_claim.is_empty() {
            true => vec![],
            false => self.store.claim_each(delivery, &to_claim, self.clock.now_ms(), self.settings.lease).await,
        };
        let mut claimed = to_claim.into_iter().zip(claims);
        let work: Vec<_> = entries
            .iter()
            .zip(prepared)
            .map(|(entry, prepared)| match prepared {
                Prepared::Ended(outcome) => (entry.clone(), Err(outcome)),
                Prepared::Ready { installation, admission } => {
                    let ((_, meta), claim) = claimed.next().expect("one claim per target ready to send");
                    (entry.clone(), Ok(Claimed { installation, admission, meta, claim }))
                }
            })
            .collect();
        futures::stream::iter(work)
            .map(|(entry, ready)| {
                let span = tracing::info_span!("target", repo = %entry.repo, attempt = tracing::field::Empty);
                async move {
                    let outcome = match ready {
                        Err(outcome) => outcome,
                        Ok(claimed) => self.dispatch_target(delivery, &entry, body, claimed).await,
                    };
                    TargetReport { repo: entry.repo, level: entry.level, outcome }
                }
                .instrument(span)
            })
            .buffered(concurrency)
            .collect()
            .await
    }

    /// A target's installation and what its breaker admits, or how it
    /// ended without a record (not installed, lookup failed).
    async fn prepare(&self, repo: &RepoFullName) -> Prepared {
        let installation = match self.github.installation(repo).await {
            Ok(Some(i)) => i,
            Ok(None) => return Prepared::Ended(TargetOutcome::NotInstalled),
            Err(e) => return Prepared::Ended(retry_or_fail_unrecorded(e)),
        };
        let admission = self.breakers.admit(repo).await.unwrap_or_else(|e| {
            // The breaker is a safeguard: without it, send.
            tracing::warn!(error = %e, "target breaker unreadable; dispatching");
            Admission::Send
        });
        Prepared::Ready { installation, admission }
    }

    /// One target once [`Dispatcher::prepare`]d and claimed: paused, failed
    /// for its payload, or sent (with retries), then recorded.
    async fn dispatch_target(
        &self,
        delivery: &DeliveryId,
        entry: &AllowlistEntry,
        body: &Result<DispatchBody, client_payload::PayloadError>,
        Claimed { installation, admission, meta, claim }: Claimed,
    ) -> TargetOutcome {
        let (repo, meta) = (&entry.repo, &meta);
        let attempt = match claim {
            Ok(Claim::Acquired { attempt }) => {
                tracing::Span::current().record("attempt", attempt);
                attempt
            }
            Ok(Claim::AlreadyDispatched) => return TargetOutcome::AlreadyDispatched,
            Ok(Claim::AlreadyFailed) => return TargetOutcome::AlreadyFailed,
            Ok(Claim::Leased { until_ms }) => {
                let wait = (until_ms - self.clock.now_ms()).max(0) as u64;
                return TargetOutcome::Retry {
                    reason: "another attempt holds this target".into(),
                    retry_after_ms: Some(wait),
                };
            }
            Err(e) => return TargetOutcome::Retry { reason: format!("dispatch store: {e}"), retry_after_ms: None },
        };
        if let Admission::Paused { reason, probe_at_ms } = admission {
            let when = probe_at_ms.map_or("when on-call resumes it (crcr target resume)".to_owned(), |at| {
                format!("a probe goes at {}", crate::ports::format_time(at))
            });
            let reason = format!("paused: the target's breaker is open ({reason}); {when}");
            tracing::info!(attempt, %reason, "dispatch paused");
            self.queue_paused_check_run(delivery, repo, meta, &reason).await;
            return self
                .finish(
                    (delivery, meta.hook_id),
                    repo,
                    attempt,
                    AttemptOutcome::Paused { reason: reason.clone() },
                    TargetOutcome::Paused { reason, probe_at_ms },
                )
                .await;
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("payload cannot be sent: {e}");
                return self
                    .finish(
                        (delivery, meta.hook_id),
                        repo,
                        attempt,
                        AttemptOutcome::Failed { reason: reason.clone() },
                        TargetOutcome::Failed { reason },
                    )
                    .await;
            }
        };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let budget = self.settings.retry_budget;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.min_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.max_calls.saturating_sub(1))
            .with_jitter();
        let result = (|| async {
            self.spend_budget(installation, started).await?;
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            tracing::debug!(attempt, call, "repository_dispatch");
            let sent = self.github.dispatch(repo, installation, body).await;
            if let Err(GitHubError::Transient { retry_after: Some(wait), .. }) = &sent {
                // A rate limit: every sender to this installation waits it out.
                let until = self.clock.now_ms() + wait.as_millis() as i64;
                if let Err(e) = self.budget.hold(installation, until).await {
                    tracing::warn!(error = %e, "could not record GitHub's rate limit in the dispatch budget");
                }
            }
            sent.map_err(CallError::GitHub)
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        // A deferral waits for a primary-limit window's reset: the message
        // is postponed, not slept on.
        .when(|e| matches!(e, CallError::GitHub(GitHubError::Transient { .. })))
        .adjust(|e, next| {
            let next = match e {
                CallError::GitHub(GitHubError::Transient { retry_after: Some(hint), .. }) => next.map(|_| *hint),
                _ => next,
            }?;
            // Only wait if the next call still fits in the budget.
            (started.elapsed() + next <= budget).then_some(next)
        })
        .notify(|e, wait| {
            ::metrics::counter!(crate::metrics::DISPATCH_RETRIES).increment(1);
            tracing::warn!(attempt, error = %e, wait_ms = wait.as_millis() as u64, metric = "dispatch_retries", "retrying repository_dispatch")
        })
        .await;
        let calls = calls.into_inner();
        let postponed = |reason: String, wait: Duration| async move {
            let reason = format!("{reason}; postponed");
            tracing::info!(attempt, calls, wait_ms = wait.as_millis() as u64, %reason, "dispatch paced");
            let outcome = TargetOutcome::Paced { retry_after_ms: wait.as_millis() as u64 };
            self.finish((delivery, meta.hook_id), repo, attempt, AttemptOutcome::Retry { reason }, outcome).await
        };
        let result = match result {
            Ok(()) => Ok(()),
            Err(CallError::Paced(wait)) => {
                let reason = format!(
                    "GitHub's budget for installation {} allows no dispatch for {:.1} s",
                    installation.0,
                    wait.as_secs_f64()
                );
                return postponed(reason, wait).await;
            }
            Err(CallError::GitHub(GitHubError::Deferred { reason, retry_after })) => {
                return postponed(reason, retry_after).await;
            }
            Err(CallError::GitHub(e)) => Err(e),
        };
        let told = match &result {
            Ok(()) => self.breakers.delivered(repo).await,
            Err(GitHubError::Permanent { reason, .. }) => self.breakers.refused(repo, reason).await,
            Err(GitHubError::Transient { .. } | GitHubError::Deferred { .. }) => Ok(None),
        };
        if let Err(e) = told {
            tracing::warn!(error = %e, "could not update the target's breaker");
        }
        match result {
            Ok(()) => {
                tracing::info!(attempt, calls, trimmed = body.trimmed, "dispatched");
                self.finish(
                    (delivery, meta.hook_id),
                    repo,
                    attempt,
                    AttemptOutcome::Dispatched { payload_trimmed: body.trimmed },
                    TargetOutcome::Dispatched { attempt, calls },
                )
                .await
            }
            Err(GitHubError::Permanent { reason, .. }) => {
                tracing::warn!(attempt, %reason, "dispatch failed permanently");
                self.finish(
                    (delivery, meta.hook_id),
                    repo,
                    attempt,
                    AttemptOutcome::Failed { reason: reason.clone() },
                    TargetOutcome::Failed { reason },
                )
                .await
            }
            Err(GitHubError::Transient { reason, retry_after }) => {
                tracing::warn!(attempt, %reason, "dispatch still failing; message goes back to the queue");
                self.finish(
                    (delivery, meta.hook_id),
                    repo,
                    attempt,
                    AttemptOutcome::Retry { reason: reason.clone() },
                    TargetOutcome::Retry { reason, retry_after_ms: retry_after.map(|d| d.as_millis() as u64) },
                )
                .await
            }
            Err(GitHubError::Deferred { .. }) => unreachable!("a deferred dispatch was postponed above"),
        }
    }

    /// Queues the neutral check run of a paused dispatch when the target
    /// gets check runs for this event (L4, or L3 with its label) and the
    /// event names a commit. A failure is logged: the dispatch record says
    /// `paused` either way.
    async fn queue_paused_check_run(
        &self,
        delivery: &DeliveryId,
        repo: &RepoFullName,
        meta: &DispatchMeta,
        reason: &str,
    ) {
        let (Some(checks), Some(head_sha), true) = (&self.paused_checks, &meta.head_sha, meta.check_run) else {
            return;
        };
        let item = crate::checks::paused_check_run(
            &checks.upstream,
            delivery,
            repo,
            meta.level,
            head_sha,
            meta.pr_number,
            reason,
            self.clock.now_ms(),
        );
        if let Err(e) = checks.outbox.advance_check_run(&item).await {
            tracing::warn!(error = %e, "could not queue the paused target's check run");
        }
    }

    /// Spends one dispatch to `installation` from the budget, waiting for
    /// it while the wait ends within the retry budget counted from
    /// `started`; else [`CallError::Paced`] with the wait. A budget that
    /// cannot be read is a transient failure.
    async fn spend_budget(&self, installation: InstallationId, started: tokio::time::Instant) -> Result<(), CallError> {
        loop {
            match self.budget.spend(installation, self.clock.now_ms()).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) if started.elapsed() + wait <= self.settings.retry_budget => {
                    ::metrics::counter!(crate::metrics::DISPATCH_BUDGET_WAITS).increment(1);
                    tokio::time::sleep(wait).await;
                }
                Ok(Some(wait)) => return Err(CallError::Paced(wait)),
                Err(e) => {
                    return Err(CallError::GitHub(GitHubError::Transient {
                        reason: format!("dispatch budget: {e}"),
                        retry_after: None,
                    }))
                }
            }
        }
    }

    /// Records the attempt's end. A failed write is retried a few times: if it
    /// still fails after a 204, the lease expiry would send the dispatch again,
    /// so the message is retried to make the record right.
    async fn finish(
        &self,
        (delivery, hook_id): (&DeliveryId, Option<u64>),
        repo: &RepoFullName,
        attempt: u32,
        outcome: AttemptOutcome,
        report: TargetOutcome,
    ) -> TargetOutcome {
        let write = || self.store.finish_for_hook(delivery, hook_id, repo, attempt, &outcome, self.clock.now_ms());
        let backoff = ExponentialBuilder::default().with_min_delay(Duration::from_millis(50)).with_max_times(3);
        match write.retry(backoff).sleep(tokio::time::sleep).await {
            Ok(()) => report,
            Err(e) => {
                tracing::error!(error = %e, outcome = ?outcome, "could not record dispatch outcome");
                TargetOutcome::Retry { reason: format!("dispatch store: {e}"), retry_after_ms: None }
            }
        }
    }

    /// The payload's JSON text: inline in the message, or the claim-checked blob.
    async fn load_payload<'m>(&self, payload: &'m PayloadRef) -> Result<std::borrow::Cow<'m, str>, LoadError> {
        match payload {
            PayloadRef::Inline(raw) => Ok(std::borrow::Cow::Borrowed(raw.get())),
            PayloadRef::Stored { key, .. } => {
                let bytes = self.blobs.get(key).await.map_err(|e| match e {
                    BlobError::NotFound(_) => LoadError::Gone(format!("claim-checked payload lost: {e}")),
                    BlobError::Unavailable { .. } => LoadError::Unavailable(e.to_string()),
                })?;
                String::from_utf8(bytes.to_vec())
                    .map(std::borrow::Cow::Owned)
                    .map_err(|_| LoadError::Gone(format!("payload {key} is not UTF-8")))
            }
        }
    }
}

/// What the dispatcher reads off a webhook payload besides forwarding it:
/// the PR's label names (`pull_request.labels[].name`, for
/// [`crate::checks::wants_check_run`]), the head SHA
/// (`pull_request.head.sha`, else a push's `after`) and `number`.
#[derive(Debug, Default, PartialEq, Eq)]
struct PayloadFacts {
    labels: Vec<String>,
    head_sha: Option<crate::domain::HeadSha>,
    pr_number: Option<u64>,
}

impl PayloadFacts {
    /// Reads them from the payload's JSON text, skipping the rest of it
    /// (no tree of the whole payload). Text the quick read cannot take as
    /// the tree would (a key given twice, where the tree keeps the last) is
    /// read through the tree instead, so the answer is always
    /// [`PayloadFacts::of_value`]'s.
    fn read(text: &str) -> PayloadFacts {
        Self::read_quickly(text)
            .unwrap_or_else(|| serde_json::from_str::<Value>(text).map(|v| Self::of_value(&v)).unwrap_or_default())
    }

    /// The facts as read from the whole tree.
    fn of_value(payload: &Value) -> PayloadFacts {
        PayloadFacts {
            labels: crate::checks::pr_labels(payload),
            head_sha: payload
                .pointer("/pull_request/head/sha")
                .or_else(|| payload.get("after"))
                .and_then(Value::as_str)
                .and_then(|s| crate::domain::HeadSha::parse(s).ok()),
            pr_number: payload.get("number").and_then(Value::as_u64),
        }
    }

    /// `None` when the text must be read as a tree.
    fn read_quickly(text: &str) -> Option<PayloadFacts> {
        use serde_json::value::RawValue;
        /// A present key's value, `null` included (a plain `Option` reads
        /// `null` as absent, where the tree has it).
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
            <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
        }
        #[derive(serde::Deserialize)]
        struct Top<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            number: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            after: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            pull_request: Option<&'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct PullRequest<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            head: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            labels: Option<&'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default, deserialize_with = "present")]
            sha: Option<&'a RawValue>,
        }
        /// `Some(None)`: not an object (the tree finds nothing in it);
        /// `None`: an object the quick read cannot take.
        fn object<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Option<Option<T>> {
            if !text.trim_start().starts_with('{') {
                return Some(None);
            }
            serde_json::from_str(text).ok().map(Some)
        }
        let small = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).ok();
        let Some(top) = object::<Top>(text)? else {
            return Some(PayloadFacts::default());
        };
        let pr = match top.pull_request {
            Some(raw) => object::<PullRequest>(raw.get())?,
            None => None,
        };
        let head = match pr.as_ref().and_then(|pr| pr.head) {
            Some(raw) => object::<Head>(raw.get())?,
            None => None,
        };
        // `pull_request.head.sha` when the path exists (whatever it holds), else `after`.
        let sha = head.and_then(|h| h.sha).or(top.after).and_then(small);
        let labels =
            pr.and_then(|pr| pr.labels).and_then(small).map(|labels| json!({"pull_request": {"labels": labels}}));
        Some(PayloadFacts {
            labels: labels.as_ref().map(crate::checks::pr_labels).unwrap_or_default(),
            head_sha: sha.as_ref().and_then(Value::as_str).and_then(|s| crate::domain::HeadSha::parse(s).ok()),
            pr_number: top.number.and_then(small).as_ref().and_then(Value::as_u64),
        })
    }
}

enum LoadError {
    Gone(String),
    Unavailable(String),
}

/// A failed installation lookup (before any record exists).
/// Why one call of a target's dispatch did not succeed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    GitHub(GitHubError),
    /// The budget allows no dispatch for this long (not sent).
    #[error("GitHub's budget allows no dispatch for {0:?}")]
    Paced(Duration),
}

fn retry_or_fail_unrecorded(e: GitHubError) -> TargetOutcome {
    match e {
        GitHubError::Transient { reason, retry_after } => TargetOutcome::Retry {
            reason: format!("installation lookup: {reason}"),
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        },
        // Not sent: the App's primary limit is spent until its reset.
        GitHubError::Deferred { retry_after, .. } => {
            TargetOutcome::Paced { retry_after_ms: retry_after.as_millis() as u64 }
        }
        GitHubError::Permanent { reason, .. } => {
            TargetOutcome::Failed { reason: format!("installation lookup: {reason}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PayloadFacts;
    use serde_json::Value;

    #[test]
    fn payload_facts_read_from_text_are_the_trees() {
        let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        let mut texts: Vec<String> = vec![
            format!(
                r#"{{"number": 7, "pull_request": {{"head": {{"sha": "{sha}"}}, "labels": [{{"name": "a"}}, {{"x": 1}}, {{"name": 2}}]}}}}"#
            ),
            format!(r#"{{"after": "{sha}", "number": "7"}}"#),
            format!(r#"{{"after": "{sha}", "pull_request": {{"head": {{"sha": null}}}}}}"#),
            format!(r#"{{"after": "{sha}", "pull_request": {{"head": {{}}}}, "number": -1}}"#),
            format!(r#"{{"after": "{sha}", "pull_request": {{"head": [1]}}}}"#),
            format!(r#"{{"after": "{sha}", "pull_request": "no", "number": 1.0}}"#),
            format!(r#"{{"after": "{sha}", "pull_request": null, "number": null}}"#),
            format!(r#"{{"number": 1, "number": 2, "after": "{sha}"}}"#),
            format!(
                r#"{{"pull_request": {{"labels": [], "labels": [{{"name": "last"}}], "head": {{"sha": "{sha}", "sha": "no"}}}}}}"#
            ),
            format!(r#"[{{"after": "{sha}"}}]"#),
            r#""text""#.to_owned(),
            r#"{"after": "not a sha", "pull_request": {"labels": null}}"#.to_owned(),
        ];
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/webhooks");
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        let mut found = [0; 3];
        for text in &texts {
            let tree = PayloadFacts::of_value(&serde_json::from_str::<Value>(text).unwrap());
            assert_eq!(PayloadFacts::read(text), tree, "{text}");
            found[0] += usize::from(!tree.labels.is_empty());
            found[1] += usize::from(tree.head_sha.is_some());
            found[2] += usize::from(tree.pr_number.is_some());
        }
        assert!(found.iter().all(|n| *n >= 3), "the cases hold every fact several times: {found:?}");
        // The quick read declines what the tree must decide (keys given twice).
        assert!(PayloadFacts::read_quickly(&texts[7]).is_none());
        assert!(PayloadFacts::read_quickly(&texts[8]).is_none());
        assert!(PayloadFacts::read_quickly(&texts[0]).is_some());
    }
}
