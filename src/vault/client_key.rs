//! Client keys (`kg_…`): generation, parsing at the edge, digests.
//!
//! Format (docs/design.md §6): `kg_` + 36 base62 characters from the OS RNG + a 6-character
//! base62 CRC32 of those 36, so a typo is rejected before any lookup and secret
//! scanners can validate a key offline. Only the SHA-256 of the whole key is
//! stored. This module never logs a key.

use sha2::{Digest, Sha256};

use crate::vault::secret::Secret;

const PREFIX: &str = "kg_";
const RANDOM_LEN: usize = 36;
const CHECK_LEN: usize = 6;
/// Total length of a client key.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a client key: what the vault stores and lookups compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKeyDigest(pub [u8; 32]);

impl std::fmt::Debug for ClientKeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKeyDigest({}…)", hex::encode(&self.0[..4]))
    }
}

impl ClientKeyDigest {
    /// Lower-case hex, as stored in the vault.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the vault's hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(ClientKeyDigest(out))
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

/// Why a presented client key was refused before lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientKeyError {
    /// Does not start with `kg_`, or has characters other than letters and digits.
    #[error("not a keygate client key (expected kg_ followed by 42 letters and digits)")]
    Malformed,
    /// `kg_` and letters and digits, but the checksum does not match, or the
    /// length is wrong: a typo, or a copy cut short or run on.
    #[error("client key checksum does not match (typo or truncated copy?)")]
    BadChecksum,
}

/// Checks the shape and checksum of a presented key and returns its digest.
pub fn parse(presented: &str) -> Result<ClientKeyDigest, ClientKeyError> {
    let Some(body) = presented.as_bytes().strip_prefix(PREFIX.as_bytes()) else {
        return Err(ClientKeyError::Malformed);
    };
    if body.is_empty() || !body.iter().all(u8::is_ascii_alphanumeric) {
        return Err(ClientKeyError::Malformed);
    }
    // Meant as a keygate key, but cut short or run on.
    if body.len() != RANDOM_LEN + CHECK_LEN {
        return Err(ClientKeyError::BadChecksum);
    }
    if let Some(digest) = last_parsed::digest_of(presented.as_bytes()) {
        return Ok(digest);
    }
    let (random, check) = body.split_at(RANDOM_LEN);
    if checksum(random) != check {
        return Err(ClientKeyError::BadChecksum);
    }
    let digest = digest(presented);
    last_parsed::remember(presented.as_bytes(), digest);
    Ok(digest)
}

/// The last well-formed key each thread parsed, with its digest: an app
/// sends the same key on request after request, and SHA-256 was the
/// largest single cost of authenticating one (3.9k of ~85k instructions per
/// request under callgrind). Compared in constant time, so a hit says only
/// that the whole key matched; the copy is wiped when replaced and when the
/// thread ends. The key is in this process's memory while a request holds
/// it anyway; this keeps one per worker thread for longer, never written or
/// logged.
mod last_parsed {
    use std::cell::RefCell;

    use subtle::ConstantTimeEq;
    use zeroize::Zeroizing;

    use super::{ClientKeyDigest, KEY_LEN};

    type Remembered = (Zeroizing<[u8; KEY_LEN]>, ClientKeyDigest);

    thread_local! {
        static LAST: RefCell<Option<Remembered>> = const { RefCell::new(None) };
    }

    /// The digest of `key` when it is the key this thread parsed last.
    pub(super) fn digest_of(key: &[u8]) -> Option<ClientKeyDigest> {
        LAST.with(|last| {
            let last = last.try_borrow().ok()?;
            let (known, digest) = last.as_ref()?;
            bool::from(known.as_slice().ct_eq(key)).then_some(*digest)
        })
    }

    /// Remembers `key` (a whole, checked key) and its digest.
    pub(super) fn remember(key: &[u8], digest: ClientKeyDigest) {
        let Ok(key) = <[u8; KEY_LEN]>::try_from(key) else {
            return;
        };
        LAST.with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((Zeroizing::new(key), digest));
            }
        });
    }
}

/// SHA-256 of the whole key.
pub fn digest(key: &str) -> ClientKeyDigest {
    ClientKeyDigest(Sha256::digest(key.as_bytes()).into())
}

/// A fresh client key (OS RNG) and its digest.
pub fn generate() -> std::io::Result<(Secret, ClientKeyDigest)> {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    let mut random = [0u8; RANDOM_LEN];
    let mut filled = 0;
    while filled < RANDOM_LEN {
        let mut byte = [0u8; 1];
        getrandom::getrandom(&mut byte).map_err(std::io::Error::other)?;
        // Rejection sampling keeps every base62 character equally likely.
        if byte[0] < 248 {
            random[filled] = BASE62[(byte[0] % 62) as usize];
            filled += 1;
        }
    }
    key.extend(random.iter().map(|&b| b as char));
    key.extend(checksum(&random).iter().map(|&b| b as char));
    let digest = digest(&key);
    Ok((Secret::new(key), digest))
}

fn checksum(random: &[u8]) -> [u8; CHECK_LEN] {
    let mut value = crc32fast::hash(random);
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_to_their_digest() {
        let (key, digest) = generate().unwrap();
        assert_eq!(key.expose().len(), KEY_LEN);
        assert!(key.expose().starts_with("kg_"));
        assert_eq!(parse(key.expose()).unwrap(), digest);
    }

    #[test]
    fn the_remembered_key_gives_its_own_digest_and_no_other() {
        let (first, first_digest) = generate().unwrap();
        let (second, second_digest) = generate().unwrap();
        for _ in 0..2 {
            assert_eq!(parse(first.expose()).unwrap(), first_digest);
            assert_eq!(parse(first.expose()).unwrap(), first_digest);
            assert_eq!(parse(second.expose()).unwrap(), second_digest);
        }
        // A typo of the remembered key is still a typo.
        let mut typo = second.expose().to_owned().into_bytes();
        typo[KEY_LEN - 1] = if typo[KEY_LEN - 1] == b'a' {
            b'b'
        } else {
            b'a'
        };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(parse(&typo), Err(ClientKeyError::BadChecksum));
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let (key, _) = generate().unwrap();
        let mut typo = key.expose().to_owned().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(parse(&typo), Err(ClientKeyError::BadChecksum));
        let cut = &key.expose()[..KEY_LEN - 1];
        assert_eq!(parse(cut), Err(ClientKeyError::BadChecksum));
        let longer = format!("{}0", key.expose());
        assert_eq!(parse(&longer), Err(ClientKeyError::BadChecksum));
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        assert_eq!(parse("sk-abc"), Err(ClientKeyError::Malformed));
        assert_eq!(parse("kg_"), Err(ClientKeyError::Malformed));
        assert_eq!(parse("KG_abc"), Err(ClientKeyError::Malformed));
        assert_eq!(
            parse(&format!("kg_{}", "!".repeat(42))),
            Err(ClientKeyError::Malformed)
        );
    }
}
