//! Known-vulnerable dependency versions, checked offline against `Cargo.lock`.
//!
//! `cargo deny` / `cargo audit` need the RustSec database from the network,
//! which this build environment cannot reach; this test holds the advisories
//! that matter to keygate's dependency tree (crypto, TLS, HTTP/2, async
//! runtime) and fails when `Cargo.lock` resolves an affected version.

#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

/// (crate, first fixed version, advisory) — an affected lock entry is any
/// version below the fixed one within the same major line listed here.
const ADVISORIES: &[(&str, &str, &str)] = &[
    (
        "aes-gcm",
        "0.10.3",
        "RUSTSEC-2023-0096: plaintext exposed in decrypt_in_place_detached on tag failure",
    ),
    (
        "h2",
        "0.4.4",
        "RUSTSEC-2024-0332: HTTP/2 CONTINUATION flood (degradation of service)",
    ),
    (
        "hyper",
        "1.0.0",
        "RUSTSEC-2021-0078/0079 and older 0.14 smuggling issues: keygate requires hyper 1.x",
    ),
    (
        "rustls",
        "0.23.18",
        "RUSTSEC-2024-0399: rustls-0.23.13..17 server panics on fragmented ClientHello",
    ),
    (
        "ring",
        "0.17.12",
        "RUSTSEC-2025-0009: AES functions may panic on overflow checking",
    ),
    (
        "tokio",
        "1.38.2",
        "RUSTSEC-2025-0023: broadcast channel unsoundness",
    ),
    (
        "tracing-subscriber",
        "0.3.20",
        "RUSTSEC-2025-0055: ANSI escape sequence injection in logs",
    ),
    (
        "hashbrown",
        "0.15.1",
        "RUSTSEC-2024-0402: borsh serialization of HashMap (0.15.0 only)",
    ),
    (
        "libsqlite3-sys",
        "0.25.1",
        "RUSTSEC-2022-0090: SQLite CVE-2022-35737",
    ),
    (
        "idna",
        "1.0.0",
        "RUSTSEC-2024-0421: punycode label mismatch",
    ),
    (
        "crossbeam-channel",
        "0.5.15",
        "RUSTSEC-2025-0024: double free on Drop",
    ),
];

fn parse_version(text: &str) -> Vec<u64> {
    text.split(['.', '-', '+'])
        .take(3)
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

fn locked_versions(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("version = ") {
            if let Some(name) = name.take() {
                versions
                    .entry(name)
                    .or_default()
                    .push(value.trim_matches('"').to_owned());
            }
        }
    }
    versions
}

/// Every locked version of `lock` an advisory affects, one line each.
fn affected(lock: &str) -> Vec<String> {
    let versions = locked_versions(lock);
    let mut affected = Vec::new();
    for (name, fixed, advisory) in ADVISORIES {
        let fixed_version = parse_version(fixed);
        for locked in versions.get(*name).into_iter().flatten() {
            let locked_version = parse_version(locked);
            // hashbrown's advisory only affects the 0.15 line.
            if *name == "hashbrown" && locked_version[..2] != [0, 15] {
                continue;
            }
            if locked_version < fixed_version {
                affected.push(format!("{name} {locked}: {advisory} (fixed in {fixed})"));
            }
        }
    }
    affected
}

#[test]
fn cargo_lock_has_no_known_vulnerable_versions() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock is committed");
    let versions = locked_versions(&lock);
    assert!(
        versions.contains_key("aes-gcm") && versions.contains_key("h2"),
        "lock file parsed"
    );
    let affected = affected(&lock);
    assert!(
        affected.is_empty(),
        "vulnerable dependencies:\n{}",
        affected.join("\n")
    );
}

#[test]
fn the_check_catches_an_old_version() {
    // A lock file in Cargo's format with one vulnerable and two fixed entries
    // (hashbrown 0.14 is outside its advisory's line).
    let lock = r#"
version = 4

[[package]]
name = "aes-gcm"
version = "0.10.2"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "h2"
version = "0.4.12"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "hashbrown"
version = "0.14.5"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;
    let found = affected(lock);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("aes-gcm 0.10.2: RUSTSEC-2023-0096"),
        "{found:?}"
    );
}
