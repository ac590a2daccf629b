//! JSON Web Key Sets: the fetch port ([`JwksFetcher`]; its adapter is
//! `crcr_clients::jwks`) and the per-issuer key cache with a rate-limited refetch.
//!
//! Cache rules:
//! - keys are loaded on first use and reloaded on the first request after
//!   [`super::OidcConfig::jwks_max_age`]; a failed reload keeps the last good
//!   keys (logged), a failed first load answers 503;
//! - after any failed fetch no fetch is made before a back-off has passed
//!   (first [`super::OidcConfig::jwks_backoff`], doubling per further failure
//!   up to [`super::OidcConfig::jwks_max_backoff`], reset by a success); a
//!   request that needs the keys meanwhile is answered 503 with the seconds
//!   left as `Retry-After` (RFC 9110 §10.2.3), and the first request after it
//!   fetches again, so a recovered issuer is used within seconds;
//! - an unknown `kid` refetches the set once (OpenID Connect Core 1.0
//!   §10.1.1: a verifier that sees an unfamiliar `kid` goes back to the
//!   `jwks_uri`), but at most once per issuer per refetch interval, counted on
//!   the injected clock: a flood of tokens with made-up `kid`s costs the
//!   issuer one request per interval, not one per token. The fetch runs under
//!   the issuer's lock, so concurrent requests wait for it instead of
//!   fetching too.
//! - only RSA keys usable for RS256 become decoding keys (RFC 8725 §3.1: a
//!   key is used with one algorithm): `kty` `RSA`, `alg` absent or `RS256`,
//!   `use` absent or `sig`, modulus of at least 2048 bits (what aws-lc's
//!   `RSA_PKCS1_2048_8192_SHA256` verifies). A `kid` published twice is
//!   ambiguous and never used.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{shown, OidcError, TrustAnchor};

/// Largest JWKS document accepted (GitHub's is a few KB).
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// One JSON Web Key (RFC 7517), the members the verifier reads. Other
/// members are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default)]
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// A JWK Set. Parsing is lenient per key: an entry that is not a JWK object
/// is skipped (an issuer may publish key types this verifier does not know).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    pub fn new(keys: Vec<Jwk>) -> Self {
        Self { keys }
    }

    /// Parses a JWKS document: a JSON object with a `keys` array.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksFetchError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| JwksFetchError(format!("JWKS is not JSON: {e}")))?;
        let keys =
            v.get("keys").and_then(Value::as_array).ok_or_else(|| JwksFetchError("JWKS has no keys array".into()))?;
        Ok(Self { keys: keys.iter().filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok()).collect() })
    }
}

/// A failed JWKS fetch (unreachable, non-2xx, too large, not a JWKS).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct JwksFetchError(pub String);

/// Fetches an issuer's JWKS. Adapter: `crcr_clients::jwks::OctocrabJwksFetcher`.
#[async_trait]
pub trait JwksFetcher: Send + Sync {
    async fn fetch(&self, jwks_url: &str) -> Result<Jwks, JwksFetchError>;
}

/// A key as cached: usable for RS256, or why not.
type CachedKey = Result<Arc<DecodingKey>, String>;

fn cached_keys(jwks: &Jwks) -> HashMap<String, CachedKey> {
    let mut out: HashMap<String, CachedKey> = HashMap::new();
    for jwk in &jwks.keys {
        let Some(kid) = jwk.kid.as_deref().filter(|k| !k.is_empty()) else { continue };
        if out.contains_key(kid) {
            out.insert(kid.to_owned(), Err("the key id is published more than once".into()));
            continue;
        }
        out.insert(kid.to_owned(), usable_rs256_key(jwk));
    }
    out
}

fn usable_rs256_key(jwk: &Jwk) -> CachedKey {
    if jwk.kty != "RSA" {
        return Err(format!("key type is {:?}, not RSA", shown(&jwk.kty)));
    }
    if let Some(alg) = jwk.alg.as_deref() {
        if alg != "RS256" {
            return Err(format!("key is published for {:?}, not RS256", shown(alg)));
        }
    }
    if let Some(u) = jwk.use_.as_deref() {
        if u != "sig" {
            return Err(format!("key use is {:?}, not sig", shown(u)));
        }
    }
    let (Some(n), Some(e)) = (jwk.n.as_deref(), jwk.e.as_deref()) else {
        return Err("RSA key without n or e".into());
    };
    let modulus = URL_SAFE_NO_PAD.decode(n).map_err(|_| "RSA modulus is not base64url".to_owned())?;
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    if significant < 256 {
        return Err(format!("RSA modulus of {} bits is shorter than 2048", significant * 8));
    }
    DecodingKey::from_rsa_components(n, e).map(Arc::new).map_err(|_| "RSA exponent is not base64url".to_owned())
}

#[derive(Default)]
struct KeyState {
    /// `None` until the first successful load.
    keys: Option<HashMap<String, CachedKey>>,
    loaded_at_ms: i64,
    /// Last unknown-`kid` refetch (successful or not).
    last_refetch_ms: Option<i64>,
    /// Consecutive failed fetches (any kind); 0 after a success.
    failures: u32,
    /// No fetch before this time (set by a failed fetch).
    backoff_until_ms: Option<i64>,
}

/// The keys of one issuer. See the module documentation for the rules.
pub(crate) struct KeyCache {
    anchor: TrustAnchor,
    refetch_interval_ms: i64,
    max_age_ms: i64,
    /// First and longest back-off after a failed fetch, ms.
    backoff_ms: (i64, i64),
    state: tokio::sync::Mutex<KeyState>,
}

