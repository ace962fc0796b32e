//! Key lifecycle transitions on the vault document (docs/design.md §5), pure: the
//! caller runs them inside one `Vault::update`, so each is one atomic write.
//!
//! ```text
//! add/rotate ─► pending ──verify 2xx──► current ──next rotation──► previous ──grace over──► retired (secret wiped)
//!                  └─verify 401/403─► rejected (secret wiped, reason kept)
//! rollback: current ⇄ previous in one write      revoke: any ─► revoked (refused for the last usable key without --force)
//! burn: the replacement pending ─► current and the burnt key ─► revoked, in one write, no grace
//! ```
//!
//! A key keygate minted owes the provider a delete the moment it leaves use
//! (retired, rejected, revoked); any key can be made to owe one
//! ([`owe_at_provider`]). What is owed is recorded on the key
//! (`at_provider`) and settled by `keys::cleanup`.

use crate::vault::document::{Document, KeyState, ProviderCleanup, UpstreamKey};
use crate::vault::secret::Secret;

/// A transition the document does not allow; says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The key handed in is not a key alone.
    #[error(
        "the key is empty or contains spaces or control characters; paste only the key itself"
    )]
    MalformedSecret,
    /// No key with that id.
    #[error("no key {0} (see `keygate key list`)")]
    UnknownKey(String),
    /// Another rotation is half done.
    #[error("provider {provider} already has a pending key {id} from an unfinished rotation: finish it with `keygate key promote {id}` or drop it with `keygate key revoke {id}`")]
    PendingExists {
        /// Provider.
        provider: String,
        /// The pending key.
        id: String,
    },
    /// Several current keys and no `--replace`.
    #[error("provider {provider} has several current keys ({ids}); say which one the new key replaces with --replace KEY_ID")]
    AmbiguousReplace {
        /// Provider.
        provider: String,
        /// The current ids.
        ids: String,
    },
    /// `--replace` names a key that is not current.
    #[error("--replace {0}: that key is not a current key of this provider")]
    NotCurrent(String),
    /// The state does not allow it.
    #[error("key {id} is {state}; {what}")]
    WrongState {
        /// Key id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What is allowed.
        what: &'static str,
    },
    /// Rollback without a fallback.
    #[error("provider {0} has no previous key to roll back to")]
    NoPrevious(String),
    /// Revoking the last usable key.
    #[error("key {id} is the last usable key of {provider}: revoking it stops all traffic to {provider}. Add or rotate in another key first, or pass --force")]
    LastUsableKey {
        /// Key id.
        id: String,
        /// Provider.
        provider: String,
    },
    /// The same secret is already stored.
    #[error("this key is already in the vault as {id} ({state})")]
    Duplicate {
        /// Existing id.
        id: String,
        /// Its state.
        state: &'static str,
    },
}

/// A new, unused key id (`key_` + 8 hex digits, OS RNG).
pub fn new_key_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

fn find<'a>(document: &'a mut Document, id: &str) -> Result<&'a mut UpstreamKey, OpError> {
    document
        .keys
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or_else(|| OpError::UnknownKey(id.to_owned()))
}

fn set_state(key: &mut UpstreamKey, state: KeyState, now: u64) {
    key.state = state;
    key.state_changed = now;
    if matches!(
        state,
        KeyState::Retired | KeyState::Rejected | KeyState::Revoked
    ) {
        if let (Some(minted), None) = (&key.minted, &key.at_provider) {
            key.at_provider = Some(ProviderCleanup {
                provider_id: Some(minted.provider_id.clone()),
                done: None,
                attempts: 0,
                last_error: None,
            });
        }
        // A key found at the provider by its hint keeps its secret (never
        // served again) until the provider confirmed the delete.
        let needs_hint = key
            .at_provider
            .as_ref()
            .is_some_and(|c| c.pending() && c.provider_id.is_none());
        if !needs_hint {
            key.secret = None; // Secret zeroizes on drop.
        }
        key.grace_until = None;
    }
}

/// Records that `id` must also be deleted (Anthropic: disabled) at the
/// provider (`--at-provider`, `key burn`). Call before the transition that
/// takes it out of use. A key keygate did not mint is found there by its hint,
/// so it needs its secret still.
pub fn owe_at_provider(document: &mut Document, id: &str) -> Result<(), OpError> {
    let key = find(document, id)?;
    if key.at_provider.is_some() {
        return Ok(());
    }
    let provider_id = key.minted.as_ref().map(|m| m.provider_id.clone());
    if provider_id.is_none() && key.secret.is_none() {
        return Err(OpError::WrongState {
            id: id.to_owned(),
            state: key.state.as_str(),
            what: "its secret is already wiped, so keygate cannot find it at the provider: delete it in the provider's console",
        });
    }
    key.at_provider = Some(ProviderCleanup {
        provider_id,
        done: None,
        attempts: 0,
        last_error: None,
    });
    Ok(())
}

