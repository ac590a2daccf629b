//! Untrusted webhook deliveries: arbitrary headers and bodies through
//! signature verification and parsing. Signs the body with the test secret
//! half the time so parsing is reached. Must never panic. Input: one flags
//! byte, the event name, the body. `fuzz/seeds/webhook.py` writes seeds from
//! the fixtures (every acted-on event, signed).
#![no_main]
use crcr_core::domain::RepoFullName;
use crcr_http::ingest::{verify_and_classify, Verdict};
use crcr_core::message::QueueMessage;
use crcr_core::signature::WebhookSecret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    // Bit 0: sign; bit 1: form-encoded; bits 2..: length of the event name.
    let (event, body) = rest.split_at(rest.len().min((*flags as usize >> 2) % 24));
    let secret = WebhookSecret::new("fuzz");
    let upstream = RepoFullName::parse("Codertocat/Hello-World").unwrap();
    let mut headers = http::HeaderMap::new();
    if flags & 1 == 1 {
        headers.insert("x-hub-signature-256", secret.sign(body).parse().unwrap());
    } else if let Ok(v) = http::HeaderValue::from_bytes(event) {
        headers.insert("x-hub-signature-256", v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(event) {
        headers.insert("x-github-event", v);
    }
    headers.insert("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap());
    if flags & 2 == 2 {
        headers.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    }
    // Whatever ingest enqueues, the dispatcher and the reconciler can decode.
    match verify_and_classify(&secret, &upstream, &headers, body, 0) {
        Ok(Verdict::Enqueue { message, upstream, .. }) => {
            QueueMessage::decode(&message).expect("ingest's dispatch message decodes");
            if let Some(up) = upstream {
                assert!(matches!(QueueMessage::decode(&up), Ok(QueueMessage::UpstreamV1(_))), "{up}");
            }
        }
        Ok(Verdict::Reconcile { message, .. }) => {
            assert!(matches!(QueueMessage::decode(&message), Ok(QueueMessage::UpstreamV1(_))), "{message}");
        }
        _ => {}
    }
});
