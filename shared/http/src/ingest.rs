//! Ingest: the one axum [`Router`] served by the ingest Lambda (through
//! `lambda_http`, which also decodes base64 bodies) and by `crcr serve`.
//!
//! `POST /github/webhook` answers (GitHub waits 10 s; it does not retry):
//! - 401 bad or missing `X-Hub-Signature-256` (checked first, over the raw bytes);
//! - 400 missing `X-GitHub-Event` / `X-GitHub-Delivery`, an `X-GitHub-Hook-ID`
//!   that is not a number (see `hook_id`), or a body that is not JSON;
//! - 413 body over `max_body_bytes` (default 25 MB, GitHub's own cap);
//! - 200 `{"ignored": why}` for `ping`, other repositories, events not acted on,
//!   and a `push` that deleted its ref (`deleted: true`, see `deleted_ref`);
//! - 202 `{"delivery_id", "message_id"}` once durably enqueued;
//! - 503 when the queue (or the claim-check store) cannot take it, so the
//!   delivery shows as failed in GitHub and can be redelivered.
//!
//! A payload too large for one queue message is stored in the blob store and
//! the message carries its key (claim check).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crcr_core::dispatch::is_dispatched;
use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::message::{payload_blob_key, DispatchV1, PayloadRef, QueueMessage};
use crcr_core::ports::{BlobStore, Clock, QueueSend};
use crcr_core::signature::{SignatureError, WebhookSecret};

pub use crcr_core::config::DEFAULT_MAX_BODY_BYTES;

/// What ingest needs.
pub struct IngestState {
    pub secret: WebhookSecret,
    /// Only this repository's events are acted on.
    pub upstream: RepoFullName,
    pub queue: Arc<dyn QueueSend>,
    pub blobs: Arc<dyn BlobStore>,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    /// The reconcile queue, for the events the reconciler acts on
    /// ([`crcr_core::upstream`]); `None`: they are answered 200 and ignored,
    /// saying so.
    pub reconcile: Option<Arc<dyn QueueSend>>,
}

/// Builds the ingest router (`POST /github/webhook`, `GET /healthz`).
pub fn router(state: Arc<IngestState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/github/webhook", post(webhook))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A refused delivery, with the status it is answered with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("missing or invalid header {0}")]
    BadHeader(&'static str),
    #[error("body is not a JSON webhook payload: {0}")]
    BadBody(String),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A verified delivery and what to do with it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ignore {
        delivery_id: String,
        /// `X-GitHub-Event` (the header is not covered by the signature).
        event: String,
        why: String,
    },
    /// `message` is the encoded [`QueueMessage`] with the payload inline,
    /// for the dispatch queue; `upstream`, when the reconciler acts on the
    /// event too (`synchronize`, `closed`), its `upstream_v1` message for
    /// the reconcile queue.
    Enqueue {
        delivery_id: DeliveryId,
        /// `X-GitHub-Hook-ID`, when present (a number; see `hook_id`).
        hook_id: Option<u64>,
        event: String,
        action: Option<String>,
        message: String,
        payload_start: usize,
        upstream: Option<String>,
    },
    /// An event only the reconciler acts on (`labeled`, `rerequested`):
    /// its `upstream_v1` message for the reconcile queue.
    Reconcile { delivery_id: DeliveryId, event: String, action: Option<String>, message: String },
}

#[derive(Deserialize)]
struct Envelope {
    action: Option<String>,
    repository: Option<EnvelopeRepo>,
    /// `push`: whether the push deleted the ref, its ref and the SHA after
    /// it (all zeros for a deletion). Read as plain values so another
    /// event's fields of the same names never make a body unreadable.
    deleted: Option<serde_json::Value>,
    #[serde(rename = "ref")]
    git_ref: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

/// Why a `push` is not a build: it deleted its ref (a tag deletion, a head
/// branch deleted after a merge). GitHub sends `push` with `deleted: true`
/// and `after` all zeros then ("Webhook events and payloads" → `push`:
/// `deleted` "Whether this push deleted the ref", `after` "The SHA of the
/// most recent commit on `ref` after the push",
/// <https://docs.github.com/en/webhooks/webhook-events-and-payloads#push>);
/// there is no commit to build, so nothing is dispatched and no record is
/// written under the zero SHA. A push that created the ref (`created: true`,
/// `before` all zeros) has a commit and is dispatched as any push.
fn deleted_ref(env: &Envelope) -> Option<String> {
    let zero_after = env
        .after
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b == b'0'));
    let deleted = env.deleted.as_ref().and_then(serde_json::Value::as_bool) == Some(true);
    (deleted || zero_after).then(|| {
        let git_ref = env.git_ref.as_ref().and_then(serde_json::Value::as_str).unwrap_or("?");
        format!("push deleted {git_ref}: no commit to build")
    })
}

