//! Platforms (`os/arch[/variant]`) from any text: parsing never panics, and a parsed platform
//! prints as text that parses back to the same platform.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::platform::Platform;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = text.parse::<Platform>() {
        let again: Platform = p
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{p} does not parse back: {e:?}"));
        assert_eq!(again, p, "round trip of {text:?}");
    }
});
