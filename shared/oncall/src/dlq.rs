//! Dead-letter queue operations: list (peek), show, replay and purge.
//!
//! All four start with a *scan*: receive every message of the DLQ (up to
//! [`ScanOptions::max_messages`]) in batches of 10 with a visibility timeout
//! (the hold), de-duplicated by message id, until a receive comes back empty.
//! Holding the messages already read is what lets the scan see every message
//! once. Then:
//!
//! - **list** / **show** release every message (`change_visibility` 0) right
//!   after the scan, before looking anything up: nothing is lost, nothing
//!   stays hidden.
//! - **replay** releases the messages it does not select, then moves each
//!   selected one: `send` the body to the source queue, and only once that
//!   succeeded `delete` it from the DLQ. A crash or a failed delete in
//!   between leaves the message on both queues: harmless, because the
//!   dispatcher's per-(delivery, target) records make processing a message
//!   again send nothing to a target already dispatched.
//! - **purge** releases what it does not select and deletes the rest.
//!
//! A message is described from its body ([`QueueMessage::decode`]; a body
//! this build cannot decode is still listed, with the decode error), the
//! dead-letter reason the dispatcher attached (none when the queue's own
//! redrive policy moved it) and the delivery's dispatch records.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::message::{PayloadRef, QueueMessage};
use crcr_core::ports::{
    BlobStore, Clock, DispatchRecord, DispatchStatus, DispatchStore, EventQueue, QueueError, QueueSide, ReceivedMessage,
};

use super::progress::Progress;
use super::table::Table;
use super::{format_age, format_time};

/// Errors that stop a DLQ command. Per-message problems (a record lookup
/// that failed, a message that could not be moved) are reported in the
/// command's result instead.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The ports a DLQ command works on.
#[derive(Clone, Copy)]
pub struct Dlq<'a> {
    /// The queue pair: the DLQ is read, replays go to the source queue.
    pub queue: &'a dyn EventQueue,
    /// Dispatch records: attempt history and targets still pending.
    pub store: &'a dyn DispatchStore,
    /// Claim-checked payloads (to read the PR number or ref of a large
    /// event, and for `show`); `None` skips them.
    pub blobs: Option<&'a dyn BlobStore>,
    pub clock: &'a dyn Clock,
}

// ---------------------------------------------------------------- options and filters

/// How a scan reads the DLQ.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// At most this many messages are read (default 1,000); the rest of a
    /// larger DLQ is not looked at (the result says so).
    pub max_messages: usize,
    /// Visibility timeout of each receive: how long a message read stays
    /// hidden from other readers if this command dies before releasing it.
    pub hold: Duration,
    /// Long-polling wait of each receive (default 1 s: SQS may answer a
    /// zero-wait receive with nothing from a non-empty queue).
    pub wait: Duration,
}

impl ScanOptions {
    /// For list / show / status: a 30 s hold.
    pub fn peek() -> Self {
        Self { max_messages: 1_000, hold: Duration::from_secs(30), wait: Duration::from_secs(1) }
    }
    /// For replay / purge: a 120 s hold, extended while working.
    pub fn work() -> Self {
        Self { hold: Duration::from_secs(120), ..Self::peek() }
    }
}

/// (selected, not selected) messages with what the caller keeps of each.
type Split<T> = (Vec<(T, DlqMessage)>, Vec<(T, DlqMessage)>);

/// Which DLQ messages a command applies to. Empty = all.
#[derive(Clone, Debug, Default)]
pub struct DlqFilter {
    /// `pull_request`, or `pull_request.opened` for one action.
    pub event: Option<String>,
    /// A target repository: one of the delivery's dispatch records, or named
    /// in the dead-letter reason (targets that failed before any record).
    pub repo: Option<RepoFullName>,
    /// Only events accepted by ingest (or, when undecodable, put on the DLQ)
    /// within this long before now.
    pub since: Option<Duration>,
    /// Case-insensitive text in the dead-letter reason or decode error.
    pub reason: Option<String>,
    /// Message ids or delivery ids; any of them matches.
    pub ids: Vec<String>,
    /// At most this many messages (oldest event first).
    pub limit: Option<usize>,
}

impl DlqFilter {
    /// Whether `m` passes every filter but the limit.
    pub fn matches(&self, m: &DlqMessage, now_ms: i64) -> bool {
        if let Some(e) = &self.event {
            let ok = match e.split_once('.') {
                Some((event, action)) => m.event.as_deref() == Some(event) && m.action.as_deref() == Some(action),
                None => m.event.as_deref() == Some(e.as_str()),
            };
            if !ok {
                return false;
            }
        }
        if let Some(repo) = &self.repo {
            let in_records = m.targets.iter().any(|t| t.target == *repo);
            let in_reason = m.reason.as_deref().is_some_and(|r| r.to_ascii_lowercase().contains(repo.key()));
            if !(in_records || in_reason) {
                return false;
            }
        }
        if let Some(since) = self.since {
            if m.event_time_ms() < now_ms - since.as_millis() as i64 {
                return false;
            }
        }
        if let Some(text) = &self.reason {
            let text = text.to_lowercase();
            let hit = [m.reason.as_deref(), m.decode_error.as_deref()]
                .into_iter()
                .flatten()
                .any(|r| r.to_lowercase().contains(&text));
            if !hit {
                return false;
            }
        }
        if !self.ids.is_empty() {
            let hit = self
                .ids
                .iter()
                .any(|id| *id == m.message_id || m.delivery_id.as_ref().is_some_and(|d| d.as_str() == id.as_str()));
            if !hit {
                return false;
            }
        }
        true
    }