/// What a burn did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burnt {
    /// The burnt key, now revoked.
    pub burnt: String,
    /// Its replacement, now current.
    pub replacement: Option<String>,
}

/// Burns `id` in one write: `replacement` (a pending key) becomes current,
/// `id` is revoked with no grace and, with `at_provider`, owes the provider
/// a delete. Without a replacement, another usable key must remain.
pub fn burn(
    document: &mut Document,
    id: &str,
    replacement: Option<&str>,
    at_provider: bool,
    now: u64,
) -> Result<Burnt, OpError> {
    let key = find(document, id)?;
    if !(key.state.is_usable() || key.state == KeyState::Pending) {
        return Err(OpError::WrongState {
            id: id.to_owned(),
            state: key.state.as_str(),
            what: "it is already out of use: `keygate key revoke --at-provider` is for its provider half",
        });
    }
    let provider = key.provider.clone();
    if let Some(new) = replacement {
        let new_key = find(document, new)?;
        if new_key.state != KeyState::Pending || new_key.provider != provider {
            return Err(OpError::WrongState {
                id: new.to_owned(),
                state: new_key.state.as_str(),
                what: "a replacement must be a pending key of the same provider",
            });
        }
    } else {
        let others_usable = document.keys.iter().any(|k| {
            k.provider == provider && k.id != id && k.state.is_usable() && k.secret.is_some()
        });
        if !others_usable {
            return Err(OpError::LastUsableKey {
                id: id.to_owned(),
                provider,
            });
        }
    }
    if at_provider {
        owe_at_provider(document, id)?;
    }
    for key in document.keys.iter_mut() {
        if key.id == id {
            set_state(key, KeyState::Revoked, now);
            key.reason = Some("burnt (leaked): out of use at once, no grace".to_owned());
        } else if Some(key.id.as_str()) == replacement {
            set_state(key, KeyState::Current, now);
            key.grace_until = None;
        }
    }
    Ok(Burnt {
        burnt: id.to_owned(),
        replacement: replacement.map(str::to_owned),
    })
}

/// Retires every `previous` key whose grace is over (wiping its secret).
/// Returns the ids retired.
pub fn expire_grace(document: &mut Document, now: u64) -> Vec<String> {
    let mut retired = Vec::new();
    for key in &mut document.keys {
        if key.state == KeyState::Previous && key.grace_until.is_some_and(|t| t <= now) {
            set_state(key, KeyState::Retired, now);
            retired.push(key.id.clone());
        }
    }
    retired
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

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The key now current.
    pub promoted: String,
    /// The old current, now `previous` (the fallback), if any.
    pub demoted: Option<String>,
    /// The old `previous`, now retired, if any.
    pub retired: Option<String>,
}

/// Promotes `id` (pending or previous) to current in place of `replace` (or of
/// the only current key), which becomes `previous` until `grace_until`. One
/// write moves every label: no reader sees two currents of one rotation, or none.
pub fn promote(
    document: &mut Document,
    id: &str,
    replace: Option<&str>,
    grace_until: u64,
    now: u64,
) -> Result<Promotion, OpError> {
    let key = find(document, id)?;
    if !matches!(key.state, KeyState::Pending | KeyState::Previous) {
        return Err(OpError::WrongState {
            id: id.to_owned(),
            state: key.state.as_str(),
            what: "only a pending or previous key can be promoted",
        });
    }
    let provider = key.provider.clone();
    let currents: Vec<String> = document
        .keys
        .iter()
        .filter(|k| k.provider == provider && k.state == KeyState::Current)
        .map(|k| k.id.clone())
        .collect();
    let demote = match (replace, currents.as_slice()) {
        (Some(r), _) if currents.iter().any(|c| c == r) => Some(r.to_owned()),
        (Some(r), _) => return Err(OpError::NotCurrent(r.to_owned())),
        (None, []) => None,
        (None, [only]) => Some(only.clone()),
        (None, many) => {
            return Err(OpError::AmbiguousReplace {
                provider,
                ids: many.join(", "),
            })
        }
    };
    let mut retired = None;
    for other in document.keys.iter_mut().filter(|k| k.provider == provider) {
        if other.id == id {
            set_state(other, KeyState::Current, now);
            other.grace_until = None;
        } else if Some(&other.id) == demote.as_ref() {
            set_state(other, KeyState::Previous, now);
            other.grace_until = Some(grace_until);
        } else if other.state == KeyState::Previous && demote.is_some() {
            set_state(other, KeyState::Retired, now);
            retired = Some(other.id.clone());
        }
    }
    Ok(Promotion {
        promoted: id.to_owned(),
        demoted: demote,
        retired,
    })
}

