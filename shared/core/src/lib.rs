//! crcr shared library: the domain (allowlist, webhook verification, queue
//! messages, `repository_dispatch` payloads, the dispatcher), its ports (small
//! traits) and their adapters: SQLite for the embedded default, SQS and
//! DynamoDB for AWS, GitHub through octocrab.

pub mod allowlist;
pub mod callback;
pub mod checks;
pub mod client_payload;
pub mod commits;
pub mod compose;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod github;
pub mod hud;
pub mod lifecycle;
pub mod message;
pub mod metrics;
pub mod oidc;
pub mod ports;
pub mod progress;
pub mod reconcile;
pub mod redeliver;
pub mod runs;
pub mod signature;
pub mod upstream;