    /// Splits `messages` into (selected, not selected): the matching ones,
    /// oldest event first, at most `limit` of them.
    fn select<T>(&self, messages: Vec<(T, DlqMessage)>, now_ms: i64) -> Split<T> {
        let (mut hit, mut rest): (Vec<_>, Vec<_>) = messages.into_iter().partition(|(_, m)| self.matches(m, now_ms));
        hit.sort_by_key(|(_, m)| (m.event_time_ms(), m.sent_at_ms));
        if let Some(limit) = self.limit {
            if hit.len() > limit {
                rest.extend(hit.drain(limit..));
            }
        }
        (hit, rest)
    }
}

// ---------------------------------------------------------------- describing a message

/// Why a message is on the DLQ, by how it got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The dispatcher gave up after its receives: some target kept failing
    /// transiently (GitHub down, rate limited, the store unavailable). A
    /// replay once the cause is gone sends the targets still pending.
    RetriesExhausted,
    /// The dispatcher found the message unprocessable (e.g. its claim-checked
    /// payload is gone). A replay fails the same way; purge it after a look.
    Unprocessable,
    /// The body is not a message this build knows (corrupt, or a newer
    /// version): see the decode error.
    Undecodable,
    /// No reason attached: the queue's redrive policy moved it after
    /// `maxReceiveCount` receives (the consumer crashed or timed out on it,
    /// or could not write it to the DLQ itself).
    RedrivePolicy,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RetriesExhausted => "retries_exhausted",
            FailureClass::Unprocessable => "unprocessable",
            FailureClass::Undecodable => "undecodable",
            FailureClass::RedrivePolicy => "redrive_policy",
        }
    }

    fn of(reason: Option<&str>, decode_error: Option<&str>) -> Self {
        match (reason, decode_error) {
            (_, Some(_)) => FailureClass::Undecodable,
            (None, None) => FailureClass::RedrivePolicy,
            (Some(r), None) if r.starts_with("still failing after") => FailureClass::RetriesExhausted,
            (Some(_), None) => FailureClass::Unprocessable,
        }
    }
}

/// One target's state, from the delivery's dispatch record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub target: RepoFullName,
    pub status: DispatchStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A DLQ message as the on-call engineer sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DlqMessage {
    /// The queue's message id (stable while the message stays on the DLQ).
    pub message_id: String,
    /// The message's `type` (`dispatch_v1`, ...), when the body is JSON with one.
    pub message_type: Option<String>,
    pub delivery_id: Option<DeliveryId>,
    pub event: Option<String>,
    pub action: Option<String>,
    /// The pull request number (`pull_request` events).
    pub pr_number: Option<u64>,
    /// The pushed ref (`push` events).
    pub git_ref: Option<String>,
    pub head_sha: Option<String>,
    /// When ingest accepted the event (ms since epoch).
    pub received_at_ms: Option<i64>,
    /// When the message was sent to the DLQ; for a message the redrive
    /// policy moved, when it was first sent to the source queue.
    pub sent_at_ms: i64,
    /// Now minus the event's acceptance time (or `sent_at_ms` if unknown).
    pub age_ms: i64,
    /// The queue's receive count: receives on the source queue for a
    /// message the redrive policy moved, plus every read of the DLQ,
    /// this one included.
    pub receive_count: u32,
    pub failure_class: FailureClass,
    /// The dead-letter reason the dispatcher attached.
    pub reason: Option<String>,
    /// Why the body could not be decoded.
    pub decode_error: Option<String>,
    /// Size of the payload, and where it is (`inline` or the claim-check key).
    pub payload_bytes: usize,
    pub payload_key: Option<String>,
    /// The delivery's dispatch records, by target.
    pub targets: Vec<TargetState>,
    /// Why the records could not be read (the message is listed anyway).
    pub records_error: Option<String>,
}

impl DlqMessage {
    /// When the event happened for filters and ordering: ingest's acceptance
    /// time, else when the message reached the queue.
    pub fn event_time_ms(&self) -> i64 {
        self.received_at_ms.unwrap_or(self.sent_at_ms)
    }

    /// Targets whose dispatch is not finished (a replay would try them).
    pub fn pending(&self) -> impl Iterator<Item = &TargetState> {
        self.targets.iter().filter(|t| t.status == DispatchStatus::Pending)
    }

    pub fn count(&self, status: DispatchStatus) -> usize {
        self.targets.iter().filter(|t| t.status == status).count()
    }

    /// `event.action`, or `?` when unknown.
    pub fn event_label(&self) -> String {
        match (&self.event, &self.action) {
            (Some(e), Some(a)) => format!("{e}.{a}"),
            (Some(e), None) => e.clone(),
            (None, _) => self.message_type.clone().map_or_else(|| "?".into(), |t| format!("({t})")),
        }
    }

    /// `PR #123`, the ref, or `-`.
    pub fn subject(&self) -> String {
        match (&self.pr_number, &self.git_ref) {
            (Some(n), _) => format!("PR #{n}"),
            (None, Some(r)) => r.clone(),
            (None, None) => "-".into(),
        }
    }

