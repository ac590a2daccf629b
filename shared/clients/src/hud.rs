//! HUD over HTTPS: the [`Hud`] port on reqwest. Records go to
//! `<CRCR_HUD_URL>/crcr/results` with the bot key in `x-hud-internal-bot`
//! (torchci's `checkAuthWithApiToken`); how an answer is classified is
//! written next to [`HudClient`]'s `send`.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crcr_core::hud::{check_url, Hud, HudError, HudUrlError};

/// HUD over HTTPS.
pub struct HudClient {
    http: reqwest::Client,
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
    pub fn new(base_url: &str, bot_key: SecretString) -> Result<Self, HudUrlError> {
        check_url(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| HudUrlError(format!("{base_url}: {e}")))?;
        Ok(Self { http, url: format!("{}/crcr/results", base_url.trim_end_matches('/')), bot_key })
    }
}

#[async_trait]
impl Hud for HudClient {
    async fn send(&self, body: &Value) -> Result<(), HudError> {
        let res = self
            .http
            .post(&self.url)
            .header("x-hud-internal-bot", self.bot_key.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| HudError::Unavailable(e.without_url().to_string()))?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let answer: String = res.text().await.unwrap_or_default().chars().take(500).collect();
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

    #[test]
    fn the_url_is_checked_and_the_key_never_shown() {
        let key = || SecretString::from("k".to_owned());
        assert!(HudClient::new("https://hud.pytorch.org/api", key()).is_ok());
        assert!(HudClient::new("http://127.0.0.1:8080", key()).is_ok());
        assert!(HudClient::new("http://hud.pytorch.org/api", key()).is_err());
        let dbg = format!("{:?}", HudClient::new("https://h", SecretString::from("s3cr3t".to_owned())).unwrap());
        assert!(!dbg.contains("s3cr3t"));
    }
}
