//! A builder's termination message (BuildKit's metadata file, written by whatever ran in the
//! builder pod): reading the reported digest never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::controller::reported_digest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = reported_digest(text);
    }
});
