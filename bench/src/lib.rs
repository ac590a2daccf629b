//! crcr's benchmarks live in `benches/` (criterion): `cargo bench -p crcr-bench`.
//!
//! - `ingest`: verifying and classifying one real webhook delivery
//!   (`crcr_http::ingest::verify_and_classify`).
//! - `callback`: one downstream callback through the embedded relay's router.