impl KeyCache {
    /// `backoff_ms`: first and longest wait after a failed fetch.
    pub(crate) fn new(anchor: TrustAnchor, refetch_interval_ms: i64, max_age_ms: i64, backoff_ms: (i64, i64)) -> Self {
        Self {
            anchor,
            refetch_interval_ms,
            max_age_ms,
            backoff_ms,
            state: tokio::sync::Mutex::new(KeyState::default()),
        }
    }

    /// 503 with the whole seconds (rounded up, at least 1) until the back-off ends.
    fn unavailable(&self, reason: String, st: &KeyState, now_ms: i64) -> OidcError {
        let left_ms = st.backoff_until_ms.map_or(0, |t| t - now_ms).max(1);
        OidcError::JwksUnavailable {
            issuer: self.anchor.issuer.clone(),
            reason,
            retry_after_s: ((left_ms + 999) / 1000) as u64,
        }
    }

    /// Fetches the set; on failure starts or lengthens the back-off.
    async fn fetch(&self, st: &mut KeyState, now_ms: i64, fetcher: &dyn JwksFetcher) -> Result<(), String> {
        match fetcher.fetch(&self.anchor.jwks_url).await {
            Ok(jwks) => {
                st.keys = Some(cached_keys(&jwks));
                st.loaded_at_ms = now_ms;
                st.failures = 0;
                st.backoff_until_ms = None;
                Ok(())
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let (first, max) = self.backoff_ms;
                let wait = first.saturating_mul(1i64 << (st.failures - 1).min(30)).min(max);
                st.backoff_until_ms = Some(now_ms + wait);
                tracing::warn!(issuer = %self.anchor.issuer, error = %e, failures = st.failures, backoff_ms = wait,
                    metric = "jwks_fetch_failed", "JWKS fetch failed");
                Err(e.0)
            }
        }
    }

    /// The RS256 decoding key `kid` of this issuer.
    pub(crate) async fn key(
        &self,
        kid: &str,
        now_ms: i64,
        fetcher: &dyn JwksFetcher,
    ) -> Result<Arc<DecodingKey>, OidcError> {
        let mut st = self.state.lock().await;
        let mut fetched_now = false;

        let stale = st.keys.is_none() || now_ms - st.loaded_at_ms >= self.max_age_ms;
        let backing_off = st.backoff_until_ms.is_some_and(|t| now_ms < t);
        if stale && !backing_off {
            fetched_now = true;
            if let Err(reason) = self.fetch(&mut st, now_ms, fetcher).await {
                if st.keys.is_none() {
                    return Err(self.unavailable(reason, &st, now_ms));
                }
            }
        }
        let Some(keys) = st.keys.as_ref() else {
            return Err(self.unavailable(
                "the last fetch failed; fetching again after the back-off".into(),
                &st,
                now_ms,
            ));
        };
        if let Some(found) = keys.get(kid) {
            return self.usable(kid, found);
        }

        // Unknown kid: one refetch per interval, and none if the set was just loaded.
        if fetched_now || st.last_refetch_ms.is_some_and(|t| now_ms - t < self.refetch_interval_ms) {
            return Err(self.unknown(kid));
        }
        if st.backoff_until_ms.is_some_and(|t| now_ms < t) {
            // The issuer failed recently: the kid cannot be checked yet.
            return Err(self.unavailable(
                "the last fetch failed; fetching again after the back-off".into(),
                &st,
                now_ms,
            ));
        }
        st.last_refetch_ms = Some(now_ms);
        tracing::info!(issuer = %self.anchor.issuer, kid = %shown(kid), "unknown kid: refetching the JWKS");
        if let Err(reason) = self.fetch(&mut st, now_ms, fetcher).await {
            return Err(self.unavailable(reason, &st, now_ms));
        }
        match st.keys.as_ref().and_then(|k| k.get(kid)) {
            Some(found) => self.usable(kid, found),
            None => Err(self.unknown(kid)),
        }
    }

    fn unknown(&self, kid: &str) -> OidcError {
        OidcError::UnknownKid { issuer: self.anchor.issuer.clone(), kid: shown(kid) }
    }

    fn usable(&self, kid: &str, found: &CachedKey) -> Result<Arc<DecodingKey>, OidcError> {
        found.clone().map_err(|reason| OidcError::KeyMismatch {
            issuer: self.anchor.issuer.clone(),
            kid: shown(kid),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parse_skips_foreign_entries() {
        let j = Jwks::from_json(br#"{"keys":[{"kid":"a","kty":"RSA","n":"AQAB","e":"AQAB"},{"kid":7},"x"]}"#).unwrap();
        assert_eq!(j.keys.len(), 1);
        assert!(Jwks::from_json(b"{}").is_err());
        assert!(Jwks::from_json(b"nope").is_err());
    }

    #[test]
    fn only_rs256_signing_keys_of_2048_bits_are_usable() {
        let n = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let ok = Jwk {
            kid: Some("k".into()),
            kty: "RSA".into(),
            n: Some(n.clone()),
            e: Some("AQAB".into()),
            ..Default::default()
        };
        assert!(usable_rs256_key(&ok).is_ok());
        assert!(usable_rs256_key(&Jwk { alg: Some("RS256".into()), use_: Some("sig".into()), ..ok.clone() }).is_ok());
        assert!(usable_rs256_key(&Jwk { alg: Some("RS512".into()), ..ok.clone() }).is_err());
        assert!(usable_rs256_key(&Jwk { use_: Some("enc".into()), ..ok.clone() }).is_err());
        assert!(usable_rs256_key(&Jwk { kty: "oct".into(), ..ok.clone() }).is_err());
        let short = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        assert!(usable_rs256_key(&Jwk { n: Some(short), ..ok.clone() }).is_err());
        let dup = cached_keys(&Jwks::new(vec![ok.clone(), ok]));
        assert!(dup["k"].is_err());
    }
}
