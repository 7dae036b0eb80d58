//! Git ref advertisements (pkt-lines) from any bytes: parsing never panics, and reading the same
//! bytes in pieces gives the same refs (or an error) as reading them whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiarch_operator::git::{parse_advertisement, pick, AdvertisementReader};

fuzz_target!(|data: &[u8]| {
    let whole = parse_advertisement(data);
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut refs = Vec::new();
    let mut reader = AdvertisementReader::default();
    let mut pieces = Ok(());
    for piece in data.chunks(split) {
        pieces = reader.push(piece, &mut |r| refs.push(r));
        if pieces.is_err() {
            break;
        }
    }
    let pieces = pieces.and_then(|()| reader.finish()).map(|()| refs);
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} but in pieces of {split} {pieces:?}"),
    }
    if let Ok(refs) = whole {
        for revision in ["HEAD", "main", "refs/heads/main", "v1"] {
            let _ = pick(&refs, revision);
        }
    }
});
