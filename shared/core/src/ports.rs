//! Ports: the small traits the domain talks to. Adapters implement them:
//! SQLite (`crcr_embedded::sqlite`, the embedded default) and SQS/DynamoDB
//! (crate `crcr-aws`); GitHub through octocrab (`crcr-clients`).
//!
//! Every adapter pair passes one contract suite (`shared/core/tests/contract.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{DeliveryId, HeadSha, Level, RepoFullName};

// ---------------------------------------------------------------- clock

/// A UTC timestamp (`2024-05-01T12:34:56Z`) for ms since the epoch (a
/// clock's reading); `<ms> ms` when out of chrono's range.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Wall clock in milliseconds since the Unix epoch. Tests use a settable one.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(start_ms))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- queue

/// An adapter's own error (an AWS SDK error, a SQLite error), kept as the
/// `source()` of the port error it caused.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of a queue adapter. All of them are "try again later" for the caller:
/// ingest answers 503, a worker leaves the message to reappear.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue failed or could not be reached. `what` says what was asked
    /// and what answered (the backend's message included, for logs); `source`
    /// is the backend's error when there is one.
    #[error("queue unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<BackendError>,
    },
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("receipt handle is not valid (message deleted or received again): {0}")]
    BadReceipt(String),
}

macro_rules! unavailable_constructors {
    ($t:ident) => {
        impl $t {
            /// `Unavailable` without an underlying error (a condition the
            /// adapter itself found).
            pub fn unavailable(what: impl Into<String>) -> Self {
                Self::Unavailable { what: what.into(), source: None }
            }
            /// `Unavailable` caused by the backend's `source`: `what` (what
            /// was asked) and the source's text are the message.
            pub fn backend(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
                Self::Unavailable { what: format!("{what}: {source}"), source: Some(Box::new(source)) }
            }
        }
    };
}
unavailable_constructors!(QueueError);
unavailable_constructors!(BlobError);
unavailable_constructors!(StoreError);

/// Which queue of a pair: the source queue or its dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueSide {
    Source,
    DeadLetter,
}

/// A message as received. `receive_count` counts this receive (first receive = 1),
/// like SQS's `ApproximateReceiveCount`.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Stable message id (SQS `MessageId`).
    pub message_id: String,
    /// Handle for delete / change visibility of this receive.
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
    /// When the message was first sent to this queue (ms since epoch).
    pub sent_at_ms: i64,
    /// Why it was dead-lettered (only on DLQ messages written by crcr;
    /// messages moved by SQS's own redrive have none).
    pub dead_letter_reason: Option<String>,
}

/// What [`QueueInspect::stats`] reports about one side of a queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Messages that can be received now (SQS `ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Messages received and not yet deleted or released
    /// (`ApproximateNumberOfMessagesNotVisible`), including ones waiting out a
    /// retry delay set with `change_visibility`.
    pub in_flight: u64,
    /// Messages sent with a delay, not yet receivable (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
    /// When the oldest message on this side was sent (ms since epoch), when
    /// the adapter can tell without receiving (SQLite: yes; SQS: no, that is
    /// CloudWatch's `ApproximateAgeOfOldestMessage`).
    pub oldest_sent_at_ms: Option<i64>,
}

/// The producer side of an at-least-once queue (SQS semantics): what ingest
/// and the callback route need.
#[async_trait]
pub trait QueueSend: Send + Sync {
    /// Largest body the queue accepts, in bytes (SQS: 262,144).
    fn max_message_bytes(&self) -> usize;
    /// Durably enqueues `body` on the source queue; returns the message id.
    async fn send(&self, body: &str) -> Result<String, QueueError>;
}

