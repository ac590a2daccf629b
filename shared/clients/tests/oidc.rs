//! Tests of the callback token verifier (`crcr_core::oidc`) against local
//! OIDC issuers: real RSA 2048 key pairs from aws-lc-rs, JWKS documents
//! served by axum on 127.0.0.1, tokens signed with jsonwebtoken, fetched by
//! the production fetcher (`OctocrabJwksFetcher`). Each issuer counts the
//! JWKS requests it answers.
//!
//! Run: `cargo test -p crcr-core --test oidc`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use crcr_clients::jwks::OctocrabJwksFetcher;
use crcr_core::domain::RepoFullName;
use crcr_core::oidc::{
    body_digest, BuildkitePipeline, IssuerKind, OidcConfig, OidcConfigError, OidcError, OidcVerifier, TrustAnchor,
    DEFAULT_AUDIENCE,
};
use crcr_core::ports::{Clock, ManualClock};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

// ---------------------------------------------------------------- keys

struct RsaKey {
    enc: EncodingKey,
    /// JWK members of the public key (`kty`, `n`, `e`), no `kid`.
    jwk: Value,
    /// PKCS#1 `RSAPublicKey` DER.
    pkcs1_der: Vec<u8>,
    /// X.509 `SubjectPublicKeyInfo` DER.
    spki_der: Vec<u8>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn generate_key() -> RsaKey {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    let enc = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
    let public = pair.public_key();
    let components: PublicKeyComponents<Vec<u8>> = public.into();
    let spki: PublicKeyX509Der<'static> = public.as_der().unwrap();
    RsaKey {
        enc,
        jwk: json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e)}),
        pkcs1_der: public.as_ref().to_vec(),
        spki_der: spki.as_ref().to_vec(),
    }
}

/// Four RSA 2048 keys, generated once per test binary.
fn key(i: usize) -> &'static RsaKey {
    static KEYS: OnceLock<Vec<RsaKey>> = OnceLock::new();
    &KEYS.get_or_init(|| (0..4).map(|_| generate_key()).collect())[i]
}