/// Verification refused a pending key: rejected, secret wiped, reason kept.
pub fn reject(document: &mut Document, id: &str, reason: String, now: u64) -> Result<(), OpError> {
    let key = find(document, id)?;
    set_state(key, KeyState::Rejected, now);
    key.reason = Some(reason);
    Ok(())
}

/// Records a successful verification.
pub fn mark_verified(document: &mut Document, id: &str, now: u64) -> Result<(), OpError> {
    find(document, id)?.last_verified = Some(now);
    Ok(())
}

/// Swaps the most recently promoted current key with the previous one.
/// Returns `(now current, now previous)`.
pub fn rollback(
    document: &mut Document,
    provider: &str,
    grace_until: u64,
    now: u64,
) -> Result<(String, String), OpError> {
    let previous = document
        .keys
        .iter()
        .find(|k| k.provider == provider && k.state == KeyState::Previous && k.secret.is_some())
        .map(|k| k.id.clone())
        .ok_or_else(|| OpError::NoPrevious(provider.to_owned()))?;
    let current = document
        .keys
        .iter()
        .filter(|k| k.provider == provider && k.state == KeyState::Current)
        .max_by_key(|k| k.state_changed)
        .map(|k| k.id.clone());
    for key in document.keys.iter_mut() {
        if key.id == previous {
            set_state(key, KeyState::Current, now);
            key.grace_until = None;
        } else if Some(&key.id) == current.as_ref() {
            set_state(key, KeyState::Previous, now);
            key.grace_until = Some(grace_until);
        }
    }
    Ok((previous, current.unwrap_or_default()))
}

/// Revokes `id`. Refused for the provider's last usable key unless `force`.
pub fn revoke(
    document: &mut Document,
    id: &str,
    reason: Option<String>,
    force: bool,
    now: u64,
) -> Result<(), OpError> {
    let key = find(document, id)?;
    if key.state == KeyState::Revoked {
        return Err(OpError::WrongState {
            id: id.to_owned(),
            state: "revoked",
            what: "nothing to do",
        });
    }
    let provider = key.provider.clone();
    let was_usable = key.state.is_usable();
    let others_usable = document
        .keys
        .iter()
        .any(|k| k.provider == provider && k.id != id && k.state.is_usable() && k.secret.is_some());
    if was_usable && !others_usable && !force {
        return Err(OpError::LastUsableKey {
            id: id.to_owned(),
            provider,
        });
    }
    let key = find(document, id)?;
    set_state(key, KeyState::Revoked, now);
    key.reason = reason;
    Ok(())
}

