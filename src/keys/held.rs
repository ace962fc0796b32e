//! Which key keygate holds a given secret is (docs/design.md §15, §16): an
//! upstream key it ever held, by `fingerprint_mac` (kept after the secret is
//! wiped, so a retired key is still named), else a client key it issued, by
//! SHA-256 (a client's current or previous key). For leak reports and
//! `keygate scan`. Pure; compares in constant time.

use crate::vault::client_key::{self, ClientKeyDigest};
use crate::vault::document::{ClientRecord, Document, KeyState, UpstreamKey};
use crate::vault::fingerprint_mac::FingerprintKey;

/// A key keygate holds (or held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// An upstream key of the vault.
    Upstream {
        /// Its id.
        id: String,
        /// Its provider.
        provider: String,
        /// Its state.
        state: KeyState,
    },
    /// A client key.
    Client {
        /// The client.
        name: String,
        /// The client is revoked.
        revoked: bool,
        /// The key is a decoy (never valid).
        decoy: bool,
    },
}

impl Held {
    /// True when the key still opens something: an upstream key in use, an
    /// active client's key.
    pub fn is_usable(&self) -> bool {
        match self {
            Held::Upstream { state, .. } => state.is_usable() || *state == KeyState::Pending,
            Held::Client { revoked, decoy, .. } => !revoked && !decoy,
        }
    }

    /// `vault key_1c9e03aa current`, `client app`, `client app (revoked)`.
    pub fn describe(&self) -> String {
        match self {
            Held::Upstream { id, state, .. } => format!("vault {id} {}", state.as_str()),
            Held::Client {
                name, decoy: true, ..
            } => format!("client {name} (decoy)"),
            Held::Client {
                name,
                revoked: true,
                ..
            } => format!("client {name} (revoked)"),
            Held::Client { name, .. } => format!("client {name}"),
        }
    }
}

/// The held key `key` is, and how it was matched (`fingerprint_mac` or `sha256`).
pub fn by_key(
    document: &Document,
    fingerprints: &FingerprintKey,
    key: &str,
) -> Option<(Held, &'static str)> {
    let mac = fingerprints.mac(key);
    // A key of a vault not written since MACs exist has none yet.
    let matches = |k: &&UpstreamKey| match (&k.fingerprint_mac, &k.secret) {
        (Some(held), _) => held.ct_eq(&mac),
        (None, Some(secret)) => fingerprints.mac(secret.expose()).ct_eq(&mac),
        (None, None) => false,
    };
    if let Some(k) = document.keys.iter().find(matches) {
        let held = Held::Upstream {
            id: k.id.clone(),
            provider: k.provider.clone(),
            state: k.state,
        };
        return Some((held, "fingerprint_mac"));
    }
    by_client_digest(document, &client_key::digest(key)).map(|held| (held, "sha256"))
}

/// The client whose key has SHA-256 `digest` (its current or previous key).
pub fn by_client_digest(document: &Document, digest: &ClientKeyDigest) -> Option<Held> {
    let issued = |hex: &str| ClientKeyDigest::from_hex(hex).is_some_and(|d| d.ct_eq(digest));
    let is_client = |c: &&ClientRecord| {
        issued(&c.key_sha256) || c.old_key.as_ref().is_some_and(|o| issued(&o.key_sha256))
    };
    // The active record first: a name may have been revoked and issued again.
    let client = document
        .clients
        .iter()
        .filter(is_client)
        .min_by_key(|c| c.revoked.is_some())?;
    Some(Held::Client {
        name: client.name.clone(),
        revoked: client.revoked.is_some(),
        decoy: client.decoy,
    })
}
