//! What every runtime (`crcr serve`'s embedded relay, each Lambda) builds
//! the same way from its configuration: the GitHub client and allowlist,
//! the OIDC verifier, the HUD client, and the start-up error they share.

use std::sync::Arc;
use std::time::Duration;

use crate::allowlist::{AllowlistProvider, AllowlistSource};
use crate::config::RelayConfig;
use crate::github::{GitHubAppClient, GitHubConfigError};
use crate::ports::{GitHubApp, StoreError};

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
    Hud(#[from] crate::hud::HudUrlError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// The allowlist is broken at start-up
    /// ([`AllowlistProvider::check_at_start`]): names the file or URL and
    /// the line or entry.
    #[error("cannot start with this allowlist (CRCR_ALLOWLIST_FILE / CRCR_ALLOWLIST_URL): {0}")]
    Allowlist(#[from] crate::allowlist::AllowlistError),
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
    cfg: &crate::config::CallbackConfig,
    clock: Arc<dyn crate::ports::Clock>,
    bindings: Arc<dyn crate::oidc::IdentityBindings>,
    replay: Arc<dyn crate::oidc::ReplayGuard>,
) -> Result<crate::oidc::OidcVerifier, StartupError> {
    let fetcher =
        crate::oidc::OctocrabJwksFetcher::new(Duration::from_secs(5)).map_err(|e| StartupError::Oidc(e.to_string()))?;
    let verifier = crate::oidc::OidcVerifier::new(cfg.oidc.clone(), Arc::new(fetcher), clock)
        .map_err(|e| StartupError::Oidc(e.to_string()))?;
    Ok(verifier.with_identity_bindings(bindings).with_replay_guard(replay))
}

/// The HUD client both runtimes use: `CRCR_HUD_URL` + bot key, or
/// [`crate::hud::NoHud`] (records wait in the outbox) when no URL is set.
/// Errors: the URL is not https (http only on loopback).
pub fn hud_from_config(
    cfg: &crate::config::CallbackConfig,
) -> Result<Arc<dyn crate::hud::Hud>, crate::hud::HudUrlError> {
    Ok(match &cfg.hud {
        Some((url, key)) => Arc::new(crate::hud::HudClient::new(url, key.clone())?),
        None => Arc::new(crate::hud::NoHud),
    })
}
