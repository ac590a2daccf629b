//! A broken allowlist stops the relay at start-up (issue 12, item 4): the
//! embedded relay (`crcr serve`) and the Lambda functions' init
//! (`crcr_ingest::ingest_init`, `crcr_aws::wiring::dispatcher_init`) refuse to
//! start with an error naming the file and the line or entry, instead of
//! answering healthy with no allowlist. (The `crcr serve` binary itself:
//! cli/tests/startup.rs.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crcr_aws::wiring::{dispatcher_init, WiringError};
use crcr_clients::github::GitHubAppConfig;
use crcr_core::allowlist::AllowlistSource;
use crcr_core::config::{EmbeddedConfig, Env, RelayConfig};
use crcr_core::domain::RepoFullName;
use crcr_core::signature::WebhookSecret;
use crcr_embedded::{EmbeddedError, EmbeddedRelay};
use crcr_ingest::ingest_init;
use crcr_standin::{StandIn, StandInOptions};
use crcr_tests::{test_settings, uuid, UPSTREAM, VISIBILITY_TIMEOUT};

/// A duplicate: the parser names both entries.
const DUPLICATE: &str = "L1:\n  - org/a\nL2:\n  - Org/A\n";
/// Not YAML: the parser names the line.
const UNCLOSED: &str = "L1: [org/a\nL2: [org/b]\n";

fn temp_allowlist(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crcr-startup-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("allowlist.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn relay_config(gh: &StandIn, allowlist: &Path) -> RelayConfig {
    RelayConfig {
        upstream: RepoFullName::parse(UPSTREAM).unwrap(),
        webhook_secret: WebhookSecret::new("s"),
        github: GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
        allowlist: AllowlistSource::File(allowlist.to_owned()),
        allowlist_ttl: Duration::from_secs(300),
        max_body_bytes: crcr_http::ingest::DEFAULT_MAX_BODY_BYTES,
        dispatcher: test_settings(),
        callbacks: Default::default(),
    }
}

/// Builds and runs the embedded relay on `allowlist`; `run` must return
/// (with an error) by itself, nothing served.
async fn run_embedded(gh: &StandIn, allowlist: &Path) -> Result<(), EmbeddedError> {
    let cfg = relay_config(gh, allowlist);
    let emb = EmbeddedConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: allowlist.with_file_name("crcr.sqlite"),
        workers: 2,
        visibility_timeout: VISIBILITY_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        server: Default::default(),
    };
    let relay = EmbeddedRelay::build(&cfg, &emb).expect("relay builds");
    let listener = tokio::net::TcpListener::bind(emb.listen).await.unwrap();
    // Never signalled: a relay that starts would run until the timeout.
    let run = relay.run(listener, std::future::pending());
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("a relay with a broken allowlist must not start")
}

#[tokio::test]
async fn embedded_relay_refuses_to_start_with_a_broken_allowlist_naming_file_and_entry() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let path = temp_allowlist(DUPLICATE);
    let err = run_embedded(&gh, &path).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EmbeddedError::Allowlist(_)), "{err:?}");
    assert!(text.contains(&path.display().to_string()), "names the file: {text}");
    assert!(text.contains("lists Org/A twice: at L1[0] and at L2[0]"), "names the entries: {text}");

    let path = temp_allowlist(UNCLOSED);
    let text = run_embedded(&gh, &path).await.unwrap_err().to_string();
    assert!(text.contains(&path.display().to_string()), "names the file: {text}");
    assert!(text.contains("not valid YAML") && text.contains("line 2"), "names the line: {text}");

    // A good allowlist starts (and is stopped by its shutdown signal).
    let path = temp_allowlist("L1:\n  - org/a\n");
    let cfg = relay_config(&gh, &path);
    let emb = EmbeddedConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: path.with_file_name("crcr.sqlite"),
        workers: 2,
        visibility_timeout: VISIBILITY_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        server: Default::default(),
    };
    let relay = EmbeddedRelay::build(&cfg, &emb).unwrap();
    let listener = tokio::net::TcpListener::bind(emb.listen).await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(listener, async move {
        let _ = rx.await;
    }));
    let mut healthy = false;
    for _ in 0..200 {
        if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(healthy, "a relay with a good allowlist answers /healthz");
    tx.send(()).unwrap();
    task.await.unwrap().expect("stops cleanly");
}