/// Receiving from a queue with visibility timeout and receive count: a
/// message received and not deleted reappears after its visibility
/// timeout; once received more than `max_receive_count` times it is moved
/// to the dead-letter queue on the next receive.
#[async_trait]
pub trait QueueReceive: Send + Sync {
    /// Receives up to `max` (1..=10) visible messages from `side`, hiding each
    /// for `visibility`. Waits up to `wait` for at least one (long polling).
    async fn receive(
        &self,
        side: QueueSide,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;
}

/// Settling a received message: what a message handler (the dispatcher,
/// the reconciler) does with it once it has been processed.
#[async_trait]
pub trait QueueSettle: Send + Sync {
    /// Deletes a received message (processing done).
    async fn delete(&self, side: QueueSide, receipt: &str) -> Result<(), QueueError>;
    /// Makes a received message visible again after `delay` (0 = now).
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError>;
    /// Sends a copy of `msg` to the dead-letter queue carrying `reason`, then
    /// deletes it from the source queue. The copy is on the DLQ before the
    /// original is deleted, so a crash in between duplicates, never loses.
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError>;
    /// Puts a source-queue message back to be received after `delay`
    /// without this receive counting towards the queue's redrive (at most
    /// [`MAX_POSTPONE`]; SQS: a copy sent with `DelaySeconds`, then the
    /// original deleted, so a crash in between duplicates, never loses).
    /// For a message that waited on GitHub's budget rather than failed
    /// ([`crate::budget`]): waiting is not a reason to dead-letter it.
    async fn postpone(&self, msg: &ReceivedMessage, delay: Duration) -> Result<(), QueueError>;
}

/// The longest [`QueueSettle::postpone`] (SQS's largest `DelaySeconds`,
/// 900 s: "SendMessage", Amazon SQS API reference); a longer wait is
/// postponed again when the message comes back.
pub const MAX_POSTPONE: Duration = Duration::from_secs(900);

/// Figures about a queue for on-call tools (`crcr status`) and tests.
#[async_trait]
pub trait QueueInspect: Send + Sync {
    /// Number of messages (visible + in flight) on `side`; approximate on SQS.
    async fn depth(&self, side: QueueSide) -> Result<u64, QueueError>;
    /// Visible, in-flight and delayed counts of `side`, and its oldest
    /// message's send time when the adapter can tell.
    async fn stats(&self, side: QueueSide) -> Result<QueueStats, QueueError>;
}

/// A whole queue, as its adapters (SQS, SQLite) provide it and on-call
/// tools use it. Every type with the four capabilities is one.
pub trait EventQueue: QueueSend + QueueReceive + QueueSettle + QueueInspect {}

impl<T: QueueSend + QueueReceive + QueueSettle + QueueInspect + ?Sized> EventQueue for T {}

/// Redrive: moves up to `limit` messages from the DLQ back to the source
/// queue, one by one (send to source, then delete from DLQ; a crash in
/// between duplicates, never loses). Returns how many moved.
pub async fn redrive(queue: &dyn EventQueue, limit: usize) -> Result<usize, QueueError> {
    let mut moved = 0;
    while moved < limit {
        let batch = queue
            .receive(
                QueueSide::DeadLetter,
                (limit - moved).min(10),
                Duration::from_secs(30),
                // Up to 1 s: SQS may answer a zero-wait receive with
                // nothing from a non-empty queue (short polling samples).
                Duration::from_secs(1),
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            queue.send(&m.body).await?;
            queue.delete(QueueSide::DeadLetter, &m.receipt).await?;
            moved += 1;
        }
    }
    Ok(moved)
}

// ---------------------------------------------------------------- blobs

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// As [`QueueError::Unavailable`], for the claim-check store.
    #[error("blob store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<BackendError>,
    },
    #[error("blob {0:?} not found")]
    NotFound(String),
}

/// Claim-check storage for payloads too large for one queue message.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `key` (overwrites). Durable when it returns.
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError>;
}

// ---------------------------------------------------------------- small state

