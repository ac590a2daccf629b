//! The App's webhook delivery log (App JWT required), with GitHub's rules
//! (docs: "REST API endpoints for GitHub App webhooks", "Redelivering
//! webhooks"):
//!
//! - `GET /app/hook/deliveries?per_page=N&cursor=C` → 200, a JSON array of
//!   deliveries, newest first (by `delivered_at`, then `id`). `per_page`
//!   1..=100, default 30; anything else → 422. Paged by an opaque cursor:
//!   when more deliveries follow, the answer carries
//!   `Link: <.../app/hook/deliveries?per_page=N&cursor=C>; rel="next"`; a
//!   cursor the stand-in did not hand out → 422. Only deliveries of the past
//!   3 days are listed (GitHub keeps no more).
//! - `POST /app/hook/deliveries/{delivery_id}/attempts` → 202 Accepted and
//!   a new delivery of the same GUID with `redelivery: true` appended to the
//!   log; 404 for an unknown id; 422 for a delivery made more than 3 days
//!   ago. The redelivery's status code is the next one queued with
//!   [`StandIn::queue_redelivery_outcomes`] (default 200). When the App's
//!   webhook is set ([`StandIn::set_app_webhook`]) and the delivery has a
//!   payload, the stand-in really POSTs it there, signed like GitHub
//!   (`X-Hub-Signature-256`), keeping the GUID in `X-GitHub-Delivery`, and
//!   records the answer's status (0 when nothing answered within GitHub's
//!   10 s).
//!
//! Every POST that passes authentication is recorded
//! ([`StandIn::redelivery_requests`]). Faults can be queued for either
//! endpoint ([`StandIn::inject_hook_list_fault`],
//! [`StandIn::inject_redelivery_fault`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::repos::fault_response;
use super::server::{gh_error, require_app, Auth, RequestId};
use super::state::Shared;
use super::{util, Fault, StandIn};
use crcr_core::signature::WebhookSecret;

const DOC_LIST: &str = "https://docs.github.com/rest/apps/webhooks#list-deliveries-for-an-app-webhook";
const DOC_REDELIVER: &str = "https://docs.github.com/rest/apps/webhooks#redeliver-a-delivery-for-an-app-webhook";

/// How long GitHub keeps (and can redeliver) a delivery: 3 days
/// ("Redelivering webhooks").
pub const HOOK_RETENTION: Duration = Duration::from_secs(3 * 86_400);
/// `per_page` when the request gives none.
pub(crate) const DEFAULT_PER_PAGE: usize = 30;
/// The largest `per_page` GitHub accepts.
pub(crate) const MAX_PER_PAGE: usize = 100;
/// How long GitHub waits for the receiver's answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery to put in the log ([`StandIn::add_hook_delivery`]).
#[derive(Debug, Clone)]
pub struct HookDeliverySeed {
    /// `X-GitHub-Delivery`: shared by the original and its redeliveries.
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    pub action: Option<String>,
    /// The receiver's answer (2xx delivered; 0 = nothing answered).
    pub status_code: u16,
    /// When GitHub made the attempt (kept to the second, as GitHub does).
    pub delivered_at: SystemTime,
    pub redelivery: bool,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    /// The webhook body, sent again on redelivery when the App's webhook is set.
    pub payload: Option<Vec<u8>>,
}

impl HookDeliverySeed {
    /// An original (not a redelivery) attempt without action or payload.
    pub fn new(guid: &str, event: &str, status_code: u16, delivered_at: SystemTime) -> Self {
        Self {
            guid: guid.to_owned(),
            event: event.to_owned(),
            action: None,
            status_code,
            delivered_at,
            redelivery: false,
            installation_id: None,
            repository_id: None,
            payload: None,
        }
    }

    /// With the payload's `action`.
    pub fn action(mut self, action: &str) -> Self {
        self.action = Some(action.to_owned());
        self
    }

