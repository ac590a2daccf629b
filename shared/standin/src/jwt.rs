//! The App's key pair and GitHub's App JWT rules.
//!
//! The stand-in generates an RSA 2048 key at start (aws-lc-rs), hands the
//! private half out as PKCS#8 PEM, and checks every App JWT against the
//! public half the way GitHub does: RS256 only, `iss` names the App (ID as
//! a number or a numeric string, or the App's client ID), the signature
//! verifies, `iat` is an integer not more than 60 s in the future, `exp` is
//! in the future, at most 10 minutes after `iat` and at most 10 minutes from
//! now. Each refusal carries GitHub's own status and message.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine as _;
use serde_json::Value;

/// How far in the future `iat` may be (clock skew GitHub tolerates).
pub(crate) const IAT_SKEW_S: i64 = 60;
/// The longest App JWT GitHub accepts.
pub(crate) const MAX_JWT_LIFETIME_S: i64 = 600;

pub(crate) const DECODE_FAILED: &str = "A JSON web token could not be decoded";
pub(crate) const IAT_INVALID: &str =
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
pub(crate) const EXP_INVALID: &str =
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
pub(crate) const EXP_TOO_FAR: &str = "'Expiration time' claim ('exp') is too far in the future";
pub(crate) const ISS_MISSING: &str = "Missing 'issuer' claim ('iss') in assertion";
pub(crate) const ISS_NOT_INTEGER: &str = "'Issuer' claim ('iss') must be an Integer";
pub(crate) const INTEGRATION_NOT_FOUND: &str = "Integration not found";

/// The App's RSA key pair.
pub(crate) struct AppKey {
    private_pem: String,
    public_der: Vec<u8>,
}

impl AppKey {
    /// A fresh RSA 2048 key (takes tens to hundreds of milliseconds: call it
    /// off the async threads).
    pub(crate) fn generate() -> anyhow::Result<AppKey> {
        let pair =
            KeyPair::generate(KeySize::Rsa2048).map_err(|e| anyhow::anyhow!("generating the stand-in App key: {e}"))?;
        let pkcs8: Pkcs8V1Der<'static> =
            pair.as_der().map_err(|e| anyhow::anyhow!("encoding the stand-in App key: {e}"))?;
        Ok(AppKey { private_pem: pem("PRIVATE KEY", pkcs8.as_ref()), public_der: pair.public_key().as_ref().to_vec() })
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub(crate) fn private_pem(&self) -> &str {
        &self.private_pem
    }

    fn verifies(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_der).verify(signing_input, signature).is_ok()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A refused App JWT: the status and message GitHub answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    pub message: &'static str,
}

fn reject(status: u16, message: &'static str) -> Rejection {
    Rejection { status, message }
}

/// True when `token` has the shape of a JWT (three base64url segments, the
/// first a JSON object): GitHub then treats it as an App JWT, not as a token.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts[0].starts_with("eyJ") && parts.iter().all(|p| !p.is_empty())
}

fn b64url(segment: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()
}

