//! crcr's HTTP routes: the webhook receiver (`POST /github/webhook`,
//! [`ingest`]), the downstream CI callback (`POST /github/callback`,
//! [`callback_route`]) and the metrics endpoints ([`metrics`]). Served by
//! `crcr serve` (crate `crcr-embedded`) and by the ingest Lambda through
//! `lambda_http` (crate `crcr-aws`).

pub mod callback_route;
pub mod ingest;
pub mod metrics;