/// Records the provider's answer to what `id` owed it: done (the secret
/// wiped if the key is out of use), or one more failed attempt.
pub fn settle_at_provider(
    document: &mut Document,
    id: &str,
    outcome: Result<Option<String>, String>,
    now: u64,
) -> Result<(), OpError> {
    let key = find(document, id)?;
    let Some(cleanup) = key.at_provider.as_mut() else {
        return Ok(());
    };
    match outcome {
        Ok(found_id) => {
            cleanup.done = Some(now);
            cleanup.last_error = None;
            if cleanup.provider_id.is_none() {
                cleanup.provider_id = found_id;
            }
            if !key.state.is_usable() && key.state != KeyState::Pending {
                key.secret = None;
            }
        }
        Err(error) => {
            cleanup.attempts = cleanup.attempts.saturating_add(1);
            cleanup.last_error = Some(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> Secret {
        Secret::new(format!("sk-test-{n:02}-0000000000000000"))
    }

    fn key<'a>(id: &str, secret: &'a Secret, state: KeyState) -> NewKey<'a> {
        NewKey {
            id: id.to_owned(),
            provider: "openai",
            secret,
            label: None,
            state,
        }
    }

    fn states(document: &Document) -> Vec<(String, &'static str)> {
        document
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.state.as_str()))
            .collect()
    }

    #[test]
    fn rotation_moves_both_labels_in_one_step() {
        let mut doc = Document::default();
        add(&mut doc, key("k1", &secret(1), KeyState::Current), 1).unwrap();
        let pending = add(&mut doc, key("k2", &secret(2), KeyState::Pending), 2).unwrap();
        // Running the same rotation again resumes it.
        assert_eq!(
            add(&mut doc, key("k9", &secret(2), KeyState::Pending), 2).unwrap(),
            "k2"
        );
        // A different pending key is refused while one is pending.
        assert!(matches!(
            add(&mut doc, key("k3", &secret(3), KeyState::Pending), 2),
            Err(OpError::PendingExists { .. })
        ));
        let promotion = promote(&mut doc, &pending, None, 100, 3).unwrap();
        assert_eq!(promotion.demoted.as_deref(), Some("k1"));
        assert_eq!(
            states(&doc),
            [("k1".into(), "previous"), ("k2".into(), "current")]
        );
        assert_eq!(doc.keys[0].grace_until, Some(100));
        assert_eq!(expire_grace(&mut doc, 100), ["k1"]);
        assert!(doc.keys[0].secret.is_none(), "retired secrets are wiped");
    }

    #[test]
    fn rollback_swaps_current_and_previous() {
        let mut doc = Document::default();
        add(&mut doc, key("k1", &secret(1), KeyState::Current), 1).unwrap();
        add(&mut doc, key("k2", &secret(2), KeyState::Pending), 2).unwrap();
        promote(&mut doc, "k2", None, 100, 3).unwrap();
        assert_eq!(
            rollback(&mut doc, "openai", 200, 4).unwrap(),
            ("k1".into(), "k2".into())
        );
        assert_eq!(
            states(&doc),
            [("k1".into(), "current"), ("k2".into(), "previous")]
        );
    }

    #[test]
    fn pools_need_replace_and_last_key_needs_force() {
        let mut doc = Document::default();
        add(&mut doc, key("a", &secret(1), KeyState::Current), 1).unwrap();
        add(&mut doc, key("b", &secret(2), KeyState::Current), 1).unwrap();
        add(&mut doc, key("n", &secret(3), KeyState::Pending), 1).unwrap();
        assert!(matches!(
            promote(&mut doc, "n", None, 9, 2),
            Err(OpError::AmbiguousReplace { .. })
        ));
        promote(&mut doc, "n", Some("b"), 9, 2).unwrap();
        assert_eq!(
            states(&doc),
            [
                ("a".into(), "current"),
                ("b".into(), "previous"),
                ("n".into(), "current")
            ]
        );
        revoke(&mut doc, "a", None, false, 3).unwrap();
        revoke(&mut doc, "b", None, false, 3).unwrap();
        assert!(matches!(
            revoke(&mut doc, "n", None, false, 3),
            Err(OpError::LastUsableKey { .. })
        ));
        revoke(&mut doc, "n", None, true, 3).unwrap();
    }

    #[test]
    fn minted_keys_owe_a_delete_when_they_leave_use_and_burn_is_one_step() {
        use crate::vault::document::MintRecord;
        let mut doc = Document::default();
        add(&mut doc, key("hand", &secret(1), KeyState::Current), 1).unwrap();
        add(&mut doc, key("m1", &secret(2), KeyState::Pending), 1).unwrap();
        doc.keys[1].minted = Some(MintRecord {
            provider_id: "svc_1".into(),
            name: "keygate-openai-1".into(),
        });
        promote(&mut doc, "m1", None, 5, 2).unwrap();
        expire_grace(&mut doc, 5);
        assert!(
            doc.keys[0].at_provider.is_none(),
            "a hand-added key owes nothing"
        );
        add(&mut doc, key("m2", &secret(3), KeyState::Pending), 6).unwrap();
        promote(&mut doc, "m2", None, 7, 6).unwrap();
        expire_grace(&mut doc, 7);
        let owed = doc.keys[1].at_provider.clone().unwrap();
        assert_eq!(owed.provider_id.as_deref(), Some("svc_1"));
        assert!(owed.pending() && doc.keys[1].secret.is_none());
        assert_eq!(doc.keys[1].state_shown(), "retired (delete pending)");
        settle_at_provider(&mut doc, "m1", Ok(None), 8).unwrap();
        assert_eq!(doc.keys[1].state_shown(), "retired");

        // Burning a hand-made key: it keeps its secret until found by its hint.
        add(&mut doc, key("h2", &secret(4), KeyState::Current), 9).unwrap();
        add(&mut doc, key("r", &secret(5), KeyState::Pending), 9).unwrap();
        let burnt = burn(&mut doc, "h2", Some("r"), true, 10).unwrap();
        assert_eq!(burnt.replacement.as_deref(), Some("r"));
        let h2 = doc.keys.iter().find(|k| k.id == "h2").unwrap();
        assert_eq!(h2.state, KeyState::Revoked);
        assert!(h2.secret.is_some() && h2.at_provider.as_ref().unwrap().provider_id.is_none());
        settle_at_provider(&mut doc, "h2", Ok(Some("key_x".into())), 11).unwrap();
        let h2 = doc.keys.iter().find(|k| k.id == "h2").unwrap();
        assert!(h2.secret.is_none(), "wiped once the provider confirmed");
        let states: Vec<_> = doc.keys.iter().map(|k| (k.id.as_str(), k.state)).collect();
        assert!(states.contains(&("r", KeyState::Current)));
        // Without a replacement: fine while another usable key remains, not for the last.
        burn(&mut doc, "m2", None, true, 12).unwrap();
        assert!(matches!(
            burn(&mut doc, "r", None, false, 12),
            Err(OpError::LastUsableKey { .. })
        ));
    }
}
