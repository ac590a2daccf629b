//! A local HUD that keeps torchci's rules: its `/api/crcr/results` handler
//! (pytorch/test-infra `torchci/pages/api/crcr/results.ts`) and the record
//! it writes (`torchci/lib/crcr/crcrUtils.ts`), so the relay is tested
//! against what PyTorch's HUD really accepts, not against itself.
//!
//! Rules, each from those two files:
//! - only `POST` (405 `Method not allowed`);
//! - `x-hud-internal-bot` must equal the bot key (`checkAuthWithApiToken`,
//!   `torchci/lib/auth/auth.ts`; 401 `Unauthorized`);
//! - a body over 2 MB is refused 413 (`validatePayloadSize`, and the route's
//!   `bodyParser.sizeLimit: "2mb"`);
//! - `extractDynamoRecord` reads `untrusted.callback_payload.workflow` and
//!   `trusted.verified_repo` of every record; a body where one of them is
//!   missing throws a `TypeError`, which the handler answers 500 `Internal
//!   error writing to DynamoDB` (a 5xx that no retry will cure);
//! - a falsy `workflow.job_name` or a null/absent `workflow.check_run_id` is
//!   400 `Missing required field: workflow.job_name` / `.check_run_id`;
//! - one row per `<verified_repo>/<delivery_id>/<workflow.name>/<job_name>/
//!   <check_run_id>` (JavaScript template strings: an absent part reads
//!   `undefined`), upserted by `writeToDynamo`'s `UpdateItem`, which SETs
//!   only the fields the record carries: the last record written wins for
//!   `status`, and a `conclusion` once set stays;
//! - 200 `{"ok": true, "status", "dynamoKey"}`.
//!
//! Outage modes for tests: [`Hud::answer`] queues statuses answered before
//! the handler runs (HUD or its platform down), [`Hud::set_outage`] answers
//! one status to everything until cleared, [`Hud::set_delay`] answers late.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

/// The bot key [`Hud::start`] requires (tests' `CRCR_HUD_BOT_KEY`).
pub const DEFAULT_BOT_KEY: &str = "hud-bot-key";

