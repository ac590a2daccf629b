//! Stand-ins for `crcr demo` and the tests: a local OIDC issuer with a real RSA key and a JWKS endpoint
//! (`<url>/.well-known/jwks`), minting GitHub Actions- and Buildkite-shaped tokens. The
//! local HUD is [`super::hud`].
//!
//! The issuer may serve below a path (an enterprise's customised GitHub
//! issuer is `https://token.actions.githubusercontent.com/<enterprise slug>`,
//! with its keys at `<issuer>/.well-known/jwks`: [`Issuer::start_at`]) and
//! can be put in an outage ([`Issuer::set_outage`]: the JWKS answers 503).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use octocrab::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A local OIDC issuer (GitHub Actions-shaped tokens, RS256, key id `k1`).
pub struct Issuer {
    /// The issuer (`iss`) URL; its JWKS is at `<url>/.well-known/jwks`.
    pub url: String,
    key: EncodingKey,
    outage: Arc<AtomicBool>,
    jwks_requests: Arc<AtomicUsize>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

impl Issuer {
    /// An issuer at `http://127.0.0.1:<port>`.
    pub async fn start() -> Issuer {
        Self::start_at("").await
    }

    /// An issuer at `http://127.0.0.1:<port><path>` (`path` empty or starting
    /// with `/`, e.g. `/acme-enterprise`), JWKS at `<url>/.well-known/jwks`.
    pub async fn start_at(path: &str) -> Issuer {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
        let key = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let c: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)}]});
        let (outage, jwks_requests) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (down, count) = (outage.clone(), jwks_requests.clone());
        let serve_jwks = move || {
            let (down, count, jwks) = (down.clone(), count.clone(), jwks.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                Json(jwks).into_response()
            }
        };
        let path = path.trim_end_matches('/');
        let app = Router::new().route(&format!("{path}/.well-known/jwks"), get(serve_jwks));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { url, key, outage, jwks_requests }
    }

    /// While `down`, the JWKS endpoint answers 503 (an issuer outage).
    pub fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }

    /// JWKS requests answered so far (outage or not).
    pub fn jwks_requests(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }

    /// A GitHub Actions-shaped token for `repo` from a `repository_dispatch`
    /// run on `refs/heads/main` (what the relay's dispatches start), valid
    /// for 5 minutes.
    pub fn token(&self, repo: &str, repo_id: &str) -> String {
        self.run_token(repo, repo_id, "repository_dispatch", "refs/heads/main")
    }

    /// A GitHub Actions-shaped token for `repo` from a run triggered by
    /// `event_name` on `git_ref` (e.g. `pull_request` on
    /// `refs/pull/7/merge`), with the claims GitHub sets ("OpenID Connect
    /// reference": `event_name`, `ref`, `ref_type`, default `sub`
    /// `repo:<repo>:ref:<ref>`, or `repo:<repo>:pull_request` for pull
    /// requests), valid for 5 minutes.
    pub fn run_token(&self, repo: &str, repo_id: &str, event_name: &str, git_ref: &str) -> String {
        let now = chrono_now();
        let sub = if event_name.starts_with("pull_request") {
            format!("repo:{repo}:pull_request")
        } else {
            format!("repo:{repo}:ref:{git_ref}")
        };
        let ref_type = if git_ref.starts_with("refs/tags/") { "tag" } else { "branch" };
        let claims = json!({"iss": self.url, "aud": "pytorch-cross-repo-ci-relay", "repository": repo,
            "repository_id": repo_id, "sub": sub, "event_name": event_name, "ref": git_ref, "ref_type": ref_type,
            "repository_owner": repo.split('/').next().unwrap_or_default(), "run_id": "123", "run_attempt": "1",
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
