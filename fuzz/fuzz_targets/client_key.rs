//! `keygate::vault::client_key::parse` on arbitrary text (valid UTF-8 as is, and any bytes
//! through a lossy conversion). Never panics; an accepted key is exactly
//! `kg_` + 42 ASCII letters/digits, its digest is the SHA-256 of the whole key,
//! and changing any one of its 42 characters makes it rejected (the CRC32
//! check catches every single-character typo).

#![no_main]

use keygate::vault::client_key::{self, KEY_LEN};
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let Ok(digest) = client_key::parse(text).map_err(|e| e.to_string()) else {
        return;
    };
    assert_eq!(text.len(), KEY_LEN);
    assert_eq!(KEY_LEN, 45);
    assert!(text.starts_with("kg_"));
    assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(digest, client_key::digest(text));
    let mut bytes = text.as_bytes().to_vec();
    for at in 3..bytes.len() {
        let original = bytes[at];
        bytes[at] = if original == b'0' { b'1' } else { b'0' };
        let typo = std::str::from_utf8(&bytes).expect("ASCII");
        assert!(
            client_key::parse(typo).is_err(),
            "a one-character typo at {at} was accepted"
        );
        bytes[at] = original;
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
        check(text.trim());
    }
    check(&String::from_utf8_lossy(data));
});
