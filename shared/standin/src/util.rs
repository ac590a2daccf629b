//! Small helpers of the GitHub stand-in: clock and RFC 3339 formatting,
//! random token text, Ruby-style value rendering (GitHub's validation
//! messages quote the offending value the way Ruby's `inspect` prints it),
//! the length GitHub measures for a `client_payload`, and git blob hashes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Seconds since the Unix epoch, now.
pub(crate) fn epoch_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// `2016-07-11T22:14:10Z` for a Unix time in seconds (UTC, whole seconds), the
/// format GitHub uses for `expires_at`, `created_at`, ...
pub(crate) fn rfc3339(epoch_s: u64) -> String {
    let days = (epoch_s / 86_400) as i64;
    let rem = epoch_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `n` random characters from `[0-9A-Za-z]` (uuid v4 is the randomness
/// source: it is already a dependency and draws from the OS generator).
pub(crate) fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            // 248 = 4 * 62: reject the tail so every character is equally likely.
            if *b < 248 && out.len() < n {
                out.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A value as Ruby's `inspect` prints it (`nil`, `42`, `"text"`, `[1, 2]`,
/// `{"a" => 1}`): GitHub's schema errors quote values this way, e.g.
/// `For 'properties/body', nil is not a string.`
pub(crate) fn ruby_inspect(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(ruby_inspect).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} => {}", serde_json::to_string(k).unwrap_or_default(), ruby_inspect(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// The length GitHub compares with 65,535 for a `client_payload`: the
/// characters of its compact JSON as Rails' `to_json` writes it after
/// parsing the request. Rails escapes `<`, `>`, `&`, U+2028 and U+2029
/// inside strings as `\uXXXX` (six characters instead of one), so each of
/// those counts 6; `"`, `\\` and the control characters count as their JSON
/// escapes (`\n`: 2, `\u001f`: 6); a key given twice counts once, with its
/// last value, as the parsed object keeps it.
///
/// Read from the JSON text without building the value (a load run's 28 KB
/// payloads, ten per webhook, need this to be cheap). Errors: the text is
/// not JSON.
pub(crate) fn github_json_len(text: &str) -> Result<JsonShape, serde_json::Error> {
    serde_json::from_str::<JsonShape>(text)
}

/// What [`github_json_len`] reads off one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonShape {
    /// Characters of its compact JSON as GitHub counts them.
    pub chars: usize,
    /// For an object, its distinct keys.
    pub properties: Option<usize>,
}

/// Characters of `s` as a JSON string (quotes included), counted as
/// [`github_json_len`] says.
fn github_str_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut n = 2;
    for &x in b {
        n += match x {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0x00..=0x1f => 6,
            b'<' | b'>' | b'&' => 6,
            _ if x & 0xC0 == 0x80 => 0,
            _ => 1,
        };
    }
    // U+2028 and U+2029 are E2 80 A8 and E2 80 A9: one character so far, six in all.
    if b.contains(&0xE2) {
        n += 5 * b.windows(3).filter(|w| matches!(w, [0xE2, 0x80, 0xA8 | 0xA9])).count();
    }
    n
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

/// The git blob id of `contents` (`sha1("blob <len>\0" + contents)`), which
/// GitHub returns as a file's `sha`.
pub(crate) fn git_blob_sha(contents: &[u8]) -> String {
    use aws_lc_rs::digest;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {}\0", contents.len()).as_bytes());
    ctx.update(contents);
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with a newline every 60 characters and at the end, as
/// GitHub writes a file's `content`.
pub(crate) fn base64_wrapped(contents: &[u8]) -> String {
    use base64::Engine as _;
    let flat = base64::engine::general_purpose::STANDARD.encode(contents);
    let mut out = String::with_capacity(flat.len() + flat.len() / 60 + 1);
    for chunk in flat.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_468_275_250), "2016-07-11T22:14:10Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ruby_inspect_prints_like_ruby() {
        assert_eq!(ruby_inspect(&json!(null)), "nil");
        assert_eq!(ruby_inspect(&json!("a\"b")), "\"a\\\"b\"");
        assert_eq!(ruby_inspect(&json!([1, "x"])), "[1, \"x\"]");
        assert_eq!(ruby_inspect(&json!({"a": 1})), "{\"a\" => 1}");
    }

    #[test]
    fn github_length_counts_rails_escapes() {
        let len = |v: Value| github_json_len(&v.to_string()).unwrap().chars;
        assert_eq!(len(json!({"a": "<&>"})), "{\"a\":\"<&>\"}".len() + 15);
        assert_eq!(len(json!({"a": "é"})), 9);
        assert_eq!(len(json!({"a": "\u{2028}x\u{2029}€"})), "{\"a\":\"\"}".len() + 6 + 1 + 6 + 1);
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
    fn blob_sha_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_sha(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
    }

    #[test]
    fn random_tokens_are_alphanumeric_and_distinct() {
        let a = random_alnum(36);
        assert_eq!(a.len(), 36);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_alnum(36));
    }
}
