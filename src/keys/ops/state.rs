//! What every transition does to one key: find it by id, and set its state
//! with what leaving use costs it — the secret wiped (unless the provider
//! must still find the key by its hint), the grace ended, and for a key
//! keygate minted, a delete owed at the provider.

use super::error::OpError;
use crate::vault::document::{Document, KeyState, ProviderCleanup, UpstreamKey};

/// The key `id` of `document`.
pub(super) fn find<'a>(
    document: &'a mut Document,
    id: &str,
) -> Result<&'a mut UpstreamKey, OpError> {
    document
        .keys
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or_else(|| OpError::UnknownKey(id.to_owned()))
}

/// Moves `key` to `state` at `now`; out of use (retired, rejected,
/// revoked), it also pays what leaving use costs.
pub(super) fn set_state(key: &mut UpstreamKey, state: KeyState, now: u64) {
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
