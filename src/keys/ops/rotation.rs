//! A rotation's moves: a verified pending key promoted to current (the old
//! current becomes `previous`, the fallback, until its grace ends), a
//! refused one rejected, a rollback that swaps current and previous, and the
//! end of grace, which retires the previous key.

use super::error::OpError;
use super::state::{find, set_state};
use crate::vault::document::{Document, KeyState};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ops::test_keys::{key, secret, states};
    use crate::keys::ops::{add, revoke};

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
}