#[derive(Deserialize)]
struct EnvelopeRepo {
    full_name: Option<String>,
}

/// Verifies and classifies one delivery: the pure, CPU-only part of ingest
/// (benchmarked in `benches/ingest.rs`).
pub fn verify_and_classify(
    secret: &WebhookSecret,
    upstream: &RepoFullName,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<Verdict, IngestError> {
    let signed_by = secret.verify_index(headers.get("x-hub-signature-256").map(|v| v.as_bytes()), body)?;
    // Which configured secret signed it (an index, never the secret): during a
    // rotation this says when the old one can go.
    ::metrics::counter!(crcr_core::metrics::WEBHOOK_SECRET_MATCHES, "secret" => crcr_core::metrics::secret_index_label(signed_by))
        .increment(1);
    let header = |name: &'static str| {
        headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).ok_or(IngestError::BadHeader(name))
    };
    let event = header("x-github-event")?;
    if event.len() > 100 || !event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(IngestError::BadHeader("x-github-event"));
    }
    let delivery_id =
        DeliveryId::parse(header("x-github-delivery")?).map_err(|_| IngestError::BadHeader("x-github-delivery"))?;
    let hook_id = hook_id(headers)?;
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form_payload;
    let json_bytes: &[u8] = if form {
        form_payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| IngestError::BadBody("form body has no `payload` field".into()))?;
        form_payload.as_bytes()
    } else {
        body
    };
    let received = std::str::from_utf8(json_bytes).map_err(|_| IngestError::BadBody("not UTF-8".into()))?;
    let compact = compact_json(received)?;
    let text = compact.as_str();
    let env: Envelope = serde_json::from_str(text).map_err(|e| IngestError::BadBody(e.to_string()))?;
    let ignore =
        |why: String| Ok(Verdict::Ignore { delivery_id: delivery_id.to_string(), event: event.to_owned(), why });
    if event == "ping" {
        return ignore("ping".into());
    }
    let repo = env.repository.as_ref().and_then(|r| r.full_name.clone()).unwrap_or_default();
    if RepoFullName::parse(&repo).ok().as_ref() != Some(upstream) {
        return ignore(format!("repository {repo:?} is not the upstream {upstream}"));
    }
    if event == "push" {
        if let Some(why) = deleted_ref(&env) {
            return ignore(why);
        }
    }
    let dispatched = is_dispatched(event, env.action.as_deref());
    let upstream = if crcr_core::upstream::is_upstream(event, env.action.as_deref()) {
        let parsed = crcr_core::upstream::parse_event_text(event, env.action.as_deref(), text)
            .map_err(|e| IngestError::BadBody(e.to_string()))?
            .map_err(|e| IngestError::BadBody(e.to_string()))?;
        parsed.map(|event| {
            QueueMessage::UpstreamV1(crcr_core::upstream::UpstreamV1 {
                delivery_id: delivery_id.clone(),
                received_at_ms: now_ms,
                event,
            })
            .encode()
        })
    } else {
        None
    };
    if !dispatched {
        if let Some(message) = upstream {
            return Ok(Verdict::Reconcile { delivery_id, event: event.to_owned(), action: env.action, message });
        }
        let what = match &env.action {
            Some(a) => format!("{event}.{a}"),
            None => event.to_owned(),
        };
        return ignore(format!("{what} is not acted on"));
    }
    // The payload's compact text goes in (validated above): the one
    // `dispatch_v1` encoder, without parsing the payload again.
    let (message, payload) = crcr_core::message::encode_dispatch_v1_inline(
        &delivery_id,
        hook_id,
        event,
        env.action.as_deref(),
        now_ms,
        text,
    );
    let payload_start = payload.start;
    Ok(Verdict::Enqueue {
        delivery_id,
        hook_id,
        event: event.to_owned(),
        action: env.action,
        message,
        payload_start,
        upstream,
    })
}

