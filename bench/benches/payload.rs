//! What the dispatcher (and the GitHub stand-in) compute per payload, on
//! the compact `pull_request.synchronize` fixture (24 KB): GitHub's length
//! of a `client_payload` ([`github_json_len`]), and the whole dispatch body
//! ([`build_from_text`]). Under load (issue 14) the relay measures each
//! payload once per webhook, the stand-in once per dispatch (ten per
//! webhook).
//!
//! Run: `cargo bench -p crcr-bench --bench payload`.

use crcr_core::client_payload::{build_from_text, github_json_len};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SYNC: &str = include_str!("../../fixtures/webhooks/pull_request.synchronize.json");

fn payload(c: &mut Criterion) {
    let compact = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(SYNC).unwrap()).unwrap();
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Bytes(compact.len() as u64));
    g.bench_function("github_json_len pull_request.synchronize (compact)", |b| {
        b.iter(|| github_json_len(std::hint::black_box(&compact)).unwrap())
    });
    g.bench_function("github_json_len pull_request.synchronize (indented)", |b| {
        b.iter(|| github_json_len(std::hint::black_box(SYNC)).unwrap())
    });
    g.bench_function("build_from_text pull_request.synchronize", |b| {
        b.iter(|| {
            build_from_text("pull_request", "72d3162e-cc78-11e3-81ab-4c9367dc0958", std::hint::black_box(&compact))
        })
    });
    g.finish();
}

criterion_group!(benches, payload);
criterion_main!(benches);