/// Small named values that must survive restarts and be shared by every
/// instance of the relay (the redeliver cursor, for one). SQLite table `kv`
/// in `crcr serve`; the DynamoDB `kv` table (`pk` S, `value` S) on AWS.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The value stored under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Stores `value` under `key` (overwrites). Durable when it returns.
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// [`StateStore::put`] for `ttl` (whole seconds): after that `get` reads
    /// `None` and the store removes it (SQLite on its next write, DynamoDB by
    /// TTL). For per-commit records that only matter for a while.
    async fn put_expiring(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Stores `value` under `key` for `ttl` (as [`StateStore::put_expiring`];
    /// `None`: for good, as [`StateStore::put`]) only if what is stored now
    /// is `expected` (`None`: nothing, or an expired value). `Ok(Ok(()))` when written; `Ok(Err(current))` when
    /// not, with what is stored now. One conditional write (DynamoDB returns
    /// the stored item with the failed condition), so of two callers that
    /// read the same value at most one writes over it.
    async fn put_if(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<Result<(), Option<String>>, StoreError>;
    /// Takes (or renews) the lease `key` for `holder` for `ttl` (whole
    /// seconds, at least 1): `true` when no one else holds an unexpired lease
    /// on it. One conditional write, so of two callers at once exactly one
    /// gets it. A crashed holder's lease simply expires.
    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives the lease `key` back if `holder` still holds it (else nothing).
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError>;
}

/// [`InMemoryStateStore`] that lets other tasks run before each read and
/// conditional write returns (so concurrent changers interleave) and counts
/// conditional writes: for tests of what is built on [`StateStore::put_if`].
#[cfg(test)]
#[derive(Default)]
pub(crate) struct InterleavingStateStore {
    inner: InMemoryStateStore,
    pub conditional_writes: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
#[async_trait]
impl StateStore for InterleavingStateStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let read = self.inner.get(key).await;
        tokio::task::yield_now().await;
        read
    }
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.put(key, value).await
    }
    async fn put_expiring(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_expiring(key, value, ttl).await
    }
    async fn put_if(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<Result<(), Option<String>>, StoreError> {
        tokio::task::yield_now().await;
        self.conditional_writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put_if(key, expected, value, ttl).await
    }
    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.try_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_lease(key, holder).await
    }
}

/// [`StateStore`] in process memory (tests, one-shot CLI runs).
#[derive(Debug, Default)]
pub struct InMemoryStateStore {
    /// key → (value, expires at).
    map: std::sync::Mutex<std::collections::HashMap<String, (String, Option<std::time::Instant>)>>,
    /// key → (holder, expires at).
    leases: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

#[async_trait]
impl StateStore for InMemoryStateStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = std::time::Instant::now();
        let map = self.map.lock().expect("state store");
        Ok(map.get(key).filter(|(_, until)| until.is_none_or(|u| u > now)).map(|(v, _)| v.clone()))
    }
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.map.lock().expect("state store").insert(key.to_owned(), (value.to_owned(), None));
        Ok(())
    }
    async fn put_expiring(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let until = std::time::Instant::now() + ttl;
        self.map.lock().expect("state store").insert(key.to_owned(), (value.to_owned(), Some(until)));
        Ok(())
    }
    async fn put_if(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<Result<(), Option<String>>, StoreError> {
        let now = std::time::Instant::now();
        let mut map = self.map.lock().expect("state store");
        let current = map.get(key).filter(|(_, until)| until.is_none_or(|u| u > now)).map(|(v, _)| v.as_str());
        if current != expected {
            return Ok(Err(current.map(str::to_owned)));
        }
        map.insert(key.to_owned(), (value.to_owned(), ttl.map(|ttl| now + ttl)));
        Ok(Ok(()))
    }
    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().expect("state store");
        let free = leases.get(key).is_none_or(|(h, until)| h == holder || *until <= now);
        if free {
            leases.insert(key.to_owned(), (holder.to_owned(), now + ttl.max(Duration::from_secs(1))));
        }
        Ok(free)
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().expect("state store");
        if leases.get(key).is_some_and(|(h, _)| h == holder) {
            leases.remove(key);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- dispatch store

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// As [`QueueError::Unavailable`], for a store.
    #[error("store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<BackendError>,
    },
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// State of one (delivery, target) dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStatus {
    /// Claimed by a worker (under a lease) or waiting for a retry.
    Pending,
    /// GitHub answered 204: the downstream got it. Never sent again.
    Dispatched,
    /// Permanent failure (404, 422, ...): not retried.
    Failed,
    /// Not sent: the target's breaker was open ([`crate::breaker`]);
    /// `last_error` says why. A later receive of the message claims it
    /// again (and sends it if the breaker has closed by then).
    Paused,
}