    /// The reason for people: the dead-letter reason, the decode error, or
    /// what a missing reason means.
    pub fn reason_text(&self) -> String {
        match (&self.reason, &self.decode_error) {
            (Some(r), _) => r.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => "(no reason: moved by the queue's redrive policy)".into(),
        }
    }
}

/// The fields read from a webhook payload to describe it.
#[derive(Deserialize, Default)]
struct PayloadPeek {
    number: Option<u64>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    pull_request: Option<PullRequestPeek>,
}

#[derive(Deserialize)]
struct PullRequestPeek {
    number: Option<u64>,
    head: Option<HeadPeek>,
}

#[derive(Deserialize)]
struct HeadPeek {
    sha: Option<String>,
}

#[derive(Deserialize)]
struct GenericPeek {
    received_at_ms: Option<i64>,
    delivery_id: Option<String>,
}

#[derive(Deserialize)]
struct TypePeek {
    #[serde(rename = "type")]
    ty: Option<String>,
}

impl<'a> Dlq<'a> {
    /// Describes a received DLQ message (body, reason, dispatch records).
    async fn describe(&self, msg: &ReceivedMessage, now_ms: i64) -> DlqMessage {
        let mut m = DlqMessage {
            message_id: msg.message_id.clone(),
            message_type: serde_json::from_str::<TypePeek>(&msg.body).ok().and_then(|t| t.ty),
            delivery_id: None,
            event: None,
            action: None,
            pr_number: None,
            git_ref: None,
            head_sha: None,
            received_at_ms: None,
            sent_at_ms: msg.sent_at_ms,
            age_ms: 0,
            receive_count: msg.receive_count,
            failure_class: FailureClass::RedrivePolicy,
            reason: msg.dead_letter_reason.clone(),
            decode_error: None,
            payload_bytes: 0,
            payload_key: None,
            targets: vec![],
            records_error: None,
        };
        match QueueMessage::decode(&msg.body) {
            Err(e) => m.decode_error = Some(e.to_string()),
            Ok(QueueMessage::CallbackV1(c)) => {
                m.event = Some("callback".into());
                m.received_at_ms = Some(c.received_at_ms);
            }
            Ok(QueueMessage::DispatchV1(d)) => {
                m.delivery_id = Some(d.delivery_id);
                m.event = Some(d.event);
                m.action = d.action;
                m.received_at_ms = Some(d.received_at_ms);
                let peek = match &d.payload {
                    PayloadRef::Inline(raw) => {
                        m.payload_bytes = raw.get().len();
                        serde_json::from_str::<PayloadPeek>(raw.get()).unwrap_or_default()
                    }
                    PayloadRef::Stored { key, bytes } => {
                        m.payload_bytes = *bytes;
                        m.payload_key = Some(key.clone());
                        match self.blobs {
                            Some(blobs) => match blobs.get(key).await {
                                Ok(b) => serde_json::from_slice::<PayloadPeek>(&b).unwrap_or_default(),
                                Err(_) => PayloadPeek::default(),
                            },
                            None => PayloadPeek::default(),
                        }
                    }
                };
                let pr = peek.pull_request.as_ref();
                m.pr_number = pr.and_then(|p| p.number).or(peek.number);
                m.head_sha = pr.and_then(|p| p.head.as_ref()).and_then(|h| h.sha.clone()).or(peek.after);
                m.git_ref = peek.git_ref;
            }
            Ok(QueueMessage::UpstreamV1(u)) => {
                m.event = Some(u.event.name().to_owned());
                m.pr_number = u.event.pr_number();
                m.head_sha = Some(u.event.head_sha().to_string());
                m.delivery_id = Some(u.delivery_id);
                m.received_at_ms = Some(u.received_at_ms);
            }
            // Other message types (e.g. the reconcile queue's): described
            // from the fields they have in common.
            #[allow(unreachable_patterns)]
            Ok(_) => {
                if let Ok(g) = serde_json::from_str::<GenericPeek>(&msg.body) {
                    m.received_at_ms = g.received_at_ms;
                    m.delivery_id = g.delivery_id.and_then(|d| DeliveryId::parse(&d).ok());
                }
            }
        }
        m.failure_class = FailureClass::of(m.reason.as_deref(), m.decode_error.as_deref());
        m.age_ms = now_ms - m.event_time_ms();
        if let Some(d) = &m.delivery_id {
            match self.store.records(d).await {
                Ok(records) => {
                    if m.pr_number.is_none() {
                        m.pr_number = records.iter().find_map(|r| r.meta.pr_number);
                    }
                    if m.head_sha.is_none() {
                        m.head_sha = records.iter().find_map(|r| r.meta.head_sha.as_ref().map(ToString::to_string));
                    }
                    m.targets = records
                        .into_iter()
                        .map(|r| TargetState {
                            target: r.target,
                            status: r.status,
                            attempts: r.attempts,
                            last_error: r.last_error,
                        })
                        .collect();
                }
                Err(e) => m.records_error = Some(e.to_string()),
            }
        }
        m
    }

