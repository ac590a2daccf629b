//! Callback handling latency: one `POST /github/callback` through the
//! relay's router on the embedded default (SQLite in a temp dir), from the
//! request to the 202: RS256 verification against the cached JWKS of a local
//! issuer (real 2048-bit RSA key), `jti` replay guard and per-repository rate
//! limit (SQLite writes), allowlist level, schema, the request-time lifecycle
//! check (dispatch record + job state reads) and the durable enqueue on the
//! reconcile queue. Tokens are minted outside the measured time.
//!
//! Run: `cargo bench -p crcr-bench --bench callback`.

use std::time::Duration;

use axum::body::Body;
use crcr_core::allowlist::AllowlistSource;
use crcr_core::config::GitHubAppConfig;
use crcr_core::config::{CallbackConfig, EmbeddedConfig, RelayConfig};
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::oidc::TrustAnchor;
use crcr_core::ports::{AttemptOutcome, DispatchMeta, DispatchStore};
use crcr_core::signature::WebhookSecret;
use crcr_embedded::EmbeddedRelay;
use crcr_standin::issuer::Issuer;
use crcr_standin::{StandIn, StandInOptions};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Request;
use tower::ServiceExt;

const REPO: &str = "org2/two";

fn callback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("crcr-bench-callback-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (relay, issuer, _gh) = rt.block_on(async {
        let gh = StandIn::start(StandInOptions::default()).await.unwrap();
        let issuer = Issuer::start().await;
        std::fs::write(dir.join("allowlist.yml"), format!("L2:\n  - {REPO}\n")).unwrap();
        let mut callbacks = CallbackConfig { rate_per_min: u32::MAX, ..Default::default() };
        callbacks.oidc.github_actions = Some(TrustAnchor::new(issuer.url.clone()));
        callbacks.oidc.buildkite = None;
        let cfg = RelayConfig {
            upstream: RepoFullName::parse("Codertocat/Hello-World").unwrap(),
            webhook_secret: WebhookSecret::new("bench"),
            github: GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
            allowlist: AllowlistSource::File(dir.join("allowlist.yml")),
            allowlist_ttl: Duration::from_secs(3600),
            max_body_bytes: crcr_http::ingest::DEFAULT_MAX_BODY_BYTES,
            dispatcher: Default::default(),
            callbacks,
        };
        let emb = EmbeddedConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.join("crcr.sqlite"),
            workers: 1,
            visibility_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            server: Default::default(),
        };
        (EmbeddedRelay::build(&cfg, &emb).unwrap(), issuer, gh)
    });
    // The dispatch the callbacks report on.
    let delivery = DeliveryId::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").unwrap();
    let repo = RepoFullName::parse(REPO).unwrap();
    let meta = DispatchMeta::new("push", Level::L2);
    rt.block_on(async {
        let now = chrono::Utc::now().timestamp_millis();
        relay.store.claim(&delivery, &repo, &meta, now, Duration::from_secs(60)).await.unwrap();
        relay
            .store
            .finish(&delivery, &repo, 1, &AttemptOutcome::Dispatched { payload_trimmed: false }, now)
            .await
            .unwrap();
    });
    let body = serde_json::to_vec(&serde_json::json!({
        "event_type": "push", "delivery_id": delivery.as_str(), "payload": {"ref": "refs/heads/main"},
        "workflow": {"schema_version": "1", "status": "in_progress", "conclusion": null, "name": "CI",
            "url": "https://github.com/org2/two/actions/runs/123", "run_id": "123", "run_attempt": "1",
            "job_name": "build", "check_run_id": "456", "started_at": null, "completed_at": null}
    }))
    .unwrap();
    let request = |token: String| {
        Request::post("/github/callback")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap()
    };
    // Warm the JWKS cache; check the answer is the 202 being measured.
    let status = rt.block_on(relay.router.clone().oneshot(request(issuer.token(REPO, "22")))).unwrap().status();
    assert_eq!(status, 202);

    let mut g = c.benchmark_group("callback");
    g.bench_function("POST /github/callback in_progress -> 202 (SQLite)", |b| {
        b.iter_batched(
            || request(issuer.token(REPO, "22")),
            |req| {
                let res = rt.block_on(relay.router.clone().oneshot(req)).unwrap();
                assert_eq!(res.status(), 202);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, callback);
criterion_main!(benches);
