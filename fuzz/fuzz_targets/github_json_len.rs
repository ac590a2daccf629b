//! GitHub's length of a `client_payload` (`client_payload::github_json_len`,
//! which the stand-in also applies to every dispatch it receives): on any
//! text it agrees with the rule as first written (parse the value, write it
//! compact, count each `<`, `>`, `&`, U+2028 and U+2029 as six characters),
//! and fails exactly on what is not JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let measured = crcr_core::client_payload::github_json_len(text);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => {
            let compact = serde_json::to_string(&value).unwrap();
            let b = compact.as_bytes();
            let chars = b.iter().filter(|&&x| x & 0xC0 != 0x80).count();
            let escaped = b.iter().filter(|&&x| matches!(x, b'<' | b'>' | b'&')).count()
                + b.windows(3).filter(|w| matches!(w, [0xE2, 0x80, 0xA8 | 0xA9])).count();
            let shape = measured.expect("valid JSON is measured");
            assert_eq!(shape.chars, chars + 5 * escaped, "{text}");
            assert_eq!(shape.properties, value.as_object().map(|m| m.len()), "{text}");
        }
        Err(_) => assert!(measured.is_err(), "{text}"),
    }
});