    async fn describe_all<T>(
        &self,
        held: Vec<(T, ReceivedMessage)>,
        now_ms: i64,
    ) -> Vec<(T, ReceivedMessage, DlqMessage)>
    where
        T: Send,
    {
        futures::stream::iter(held)
            .map(|(t, msg)| async move {
                let m = self.describe(&msg, now_ms).await;
                (t, msg, m)
            })
            .buffered(10)
            .collect()
            .await
    }
}

// ---------------------------------------------------------------- scanning

/// A message held by a scan.
struct Held {
    msg: ReceivedMessage,
    /// When this process's hold runs out (local clock).
    until: Instant,
}

/// What a scan read.
struct Scan {
    held: Vec<Held>,
    /// Stopped at `max_messages`: the DLQ may hold more.
    truncated: bool,
}

/// Receives every message of the DLQ (see the module docs). On a receive
/// error the messages held so far are released and the error returned.
async fn scan(queue: &dyn EventQueue, opts: &ScanOptions) -> Result<Scan, QueueError> {
    let mut held: Vec<Held> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let max = opts.max_messages.max(1);
    let mut truncated = false;
    loop {
        if held.len() >= max {
            truncated = true;
            break;
        }
        let asked_at = Instant::now();
        let batch = match queue.receive(QueueSide::DeadLetter, (max - held.len()).min(10), opts.hold, opts.wait).await {
            Ok(b) => b,
            Err(e) => {
                release(queue, held.iter().map(|h| &h.msg)).await;
                return Err(e);
            }
        };
        if batch.is_empty() {
            break;
        }
        let mut new = 0;
        for msg in batch {
            let h = Held { msg, until: asked_at + opts.hold };
            match index.get(&h.msg.message_id) {
                // Seen before: its hold ran out (or SQS delivered it twice);
                // the newest receipt is the one that counts.
                Some(&i) => held[i] = h,
                None => {
                    index.insert(h.msg.message_id.clone(), held.len());
                    held.push(h);
                    new += 1;
                }
            }
        }
        if new == 0 {
            // Only messages already read came back: the hold of the first
            // ones ran out, the scan went all the way round.
            break;
        }
    }
    Ok(Scan { held, truncated })
}

/// Makes `msgs` visible again at once. Returns the ones that could not be
/// released (they reappear when their hold runs out: nothing is lost), as
/// `message id: error`.
async fn release<'m>(queue: &dyn EventQueue, msgs: impl Iterator<Item = &'m ReceivedMessage>) -> Vec<String> {
    let msgs: Vec<&ReceivedMessage> = msgs.collect();
    futures::stream::iter(msgs)
        .map(|m| async move {
            queue
                .change_visibility(QueueSide::DeadLetter, &m.receipt, Duration::ZERO)
                .await
                .err()
                .map(|e| format!("{}: {e}", m.message_id))
        })
        .buffer_unordered(10)
        .filter_map(|e| async move { e })
        .collect()
        .await
}

/// The oldest `sent_at_ms` on the DLQ, by a peek (every message released).
pub async fn peek_oldest(queue: &dyn EventQueue, opts: &ScanOptions) -> Result<Option<i64>, OpsError> {
    let scan = scan(queue, opts).await?;
    release(queue, scan.held.iter().map(|h| &h.msg)).await;
    Ok(scan.held.iter().map(|h| h.msg.sent_at_ms).min())
}

// ---------------------------------------------------------------- list

/// Answer of [`Dlq::list`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DlqListing {
    /// Messages read from the DLQ.
    pub scanned: usize,
    /// The scan stopped at its maximum: the DLQ may hold more.
    pub scan_truncated: bool,
    /// Messages passing the filters (before the limit).
    pub matched: usize,
    /// The listed messages, oldest event first.
    pub messages: Vec<DlqMessage>,
    /// Messages whose release failed (they reappear when the hold ends).
    pub release_failures: Vec<String>,
}

impl<'a> Dlq<'a> {
    /// Peeks at the DLQ: every message is released before this returns.
    pub async fn list(&self, filter: &DlqFilter, opts: &ScanOptions) -> Result<DlqListing, OpsError> {
        let scan = scan(self.queue, opts).await?;
        let release_failures = release(self.queue, scan.held.iter().map(|h| &h.msg)).await;
        let now = self.clock.now_ms();
        let scanned = scan.held.len();
        let described = self.describe_all(scan.held.into_iter().map(|h| ((), h.msg)).collect(), now).await;
        let all: Vec<((), DlqMessage)> = described.into_iter().map(|(_, _, m)| ((), m)).collect();
        let matched = all.iter().filter(|(_, m)| filter.matches(m, now)).count();
        let (hit, _) = filter.select(all, now);
        Ok(DlqListing {
            scanned,
            scan_truncated: scan.truncated,
            matched,
            messages: hit.into_iter().map(|(_, m)| m).collect(),
            release_failures,
        })
    }
}

