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
    #[error("payload is not JSON: {0}")]
    NotJson(String),
}

/// A ready `repository_dispatch` body, serialized once for every target
/// of a delivery (a 28 KB `pull_request` payload re-serialized per target
/// was the dispatcher's largest CPU cost after SQLite).
#[derive(Debug, Clone)]
pub struct DispatchBody {
    /// `{"event_type": E, "client_payload": {...}}` as sent (UTF-8 JSON),
    /// shared by every target's request: a clone copies nothing.
    json: bytes::Bytes,
    /// The payload was replaced by its trimmed form.
    pub trimmed: bool,
}

impl DispatchBody {
    /// The body's JSON text.
    pub fn json(&self) -> &str {
        std::str::from_utf8(&self.json).expect("a dispatch body is built from a String")
    }

    /// The body's JSON as a request body: the same bytes, not a copy.
    pub fn bytes(&self) -> bytes::Bytes {
        self.json.clone()
    }

    /// The body parsed back (tests and tools; the dispatcher sends [`DispatchBody::bytes`]).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.json()).expect("a dispatch body is JSON")
    }

    /// `{"event_type": event, "client_payload": <client_payload>}`, the
    /// client payload already serialized (by serde_json, or the payload's
    /// text [`github_json_len`] read as JSON).
    fn new(event: &str, client_payload: &str, trimmed: bool) -> DispatchBody {
        let event = serde_json::to_string(event).expect("strings serialize");
        let body = format!(r#"{{"event_type":{event},"client_payload":{client_payload}}}"#);
        DispatchBody { json: bytes::Bytes::from(body), trimmed }
    }
}

/// Builds the body for `event` / `delivery_id` / the upstream `payload`,
/// trimming when the full payload would break GitHub's limits
/// ([`build_from_text`] of its compact JSON).
pub fn build(event: &str, delivery_id: &str, payload: &Value) -> Result<DispatchBody, PayloadError> {
    build_from_text(event, delivery_id, &serde_json::to_string(payload).expect("JSON values serialize"))
}