    /// With the webhook body (redelivered for real when the App's webhook is set).
    pub fn payload(mut self, body: &[u8]) -> Self {
        self.payload = Some(body.to_vec());
        self
    }
}

/// One entry of the delivery log, as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDeliveryEntry {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub status_code: u16,
    /// Unix seconds.
    pub delivered_at_s: u64,
    pub redelivery: bool,
}

/// One `POST /app/hook/deliveries/{id}/attempts` that passed authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeliveryRequest {
    /// The id in the path.
    pub delivery_id: u64,
    /// That delivery's GUID (`None` for an unknown id).
    pub guid: Option<String>,
    /// The stand-in's answer (202, 404, 422, or a fault's status).
    pub status: u16,
    /// Milliseconds since the stand-in started.
    pub at_ms: u64,
}

struct Stored {
    entry: HookDeliveryEntry,
    installation_id: Option<u64>,
    repository_id: Option<u64>,
    payload: Option<Arc<Vec<u8>>>,
}

/// The stand-in's delivery log and what was asked of it.
#[derive(Default)]
pub(crate) struct HookLog {
    deliveries: Vec<Stored>,
    next_id: u64,
    requests: Vec<RedeliveryRequest>,
    /// Status codes of the next redeliveries (without a webhook), oldest first.
    outcomes: VecDeque<u16>,
    /// (list calls still answered normally, then this fault)
    list_faults: VecDeque<(usize, Fault)>,
    redeliver_faults: VecDeque<Fault>,
    webhook: Option<(String, WebhookSecret)>,
}

impl HookLog {
    fn push(&mut self, seed: HookDeliverySeed) -> u64 {
        if self.next_id == 0 {
            self.next_id = 1_000_000_001;
        }
        let id = self.next_id;
        self.next_id += 1;
        let delivered_at_s = seed.delivered_at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        self.deliveries.push(Stored {
            entry: HookDeliveryEntry {
                id,
                guid: seed.guid,
                event: seed.event,
                action: seed.action,
                status_code: seed.status_code,
                delivered_at_s,
                redelivery: seed.redelivery,
            },
            installation_id: seed.installation_id,
            repository_id: seed.repository_id,
            payload: seed.payload.map(Arc::new),
        });
        id
    }

    /// Listed deliveries (the past 3 days), newest first.
    fn listed(&self, now_s: u64) -> Vec<&Stored> {
        let floor = now_s.saturating_sub(HOOK_RETENTION.as_secs());
        let mut v: Vec<&Stored> = self.deliveries.iter().filter(|d| d.entry.delivered_at_s >= floor).collect();
        v.sort_by_key(|d| std::cmp::Reverse((d.entry.delivered_at_s, d.entry.id)));
        v
    }

    /// The fault the next list call answers with, if any.
    fn next_list_fault(&mut self) -> Option<Fault> {
        let front = self.list_faults.front_mut()?;
        if front.0 > 0 {
            front.0 -= 1;
            return None;
        }
        self.list_faults.pop_front().map(|(_, f)| f)
    }
}

/// GitHub's `status` text for a status code.
fn status_text(code: u16) -> String {
    match code {
        200..=299 => "OK".to_owned(),
        0 => "failed to connect to host".to_owned(),
        other => format!("Invalid HTTP Response: {other}"),
    }
}

fn delivery_json(d: &Stored) -> Value {
    let e = &d.entry;
    json!({
        "id": e.id,
        "guid": e.guid,
        "delivered_at": util::rfc3339(e.delivered_at_s),
        "redelivery": e.redelivery,
        "duration": 0.27,
        "status": status_text(e.status_code),
        "status_code": e.status_code,
        "event": e.event,
        "action": e.action,
        "installation_id": d.installation_id,
        "repository_id": d.repository_id,
        "throttled_at": null,
    })
}

/// `v1_<delivered_at>_<id>`: the position after which the next page starts.
fn cursor_of(e: &HookDeliveryEntry) -> String {
    format!("v1_{}_{}", e.delivered_at_s, e.id)
}