/// The table `crcr dlq list` prints.
pub fn render_listing(l: &DlqListing) -> String {
    let mut t = Table::new([
        "MESSAGE ID",
        "DELIVERY ID",
        "EVENT",
        "PR/REF",
        "AGE",
        "RECV",
        "CLASS",
        "PENDING TARGETS",
        "REASON",
    ]);
    for m in &l.messages {
        let pending: Vec<&str> = m.pending().map(|t| t.target.as_str()).collect();
        let pending = match (&m.records_error, pending.is_empty(), m.targets.is_empty()) {
            (Some(_), _, _) => "? (records unreadable)".to_owned(),
            (None, false, _) => pending.join(","),
            (None, true, true) => "- (no records)".to_owned(),
            (None, true, false) => "none".to_owned(),
        };
        t.row([
            m.message_id.clone(),
            m.delivery_id.as_ref().map_or_else(|| "-".into(), |d| d.to_string()),
            m.event_label(),
            m.subject(),
            format_age(m.age_ms),
            m.receive_count.to_string(),
            m.failure_class.as_str().to_owned(),
            pending,
            m.reason_text(),
        ]);
    }
    let mut out = String::new();
    if t.is_empty() {
        out.push_str("no matching messages on the dead-letter queue\n");
    } else {
        out.push_str(&t.render());
    }
    out.push_str(&format!(
        "{} listed, {} matching, {} on the DLQ read{}\n",
        l.messages.len(),
        l.matched,
        l.scanned,
        if l.scan_truncated { " (stopped at --max-scan: there may be more)" } else { "" }
    ));
    for f in &l.release_failures {
        out.push_str(&format!("warning: could not release {f} (it reappears when its hold ends)\n"));
    }
    out
}

// ---------------------------------------------------------------- show

/// One message in full, with its attempt history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShownMessage {
    pub summary: DlqMessage,
    /// The body as JSON (as sent, when it is not JSON: a string).
    pub body: serde_json::Value,
    /// The claim-checked payload, read from the blob store, when the body
    /// refers to one.
    pub stored_payload: Option<serde_json::Value>,
    /// The delivery's dispatch records (attempts, last error, timestamps).
    pub records: Vec<DispatchRecord>,
}

/// Answer of [`Dlq::show`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShowResult {
    /// Messages whose message id or delivery id is the one asked for (a
    /// delivery dead-lettered twice has two).
    pub messages: Vec<ShownMessage>,
    /// When no message matched but the id is a delivery id: its records.
    pub records_only: Vec<DispatchRecord>,
    pub scanned: usize,
    pub scan_truncated: bool,
    pub release_failures: Vec<String>,
}

impl<'a> Dlq<'a> {
    /// Finds the messages with message id or delivery id `id`.
    pub async fn show(&self, id: &str, opts: &ScanOptions) -> Result<ShowResult, OpsError> {
        let scan = scan(self.queue, opts).await?;
        let release_failures = release(self.queue, scan.held.iter().map(|h| &h.msg)).await;
        let now = self.clock.now_ms();
        let scanned = scan.held.len();
        let filter = DlqFilter { ids: vec![id.to_owned()], ..DlqFilter::default() };
        let mut messages = Vec::new();
        for h in scan.held {
            // Cheap pre-check before the record lookups.
            if h.msg.message_id != id && !h.msg.body.contains(id) {
                continue;
            }
            let summary = self.describe(&h.msg, now).await;
            if !filter.matches(&summary, now) {
                continue;
            }
            let body = serde_json::from_str(&h.msg.body).unwrap_or(serde_json::Value::String(h.msg.body.clone()));
            let stored_payload = match (&summary.payload_key, self.blobs) {
                (Some(key), Some(blobs)) => Some(match blobs.get(key).await {
                    Ok(b) => serde_json::from_slice(&b)
                        .unwrap_or_else(|e| serde_json::json!({ "error": format!("payload is not JSON: {e}") })),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                }),
                _ => None,
            };
            let records = match &summary.delivery_id {
                Some(d) => self.store.records(d).await.unwrap_or_default(),
                None => vec![],
            };
            messages.push(ShownMessage { summary, body, stored_payload, records });
        }
        let mut records_only = vec![];
        if messages.is_empty() {
            if let Ok(d) = DeliveryId::parse(id) {
                records_only = self.store.records(&d).await.unwrap_or_default();
            }
        }
        Ok(ShowResult { messages, records_only, scanned, scan_truncated: scan.truncated, release_failures })
    }
}

fn render_records(records: &[DispatchRecord], now_ms: i64) -> String {
    let mut t = Table::new(["TARGET", "LEVEL", "STATUS", "ATTEMPTS", "LAST ERROR", "UPDATED", "DISPATCHED"]);
    for r in records {
        t.row([
            r.target.to_string(),
            r.meta.level.as_str().to_owned(),
            r.status.as_str().to_owned(),
            r.attempts.to_string(),
            r.last_error.clone().unwrap_or_else(|| "-".into()),
            format!("{} ago", format_age(now_ms - r.updated_at_ms)),
            r.dispatched_at_ms.map_or_else(|| "-".into(), format_time),
        ]);
    }
    if t.is_empty() {
        "  (no dispatch records: no target was claimed yet)\n".into()
    } else {
        t.render().lines().map(|l| format!("  {l}\n")).collect()
    }
}

