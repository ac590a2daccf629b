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
