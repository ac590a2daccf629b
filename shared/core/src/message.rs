//! Queue messages: versioned, tagged wire types. A DLQ message written by an
//! older build stays readable: new shapes get a new variant (`DispatchV2`),
//! old variants are kept and converted.
//!
//! Shape on the wire (JSON):
//! `{"type":"dispatch_v1","delivery_id":"..","event":"pull_request","action":"opened",
//!   "received_at_ms":1700000000000,"payload":{"inline":{...}}}`
//! or with a claim check: `"payload":{"stored":{"key":"payload/<delivery>","bytes":1234}}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::DeliveryId;

/// A message on the dispatch queue. The `type` field names the variant;
/// (serde's internally tagged enums cannot carry a `RawValue`, so the tag is
/// read and written by hand.)
#[derive(Debug)]
pub enum QueueMessage {
    /// On the dispatch queue: a verified webhook to fan out.
    DispatchV1(DispatchV1),
    /// On the reconcile queue: an accepted downstream callback.
    CallbackV1(CallbackV1),
    /// On the reconcile queue: an upstream event the reconciler acts on
    /// (labels, superseded heads, closed PRs, re-run requests; see
    /// [`crate::upstream`]).
    UpstreamV1(crate::upstream::UpstreamV1),
}

/// An accepted callback (token verified, identity allowed, body valid,
/// lifecycle plausible at request time), for the reconciler.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallbackV1 {
    /// When ingest accepted it (ms since epoch): the relay's own clock, used
    /// for the trusted timing figures.
    pub received_at_ms: i64,
    /// The verified repository (from the OIDC token, never from the body).
    pub repo: crate::domain::RepoFullName,
    pub level: crate::domain::Level,
    /// `github_actions` or `buildkite`.
    pub issuer: String,
    /// The callback body exactly as received.
    pub body: Box<RawValue>,
}

/// A verified webhook to fan out.
#[derive(Debug, Serialize, Deserialize)]
pub struct DispatchV1 {
    /// `X-GitHub-Delivery`: the event's GUID, shared by every webhook that
    /// receives the event and kept on redelivery.
    pub delivery_id: DeliveryId,
    /// `X-GitHub-Hook-ID`, when the delivery had it: with `delivery_id` it
    /// names the delivery ([`crate::ports::record_key`]). Absent in
    /// messages written before it was read (they read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<u64>,
    /// `X-GitHub-Event`.
    pub event: String,
    pub action: Option<String>,
    /// When ingest accepted it (ms since epoch).
    pub received_at_ms: i64,
    pub payload: PayloadRef,
}

/// The webhook payload: inline, or a claim check into the blob store when the
/// message would pass the queue's size limit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadRef {
    Inline(Box<RawValue>),
    Stored { key: String, bytes: usize },
}

/// Why a queue body could not be read as a [`QueueMessage`] (permanent: the
/// message goes to the DLQ with this reason).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("queue message is not JSON with a `type`: {0}")]
    NoType(serde_json::Error),
    #[error("queue message type {0:?} is not known to this build")]
    UnknownType(String),
    #[error("queue message of type {ty} is malformed: {error}")]
    Malformed { ty: String, error: serde_json::Error },
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    ty: String,
}

impl QueueMessage {
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let Tag { ty } = serde_json::from_str(body).map_err(DecodeError::NoType)?;
        match ty.as_str() {
            "dispatch_v1" => serde_json::from_str(body)
                .map(QueueMessage::DispatchV1)
                .map_err(|error| DecodeError::Malformed { ty, error }),
            "callback_v1" => serde_json::from_str(body)
                .map(QueueMessage::CallbackV1)
                .map_err(|error| DecodeError::Malformed { ty, error }),
            "upstream_v1" => serde_json::from_str(body)
                .map(QueueMessage::UpstreamV1)
                .map_err(|error| DecodeError::Malformed { ty, error }),
            _ => Err(DecodeError::UnknownType(ty)),
        }
    }

    /// `{"type":"<variant>", ...fields}`.
    pub fn encode(&self) -> String {
        let (ty, fields) = match self {
            QueueMessage::DispatchV1(m) => ("dispatch_v1", serde_json::to_string(m)),
            QueueMessage::CallbackV1(m) => ("callback_v1", serde_json::to_string(m)),
            QueueMessage::UpstreamV1(m) => ("upstream_v1", serde_json::to_string(m)),
        };
        let fields = fields.expect("queue messages always serialize");
        format!(r#"{{"type":"{ty}",{}"#, &fields[1..])
    }
}

