//! The wire side of the App's webhook delivery log (GitHub docs, "REST API
//! endpoints for GitHub App webhooks",
//! <https://docs.github.com/rest/apps/webhooks>): the request path, the
//! `Link` header's cursor, the JSON page, and how a refusal is classified.
//! [`crate::github::GitHubAppClient`] implements
//! [`crcr_core::redeliver::HookDeliveries`] with these.

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crcr_core::ports::GitHubError;
use crcr_core::redeliver::{DeliveryPage, HookDelivery, HookError};

use crate::github::classify;

/// Classifies a non-2xx answer of the delivery-log endpoints: 401 →
/// [`HookError::Refused`] (an App JWT is not renewed by retrying, unlike an
/// installation token); the rest as [`classify`] does, 403 rate limits
/// transient and other 403s refused.
pub fn hook_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> HookError {
    match classify(status, headers, body) {
        GitHubError::Transient { reason, .. } if status == StatusCode::UNAUTHORIZED => {
            HookError::Refused { status: 401, message: reason }
        }
        other => other.into(),
    }
}

/// The path and query of one page: `/app/hook/deliveries?per_page=N[&cursor=C]`.
pub fn list_uri(per_page: u8, cursor: Option<&str>) -> String {
    let mut uri = format!("/app/hook/deliveries?per_page={per_page}");
    if let Some(c) = cursor {
        uri.push_str("&cursor=");
        uri.extend(form_urlencoded::byte_serialize(c.as_bytes()));
    }
    uri
}

/// The `cursor` query parameter of the `rel="next"` URL of a `Link` header.
pub fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let url = part.split_once('<')?.1.split_once('>')?.0;
        let query = url.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "cursor").map(|(_, v)| v.into_owned())
    })
}

#[derive(Deserialize)]
struct WireDelivery {
    id: u64,
    guid: String,
    delivered_at: String,
    #[serde(default)]
    redelivery: bool,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    installation_id: Option<u64>,
    #[serde(default)]
    repository_id: Option<u64>,
}

/// Reads a 200 answer of `GET /app/hook/deliveries`: the JSON array and the
/// `Link` header. An unreadable answer is transient (a later run reads it again).
pub fn parse_page(headers: &HeaderMap, body: &[u8]) -> Result<DeliveryPage, HookError> {
    let bad =
        |what: String| HookError::Transient { reason: format!("unreadable delivery list: {what}"), retry_after: None };
    let wire: Vec<WireDelivery> = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let mut deliveries = Vec::with_capacity(wire.len());
    for w in wire {
        let at = chrono::DateTime::parse_from_rfc3339(&w.delivered_at)
            .map_err(|e| bad(format!("delivered_at {:?} of delivery {}: {e}", w.delivered_at, w.id)))?;
        deliveries.push(HookDelivery {
            id: w.id,
            guid: w.guid,
            delivered_at_ms: at.timestamp_millis(),
            redelivery: w.redelivery,
            status: w.status.unwrap_or_default(),
            status_code: w.status_code.unwrap_or(0),
            event: w.event.unwrap_or_default(),
            action: w.action,
            installation_id: w.installation_id,
            repository_id: w.repository_id,
        });
    }
    let next_cursor = headers.get(http::header::LINK).and_then(|v| v.to_str().ok()).and_then(next_cursor);
    Ok(DeliveryPage { deliveries, next_cursor })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn next_cursor_is_read_from_the_link_header() {
        let link = "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_12077215967>; rel=\"next\"";
        assert_eq!(next_cursor(link).as_deref(), Some("v1_12077215967"));
        let two = "<https://x/app/hook/deliveries?cursor=a%2Bb&per_page=2>; rel=\"next\", <https://x/?cursor=z>; rel=\"first\"";
        assert_eq!(next_cursor(two).as_deref(), Some("a+b"));
        assert_eq!(next_cursor("<https://x/?cursor=z>; rel=\"first\""), None);
        assert_eq!(list_uri(100, Some("a+b")), "/app/hook/deliveries?per_page=100&cursor=a%2Bb");
        assert_eq!(list_uri(30, None), "/app/hook/deliveries?per_page=30");
    }

    #[test]
    fn a_page_is_parsed_from_githubs_shape() {
        let body = br#"[{"id": 12, "guid": "0b989ba4-242f-11e5-81e1-c7b6966d2516",
            "delivered_at": "2019-06-03T00:57:16Z", "redelivery": false, "duration": 0.27,
            "status": "OK", "status_code": 200, "event": "issues", "action": "opened",
            "installation_id": 123, "repository_id": 456, "throttled_at": null},
            {"id": 11, "guid": "g2", "delivered_at": "2019-06-03T00:57:10Z", "redelivery": true,
            "duration": 10.0, "status": "failed to connect", "status_code": 0, "event": "push",
            "action": null, "installation_id": null, "repository_id": null}]"#;
        let page = parse_page(&HeaderMap::new(), body).unwrap();
        assert_eq!(page.next_cursor, None);
        assert_eq!(page.deliveries.len(), 2);
        let d = &page.deliveries[0];
        assert_eq!((d.id, d.status_code, d.delivered()), (12, 200, true));
        assert_eq!(d.delivered_at_ms, 1_559_523_436_000);
        assert_eq!(d.action.as_deref(), Some("opened"));
        assert!(!page.deliveries[1].delivered() && page.deliveries[1].redelivery);
        assert!(matches!(parse_page(&HeaderMap::new(), b"{}"), Err(HookError::Transient { .. })));
    }

    #[test]
    fn refusals_name_the_credentials_and_rate_limits_stay_transient() {
        let e = hook_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), br#"{"message":"Bad credentials"}"#);
        assert!(matches!(e, HookError::Refused { status: 401, .. }), "{e:?}");
        assert!(e.to_string().contains("CRCR_GITHUB_APP_ID"), "{e}");
        let e = hook_error(StatusCode::FORBIDDEN, &HeaderMap::new(), br#"{"message":"Forbidden"}"#);
        assert!(matches!(e, HookError::Refused { status: 403, .. }), "{e:?}");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let e = hook_error(StatusCode::FORBIDDEN, &h, br#"{"message":"secondary rate limit"}"#);
        assert_eq!(
            e,
            HookError::Transient {
                reason: "403 secondary rate limit".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(hook_error(StatusCode::NOT_FOUND, &HeaderMap::new(), b"{}"), HookError::NotFound(_)));
        assert!(matches!(
            hook_error(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), b"{}"),
            HookError::Rejected { status: 422, .. }
        ));
        assert!(matches!(hook_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b""), HookError::Transient { .. }));
    }
}
