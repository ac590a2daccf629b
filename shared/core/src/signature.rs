//! `X-Hub-Signature-256` verification (GitHub docs, "Validating webhook
//! deliveries",
//! <https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>):
//! `sha256=<hex HMAC-SHA256 of the raw body, keyed by the webhook secret>`.
//! Checked over the exact raw bytes, before any parsing, in constant time
//! (`hmac::Mac::verify_slice`).
//!
//! Rotation: a GitHub App has one webhook secret, changed in the App's
//! settings ("Modifying a GitHub App registration",
//! <https://docs.github.com/en/apps/maintaining-github-apps/modifying-a-github-app-registration>)
//! or with `PATCH /app/hook/config` and a new `secret` ("Update a webhook
//! configuration for an app",
//! <https://docs.github.com/en/rest/apps/webhooks#update-a-webhook-configuration-for-an-app>),
//! so changing it leaves a window in which deliveries signed with the old
//! one are still arriving (in flight, or signed before the change). The
//! relay therefore accepts a short list, the current secret and the next
//! ([`WebhookSecret::any_of`]), checks a signature against every one of
//! them in constant time, and says which one matched (by index, never the
//! secret) so on-call can see when the old one is no longer used
//! (`crate::metrics::WEBHOOK_SECRET_MATCHES`).

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Why a delivery's signature was refused. The message never contains the
/// secret or the expected MAC.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 must be `sha256=<64 hex digits>`")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// The webhook secrets the relay accepts: one, or during a rotation the
/// current and the next, in the order configured (index 0 first). `Debug`
/// never prints them.
#[derive(Clone)]
pub struct WebhookSecret(std::sync::Arc<[SecretString]>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret(<{} redacted>)", self.0.len())
    }
}

impl WebhookSecret {
    /// One secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(std::sync::Arc::from([SecretString::from(secret.into())]))
    }

    /// Several secrets, any of which may have signed a delivery (a
    /// rotation: the current one and the next). `None` for an empty list.
    pub fn any_of(secrets: Vec<SecretString>) -> Option<Self> {
        (!secrets.is_empty()).then(|| Self(std::sync::Arc::from(secrets)))
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true ([`WebhookSecret::any_of`] refuses an empty list).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Verifies `header` (the `X-Hub-Signature-256` value, if any) over `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        self.verify_index(header, body).map(|_| ())
    }

    /// Verifies `header` over `body` against every secret and answers the
    /// index of the one that signed it (the first, if several did). Each
    /// comparison is constant-time (`verify_slice`) and every secret is
    /// always tried, so the time taken does not tell which one matched.
    pub fn verify_index(&self, header: Option<&[u8]>, body: &[u8]) -> Result<usize, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_mac = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        if hex_mac.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let mut mac_bytes = [0u8; 32];
        hex::decode_to_slice(hex_mac, &mut mac_bytes).map_err(|_| SignatureError::Malformed)?;
        let mut matched = None;
        for (i, secret) in self.0.iter().enumerate() {
            let mut mac = mac(secret);
            mac.update(body);
            let ok = mac.verify_slice(&mac_bytes).is_ok();
            if ok && matched.is_none() {
                matched = Some(i);
            }
        }
        matched.ok_or(SignatureError::Mismatch)
    }

    /// `sha256=<hex>` for `body` with the first secret, as GitHub would
    /// send it (for tests and the demo).
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = mac(&self.0[0]);
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

fn mac(secret: &SecretString) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: Option<&str>, body: &[u8], expected: Result<(), SignatureError>) {
        let s = WebhookSecret::new("It's a Secret to Everybody");
        assert_eq!(s.verify(header.map(str::as_bytes), body), expected, "{header:?}");
    }

    #[test]
    fn github_documented_example() {
        // From GitHub docs, "Validating webhook deliveries" (test values).
        check(
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            b"Hello, World!",
            Ok(()),
        );
    }

    #[test]
    fn refusals() {
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        check(None, b"Hello, World!", Err(SignatureError::Missing));
        check(Some(good), b"Hello, World?", Err(SignatureError::Mismatch));
        check(Some("sha1=0123456789abcdef0123456789abcdef01234567"), b"x", Err(SignatureError::Malformed));
        check(Some(&good.replace("sha256=", "")), b"Hello, World!", Err(SignatureError::Malformed));
        check(Some(&good.replace('7', "z")), b"Hello, World!", Err(SignatureError::Malformed));
        check(Some(&good[..good.len() - 2]), b"Hello, World!", Err(SignatureError::Malformed));
        check(Some(""), b"", Err(SignatureError::Malformed));
    }

    /// A rotation: a delivery signed with either secret is accepted and
    /// says which one signed it; one signed with neither is a mismatch.
    #[test]
    fn any_of_the_rotation_secrets_verifies_and_names_its_index() {
        let (old, next) = (WebhookSecret::new("old-secret"), WebhookSecret::new("next-secret"));
        let both = WebhookSecret::any_of(vec!["old-secret".into(), "next-secret".into()]).unwrap();
        let body = br#"{"zen":"Design for failure."}"#;
        assert_eq!(both.verify_index(Some(old.sign(body).as_bytes()), body), Ok(0));
        assert_eq!(both.verify_index(Some(next.sign(body).as_bytes()), body), Ok(1));
        let neither = WebhookSecret::new("another").sign(body);
        assert_eq!(both.verify_index(Some(neither.as_bytes()), body), Err(SignatureError::Mismatch));
        assert_eq!(next.verify(Some(old.sign(body).as_bytes()), body), Err(SignatureError::Mismatch));
        assert!(WebhookSecret::any_of(vec![]).is_none());
        let dbg = format!("{both:?}");
        assert!(!dbg.contains("old-secret") && !dbg.contains("next-secret"), "{dbg}");
    }

    #[test]
    fn sign_round_trips_and_debug_hides_secret() {
        let s = WebhookSecret::new("topsecret");
        let sig = s.sign(b"{}");
        assert_eq!(s.verify(Some(sig.as_bytes()), b"{}"), Ok(()));
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