/// The JWK of `key` as published under `kid`, with extra members.
fn jwk(key: &RsaKey, kid: &str, extra: Value) -> Value {
    let mut v = key.jwk.clone();
    v["kid"] = json!(kid);
    v["use"] = json!("sig");
    v["alg"] = json!("RS256");
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

// ---------------------------------------------------------------- local issuer

#[derive(Clone, Default)]
struct IssuerState {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

/// A local OIDC issuer: `GET /.well-known/jwks` answers the published keys
/// (or 500 while `failing`) and counts every request.
struct LocalIssuer {
    url: String,
    state: IssuerState,
}

impl LocalIssuer {
    async fn start() -> Self {
        async fn jwks(State(s): State<IssuerState>) -> Result<Json<Value>, StatusCode> {
            s.fetches.fetch_add(1, Ordering::SeqCst);
            if s.failing.load(Ordering::SeqCst) {
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            Ok(Json(json!({ "keys": *s.keys.lock().unwrap() })))
        }
        let state = IssuerState::default();
        let app = Router::new().route("/.well-known/jwks", get(jwks)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }
    fn publish(&self, jwk: Value) {
        self.state.keys.lock().unwrap().push(jwk);
    }
    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- context

const ORG: &str = "0184990a-477b-4fa8-9968-496074483cee";
const PIPELINE: &str = "01945ecf-80f0-41e8-9b83-a2970a9305a1";
const PIPELINE_ANY_BRANCH: &str = "01945ecf-8bcf-40a6-9d70-a765db9a0928";
const OTHER_PIPELINE: &str = "0194b014-8517-7cef-b232-76a827315f08";

struct Ctx {
    gha: LocalIssuer,
    bk: LocalIssuer,
    clock: Arc<ManualClock>,
    v: Arc<OidcVerifier>,
}

impl Ctx {
    fn now(&self) -> i64 {
        self.clock.now_ms() / 1000
    }
    async fn verify(&self, token: &str) -> Result<crcr_core::oidc::CallerIdentity, OidcError> {
        self.v.verify(token, &body_digest(b"{}")).await
    }
    /// Claims of a GitHub Actions token for `repo` (id `repo_id`), valid now.
    fn gha_claims(&self, repo: &str, repo_id: &str) -> Value {
        let now = self.now();
        json!({
            "iss": self.gha.url, "aud": DEFAULT_AUDIENCE,
            "sub": format!("repo:{repo}:ref:refs/heads/main"),
            "repository": repo, "repository_id": repo_id,
            "repository_owner": repo.split('/').next().unwrap(), "repository_owner_id": "9",
            "ref": "refs/heads/main", "run_id": "123", "run_attempt": "1",
            "iat": now, "nbf": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }
    /// Claims of a Buildkite token (with the optional id claims), valid now.
    fn bk_claims(&self, pipeline_id: &str, branch: &str) -> Value {
        let now = self.now();
        json!({
            "iss": self.bk.url, "aud": DEFAULT_AUDIENCE,
            "sub": format!("organization:acme:pipeline:accel:ref:refs/heads/{branch}:commit:b5ffe3ae:step:"),
            "iat": now, "nbf": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
            "organization_slug": "acme", "pipeline_slug": "accel",
            "organization_id": ORG, "pipeline_id": pipeline_id,
            "build_number": 5, "build_branch": branch, "build_commit": "b5ffe3ae",
            "step_key": null, "job_id": "01945ecf-80f0-41e8-9b83-a2970a9305a1",
        })
    }
}

fn default_config(gha: &LocalIssuer, bk: &LocalIssuer) -> OidcConfig {
    let mut pipelines = BTreeMap::new();
    pipelines.insert(
        format!("{ORG}/{PIPELINE}"),
        BuildkitePipeline {
            repo: RepoFullName::parse("acme/accel-ci").unwrap(),
            required_claims: [("build_branch".to_owned(), vec!["main".to_owned()])].into(),
        },
    );
    pipelines.insert(
        format!("{}/{}", ORG.to_uppercase(), PIPELINE_ANY_BRANCH),
        BuildkitePipeline { repo: RepoFullName::parse("acme/other-ci").unwrap(), required_claims: BTreeMap::new() },
    );
    OidcConfig {
        github_actions: Some(TrustAnchor::new(&gha.url)),
        buildkite: Some(TrustAnchor::new(&bk.url)),
        buildkite_pipelines: pipelines,
        ..OidcConfig::default()
    }
}

/// Two local issuers (GitHub Actions: key 0 as `gha-1`; Buildkite: key 1 as
/// `bk-1`) and a verifier trusting them, on a manual clock set to now.
async fn ctx() -> Ctx {
    ctx_with(|_| {}).await
}

async fn ctx_with(f: impl FnOnce(&mut OidcConfig)) -> Ctx {
    let (gha, bk) = (LocalIssuer::start().await, LocalIssuer::start().await);
    gha.publish(jwk(key(0), "gha-1", json!({})));
    bk.publish(jwk(key(1), "bk-1", json!({})));
    let mut cfg = default_config(&gha, &bk);
    f(&mut cfg);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let clock = Arc::new(ManualClock::new(now_ms));
    let fetcher = Arc::new(OctocrabJwksFetcher::new(Duration::from_secs(5)).unwrap());
    let v = Arc::new(OidcVerifier::new(cfg, fetcher, clock.clone()).unwrap());
    Ctx { gha, bk, clock, v }
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

/// RS256 with `key`, header `kid`.
fn sign(key: &RsaKey, kid: &str, claims: &Value) -> String {
    encode(&header(Algorithm::RS256, Some(kid)), claims, &key.enc).unwrap()
}

/// A token assembled by hand: any header, any signature bytes.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn assert_401(r: Result<crcr_core::oidc::CallerIdentity, OidcError>, what: &str) -> OidcError {
    let e = r.expect_err(what);
    assert_eq!(e.status(), 401, "{what}: {e}");
    e
}

fn assert_403(r: Result<crcr_core::oidc::CallerIdentity, OidcError>, what: &str) -> OidcError {
    let e = r.expect_err(what);
    assert_eq!(e.status(), 403, "{what}: {e}");
    e
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn github_actions_token_is_accepted_with_its_identity() {
    let t = ctx().await;
    let claims = t.gha_claims("Acme/Accel", "4242");
    let id = t.verify(&sign(key(0), "gha-1", &claims)).await.unwrap();
    assert_eq!(id.repo, RepoFullName::parse("acme/accel").unwrap());
    assert_eq!(id.repo.as_str(), "Acme/Accel");
    assert_eq!(id.issuer, IssuerKind::GitHubActions);
    assert_eq!(id.repository_id.as_deref(), Some("4242"));
    assert_eq!(id.jti.as_deref(), claims["jti"].as_str());
    assert_eq!(id.exp, claims["exp"].as_i64().unwrap());
    assert_eq!(id.claims, claims);
    assert_eq!(t.gha.fetches(), 1, "keys fetched once");
    // Cached: a second token does not fetch again.
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("Acme/Accel", "4242"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 1);
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let t = ctx().await;
    let claims = t.gha_claims("acme/accel", "1");
    // Control: the same claims, properly signed, pass.
    t.verify(&sign(key(0), "gha-1", &claims)).await.unwrap();
    for alg in ["none", "None", "NONE"] {
        let tok = raw_token(&json!({"alg": alg, "kid": "gha-1", "typ": "JWT"}), &t.gha_claims("acme/accel", "1"), b"");
        let e = assert_401(t.verify(&tok).await, alg);
        assert!(matches!(&e, OidcError::Algorithm { alg: a } if a == alg), "{alg}: {e:?}");
        // Unsigned token with the signature of a valid one.
        let valid = sign(key(0), "gha-1", &claims);
        let sig = URL_SAFE_NO_PAD.decode(valid.rsplit('.').next().unwrap()).unwrap();
        let tok = raw_token(&json!({"alg": alg, "kid": "gha-1"}), &claims, &sig);
        assert!(matches!(assert_401(t.verify(&tok).await, alg), OidcError::Algorithm { .. }));
    }
    let tok = raw_token(&json!({"kid": "gha-1"}), &claims, b"");
    assert!(matches!(assert_401(t.verify(&tok).await, "no alg"), OidcError::Algorithm { .. }));
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let t = ctx().await;
    let k = key(0);
    let jwks_text = json!({"keys": [jwk(k, "gha-1", json!({}))]}).to_string();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PKCS#1 DER", k.pkcs1_der.clone()),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &k.pkcs1_der).into_bytes()),
        ("SPKI DER", k.spki_der.clone()),
        ("SPKI PEM", pem("PUBLIC KEY", &k.spki_der).into_bytes()),
        ("JWK n", k.jwk["n"].as_str().unwrap().as_bytes().to_vec()),
        ("JWKS document", jwks_text.into_bytes()),
    ];
    for (what, secret) in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let claims = t.gha_claims("acme/accel", "1");
            let tok = encode(&header(alg, Some("gha-1")), &claims, &EncodingKey::from_secret(&secret)).unwrap();
            let e = assert_401(t.verify(&tok).await, what);
            assert!(matches!(e, OidcError::Algorithm { .. }), "{what} {alg:?}: {e:?}");
            // The same HMAC signature under a header that claims RS256.
            let hs_sig = URL_SAFE_NO_PAD.decode(tok.rsplit('.').next().unwrap()).unwrap();
            let forged = raw_token(&json!({"alg": "RS256", "kid": "gha-1", "typ": "JWT"}), &claims, &hs_sig);
            let e = assert_401(t.verify(&forged).await, what);
            assert!(matches!(e, OidcError::BadSignature { .. }), "{what} as RS256: {e:?}");
        }
    }
}

#[tokio::test]
async fn other_algorithms_are_rejected() {
    let t = ctx().await;
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512] {
        let claims = t.gha_claims("acme/accel", "1");
        let tok = encode(&header(alg, Some("gha-1")), &claims, &key(0).enc).unwrap();
        let e = assert_401(t.verify(&tok).await, &format!("{alg:?}"));
        assert!(matches!(e, OidcError::Algorithm { .. }), "{alg:?}: {e:?}");
    }
    for alg in ["ES256", "EdDSA", "rs256", "RS256 ", "XYZ"] {
        let tok = raw_token(&json!({"alg": alg, "kid": "gha-1"}), &t.gha_claims("acme/accel", "1"), b"x");
        assert!(matches!(assert_401(t.verify(&tok).await, alg), OidcError::Algorithm { .. }), "{alg}");
    }
}

#[tokio::test]
async fn key_published_for_another_algorithm_or_use_is_not_used() {
    let t = ctx().await;
    t.gha.publish(jwk(key(2), "rs512-key", json!({"alg": "RS512"})));
    t.gha.publish(jwk(key(2), "enc-key", json!({"use": "enc"})));
    t.gha.publish(json!({"kty": "oct", "kid": "hmac-key", "k": URL_SAFE_NO_PAD.encode(&key(2).pkcs1_der)}));
    t.gha.publish(jwk(key(2), "plain-key", json!({"alg": null, "use": null})));
    for kid in ["rs512-key", "enc-key", "hmac-key"] {
        let tok = sign(key(2), kid, &t.gha_claims("acme/accel", "1"));
        let e = assert_401(t.verify(&tok).await, kid);
        assert!(matches!(e, OidcError::KeyMismatch { .. }), "{kid}: {e:?}");
    }
    // A key without alg/use is fine for RS256.
    t.verify(&sign(key(2), "plain-key", &t.gha_claims("acme/accel", "1"))).await.unwrap();
}

#[tokio::test]
async fn missing_kid_is_rejected() {
    let t = ctx().await;
    let claims = t.gha_claims("acme/accel", "1");
    let tok = encode(&header(Algorithm::RS256, None), &claims, &key(0).enc).unwrap();
    assert_eq!(assert_401(t.verify(&tok).await, "no kid"), OidcError::MissingKid);
    let tok = encode(&header(Algorithm::RS256, Some("")), &claims, &key(0).enc).unwrap();
    assert_eq!(assert_401(t.verify(&tok).await, "empty kid"), OidcError::MissingKid);
    assert_eq!(t.gha.fetches(), 0, "nothing fetched for a token without kid");
}

#[tokio::test]
async fn signature_by_another_key_or_over_other_claims_is_rejected() {
    let t = ctx().await;
    let claims = t.gha_claims("acme/accel", "1");
    let tok = sign(key(3), "gha-1", &claims);
    let e = assert_401(t.verify(&tok).await, "other key, same kid");
    assert!(matches!(e, OidcError::BadSignature { .. }), "{e:?}");
    // A genuine signature over other claims (repository swapped).
    let genuine = sign(key(0), "gha-1", &claims);
    let sig = URL_SAFE_NO_PAD.decode(genuine.rsplit('.').next().unwrap()).unwrap();
    let mut other = claims.clone();
    other["repository"] = json!("evil/repo");
    let tok = raw_token(&json!({"alg": "RS256", "kid": "gha-1", "typ": "JWT"}), &other, &sig);
    assert!(matches!(assert_401(t.verify(&tok).await, "tampered"), OidcError::BadSignature { .. }));
    t.verify(&genuine).await.unwrap();
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let t = ctx().await;
    for aud in [json!("https://github.com/acme"), json!("sts.amazonaws.com"), json!(["a", "b"]), json!(null)] {
        let mut claims = t.gha_claims("acme/accel", "1");
        if aud.is_null() {
            claims.as_object_mut().unwrap().remove("aud");
        } else {
            claims["aud"] = aud.clone();
        }
        let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, &aud.to_string());
        assert!(matches!(e, OidcError::WrongAudience { .. }), "{aud}: {e:?}");
    }
    let mut claims = t.gha_claims("acme/accel", "1");
    claims["aud"] = json!(["sts.amazonaws.com", DEFAULT_AUDIENCE]);
    t.verify(&sign(key(0), "gha-1", &claims)).await.unwrap();

    // A configured audience replaces the default.
    let t = ctx_with(|c| c.audience = "custom-relay".into()).await;
    let claims = t.gha_claims("acme/accel", "1");
    let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, "default aud, custom configured");
    assert!(matches!(e, OidcError::WrongAudience { .. }));
    let mut claims = t.gha_claims("acme/accel", "1");
    claims["aud"] = json!("custom-relay");
    t.verify(&sign(key(0), "gha-1", &claims)).await.unwrap();
}

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let t = ctx().await;
    let variants = [
        json!("https://token.actions.githubusercontent.com"), // the real issuer, not trusted in this test
        json!(format!("{}/", t.gha.url)),
        json!(format!("{}/x", t.gha.url)),
        json!(t.gha.url.to_uppercase()),
        json!("https://evil.example"),
        json!([t.gha.url]),
        json!(null),
    ];
    for iss in variants {
        let mut claims = t.gha_claims("acme/accel", "1");
        if iss.is_null() {
            claims.as_object_mut().unwrap().remove("iss");
        } else {
            claims["iss"] = iss.clone();
        }
        let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, &iss.to_string());
        assert!(
            matches!(e, OidcError::UntrustedIssuer { .. } | OidcError::BadClaim { .. } | OidcError::MissingClaim(_)),
            "{iss}: {e:?}"
        );
    }
    assert_eq!(t.gha.fetches() + t.bk.fetches(), 0, "no keys fetched for an untrusted issuer");
    // Buildkite's issuer with GitHub's key: that issuer does not publish it.
    let mut claims = t.gha_claims("acme/accel", "1");
    claims["iss"] = json!(t.bk.url);
    let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, "cross-issuer");
    assert!(matches!(e, OidcError::UnknownKid { .. }), "{e:?}");
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let t = ctx().await;
    let now = t.now();
    let with = |exp: Option<i64>| {
        let mut c = t.gha_claims("acme/accel", "1");
        c["iat"] = json!(now - 400);
        c["nbf"] = json!(now - 400);
        match exp {
            Some(e) => c["exp"] = json!(e),
            None => drop(c.as_object_mut().unwrap().remove("exp")),
        }
        sign(key(0), "gha-1", &c)
    };
    let e = assert_401(t.verify(&with(Some(now - 61))).await, "expired 61 s ago");
    assert!(matches!(e, OidcError::Expired { .. }), "{e:?}");
    assert!(matches!(assert_401(t.verify(&with(Some(now - 3600))).await, "long expired"), OidcError::Expired { .. }));
    assert_eq!(assert_401(t.verify(&with(None)).await, "no exp"), OidcError::MissingClaim("exp".into()));
    // Within the 60 s leeway.
    t.verify(&with(Some(now - 59))).await.unwrap();
    // The same token, once the clock passes exp + leeway.
    let tok = with(Some(now + 10));
    t.verify(&tok).await.unwrap();
    t.clock.advance(Duration::from_secs(71));
    assert!(matches!(assert_401(t.verify(&tok).await, "aged out"), OidcError::Expired { .. }));
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected() {
    let t = ctx().await;
    let now = t.now();
    let with = |nbf: i64| {
        let mut c = t.gha_claims("acme/accel", "1");
        c["nbf"] = json!(nbf);
        sign(key(0), "gha-1", &c)
    };
    let e = assert_401(t.verify(&with(now + 61)).await, "nbf in 61 s");
    assert!(matches!(e, OidcError::NotYetValid { .. }), "{e:?}");
    assert!(matches!(assert_401(t.verify(&with(now + 250)).await, "nbf in 250 s"), OidcError::NotYetValid { .. }));
    t.verify(&with(now + 59)).await.unwrap();
}

