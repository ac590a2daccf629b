//! The `repository_dispatch` request body sent to each downstream
//! (CONTRACTS.md "repository_dispatch output"):
//! `{"event_type": E, "client_payload": {"event_type": E, "delivery_id": D, "payload": P}}`.
//!
//! GitHub's limits on that call (REST docs, "Create a repository dispatch
//! event"): `event_type` at most 100 characters; `client_payload` at most 10
//! top-level keys and at most 65,535 characters of JSON. A real PyTorch
//! `pull_request` payload can exceed that; then `payload` is replaced by the
//! fields downstream workflows read ([`KEEP`]) and
//! `client_payload.payload_trimmed` is `true`.

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

/// A ready `repository_dispatch` body, serialized once for every target
/// of a delivery (a 28 KB `pull_request` payload re-serialized per target
/// was the dispatcher's largest CPU cost after SQLite).
#[derive(Debug, Clone)]
pub struct DispatchBody {
    /// `{"event_type": E, "client_payload": {...}}` as sent.
    pub body: Box<serde_json::value::RawValue>,
    /// The payload was replaced by its trimmed form.
    pub trimmed: bool,
}

impl DispatchBody {
    /// The body parsed back (tests and tools; the dispatcher sends [`DispatchBody::body`]).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.body.get()).expect("a dispatch body is JSON")
    }

    /// `{"event_type": event, "client_payload": <client_payload>}`, the
    /// client payload already serialized.
    fn new(event: &str, client_payload: &str, trimmed: bool) -> DispatchBody {
        let event = serde_json::to_string(event).expect("strings serialize");
        let body = format!(r#"{{"event_type":{event},"client_payload":{client_payload}}}"#);
        DispatchBody {
            body: serde_json::value::RawValue::from_string(body).expect("two JSON values in an object are JSON"),
            trimmed,
        }
    }
}

/// Builds the body for `event` / `delivery_id` / the upstream `payload`,
/// trimming when the full payload would break GitHub's limits.
pub fn build(event: &str, delivery_id: &str, payload: &Value) -> Result<DispatchBody, PayloadError> {
    if event.chars().count() > MAX_EVENT_TYPE_CHARS {
        return Err(PayloadError::EventTypeTooLong(event.to_owned()));
    }
    // `{"delivery_id":D,"event_type":E,"payload":P}`: the bytes `json!`
    // would write (keys in order), without copying the payload's tree.
    let full = format!(
        r#"{{"delivery_id":{},"event_type":{},"payload":{}}}"#,
        serde_json::to_string(delivery_id).expect("strings serialize"),
        serde_json::to_string(event).expect("strings serialize"),
        serde_json::to_string(payload).expect("JSON values serialize"),
    );
    if github_chars(&full) <= MAX_CLIENT_PAYLOAD_CHARS {
        return Ok(DispatchBody::new(event, &full, false));
    }
    let client_payload = json!({
        "event_type": event,
        "delivery_id": delivery_id,
        "payload": trim(payload),
        "payload_trimmed": true,
    });
    let client_payload = serde_json::to_string(&client_payload).expect("JSON values serialize");
    let n = github_chars(&client_payload);
    if n > MAX_CLIENT_PAYLOAD_CHARS {
        return Err(PayloadError::TooLargeAfterTrim(n));
    }
    Ok(DispatchBody::new(event, &client_payload, true))
}

/// Characters of `v`'s JSON as GitHub measures it: GitHub (Rails) encodes
/// the payload with `<`, `>`, `&`, U+2028 and U+2029 escaped as `\uXXXX` (6
/// characters each) and compares the length in characters, not bytes.
pub fn json_chars(v: &Value) -> usize {
    github_chars(&serde_json::to_string(v).expect("JSON values serialize"))
}

/// [`json_chars`] of JSON already serialized (by serde_json, which leaves
/// `<`, `>`, `&`, U+2028 and U+2029 as they are).
fn github_chars(json: &str) -> usize {
    json.chars()
        .map(|c| match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
            _ => 1,
        })
        .sum()
}

