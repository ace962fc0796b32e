//! The envelope: KEK derivation (raw key or Argon2id), `kek_id`, the DEK
//! wrapped under the KEK, and the body sealed under the DEK (AES-256-GCM).
//!
//! Every key and every plaintext lives in `Zeroizing` buffers. This room must
//! never reuse a nonce (each seal draws fresh ones from the OS RNG), never
//! return plaintext whose tag did not verify, and never put key or plaintext
//! bytes into an error.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::format::{self, Argon2Params, FormatError, Header, KekSource};
use super::{Kek, VaultError};

const KEK_ID_INFO: &[u8] = b"keygate/v1/kek-id";

/// A KEK ready to use, with the header fields that produced it.
pub struct DerivedKek {
    key: Zeroizing<[u8; 32]>,
    /// Names this KEK in the header.
    pub id: [u8; 8],
    /// Raw, or Argon2id with the salt and costs used.
    pub source: KekSource,
}

/// The per-vault data key: random once at create, kept across updates and rekeys.
pub struct Dek(Zeroizing<[u8; 32]>);

impl Dek {
    /// This vault's `fingerprint_mac` key: derived from the DEK, so it is
    /// stable across updates and rekeys and differs between vaults.
    pub fn fingerprint_key(&self) -> Result<super::fingerprint_mac::FingerprintKey, VaultError> {
        super::fingerprint_mac::FingerprintKey::derive(&self.0)
    }

    /// A fresh random DEK.
    pub fn generate() -> Result<Self, VaultError> {
        let mut key = Zeroizing::new([0u8; 32]);
        random(key.as_mut())?;
        Ok(Dek(key))
    }
}

