//! Stand-ins for `crcr demo` and the tests: a local OIDC issuer with a real RSA key and a JWKS endpoint
//! (`<url>/.well-known/jwks`), minting GitHub Actions- and Buildkite-shaped tokens. The
//! local HUD is [`super::hud`].

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use octocrab::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A local OIDC issuer (GitHub Actions-shaped tokens, RS256, key id `k1`).
pub struct Issuer {
    pub url: String,
    key: EncodingKey,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

impl Issuer {
    pub async fn start() -> Issuer {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
        let key = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let c: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)}]});
        let app = Router::new().route("/.well-known/jwks", get(move || async move { Json(jwks) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { url, key }
    }

    /// A GitHub Actions-shaped token for `repo`, valid for 5 minutes.
    pub fn token(&self, repo: &str, repo_id: &str) -> String {
        let now = chrono_now();
        let claims = json!({"iss": self.url, "aud": "pytorch-cross-repo-ci-relay", "repository": repo,
            "repository_id": repo_id, "sub": format!("repo:{repo}:ref:refs/heads/main"),
            "iat": now, "nbf": now, "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string()});
        self.sign(&claims)
    }

    /// A Buildkite-shaped token (as `buildkite-agent oidc request-token
    /// --audience pytorch-cross-repo-ci-relay --claim organization_id,pipeline_id`
    /// mints it, "OIDC with Buildkite") for the pipeline
    /// `organization_id/pipeline_id` building `build_branch`, valid for 5 minutes.
    pub fn buildkite_token(&self, organization_id: &str, pipeline_id: &str, build_branch: &str) -> String {
        let now = chrono_now();
        let claims = json!({"iss": self.url, "aud": "pytorch-cross-repo-ci-relay",
            "sub": format!("organization:acme:pipeline:ci:ref:refs/heads/{build_branch}:commit:b5ffe3ae:step:"),
            "iat": now, "nbf": now, "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string(),
            "organization_slug": "acme", "pipeline_slug": "ci", "organization_id": organization_id,
            "pipeline_id": pipeline_id, "build_number": 5, "build_branch": build_branch,
            "build_commit": "b5ffe3ae", "step_key": null, "job_id": uuid::Uuid::new_v4().to_string()});
        self.sign(&claims)
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("k1".into());
        encode(&h, claims, &self.key).unwrap()
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The local HUD moved to [`super::hud`] (torchci's rules); kept here for
/// the callers that import it with the issuer.
pub use super::hud::Hud;
