//! Arbitrary bytes as the *plaintext* of a correctly sealed vault (the harness
//! seals it under the fixed raw key, see `keygate_fuzz::seal_raw`), so the fuzzer
//! reaches the document parser behind AES-GCM. The envelope is valid, so the
//! only acceptable error is `VaultError::Document`; a loaded document must
//! survive a serialise → parse round trip, and a secret's fingerprint must not
//! show eight consecutive characters of it.

#![no_main]

use keygate::vault::document::Document;
use keygate::vault::{Vault, VaultError};
use keygate_fuzz::{kek, seal_raw, write_vault};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static KEK: std::sync::OnceLock<keygate::vault::Kek> = std::sync::OnceLock::new();
    let kek = KEK.get_or_init(kek);
    let vault = Vault::new(write_vault(&seal_raw(7, data)));
    match vault.load(kek) {
        Ok(loaded) => {
            assert_eq!(loaded.generation, 7);
            let json = serde_json::to_vec(&loaded.document).expect("serialise a loaded document");
            let again: Document =
                serde_json::from_slice(&json).expect("re-parse keygate's own serialisation");
            let json2 = serde_json::to_vec(&again).expect("serialise again");
            assert_eq!(json, json2, "document does not round-trip");
            for key in &loaded.document.keys {
                if let Some(secret) = &key.secret {
                    let fingerprint = secret.fingerprint();
                    let chars: Vec<char> = secret.expose().chars().collect();
                    for window in chars.windows(8) {
                        let run: String = window.iter().collect();
                        assert!(
                            !fingerprint.contains(&run),
                            "fingerprint shows 8 consecutive secret characters"
                        );
                    }
                    let _ = format!("{key:?}");
                }
            }
        }
        Err(VaultError::Document { .. }) => {}
        Err(other) => panic!("a correctly sealed vault was refused: {other}"),
    }
});
