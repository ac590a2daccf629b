//! crcr's domain and its ports: the allowlist, webhook verification, queue
//! messages, `repository_dispatch` payloads, the dispatcher, the reconciler,
//! downstream job lifecycles, check runs, the HUD outbox, OIDC callback
//! verification and missed-delivery recovery, written against small traits
//! ([`ports`], and the port traits next to each use case).
//!
//! No AWS, SQLite, HTTP-server or GitHub-client crate is linked here. The
//! adapters live beside it: `crcr-clients` (GitHub, HUD, JWKS), `crcr-aws`
//! (SQS, DynamoDB, Lambda), `crcr-embedded` (SQLite, `crcr serve`),
//! `crcr-http` (the routes), `crcr-telemetry` (exporters, logs).

pub mod allowlist;
pub mod breaker;
pub mod budget;
pub mod callback;
pub mod checks;
pub mod client_payload;
pub mod commits;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod hud;
pub mod lifecycle;
pub mod message;
pub mod metrics;
pub mod oidc;
pub mod ports;
pub mod progress;
pub mod rate_limit;
pub mod reconcile;
pub mod redeliver;
pub mod runs;
pub mod shared_state;
pub mod signature;
pub mod upstream;