#[tokio::test]
async fn iat_in_the_future_is_rejected() {
    let t = ctx().await;
    let now = t.now();
    let with = |iat: Option<i64>| {
        let mut c = t.gha_claims("acme/accel", "1");
        c.as_object_mut().unwrap().remove("nbf");
        match iat {
            Some(i) => c["iat"] = json!(i),
            None => drop(c.as_object_mut().unwrap().remove("iat")),
        }
        sign(key(0), "gha-1", &c)
    };
    let e = assert_401(t.verify(&with(Some(now + 61))).await, "iat in 61 s");
    assert!(matches!(e, OidcError::IssuedInFuture { .. }), "{e:?}");
    assert!(matches!(assert_401(t.verify(&with(Some(now + 200))).await, "iat +200"), OidcError::IssuedInFuture { .. }));
    assert_eq!(assert_401(t.verify(&with(None)).await, "no iat"), OidcError::MissingClaim("iat".into()));
    t.verify(&with(Some(now + 59))).await.unwrap();
}

#[tokio::test]
async fn unknown_kid_is_rejected() {
    let t = ctx().await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    let tok = sign(key(2), "gha-2", &t.gha_claims("acme/accel", "1"));
    let e = assert_401(t.verify(&tok).await, "unknown kid");
    assert!(matches!(&e, OidcError::UnknownKid { kid, .. } if kid == "gha-2"), "{e:?}");
    assert_eq!(t.gha.fetches(), 2, "one refetch for the unknown kid");
}

