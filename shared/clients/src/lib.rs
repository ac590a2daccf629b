//! crcr's outbound clients: the adapters of the domain's GitHub, HUD and
//! JWKS ports (`crcr_core::ports::GitHubApp`, `crcr_core::checks::CheckRuns`,
//! `crcr_core::runs::WorkflowRuns`, `crcr_core::redeliver::HookDeliveries`,
//! `crcr_core::hud::Hud`, `crcr_core::oidc::JwksFetcher`), and the
//! start-up wiring every runtime builds from them ([`compose`]).
//!
//! GitHub goes through octocrab without its `retry` feature (one retry
//! loop: the dispatcher's), over our own HTTP stack ([`transport`]: HTTP/2
//! by ALPN, a connection per 100 requests in flight); HUD and JWKS through
//! octocrab's default one (HTTP/1.1). Neither AWS nor SQLite nor
//! an HTTP server is linked here.

pub mod compose;
pub mod github;
pub mod hook_deliveries;
pub mod hud;
pub mod jwks;
pub mod transport;