impl DispatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchStatus::Pending => "pending",
            DispatchStatus::Dispatched => "dispatched",
            DispatchStatus::Failed => "failed",
            DispatchStatus::Paused => "paused",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "dispatched" => Some(Self::Dispatched),
            "failed" => Some(Self::Failed),
            "paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

/// What the relay knows about the event when it dispatches, stored with the
/// record (the callbacks issue reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchMeta {
    /// Webhook event (`pull_request`, `push`).
    pub event: String,
    /// Webhook action, when the event has one.
    pub action: Option<String>,
    /// The upstream commit (pull requests: `pull_request.head.sha`; pushes: `after`).
    pub head_sha: Option<HeadSha>,
    pub pr_number: Option<u64>,
    pub level: Level,
    /// Whether this target's jobs get an upstream check run (issue 4): L4
    /// always; L3 when the dispatched pull request carried the device label
    /// ([`crate::checks::wants_check_run`]). Set at dispatch; records
    /// written before it existed read as `false`.
    #[serde(default)]
    pub check_run: bool,
    /// The repository's L3 device key in the allowlist (`ciflow/crcr/<device>`
    /// asks for its check runs), when it has one. Records written before it
    /// existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When ingest accepted the dispatched webhook (ms since epoch, relay
    /// clock): orders dispatches against a later `synchronize` / `closed`
    /// ([`crate::upstream::Tracking`]) however late the dispatcher ran.
    /// Records written before it existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<i64>,
    /// The webhook that delivered the event (`X-GitHub-Hook-ID`), when the
    /// delivery said: part of the record's identity ([`record_key`]).
    /// Messages and records written before it existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<u64>,
}

impl DispatchMeta {
    /// The meta of a dispatch of `event` to a target at `level`, with
    /// nothing else known: no action, commit, pull request, check run,
    /// device, receive time or hook.
    pub fn new(event: &str, level: Level) -> DispatchMeta {
        DispatchMeta {
            event: event.to_owned(),
            action: None,
            head_sha: None,
            pr_number: None,
            level,
            check_run: false,
            device: None,
            received_at_ms: None,
            hook_id: None,
        }
    }
}

/// What identifies a delivery, and so a dispatch record: the webhook
/// (`X-GitHub-Hook-ID`) and the event's GUID (`X-GitHub-Delivery`).
///
/// GitHub gives every webhook subscribed to one event the same GUID (REST
/// API "Webhook deliveries": `guid` is the "Unique identifier for the event
/// (shared with all deliveries for all webhooks that subscribe to this
/// event)", <https://docs.github.com/en/rest/apps/webhooks#list-deliveries-for-an-app-webhook>;
/// github/docs issue 32822 "Clarify that X-GitHub-Delivery is unique per
/// event, not per delivery"), and a redelivery keeps the GUID and the hook
/// ("Webhook events and payloads" → delivery headers `X-GitHub-Hook-ID`,
/// `X-GitHub-Delivery`, <https://docs.github.com/en/webhooks/webhook-events-and-payloads#delivery-headers>;
/// "Redelivering webhooks"). So (hook, GUID) names one delivery: two hooks'
/// deliveries of one event are both dispatched, a redelivery of either is
/// not.
///
/// Design: records stay keyed by the GUID, which is what downstream sees
/// (`client_payload.delivery_id`), what callbacks and HUD name, and what
/// [`DispatchStore::records`] looks up, so the callback path is unchanged;
/// the hook joins the per-target part of the key: `<owner/repo lower-cased>`
/// without a hook (messages from before the header was read, a delivery
/// without it), `<owner/repo lower-cased>#hook/<id>` with one (`#` cannot
/// occur in a repository name). `records(guid)` therefore returns one
/// record per (hook, target); a callback is matched by target, whichever
/// hook's dispatch it came from.
pub fn record_key(target: &RepoFullName, hook_id: Option<u64>) -> String {
    match hook_id {
        None => target.key().to_owned(),
        Some(hook) => format!("{}#hook/{hook}", target.key()),
    }
}