/// [`build`] from the payload's JSON text, without parsing it into a tree
/// when it fits: the body then carries the text as received (GitHub parses
/// `client_payload` and keeps its own serialization, so downstream sees the
/// same as from the parsed value), and its size is GitHub's count of that
/// parsed value ([`github_json_len`]). A payload past the limit is parsed
/// and replaced by its [`trim`]. Errors: [`PayloadError`], or `NotJson`
/// when `payload_json` is not JSON.
pub fn build_from_text(event: &str, delivery_id: &str, payload_json: &str) -> Result<DispatchBody, PayloadError> {
    if event.chars().count() > MAX_EVENT_TYPE_CHARS {
        return Err(PayloadError::EventTypeTooLong(event.to_owned()));
    }
    let payload_chars = github_json_len(payload_json).map_err(|e| PayloadError::NotJson(e.to_string()))?.chars;
    let (delivery_id_json, event_json) = (
        serde_json::to_string(delivery_id).expect("strings serialize"),
        serde_json::to_string(event).expect("strings serialize"),
    );
    // `{"delivery_id":D,"event_type":E,"payload":P}`: the keys in the order
    // `json!` writes them, P as sent.
    let head_chars = r#"{"delivery_id":,"event_type":,"payload":}"#.len()
        + github_chars(&delivery_id_json)
        + github_chars(&event_json);
    if head_chars + payload_chars <= MAX_CLIENT_PAYLOAD_CHARS {
        let full =
            format!(r#"{{"delivery_id":{delivery_id_json},"event_type":{event_json},"payload":{payload_json}}}"#);
        return Ok(DispatchBody::new(event, &full, false));
    }
    let payload: Value = serde_json::from_str(payload_json).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let client_payload = json!({
        "event_type": event,
        "delivery_id": delivery_id,
        "payload": trim(&payload),
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

/// The length GitHub compares with 65,535 for a `client_payload`: the
/// characters of its compact JSON as Rails' `to_json` writes it after
/// parsing the request. Rails escapes `<`, `>`, `&`, U+2028 and U+2029
/// inside strings as `\uXXXX` (six characters instead of one), so each of
/// those counts 6; `"`, `\\` and the control characters count as their JSON
/// escapes (`\n`: 2, `\u001f`: 6); a key given twice counts once, with its
/// last value, as the parsed object keeps it.
///
/// Read from the JSON text without building the value: the dispatcher
/// measures every payload it forwards, and the GitHub stand-in every
/// `client_payload` it receives (ten 28 KB payloads per webhook under
/// load). Errors: the text is not JSON.
pub fn github_json_len(text: &str) -> Result<JsonShape, serde_json::Error> {
    match Scanner::shape_of(text) {
        Some(shape) => Ok(shape),
        // Anything the scanner does not take (invalid JSON, a float, a
        // `\u` escape, a repeated key, ...) is read by serde_json, which
        // also gives the error.
        None => serde_json::from_str::<JsonShape>(text),
    }
}

/// The common case of [`github_json_len`] in one pass over the bytes:
/// objects, arrays, strings (with the escapes `\"`, `\\`, `\/`, `\b`, `\f`,
/// `\n`, `\r`, `\t`), integers of up to 18 digits, `true`, `false` and
/// `null`, at most [`Scanner::MAX_DEPTH`] deep. It gives up (`None`) on
/// anything else: a `\u` escape, a float, a longer integer, `-0`, a key
/// with an escape or given twice, or text that is not JSON. What it does
/// take, it counts as serde_json's reading does (a tenth of its time on a
/// 24 KB pull_request payload: `cargo bench -p crcr-bench --bench payload`).
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
    /// The keys of the objects being read, innermost last.
    keys: Vec<&'a [u8]>,
    /// The hashes of one object's keys, kept between objects.
    hashes: Vec<u64>,
}

/// What a byte of a string is to the count: [`value_byte_chars`] in a
/// string's value, [`Scanner::string`] in its JSON text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StrByte {
    /// Printable ASCII other than the ones below, or a UTF-8 lead byte: 1.
    One,
    /// A UTF-8 continuation byte: 0 (its character was counted).
    Continuation,
    /// `<`, `>` or `&`: Rails writes `\u003c` and so on, 6.
    Html,
    /// 0xE2: U+2028 and U+2029 (E2 80 A8 / A9) count 6, others 1.
    E2,
    Quote,
    Backslash,
    /// A control character: in JSON text only escaped.
    Control,
}

/// Whether any of the eight bytes of `x` is not [`StrByte::One`] ASCII: a
/// control character, `"`, `\\`, `<`, `>`, `&`, or a byte past 0x7F
/// (bit tricks from "Bit Twiddling Hacks", "Determine if a word has a
/// byte less than n" and "... equal to n").
fn has_special_byte(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let equal = |c: u8| zero_byte(x ^ (ONES * u64::from(c)));
    (x & HIGH) | control | equal(b'"') | equal(b'\\') | equal(b'<') | equal(b'>') | equal(b'&') != 0
}

/// FNV-1a, 64 bits: equal keys hash alike ([`Scanner::object`]).
fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

const STR_BYTES: [StrByte; 256] = {
    let mut t = [StrByte::One; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            0x00..=0x1f => StrByte::Control,
            b'"' => StrByte::Quote,
            b'\\' => StrByte::Backslash,
            b'<' | b'>' | b'&' => StrByte::Html,
            0x80..=0xbf => StrByte::Continuation,
            0xe2 => StrByte::E2,
            _ => StrByte::One,
        };
        i += 1;
    }
    t
};

impl<'a> Scanner<'a> {
    /// Deepest nesting taken; serde_json refuses past 128.
    const MAX_DEPTH: usize = 100;

    fn shape_of(text: &'a str) -> Option<JsonShape> {
        let mut s = Scanner { text: text.as_bytes(), at: 0, keys: Vec::new(), hashes: Vec::new() };
        s.skip_whitespace();
        let shape = s.value(0)?;
        s.skip_whitespace();
        (s.at == s.text.len()).then_some(shape)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<JsonShape> {
        let scalar = |chars| Some(JsonShape { chars, properties: None });
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => scalar(self.string()?.0),
            b't' => scalar(self.literal(b"true")?),
            b'f' => scalar(self.literal(b"false")?),
            b'n' => scalar(self.literal(b"null")?),
            b'-' | b'0'..=b'9' => scalar(self.integer()?),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<usize> {
        self.text[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            word.len()
        })
    }

    /// An integer as serde_json writes it back: the text itself, which
    /// JSON allows no leading zero or `+` in.
    fn integer(&mut self) -> Option<usize> {
        let start = self.at;
        let digits_from = start + usize::from(self.text[start] == b'-');
        let digits = self.text[digits_from..].iter().take_while(|b| b.is_ascii_digit()).count();
        let end = digits_from + digits;
        let leading_zero = self.text.get(digits_from) == Some(&b'0') && (digits > 1 || digits_from > start);
        if digits == 0 || digits > 18 || leading_zero || matches!(self.text.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at = end;
        Some(end - start)
    }

    /// A string at `"`: its characters as [`github_str_len`] counts its
    /// value, and whether it held an escape.
    fn string(&mut self) -> Option<(usize, bool)> {
        let text = self.text;
        let (mut i, mut chars, mut escaped) = (self.at + 1, 2, false);
        loop {
            // Eight bytes at a time while none is to be counted apart.
            while let Some(chunk) = text.get(i..i + 8) {
                if has_special_byte(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
                    break;
                }
                chars += 8;
                i += 8;
            }
            match STR_BYTES[*text.get(i)? as usize] {
                StrByte::Quote => {
                    self.at = i + 1;
                    return Some((chars, escaped));
                }
                StrByte::Backslash => {
                    escaped = true;
                    i += 1;
                    chars += match *text.get(i)? {
                        // `"`, `\`, backspace, form feed, newline, CR, tab: written as two characters.
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'/' => 1,
                        _ => return None,
                    };
                }
                // Raw, it is not JSON: left to serde_json, which says so.
                StrByte::Control => return None,
                StrByte::One | StrByte::Continuation | StrByte::Html | StrByte::E2 => {
                    chars += value_byte_chars(text, i)
                }
            }
            i += 1;
        }
    }

    /// Steps into the `[` or `{` at hand, `depth` deep: `Some(true)` when
    /// `close` ends it at once (stepped past too).
    fn open(&mut self, depth: usize, close: u8) -> Option<bool> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        let empty = self.peek()? == close;
        self.at += usize::from(empty);
        Some(empty)
    }

    /// After a member: `Some(true)` past a `,` (another member follows),
    /// `Some(false)` past `close`.
    fn next_member(&mut self, close: u8) -> Option<bool> {
        self.skip_whitespace();
        let more = match self.peek()? {
            b',' => true,
            c if c == close => false,
            _ => return None,
        };
        self.at += 1;
        self.skip_whitespace();
        Some(more)
    }

    fn array(&mut self, depth: usize) -> Option<JsonShape> {
        let mut chars = 2;
        if !self.open(depth, b']')? {
            loop {
                chars += self.value(depth)?.chars;
                if !self.next_member(b']')? {
                    break;
                }
                chars += 1;
            }
        }
        Some(JsonShape { chars, properties: None })
    }

    fn object(&mut self, depth: usize) -> Option<JsonShape> {
        if self.open(depth, b'}')? {
            return Some(JsonShape { chars: 2, properties: Some(0) });
        }
        let mut chars = 2;
        let first_key = self.keys.len();
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key_from = self.at + 1;
            let (key_chars, escaped) = self.string()?;
            if escaped {
                // Its value differs from its text: left to serde_json.
                return None;
            }
            self.keys.push(&self.text[key_from..self.at - 1]);
            self.skip_whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.skip_whitespace();
            chars += key_chars + 1 + self.value(depth)?.chars;
            if !self.next_member(b'}')? {
                break;
            }
            chars += 1;
        }
        // A repeated key keeps only its last value: left to serde_json
        // (so is a rare pair of distinct keys with the same hash).
        let properties = self.keys.len() - first_key;
        if properties > 1 {
            self.hashes.clear();
            self.hashes.extend(self.keys[first_key..].iter().map(|k| key_hash(k)));
            self.hashes.sort_unstable();
            if self.hashes.windows(2).any(|w| w[0] == w[1]) {
                return None;
            }
        }
        self.keys.truncate(first_key);
        Some(JsonShape { chars, properties: Some(properties) })
    }
}

/// What [`github_json_len`] reads off one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonShape {
    /// Characters of its compact JSON as GitHub counts them.
    pub chars: usize,
    /// For an object, its distinct keys.
    pub properties: Option<usize>,
}