fn parse_cursor(c: &str) -> Option<(u64, u64)> {
    let (at, id) = c.strip_prefix("v1_")?.split_once('_')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(resp) = require_app(&auth) {
        return resp;
    }
    let (mut per_page, mut cursor) = (None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "per_page" => per_page = Some(v.into_owned()),
            "cursor" => cursor = Some(v.into_owned()),
            _ => {}
        }
    }
    let per_page = match per_page {
        None => DEFAULT_PER_PAGE,
        Some(p) => match p.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
            _ => {
                let message =
                    format!("Invalid request.\n\nper_page must be between 1 and {MAX_PER_PAGE}; {p:?} was supplied.");
                return gh_error(422, &message, DOC_LIST);
            }
        },
    };
    let after = match cursor.as_deref() {
        None | Some("") => None,
        Some(c) => match parse_cursor(c) {
            Some(position) => Some(position),
            None => return gh_error(422, "Invalid cursor", DOC_LIST),
        },
    };
    let fault = shared.world().hooks.next_list_fault();
    if let Some(fault) = fault {
        return fault_response(fault, 0, &request_id).await;
    }

    let world = shared.world();
    let listed = world.hooks.listed(util::epoch_now());
    let rest: Vec<&Stored> = match after {
        None => listed,
        Some(position) => listed.into_iter().filter(|d| (d.entry.delivered_at_s, d.entry.id) < position).collect(),
    };
    let page: Vec<Value> = rest.iter().take(per_page).map(|d| delivery_json(d)).collect();
    let mut resp = Json(Value::Array(page)).into_response();
    if rest.len() > per_page {
        let next = cursor_of(&rest[per_page - 1].entry);
        let link = format!("<{}/app/hook/deliveries?per_page={per_page}&cursor={next}>; rel=\"next\"", shared.base_url);
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(axum::http::header::LINK, v);
        }
    }
    resp
}

pub(crate) async fn redeliver(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(delivery_id): Path<String>,
) -> Response {
    if let Err(resp) = require_app(&auth) {
        return resp;
    }
    let arrived = Instant::now();
    let Ok(id) = delivery_id.parse::<u64>() else {
        return gh_error(404, "Not Found", DOC_REDELIVER);
    };
    let record = |status: u16, guid: Option<String>| {
        shared.world().hooks.requests.push(RedeliveryRequest {
            delivery_id: id,
            guid,
            status,
            at_ms: shared.ms_since_start(arrived),
        });
    };
    let found = {
        let world = shared.world();
        world
            .hooks
            .deliveries
            .iter()
            .find(|d| d.entry.id == id)
            .map(|d| (d.entry.clone(), d.installation_id, d.repository_id, d.payload.clone()))
    };
    let Some((entry, installation_id, repository_id, payload)) = found else {
        record(404, None);
        return gh_error(404, "Not Found", DOC_REDELIVER);
    };
    let fault = shared.world().hooks.redeliver_faults.pop_front();
    if let Some(fault) = fault {
        let resp = fault_response(fault, 0, &request_id).await;
        record(resp.status().as_u16(), Some(entry.guid));
        return resp;
    }
    if entry.delivered_at_s + HOOK_RETENTION.as_secs() < util::epoch_now() {
        record(422, Some(entry.guid));
        return gh_error(422, "This delivery is too old to be redelivered (more than 3 days).", DOC_REDELIVER);
    }
    record(202, Some(entry.guid.clone()));

    let seed = |status_code: u16| HookDeliverySeed {
        guid: entry.guid.clone(),
        event: entry.event.clone(),
        action: entry.action.clone(),
        status_code,
        delivered_at: SystemTime::now(),
        redelivery: true,
        installation_id,
        repository_id,
        payload: payload.as_deref().cloned(),
    };
    let webhook = shared.world().hooks.webhook.clone();
    match (webhook, payload.clone()) {
        (Some((url, secret)), Some(body)) => {
            let shared = shared.clone();
            let (event, guid) = (entry.event.clone(), entry.guid.clone());
            let seed = seed(0);
            tokio::spawn(async move {
                let status_code = post_webhook(&url, &secret, &event, &guid, &body).await;
                shared.world().hooks.push(HookDeliverySeed { status_code, ..seed });
            });
        }
        _ => {
            let mut world = shared.world();
            let status_code = world.hooks.outcomes.pop_front().unwrap_or(200);
            world.hooks.push(seed(status_code));
        }
    }
    (StatusCode::ACCEPTED, Json(json!({}))).into_response()
}