#[tokio::test]
async fn rotated_key_is_accepted_after_one_refetch() {
    let t = ctx().await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 1);
    // The issuer rotates: a new key appears in its JWKS.
    t.gha.publish(jwk(key(2), "gha-2", json!({})));
    let id = t.verify(&sign(key(2), "gha-2", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(id.repo.as_str(), "acme/accel");
    assert_eq!(t.gha.fetches(), 2, "exactly one refetch");
    // Both keys are now cached.
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    t.verify(&sign(key(2), "gha-2", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 2);

    // A key published after a rate-limited refetch is picked up once the interval has passed.
    let t = ctx().await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_401(t.verify(&sign(key(2), "gha-3", &t.gha_claims("acme/accel", "1"))).await, "not yet published");
    t.gha.publish(jwk(key(2), "gha-3", json!({})));
    assert_401(t.verify(&sign(key(2), "gha-3", &t.gha_claims("acme/accel", "1"))).await, "refetch rate-limited");
    assert_eq!(t.gha.fetches(), 2);
    t.clock.advance(Duration::from_secs(60));
    t.verify(&sign(key(2), "gha-3", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 3);
}

#[tokio::test]
async fn flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let t = ctx().await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 1);
    let flood = |n: usize, tag: &'static str| {
        let v = t.v.clone();
        let tokens: Vec<String> =
            (0..n).map(|i| sign(key(3), &format!("bogus-{tag}-{i}"), &t.gha_claims("acme/accel", "1"))).collect();
        async move {
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|tok| {
                    let v = v.clone();
                    tokio::spawn(async move { v.verify(&tok, &body_digest(b"{}")).await })
                })
                .collect();
            for task in tasks {
                let e = task.await.unwrap().expect_err("bogus kid accepted");
                assert!(matches!(e, OidcError::UnknownKid { .. }), "{e:?}");
            }
        }
    };
    flood(200, "a").await;
    assert_eq!(t.gha.fetches(), 2, "200 bogus kids: one refetch");
    t.clock.advance(Duration::from_secs(30));
    flood(100, "b").await;
    assert_eq!(t.gha.fetches(), 2, "30 s later: still within the interval");
    t.clock.advance(Duration::from_secs(30));
    flood(100, "c").await;
    assert_eq!(t.gha.fetches(), 3, "60 s after the first refetch: one more");
    // The genuine key still works throughout, without fetching.
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 3);

    // A configured interval.
    let t = ctx_with(|c| c.jwks_refetch_interval = Duration::from_secs(300)).await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    flood_sequential(&t, 20).await;
    t.clock.advance(Duration::from_secs(120));
    flood_sequential(&t, 20).await;
    assert_eq!(t.gha.fetches(), 2, "interval of 300 s: one refetch in 120 s");
    t.clock.advance(Duration::from_secs(180));
    flood_sequential(&t, 20).await;
    assert_eq!(t.gha.fetches(), 3);
}

