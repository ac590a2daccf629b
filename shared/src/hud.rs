//! HUD sync (CONTRACTS.md "HUD output"): `POST <HUD>/crcr/results` with the
//! header `x-hud-internal-bot: <key>`, https only (plain http only for
//! loopback, in tests). The outbox makes it lossless: an item stays pending
//! until HUD answers 2xx (then it is never sent again) or 4xx (then it is
//! marked rejected with HUD's answer, visible in `crcr trace`); 5xx and
//! timeouts leave it pending for the next sweep.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::lifecycle::{HudSync, JobStore};
use crate::ports::{Clock, StoreError};

/// Why HUD did not take a record.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HudError {
    /// 4xx: the record is bad; do not resend.
    #[error("HUD rejected the record ({status}): {answer}")]
    Rejected { status: u16, answer: String },
    /// 5xx, timeout, connection error: try again later.
    #[error("HUD unavailable: {0}")]
    Unavailable(String),
}

/// Sends one HUD record.
#[async_trait]
pub trait Hud: Send + Sync {
    async fn send(&self, body: &Value) -> Result<(), HudError>;
}

/// A bad HUD setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CRCR_HUD_URL {0:?} must be https (plain http only for 127.0.0.1 / localhost)")]
pub struct HudUrlError(pub String);

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
        let loopback = ["http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://localhost/"];
        if !(base_url.starts_with("https://") || loopback.iter().any(|p| base_url.starts_with(p))) {
            return Err(HudUrlError(base_url.to_owned()));
        }
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
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            Err(HudError::Rejected { status: status.as_u16(), answer })
        } else {
            Err(HudError::Unavailable(format!("{status} {answer}")))
        }
    }
}

/// Counts of one sync pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub sent: usize,
    pub rejected: usize,
    pub still_pending: usize,
}

/// Sends up to `limit` pending outbox items, each with a few quick retries
/// (backon, exponential with jitter). Items HUD could not take stay pending.
/// Counts each item's result in [`crate::metrics::HUD_SYNC`], then sets the
/// backlog and lag gauges from [`JobStore::outbox_backlog`].
pub async fn sync_outbox(
    jobs: &dyn JobStore,
    hud: &dyn Hud,
    clock: &dyn Clock,
    limit: usize,
) -> Result<SyncReport, StoreError> {
    let mut report = SyncReport::default();
    for item in jobs.pending_outbox(limit).await? {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(2)
            .with_jitter();
        let result = (|| hud.send(&item.body))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, HudError::Unavailable(_)))
            .await;
        let now = clock.now_ms();
        match result {
            Ok(()) => {
                jobs.mark_outbox(&item.id, HudSync::Sent, None, now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "sent").increment(1);
                report.sent += 1;
            }
            Err(e @ HudError::Rejected { .. }) => {
                tracing::error!(outbox_id = %item.id, delivery_id = %item.delivery_id, error = %e, metric = "hud_rejected", "HUD rejected a record");
                jobs.mark_outbox(&item.id, HudSync::Rejected, Some(&e.to_string()), now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "rejected").increment(1);
                report.rejected += 1;
            }
            Err(e) => {
                tracing::warn!(outbox_id = %item.id, error = %e, metric = "hud_sync_failures", "HUD unavailable; record stays pending");
                jobs.mark_outbox(&item.id, HudSync::Pending, Some(&e.to_string()), now).await?;
                ::metrics::counter!(crate::metrics::HUD_SYNC, "result" => "failed").increment(1);
                report.still_pending += 1;
            }
        }
    }
    record_backlog(jobs, clock.now_ms()).await;
    Ok(report)
}

/// Sets the [`crate::metrics::HUD_OUTBOX_BACKLOG`] and
/// [`crate::metrics::HUD_OUTBOX_LAG`] gauges from the store (after a pass).
/// A store that cannot tell is logged; the gauges keep their last values.
async fn record_backlog(jobs: &dyn JobStore, now_ms: i64) {
    match jobs.outbox_backlog().await {
        Ok(b) => {
            let lag_s = b.oldest_created_at_ms.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            ::metrics::gauge!(crate::metrics::HUD_OUTBOX_BACKLOG).set(b.pending as f64);
            ::metrics::gauge!(crate::metrics::HUD_OUTBOX_LAG).set(lag_s);
        }
        Err(e) => tracing::warn!(error = %e, "could not read the HUD outbox backlog"),
    }
}

/// No HUD configured: records wait in the outbox (logged once per pass).
pub struct NoHud;

#[async_trait]
impl Hud for NoHud {
    async fn send(&self, _: &Value) -> Result<(), HudError> {
        Err(HudError::Unavailable("no HUD configured (CRCR_HUD_URL)".into()))
    }
}

/// Convenience for wiring.
pub type SharedHud = Arc<dyn Hud>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hud_url_must_be_https_except_loopback() {
        let key = || SecretString::from("k".to_owned());
        assert!(HudClient::new("https://hud.pytorch.org/api", key()).is_ok());
        assert!(HudClient::new("http://127.0.0.1:8080", key()).is_ok());
        assert!(HudClient::new("http://hud.pytorch.org/api", key()).is_err());
        assert!(HudClient::new("http://localhost.evil.com/", key()).is_err());
        let dbg = format!("{:?}", HudClient::new("https://h", SecretString::from("s3cr3t".to_owned())).unwrap());
        assert!(!dbg.contains("s3cr3t"));
    }
}