/// Paths kept in a trimmed payload, each as JSON object keys from the
/// payload's root: what downstream workflows read. The list is issue 11's
/// ("Drop-in for PyTorch": `pull_request.merged` and `state` dropped broke
/// pytorch/crcr-test, whose workflows branch on `merged`), the fields
/// pytorch/crcr-test's workflows and validators read
/// (`fixtures/downstream/`, checked by the tests below), and CONTRACTS.md's.
/// Every value kept is small: GitHub bounds titles at 256 characters, and
/// the rest are numbers, booleans, SHAs, refs, logins and URLs.
///
/// A missing field stays missing; a `null` met on the way (a deleted
/// fork's `head.repo`) is kept as `null`. `pull_request.labels` is kept
/// apart, with only each label's `name` (see [`trim`]).
pub const KEEP: &[&[&str]] = &[
    &["action"],
    &["number"],
    &["pull_request", "number"],
    &["pull_request", "state"],
    &["pull_request", "merged"],
    &["pull_request", "merged_at"],
    &["pull_request", "merge_commit_sha"],
    &["pull_request", "draft"],
    &["pull_request", "title"],
    &["pull_request", "html_url"],
    &["pull_request", "head", "sha"],
    &["pull_request", "head", "ref"],
    &["pull_request", "head", "repo", "full_name"],
    &["pull_request", "base", "sha"],
    &["pull_request", "base", "ref"],
    &["pull_request", "user", "login"],
    &["repository", "full_name"],
    &["sender", "login"],
    // push (`before` / `after` also on pull_request.synchronize)
    &["ref"],
    &["before"],
    &["after"],
    &["created"],
    &["deleted"],
    &["forced"],
    &["base_ref"],
    &["head_commit", "id"],
];

/// The trimmed form of an upstream payload: the [`KEEP`] paths that the
/// payload has, and `pull_request.labels` as `[{"name": ...}]` when it has
/// labels. Everything else (bodies, commit lists, URLs of other resources)
/// is dropped.
pub fn trim(payload: &Value) -> Value {
    let mut out = Value::Object(Map::new());
    for path in KEEP {
        if let Some((depth, v)) = find_path(payload, path) {
            set_path(&mut out, &path[..depth], v.clone());
        }
    }
    if let Some(labels) = payload.pointer("/pull_request/labels").and_then(Value::as_array) {
        let names: Vec<Value> =
            labels.iter().filter_map(|l| l.get("name").cloned()).map(|name| json!({ "name": name })).collect();
        set_path(&mut out, &["pull_request", "labels"], Value::Array(names));
    }
    out
}