async fn flood_sequential(t: &Ctx, n: usize) {
    for i in 0..n {
        let tok = sign(key(3), &format!("seq-{i}"), &t.gha_claims("acme/accel", "1"));
        assert!(matches!(t.verify(&tok).await, Err(OidcError::UnknownKid { .. })));
    }
}

#[tokio::test]
async fn unreachable_jwks_answers_503_and_recovers() {
    let t = ctx().await;
    t.gha.set_failing(true);
    let e = t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap_err();
    assert!(matches!(e, OidcError::JwksUnavailable { .. }), "{e:?}");
    assert_eq!(e.status(), 503);
    // Not retried on every request.
    let _ = t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap_err();
    assert_eq!(t.gha.fetches(), 1);
    t.gha.set_failing(false);
    t.clock.advance(Duration::from_secs(60));
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 2);
    // A failed reload after max age keeps the last good keys.
    t.gha.set_failing(true);
    t.clock.advance(Duration::from_secs(3600));
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"))).await.unwrap();
    assert_eq!(t.gha.fetches(), 3);
}

#[tokio::test]
async fn replayed_jti_with_a_different_body_is_rejected() {
    let t = ctx().await;
    let first = t.gha_claims("acme/accel", "1");
    let tok = sign(key(0), "gha-1", &first);
    let (body, other) = (body_digest(br#"{"workflow":{"status":"in_progress"}}"#), body_digest(b"{}"));
    t.v.verify(&tok, &body).await.unwrap();
    // The same request again: an idempotent retry.
    t.v.verify(&tok, &body).await.unwrap();
    // The same token for another body: a replay.
    assert_eq!(assert_401(t.v.verify(&tok, &other).await, "replay"), OidcError::Replay);
    // A new token with the same jti is also a replay.
    let mut claims = t.gha_claims("acme/accel", "1");
    claims["jti"] = first["jti"].clone();
    let again = sign(key(0), "gha-1", &claims);
    assert_eq!(assert_401(t.v.verify(&again, &other).await, "same jti, new token"), OidcError::Replay);
    // No jti at all.
    let mut claims = t.gha_claims("acme/accel", "1");
    claims.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, "no jti"),
        OidcError::MissingClaim("jti".into())
    );
}

