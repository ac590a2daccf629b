//! Metrics and structured logs of the embedded relay (`crcr serve`), end to
//! end: signed real fixtures → ingest → SQLite queue → dispatcher → GitHub
//! stand-in, then `GET /metrics` (Prometheus text) must show exactly the
//! counters the scenario produced, and the JSON log lines of the delivery's
//! processing must carry its delivery id, event, target repository and
//! attempt, and no secret.
//!
//! One test in this binary: the metrics recorder and the log subscriber are
//! per process, so nothing else may record into them.

use std::collections::BTreeMap;
use std::time::Duration;

use crcr_core::ports::DispatchStatus;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_telemetry::{init_logs, LogFormat};
use crcr_tests::*;
use serde_json::Value;

const SECRET: &str = "metrics-test-webhook-s3cr3t";
const ALLOWLIST: &str = "L1:\n  - org/flaky\n  - org/gone\n";

/// One scrape: series (`name{k="v",...}` with labels sorted) → value, and
/// the `# TYPE` of each metric name.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
            let key = match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("closing brace");
                    let mut pairs: Vec<&str> = labels.split(',').filter(|p| !p.is_empty()).collect();
                    pairs.sort();
                    format!("{name}{{{}}}", pairs.join(","))
                }
            };
            samples.insert(key, value.parse().unwrap_or_else(|_| panic!("value of {line:?}")));
        }
        Scrape { samples, types }
    }

    /// Every sample of the metrics whose `# TYPE` is `kind`.
    fn of_type(&self, kind: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let name = k.split('{').next().unwrap();
                self.types.get(name).is_some_and(|t| t == kind)
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

async fn scrape(relay: &Relay) -> (String, Scrape) {
    let res = reqwest::get(format!("{}/metrics", relay.url)).await.expect("relay reachable");
    assert_eq!(res.status().as_u16(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = res.text().await.unwrap();
    let parsed = Scrape::parse(&text);
    (text, parsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_json_logs_report_what_a_scenario_did() {
    let logs = LogLines::default();
    assert!(init_logs("info", LogFormat::Json, logs.clone()), "the only subscriber of this process");

    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.set_rate_limit(100);
    gh.install("org/flaky"); // org/gone: not installed, its installation lookup answers 404
    gh.inject("org/flaky", Fault::ServerError(502));
    gh.inject("org/flaky", Fault::ServerError(502));
    let relay = Relay::start(&gh, ALLOWLIST, test_settings(), None, SECRET).await;

    let delivery = uuid();
    let opened = fixture("pull_request.opened");
    assert_eq!(relay.post("pull_request", &delivery, &opened, false).await.0, 202);
    assert_eq!(relay.post("pull_request", &uuid(), &opened, true).await.0, 401, "forged");
    let records = relay.settled(&delivery, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0].target.as_str(), records[0].status), ("org/flaky", DispatchStatus::Dispatched));
    assert_eq!(dispatched_to(&gh, &delivery), ["org/flaky"]);
    assert_eq!(gh.count("POST", "/repos/org/flaky/dispatches"), 3, "502, 502, 204");

    let (text, m) = scrape(&relay).await;
    let expected_counters: BTreeMap<String, f64> = [
        (r#"Webhooks{event="pull_request",outcome="enqueued"}"#, 1.0),
        (r#"Webhooks{event="unknown",outcome="bad_signature"}"#, 1.0),
        // Verified deliveries by the secret that signed them (one configured: index 0).
        (r#"WebhookSecretMatches{secret="0"}"#, 1.0),
        (r#"Dispatches{outcome="dispatched"}"#, 1.0),
        (r#"Dispatches{outcome="not_installed"}"#, 1.0),
        ("DispatchRetries", 2.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(m.of_type("counter"), expected_counters, "exactly the counters of the scenario:\n{text}");
    for outcome in ["enqueued", "bad_signature"] {
        let count = format!(r#"IngestLatency_count{{outcome="{outcome}"}}"#);
        assert_eq!(m.samples.get(&count), Some(&1.0), "{count}:\n{text}");
        let sum = m.samples[&format!(r#"IngestLatency_sum{{outcome="{outcome}"}}"#)];
        assert!((0.0..10.0).contains(&sum), "latency in seconds: {sum}");
        let last = m.samples[&format!(r#"IngestLatency_bucket{{le="+Inf",outcome="{outcome}"}}"#)];
        assert_eq!(last, 1.0, "{text}");
    }
    assert_eq!(m.types.get("IngestLatency").map(String::as_str), Some("histogram"));
    // The stand-in answers every call with x-ratelimit-* (limit 100 per
    // identity): org/flaky's installation made the three dispatches, the App
    // (its JWT) the installation lookups and the token mint. The unlabelled
    // gauge is the identity with the least left.
    let flaky = gh.requests().iter().find_map(|r| r.installation_id).expect("calls with org/flaky's token");
    let app_calls = gh.requests().iter().filter(|r| r.auth == crcr_standin::AuthKind::AppJwt).count() as f64;
    let by_identity = |who: &str| m.samples.get(&format!(r#"GitHubRateLimitLeft{{identity="{who}"}}"#)).copied();
    assert_eq!(by_identity(&format!("installation:{flaky}")), Some(97.0), "{text}");
    assert_eq!(by_identity("app"), Some(100.0 - app_calls), "{text}");
    assert_eq!(m.samples.get("GitHubRateLimitRemaining"), Some(&(97.0f64).min(100.0 - app_calls)), "{text}");
    // The dispatcher read org/flaky's breaker: closed.
    assert_eq!(m.samples.get(r#"TargetBreakerOpen{target="org/flaky"}"#), Some(&0.0), "{text}");
    for absent in ["DlqSends", "CallbackRejections", "CallbacksAccepted", "HudSync"] {
        assert!(!text.contains(absent), "{absent} was never recorded:\n{text}");
    }
    // The sweep reports the HUD outbox after each pass: empty.
    relay.sweeps_pass(2).await;
    let (text, m) = scrape(&relay).await;
    assert_eq!(m.samples.get("HudOutboxBacklog"), Some(&0.0), "{text}");
    assert_eq!(m.samples.get("HudOutboxLag"), Some(&0.0), "{text}");
    assert_eq!(m.of_type("counter"), expected_counters, "nothing new was counted:\n{text}");

    // An upstream event for the reconciler: a suite re-run of a commit the
    // relay has no check run on is applied as "ignored".
    let suite = fixture("check_suite.rerequested");
    assert_eq!(relay.post("check_suite", &uuid(), &suite, false).await.0, 202);
    let key = r#"UpstreamEvents{event="check_suite.rerequested",outcome="ignored"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let m = loop {
        let (text, m) = scrape(&relay).await;
        if m.samples.contains_key(key) {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{key} never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut expected_counters = expected_counters;
    expected_counters.insert(key.to_owned(), 1.0);
    expected_counters.insert(r#"Webhooks{event="check_suite",outcome="enqueued"}"#.to_owned(), 1.0);
    expected_counters.insert(r#"WebhookSecretMatches{secret="0"}"#.to_owned(), 2.0);
    assert_eq!(m.of_type("counter"), expected_counters);

    // JSON logs: the lines of the delivery's processing carry its fields.
    let lines = logs.json();
    let of_delivery: Vec<&Value> = lines
        .iter()
        .filter(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["delivery_id"] == delivery.as_str())))
        .collect();
    assert!(of_delivery.iter().all(|l| l["span"]["name"] != "target" || l["span"]["repo"] == "org/flaky"));
    for l in of_delivery.iter().filter(|l| l["span"]["name"] == "target") {
        assert_eq!(l["span"]["attempt"], 1, "every line under a target span has its attempt: {l}");
    }
    let dispatch_lines: Vec<&Value> = of_delivery
        .iter()
        .copied()
        .filter(|l| l["span"]["name"] == "target" && l["target"] == "crcr_core::dispatch")
        .collect();
    let messages: Vec<&str> = dispatch_lines.iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        ["retrying repository_dispatch", "retrying repository_dispatch", "dispatched"],
        "{}",
        logs.text()
    );
    for l in &dispatch_lines {
        let spans = l["spans"].as_array().unwrap();
        let field = |name: &str| spans.iter().find_map(|s| s.get(name).cloned());
        assert_eq!(field("delivery_id"), Some(Value::from(delivery.as_str())), "{l}");
        assert_eq!(field("event"), Some(Value::from("pull_request")), "{l}");
        assert_eq!(field("repo"), Some(Value::from("org/flaky")), "{l}");
        assert_eq!(field("attempt"), Some(Value::from(1)), "dispatch attempt of the target: {l}");
        assert_eq!(field("receive_count"), Some(Value::from(1)), "receive of the message: {l}");
    }
    let enqueued = lines.iter().find(|l| l["message"] == "webhook enqueued").expect("ingest line");
    assert_eq!(
        (&enqueued["delivery_id"], &enqueued["event"]),
        (&Value::from(delivery.as_str()), &Value::from("pull_request"))
    );
    let refused = lines.iter().find(|l| l["message"] == "webhook refused").expect("refusal line");
    assert_eq!(refused["outcome"], "bad_signature");
    let all = logs.text();
    for secret in [SECRET, "ghs_", "PRIVATE KEY"] {
        assert!(!all.contains(secret), "{secret:?} in the logs");
    }
    relay.stop().await;
}