/// `text` (one JSON document, nothing after it) without the whitespace
/// between its tokens, written by serde_json as it writes any value (keys
/// in their order, strings with serde_json's escapes). GitHub sends its
/// payloads indented (a 28 KB `pull_request.synchronize` is about 24 KB
/// compact); the compact text is what is queued, stored and sent to every
/// target, and it reads as the same value. Streamed token by token, no
/// tree. Errors: `BadBody` when `text` is not one JSON document.
fn compact_json(text: &str) -> Result<String, IngestError> {
    let mut out = Vec::with_capacity(text.len());
    let mut de = serde_json::Deserializer::from_str(text);
    serde_transcode::transcode(&mut de, &mut serde_json::Serializer::new(&mut out))
        .map_err(|e| IngestError::BadBody(e.to_string()))?;
    de.end().map_err(|e| IngestError::BadBody(e.to_string()))?;
    String::from_utf8(out).map_err(|_| IngestError::BadBody("not UTF-8".into()))
}

/// `X-GitHub-Hook-ID`, "the unique identifier of the webhook" (GitHub docs
/// "Webhook events and payloads" → delivery headers,
/// <https://docs.github.com/en/webhooks/webhook-events-and-payloads#delivery-headers>):
/// a number. `None` when absent (the delivery is then named by its GUID
/// alone, as before the header was read); a value that is not a positive
/// number below 2^63 is refused as a bad header, since it decides
/// idempotency ([`crcr_core::ports::record_key`]).
fn hook_id(headers: &HeaderMap) -> Result<Option<u64>, IngestError> {
    let Some(value) = headers.get("x-github-hook-id") else { return Ok(None) };
    let bad = || IngestError::BadHeader("x-github-hook-id");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let id: u64 = text.parse().map_err(|_| bad())?;
    if id == 0 || id > i64::MAX as u64 {
        return Err(bad());
    }
    Ok(Some(id))
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// Counts a delivery's answer: [`crcr_core::metrics::WEBHOOKS`] and
/// [`crcr_core::metrics::INGEST_LATENCY`] (seconds since `started`). `event` is
/// the `X-GitHub-Event` header, which the signature does not cover: only
/// the events the relay knows are label values (others count as `other`),
/// so a replayed body under made-up event names cannot add series.
fn count_webhook(event: &str, outcome: &'static str, started: std::time::Instant) {
    const KNOWN: [&str; 6] = ["pull_request", "push", "ping", "check_run", "check_suite", "unknown"];
    let event: &'static str = KNOWN.into_iter().find(|k| *k == event).unwrap_or("other");
    ::metrics::counter!(crcr_core::metrics::WEBHOOKS, "event" => event, "outcome" => outcome).increment(1);
    ::metrics::histogram!(crcr_core::metrics::INGEST_LATENCY, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

const NO_RECONCILE_QUEUE: &str = "no reconcile queue is configured for events the reconciler acts on";

/// Puts an `upstream_v1` message on the reconcile queue: `Ok(None)` when
/// ingest has none (logged), `Err` the 503 to answer when it refused.
async fn send_upstream(
    st: &IngestState,
    delivery_id: &DeliveryId,
    event: &str,
    message: &str,
) -> Result<Option<String>, Response> {
    let Some(queue) = &st.reconcile else {
        tracing::warn!(%delivery_id, %event, why = NO_RECONCILE_QUEUE, "reconciler part of the webhook ignored");
        return Ok(None);
    };
    match queue.send(message).await {
        Ok(id) => Ok(Some(id)),
        Err(e) => {
            tracing::error!(%delivery_id, %event, error = %e, metric = "webhooks", outcome = "unavailable", "reconcile queue refused webhook");
            Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "queue unavailable; the delivery can be redelivered"}),
            ))
        }
    }
}

