//! Taking a key out of use before its time: revoke (refused for a
//! provider's last usable key without `force`), burn (a leak: the
//! replacement in and the key out in one write, no grace), and the delete a
//! key owes its provider — recorded here, settled by `keys::cleanup`.

use super::error::OpError;
use super::state::{find, set_state};
use crate::vault::document::{Document, KeyState, ProviderCleanup};

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
    use crate::keys::ops::test_keys::{key, secret};
    use crate::keys::ops::{add, expire_grace, promote};

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