/// A decrypted vault: header, the KEK and DEK that opened it, the plaintext.
pub struct Opened {
    pub header: Header,
    pub kek: DerivedKek,
    pub dek: Dek,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// The source a new vault (create, rekey) is written with: raw, or Argon2id at
/// the write costs with a fresh random salt.
pub fn fresh_source(kek: &Kek) -> Result<KekSource, VaultError> {
    Ok(match kek {
        Kek::Raw(_) => KekSource::Raw,
        Kek::Passphrase(_) => {
            let (m_cost, t_cost, p_cost) = format::ARGON2_WRITE;
            let mut salt = [0u8; 16];
            random(&mut salt)?;
            KekSource::Argon2id(Argon2Params {
                m_cost,
                t_cost,
                p_cost,
                salt,
            })
        }
    })
}

/// Derives the KEK for `source`. `None` when `kek` is the wrong kind for it
/// (a passphrase for a raw-key vault, or the other way round).
pub fn derive(kek: &Kek, source: KekSource) -> Result<Option<DerivedKek>, VaultError> {
    let mut key = Zeroizing::new([0u8; 32]);
    match (kek, &source) {
        (Kek::Raw(master), KekSource::Raw) => key.copy_from_slice(master.bytes()),
        (Kek::Passphrase(pass), KekSource::Argon2id(p)) => {
            let params = Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
                .map_err(|_| crypto_failed("invalid Argon2 parameters"))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(pass.expose().as_bytes(), &p.salt, key.as_mut())
                .map_err(|_| crypto_failed("Argon2id key derivation failed"))?;
        }
        _ => return Ok(None),
    }
    let mut id = [0u8; 8];
    Hkdf::<Sha256>::new(None, key.as_ref())
        .expand(KEK_ID_INFO, &mut id)
        .map_err(|_| crypto_failed("HKDF expand failed"))?;
    Ok(Some(DerivedKek { key, id, source }))
}

/// Parses and decrypts a vault file. Tells a wrong master key (kek_id differs,
/// or the wrong kind of key) from a modified file (a tag fails).
pub fn open(path: &Path, bytes: &[u8], kek: &Kek) -> Result<Opened, VaultError> {
    let parsed = format::parse(bytes).map_err(|e| format_error(path, e))?;
    let wrong_key = || VaultError::WrongMasterKey {
        path: path.to_owned(),
        written_with_passphrase: matches!(parsed.source, KekSource::Argon2id(_)),
    };
    let derived = derive(kek, parsed.source)?.ok_or_else(wrong_key)?;
    if derived.id != parsed.header.kek_id {
        return Err(wrong_key());
    }
    let dek_bytes = Zeroizing::new(
        cipher(&derived.key)
            .decrypt(
                Nonce::from_slice(parsed.dek_nonce),
                payload(parsed.wrapped_dek, parsed.dek_aad),
            )
            .map_err(|_| corrupted(path, "the data key or the header failed authentication"))?,
    );
    let mut dek = Dek(Zeroizing::new([0u8; 32]));
    if dek_bytes.len() != dek.0.len() {
        return Err(corrupted(path, "the data key has the wrong length"));
    }
    dek.0.copy_from_slice(&dek_bytes);
    let plaintext = Zeroizing::new(
        cipher(&dek.0)
            .decrypt(
                Nonce::from_slice(parsed.body_nonce),
                payload(parsed.body, parsed.body_aad),
            )
            .map_err(|_| corrupted(path, "the document failed authentication"))?,
    );
    Ok(Opened {
        header: parsed.header,
        kek: derived,
        dek,
        plaintext,
    })
}

/// Builds a complete vault file: header, DEK wrapped under `kek`, `plaintext`
/// sealed under `dek`, each with a fresh nonce and every earlier byte as AAD.
pub fn seal(
    generation: u64,
    kek: &DerivedKek,
    dek: &Dek,
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let mut out = format::encode_header(generation, &kek.source, &kek.id);
    let wrapped = encrypt(&kek.key, dek.0.as_ref(), &mut out)?;
    debug_assert_eq!(wrapped, format::WRAPPED_DEK_LEN);
    encrypt(&dek.0, plaintext, &mut out)?;
    Ok(out)
}

/// Appends `nonce | AES-256-GCM(key, msg, aad = out so far)` to `out`;
/// returns the ciphertext length.
fn encrypt(key: &[u8; 32], msg: &[u8], out: &mut Vec<u8>) -> Result<usize, VaultError> {
    let mut nonce = [0u8; format::NONCE_LEN];
    random(&mut nonce)?;
    let sealed = cipher(key)
        .encrypt(Nonce::from_slice(&nonce), payload(msg, out))
        .map_err(|_| crypto_failed("AES-GCM encryption failed"))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(sealed.len())
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

fn payload<'a>(msg: &'a [u8], aad: &'a [u8]) -> Payload<'a, 'a> {
    Payload { msg, aad }
}

fn random(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::getrandom(buf).map_err(|cause| VaultError::Random { cause })
}

fn crypto_failed(detail: &'static str) -> VaultError {
    VaultError::Crypto { detail }
}

fn corrupted(path: &Path, detail: &str) -> VaultError {
    VaultError::Corrupted {
        path: path.to_owned(),
        detail: detail.to_owned(),
    }
}

fn format_error(path: &Path, err: FormatError) -> VaultError {
    match err {
        FormatError::UnsupportedVersion(version) if version > format::VERSION => {
            VaultError::UnsupportedVersion {
                path: path.to_owned(),
                version,
            }
        }
        FormatError::UnsupportedVersion(version) => {
            corrupted(path, &format!("invalid format version {version}"))
        }
        FormatError::BadMagic => corrupted(path, "it is not a keygate vault (bad magic bytes)"),
        FormatError::Truncated { len } => {
            corrupted(path, &format!("it is truncated ({len} bytes)"))
        }
        FormatError::BadField(field) => corrupted(path, &format!("invalid header: {field}")),
    }
}

/// Reads the header of a vault file without any key.
pub fn peek(path: &Path, bytes: &[u8]) -> Result<Header, VaultError> {
    format::parse(bytes)
        .map(|p| p.header)
        .map_err(|e| format_error(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::vault::secret::Secret;
    use crate::vault::MasterKey;

    #[test]
    fn kek_id_depends_on_the_key_and_salt_only() {
        let key = MasterKey::generate();
        let a = derive(&Kek::Raw(key.clone()), KekSource::Raw)
            .unwrap()
            .unwrap();
        let b = derive(&Kek::Raw(key), KekSource::Raw).unwrap().unwrap();
        let c = derive(&Kek::Raw(MasterKey::generate()), KekSource::Raw)
            .unwrap()
            .unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);

        let pass = Kek::Passphrase(Secret::new("a long enough passphrase".to_owned()));
        let s1 = fresh_source(&pass).unwrap();
        let s2 = fresh_source(&pass).unwrap();
        assert_ne!(s1, s2, "fresh salt each time");
        let d1 = derive(&pass, s1).unwrap().unwrap();
        assert_eq!(d1.id, derive(&pass, s1).unwrap().unwrap().id);
        assert_ne!(d1.id, derive(&pass, s2).unwrap().unwrap().id);
        assert!(derive(&pass, KekSource::Raw).unwrap().is_none());
    }

    #[test]
    fn seal_then_open_and_every_write_uses_fresh_nonces() {
        let kek = Kek::Raw(MasterKey::generate());
        let derived = derive(&kek, KekSource::Raw).unwrap().unwrap();
        let dek = Dek::generate().unwrap();
        let one = seal(3, &derived, &dek, b"{\"keys\":[]}").unwrap();
        let two = seal(3, &derived, &dek, b"{\"keys\":[]}").unwrap();
        let nonce = |b: &[u8], at: usize| b[at..at + format::NONCE_LEN].to_vec();
        assert_ne!(
            nonce(&one, format::DEK_AAD_LEN),
            nonce(&two, format::DEK_AAD_LEN)
        );
        assert_ne!(
            nonce(&one, format::BODY_AAD_LEN),
            nonce(&two, format::BODY_AAD_LEN)
        );
        let opened = open(Path::new("v"), &one, &kek).unwrap();
        assert_eq!(opened.plaintext.as_slice(), b"{\"keys\":[]}");
        assert_eq!(opened.header.generation, 3);
        assert_eq!(opened.dek.0, dek.0);
    }

    #[test]
    fn a_newer_format_version_asks_for_a_newer_keygate() {
        let kek = Kek::Raw(MasterKey::generate());
        let derived = derive(&kek, KekSource::Raw).unwrap().unwrap();
        let mut bytes = seal(1, &derived, &Dek::generate().unwrap(), b"{}").unwrap();
        bytes[9] = 2;
        let text = peek(Path::new("v"), &bytes).unwrap_err().to_string();
        assert!(
            text.contains("version 2") && text.contains("too old"),
            "{text}"
        );
        bytes[9] = 0;
        let text = peek(Path::new("v"), &bytes).unwrap_err().to_string();
        assert!(text.contains("vault file modified or corrupted"), "{text}");
    }
}
