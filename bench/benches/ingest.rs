//! Ingest compute on a real delivery: verify `X-Hub-Signature-256`, parse,
//! and build the queue message, on the `pull_request.synchronize` fixture
//! (28 KB). Target (issue 2): ≤ 100 µs on the 2-core CI machine.
//!
//! Run: `cargo bench -p crcr-bench --bench ingest`.

use crcr_core::domain::RepoFullName;
use crcr_core::signature::WebhookSecret;
use crcr_http::ingest::{verify_and_classify, Verdict};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;

const SYNC: &[u8] = include_bytes!("../../fixtures/webhooks/pull_request.synchronize.json");

fn ingest(c: &mut Criterion) {
    let secret = WebhookSecret::new("bench-secret");
    let upstream = RepoFullName::parse("Codertocat/Hello-World").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-hub-signature-256", secret.sign(SYNC).parse().unwrap());
    headers.insert("x-github-event", "pull_request".parse().unwrap());
    headers.insert("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    assert!(matches!(verify_and_classify(&secret, &upstream, &headers, SYNC, 0), Ok(Verdict::Enqueue { .. })));

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(SYNC.len() as u64));
    g.bench_function("verify+parse+message pull_request.synchronize", |b| {
        b.iter(|| verify_and_classify(&secret, &upstream, &headers, std::hint::black_box(SYNC), 1).unwrap())
    });
    g.bench_function("verify only", |b| {
        b.iter(|| {
            secret.verify(headers.get("x-hub-signature-256").map(|v| v.as_bytes()), std::hint::black_box(SYNC)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
