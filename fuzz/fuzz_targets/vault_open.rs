//! Arbitrary bytes as a vault file (mode 0600), opened with a fixed raw master
//! key, plus the key-less header peek. Must never panic; any `Err` is fine.
//! With a raw key, a header that says "passphrase" must be refused before any
//! Argon2 work (libFuzzer's -timeout catches a slow input).

#![no_main]

use keygate::vault::{Vault, VaultError};
use keygate_fuzz::{kek, write_vault, MASTER_KEY_B64};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static KEK: std::sync::OnceLock<keygate::vault::Kek> = std::sync::OnceLock::new();
    let kek = KEK.get_or_init(kek);
    let vault = Vault::new(write_vault(data));
    let loaded = vault.load(kek);
    let peeked = vault.peek();
    match (&loaded, &peeked) {
        (Ok(l), Ok(h)) => {
            assert_eq!((l.generation, l.kek_id), (h.generation, h.kek_id));
            assert_ne!(h.generation, 0, "generation 0 accepted");
        }
        (Ok(_), Err(e)) => panic!("load succeeded but peek failed: {e}"),
        (Err(_), Ok(h)) => assert_ne!(h.generation, 0, "generation 0 accepted"),
        (Err(_), Err(_)) => {}
    }
    if let Err(VaultError::InsecureMode { .. }) = &loaded {
        panic!("harness wrote the vault with the wrong mode");
    }
    for err in [loaded.err(), peeked.err()].into_iter().flatten() {
        let text = err.to_string();
        assert!(!text.contains(MASTER_KEY_B64), "error shows the master key");
    }
});
