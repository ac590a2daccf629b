//! A callback's claims and conclusions, after any token and body a hostile
//! client can send: arbitrary claim JSON through the issuer match (exact
//! `iss`, GitHub Actions and an enterprise issuer trusted) and the GitHub run
//! rule (`event_name`, `ref`, `sub`: `oidc::GitHubRunPolicy`), and arbitrary
//! `workflow.status` / `workflow.conclusion` through `callback::parse`.
//! Must never panic; what is accepted must obey the rules. Input: claim JSON,
//! status, conclusion, separated by 0xFF bytes.
#![no_main]
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use crcr_core::callback::{self, CONCLUSIONS};
use crcr_core::domain::RepoFullName;
use crcr_core::oidc::{
    body_digest, GitHubRunPolicy, Jwks, JwksFetchError, JwksFetcher, OidcConfig, OidcError, OidcVerifier, TrustAnchor,
};
use crcr_core::ports::ManualClock;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const ENTERPRISE: &str = "https://token.actions.githubusercontent.com/acme";

/// An issuer whose JWKS is empty: a trusted `iss` reaches the key lookup
/// (and is refused there), an untrusted one never does.
struct NoKeys;

#[async_trait]
impl JwksFetcher for NoKeys {
    async fn fetch(&self, _url: &str) -> Result<Jwks, JwksFetchError> {
        Ok(Jwks::default())
    }
}

/// Polls a future that never waits on I/O (the fetcher above answers at
/// once; the in-memory stores and the uncontended key-cache lock are ready).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn verifier() -> &'static OidcVerifier {
    static V: std::sync::OnceLock<OidcVerifier> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let config =
            OidcConfig { github_enterprise_issuers: vec![TrustAnchor::new(ENTERPRISE)], ..OidcConfig::default() };
        OidcVerifier::new(config, Arc::new(NoKeys), Arc::new(ManualClock::new(1_700_000_000_000))).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xFF);
    let (claims_raw, status, conclusion) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());

    if let Ok(claims) = serde_json::from_slice::<Value>(claims_raw) {
        // The run rule, on any claims, for a repository with a mapped branch and one without.
        let mut policy = GitHubRunPolicy::default();
        policy.branches.insert("acme/mapped".into(), "refs/heads/trunk".into());
        for repo in ["acme/mapped", "Acme/Other"] {
            let repo = RepoFullName::parse(repo).unwrap();
            for scheduled in [false, true] {
                match policy.check(&repo, &claims, scheduled) {
                    Ok(()) => {
                        let allowed = if scheduled { &policy.scheduled_events } else { &policy.events };
                        let event = claims["event_name"].as_str().expect("accepted without event_name");
                        assert!(allowed.contains(event), "accepted event_name {event:?}");
                    }
                    Err(e) => assert_eq!(e.status(), 403, "{e}"),
                }
            }
        }
        // The issuer match, on an unsigned token carrying these claims.
        if claims.is_object() {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
            let token = format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()));
            match ready(verifier().verify(&token, &body_digest(b"{}"))) {
                Ok(id) => panic!("an unsigned token was accepted: {id:?}"),
                Err(OidcError::UnknownKid { issuer, .. }) => {
                    assert!(issuer == GITHUB || issuer == ENTERPRISE, "keys looked up for {issuer:?}");
                    assert_eq!(claims["iss"].as_str(), Some(issuer.as_str()), "iss matched inexactly");
                }
                Err(_) => {}
            }
        }
    }

    // Arbitrary status and conclusion through the schema.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let body = json!({"event_type": "push", "delivery_id": "d-1", "payload": {},
        "workflow": {"schema_version": "1", "status": text(status), "conclusion": text(conclusion),
            "name": "CI", "run_id": 1, "run_attempt": 1, "job_name": "b", "check_run_id": "1-1"}});
    if let Ok((cb, _)) = callback::parse(&serde_json::to_vec(&body).unwrap()) {
        let c = cb.conclusion.as_deref().expect("completed with a conclusion");
        assert!(CONCLUSIONS.contains(&c) && c != "stale", "accepted conclusion {c:?}");
    }
    let _ = callback::parse(data);
});
