//! Helpers shared by keygate's fuzz targets and the seed writer.
//!
//! Nothing here is part of keygate: it is test scaffolding. `seal_raw` re-implements
//! the vault layout documented in `src/vault/format.rs` (raw-key source only) so the
//! `vault_document` target can hand keygate a correctly authenticated file whose
//! plaintext is the fuzz input.

// Fuzz scaffolding fails loudly on a broken setup: that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use bytes::Bytes;
use keygate::usage::meter::TokenMetrics;
use keygate::usage::tap::MeterTap;
use keygate::usage::meter::{Outcome, UsageCounters, UsageDelta};
use keygate::vault::{Kek, MasterKey};

/// The fixed master key every vault target uses: bytes 0, 1, …, 31.
pub const MASTER_KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The same key as bytes.
pub const MASTER_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

/// The fixed raw KEK (never a passphrase: Argon2 would make every run slow).
pub fn kek() -> Kek {
    Kek::Raw(MasterKey::from_base64(MASTER_KEY_B64).expect("fixed key is valid"))
}

/// A per-process vault path in a private directory (on /dev/shm when present,
/// so writing the file every execution costs no disk I/O).
pub fn vault_path() -> &'static PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let base = std::env::var_os("KEYGATE_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = PathBuf::from("/dev/shm");
                if shm.is_dir() {
                    shm
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("keygate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create fuzz temp dir");
        std::fs::set_permissions(
            &dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod fuzz temp dir");
        dir.join("keygate.vault")
    })
}

/// Writes `bytes` as the vault file, mode 0600 (keygate refuses anything looser).
pub fn write_vault(bytes: &[u8]) -> &'static PathBuf {
    let path = vault_path();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open fuzz vault file");
    file.write_all(bytes).expect("write fuzz vault file");
    path
}

/// HKDF-SHA256(KEK, "keygate/v1/kek-id")[..8], as the format documents.
pub fn kek_id(kek: &[u8; 32]) -> [u8; 8] {
    let mut id = [0u8; 8];
    hkdf::Hkdf::<sha2::Sha256>::new(None, kek)
        .expand(b"keygate/v1/kek-id", &mut id)
        .expect("8 bytes is a valid HKDF length");
    id
}

/// A complete raw-key vault file (format version 1) holding `plaintext`,
/// sealed under [`MASTER_KEY`] with a fixed DEK and fixed nonces (fine for a
/// test input; keygate itself draws fresh ones).
pub fn seal_raw(generation: u64, plaintext: &[u8]) -> Vec<u8> {
    let dek = [0x42u8; 32];
    let mut out = Vec::with_capacity(145 + plaintext.len());
    out.extend_from_slice(b"KGVAULT\0");
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&[0u8; 29]); // kek_source raw, no Argon2 costs, no salt
    out.extend_from_slice(&kek_id(&MASTER_KEY));
    assert_eq!(out.len(), 57);
    let dek_nonce = [1u8; 12];
    let wrapped = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&MASTER_KEY))
        .encrypt(
            Nonce::from_slice(&dek_nonce),
            Payload {
                msg: &dek,
                aad: &out,
            },
        )
        .expect("wrap DEK");
    out.extend_from_slice(&dek_nonce);
    out.extend_from_slice(&wrapped);
    assert_eq!(out.len(), 117);
    let body_nonce = [2u8; 12];
    let body = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&dek))
        .encrypt(
            Nonce::from_slice(&body_nonce),
            Payload {
                msg: plaintext,
                aad: &out,
            },
        )
        .expect("seal body");
    out.extend_from_slice(&body_nonce);
    out.extend_from_slice(&body);
    out
}

/// A tap over `content_type`, as `benches/hot_path.rs` builds one.
pub fn new_tap(content_type: &str, strip: bool) -> (MeterTap, Arc<UsageCounters>) {
    let counters = Arc::new(UsageCounters::default());
    let metrics = TokenMetrics {
        prompt: prometheus::IntCounter::new("p", "p").expect("metric"),
        completion: prometheus::IntCounter::new("c", "c").expect("metric"),
    };
    let tap = MeterTap::new(
        counters.clone(),
        metrics,
        Some(content_type),
        strip,
        Outcome::default(),
        None,
    );
    (tap, counters)
}

/// Runs `chunks` through a fresh tap: (bytes forwarded incl. the final flush,
/// counters recorded by `finish(true)`, what `flush` alone returned).
pub fn run_tap(
    content_type: &str,
    strip: bool,
    chunks: &[&[u8]],
) -> (Vec<u8>, UsageDelta, Option<Bytes>) {
    let (mut tap, counters) = new_tap(content_type, strip);
    let mut out = Vec::new();
    for chunk in chunks {
        if let Some(bytes) = tap.on_data(Bytes::copy_from_slice(chunk)) {
            assert!(!bytes.is_empty(), "on_data returned Some(empty)");
            out.extend_from_slice(&bytes);
        }
    }
    let flushed = tap.flush();
    if let Some(bytes) = &flushed {
        out.extend_from_slice(bytes);
    }
    tap.finish(true);
    drop(tap); // Drop after finish must not record twice.
    (out, counters.drain(), flushed)
}

/// Splits `body` into chunks as directed by `plan` (bytes from the input):
/// each plan byte is one chunk's length (0 = an empty chunk); what is left
/// after the plan is the last chunk.
pub fn split<'a>(plan: &[u8], body: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::with_capacity(plan.len() + 1);
    let mut rest = body;
    for &len in plan {
        let n = usize::from(len).min(rest.len());
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
    }
    chunks.push(rest);
    chunks
}

pub mod hyper_model;
pub mod usage_ref;
