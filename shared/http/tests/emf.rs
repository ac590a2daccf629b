//! CloudWatch Embedded Metric Format output of the Lambda recorder
//! (`crcr_telemetry::init_emf`), checked against the EMF
//! specification ("Specification: Embedded metric format", CloudWatch user
//! guide) and against what the alarms of infra/modules/crcr/alarms.tf read:
//! namespace `crcr`, metrics `HudOutboxBacklog`, `NeverStartedDispatches`,
//! `GitHubRateLimitRemaining` with an empty dimension set.
//!
//! One test in this binary: the recorder is per process.

use std::collections::BTreeMap;

use crcr_core::metrics as m;
use crcr_telemetry::{flush_emf_to, init_emf};
use serde_json::Value;

/// Flushes and parses every line as one EMF document.
fn flush() -> Vec<Value> {
    let mut out = Vec::new();
    flush_emf_to(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "one document per line");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// The structural rules of the specification for one document; returns
/// (namespace, dimension set, metric name → (unit, value)).
/// Metric name → (unit, value).
type Metrics = BTreeMap<String, (Option<String>, Value)>;

fn check_document(doc: &Value) -> (String, Vec<String>, Metrics) {
    let root = doc.as_object().expect("root node is a JSON object");
    let aws = root["_aws"].as_object().expect("_aws metadata object");
    assert!(aws["Timestamp"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "Timestamp in ms: {doc}");
    let directives = aws["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics array");
    assert_eq!(directives.len(), 1, "{doc}");
    let d = directives[0].as_object().unwrap();
    let namespace = d["Namespace"].as_str().expect("Namespace string").to_owned();
    let sets = d["Dimensions"].as_array().expect("Dimensions: a DimensionSet array");
    assert_eq!(sets.len(), 1, "{doc}");
    let set: Vec<String> =
        sets[0].as_array().expect("DimensionSet").iter().map(|k| k.as_str().unwrap().to_owned()).collect();
    assert!(set.len() <= 30, "at most 30 dimension keys");
    for key in &set {
        assert!(root[key].is_string(), "dimension target {key} must be a string member of the root: {doc}");
    }
    let defs = d["Metrics"].as_array().expect("Metrics array");
    assert!(!defs.is_empty() && defs.len() <= 100, "1..=100 MetricDefinitions");
    let mut metrics = BTreeMap::new();
    for def in defs {
        let name = def["Name"].as_str().expect("Name").to_owned();
        let unit = def.get("Unit").map(|u| u.as_str().expect("Unit string").to_owned());
        let value = root.get(&name).unwrap_or_else(|| panic!("metric target {name} missing: {doc}")).clone();
        let numeric =
            value.is_number() || value.as_array().is_some_and(|a| a.len() <= 100 && a.iter().all(Value::is_number));
        assert!(numeric, "metric target {name} must be a number or at most 100 numbers: {doc}");
        metrics.insert(name, (unit, value));
    }
    (namespace, set, metrics)
}

#[tokio::test]
async fn emf_documents_follow_the_specification_and_feed_the_alarms() {
    // Nothing is written before the recorder is installed.
    assert!(flush().is_empty());
    let collector = init_emf(crcr_telemetry::DEFAULT_NAMESPACE).expect("first recorder of this process");
    assert!(std::ptr::eq(collector, init_emf("other").unwrap()), "installed once; later calls get it back");
    assert!(init_emf("").is_ok(), "already installed: the namespace argument is not used again");

    metrics::gauge!(m::HUD_OUTBOX_BACKLOG).set(12.0);
    metrics::gauge!(m::NEVER_STARTED_DISPATCHES).set(2.0);
    metrics::gauge!(m::GITHUB_RATE_LIMIT_REMAINING).set(4_321.0);
    metrics::gauge!(m::HUD_OUTBOX_LAG).set(95.5);
    metrics::counter!(m::DISPATCH_RETRIES).increment(3);
    metrics::counter!(m::WEBHOOKS, "event" => "push", "outcome" => "enqueued").increment(2);
    metrics::histogram!(m::INGEST_LATENCY, "outcome" => "enqueued").record(0.004);
    metrics::histogram!(m::INGEST_LATENCY, "outcome" => "enqueued").record(0.25);

    let docs = flush();
    let parsed: Vec<_> = docs.iter().map(check_document).collect();
    assert!(parsed.iter().all(|(ns, _, _)| ns == "crcr"), "namespace crcr: {docs:?}");
    let undimensioned: Vec<_> = parsed.iter().filter(|(_, set, _)| set.is_empty()).collect();
    assert_eq!(undimensioned.len(), 1, "one document for the empty label set: {docs:?}");
    let plain = &undimensioned[0].2;
    let value = |name: &str| plain.get(name).map(|(_, v)| v.clone());
    let unit = |name: &str| plain.get(name).and_then(|(u, _)| u.clone());
    // The alarms' metrics: exact names, no dimensions.
    assert_eq!(value("HudOutboxBacklog"), Some(Value::from(12.0)));
    assert_eq!(value("NeverStartedDispatches"), Some(Value::from(2.0)));
    assert_eq!(value("GitHubRateLimitRemaining"), Some(Value::from(4_321.0)));
    assert_eq!(unit("GitHubRateLimitRemaining").as_deref(), Some("Count"));
    assert_eq!((value("HudOutboxLag"), unit("HudOutboxLag").as_deref()), (Some(Value::from(95.5)), Some("Seconds")));
    assert_eq!(value("DispatchRetries"), Some(Value::from(3)), "a counter is its delta since the last flush");
    assert_eq!(docs.iter().filter(|d| d.get("HudOutboxBacklog").is_some()).count(), 1);
    // Labels become dimensions, in a document of their own.
    let webhooks = parsed.iter().find(|(_, _, ms)| ms.contains_key("Webhooks")).expect("Webhooks document");
    assert_eq!(webhooks.1, ["event", "outcome"]);
    let doc = &docs[parsed.iter().position(|p| p.2.contains_key("Webhooks")).unwrap()];
    assert_eq!(
        (&doc["event"], &doc["outcome"], &doc["Webhooks"]),
        (&Value::from("push"), &Value::from("enqueued"), &Value::from(2))
    );
    let latency = parsed.iter().find(|(_, _, ms)| ms.contains_key("IngestLatency")).expect("IngestLatency document");
    assert_eq!(latency.1, ["outcome"]);
    assert_eq!(latency.2["IngestLatency"], (Some("Seconds".to_owned()), serde_json::json!([0.004, 0.25])));

    // The next flush: counters without a new delta and drained histograms
    // are left out; gauges are written again with their last value.
    metrics::gauge!(m::HUD_OUTBOX_BACKLOG).set(0.0);
    let docs = flush();
    let parsed: Vec<_> = docs.iter().map(check_document).collect();
    assert_eq!(parsed.len(), 1, "{docs:?}");
    let names: Vec<&str> = parsed[0].2.keys().map(String::as_str).collect();
    assert_eq!(names, ["GitHubRateLimitRemaining", "HudOutboxBacklog", "HudOutboxLag", "NeverStartedDispatches"]);
    assert_eq!(parsed[0].2["HudOutboxBacklog"].1, Value::from(0.0));
    assert!(parsed[0].1.is_empty());

    // The ingest Lambda's router flushes (to stdout) after each request, so
    // what a request recorded is gone from the next flush.
    use tower::ServiceExt;
    let app = crcr_http::metrics::flush_emf_after_each_request(axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            metrics::counter!(m::WEBHOOKS, "event" => "ping", "outcome" => "ignored").increment(1);
            "ok"
        }),
    ));
    let res = app.oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let docs = flush();
    assert!(docs.iter().all(|d| d.get("Webhooks").is_none()), "already flushed by the middleware: {docs:?}");
    metrics::counter!(m::WEBHOOKS, "event" => "ping", "outcome" => "ignored").increment(1);
    assert!(flush().iter().any(|d| d["Webhooks"] == 1 && d["event"] == "ping"), "recorded outside a request: kept");
}