/// Characters of `s` as a JSON string (quotes included), counted as
/// [`github_json_len`] says.
fn github_str_len(s: &str) -> usize {
    let b = s.as_bytes();
    2 + (0..b.len()).map(|i| value_byte_chars(b, i)).sum::<usize>()
}

/// Characters the byte at `i` of a string's value adds to its JSON as
/// [`github_json_len`] counts it: printable ASCII or a UTF-8 lead byte 1, a
/// continuation byte 0 (its character is counted), `<`, `>`, `&`, U+2028
/// and U+2029 6 (Rails' `\uXXXX`), `"` and `\` 2, a control character its
/// escape (`\n` 2, `\u001f` 6).
fn value_byte_chars(value: &[u8], i: usize) -> usize {
    match STR_BYTES[value[i] as usize] {
        StrByte::One => 1,
        StrByte::Continuation => 0,
        StrByte::Html => 6,
        // U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
        StrByte::E2 if matches!(value.get(i + 1..i + 3), Some([0x80, 0xa8 | 0xa9])) => 6,
        StrByte::E2 => 1,
        StrByte::Quote | StrByte::Backslash => 2,
        StrByte::Control if matches!(value[i], 0x08 | 0x0c | b'\n' | b'\r' | b'\t') => 2,
        StrByte::Control => 6,
    }
}