async fn webhook(State(st): State<Arc<IngestState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let verdict = match verify_and_classify(&st.secret, &st.upstream, &headers, &body, st.clock.now_ms()) {
        Ok(v) => v,
        Err(e) => {
            let outcome = match e {
                IngestError::Signature(_) => "bad_signature",
                _ => "bad_request",
            };
            tracing::warn!(error = %e, metric = "webhooks", outcome, "webhook refused");
            count_webhook("unknown", outcome, started);
            return answer(e.status(), json!({"error": e.to_string()}));
        }
    };
    let (delivery_id, hook_id, event, action, message, payload_start, upstream) = match verdict {
        Verdict::Ignore { delivery_id, event, why } => {
            tracing::info!(%delivery_id, %event, %why, metric = "webhooks", outcome = "ignored", "webhook ignored");
            count_webhook(&event, "ignored", started);
            return answer(StatusCode::OK, json!({"ignored": why, "delivery_id": delivery_id}));
        }
        Verdict::Reconcile { delivery_id, event, action, message } => {
            return match send_upstream(&st, &delivery_id, &event, &message).await {
                Ok(Some(message_id)) => {
                    tracing::info!(%delivery_id, %event, action = action.as_deref().unwrap_or(""), %message_id,
                        metric = "webhooks", outcome = "enqueued", "webhook enqueued for the reconciler");
                    count_webhook(&event, "enqueued", started);
                    answer(StatusCode::ACCEPTED, json!({"delivery_id": delivery_id, "message_id": message_id}))
                }
                Ok(None) => {
                    count_webhook(&event, "ignored", started);
                    answer(StatusCode::OK, json!({"ignored": NO_RECONCILE_QUEUE, "delivery_id": delivery_id}))
                }
                Err(resp) => {
                    count_webhook(&event, "unavailable", started);
                    resp
                }
            };
        }
        Verdict::Enqueue { delivery_id, hook_id, event, action, message, payload_start, upstream } => {
            (delivery_id, hook_id, event, action, message, payload_start, upstream)
        }
    };
    // The reconciler's part and the fan-out are queued at once (on SQLite
    // they share one commit; on AWS the answer waits for the slower call, not
    // both). The delivery is 202 only if both were queued; otherwise 503 and
    // GitHub's redelivery queues both again, which changes nothing for the
    // part already queued (each side is idempotent per delivery).
    let reconciler_part = async {
        match &upstream {
            Some(up) => send_upstream(&st, &delivery_id, &event, up).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let (upstream_sent, sent) =
        tokio::join!(reconciler_part, enqueue(&st, &delivery_id, hook_id, &event, &action, message, payload_start));
    if let Err(resp) = upstream_sent {
        count_webhook(&event, "unavailable", started);
        return resp;
    }
    match sent {
        Ok(message_id) => {
            tracing::info!(%delivery_id, %event, action = action.as_deref().unwrap_or(""), %message_id,
                latency_us = started.elapsed().as_micros() as u64, metric = "webhooks", outcome = "enqueued", "webhook enqueued");
            count_webhook(&event, "enqueued", started);
            answer(StatusCode::ACCEPTED, json!({"delivery_id": delivery_id, "message_id": message_id}))
        }
        Err(resp) => {
            count_webhook(&event, "unavailable", started);
            resp
        }
    }
}

/// Queues the fan-out message of a delivery, its payload claim-checked
/// first when the message would be over the queue's size limit. `Err` is
/// the 503 to answer.
async fn enqueue(
    st: &IngestState,
    delivery_id: &DeliveryId,
    hook_id: Option<u64>,
    event: &str,
    action: &Option<String>,
    mut message: String,
    payload_start: usize,
) -> Result<String, Response> {
    if message.len() > st.queue.max_message_bytes() {
        // Claim check: store the payload, enqueue a reference.
        let payload = &message[payload_start..message.len() - 2];
        let key = payload_blob_key(delivery_id, hook_id);
        if let Err(e) = st.blobs.put(&key, payload.as_bytes()).await {
            tracing::error!(%delivery_id, %event, error = %e, metric = "webhooks", outcome = "unavailable", "claim-check store refused payload");
            return Err(answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "payload store unavailable"})));
        }
        message = QueueMessage::DispatchV1(DispatchV1 {
            delivery_id: delivery_id.clone(),
            hook_id,
            event: event.to_owned(),
            action: action.clone(),
            received_at_ms: st.clock.now_ms(),
            payload: PayloadRef::Stored { key, bytes: payload.len() },
        })
        .encode();
    }
    st.queue.send(&message).await.map_err(|e| {
        tracing::error!(%delivery_id, %event, error = %e, metric = "webhooks", outcome = "unavailable", "queue refused webhook");
        answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "queue unavailable; the delivery can be redelivered"}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use crcr_core::ports::{BlobError, QueueError, SystemClock};
    use tower::ServiceExt;

    /// A queue that is down, and a blob store that is down.
    struct Down;

    #[async_trait]
    impl QueueSend for Down {
        fn max_message_bytes(&self) -> usize {
            262_144
        }
        async fn send(&self, _: &str) -> Result<String, QueueError> {
            Err(QueueError::unavailable("connection refused"))
        }
    }

    #[async_trait]
    impl BlobStore for Down {
        async fn put(&self, _: &str, _: &[u8]) -> Result<(), BlobError> {
            Err(BlobError::unavailable("throttled"))
        }
        async fn get(&self, _: &str) -> Result<Vec<u8>, BlobError> {
            unreachable!()
        }
    }

    async fn answer_of(max_body_bytes: usize, body: Vec<u8>) -> u16 {
        let secret = WebhookSecret::new("s");
        let app = router(Arc::new(IngestState {
            secret: secret.clone(),
            upstream: RepoFullName::parse("Codertocat/Hello-World").unwrap(),
            queue: Arc::new(Down),
            blobs: Arc::new(Down),
            clock: Arc::new(SystemClock),
            max_body_bytes,
            reconcile: None,
        }));
        let req = http::Request::post("/github/webhook")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", "d-1")
            .header("x-hub-signature-256", secret.sign(&body))
            .body(axum::body::Body::from(body))
            .unwrap();
        app.oneshot(req).await.unwrap().status().as_u16()
    }

    /// At the route: with the current and the next secret configured, a
    /// delivery signed with either gets past verification (here to the
    /// queue, which is down: 503), one signed with neither is 401.
    #[tokio::test]
    async fn a_rotation_accepts_either_secret_and_refuses_others_with_401() {
        let both = WebhookSecret::any_of(vec!["current".into(), "next".into()]).unwrap();
        let app = router(Arc::new(IngestState {
            secret: both,
            upstream: RepoFullName::parse("Codertocat/Hello-World").unwrap(),
            queue: Arc::new(Down),
            blobs: Arc::new(Down),
            clock: Arc::new(SystemClock),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            reconcile: None,
        }));
        for (signer, status) in [("current", 503), ("next", 503), ("neither", 401)] {
            let req = http::Request::post("/github/webhook")
                .header("x-github-event", "pull_request")
                .header("x-github-delivery", "d-1")
                .header("x-hub-signature-256", WebhookSecret::new(signer).sign(OPENED.as_bytes()))
                .body(axum::body::Body::from(OPENED))
                .unwrap();
            assert_eq!(app.clone().oneshot(req).await.unwrap().status().as_u16(), status, "signed with {signer}");
        }
    }

    #[tokio::test]
    async fn over_the_size_limit_is_413_and_a_queue_outage_is_503() {
        assert_eq!(answer_of(1000, OPENED.as_bytes().to_vec()).await, 413);
        assert_eq!(answer_of(DEFAULT_MAX_BODY_BYTES, OPENED.as_bytes().to_vec()).await, 503);
        // Too big for one message and the claim-check store is down: 503 too, never dropped.
        let mut big: serde_json::Value = serde_json::from_str(OPENED).unwrap();
        big["pull_request"]["body"] = serde_json::Value::String("x".repeat(300_000));
        assert_eq!(answer_of(DEFAULT_MAX_BODY_BYTES, serde_json::to_vec(&big).unwrap()).await, 503);
    }

    /// A queue that keeps what it is sent.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl QueueSend for Kept {
        fn max_message_bytes(&self) -> usize {
            262_144
        }
        async fn send(&self, body: &str) -> Result<String, QueueError> {
            let mut kept = self.0.lock().unwrap();
            kept.push(body.to_owned());
            Ok(format!("m-{}", kept.len()))
        }
    }

    /// A `synchronize` is queued twice (fan-out and the reconciler's part):
    /// 202 only when both queues took it, 503 when either refused.
    #[tokio::test]
    async fn a_delivery_with_a_reconciler_part_is_202_only_when_both_queues_take_it() {
        let sync = include_str!("../../../fixtures/webhooks/pull_request.synchronize.json");
        let secret = WebhookSecret::new("s");
        let post = |dispatch: Arc<dyn QueueSend>, reconcile: Arc<dyn QueueSend>| {
            let app = router(Arc::new(IngestState {
                secret: secret.clone(),
                upstream: RepoFullName::parse("Codertocat/Hello-World").unwrap(),
                queue: dispatch,
                blobs: Arc::new(Down),
                clock: Arc::new(SystemClock),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                reconcile: Some(reconcile),
            }));
            let req = http::Request::post("/github/webhook")
                .header("x-github-event", "pull_request")
                .header("x-github-delivery", "d-1")
                .header("x-hub-signature-256", secret.sign(sync.as_bytes()))
                .body(axum::body::Body::from(sync))
                .unwrap();
            async move { app.oneshot(req).await.unwrap().status().as_u16() }
        };
        let (dispatch, reconcile) = (Arc::new(Kept::default()), Arc::new(Kept::default()));
        assert_eq!(post(dispatch.clone(), reconcile.clone()).await, 202);
        let (sent, upstream) = (dispatch.0.lock().unwrap().clone(), reconcile.0.lock().unwrap().clone());
        assert!(matches!(QueueMessage::decode(&sent[0]).unwrap(), QueueMessage::DispatchV1(_)), "{sent:?}");
        assert!(matches!(QueueMessage::decode(&upstream[0]).unwrap(), QueueMessage::UpstreamV1(_)), "{upstream:?}");
        assert_eq!((sent.len(), upstream.len()), (1, 1));
        assert_eq!(post(Arc::new(Down), Arc::new(Kept::default())).await, 503, "the dispatch queue is down");
        assert_eq!(post(Arc::new(Kept::default()), Arc::new(Down)).await, 503, "the reconcile queue is down");
    }

    const OPENED: &str = include_str!("../../../fixtures/webhooks/pull_request.opened.json");

    fn headers(secret: &WebhookSecret, event: &str, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("X-Hub-Signature-256", secret.sign(body).parse().unwrap());
        h.insert("x-github-event", event.parse().unwrap());
        h.insert("X-GITHUB-DELIVERY", "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap());
        h
    }

    #[test]
    fn enqueued_message_decodes_with_the_payload_compacted() {
        let s = WebhookSecret::new("s");
        let up = RepoFullName::parse("Codertocat/Hello-World").unwrap();
        let v = verify_and_classify(&s, &up, &headers(&s, "pull_request", OPENED.as_bytes()), OPENED.as_bytes(), 7)
            .unwrap();
        let Verdict::Enqueue { message, action, .. } = v else { panic!("{v:?}") };
        assert_eq!(action.as_deref(), Some("opened"));
        let QueueMessage::DispatchV1(m) = QueueMessage::decode(&message).unwrap() else { panic!("not dispatch_v1") };
        assert_eq!(m.delivery_id.as_str(), "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(m.received_at_ms, 7);
        let PayloadRef::Inline(p) = m.payload else { panic!() };
        // The same value, with no byte between tokens: as long as serde_json's
        // compact writing of it (which sorts keys; the queued text keeps GitHub's order).
        let sent: serde_json::Value = serde_json::from_str(OPENED).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(p.get()).unwrap(), sent);
        assert_eq!(p.get().len(), serde_json::to_string(&sent).unwrap().len());
        assert!(p.get().len() < OPENED.len() * 9 / 10, "GitHub's indentation is gone");
        assert!(p.get().starts_with(r#"{"action":"opened","number":2,"pull_request":{"#), "keys keep GitHub's order");
    }

    #[test]
    fn reconciler_events_get_an_upstream_message() {
        let s = WebhookSecret::new("s");
        let up = RepoFullName::parse("Codertocat/Hello-World").unwrap();
        let classify = |event: &str, body: &str| {
            verify_and_classify(&s, &up, &headers(&s, event, body.as_bytes()), body.as_bytes(), 9).unwrap()
        };
        let upstream_of = |message: &str| match QueueMessage::decode(message).unwrap() {
            QueueMessage::UpstreamV1(u) => u,
            other => panic!("not upstream_v1: {other:?}"),
        };
        // labeled: the reconciler only.
        let labeled = include_str!("../../../fixtures/webhooks/pull_request.labeled.json");
        let Verdict::Reconcile { message, .. } = classify("pull_request", labeled) else { panic!("labeled") };
        let u = upstream_of(&message);
        assert_eq!((u.delivery_id.as_str(), u.received_at_ms), ("72d3162e-cc78-11e3-81ab-4c9367dc0958", 9));
        assert_eq!(u.event.name(), "pull_request.labeled");
        // synchronize: dispatched and the reconciler's part.
        let sync = include_str!("../../../fixtures/webhooks/pull_request.synchronize.json");
        let Verdict::Enqueue { message, upstream: Some(up_msg), .. } = classify("pull_request", sync) else {
            panic!("synchronize")
        };
        assert!(matches!(QueueMessage::decode(&message).unwrap(), QueueMessage::DispatchV1(_)));
        assert_eq!(upstream_of(&up_msg).event.head_sha(), "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
        // opened: dispatched only.
        assert!(matches!(classify("pull_request", OPENED), Verdict::Enqueue { upstream: None, .. }));
        // check_suite.rerequested: the reconciler only.
        let suite = include_str!("../../../fixtures/webhooks/check_suite.rerequested.json");
        assert!(matches!(classify("check_suite", suite), Verdict::Reconcile { .. }));
        // A labeled payload without its label: 400 naming the field.
        let mut v: serde_json::Value = serde_json::from_str(labeled).unwrap();
        v.as_object_mut().unwrap().remove("label");
        let body = serde_json::to_vec(&v).unwrap();
        let err = verify_and_classify(&s, &up, &headers(&s, "pull_request", &body), &body, 0).unwrap_err();
        assert_eq!(err, IngestError::BadBody("pull_request.labeled payload has no valid /label/name".into()));
    }

    #[test]
    fn form_encoded_delivery_is_signed_over_the_form_body() {
        let s = WebhookSecret::new("s");
        let up = RepoFullName::parse("Codertocat/Hello-World").unwrap();
        let form: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", OPENED).finish();
        let mut h = headers(&s, "pull_request", form.as_bytes());
        h.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
        let v = verify_and_classify(&s, &up, &h, form.as_bytes(), 0).unwrap();
        assert!(matches!(v, Verdict::Enqueue { .. }), "{v:?}");
        // Signed over the JSON instead of the form: refused.
        let mut h = headers(&s, "pull_request", OPENED.as_bytes());
        h.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
        assert_eq!(
            verify_and_classify(&s, &up, &h, form.as_bytes(), 0),
            Err(IngestError::Signature(SignatureError::Mismatch))
        );
    }

    /// GitHub docs "Webhook events and payloads" → `push`: a deletion has
    /// `deleted: true` and `after` all zeros; a creation `created: true` and
    /// `before` all zeros. Built on the real fixture (a tag creation).
    #[test]
    fn a_push_deleting_its_ref_is_ignored_and_a_creation_is_dispatched() {
        let s = WebhookSecret::new("s");
        let up = RepoFullName::parse("Codertocat/Hello-World").unwrap();
        let created = include_str!("../../../fixtures/webhooks/push.json");
        let classify = |body: &[u8]| verify_and_classify(&s, &up, &headers(&s, "push", body), body, 0).unwrap();
        assert!(matches!(classify(created.as_bytes()), Verdict::Enqueue { .. }), "a creation is a build");
        let mut deletion: serde_json::Value = serde_json::from_str(created).unwrap();
        deletion["created"] = false.into();
        deletion["deleted"] = true.into();
        deletion["before"] = deletion["after"].clone();
        deletion["after"] = "0000000000000000000000000000000000000000".into();
        deletion["head_commit"] = serde_json::Value::Null;
        let v = classify(&serde_json::to_vec(&deletion).unwrap());
        let Verdict::Ignore { why, event, .. } = v else { panic!("deletion dispatched: {v:?}") };
        assert_eq!((event.as_str(), why.as_str()), ("push", "push deleted refs/tags/simple-tag: no commit to build"));
        // Either sign alone is a deletion.
        let mut only_flag = deletion.clone();
        only_flag["after"] = only_flag["before"].clone();
        assert!(matches!(classify(&serde_json::to_vec(&only_flag).unwrap()), Verdict::Ignore { .. }));
        let mut only_zero = deletion;
        only_zero["deleted"] = false.into();
        assert!(matches!(classify(&serde_json::to_vec(&only_zero).unwrap()), Verdict::Ignore { .. }));
    }

    /// GitHub docs "Validating webhook deliveries": a delivery is signed
    /// with the App's one secret; during a rotation it may be either the
    /// old or the new one. Either is accepted, neither is 401, and
    /// `WebhookSecretMatches{secret}` counts which one signed (by index).
    #[cfg(feature = "prometheus")]
    #[test]
    fn either_rotation_secret_is_accepted_and_its_index_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let both = WebhookSecret::any_of(vec!["old".into(), "next".into()]).unwrap();
        let up = RepoFullName::parse("Codertocat/Hello-World").unwrap();
        let body = OPENED.as_bytes();
        let (old, next, neither) = (WebhookSecret::new("old"), WebhookSecret::new("next"), WebhookSecret::new("x"));
        ::metrics::with_local_recorder(&recorder, || {
            for signer in [&next, &old, &next] {
                let v = verify_and_classify(&both, &up, &headers(signer, "pull_request", body), body, 0);
                assert!(matches!(v, Ok(Verdict::Enqueue { .. })), "{v:?}");
            }
            let refused = verify_and_classify(&both, &up, &headers(&neither, "pull_request", body), body, 0);
            assert_eq!(refused.unwrap_err().status(), StatusCode::UNAUTHORIZED);
        });
        let text = handle.render();
        let count = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("WebhookSecretMatches{{secret=\"{label}\"}} ")))
                .and_then(|l| l.rsplit(' ').next())
                .map(|v| v.to_owned())
        };
        assert_eq!((count("0").as_deref(), count("1").as_deref()), (Some("1"), Some("2")), "{text}");
        assert!(!text.contains("\"old\"") && !text.contains("\"next\""), "{text}");
    }

    #[test]
    fn refusals_and_ignores() {
        let s = WebhookSecret::new("s");
        let up = RepoFullName::parse("codertocat/hello-world").unwrap();
        let body = OPENED.as_bytes();
        let mut h = headers(&s, "pull_request", body);
        h.remove("x-github-event");
        assert_eq!(verify_and_classify(&s, &up, &h, body, 0), Err(IngestError::BadHeader("x-github-event")));
        let mut h = headers(&s, "pull_request", body);
        h.remove("x-github-delivery");
        assert_eq!(verify_and_classify(&s, &up, &h, body, 0), Err(IngestError::BadHeader("x-github-delivery")));
        let bad = b"{not json";
        assert!(matches!(
            verify_and_classify(&s, &up, &headers(&s, "push", bad), bad, 0),
            Err(IngestError::BadBody(_))
        ));
        let trailing = format!("{OPENED} x");
        assert!(matches!(
            verify_and_classify(&s, &up, &headers(&s, "pull_request", trailing.as_bytes()), trailing.as_bytes(), 0),
            Err(IngestError::BadBody(_))
        ));
        let other = RepoFullName::parse("pytorch/pytorch").unwrap();
        let v = verify_and_classify(&s, &other, &headers(&s, "pull_request", body), body, 0).unwrap();
        assert!(matches!(v, Verdict::Ignore { ref why, .. } if why.contains("not the upstream")), "{v:?}");
        let v = verify_and_classify(&s, &up, &headers(&s, "issues", body), body, 0).unwrap();
        assert!(matches!(v, Verdict::Ignore { ref why, .. } if why == "issues.opened is not acted on"), "{v:?}");
    }
}