#[tokio::test]
async fn repository_id_mismatch_for_a_known_repo_is_forbidden() {
    let t = ctx().await;
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1001"))).await.unwrap();
    // Same name (any case), another repository id: a re-created or renamed-into repository.
    for name in ["acme/accel", "ACME/Accel"] {
        let e = assert_403(t.verify(&sign(key(0), "gha-1", &t.gha_claims(name, "2002"))).await, name);
        assert!(
            matches!(&e, OidcError::RepositoryIdMismatch { bound, got, .. } if bound == "1001" && got == "2002"),
            "{e:?}"
        );
    }
    // The original repository still passes; an unrelated one binds its own id.
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1001"))).await.unwrap();
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/other", "2002"))).await.unwrap();
    // No repository_id: refused.
    let mut claims = t.gha_claims("acme/new", "3");
    claims.as_object_mut().unwrap().remove("repository_id");
    let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, "no repository_id");
    assert_eq!(e, OidcError::MissingClaim("repository_id".into()));
}

#[tokio::test]
async fn buildkite_pipeline_in_the_map_is_accepted() {
    let t = ctx().await;
    let claims = t.bk_claims(PIPELINE, "main");
    let id = t.verify(&sign(key(1), "bk-1", &claims)).await.unwrap();
    assert_eq!(id.repo.as_str(), "acme/accel-ci");
    assert_eq!(id.issuer, IssuerKind::Buildkite);
    assert_eq!(id.repository_id, None);
    assert_eq!(id.claims, claims);
    // Map keys compare case-insensitively; no required claims: any branch.
    let id = t.verify(&sign(key(1), "bk-1", &t.bk_claims(PIPELINE_ANY_BRANCH, "feature"))).await.unwrap();
    assert_eq!(id.repo.as_str(), "acme/other-ci");
    assert_eq!(t.bk.fetches(), 1);
    assert_eq!(t.gha.fetches(), 0);
}

#[tokio::test]
async fn buildkite_pipeline_not_in_the_map_is_forbidden() {
    let t = ctx().await;
    let e = assert_403(t.verify(&sign(key(1), "bk-1", &t.bk_claims(OTHER_PIPELINE, "main"))).await, "unmapped");
    assert!(matches!(&e, OidcError::IdentityNotAllowed(m) if m.contains(OTHER_PIPELINE)), "{e:?}");
    // The mapped pipeline id under another organization.
    let mut claims = t.bk_claims(PIPELINE, "main");
    claims["organization_id"] = json!("0194b014-0000-0000-0000-000000000000");
    assert!(matches!(
        assert_403(t.verify(&sign(key(1), "bk-1", &claims)).await, "other org"),
        OidcError::IdentityNotAllowed(_)
    ));
    // Slugs alone (ids not requested with --claim) identify nothing.
    for missing in ["organization_id", "pipeline_id"] {
        let mut claims = t.bk_claims(PIPELINE, "main");
        claims.as_object_mut().unwrap().remove(missing);
        let e = assert_403(t.verify(&sign(key(1), "bk-1", &claims)).await, missing);
        assert!(matches!(&e, OidcError::IdentityNotAllowed(m) if m.contains(missing)), "{e:?}");
    }
    // An empty map refuses every Buildkite token.
    let t = ctx_with(|c| c.buildkite_pipelines.clear()).await;
    assert_403(t.verify(&sign(key(1), "bk-1", &t.bk_claims(PIPELINE, "main"))).await, "empty map");
}

#[tokio::test]
async fn buildkite_required_claim_mismatch_is_forbidden() {
    let t = ctx().await;
    let e = assert_403(t.verify(&sign(key(1), "bk-1", &t.bk_claims(PIPELINE, "feature"))).await, "branch");
    assert!(matches!(&e, OidcError::IdentityNotAllowed(m) if m.contains("build_branch")), "{e:?}");
    let mut claims = t.bk_claims(PIPELINE, "main");
    claims.as_object_mut().unwrap().remove("build_branch");
    assert_403(t.verify(&sign(key(1), "bk-1", &claims)).await, "claim missing");
    let mut claims = t.bk_claims(PIPELINE, "main");
    claims["build_branch"] = json!(["main"]);
    assert_403(t.verify(&sign(key(1), "bk-1", &claims)).await, "claim of another type");
    t.verify(&sign(key(1), "bk-1", &t.bk_claims(PIPELINE, "main"))).await.unwrap();
}