/// The durable record per (delivery id, target repository).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRecord {
    pub delivery_id: DeliveryId,
    pub target: RepoFullName,
    pub status: DispatchStatus,
    /// Number of dispatch attempts started (claims).
    pub attempts: u32,
    pub last_error: Option<String>,
    /// While pending: the claim is held until this time (ms since epoch).
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// When GitHub answered 204 (ms since epoch).
    pub dispatched_at_ms: Option<i64>,
    pub payload_trimmed: bool,
    pub meta: DispatchMeta,
}

/// Answer of [`DispatchStore::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lease and must finish with `finish`. `attempt` is
    /// this attempt's number (1 = first).
    Acquired { attempt: u32 },
    /// Already got a 204: do not send again.
    AlreadyDispatched,
    /// Failed permanently before: do not send again.
    AlreadyFailed,
    /// Another worker holds an unexpired lease until `until_ms`.
    Leased { until_ms: i64 },
}

/// How an attempt ended, written by [`DispatchStore::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Dispatched {
        payload_trimmed: bool,
    },
    /// Permanent failure, with the reason.
    Failed {
        reason: String,
    },
    /// Transient failure: stays pending, lease released so the next receive
    /// of the message can claim it at once.
    Retry {
        reason: String,
    },
    /// Not sent because the target's breaker is open: `paused` with the
    /// reason, lease released; a later claim takes it again.
    Paused {
        reason: String,
    },
}

