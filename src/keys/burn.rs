//! The leak response, behind both `keygate key burn` and `POST
//! /admin/keys/{id}/burn` (docs/design.md §2, §12): a replacement goes live
//! first — minted where the provider allows it, else the key handed in, or
//! none when told so and another usable key remains — then one vault write
//! makes the replacement current and revokes the burnt key with no grace, and
//! owes the provider its delete (Anthropic: disabling). The provider half is
//! [`super::cleanup`]'s, run right after by the caller.
//!
//! Only a `current` key needs a replacement; a `previous` or `pending` key is
//! just taken out of use.

use std::time::{Duration, Instant};

use crate::config::Provider;
use crate::events::EventType;
use crate::keys::mint::{self, MintRotateError, MintRotation, MintStep};
use crate::keys::ops::{self, Burnt, OpError};
use crate::keys::rotate::{self, RotateError, Rotation, VaultAccess};
use crate::net::upstream::Upstream;
use crate::vault::document::KeyState;
use crate::vault::secret::Secret;
use crate::vault::VaultError;
use serde_json::json;

/// Where the burnt key's replacement comes from.
pub enum Replacement<'a> {
    /// Created at the provider (`key rotate --mint`'s steps).
    Mint {
        /// How long the new key may take to start working.
        propagation_wait: Duration,
        /// The bound on each management API call.
        call_timeout: Duration,
    },
    /// Handed in (stdin, the admin API's `secret`).
    Given(&'a Secret),
    /// None (`--force`): another usable key must remain.
    Without,
}

/// One burn, as asked for.
pub struct Burn<'a> {
    /// The leaked key.
    pub key_id: &'a str,
    /// Its provider (the caller looked it up).
    pub provider: &'a Provider,
    /// Its replacement.
    pub replacement: Replacement<'a>,
    /// Verify the replacement before it goes live.
    pub verify: bool,
    /// Record that the provider must delete (disable) it ([`can_clean_up`]).
    pub at_provider: bool,
}

/// True when keygate can create a key at `provider`: a kind with that API,
/// its `[providers.NAME.admin]`, and a stored credential.
pub fn can_mint(document: &crate::vault::document::Document, provider: &Provider) -> bool {
    provider.kind.can_create()
        && provider.admin.is_some()
        && document.admin_key(&provider.name).is_some()
}

/// True when keygate can delete or disable `provider`'s keys at the provider:
/// a kind with that API, its `[providers.NAME.admin]`, and a stored credential.
pub fn can_clean_up(document: &crate::vault::document::Document, provider: &Provider) -> bool {
    provider.kind.can_remove()
        && provider.admin.is_some()
        && document.admin_key(&provider.name).is_some()
}

/// Why a burn did not happen; the burnt key is then still in use.
#[derive(Debug, thiserror::Error)]
pub enum BurnError {
    /// The document does not allow it.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The vault could not be written.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The replacement could not be staged or verified.
    #[error("no replacement went live, so {id} was NOT burnt and is still in use: {source}")]
    Replacement {
        /// The key that was to be burnt.
        id: String,
        /// Why.
        source: Box<MintRotateError>,
    },
    /// A current key with no replacement on offer.
    #[error("{id} is a current key of {provider}: give its replacement on stdin (or the admin API's \"secret\"), set up minting (`keygate admin-key set {provider}`), or pass --force to burn it without one while another usable key remains")]
    NeedsReplacement {
        /// The key.
        id: String,
        /// Its provider.
        provider: String,
    },
}

/// What a burn did, and how long each step took.
pub struct Burned {
    /// The vault write's result.
    pub burnt: Burnt,
    /// How the replacement was made ready (`"minted"`, `"given"`), if any.
    pub replacement_kind: Option<&'static str>,
    /// Time to a verified replacement.
    pub replacement_took: Duration,
    /// Time of the one write that took the key out of use.
    pub write_took: Duration,
}

/// True when burning `key_id` needs a replacement (it is `current`).
pub fn needs_replacement(
    document: &crate::vault::document::Document,
    key_id: &str,
) -> Result<bool, OpError> {
    document
        .key(key_id)
        .map(|k| k.state == KeyState::Current)
        .ok_or_else(|| OpError::UnknownKey(key_id.to_owned()))
}

/// Burns a key: replacement live, then the burnt key out in the same write.
pub async fn burn(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    burn: Burn<'_>,
    mut report: impl FnMut(MintStep<'_>),
) -> Result<Burned, BurnError> {
    let started = Instant::now();
    let document = vault.with(|v, k| v.load(k))?.document;
    let needed = needs_replacement(&document, burn.key_id)?;
    let replacement_failed = |source: MintRotateError| BurnError::Replacement {
        id: burn.key_id.to_owned(),
        source: Box::new(source),
    };
    let (replacement, kind) = match (needed, burn.replacement) {
        (false, _) | (true, Replacement::Without) => (None, None),
        (
            true,
            Replacement::Mint {
                propagation_wait,
                call_timeout,
            },
        ) => {
            let rotation = MintRotation {
                provider: burn.provider,
                label: Some(format!("replaces burnt {}", burn.key_id)),
                replace: None,
                verify: burn.verify,
                grace_until: 0,
                propagation_wait,
                call_timeout,
            };
            let id = mint::stage_verified(vault, upstream, rotation, &mut report)
                .await
                .map_err(replacement_failed)?;
            (Some(id), Some("minted"))
        }
        (true, Replacement::Given(secret)) => {
            let rotation = Rotation {
                provider: burn.provider,
                secret,
                label: Some(format!("replaces burnt {}", burn.key_id)),
                replace: None,
                verify_with: burn.verify.then_some(upstream),
                grace_until: 0,
            };
            let id =
                rotate::stage_verified(vault, rotation, |step| report(MintStep::Rotation(step)))
                    .await
                    .map_err(|e: RotateError| replacement_failed(e.into()))?;
            (Some(id), Some("given"))
        }
    };
    let replacement_took = started.elapsed();
    let written = Instant::now();
    let (verified, at_provider) = (burn.verify, burn.at_provider);
    let burnt = vault.with(|v, k| {
        v.update(k, |doc| {
            let now = crate::unix_now();
            if let (Some(id), true) = (&replacement, verified) {
                ops::mark_verified(doc, id, now)?;
            }
            Ok::<_, BurnError>(ops::burn(
                doc,
                burn.key_id,
                replacement.as_deref(),
                at_provider,
                now,
            )?)
        })
    })?;
    vault.events().raise(
        EventType::KeyBurned,
        json!({
            "provider": burn.provider.name,
            "key_id": burnt.burnt,
            "replacement_key_id": burnt.replacement,
            "replacement": kind,
            "deleted_at_provider_next": at_provider,
        }),
    );
    Ok(Burned {
        burnt,
        replacement_kind: kind,
        replacement_took,
        write_took: written.elapsed(),
    })
}
