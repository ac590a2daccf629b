//! Untrusted webhook deliveries: arbitrary headers and bodies through
//! signature verification and parsing. Signs the body with the test secret
//! half the time so parsing is reached. Must never panic.
#![no_main]
use crcr_shared::domain::RepoFullName;
use crcr_shared::ingest::{verify_and_classify, Verdict};
use crcr_shared::message::QueueMessage;
use crcr_shared::signature::WebhookSecret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (event, body) = rest.split_at(rest.len().min((*flags as usize) % 24));
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
    if let Ok(Verdict::Enqueue { message, .. }) = verify_and_classify(&secret, &upstream, &headers, body, 0) {
        // Whatever ingest enqueues, the dispatcher can decode.
        QueueMessage::decode(&message).expect("ingest's queue message decodes");
    }
});