/// Delivers `body` as GitHub does; the receiver's status, or 0 when it did
/// not answer within [`DELIVERY_TIMEOUT`].
async fn post_webhook(url: &str, secret: &WebhookSecret, event: &str, guid: &str, body: &[u8]) -> u16 {
    let Ok(client) = reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() else {
        return 0;
    };
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/crcr-stand-in")
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("x-hub-signature-256", secret.sign(body))
        .body(body.to_vec())
        .send()
        .await;
    sent.map_or(0, |r| r.status().as_u16())
}

impl StandIn {
    /// Puts a delivery in the App's delivery log; returns its id.
    pub fn add_hook_delivery(&self, seed: HookDeliverySeed) -> u64 {
        self.shared.world().hooks.push(seed)
    }

    /// The whole delivery log (also deliveries older than 3 days), newest first.
    pub fn hook_deliveries(&self) -> Vec<HookDeliveryEntry> {
        let world = self.shared.world();
        let mut v: Vec<HookDeliveryEntry> = world.hooks.deliveries.iter().map(|d| d.entry.clone()).collect();
        v.sort_by_key(|e| std::cmp::Reverse((e.delivered_at_s, e.id)));
        v
    }

    /// Every redelivery request that passed authentication, oldest first.
    pub fn redelivery_requests(&self) -> Vec<RedeliveryRequest> {
        self.shared.world().hooks.requests.clone()
    }

    /// Status codes the next redeliveries get, in order (after them: 200).
    /// Ignored for deliveries really sent to the App's webhook.
    pub fn queue_redelivery_outcomes(&self, status_codes: impl IntoIterator<Item = u16>) {
        self.shared.world().hooks.outcomes.extend(status_codes);
    }

    /// Lets `after` list calls through, then answers the next one with `fault`.
    /// Queued faults apply one after the other.
    pub fn inject_hook_list_fault(&self, after: usize, fault: Fault) {
        self.shared.world().hooks.list_faults.push_back((after, fault));
    }

    /// The next redelivery request (of a known id) is answered with `fault`.
    pub fn inject_redelivery_fault(&self, fault: Fault) {
        self.shared.world().hooks.redeliver_faults.push_back(fault);
    }

    /// The App's webhook URL and secret: from now on, a redelivery of a
    /// delivery that has a payload is really POSTed there.
    pub fn set_app_webhook(&self, url: &str, secret: &str) {
        self.shared.world().hooks.webhook = Some((url.to_owned(), WebhookSecret::new(secret)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_foreign_text() {
        let e = HookDeliveryEntry {
            id: 7,
            guid: "g".into(),
            event: "push".into(),
            action: None,
            status_code: 200,
            delivered_at_s: 1_700_000_000,
            redelivery: false,
        };
        assert_eq!(parse_cursor(&cursor_of(&e)), Some((1_700_000_000, 7)));
        assert_eq!(parse_cursor("v2_1_2"), None);
        assert_eq!(parse_cursor("v1_x_2"), None);
    }

    #[test]
    fn status_text_follows_github() {
        assert_eq!(status_text(202), "OK");
        assert_eq!(status_text(502), "Invalid HTTP Response: 502");
        assert_eq!(status_text(0), "failed to connect to host");
    }
}
