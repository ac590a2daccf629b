//! What every runtime (`crcr serve`'s embedded relay, each Lambda, the CLI)
//! builds the same way from its configuration: the GitHub client and
//! allowlist, the OIDC verifier, the HUD client, the missed-delivery sweep,
//! and the start-up error they share.

use std::sync::Arc;
use std::time::Duration;

use crcr_core::allowlist::{AllowlistProvider, AllowlistSource};
use crcr_core::config::{GitHubAppConfig, RelayConfig};
use crcr_core::ports::{GitHubApp, StateStore, StoreError};
use crcr_core::redeliver::Redeliverer;

use crate::github::{GitHubAppClient, GitHubConfigError};

/// Start-up failures of a runtime (the embedded relay, a Lambda).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error(transparent)]
    GitHub(#[from] GitHubConfigError),
    #[error("OIDC: {0}")]
    Oidc(String),
    #[error(transparent)]
    Hud(#[from] crcr_core::hud::HudUrlError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// The allowlist is broken at start-up
    /// ([`AllowlistProvider::check_at_start`]): names the file or URL and
    /// the line or entry.
    #[error("cannot start with this allowlist (CRCR_ALLOWLIST_FILE / CRCR_ALLOWLIST_URL): {0}")]
    Allowlist(#[from] crcr_core::allowlist::AllowlistError),
    #[error("CRCR_VISIBILITY_TIMEOUT_SECS ({visibility:?}) must be longer than CRCR_RETRY_BUDGET_SECS ({budget:?}): otherwise a message still being retried reappears and is taken by a second worker")]
    VisibilityTooShort { visibility: Duration, budget: Duration },
}

/// Builds the GitHub client and the allowlist provider both runtimes use.
pub fn github_and_allowlist(
    cfg: &RelayConfig,
) -> Result<(Arc<GitHubAppClient>, Arc<AllowlistProvider>), GitHubConfigError> {
    let github = Arc::new(GitHubAppClient::new(cfg.github.clone())?);
    let for_allowlist: Option<Arc<dyn GitHubApp>> = match cfg.allowlist {
        AllowlistSource::GitHub { .. } => Some(github.clone()),
        AllowlistSource::File(_) => None,
    };
    let allowlist = Arc::new(AllowlistProvider::new(cfg.allowlist.clone(), cfg.allowlist_ttl, for_allowlist));
    Ok((github, allowlist))
}

/// The OIDC verifier both runtimes use: keys fetched from each issuer's
/// JWKS URL (5 s connect / read timeouts), `repository_id` bindings and the
/// `jti` replay guard in the given stores (SQLite or DynamoDB `kv`; they
/// must be shared by every instance of the relay).
pub fn oidc_verifier(
    cfg: &crcr_core::config::CallbackConfig,
    clock: Arc<dyn crcr_core::ports::Clock>,
    bindings: Arc<dyn crcr_core::oidc::IdentityBindings>,
    replay: Arc<dyn crcr_core::oidc::ReplayGuard>,
) -> Result<crcr_core::oidc::OidcVerifier, StartupError> {
    let fetcher =
        crate::jwks::OctocrabJwksFetcher::new(Duration::from_secs(5)).map_err(|e| StartupError::Oidc(e.to_string()))?;
    let verifier = crcr_core::oidc::OidcVerifier::new(cfg.oidc.clone(), Arc::new(fetcher), clock)
        .map_err(|e| StartupError::Oidc(e.to_string()))?;
    Ok(verifier.with_identity_bindings(bindings).with_replay_guard(replay))
}

/// The HUD client both runtimes use: `CRCR_HUD_URL` + bot key, or
/// [`crcr_core::hud::NoHud`] (records wait in the outbox) when no URL is set.
/// Errors: the URL is not https (http only on loopback).
pub fn hud_from_config(
    cfg: &crcr_core::config::CallbackConfig,
) -> Result<Arc<dyn crcr_core::hud::Hud>, crcr_core::hud::HudUrlError> {
    Ok(match &cfg.hud {
        Some((url, key)) => Arc::new(crate::hud::HudClient::new(url, key.clone())?),
        None => Arc::new(crcr_core::hud::NoHud),
    })
}

/// The missed-delivery sweep on a GitHub App client of its own (App JWT
/// from `cfg`), for `crcr redeliver` (`crcr serve` and the Lambdas give it
/// the relay's client, whose primary-limit count and in-flight slots it
/// shares at the lowest priority). Errors: the App's key or API URL is
/// unusable.
pub fn redeliverer(cfg: &GitHubAppConfig, state: Arc<dyn StateStore>) -> Result<Redeliverer, GitHubConfigError> {
    Ok(Redeliverer::new(Arc::new(GitHubAppClient::new(cfg.clone())?), state))
}