/// torchci's body limit (`MAX_PAYLOAD_BYTES`, 2 MB).
const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// The local HUD (see the module docs). Clones share one state.
#[derive(Clone, Default)]
pub struct Hud {
    /// Base URL (`http://127.0.0.1:<port>`): the relay's `CRCR_HUD_URL`.
    pub url: String,
    bot_key: String,
    received: Arc<Mutex<Vec<(u16, String, Value)>>>,
    answers: Arc<Mutex<Vec<u16>>>,
    outage: Arc<Mutex<Option<u16>>>,
    rows: Arc<Mutex<BTreeMap<String, Map<String, Value>>>>,
    delay: Arc<Mutex<std::time::Duration>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl Hud {
    /// Starts on `127.0.0.1:0` requiring [`DEFAULT_BOT_KEY`].
    pub async fn start() -> Hud {
        Self::start_with_key(DEFAULT_BOT_KEY).await
    }

    /// Starts on `127.0.0.1:0` requiring `bot_key` in `x-hud-internal-bot`.
    pub async fn start_with_key(bot_key: &str) -> Hud {
        let mut hud = Hud { bot_key: bot_key.to_owned(), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the HUD stand-in");
        hud.url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = Router::new().route("/crcr/results", any(results)).with_state(hud.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        hud
    }

    /// Answer the next requests with these statuses, before the handler
    /// runs (nothing is stored for them).
    pub fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend_from_slice(statuses);
    }

    /// `Some(status)`: answer every request with it until `None`.
    pub fn set_outage(&self, status: Option<u16>) {
        *self.outage.lock().unwrap() = status;
    }

    /// Wait this long before answering each request (a slow HUD).
    pub fn set_delay(&self, delay: std::time::Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Requests that arrived so far, answered or not yet.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request: (status answered, bot key sent, body; `null` when the
    /// body was not JSON).
    pub fn received(&self) -> Vec<(u16, String, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// The rows HUD stored, by `dynamoKey`, as torchci's `UpdateItem` left them.
    pub fn rows(&self) -> BTreeMap<String, Map<String, Value>> {
        self.rows.lock().unwrap().clone()
    }
}

fn answer(status: u16, body: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::from_u16(status).expect("a valid status"), Json(body))
}

async fn results(State(h): State<Hud>, method: Method, headers: HeaderMap, raw: Bytes) -> (StatusCode, Json<Value>) {
    h.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let delay = *h.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let key = headers.get("x-hud-internal-bot").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let queued = {
        let mut a = h.answers.lock().unwrap();
        (!a.is_empty()).then(|| a.remove(0))
    };
    let (status, reply) = match queued.or(*h.outage.lock().unwrap()) {
        Some(status) => (status, json!({"error": "HUD unavailable"})),
        None => handle(&h, &method, &key, &raw, &body),
    };
    h.received.lock().unwrap().push((status, key, body));
    answer(status, reply)
}

/// `results.ts` `handler` with `extractDynamoRecord` and `writeToDynamo`.
fn handle(h: &Hud, method: &Method, key: &str, raw: &[u8], body: &Value) -> (u16, Value) {
    if method != Method::POST {
        return (405, json!({"error": "Method not allowed"}));
    }
    if key.is_empty() || key != h.bot_key {
        return (401, json!({"error": "Unauthorized"}));
    }
    if raw.len() > MAX_PAYLOAD_BYTES {
        return (413, json!({"error": "Payload exceeds 2MB limit"}));
    }
    let internal = || (500, json!({"error": "Internal error writing to DynamoDB"}));
    if !body.is_object() {
        return internal(); // `const { trusted, untrusted } = payload` on a non-object body
    }
    // `untrusted.callback_payload.workflow`: a TypeError when a level is missing.
    let Some(cb) = body.get("untrusted").filter(|u| u.is_object()).and_then(|u| u.get("callback_payload")) else {
        return internal();
    };
    let Some(wf) = cb.get("workflow").filter(|w| w.is_object()) else {
        return internal();
    };
    let truthy = |v: Option<&Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    if !truthy(wf.get("job_name")) {
        return (400, json!({"error": "Missing required field: workflow.job_name"}));
    }
    if wf.get("check_run_id").is_none_or(Value::is_null) {
        return (400, json!({"error": "Missing required field: workflow.check_run_id"}));
    }
    let Some(trusted) = body.get("trusted").filter(|t| t.is_object()) else {
        return internal(); // `trusted.verified_repo` in the key
    };
    let js = |v: Option<&Value>| match v {
        None => "undefined".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let dynamo_key = format!(
        "{}/{}/{}/{}/{}",
        js(trusted.get("verified_repo")),
        js(cb.get("delivery_id")),
        js(wf.get("name")),
        js(wf.get("job_name")),
        js(wf.get("check_run_id")),
    );
    let mut record = Map::new();
    let mut set = |k: &str, v: Option<&Value>| {
        if let Some(v) = v {
            record.insert(k.to_owned(), v.clone());
        }
    };
    set("status", wf.get("status"));
    set("downstream_repo", trusted.get("verified_repo"));
    set("delivery_id", cb.get("delivery_id"));
    set("workflow_name", wf.get("name"));
    set("job_name", wf.get("job_name"));
    set("check_run_id", Some(&Value::String(js(wf.get("check_run_id")))));
    set("run_id", Some(wf.get("run_id").unwrap_or(&Value::String(String::new()))));
    // `Number(wf.run_attempt ?? 1) || 1`
    let attempt = match wf.get("run_attempt") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    set("run_attempt", Some(&json!(attempt.filter(|a| *a != 0.0).unwrap_or(1.0))));
    let payload = cb.get("payload");
    let pr = payload.and_then(|p| p.get("pull_request"));
    set(
        "upstream_repo",
        Some(
            payload
                .and_then(|p| p.pointer("/repository/full_name"))
                .filter(|v| !v.is_null())
                .unwrap_or(&json!("pytorch/pytorch")),
        ),
    );
    set("pr_number", Some(pr.and_then(|p| p.get("number")).filter(|v| !v.is_null()).unwrap_or(&json!(0))));
    let head_sha =
        [pr.and_then(|p| p.pointer("/head/sha")), payload.and_then(|p| p.get("head_sha")), cb.get("delivery_id")]
            .into_iter()
            .flatten()
            .find(|v| !v.is_null());
    set("pytorch_head_sha", Some(head_sha.unwrap_or(&json!(""))));
    set("workflow_run_url", Some(wf.get("url").filter(|v| !v.is_null()).unwrap_or(&json!(""))));
    set("downstream_repo_level", trusted.get("downstream_repo_level").filter(|v| truthy(Some(v))));
    set("event_type", cb.get("event_type").filter(|v| truthy(Some(v))));
    let metrics = trusted.get("ci_metrics");
    set("queue_time", metrics.and_then(|m| m.get("queue_time")).filter(|v| !v.is_null()));
    set("execution_time", metrics.and_then(|m| m.get("execution_time")).filter(|v| !v.is_null()));
    set("started_at", wf.get("started_at").filter(|v| truthy(Some(v))));
    set("artifact_url", wf.get("artifact_url").filter(|v| truthy(Some(v))));
    if wf.get("status").and_then(Value::as_str) == Some("completed") {
        // `wf.conclusion ?? undefined`: a null conclusion is not written.
        set("conclusion", wf.get("conclusion").filter(|v| !v.is_null()));
        set("completed_at", wf.get("completed_at").filter(|v| truthy(Some(v))));
    }
    let status = record.get("status").cloned().unwrap_or(Value::Null);
    // `UpdateItem` SET of the defined fields: the others stay as they were.
    h.rows.lock().unwrap().entry(dynamo_key.clone()).or_default().extend(record);
    (200, json!({"ok": true, "status": status, "dynamoKey": dynamo_key}))
}