impl<'de> serde::Deserialize<'de> for JsonShape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl ShapeVisitor {
    fn scalar<E>(chars: usize) -> Result<JsonShape, E> {
        Ok(JsonShape { chars, properties: None })
    }
}

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = JsonShape;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<JsonShape, E> {
        Self::scalar(4)
    }
    fn visit_bool<E>(self, v: bool) -> Result<JsonShape, E> {
        Self::scalar(if v { 4 } else { 5 })
    }
    fn visit_u64<E>(self, v: u64) -> Result<JsonShape, E> {
        Self::scalar(v.checked_ilog10().unwrap_or(0) as usize + 1)
    }
    fn visit_i64<E>(self, v: i64) -> Result<JsonShape, E> {
        Self::scalar(v.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1 + usize::from(v < 0))
    }
    fn visit_f64<E>(self, v: f64) -> Result<JsonShape, E> {
        // As the parsed value writes it back (serde_json's shortest form).
        Self::scalar(serde_json::to_string(&v).map_or(4, |t| t.len()))
    }
    fn visit_str<E>(self, v: &str) -> Result<JsonShape, E> {
        Self::scalar(github_str_len(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonShape, A::Error> {
        let (mut chars, mut items) = (2, 0usize);
        while let Some(item) = seq.next_element::<JsonShape>()? {
            chars += item.chars;
            items += 1;
        }
        Self::scalar(chars + items.saturating_sub(1))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonShape, A::Error> {
        // (key, its characters with the colon and value's): a repeated key
        // replaces its entry. Linear search: objects in payloads are small.
        let mut entries: Vec<(Key<'de>, usize)> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<JsonShape>()?;
            let chars = github_str_len(&key.0) + 1 + value.chars;
            match entries.iter_mut().find(|(k, _)| k.0 == key.0) {
                Some(entry) => entry.1 = chars,
                None => entries.push((key, chars)),
            }
        }
        let chars = 2 + entries.iter().map(|(_, c)| c).sum::<usize>() + entries.len().saturating_sub(1);
        Ok(JsonShape { chars, properties: Some(entries.len()) })
    }
}

/// An object key, borrowed from the text unless it holds escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
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

    /// The rule as first written: the parsed value's compact JSON, counted.
    fn length_of_the_parsed_value(text: &str) -> usize {
        let v: Value = serde_json::from_str(text).unwrap();
        let text = serde_json::to_string(&v).unwrap();
        let b = text.as_bytes();
        let chars = b.iter().filter(|&&x| x & 0xC0 != 0x80).count();
        let escaped = b.iter().filter(|&&x| matches!(x, b'<' | b'>' | b'&')).count()
            + b.windows(3).filter(|w| matches!(w, [0xE2, 0x80, 0xA8 | 0xA9])).count();
        chars + 5 * escaped
    }

    #[test]
    fn github_length_read_from_text_is_the_parsed_values_length() {
        let mut texts: Vec<String> = [
            r#"{"a": 1, "b": [1, -2, 3.5, -0.0, 1e10, 1E-7, 18446744073709551615, -9223372036854775808]}"#,
            r#"{ "k" : "v" , "k" : "longer value", "z": {"k": 1, "k": {"x": []}} }"#,
            r#"{"esc": "\"\\\/\b\f\n\r\t\u0001\u001f\u007f\u00e9\u2028\u2029\ud83d\ude00<>&", "\u00e9": null}"#,
            r#"{"e": {}, "a": [], "n": [[], {}, [null, true, false]], "s": ""}"#,
            r#"[1, "two", {"three": 3}]"#,
            r#""just a string \u003c""#,
            "0",
            "12345",
            "-1",
            "true",
            "null",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/webhooks");
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        assert!(texts.len() > 20, "the fixtures were read");
        for text in &texts {
            let shape = github_json_len(text).unwrap();
            assert_eq!(shape.chars, length_of_the_parsed_value(text), "{text}");
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(shape.properties, v.as_object().map(|m| m.len()), "{text}");
        }
        assert!(github_json_len("{\"a\": }").is_err());
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
            assert_eq!(b.json(), expected);
        }
    }

    #[test]
    fn a_body_built_from_text_is_the_value_built_one_and_trims_at_the_same_size() {
        let sync: Value = serde_json::from_str(SYNC).unwrap();
        let full = json_chars(&json!({"event_type": "pull_request", "delivery_id": "d-1", "payload": sync}));
        // Around the limit: a PR body that makes the client payload 1 under, at, and 1 over 65,535.
        let mut texts = vec![SYNC.to_owned(), PUSH.to_owned(), r#"{"a": 1, "a": "<&>", "b": [1.5e3, -2]}"#.to_owned()];
        for extra in [-1i64, 0, 1, 40_000] {
            let mut p = sync.clone();
            let body = p["pull_request"]["body"].as_str().unwrap_or_default().to_owned();
            let pad = (MAX_CLIENT_PAYLOAD_CHARS as i64 - full as i64 + extra) as usize;
            p["pull_request"]["body"] = Value::String(format!("{body}{}", "<".repeat(pad / 6) + &"x".repeat(pad % 6)));
            texts.push(serde_json::to_string_pretty(&p).unwrap());
        }
        let mut trimmed = vec![];
        for text in &texts {
            let p: Value = serde_json::from_str(text).unwrap();
            let from_value = build("pull_request", "d-1", &p).unwrap();
            let from_text = build_from_text("pull_request", "d-1", text).unwrap();
            assert_eq!(from_text.trimmed, from_value.trimmed, "{}", &text[..60.min(text.len())]);
            assert_eq!(from_text.value(), from_value.value());
            trimmed.push(from_text.trimmed);
        }
        assert_eq!(
            trimmed,
            [false, false, false, false, false, true, true],
            "the padding lands on both sides of the limit"
        );
        assert!(matches!(build_from_text("pull_request", "d-1", "{"), Err(PayloadError::NotJson(_))));
        assert!(matches!(build_from_text(&"e".repeat(101), "d-1", "{}"), Err(PayloadError::EventTypeTooLong(_))));
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

    /// Random JSON texts (nested values, strings with every character class
    /// the count treats apart, each escape, integers and floats at the
    /// edges, repeated keys, whitespace), whole and cut or changed at a
    /// random byte: whatever the one-pass scanner takes, it counts as
    /// serde_json's reading does, and `github_json_len` is the parsed
    /// value's length (or an error for what is not JSON).
    #[test]
    fn the_scanner_counts_what_serde_json_reads() {
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: usize) -> usize {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % n as u64) as usize
            }
            fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
                from[self.below(from.len())]
            }
        }
        const PIECES: &[&str] = &[
            "a",
            "Z",
            " ",
            "é",
            "😀",
            "<",
            ">",
            "&",
            "\u{2028}",
            "\u{2029}",
            "€",
            "\u{7f}",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\n",
            "\\r",
            "\\t",
            "\\u00e9",
            "\\u0001",
            "\\u003c",
            "\\ud83d\\ude00",
            "\\u2028",
        ];
        const NUMBERS: &[&str] = &[
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "1.5",
            "-0.0",
            "1e3",
            "2E-2",
            "123456789012345678",
            "-123456789012345678",
            "1234567890123456789",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999",
        ];
        const KEYS: &[&str] = &["a", "b", "id", "<k>", "é", "a\\u0062", "\\\"q"];
        const SPACE: &[&str] = &["", "", "", " ", "\n  ", "\t", "\r\n"];
        fn value(r: &mut Rng, depth: usize, out: &mut String) {
            match r.below(if depth > 3 { 5 } else { 7 }) {
                0 => out.push_str(r.pick(&["true", "false", "null"])),
                1 | 2 => out.push_str(r.pick(NUMBERS)),
                3 | 4 => {
                    out.push('"');
                    for _ in 0..r.below(6) {
                        out.push_str(r.pick(PIECES));
                    }
                    out.push('"');
                }
                5 => {
                    out.push('[');
                    for i in 0..r.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(r.pick(SPACE));
                        value(r, depth + 1, out);
                    }
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..r.below(5) {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(r.pick(SPACE));
                        out.push_str(&format!("\"{}\"", r.pick(KEYS)));
                        out.push_str(r.pick(SPACE));
                        out.push(':');
                        out.push_str(r.pick(SPACE));
                        value(r, depth + 1, out);
                    }
                    out.push_str(r.pick(SPACE));
                    out.push('}');
                }
            }
        }
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut scanned, mut valid) = (0, 0);
        for n in 0..20_000 {
            let mut text = String::new();
            value(&mut r, 0, &mut text);
            if n % 3 == 1 {
                // Cut at a character boundary.
                let cut = r.below(text.len() + 1);
                let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap();
                text.truncate(cut);
            } else if n % 3 == 2 && !text.is_empty() {
                let at = (0..=r.below(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap();
                text.insert_str(at, r.pick(&[",", "]", "}", "\"", "\\", "0", "\u{1}", " "]));
            }
            let by_serde = serde_json::from_str::<JsonShape>(&text);
            if let Some(shape) = Scanner::shape_of(&text) {
                scanned += 1;
                assert_eq!(Some(shape), by_serde.as_ref().ok().copied(), "{text}");
            }
            match github_json_len(&text) {
                Ok(shape) => {
                    valid += 1;
                    assert_eq!(shape.chars, length_of_the_parsed_value(&text), "{text}");
                }
                Err(_) => assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}"),
            }
        }
        // Both paths were exercised.
        assert!(scanned > 5_000 && valid > scanned + 1_000, "scanned {scanned}, valid {valid}");
    }

    #[test]
    fn github_length_counts_rails_escapes() {
        let len = |v: Value| github_json_len(&v.to_string()).unwrap().chars;
        assert_eq!(len(json!({"a": "<&>"})), "{\"a\":\"<&>\"}".len() + 15);
        assert_eq!(len(json!({"a": "é"})), 9);
        assert_eq!(len(json!({"a": "\u{2028}x\u{2029}€"})), "{\"a\":\"\"}".len() + 6 + 1 + 6 + 1);
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
