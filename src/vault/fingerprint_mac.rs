//! `fingerprint_mac`: how the vault remembers every upstream key it ever
//! held (docs/design.md §15), so a key found anywhere — a scanner's alert, a
//! leak report — can be named after its secret is wiped.
//!
//! It is HMAC-SHA256 of the secret under a key derived (HKDF-SHA256) from the
//! vault's data key, which is random per vault and kept across rekeys: the
//! same secret has the same MAC in one vault for ever, another in any other
//! vault, and without the data key a MAC says nothing about its secret — nor
//! can it be checked against a guess. Neither the key nor a MAC is ever shown
//! (`Debug` hides both; no summary carries a MAC).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::document::Document;
use super::VaultError;

/// The HKDF `info` that sets this key apart from every other use of the data key.
const INFO: &[u8] = b"keygate fingerprint_mac v1";

/// The MAC key of one vault (derived from its data key).
pub struct FingerprintKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(…)")
    }
}

impl FingerprintKey {
    /// The MAC key of the vault whose data key is `data_key`.
    pub(crate) fn derive(data_key: &[u8; 32]) -> Result<FingerprintKey, VaultError> {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, data_key)
            .expand(INFO, key.as_mut())
            .map_err(|_| VaultError::Crypto {
                detail: "HKDF expand failed",
            })?;
        Ok(FingerprintKey(key))
    }

    /// The `fingerprint_mac` of `secret`.
    pub fn mac(&self, secret: &str) -> FingerprintMac {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(secret.as_bytes());
        FingerprintMac(hex::encode(mac.finalize().into_bytes()))
    }

    /// Gives every upstream key that still holds its secret and has no MAC
    /// one (keys added since the last write, and every key of a vault
    /// written before MACs existed). Returns how many it filled.
    pub fn fill_missing(&self, document: &mut Document) -> usize {
        let mut filled = 0;
        for key in &mut document.keys {
            if let (None, Some(secret)) = (&key.fingerprint_mac, &key.secret) {
                key.fingerprint_mac = Some(self.mac(secret.expose()));
                filled += 1;
            }
        }
        filled
    }
}

/// The `fingerprint_mac` of one upstream key, as lower-case hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FingerprintMac(String);

impl FingerprintMac {
    /// Constant-time equality (a report's MAC against the vault's).
    pub fn ct_eq(&self, other: &FingerprintMac) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), other.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for FingerprintMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintMac(…)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::vault::document::{KeyState, UpstreamKey};
    use crate::vault::secret::Secret;

    fn secret(n: u32) -> Secret {
        Secret::new(format!("sk-test-{n:0>40}"))
    }

    #[test]
    fn the_mac_depends_on_the_secret_and_the_data_key() {
        let one = FingerprintKey::derive(&[1; 32]).unwrap();
        let again = FingerprintKey::derive(&[1; 32]).unwrap();
        let other = FingerprintKey::derive(&[2; 32]).unwrap();
        let text = secret(1);
        assert!(one.mac(text.expose()).ct_eq(&again.mac(text.expose())));
        assert!(!one.mac(text.expose()).ct_eq(&other.mac(text.expose())));
        assert!(!one.mac(text.expose()).ct_eq(&one.mac(secret(2).expose())));
        assert_eq!(one.mac(text.expose()).0.len(), 64);
        // Not a plain hash of the secret.
        let plain = hex::encode(<Sha256 as sha2::Digest>::digest(text.expose().as_bytes()));
        assert_ne!(one.mac(text.expose()).0, plain);
    }

    #[test]
    fn only_keys_holding_a_secret_and_no_mac_are_filled() {
        let key = FingerprintKey::derive(&[7; 32]).unwrap();
        let mut document = Document::default();
        for n in 0..3 {
            document.keys.push(UpstreamKey::new(
                format!("key_{n}"),
                "openai",
                &secret(n),
                None,
                KeyState::Current,
                1,
            ));
        }
        document.keys[1].secret = None;
        let kept = FingerprintKey::derive(&[8; 32]).unwrap().mac("earlier");
        document.keys[2].fingerprint_mac = Some(kept.clone());
        assert_eq!(key.fill_missing(&mut document), 1);
        assert!(document.keys[0]
            .fingerprint_mac
            .as_ref()
            .unwrap()
            .ct_eq(&key.mac(secret(0).expose())));
        assert!(document.keys[1].fingerprint_mac.is_none());
        assert_eq!(document.keys[2].fingerprint_mac, Some(kept));
        assert_eq!(key.fill_missing(&mut document), 0);
    }

    #[test]
    fn debug_shows_neither_the_key_nor_the_mac() {
        let key = FingerprintKey::derive(&[9; 32]).unwrap();
        let mac = key.mac("sk-test-secret");
        assert_eq!(
            format!("{key:?} {mac:?}"),
            "FingerprintKey(…) FingerprintMac(…)"
        );
    }
}