/// Durable per-(delivery, target) dispatch records: the idempotency keys of
/// the dispatcher. All writes are conditional so two workers never both hold
/// a target.
#[async_trait]
pub trait DispatchStore: Send + Sync {
    /// Claims (delivery, `meta.hook_id`, target) ([`record_key`]) for one
    /// attempt under a lease of `lease`:
    /// creates the record if absent, or takes over a pending record whose
    /// lease expired before `now_ms` (a dead attempt). Increments `attempts`.
    async fn claim(
        &self,
        delivery: &DeliveryId,
        target: &RepoFullName,
        meta: &DispatchMeta,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError>;
    /// [`DispatchStore::claim`] of several targets of one delivery (each
    /// with its own meta) at the same `now_ms`: one answer per target, in
    /// their order, each a claim's own success or failure. The default
    /// claims them concurrently; an adapter may write them together
    /// (SQLite: one write, so a delivery's ten records dirty their table's
    /// and indexes' pages in one commit instead of ten).
    async fn claim_each(
        &self,
        delivery: &DeliveryId,
        targets: &[(RepoFullName, DispatchMeta)],
        now_ms: i64,
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        futures::future::join_all(
            targets.iter().map(|(target, meta)| self.claim(delivery, target, meta, now_ms, lease)),
        )
        .await
    }
    /// [`DispatchStore::finish_for_hook`] of a delivery without a hook id.
    async fn finish(
        &self,
        delivery: &DeliveryId,
        target: &RepoFullName,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.finish_for_hook(delivery, None, target, attempt, outcome, now_ms).await
    }
    /// Ends attempt number `attempt` (from [`Claim::Acquired`]) of the
    /// record of (`delivery`, `hook_id`, `target`): `hook_id` as the claim's
    /// [`DispatchMeta::hook_id`] ([`record_key`]). Does nothing
    /// if the record is not pending any more (an attempt already finished
    /// it); a `Failed` or `Retry` of an attempt whose lease expired and was
    /// taken over by a later one (`attempts` moved on) does nothing either,
    /// so it never releases the newer attempt's lease. A `Dispatched` is
    /// always recorded while pending: GitHub took it, whichever attempt sent it.
    async fn finish_for_hook(
        &self,
        delivery: &DeliveryId,
        hook_id: Option<u64>,
        target: &RepoFullName,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// All records of one delivery (GUID), every hook's, ordered by
    /// [`record_key`].
    async fn records(&self, delivery: &DeliveryId) -> Result<Vec<DispatchRecord>, StoreError>;
    /// Counts of the records last written at or after `since_ms`, by status
    /// (`crcr status`); `now_ms` tells leases still held from expired ones.
    /// For on-call tools, not the dispatch path: an adapter may read the whole
    /// table.
    async fn outcome_counts(&self, since_ms: i64, now_ms: i64) -> Result<DispatchCounts, StoreError>;
    /// Up to `limit` records GitHub accepted (status dispatched) whose
    /// `dispatched_at_ms` is in `[from_ms, to_ms)`, oldest first: the
    /// "dispatched but never started" sweep reads these. Served by an index
    /// (SQLite) or a sparse GSI by dispatch day (DynamoDB), not a scan.
    async fn dispatched_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<DispatchRecord>, StoreError>;
    /// Up to `limit` records (any status) whose `meta.head_sha` is
    /// `head_sha`, oldest `created_at_ms`
    /// first: how `labeled`, `synchronize`, `closed` and the `rerequested`
    /// events find the relay's own records of an upstream commit (fork PRs
    /// included, whose check-run events carry no pull request). Served by an
    /// index (SQLite) or a sparse GSI `by_head_sha` (DynamoDB), not a scan.
    async fn records_for_commit(&self, head_sha: &HeadSha, limit: usize) -> Result<Vec<DispatchRecord>, StoreError>;
}

/// Answer of [`DispatchStore::outcome_counts`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchCounts {
    /// GitHub answered 204.
    pub dispatched: u64,
    /// Failed permanently (404, 422, ...).
    pub failed: u64,
    /// Not sent: the target's breaker was open.
    #[serde(default)]
    pub paused: u64,
    /// Not finished: `in_progress` of them under a live lease (an attempt is
    /// running), the rest waiting for the message's next receive, on the DLQ,
    /// or left by an attempt that died.
    pub pending: u64,
    pub in_progress: u64,
}

// ---------------------------------------------------------------- GitHub

/// A GitHub App installation id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstallationId(pub u64);

/// A failed GitHub call, classified once (see `crcr_clients::github::classify`).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitHubError {
    /// Worth retrying: 5xx, timeouts, connection errors, 403/429 rate limits.
    /// `retry_after` is GitHub's own hint (`Retry-After` or
    /// `x-ratelimit-reset` - now) when it gave one.
    #[error("transient GitHub error: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// Will not succeed by retrying: 404 (App not installed), 422, other 4xx.
    #[error("GitHub rejected the request ({status}): {reason}")]
    Permanent { status: u16, reason: String },
    /// GitHub's primary rate limit of the identity that makes the request
    /// has no more left for it until `retry_after` (the window's reset):
    /// not sent, as the relay's own count has nothing left for this kind
    /// of request ([`crate::rate_limit`]), or refused by GitHub with
    /// `x-ratelimit-remaining: 0`. Transient, and no sign that anything is
    /// wrong with the target: the work waits for the reset without the
    /// wait counting as a failure.
    #[error("{reason}")]
    Deferred { reason: String, retry_after: Duration },
}

