//! The `repository_dispatch` request body sent to each downstream
//! (CONTRACTS.md "repository_dispatch output"):
//! `{"event_type": E, "client_payload": {"event_type": E, "delivery_id": D, "payload": P}}`.
//!
//! GitHub's limits on that call (REST docs, "Create a repository dispatch
//! event"): `event_type` at most 100 characters; `client_payload` at most 10
//! top-level keys and at most 65,535 characters of JSON. A real PyTorch
//! `pull_request` payload can exceed that; then `payload` is replaced by the
//! fields downstream workflows read and `client_payload.payload_trimmed` is
//! `true`.

use serde_json::{json, Map, Value};

/// GitHub's limit on the length of `event_type`, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 100;
/// GitHub's limit on the JSON of `client_payload`, in characters.
pub const MAX_CLIENT_PAYLOAD_CHARS: usize = 65_535;
/// GitHub's limit on top-level keys of `client_payload`.
pub const MAX_CLIENT_PAYLOAD_KEYS: usize = 10;

/// A dispatch body that cannot be made to fit GitHub's limits (permanent).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("event_type {0:?} is longer than 100 characters")]
    EventTypeTooLong(String),
    #[error("client_payload is {0} characters even after trimming (limit 65,535)")]
    TooLargeAfterTrim(usize),
}

/// A ready `repository_dispatch` body.
#[derive(Debug, Clone)]
pub struct DispatchBody {
    pub body: Value,
    /// The payload was replaced by its trimmed form.
    pub trimmed: bool,
}

/// Builds the body for `event` / `delivery_id` / the upstream `payload`,
/// trimming when the full payload would break GitHub's limits.
pub fn build(event: &str, delivery_id: &str, payload: &Value) -> Result<DispatchBody, PayloadError> {
    if event.chars().count() > MAX_EVENT_TYPE_CHARS {
        return Err(PayloadError::EventTypeTooLong(event.to_owned()));
    }
    let full = json!({"event_type": event, "delivery_id": delivery_id, "payload": payload});
    if json_chars(&full) <= MAX_CLIENT_PAYLOAD_CHARS {
        return Ok(DispatchBody { body: json!({"event_type": event, "client_payload": full}), trimmed: false });
    }
    let client_payload = json!({
        "event_type": event,
        "delivery_id": delivery_id,
        "payload": trim(payload),
        "payload_trimmed": true,
    });
    let n = json_chars(&client_payload);
    if n > MAX_CLIENT_PAYLOAD_CHARS {
        return Err(PayloadError::TooLargeAfterTrim(n));
    }
    Ok(DispatchBody { body: json!({"event_type": event, "client_payload": client_payload}), trimmed: true })
}

/// Characters of `v`'s JSON as GitHub measures it: GitHub (Rails) encodes
/// the payload with `<`, `>`, `&`, U+2028 and U+2029 escaped as `\uXXXX` (6
/// characters each) and compares the length in characters, not bytes.
pub fn json_chars(v: &Value) -> usize {
    let s = serde_json::to_string(v).expect("JSON values serialize");
    s.chars()
        .map(|c| match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
            _ => 1,
        })
        .sum()
}

/// Paths kept in a trimmed payload: what downstream workflows read
/// (CONTRACTS.md). Missing fields stay missing; labels keep only `name`.
const KEEP: &[&[&str]] = &[
    &["action"],
    &["number"],
    &["pull_request", "number"],
    &["pull_request", "head", "sha"],
    &["pull_request", "head", "ref"],
    &["pull_request", "head", "repo", "full_name"],
    &["pull_request", "base", "sha"],
    &["pull_request", "base", "ref"],
    &["pull_request", "user", "login"],
    &["pull_request", "html_url"],
    &["pull_request", "draft"],
    &["repository", "full_name"],
    &["ref"],
    &["before"],
    &["after"],
    &["head_commit", "id"],
];

/// The trimmed form of an upstream payload.
pub fn trim(payload: &Value) -> Value {
    let mut out = Value::Object(Map::new());
    for path in KEEP {
        if let Some(v) = get_path(payload, path) {
            set_path(&mut out, path, v.clone());
        }
    }
    if let Some(labels) = payload.pointer("/pull_request/labels").and_then(Value::as_array) {
        let names: Vec<Value> =
            labels.iter().filter_map(|l| l.get("name").cloned()).map(|name| json!({ "name": name })).collect();
        set_path(&mut out, &["pull_request", "labels"], Value::Array(names));
    }
    out
}

fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(out: &mut Value, path: &[&str], v: Value) {
    let mut cur = out;
    for k in &path[..path.len() - 1] {
        cur = cur
            .as_object_mut()
            .expect("built from objects")
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    cur.as_object_mut().expect("built from objects").insert(path[path.len() - 1].to_string(), v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: &str = include_str!("../../fixtures/webhooks/pull_request.synchronize.json");
    const PUSH: &str = include_str!("../../fixtures/webhooks/push.json");

    #[test]
    fn small_payload_is_sent_whole() {
        let p: Value = serde_json::from_str(SYNC).unwrap();
        let b = build("pull_request", "d-1", &p).unwrap();
        assert!(!b.trimmed);
        assert_eq!(b.body["event_type"], "pull_request");
        assert_eq!(b.body["client_payload"]["payload"], p);
        assert_eq!(b.body["client_payload"]["delivery_id"], "d-1");
        assert_eq!(b.body["client_payload"].as_object().unwrap().len(), 3);
    }

    #[test]
    fn padded_real_payload_is_trimmed_within_limits_and_keeps_what_downstream_reads() {
        let mut p: Value = serde_json::from_str(SYNC).unwrap();
        // A long PR description, as real PyTorch PRs have: non-ASCII to check character counting.
        p["pull_request"]["body"] = Value::String("é".repeat(70_000));
        let b = build("pull_request", "d-2", &p).unwrap();
        assert!(b.trimmed);
        let cp = &b.body["client_payload"];
        assert!(json_chars(cp) <= MAX_CLIENT_PAYLOAD_CHARS);
        assert!(cp.as_object().unwrap().len() <= MAX_CLIENT_PAYLOAD_KEYS);
        assert_eq!(cp["payload_trimmed"], true);
        let t = &cp["payload"];
        for ptr in [
            "/action",
            "/number",
            "/pull_request/number",
            "/pull_request/head/sha",
            "/pull_request/head/ref",
            "/pull_request/head/repo/full_name",
            "/pull_request/base/sha",
            "/pull_request/base/ref",
            "/pull_request/user/login",
            "/pull_request/html_url",
            "/pull_request/draft",
            "/repository/full_name",
        ] {
            assert_eq!(t.pointer(ptr), p.pointer(ptr), "{ptr}");
            assert!(t.pointer(ptr).is_some(), "{ptr} present in fixture");
        }
        assert!(t.pointer("/pull_request/body").is_none());
    }

    #[test]
    fn trimmed_push_keeps_refs() {
        let p: Value = serde_json::from_str(PUSH).unwrap();
        let t = trim(&p);
        for ptr in ["/ref", "/before", "/after", "/head_commit/id", "/repository/full_name"] {
            assert_eq!(t.pointer(ptr), p.pointer(ptr), "{ptr}");
        }
    }

    #[test]
    fn html_characters_count_as_githubs_escapes() {
        assert_eq!(json_chars(&json!("a<b")), 2 + 1 + 6 + 1);
        assert_eq!(json_chars(&json!("é")), 3);
        // A body of '<' that fits as plain JSON but not as GitHub counts it is trimmed.
        let p = json!({"pull_request": {"body": "<".repeat(20_000)}});
        assert!(build("pull_request", "d", &p).unwrap().trimmed);
    }

    #[test]
    fn labels_keep_names_only() {
        let p = json!({"pull_request": {"labels": [{"name": "ciflow/crcr/gpu", "color": "fff", "id": 1}]}});
        assert_eq!(trim(&p)["pull_request"]["labels"], json!([{"name": "ciflow/crcr/gpu"}]));
    }

    #[test]
    fn limits_that_cannot_be_met_are_errors() {
        let long = "e".repeat(101);
        assert_eq!(build(&long, "d", &json!({})).unwrap_err(), PayloadError::EventTypeTooLong(long));
        let p = json!({"pull_request": {"labels": (0..5000).map(|i| json!({"name": format!("label-{i:06}")})).collect::<Vec<_>>()}});
        assert!(matches!(build("pull_request", "d", &p), Err(PayloadError::TooLargeAfterTrim(_))));
    }
}
