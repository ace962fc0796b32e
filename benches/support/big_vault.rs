//! A vault of many clients and upstream keys, written through the library in
//! one update (seconds, where 100,000 `client add` calls would take minutes).
//! Shared by `vault_scale` and `proxy_overhead`'s `BENCH_CALLGRIND_CLIENTS`.

use keygate::vault::document::{ClientLimits, ClientRecord, KeyState, UpstreamKey};
use keygate::vault::secret::Secret;
use keygate::vault::{Kek, MasterKeySources, Vault};

/// The master key `keygate vault init` wrote to `master_key_file`.
pub fn kek(master_key_file: &std::path::Path) -> Kek {
    MasterKeySources {
        env_master_key: None,
        env_passphrase: None,
        file: master_key_file.to_owned(),
    }
    .resolve()
    .expect("master key")
    .expect("a master key file")
}

/// Adds `clients` clients (`bulk-0`, `bulk-1`, …, every tenth with limits)
/// and `keys` current `provider` keys to the vault at `path`.
pub fn fill(path: &std::path::Path, kek: &Kek, provider: &str, clients: usize, keys: usize) {
    let now = keygate::unix_now();
    Vault::new(path)
        .update(kek, |doc| {
            for i in 0..clients {
                // Not a usable key: only its digest, distinct per client.
                let digest = keygate::vault::client_key::digest(&format!("kg_bulk_{i}"));
                doc.clients.push(ClientRecord {
                    name: format!("bulk-{i}"),
                    key_sha256: digest.to_hex(),
                    limits: if i % 10 == 0 {
                        ClientLimits {
                            rpm: Some(600),
                            tpm: Some(100_000),
                            ..ClientLimits::default()
                        }
                    } else {
                        ClientLimits::default()
                    },
                    created: now,
                    revoked: None,
                    old_key: None,
                    decoy: false,
                });
            }
            for i in 0..keys {
                // Built at run time: no key-shaped literal in the source.
                let secret = Secret::new(format!("sk-bench-bulk-{}{i:06}", "0".repeat(24)));
                doc.keys.push(UpstreamKey::new(
                    format!("key_bulk_{i}"),
                    provider,
                    &secret,
                    Some(format!("bulk {i}")),
                    KeyState::Current,
                    now,
                ));
            }
            Ok::<_, keygate::vault::VaultError>(())
        })
        .expect("fill the vault");
}
