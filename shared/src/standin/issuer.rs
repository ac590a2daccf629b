//! Stand-ins for `crcr demo` and the tests: a local OIDC issuer with a real RSA key and a JWKS endpoint
//! (`<url>/.well-known/jwks`), minting GitHub Actions-shaped tokens; and a
//! local HUD that records what it receives and can fail on demand.

use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
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
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("k1".into());
        encode(&h, &claims, &self.key).unwrap()
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A local HUD: records every POST to `/crcr/results` (with its bot key
/// header) and answers the queued statuses first, then 200.
#[derive(Clone, Default)]
pub struct Hud {
    pub url: String,
    received: Arc<Mutex<Vec<(u16, String, Value)>>>,
    answers: Arc<Mutex<Vec<u16>>>,
}

impl Hud {
    pub async fn start() -> Hud {
        let mut hud = Hud::default();
        let state = hud.clone();
        let app = Router::new()
            .route(
                "/crcr/results",
                post(|State(h): State<Hud>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    let status = {
                        let mut a = h.answers.lock().unwrap();
                        if a.is_empty() {
                            200
                        } else {
                            a.remove(0)
                        }
                    };
                    let key = headers.get("x-hud-internal-bot").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    h.received.lock().unwrap().push((status, key, body));
                    (StatusCode::from_u16(status).unwrap(), Json(json!({"status": status})))
                }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hud.url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hud
    }
    /// Answer the next requests with these statuses.
    pub fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend_from_slice(statuses);
    }
    /// Every request: (status answered, bot key sent, body).
    pub fn received(&self) -> Vec<(u16, String, Value)> {
        self.received.lock().unwrap().clone()
    }
}
