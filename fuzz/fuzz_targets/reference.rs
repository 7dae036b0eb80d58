//! Image references, repositories, tags and digests from any text: parsing never panics, and a
//! parsed reference prints as text that parses back to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::reference::{Digest, Reference, Repository, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = text.parse::<Reference>() {
        let again: Reference = r
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{r} does not parse back: {e}"));
        assert_eq!(again, r, "round trip of {text:?}");
    }
    if let Ok(r) = text.parse::<Repository>() {
        assert_eq!(r.to_string().parse::<Repository>().ok(), Some(r));
    }
    let _ = text.parse::<Tag>();
    let _ = text.parse::<Digest>();
});