/// The fields of a `dispatch_v1` message before its payload, in
/// [`DispatchV1`]'s order.
#[derive(Serialize)]
struct DispatchV1Head<'a> {
    delivery_id: &'a DeliveryId,
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_id: Option<u64>,
    event: &'a str,
    action: Option<&'a str>,
    received_at_ms: i64,
}

/// A `dispatch_v1` message with `payload_json` inline, written as is (the
/// caller has validated it: ingest does not parse a payload of up to 25 MB
/// twice). The bytes are those [`QueueMessage::encode`] writes for the same
/// [`DispatchV1`] with [`PayloadRef::Inline`]; returns the message and the
/// byte range of the payload in it (what a claim check stores).
pub fn encode_dispatch_v1_inline(
    delivery_id: &DeliveryId,
    hook_id: Option<u64>,
    event: &str,
    action: Option<&str>,
    received_at_ms: i64,
    payload_json: &str,
) -> (String, std::ops::Range<usize>) {
    let head = serde_json::to_string(&DispatchV1Head { delivery_id, hook_id, event, action, received_at_ms })
        .expect("the head always serializes");
    // `{"type":"dispatch_v1",<head fields>,"payload":{"inline":<payload>}}`
    let mut message = String::with_capacity(head.len() + payload_json.len() + 48);
    message.push_str(r#"{"type":"dispatch_v1","#);
    message.push_str(&head[1..head.len() - 1]);
    message.push_str(r#","payload":{"inline":"#);
    let start = message.len();
    message.push_str(payload_json);
    let end = message.len();
    message.push_str("}}");
    (message, start..end)
}

/// Blob key of a claim-checked payload: `payload/<delivery>`, or
/// `payload/<delivery>/hook/<id>` for a delivery naming its webhook (two
/// webhooks' payloads of one event differ, e.g. in `installation`, so
/// neither overwrites the other's).
pub fn payload_blob_key(delivery: &DeliveryId, hook_id: Option<u64>) -> String {
    match hook_id {
        None => format!("payload/{delivery}"),
        Some(hook) => format!("payload/{delivery}/hook/{hook}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One format: the inline encoder writes the bytes serde writes for the
    /// same message, and decodes back to it.
    #[test]
    fn the_inline_dispatch_encoder_writes_what_serde_writes() {
        let payload = r#"{"action":"opened","number":1,"nested":{"a":[1,2,"x"]}}"#;
        let id = DeliveryId::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").unwrap();
        for (hook_id, action) in [(None, Some("opened")), (Some(42u64), None)] {
            let (text, range) =
                encode_dispatch_v1_inline(&id, hook_id, "pull_request", action, 1_700_000_000_000, payload);
            assert_eq!(&text[range], payload);
            let serde = QueueMessage::DispatchV1(DispatchV1 {
                delivery_id: id.clone(),
                hook_id,
                event: "pull_request".into(),
                action: action.map(str::to_owned),
                received_at_ms: 1_700_000_000_000,
                payload: PayloadRef::Inline(RawValue::from_string(payload.to_owned()).unwrap()),
            })
            .encode();
            assert_eq!(text, serde);
            let Ok(QueueMessage::DispatchV1(back)) = QueueMessage::decode(&text) else { panic!("{text}") };
            assert_eq!((back.hook_id, back.action.as_deref()), (hook_id, action));
        }
    }

    #[test]
    fn round_trips_and_keeps_payload_bytes() {
        let raw = RawValue::from_string(r#"{"a": 1,  "b":[true]}"#.into()).unwrap();
        let m = QueueMessage::DispatchV1(DispatchV1 {
            delivery_id: DeliveryId::parse("d-1").unwrap(),
            hook_id: None,
            event: "push".into(),
            action: None,
            received_at_ms: 5,
            payload: PayloadRef::Inline(raw),
        });
        let body = m.encode();
        assert!(body.starts_with(r#"{"type":"dispatch_v1","#), "{body}");
        let QueueMessage::DispatchV1(back) = QueueMessage::decode(&body).unwrap() else { panic!("not dispatch_v1") };
        let PayloadRef::Inline(p) = back.payload else { panic!("not inline") };
        assert_eq!(p.get(), r#"{"a": 1,  "b":[true]}"#);
    }

    #[test]
    fn unknown_versions_are_a_decode_error() {
        let err = QueueMessage::decode(r#"{"type":"dispatch_v9"}"#).unwrap_err();
        assert!(err.to_string().contains("dispatch_v9"), "{err}");
    }
}