#[tokio::test]
async fn errors_never_echo_the_token() {
    let t = ctx().await;
    let good = t.gha_claims("acme/accel", "1");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("x");
    let mut expired = good.clone();
    expired["exp"] = json!(t.now() - 1000);
    let tokens = vec![
        sign(key(3), "gha-1", &good),
        sign(key(0), "gha-1", &wrong_aud),
        sign(key(0), "gha-1", &expired),
        sign(key(0), "nope", &good),
        raw_token(&json!({"alg": "none", "kid": "gha-1"}), &good, b""),
        encode(&header(Algorithm::HS256, Some("gha-1")), &good, &EncodingKey::from_secret(&key(0).pkcs1_der)).unwrap(),
        "not.a.jwt".to_owned(),
        sign(key(1), "bk-1", &t.bk_claims(OTHER_PIPELINE, "main")),
    ];
    for tok in tokens {
        let e = t.verify(&tok).await.unwrap_err();
        let msg = format!("{e} {e:?}");
        for part in tok.split('.').filter(|p| p.len() > 8) {
            assert!(!msg.contains(part), "error {msg:?} echoes part of the token");
        }
    }
    // Attacker-chosen header values are shortened and sanitised.
    let tok = raw_token(&json!({"alg": format!("x\n{}", "A".repeat(500)), "kid": "k"}), &good, b"");
    let msg = t.verify(&tok).await.unwrap_err().to_string();
    assert!(!msg.contains('\n') && msg.len() < 200, "{msg:?}");
}

#[tokio::test]
async fn configuration_is_checked() {
    let (gha, bk) = (LocalIssuer::start().await, LocalIssuer::start().await);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let fetcher = Arc::new(OctocrabJwksFetcher::new(Duration::from_secs(1)).unwrap());
    let check = |f: &dyn Fn(&mut OidcConfig)| {
        let mut c = default_config(&gha, &bk);
        f(&mut c);
        OidcVerifier::new(c, fetcher.clone(), clock.clone()).err()
    };
    assert_eq!(check(&|_| {}), None);
    assert_eq!(
        check(&|c| c.leeway = Duration::from_secs(61)),
        Some(OidcConfigError::LeewayTooLarge(Duration::from_secs(61)))
    );
    assert_eq!(check(&|c| c.audience = " ".into()), Some(OidcConfigError::EmptyAudience));
    assert!(matches!(
        check(&|c| c.github_actions = Some(TrustAnchor::new("http://issuer.example"))),
        Some(OidcConfigError::BadUrl { .. })
    ));
    assert!(matches!(check(&|c| c.buildkite = c.github_actions.clone()), Some(OidcConfigError::SameIssuer(_))));
    assert_eq!(
        check(&|c| {
            c.github_actions = None;
            c.buildkite = None
        }),
        Some(OidcConfigError::NoIssuer)
    );
    assert!(matches!(
        check(&|c| {
            c.buildkite_pipelines.insert(
                "no-slash".into(),
                BuildkitePipeline { repo: RepoFullName::parse("a/b").unwrap(), required_claims: BTreeMap::new() },
            );
        }),
        Some(OidcConfigError::BadPipelineKey(_))
    ));
    assert!(matches!(
        check(&|c| {
            c.buildkite_pipelines.insert(
                format!("{ORG}/{PIPELINE}").to_uppercase(),
                BuildkitePipeline { repo: RepoFullName::parse("a/b").unwrap(), required_claims: BTreeMap::new() },
            );
        }),
        Some(OidcConfigError::DuplicatePipelineKey(..))
    ));
    // The defaults are the real issuers and audience.
    let d = OidcConfig::default();
    assert_eq!(d.audience, "pytorch-cross-repo-ci-relay");
    assert_eq!(d.github_actions.unwrap().jwks_url, "https://token.actions.githubusercontent.com/.well-known/jwks");
    assert_eq!(d.buildkite.unwrap().jwks_url, "https://agent.buildkite.com/.well-known/jwks");
    assert_eq!(d.leeway, Duration::from_secs(60));
    assert_eq!(d.jwks_refetch_interval, Duration::from_secs(60));
}

// ---------------------------------------------------------------- JWKS outage, enterprise issuers, runs

/// While the issuer's JWKS cannot be fetched the verifier answers 503 with a
/// Retry-After of the seconds left in its back-off (1 s, doubling to 30 s),
/// fetches nothing during the back-off, and fetches again on the first
/// request after it: once the issuer is back, that request is verified.
#[tokio::test]
async fn jwks_outage_answers_503_with_retry_after_and_recovers_after_the_back_off() {
    let t = ctx().await;
    let tok = || sign(key(0), "gha-1", &t.gha_claims("acme/accel", "1"));
    let unavailable = |r: Result<crcr_core::oidc::CallerIdentity, OidcError>| {
        let e = r.expect_err("keys are unavailable");
        assert!(matches!(e, OidcError::JwksUnavailable { .. }), "{e:?}");
        assert_eq!(e.status(), 503);
        e.retry_after().expect("a 503 for unavailable keys carries Retry-After").as_secs()
    };
    t.gha.set_failing(true);
    assert_eq!(unavailable(t.verify(&tok()).await), 1, "first failure: 1 s");
    assert_eq!(t.gha.fetches(), 1);
    t.clock.advance(Duration::from_millis(400));
    assert_eq!(unavailable(t.verify(&tok()).await), 1, "0.6 s left, rounded up");
    assert_eq!(t.gha.fetches(), 1, "no fetch during the back-off");
    t.clock.advance(Duration::from_millis(600));
    assert_eq!(unavailable(t.verify(&tok()).await), 2, "second failure: 2 s");
    assert_eq!(t.gha.fetches(), 2);
    let mut expected = 2;
    for want in [4, 8, 16, 30, 30] {
        t.clock.advance(Duration::from_secs(expected));
        assert_eq!(unavailable(t.verify(&tok()).await), want, "doubling, at most 30 s");
        expected = want;
    }
    assert_eq!(t.gha.fetches(), 7);
    // The issuer recovers: nothing is fetched before the back-off ends ...
    t.gha.set_failing(false);
    t.clock.advance(Duration::from_secs(29));
    assert_eq!(unavailable(t.verify(&tok()).await), 1);
    assert_eq!(t.gha.fetches(), 7);
    // ... and the first request after it is verified.
    t.clock.advance(Duration::from_secs(1));
    t.verify(&tok()).await.unwrap();
    assert_eq!(t.gha.fetches(), 8);
    // A success resets the back-off: the next outage starts at 1 s again
    // (an unknown kid's refetch fails).
    t.gha.set_failing(true);
    t.clock.advance(Duration::from_secs(60));
    let e = t.verify(&sign(key(2), "gha-new", &t.gha_claims("acme/accel", "1"))).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{e:?}");
    // Known keys keep working meanwhile.
    t.verify(&tok()).await.unwrap();
    assert_eq!(t.gha.fetches(), 9);
}

