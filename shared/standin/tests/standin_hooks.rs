//! Tests of the stand-in's App webhook delivery log
//! (`GET /app/hook/deliveries`, `POST /app/hook/deliveries/{id}/attempts`).
//!
//! Run: `cargo test -p crcr-standin --test standin_hooks`

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crcr_core::signature::WebhookSecret;
use crcr_standin::{Fault, HookDeliverySeed, StandIn, StandInOptions};
use octocrab::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// What a webhook receiver got: event, delivery GUID, signature, body.
type Received = (String, String, String, Vec<u8>);

async fn start() -> StandIn {
    StandIn::start(StandInOptions::default()).await.expect("stand-in starts")
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn ago(d: Duration) -> SystemTime {
    SystemTime::now() - d
}

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// An App JWT as octocrab makes it.
fn app_jwt(s: &StandIn) -> String {
    let key = EncodingKey::from_rsa_pem(s.private_key_pem().as_bytes()).unwrap();
    let claims = json!({"iss": s.app_id(), "iat": now_s() - 60, "exp": now_s() + 540});
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

struct Answer {
    status: u16,
    link: Option<String>,
    body: Value,
}

async fn call(s: &StandIn, method: reqwest::Method, path: &str, auth: Option<&str>) -> Answer {
    let mut req =
        reqwest::Client::new().request(method, format!("{}{path}", s.base_url())).header("user-agent", "crcr-tests");
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let res = req.send().await.expect("stand-in reachable");
    let status = res.status().as_u16();
    let link = res.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    Answer { status, link, body }
}

async fn list(s: &StandIn, query: &str) -> Answer {
    call(s, reqwest::Method::GET, &format!("/app/hook/deliveries{query}"), Some(&app_jwt(s))).await
}

async fn redeliver(s: &StandIn, id: u64) -> Answer {
    call(s, reqwest::Method::POST, &format!("/app/hook/deliveries/{id}/attempts"), Some(&app_jwt(s))).await
}

/// The query (`?per_page=..&cursor=..`) of a `Link: <url>; rel="next"` header
/// that points at the stand-in's delivery log.
fn next_query(s: &StandIn, link: &str) -> String {
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    let url = link.trim_start_matches('<').split('>').next().unwrap();
    let prefix = format!("{}/app/hook/deliveries", s.base_url());
    url.strip_prefix(&prefix).expect("the link points at the stand-in's delivery log").to_owned()
}

fn guids(page: &Value) -> Vec<String> {
    page.as_array().unwrap().iter().map(|d| d["guid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_delivery_log_needs_the_app_jwt() {
    let s = start().await;
    s.add_hook_delivery(HookDeliverySeed::new("g-1", "push", 200, ago(MIN)));
    let none = call(&s, reqwest::Method::GET, "/app/hook/deliveries", None).await;
    assert_eq!((none.status, none.body["message"].as_str()), (401, Some("Requires authentication")));

    let installation = s.install("org/repo");
    let minted = call(
        &s,
        reqwest::Method::POST,
        &format!("/app/installations/{installation}/access_tokens"),
        Some(&app_jwt(&s)),
    )
    .await;
    assert_eq!(minted.status, 201);
    let token = minted.body["token"].as_str().unwrap();
    let with_token = call(&s, reqwest::Method::GET, "/app/hook/deliveries", Some(token)).await;
    assert_eq!(with_token.status, 401, "installation tokens do not reach the App's delivery log");
    let post = call(&s, reqwest::Method::POST, "/app/hook/deliveries/1/attempts", Some(token)).await;
    assert_eq!(post.status, 401);
    assert!(s.redelivery_requests().is_empty(), "refused before anything is recorded");

    let ok = list(&s, "").await;
    assert_eq!((ok.status, guids(&ok.body)), (200, vec!["g-1".to_owned()]));
}

#[tokio::test]
async fn pages_go_newest_first_with_a_next_link_until_the_last() {
    let s = start().await;
    // Seeded out of order on purpose: the list is ordered by delivered_at.
    for minutes in [5u32, 1, 7, 3, 2, 6, 4] {
        let seed =
            HookDeliverySeed::new(&format!("g-{minutes}"), "pull_request", 200, ago(minutes * MIN)).action("opened");
        s.add_hook_delivery(seed);
    }
    let first = list(&s, "?per_page=3").await;
    assert_eq!(first.status, 200);
    assert_eq!(guids(&first.body), ["g-1", "g-2", "g-3"]);
    let item = &first.body[0];
    for field in ["id", "guid", "delivered_at", "redelivery", "duration", "status", "status_code", "event", "action"] {
        assert!(item.get(field).is_some(), "{field} missing from {item}");
    }
    assert_eq!((item["status"].as_str(), item["status_code"].as_u64()), (Some("OK"), Some(200)));
    assert_eq!((item["event"].as_str(), item["action"].as_str()), (Some("pull_request"), Some("opened")));
    assert!(item["delivered_at"].as_str().unwrap().ends_with('Z'));

    let second = list(&s, &next_query(&s, first.link.as_deref().expect("a next link"))).await;
    assert_eq!(guids(&second.body), ["g-4", "g-5", "g-6"]);
    // A delivery arriving between pages does not shift the cursor.
    s.add_hook_delivery(HookDeliverySeed::new("g-new", "push", 200, SystemTime::now()));
    let third = list(&s, &next_query(&s, second.link.as_deref().unwrap())).await;
    assert_eq!((guids(&third.body), third.link), (vec!["g-7".to_owned()], None));

    // Default page size 30.
    for i in 0..30 {
        s.add_hook_delivery(HookDeliverySeed::new(&format!("bulk-{i}"), "push", 200, ago(HOUR)));
    }
    let default = list(&s, "").await;
    assert_eq!(default.body.as_array().unwrap().len(), 30);
    assert!(default.link.is_some());
}

#[tokio::test]
async fn page_sizes_and_cursors_are_validated() {
    let s = start().await;
    s.add_hook_delivery(HookDeliverySeed::new("g", "push", 200, ago(MIN)));
    for bad in ["0", "101", "x", "-1"] {
        let a = list(&s, &format!("?per_page={bad}")).await;
        assert_eq!(a.status, 422, "per_page={bad}: {}", a.body);
    }
    assert_eq!(list(&s, "?per_page=100").await.status, 200);
    assert_eq!(list(&s, "?per_page=1").await.status, 200);
    let a = list(&s, "?cursor=not-a-cursor").await;
    assert_eq!((a.status, a.body["message"].as_str()), (422, Some("Invalid cursor")));
}

#[tokio::test]
async fn only_the_past_three_days_are_listed_and_redeliverable() {
    let s = start().await;
    let old = s.add_hook_delivery(HookDeliverySeed::new("old", "push", 502, ago(3 * DAY + HOUR)));
    let edge = s.add_hook_delivery(HookDeliverySeed::new("edge", "push", 502, ago(3 * DAY - HOUR)));
    assert_eq!(guids(&list(&s, "").await.body), ["edge"]);
    assert_eq!(s.hook_deliveries().len(), 2, "the stand-in still holds it");

    let refused = redeliver(&s, old).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(redeliver(&s, edge).await.status, 202);
    assert_eq!(redeliver(&s, 999).await.status, 404);
    let requests = s.redelivery_requests();
    let seen: Vec<(u64, Option<&str>, u16)> =
        requests.iter().map(|r| (r.delivery_id, r.guid.as_deref(), r.status)).collect();
    assert_eq!(seen, [(old, Some("old"), 422), (edge, Some("edge"), 202), (999, None, 404)]);
}

#[tokio::test]
async fn a_redelivery_is_a_new_delivery_of_the_same_guid_with_the_chosen_outcome() {
    let s = start().await;
    let id = s.add_hook_delivery(HookDeliverySeed::new("g", "pull_request", 502, ago(HOUR)).action("synchronize"));
    s.queue_redelivery_outcomes([503]);

    let a = redeliver(&s, id).await;
    assert_eq!(a.status, 202);
    let page = list(&s, "").await.body;
    assert_eq!(guids(&page), ["g", "g"]);
    let newest = &page[0];
    assert_eq!(newest["redelivery"], true);
    assert_eq!(newest["status_code"], 503);
    assert_eq!(newest["status"], "Invalid HTTP Response: 503");
    assert_eq!(newest["action"], "synchronize");
    assert!(newest["id"].as_u64().unwrap() > id);

    // After the queued outcomes: OK.
    assert_eq!(redeliver(&s, newest["id"].as_u64().unwrap()).await.status, 202);
    let entries = s.hook_deliveries();
    assert_eq!(entries.len(), 3);
    assert_eq!((entries[0].status_code, entries[0].redelivery), (200, true));
}

#[tokio::test]
async fn faults_can_be_queued_for_either_endpoint() {
    let s = start().await;
    let id = s.add_hook_delivery(HookDeliverySeed::new("g", "push", 502, ago(MIN)));
    s.inject_hook_list_fault(1, Fault::ServerError(502));
    assert_eq!(list(&s, "").await.status, 200);
    assert_eq!(list(&s, "").await.status, 502);
    assert_eq!(list(&s, "").await.status, 200);

    s.inject_redelivery_fault(Fault::SecondaryRateLimit { retry_after_s: 7 });
    let limited = redeliver(&s, id).await;
    assert_eq!(limited.status, 403);
    assert!(limited.body["message"].as_str().unwrap().contains("secondary rate limit"));
    assert_eq!(s.hook_deliveries().len(), 1, "a refused request redelivers nothing");
    assert_eq!(redeliver(&s, id).await.status, 202);
    let statuses: Vec<u16> = s.redelivery_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 202]);
}

#[tokio::test]
async fn with_the_apps_webhook_set_a_redelivery_is_posted_signed_and_its_answer_recorded() {
    let s = start().await;
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let receiver = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    seen.lock().unwrap().push((
                        h("x-github-event"),
                        h("x-github-delivery"),
                        h("x-hub-signature-256"),
                        body.to_vec(),
                    ));
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let body = br#"{"action":"opened","number":1}"#;
    let id = s.add_hook_delivery(
        HookDeliverySeed::new("9a1e-guid", "pull_request", 0, ago(MIN)).action("opened").payload(body),
    );
    s.set_app_webhook(&url, "the-secret");
    assert_eq!(redeliver(&s, id).await.status, 202);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.hook_deliveries().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "redelivery never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (event, guid, signature, sent) = &got[0];
    assert_eq!((event.as_str(), guid.as_str(), sent.as_slice()), ("pull_request", "9a1e-guid", &body[..]));
    WebhookSecret::new("the-secret").verify(Some(signature.as_bytes()), sent).expect("signed with the App's secret");
    let newest = &s.hook_deliveries()[0];
    assert_eq!((newest.guid.as_str(), newest.status_code, newest.redelivery), ("9a1e-guid", 202, true));
}