/// What `crcr dlq show` prints.
pub fn render_show(r: &ShowResult, now_ms: i64) -> String {
    let mut out = String::new();
    for s in &r.messages {
        let m = &s.summary;
        out.push_str(&format!("message {}\n", m.message_id));
        let mut kv = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
        kv("type", m.message_type.clone().unwrap_or_else(|| "-".into()));
        kv("delivery id", m.delivery_id.as_ref().map_or_else(|| "-".into(), |d| d.to_string()));
        kv("event", m.event_label());
        kv("pr / ref", m.subject());
        kv("head sha", m.head_sha.clone().unwrap_or_else(|| "-".into()));
        kv(
            "accepted",
            m.received_at_ms
                .map_or_else(|| "-".into(), |t| format!("{} ({} ago)", format_time(t), format_age(now_ms - t))),
        );
        kv("on queue since", format_time(m.sent_at_ms));
        kv("receive count", m.receive_count.to_string());
        kv("class", m.failure_class.as_str().to_owned());
        kv("reason", m.reason_text());
        kv(
            "payload",
            match &m.payload_key {
                Some(k) => format!("{} bytes, claim-checked at {k}", m.payload_bytes),
                None => format!("{} bytes, inline", m.payload_bytes),
            },
        );
        if let Some(e) = &m.records_error {
            kv("records", format!("unreadable: {e}"));
        }
        out.push_str("  attempt history:\n");
        out.push_str(&render_records(&s.records, now_ms));
        out.push_str("  body:\n");
        let body = serde_json::to_string_pretty(&s.body).unwrap_or_default();
        out.extend(body.lines().map(|l| format!("    {l}\n")));
        if let Some(p) = &s.stored_payload {
            out.push_str("  claim-checked payload:\n");
            let p = serde_json::to_string_pretty(p).unwrap_or_default();
            out.extend(p.lines().map(|l| format!("    {l}\n")));
        }
        out.push('\n');
    }
    if r.messages.is_empty() {
        out.push_str(&format!("no message with that message id or delivery id on the DLQ ({} read)\n", r.scanned));
        if !r.records_only.is_empty() {
            out.push_str("dispatch records of that delivery:\n");
            out.push_str(&render_records(&r.records_only, now_ms));
        }
    }
    for f in &r.release_failures {
        out.push_str(&format!("warning: could not release {f} (it reappears when its hold ends)\n"));
    }
    out
}

// ---------------------------------------------------------------- replay and purge

/// How [`Dlq::replay`] moves messages.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Select and report, move nothing (every message is released).
    pub dry_run: bool,
    /// At most this many moves per second (`None`: as fast as the queue goes).
    pub rate_per_sec: Option<f64>,
}

/// A message that was acted on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Moved {
    pub message_id: String,
    pub delivery_id: Option<DeliveryId>,
    pub event: String,
    /// The copy's message id on the source queue (replay only).
    pub new_message_id: Option<String>,
    /// Targets still pending when it was moved (a replay dispatches these).
    pub pending_targets: Vec<RepoFullName>,
}

/// A message that was selected but not acted on, or only half.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotMoved {
    pub message_id: String,
    pub delivery_id: Option<DeliveryId>,
    pub error: String,
    /// Replay: the copy is on the source queue but the original could not be
    /// deleted from the DLQ (it is on both; running the replay again, or
    /// purging it, is safe: dispatch records keep the targets from being
    /// sent twice).
    pub copied: bool,
}

/// Answer of [`Dlq::replay`] and [`Dlq::purge`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveReport {
    pub dry_run: bool,
    pub scanned: usize,
    pub scan_truncated: bool,
    /// Messages selected by the filters and the limit.
    pub selected: usize,
    /// Moved to the source queue (replay) or deleted (purge); in a dry run,
    /// the ones that would be.
    pub done: Vec<Moved>,
    /// Selected but left on the DLQ untouched: the hold on them ran out
    /// before their turn (another reader may have it), so they were not
    /// touched. Run the command again.
    pub skipped: Vec<NotMoved>,
    /// Selected, and the queue refused the send or the delete.
    pub failed: Vec<NotMoved>,
    pub release_failures: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

impl<'a> Dlq<'a> {
    /// Moves the selected messages back to the source queue, one by one:
    /// send the copy, then delete the original (never the other way round).
    /// Replayed messages keep their delivery id, so targets already
    /// dispatched are not dispatched again.
    ///
    /// `progress` (not in a dry run, which is over at once): `start` with
    /// the number of selected messages, `inc(1)` and a `message` with the
    /// tallies (`ok N, skipped N, failed N`) after each, `finish` at the end.
    pub async fn replay(
        &self,
        filter: &DlqFilter,
        scan_opts: &ScanOptions,
        opts: &ReplayOptions,
        progress: &mut dyn Progress,
    ) -> Result<MoveReport, OpsError> {
        self.act(Action::Replay, filter, scan_opts, opts, progress).await
    }

    /// Deletes the selected messages from the DLQ (for messages judged
    /// unrecoverable); with `opts.dry_run` only reports them. The caller
    /// asks for confirmation first. `progress` as for [`Dlq::replay`].
    pub async fn purge(
        &self,
        filter: &DlqFilter,
        scan_opts: &ScanOptions,
        opts: &ReplayOptions,
        progress: &mut dyn Progress,
    ) -> Result<MoveReport, OpsError> {
        self.act(Action::Purge, filter, scan_opts, opts, progress).await
    }

