//! The production [`JwksFetcher`]: an unauthenticated GET over octocrab's
//! HTTP client (hyper + rustls, the stack the GitHub client already links).

use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt as _;

use crcr_core::oidc::jwks::MAX_JWKS_BYTES;
use crcr_core::oidc::{Jwks, JwksFetchError, JwksFetcher};

/// [`JwksFetcher`] over octocrab's HTTP client (hyper + rustls), without
/// authentication, retries or redirects; answers over [`MAX_JWKS_BYTES`]
/// are refused.
pub struct OctocrabJwksFetcher {
    client: octocrab::Octocrab,
}

impl OctocrabJwksFetcher {
    /// A fetcher whose connect and read each time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, JwksFetchError> {
        let client = octocrab::Octocrab::builder()
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout))
            .build()
            .map_err(|e| JwksFetchError(format!("building the JWKS client: {e}")))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl JwksFetcher for OctocrabJwksFetcher {
    async fn fetch(&self, jwks_url: &str) -> Result<Jwks, JwksFetchError> {
        let uri: http::Uri = jwks_url.parse().map_err(|_| JwksFetchError(format!("bad JWKS URL {jwks_url:?}")))?;
        let res = self.client._get(uri).await.map_err(|e| JwksFetchError(format!("GET {jwks_url}: {e}")))?;
        let (parts, body) = res.into_parts();
        if !parts.status.is_success() {
            return Err(JwksFetchError(format!("GET {jwks_url}: HTTP {}", parts.status)));
        }
        let bytes = http_body_util::Limited::new(body, MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                JwksFetchError(format!("GET {jwks_url}: body unreadable or over {MAX_JWKS_BYTES} bytes: {e}"))
            })?
            .to_bytes();
        Jwks::from_json(&bytes)
    }
}
