//! HUD over HTTPS: the [`Hud`] port on octocrab's HTTP stack (hyper +
//! rustls, what the GitHub client already links, so no second HTTP client in
//! a Lambda). Records go to `<CRCR_HUD_URL>/crcr/results` with the bot key in
//! `x-hud-internal-bot` (torchci's `checkAuthWithApiToken`); how an answer is
//! classified is written next to [`HudClient`]'s `send`.

use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crcr_core::hud::{check_url, Hud, HudError, HudUrlError};

/// The most of HUD's answer read (its text is kept as the record's last
/// answer, cut to 500 characters).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// HUD over HTTPS: no authentication but the bot key, no retries (the outbox
/// retries), no redirects; connect, read and write time out after 10 s each.
pub struct HudClient {
    http: octocrab::Octocrab,
    url: String,
    bot_key: SecretString,
}

impl std::fmt::Debug for HudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HudClient").field("url", &self.url).field("bot_key", &"<redacted>").finish()
    }
}

impl HudClient {
    /// `base_url` is HUD's API base; records go to `<base_url>/crcr/results`.
    /// Call it inside a tokio runtime (octocrab's client spawns its
    /// connection task). Errors: the URL is not https (http only on loopback).
    pub fn new(base_url: &str, bot_key: SecretString) -> Result<Self, HudUrlError> {
        check_url(base_url)?;
        let timeout = Some(Duration::from_secs(10));
        let http = octocrab::Octocrab::builder()
            .set_connect_timeout(timeout)
            .set_read_timeout(timeout)
            .set_write_timeout(timeout)
            .build()
            .map_err(|e| HudUrlError(format!("{base_url}: {e}")))?;
        Ok(Self { http, url: format!("{}/crcr/results", base_url.trim_end_matches('/')), bot_key })
    }
}

#[async_trait]
impl Hud for HudClient {
    async fn send(&self, body: &Value) -> Result<(), HudError> {
        let unavailable = |e: &dyn std::fmt::Display| HudError::Unavailable(format!("POST {}: {e}", self.url));
        let mut bot_key = http::HeaderValue::from_str(self.bot_key.expose_secret())
            .map_err(|_| HudError::Unavailable("the HUD bot key is not a valid header value".into()))?;
        // Never shown by a header's Debug (hyper, tracing).
        bot_key.set_sensitive(true);
        let request = http::Request::post(&self.url)
            .header("x-hud-internal-bot", bot_key)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .map_err(|e| unavailable(&e))?;
        let res = self.http.execute(request).await.map_err(|e| unavailable(&e))?;
        let (parts, res_body) = res.into_parts();
        let status = parts.status;
        if status.is_success() {
            return Ok(());
        }
        let bytes = http_body_util::Limited::new(res_body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let answer: String = String::from_utf8_lossy(&bytes).chars().take(500).collect();
        // 401/403 (bot key wrong or rotated: torchci's checkAuthWithApiToken),
        // 404/405 (CRCR_HUD_URL names no handler), 408 and 429 are not the
        // record's fault: it stays pending (and parks, alarmed, if it lasts).
        let relay_side = matches!(status.as_u16(), 401 | 403 | 404 | 405 | 408 | 429);
        if status.is_client_error() && !relay_side {
            Err(HudError::Rejected { status: status.as_u16(), answer })
        } else {
            Err(HudError::Unavailable(format!("{status} {answer}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // octocrab's client spawns its connection task: built inside a runtime.
    #[tokio::test]
    async fn the_url_is_checked_and_the_key_never_shown() {
        let key = || SecretString::from("k".to_owned());
        assert!(HudClient::new("https://hud.pytorch.org/api", key()).is_ok());
        assert!(HudClient::new("http://127.0.0.1:8080", key()).is_ok());
        assert!(HudClient::new("http://hud.pytorch.org/api", key()).is_err());
        let dbg = format!("{:?}", HudClient::new("https://h", SecretString::from("s3cr3t".to_owned())).unwrap());
        assert!(!dbg.contains("s3cr3t"));
    }
}
