//! Untrusted callback bodies (after a valid token, anything may follow):
//! must parse or fail with a field-naming error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crcr_core::callback::parse(data);
});
