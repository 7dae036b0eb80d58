//! Manifests and indexes from any bytes (what a registry serves): parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::publish::index::parse_manifest;

fuzz_target!(|data: &[u8]| {
    let _ = parse_manifest(data);
});
