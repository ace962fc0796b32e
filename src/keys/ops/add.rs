//! Adding a key: a new id, the one check of an upstream secret handed to
//! keygate, and the rules of what may stand beside it (no duplicate secret,
//! one pending and one previous key per provider).

use super::error::OpError;
use super::rotation::expire_grace;
use crate::vault::document::{Document, KeyState, UpstreamKey};
use crate::vault::secret::Secret;

/// A new, unused key id (`key_` + 8 hex digits, OS RNG).
pub fn new_key_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

/// A key to add to the vault document.
pub struct NewKey<'a> {
    /// Its id ([`new_key_id`]).
    pub id: String,
    /// Provider name from the config.
    pub provider: &'a str,
    /// The upstream key ([`upstream_secret`]).
    pub secret: &'a Secret,
    /// A label for humans.
    pub label: Option<String>,
    /// `current`, `previous` or `pending`.
    pub state: KeyState,
}

/// The one check of an upstream key handed to keygate (CLI stdin, admin API
/// body): the key alone, trimmed, not empty, no spaces or control characters.
pub fn upstream_secret(text: &str) -> Result<Secret, OpError> {
    let text = text.trim();
    if text.is_empty() || text.chars().any(|c| c.is_control() || c == ' ') {
        return Err(OpError::MalformedSecret);
    }
    Ok(Secret::new(text.to_owned()))
}

/// Adds a key to its provider in its state (`current`, `previous` or `pending`).
/// A pending key with the same secret is resumed (its id returned) so an
/// interrupted rotation can simply be run again.
pub fn add(document: &mut Document, key: NewKey<'_>, now: u64) -> Result<String, OpError> {
    let NewKey {
        id,
        provider,
        secret,
        label,
        state,
    } = key;
    let same_provider = document.keys.iter().filter(|k| k.provider == provider);
    for existing in same_provider {
        if existing.secret.as_ref() == Some(secret) {
            if existing.state == KeyState::Pending && state == KeyState::Pending {
                return Ok(existing.id.clone());
            }
            return Err(OpError::Duplicate {
                id: existing.id.clone(),
                state: existing.state.as_str(),
            });
        }
        if state == KeyState::Pending && existing.state == KeyState::Pending {
            return Err(OpError::PendingExists {
                provider: provider.to_owned(),
                id: existing.id.clone(),
            });
        }
        if state == KeyState::Previous && existing.state == KeyState::Previous {
            return Err(OpError::WrongState {
                id: existing.id.clone(),
                state: "previous",
                what: "a provider has at most one fallback key; revoke it first",
            });
        }
    }
    document.keys.push(UpstreamKey::new(
        id.clone(),
        provider,
        secret,
        label,
        state,
        now,
    ));
    Ok(id)
}

/// [`add`] at the current time, after retiring every `previous` key whose
/// grace has ended (what every write that adds a key does first).
pub fn add_now(document: &mut Document, key: NewKey<'_>) -> Result<String, OpError> {
    let now = crate::unix_now();
    expire_grace(document, now);
    add(document, key, now)
}