    async fn act(
        &self,
        action: Action,
        filter: &DlqFilter,
        scan_opts: &ScanOptions,
        opts: &ReplayOptions,
        progress: &mut dyn Progress,
    ) -> Result<MoveReport, OpsError> {
        let scan = scan(self.queue, scan_opts).await?;
        let now = self.clock.now_ms();
        let scanned = scan.held.len();
        let held: Vec<(Instant, ReceivedMessage)> = scan.held.into_iter().map(|h| (h.until, h.msg)).collect();
        let described = self.describe_all(held, now).await;
        let all: Vec<((Instant, ReceivedMessage), DlqMessage)> =
            described.into_iter().map(|(until, msg, m)| ((until, msg), m)).collect();
        let (selected, rest) = filter.select(all, now);
        let mut release_failures = release(self.queue, rest.iter().map(|((_, msg), _)| msg)).await;
        let mut report = MoveReport {
            dry_run: opts.dry_run,
            scanned,
            scan_truncated: scan.truncated,
            selected: selected.len(),
            done: vec![],
            skipped: vec![],
            failed: vec![],
            release_failures: vec![],
        };
        let moved = |m: &DlqMessage, new_message_id: Option<String>| Moved {
            message_id: m.message_id.clone(),
            delivery_id: m.delivery_id.clone(),
            event: m.event_label(),
            new_message_id,
            pending_targets: m.pending().map(|t| t.target.clone()).collect(),
        };
        if opts.dry_run {
            release_failures.extend(release(self.queue, selected.iter().map(|((_, msg), _)| msg)).await);
            report.done = selected.iter().map(|(_, m)| moved(m, None)).collect();
            report.release_failures = release_failures;
            return Ok(report);
        }
        let total = selected.len();
        let interval = opts.rate_per_sec.map(|r| Duration::from_secs_f64(1.0 / r));
        let hold = scan_opts.hold;
        // With a rate limit the last message's turn may come after its hold
        // ends: hold all of them for the whole run up front.
        let mut selected = selected;
        if let Some(step) = interval {
            let run = step.mul_f64(total as f64);
            if run + Duration::from_secs(30) > hold / 2 {
                let longer = (run + hold).min(Duration::from_secs(43_200));
                for ((until, msg), _) in selected.iter_mut() {
                    if self.queue.change_visibility(QueueSide::DeadLetter, &msg.receipt, longer).await.is_ok() {
                        *until = Instant::now() + longer;
                    }
                }
            }
        }
        progress.start(Some(total as u64));
        let started = Instant::now();
        for (i, ((until, msg), m)) in selected.into_iter().enumerate() {
            if let Some(step) = interval {
                tokio::time::sleep_until(started + step.mul_f64(i as f64)).await;
            }
            let not_moved = |error: String, copied: bool| NotMoved {
                message_id: m.message_id.clone(),
                delivery_id: m.delivery_id.clone(),
                error,
                copied,
            };
            // Make sure the hold still stands (and lasts) before acting.
            if until.saturating_duration_since(Instant::now()) < Duration::from_secs(30) {
                if let Err(e) = self.queue.change_visibility(QueueSide::DeadLetter, &msg.receipt, hold).await {
                    report.skipped.push(not_moved(format!("no longer held ({e}); still on the DLQ"), false));
                    report.step(progress);
                    continue;
                }
            }
            match action {
                Action::Replay => match self.queue.send(&msg.body).await {
                    Err(e) => {
                        report.failed.push(not_moved(format!("send to the source queue: {e}"), false));
                        release_failures.extend(release(self.queue, std::iter::once(&msg)).await);
                    }
                    Ok(new_id) => match self.queue.delete(QueueSide::DeadLetter, &msg.receipt).await {
                        Ok(()) => report.done.push(moved(&m, Some(new_id))),
                        Err(e) => {
                            report.failed.push(not_moved(
                                format!(
                                    "copied to the source queue as {new_id}, but the delete from the DLQ failed: {e} \
                                     (on both queues now; replaying or purging it again is safe)"
                                ),
                                true,
                            ));
                            // Visible again for the next replay or purge.
                            release_failures.extend(release(self.queue, std::iter::once(&msg)).await);
                        }
                    },
                },
                Action::Purge => match self.queue.delete(QueueSide::DeadLetter, &msg.receipt).await {
                    Ok(()) => report.done.push(moved(&m, None)),
                    Err(e) => {
                        report.failed.push(not_moved(format!("delete: {e}"), false));
                        release_failures.extend(release(self.queue, std::iter::once(&msg)).await);
                    }
                },
            }
            report.step(progress);
        }
        progress.finish();
        report.release_failures = release_failures;
        Ok(report)
    }
}

impl MoveReport {
    /// One more message handled: reported with the tallies so far.
    fn step(&self, progress: &mut dyn Progress) {
        progress.inc(1);
        progress.message(&format!(
            "ok {}, skipped {}, failed {}",
            self.done.len(),
            self.skipped.len(),
            self.failed.len()
        ));
    }
}