/// The Lambda functions' environment (no AWS call is made at init: the
/// queue and table names need not exist).
fn lambda_env(gh: &StandIn, allowlist: &Path) -> Env<'static> {
    let vars: HashMap<&str, String> = HashMap::from([
        ("CRCR_UPSTREAM_REPO", UPSTREAM.to_owned()),
        ("CRCR_WEBHOOK_SECRET", "s".to_owned()),
        ("CRCR_GITHUB_APP_ID", gh.app_id().to_string()),
        ("CRCR_GITHUB_APP_PRIVATE_KEY", gh.private_key_pem()),
        ("CRCR_GITHUB_API_URL", gh.base_url()),
        ("CRCR_ALLOWLIST_FILE", allowlist.display().to_string()),
        ("CRCR_DISPATCH_QUEUE_URL", "http://127.0.0.1:9/000000000000/dispatch".to_owned()),
        ("CRCR_DISPATCH_DLQ_URL", "http://127.0.0.1:9/000000000000/dispatch-dlq".to_owned()),
        ("CRCR_RECONCILE_QUEUE_URL", "http://127.0.0.1:9/000000000000/reconcile".to_owned()),
        ("CRCR_DISPATCH_TABLE", "dispatches".to_owned()),
        ("CRCR_PAYLOAD_TABLE", "payloads".to_owned()),
        ("CRCR_JOBS_TABLE", "jobs".to_owned()),
        ("CRCR_KV_TABLE", "kv".to_owned()),
    ]);
    Env::new(move |k| vars.get(k).cloned())
}

#[tokio::test]
async fn lambda_init_refuses_a_broken_allowlist_naming_file_and_entry() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let sdk = crcr_aws::sdk_config(Some("http://127.0.0.1:9")).await;
    let path = temp_allowlist(DUPLICATE);
    let env = lambda_env(&gh, &path);
    let check = |err: WiringError, function: &str| {
        let text = err.to_string();
        assert!(matches!(err, WiringError::Allowlist(_)), "{function}: {err:?}");
        assert!(text.contains(&path.display().to_string()), "{function} names the file: {text}");
        assert!(text.contains("at L1[0] and at L2[0]"), "{function} names the entries: {text}");
    };
    check(ingest_init(&env, &sdk).await.expect_err("ingest init fails"), "ingest");
    let Err(err) = dispatcher_init(&env, &sdk).await else { panic!("dispatcher init fails") };
    check(err, "dispatcher");

    let good = temp_allowlist("L1:\n  - org/a\n");
    let env = lambda_env(&gh, &good);
    let router = ingest_init(&env, &sdk).await.expect("ingest init with a good allowlist");
    let healthz = http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap();
    assert_eq!(tower::ServiceExt::oneshot(router, healthz).await.unwrap().status(), 200);
    dispatcher_init(&env, &sdk).await.expect("dispatcher init with a good allowlist");
}

/// GitHub unreachable at start-up is not a broken allowlist: the functions
/// start (ingest must keep taking webhooks), the allowlist is fetched on
/// first use.
#[tokio::test]
async fn lambda_init_starts_when_github_cannot_be_asked_for_the_allowlist() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let sdk = crcr_aws::sdk_config(Some("http://127.0.0.1:9")).await;
    let base = lambda_env(&gh, Path::new("unused.yml"));
    let env = Env::new(move |k| match k {
        "CRCR_ALLOWLIST_FILE" => None,
        "CRCR_ALLOWLIST_URL" => Some("https://github.com/org/config/blob/main/allowlist.yml".to_owned()),
        // Nothing listens there: "GitHub unreachable".
        "CRCR_GITHUB_API_URL" => Some("http://127.0.0.1:9".to_owned()),
        other => base.opt(other),
    });
    let started = std::time::Instant::now();
    let _router = ingest_init(&env, &sdk).await.expect("ingest starts without GitHub");
    dispatcher_init(&env, &sdk).await.expect("dispatcher starts without GitHub");
    assert!(started.elapsed() < Duration::from_secs(12), "within the Init phase's 10 s each");
}