impl GitHubError {
    /// Worth trying again later: [`GitHubError::Transient`] and [`GitHubError::Deferred`].
    pub fn is_transient(&self) -> bool {
        matches!(self, GitHubError::Transient { .. } | GitHubError::Deferred { .. })
    }

    /// When to try again, if known: GitHub's hint, or the reset a deferred request waits for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GitHubError::Transient { retry_after, .. } => *retry_after,
            GitHubError::Deferred { retry_after, .. } => Some(*retry_after),
            GitHubError::Permanent { .. } => None,
        }
    }
}

/// Whether a commit exists on a repository (the reconciler checks the
/// upstream commit SHA a `nightly` / `periodic` callback names).
#[async_trait]
pub trait CommitLookup: Send + Sync {
    /// `GET /repos/{owner}/{repo}/commits/{sha}`: `Ok(true)` on 200,
    /// `Ok(false)` when GitHub answers 404 or 422 ("No commit found for SHA"),
    /// `Err` for anything else (the caller decides what an outage means).
    async fn commit_exists(&self, repo: &RepoFullName, sha: &str) -> Result<bool, GitHubError>;
}

/// The GitHub App calls the dispatcher makes. Installation tokens are minted,
/// cached and renewed inside the adapter.
#[async_trait]
pub trait GitHubApp: Send + Sync {
    /// `GET /repos/{owner}/{repo}/installation`: `None` when the App is not
    /// installed there (404).
    async fn installation(&self, repo: &RepoFullName) -> Result<Option<InstallationId>, GitHubError>;
    /// `POST /repos/{owner}/{repo}/dispatches` with `body` (already within
    /// GitHub's limits; every target's request sends the same bytes) and an
    /// installation token narrowed to `repo` with `contents: write`.
    async fn dispatch(
        &self,
        repo: &RepoFullName,
        installation: InstallationId,
        body: &crate::client_payload::DispatchBody,
    ) -> Result<(), GitHubError>;
    /// Raw contents of a file (`GET /repos/{o}/{r}/contents/{path}?ref=`),
    /// read with an installation token of `repo`.
    async fn file_contents(&self, repo: &RepoFullName, path: &str, git_ref: &str) -> Result<Vec<u8>, GitHubError>;
}

/// Per-repository callback rate limit (fixed one-minute windows; the
/// in-process one is `crcr_http::callback_route::InMemoryRateLimiter`, the
/// shared ones the SQLite and DynamoDB `kv` adapters).
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one callback of `repo` at `now_ms`; `Some(wait)` when over the limit.
    async fn hit(&self, repo: &str, now_ms: i64) -> Result<Option<Duration>, StoreError>;
}

/// How long a rate-limit window's counter outlives its window (seconds), so
/// a store's expiry (DynamoDB TTL, the SQLite sweep) removes it only once
/// nobody can count into it any more.
pub const RATE_WINDOW_TTL_SLACK_SECS: i64 = 60;

/// Key prefixes of the key-value store's entries (SQLite table `kv`,
/// DynamoDB table `kv`), one per use; both adapters write the same keys.
pub mod kv_prefix {
    /// `binding#<lower-cased owner/repo>` → `value` (the `repository_id`).
    pub const BINDING: &str = "binding#";
    /// `jti#<issuer>|<jti>` → `digest` (hex SHA-256 of the body), `expires_at`.
    pub const JTI: &str = "jti#";
    /// `rate#<lower-cased owner/repo>#<minute window>` → `n` (callbacks counted), `expires_at`.
    pub const RATE: &str = "rate#";
    /// `state#<key>` → `value`.
    pub const STATE: &str = "state#";
    /// `lease#<key>` → `value` (the holder), `expires_at`.
    pub const LEASE: &str = "lease#";
}