/// What `crcr dlq replay` / `crcr dlq purge` print after the run. `verb`:
/// `moved` or `removed`.
pub fn render_move_report(r: &MoveReport, verb: &str) -> String {
    let mut out = String::new();
    let with_new_id = r.done.iter().any(|m| m.new_message_id.is_some());
    if !r.done.is_empty() {
        let mut headers = vec!["MESSAGE ID", "DELIVERY ID", "EVENT", "PENDING TARGETS"];
        if with_new_id {
            headers.push("NEW MESSAGE ID");
        }
        let mut t = Table::new(headers);
        for m in &r.done {
            let pending: Vec<&str> = m.pending_targets.iter().map(|t| t.as_str()).collect();
            let mut row = vec![
                m.message_id.clone(),
                m.delivery_id.as_ref().map_or_else(|| "-".into(), |d| d.to_string()),
                m.event.clone(),
                if pending.is_empty() { "-".into() } else { pending.join(",") },
            ];
            if with_new_id {
                row.push(m.new_message_id.clone().unwrap_or_else(|| "-".into()));
            }
            t.row(row);
        }
        out.push_str(&format!("{}:\n", if r.dry_run { format!("would be {verb}") } else { verb.to_owned() }));
        out.push_str(&t.render());
    }
    for (what, list) in [("skipped", &r.skipped), ("failed", &r.failed)] {
        for n in list {
            out.push_str(&format!(
                "{what}: {} (delivery {}): {}\n",
                n.message_id,
                n.delivery_id.as_ref().map_or("-", |d| d.as_str()),
                n.error
            ));
        }
    }
    let scope = format!(
        "{} selected of {} read{}",
        r.selected,
        r.scanned,
        if r.scan_truncated { "; stopped at --max-scan, there may be more" } else { "" }
    );
    if r.dry_run {
        out.push_str(&format!("dry run: {} would be {verb}, nothing changed ({scope})\n", r.done.len()));
    } else {
        out.push_str(&format!(
            "{} {verb}, {} skipped, {} failed ({scope})\n",
            r.done.len(),
            r.skipped.len(),
            r.failed.len()
        ));
    }
    for f in &r.release_failures {
        out.push_str(&format!("warning: could not release {f} (it reappears when its hold ends)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(reason: Option<&str>) -> DlqMessage {
        DlqMessage {
            message_id: "m-1".into(),
            message_type: Some("dispatch_v1".into()),
            delivery_id: Some(DeliveryId::parse("d-1").unwrap()),
            event: Some("pull_request".into()),
            action: Some("opened".into()),
            pr_number: Some(7),
            git_ref: None,
            head_sha: None,
            received_at_ms: Some(1_000_000),
            sent_at_ms: 1_500_000,
            age_ms: 0,
            receive_count: 1,
            failure_class: FailureClass::of(reason, None),
            reason: reason.map(str::to_owned),
            decode_error: None,
            payload_bytes: 10,
            payload_key: None,
            targets: vec![TargetState {
                target: RepoFullName::parse("Org/Repo").unwrap(),
                status: DispatchStatus::Pending,
                attempts: 3,
                last_error: None,
            }],
            records_error: None,
        }
    }

    #[test]
    fn filters() {
        let m = msg(Some("still failing after 5 receives: org/other: 503"));
        assert_eq!(m.failure_class, FailureClass::RetriesExhausted);
        let f = |f: DlqFilter| f.matches(&m, 2_000_000);
        assert!(f(DlqFilter::default()));
        assert!(f(DlqFilter { event: Some("pull_request".into()), ..Default::default() }));
        assert!(f(DlqFilter { event: Some("pull_request.opened".into()), ..Default::default() }));
        assert!(!f(DlqFilter { event: Some("pull_request.closed".into()), ..Default::default() }));
        assert!(!f(DlqFilter { event: Some("push".into()), ..Default::default() }));
        let repo = |r: &str| DlqFilter { repo: Some(RepoFullName::parse(r).unwrap()), ..Default::default() };
        assert!(f(repo("org/repo")), "a record's target, any case");
        assert!(f(repo("ORG/other")), "named in the reason");
        assert!(!f(repo("org/third")));
        assert!(f(DlqFilter { since: Some(Duration::from_secs(1000)), ..Default::default() }));
        assert!(!f(DlqFilter { since: Some(Duration::from_secs(999)), ..Default::default() }));
        assert!(f(DlqFilter { reason: Some("503".into()), ..Default::default() }));
        assert!(!f(DlqFilter { reason: Some("422".into()), ..Default::default() }));
        assert!(f(DlqFilter { ids: vec!["d-1".into()], ..Default::default() }));
        assert!(f(DlqFilter { ids: vec!["x".into(), "m-1".into()], ..Default::default() }));
        assert!(!f(DlqFilter { ids: vec!["x".into()], ..Default::default() }));
    }

    #[test]
    fn classes() {
        assert_eq!(FailureClass::of(None, None), FailureClass::RedrivePolicy);
        assert_eq!(FailureClass::of(Some("claim-checked payload lost"), None), FailureClass::Unprocessable);
        assert_eq!(FailureClass::of(Some("x"), Some("bad")), FailureClass::Undecodable);
    }

    #[test]
    fn select_orders_oldest_first_and_limits() {
        let mut a = msg(None);
        a.message_id = "a".into();
        a.received_at_ms = Some(3);
        let mut b = msg(None);
        b.message_id = "b".into();
        b.received_at_ms = Some(1);
        let mut c = msg(None);
        c.message_id = "c".into();
        c.event = Some("push".into());
        let filter = DlqFilter { event: Some("pull_request".into()), limit: Some(1), ..Default::default() };
        let (hit, rest) = filter.select(vec![(1, a), (2, b), (3, c)], 10);
        assert_eq!(hit.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2]);
        let mut rest: Vec<_> = rest.iter().map(|(i, _)| *i).collect();
        rest.sort();
        assert_eq!(rest, [1, 3]);
    }
}