/// An enterprise with a customised issuer
/// (`https://token.actions.githubusercontent.com/<enterprise slug>`) is
/// trusted when listed, with its keys from `<issuer>/.well-known/jwks`, and
/// matched exactly: the same host under another slug, or with a trailing
/// slash, is not trusted.
#[tokio::test]
async fn a_listed_enterprise_issuer_is_trusted_exactly() {
    use crcr_standin::issuer::Issuer;
    let enterprise = Issuer::start_at("/acme-enterprise").await;
    assert!(enterprise.url.ends_with("/acme-enterprise"), "{}", enterprise.url);
    let t = ctx_with(|c| c.github_enterprise_issuers = vec![TrustAnchor::new(&enterprise.url)]).await;
    let id = t.verify(&enterprise.token("acme/accel", "7")).await.unwrap();
    assert_eq!((id.repo.as_str(), id.issuer), ("acme/accel", IssuerKind::GitHubActions));
    assert_eq!(id.claims["iss"], enterprise.url.as_str());
    assert_eq!(enterprise.jwks_requests(), 1, "keys fetched from <issuer>/.well-known/jwks");
    // The public issuer still works alongside.
    t.verify(&sign(key(0), "gha-1", &t.gha_claims("acme/other", "8"))).await.unwrap();
    // Another enterprise under the same host is not trusted; neither is a
    // spelling of the listed one that is not byte for byte the same.
    let other = Issuer::start_at("/other-enterprise").await;
    let e = assert_401(t.verify(&other.token("acme/accel", "7")).await, "unlisted enterprise");
    assert!(matches!(e, OidcError::UntrustedIssuer { .. }), "{e:?}");
    assert_eq!(other.jwks_requests(), 0, "nothing fetched for an untrusted issuer");
    let mut claims = t.gha_claims("acme/accel", "7");
    claims["iss"] = json!(format!("{}/", enterprise.url));
    let e = assert_401(t.verify(&sign(key(0), "gha-1", &claims)).await, "trailing slash");
    assert!(matches!(e, OidcError::UntrustedIssuer { .. }), "{e:?}");
    // The same issuer listed twice is a configuration error.
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let fetcher = Arc::new(OctocrabJwksFetcher::new(Duration::from_secs(1)).unwrap());
    let mut c = default_config(&t.gha, &t.bk);
    c.github_enterprise_issuers = vec![TrustAnchor::new(&t.gha.url)];
    assert!(matches!(OidcVerifier::new(c, fetcher, clock).err(), Some(OidcConfigError::SameIssuer(_))));
}

/// Without a `ref` claim the run's ref is read from the default `sub`
/// (`repo:<owner>/<repo>:ref:<ref>`); a token with neither is refused 403
/// naming `ref`. Buildkite tokens are not subject to the GitHub run rule.
#[tokio::test]
async fn run_rule_reads_the_ref_from_sub_when_the_ref_claim_is_absent() {
    let t = ctx().await;
    let identity = |claims: &Value| {
        let tok = sign(key(0), "gha-1", claims);
        let v = t.v.clone();
        async move { v.verify(&tok, &body_digest(b"{}")).await.unwrap() }
    };
    let mut claims = t.gha_claims("acme/accel", "1");
    claims["event_name"] = json!("repository_dispatch");
    claims.as_object_mut().unwrap().remove("ref");
    t.v.check_run(&identity(&claims).await, false).unwrap();
    claims["sub"] = json!("repo:acme/accel:ref:refs/heads/feature");
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let e = t.v.check_run(&identity(&claims).await, false).unwrap_err();
    assert_eq!(e.status(), 403);
    assert!(e.to_string().contains("ref \"refs/heads/feature\""), "{e}");
    claims["sub"] = json!("repo:acme/accel:environment:prod");
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let e = t.v.check_run(&identity(&claims).await, false).unwrap_err();
    assert!(e.to_string().contains("no ref claim"), "{e}");
    // No event_name at all (gha_claims has none).
    let e = t.v.check_run(&identity(&t.gha_claims("acme/accel", "1")).await, false).unwrap_err();
    assert!(e.to_string().contains("event_name"), "{e}");
    let bk = t.verify(&sign(key(1), "bk-1", &t.bk_claims(PIPELINE, "main"))).await.unwrap();
    t.v.check_run(&bk, false).unwrap();
}
