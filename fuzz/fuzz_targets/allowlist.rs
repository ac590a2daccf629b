//! Untrusted allowlist files (fetched from a repository anyone can open a PR
//! against): must parse or fail with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crcr_core::allowlist::Allowlist::parse(text);
    }
});