fn json_segment(segment: &str) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(&b64url(segment)?).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Checks an App JWT at Unix time `now`. `Ok(())` means GitHub would
/// authenticate the request as the App.
pub(crate) fn check_app_jwt(
    token: &str,
    key: &AppKey,
    app_id: u64,
    client_id: &str,
    now: i64,
) -> Result<(), Rejection> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(reject(401, DECODE_FAILED));
    }
    let header = json_segment(parts[0]).ok_or(reject(401, DECODE_FAILED))?;
    let claims = json_segment(parts[1]).ok_or(reject(401, DECODE_FAILED))?;
    let signature = b64url(parts[2]).ok_or(reject(401, DECODE_FAILED))?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(reject(401, DECODE_FAILED));
    }

    // `iss` picks the App (and so the public key) before the signature is checked.
    match claims.get("iss") {
        None | Some(Value::Null) => return Err(reject(401, ISS_MISSING)),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id == app_id => {}
            Some(_) => return Err(reject(404, INTEGRATION_NOT_FOUND)),
            None => return Err(reject(401, ISS_NOT_INTEGER)),
        },
        Some(Value::String(s)) if s == client_id => {}
        Some(Value::String(s)) => match s.parse::<u64>() {
            Ok(id) if id == app_id => {}
            Ok(_) => return Err(reject(404, INTEGRATION_NOT_FOUND)),
            Err(_) => return Err(reject(401, ISS_NOT_INTEGER)),
        },
        Some(_) => return Err(reject(401, ISS_NOT_INTEGER)),
    }

    let signing_input = format!("{}.{}", parts[0], parts[1]);
    if !key.verifies(signing_input.as_bytes(), &signature) {
        return Err(reject(401, DECODE_FAILED));
    }

    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n.as_i64().ok_or(reject(401, IAT_INVALID))?,
        _ => return Err(reject(401, IAT_INVALID)),
    };
    if iat > now + IAT_SKEW_S {
        return Err(reject(401, IAT_INVALID));
    }
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_f64().ok_or(reject(401, EXP_INVALID))?,
        _ => return Err(reject(401, EXP_INVALID)),
    };
    if exp <= now as f64 {
        return Err(reject(401, EXP_INVALID));
    }
    if exp - iat as f64 > MAX_JWT_LIFETIME_S as f64 || exp > (now + MAX_JWT_LIFETIME_S) as f64 {
        return Err(reject(401, EXP_TOO_FAR));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    fn sign(key_pem: &str, header: Value, claims: Value) -> String {
        let pair = {
            let b64: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            KeyPair::from_pkcs8(&der).unwrap()
        };
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn claims_rules_in_order() {
        let key = AppKey::generate().unwrap();
        let hdr = json!({"alg": "RS256", "typ": "JWT"});
        let now = 1_700_000_000_i64;
        let check = |claims: Value| check_app_jwt(&sign(key.private_pem(), hdr.clone(), claims), &key, 7, "Iv1.x", now);
        assert_eq!(check(json!({"iss": 7, "iat": now - 60, "exp": now + 540})), Ok(()));
        assert_eq!(check(json!({"iss": "7", "iat": now - 60, "exp": now + 540})), Ok(()));
        assert_eq!(check(json!({"iss": "Iv1.x", "iat": now, "exp": now + 600})), Ok(()));
        assert_eq!(check(json!({"iat": now, "exp": now + 60})).unwrap_err().message, ISS_MISSING);
        assert_eq!(check(json!({"iss": 8, "iat": now, "exp": now + 60})).unwrap_err().status, 404);
        assert_eq!(check(json!({"iss": "x", "iat": now, "exp": now + 60})).unwrap_err().message, ISS_NOT_INTEGER);
        assert_eq!(check(json!({"iss": 7, "iat": now + 61, "exp": now + 120})).unwrap_err().message, IAT_INVALID);
        assert_eq!(check(json!({"iss": 7, "iat": 1.5, "exp": now + 120})).unwrap_err().message, IAT_INVALID);
        assert_eq!(check(json!({"iss": 7, "iat": now - 700, "exp": now})).unwrap_err().message, EXP_INVALID);
        assert_eq!(check(json!({"iss": 7, "iat": now - 60, "exp": now + 541})).unwrap_err().message, EXP_TOO_FAR);
        assert_eq!(check(json!({"iss": 7, "iat": now + 30, "exp": now + 601})).unwrap_err().message, EXP_TOO_FAR);
        let hs = sign(key.private_pem(), json!({"alg": "HS256"}), json!({"iss": 7, "iat": now, "exp": now + 60}));
        assert_eq!(check_app_jwt(&hs, &key, 7, "Iv1.x", now).unwrap_err().message, DECODE_FAILED);
        let other = AppKey::generate().unwrap();
        let forged = sign(other.private_pem(), hdr.clone(), json!({"iss": 7, "iat": now, "exp": now + 60}));
        assert_eq!(check_app_jwt(&forged, &key, 7, "Iv1.x", now).unwrap_err().message, DECODE_FAILED);
        assert_eq!(check_app_jwt("a.b.c", &key, 7, "Iv1.x", now).unwrap_err().message, DECODE_FAILED);
    }
}