/// The value at `path`, with the number of keys walked: all of them, or
/// fewer when a `null` stands on the way (then that `null`).
fn find_path<'a>(v: &'a Value, path: &[&str]) -> Option<(usize, &'a Value)> {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        if cur.is_null() && i > 0 {
            return Some((i, cur));
        }
        cur = cur.get(k)?;
    }
    Some((path.len(), cur))
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

    const SYNC: &str = include_str!("../../../fixtures/webhooks/pull_request.synchronize.json");
    const PUSH: &str = include_str!("../../../fixtures/webhooks/push.json");

    #[test]
    fn small_payload_is_sent_whole() {
        let p: Value = serde_json::from_str(SYNC).unwrap();
        let b = build("pull_request", "d-1", &p).unwrap();
        assert!(!b.trimmed);
        let body = b.value();
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        assert_eq!(body["event_type"], "pull_request");
        assert_eq!(body["client_payload"]["event_type"], "pull_request");
        assert_eq!(body["client_payload"]["payload"], p);
        assert_eq!(body["client_payload"]["delivery_id"], "d-1");
        assert_eq!(body["client_payload"].as_object().unwrap().len(), 3);
    }

    #[test]
    fn the_body_is_what_serializing_its_value_writes() {
        for (event, text) in [("pull_request", SYNC), ("push", PUSH), ("x\"<y>\u{2028}", r#"{"a": "\u00e9"}"#)] {
            let p: Value = serde_json::from_str(text).unwrap();
            let b = build(event, "d-\"1", &p).unwrap();
            let client_payload = json!({"event_type": event, "delivery_id": "d-\"1", "payload": p});
            let expected = format!(
                r#"{{"event_type":{},"client_payload":{}}}"#,
                serde_json::to_string(event).unwrap(),
                serde_json::to_string(&client_payload).unwrap()
            );
            assert_eq!(b.body.get(), expected);
        }
    }

    #[test]
    fn padded_real_payload_is_trimmed_within_limits_and_keeps_what_downstream_reads() {
        let mut p: Value = serde_json::from_str(SYNC).unwrap();
        // A long PR description, as real PyTorch PRs have: non-ASCII to check character counting.
        p["pull_request"]["body"] = Value::String("é".repeat(70_000));
        let b = build("pull_request", "d-2", &p).unwrap();
        assert!(b.trimmed);
        let body = b.value();
        let cp = &body["client_payload"];
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

    /// One step of a path as GitHub Actions expressions write it:
    /// `.key`, `.*` / `[*]` (every element), `[0]`, `['key']`.
    #[derive(Debug, Clone, PartialEq)]
    enum Seg {
        Key(String),
        Each,
        Index(usize),
    }

    fn show(segs: &[Seg]) -> String {
        segs.iter()
            .map(|s| match s {
                Seg::Key(k) => format!(".{k}"),
                Seg::Each => ".*".to_owned(),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect()
    }

    /// Every `client_payload.payload.<path>` in the files of
    /// `fixtures/downstream/` (what pytorch/crcr-test reads; any workflow
    /// file put there is read the same way), as (file, path).
    fn downstream_reads() -> Vec<(String, Vec<Seg>)> {
        let expr = regex::Regex::new(
            r#"client_payload\.payload((?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\*)|\[(?:\d+|\*|'[^']*'|"[^"]*")\])+)"#,
        )
        .unwrap();
        let step =
            regex::Regex::new(r#"\.([A-Za-z_][A-Za-z0-9_-]*)|\.\*|\[\*\]|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]"#)
                .unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/downstream");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for c in expr.captures_iter(&text) {
                let segs = step
                    .captures_iter(&c[1])
                    .map(|s| match (s.get(1), s.get(2), s.get(3).or(s.get(4))) {
                        (Some(k), _, _) | (_, _, Some(k)) => Seg::Key(k.as_str().to_owned()),
                        (_, Some(i), _) => Seg::Index(i.as_str().parse().unwrap()),
                        _ => Seg::Each,
                    })
                    .collect();
                out.push((f.file_name().unwrap().to_string_lossy().into_owned(), segs));
            }
        }
        out
    }

    /// The values at `segs` as GitHub's expressions find them (`.*` over
    /// every element); `None` when the path is not there.
    fn values_at(v: &Value, segs: &[Seg]) -> Option<Vec<Value>> {
        let Some((first, rest)) = segs.split_first() else { return Some(vec![v.clone()]) };
        match first {
            Seg::Key(k) => values_at(v.get(k)?, rest),
            Seg::Index(i) => values_at(v.get(i)?, rest),
            Seg::Each => {
                let items: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    Value::Object(o) => o.values().collect(),
                    _ => return None,
                };
                Some(items.into_iter().filter_map(|x| values_at(x, rest)).flatten().collect())
            }
        }
    }

    /// `p` with its description (pull_request) or head commit message
    /// (push) made long enough to break GitHub's 65,535-character limit.
    fn too_big(mut p: Value) -> Value {
        let long = Value::String("é".repeat(70_000));
        if p.get("pull_request").is_some() {
            p["pull_request"]["body"] = long;
        } else {
            p["head_commit"]["message"] = long;
        }
        p
    }

    /// The trimmed `payload` GitHub gets for `p` (asserting it was trimmed,
    /// within GitHub's limits).
    fn sent_trimmed(event: &str, p: &Value) -> Value {
        let b = build(event, "d-trim", p).unwrap();
        assert!(b.trimmed, "{event} payload over the limit is trimmed");
        let body = b.value();
        let cp = &body["client_payload"];
        assert!(json_chars(cp) <= MAX_CLIENT_PAYLOAD_CHARS);
        assert!(cp.as_object().unwrap().len() <= MAX_CLIENT_PAYLOAD_KEYS);
        cp["payload"].clone()
    }

    /// A landed PR as GitHub sends it: the real `closed` fixture with
    /// `merged: true` (and what goes with it), over the size limit.
    fn merged_closed_too_big() -> Value {
        let mut p: Value =
            serde_json::from_str(include_str!("../../../fixtures/webhooks/pull_request.closed.json")).unwrap();
        let pr = &mut p["pull_request"];
        pr["merged"] = json!(true);
        pr["merged_at"] = pr["closed_at"].clone();
        pr["merged_by"] = pr["user"].clone();
        pr["mergeable"] = Value::Null;
        pr["labels"].as_array_mut().unwrap().push(json!({"id": 7, "name": "Merged", "color": "fff"}));
        let p = too_big(p);
        assert!(json_chars(&p) > MAX_CLIENT_PAYLOAD_CHARS);
        p
    }

    /// The real fixtures that are dispatched (every `pull_request` one and
    /// `push`), each over the limit, and the landed PR: (name, event, payload).
    fn big_fixtures() -> Vec<(String, &'static str, Value)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/webhooks");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pull_request.") || n == "push.json")
            .collect();
        names.sort();
        let mut out: Vec<(String, &'static str, Value)> = names
            .into_iter()
            .map(|n| {
                let p: Value = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{n}")).unwrap()).unwrap();
                let event = if n == "push.json" { "push" } else { "pull_request" };
                (n, event, too_big(p))
            })
            .collect();
        out.push(("pull_request.closed.json, merged".into(), "pull_request", merged_closed_too_big()));
        out
    }

    #[test]
    fn trimmed_payloads_keep_every_field_crcr_test_reads() {
        let reads = downstream_reads();
        let paths: Vec<String> = reads.iter().map(|(_, s)| show(s)).collect();
        for must in [".pull_request.merged", ".pull_request.labels.*.name", ".deleted", ".after"] {
            assert!(paths.iter().any(|p| p == must), "fixtures/downstream/ read {must}: {paths:?}");
        }
        let fixtures = big_fixtures();
        let mut unused = Vec::new();
        for (file, segs) in &reads {
            let mut seen = false;
            for (name, event, p) in &fixtures {
                let full = values_at(p, segs);
                let trimmed = values_at(&sent_trimmed(event, p), segs);
                if trimmed != full {
                    let cut = |v: &Option<Vec<Value>>| format!("{v:?}").chars().take(300).collect::<String>();
                    panic!(
                        "{file} reads payload{}: the trimmed {name} has {} where the full one has {}",
                        show(segs),
                        cut(&trimmed),
                        cut(&full)
                    );
                }
                seen |= full.is_some();
            }
            if !seen {
                unused.push(show(segs));
            }
        }
        assert!(
            unused.is_empty(),
            "paths read downstream that no fixture has (the test proves nothing for them): {unused:?}"
        );
    }

    #[test]
    fn a_landed_pr_over_the_limit_still_reads_as_merged() {
        let t = sent_trimmed("pull_request", &merged_closed_too_big());
        assert_eq!(t["action"], "closed");
        assert_eq!(t["pull_request"]["state"], "closed");
        assert_eq!(t["pull_request"]["merged"], true);
        assert_eq!(t["pull_request"]["merged_at"], "2019-05-15T15:21:18Z");
        assert_eq!(t["pull_request"]["merge_commit_sha"], "c4295bd74fb0f4fda03689c3df3f2803b658fd85");
        // crcr-test's `cancel-workflow` job (abandoned PRs) runs when
        // `merged != true` and no `Merged` label; a landed PR must not look abandoned.
        let names = values_at(
            &t,
            &[Seg::Key("pull_request".into()), Seg::Key("labels".into()), Seg::Each, Seg::Key("name".into())],
        );
        assert_eq!(names, Some(vec![json!("bug"), json!("Merged")]));
    }

    /// Issue 11's list, field by field, on real payloads over the limit.
    #[test]
    fn trimmed_payloads_keep_issue_11_fields() {
        let pr_fields = [
            "/action",
            "/number",
            "/pull_request/number",
            "/pull_request/state",
            "/pull_request/merged",
            "/pull_request/merged_at",
            "/pull_request/merge_commit_sha",
            "/pull_request/draft",
            "/pull_request/html_url",
            "/pull_request/head/ref",
            "/pull_request/head/sha",
            "/pull_request/head/repo/full_name",
            "/pull_request/base/ref",
            "/pull_request/base/sha",
            "/pull_request/user/login",
            "/repository/full_name",
            "/sender/login",
        ];
        let push_fields = [
            "/ref",
            "/before",
            "/after",
            "/created",
            "/deleted",
            "/forced",
            "/head_commit/id",
            "/repository/full_name",
            "/sender/login",
        ];
        let sync: Value = serde_json::from_str(SYNC).unwrap();
        let push: Value = serde_json::from_str(PUSH).unwrap();
        for (event, p, fields) in [
            ("pull_request", merged_closed_too_big(), &pr_fields[..]),
            ("pull_request", too_big(sync), &pr_fields[..]),
            ("push", too_big(push), &push_fields[..]),
        ] {
            let t = sent_trimmed(event, &p);
            for ptr in fields {
                assert!(p.pointer(ptr).is_some(), "{ptr} in the fixture");
                assert_eq!(t.pointer(ptr), p.pointer(ptr), "{event}: {ptr}");
            }
            if event == "pull_request" {
                let names = |v: &Value| -> Vec<Value> {
                    v["pull_request"]["labels"].as_array().unwrap().iter().map(|l| l["name"].clone()).collect()
                };
                assert!(!names(&p).is_empty());
                assert_eq!(names(&t), names(&p), "labels[].name");
            }
            assert!(t.pointer("/pull_request/body").is_none() && t.pointer("/head_commit/message").is_none());
        }
    }

    #[test]
    fn a_null_on_the_way_is_kept_as_null() {
        // A PR from a fork that was deleted: GitHub sends `head.repo: null`.
        let p = json!({"pull_request": {"head": {"repo": null, "sha": "abc", "ref": "f"}}});
        assert_eq!(trim(&p), json!({"pull_request": {"head": {"repo": null, "sha": "abc", "ref": "f"}}}));
    }

    #[test]
    fn limits_that_cannot_be_met_are_errors() {
        let long = "e".repeat(101);
        assert_eq!(build(&long, "d", &json!({})).unwrap_err(), PayloadError::EventTypeTooLong(long));
        let p = json!({"pull_request": {"labels": (0..5000).map(|i| json!({"name": format!("label-{i:06}")})).collect::<Vec<_>>()}});
        assert!(matches!(build("pull_request", "d", &p), Err(PayloadError::TooLargeAfterTrim(_))));
    }
}
