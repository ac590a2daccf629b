//! `X-Hub-Signature-256` verification (GitHub docs, "Validating webhook
//! deliveries"): `sha256=<hex HMAC-SHA256 of the raw body, keyed by the
//! webhook secret>`. Checked over the exact raw bytes, before any parsing,
//! in constant time (`hmac::Mac::verify_slice`).

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

/// The webhook secret. `Debug` never prints it.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(SecretString::from(secret.into()))
    }

    /// Verifies `header` (the `X-Hub-Signature-256` value, if any) over `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_mac = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        if hex_mac.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let mut mac_bytes = [0u8; 32];
        hex::decode_to_slice(hex_mac, &mut mac_bytes).map_err(|_| SignatureError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&mac_bytes).map_err(|_| SignatureError::Mismatch)
    }

    /// `sha256=<hex>` for `body`, as GitHub would send it (for tests and the demo).
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes()).expect("HMAC accepts keys of any length")
    }
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

    #[test]
    fn sign_round_trips_and_debug_hides_secret() {
        let s = WebhookSecret::new("topsecret");
        let sig = s.sign(b"{}");
        assert_eq!(s.verify(Some(sig.as_bytes()), b"{}"), Ok(()));
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
