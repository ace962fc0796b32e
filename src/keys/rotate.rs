//! The rotation service, the one sequence behind both `keygate key rotate`
//! and `POST /admin/keys/{provider}/rotate` ([`run`]):
//! stage (one write: pending) → verify (ask the upstream) →
//! promote (one write: pending → current, current → previous).
//!
//! Each step is its own vault write, so a crash between them leaves a pending
//! key that running the same rotation again resumes. How the vault is reached
//! is the caller's ([`VaultAccess`]): the CLI holds it open, the server takes
//! its single writer's lock for each write.

use std::time::Duration;

use crate::config::Provider;
use crate::events::{EventType, Events};
use crate::keys::ops::{self, NewKey, OpError, Promotion};
use crate::keys::verify::{self, Check, Verdict};
use crate::net::upstream::Upstream;
use crate::vault::document::{Document, KeyState};
use crate::vault::secret::Secret;
use crate::vault::{Kek, Vault, VaultError};
use serde_json::json;

/// How long the verification request of a rotation may take.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);

/// How the key services reach the vault for each of their writes, and
/// where they raise what they did.
pub trait VaultAccess {
    /// Runs `write` with the vault and its master key.
    fn with<R>(&self, write: impl FnOnce(&Vault, &Kek) -> R) -> R;
    /// Where rotations, mints, burns and deletes are told.
    fn events(&self) -> &Events;
}

/// A vault held open by the caller (the CLI).
pub struct OpenVault<'a> {
    /// The vault file.
    pub vault: &'a Vault,
    /// Its master key.
    pub kek: &'a Kek,
    /// The outbox the command writes its events to.
    pub events: &'a Events,
}

impl VaultAccess for OpenVault<'_> {
    fn with<R>(&self, write: impl FnOnce(&Vault, &Kek) -> R) -> R {
        write(self.vault, self.kek)
    }

    fn events(&self) -> &Events {
        self.events
    }
}

/// One rotation, as asked for.
pub struct Rotation<'a> {
    /// The provider whose key rotates.
    pub provider: &'a Provider,
    /// The new key ([`ops::upstream_secret`]).
    pub secret: &'a Secret,
    /// A label for humans.
    pub label: Option<String>,
    /// The current key it replaces (pools: required).
    pub replace: Option<&'a str>,
    /// Ask the upstream before promoting (`None`: promote unverified).
    pub verify_with: Option<&'a Upstream>,
    /// When the demoted key's grace ends (unix seconds).
    pub grace_until: u64,
}

/// What the rotation has done so far, for a caller that reports as it goes.
pub enum Step<'a> {
    /// The new key is in the vault as `pending`.
    Staged {
        /// Its id.
        id: &'a str,
    },
    /// The upstream's answer to the new key.
    Checked {
        /// The pending key.
        id: &'a str,
        /// The verdict.
        check: &'a Check,
    },
    /// Verification was skipped.
    Unverified,
}

/// Runs a rotation to its end: staged, verified (unless skipped), promoted.
/// `report` hears each step as it completes.
pub async fn run(
    vault: &impl VaultAccess,
    rotation: Rotation<'_>,
    report: impl FnMut(Step<'_>),
) -> Result<Promotion, RotateError> {
    let (replace, grace_until) = (rotation.replace, rotation.grace_until);
    let verified = rotation.verify_with.is_some();
    let provider = rotation.provider.name.clone();
    let trace = crate::keys::trace::RotationTrace::start(&provider, false);
    let result = match trace.around(stage_verified(vault, rotation, report)).await {
        Ok(pending) => vault.with(|v, k| promote(v, k, &pending, replace, verified, grace_until)),
        Err(error) => Err(error),
    };
    trace.end(result.as_ref());
    tell_rotation(vault.events(), &provider, result.as_ref(), verified, false);
    result
}

/// Raises `key_rotated` or `key_rotation_failed` for a rotation's end.
pub fn tell_rotation(
    events: &Events,
    provider: &str,
    result: Result<&Promotion, &(impl std::fmt::Display + ?Sized)>,
    verified: bool,
    minted: bool,
) {
    match result {
        Ok(promotion) => events.raise(
            EventType::KeyRotated,
            json!({
                "provider": provider,
                "key_id": promotion.promoted,
                "previous_key_id": promotion.demoted,
                "retired_key_id": promotion.retired,
                "verified": verified,
                "minted": minted,
            }),
        ),
        Err(error) => events.raise(
            EventType::KeyRotationFailed,
            json!({"provider": provider, "minted": minted, "error": error.to_string()}),
        ),
    }
}

/// The rotation's first two steps: the new key staged as pending and, unless
/// skipped, verified. Returns the pending id, ready to promote (or to replace
/// a burnt key).
pub async fn stage_verified(
    vault: &impl VaultAccess,
    rotation: Rotation<'_>,
    mut report: impl FnMut(Step<'_>),
) -> Result<String, RotateError> {
    let provider = &rotation.provider.name;
    let label = rotation.label;
    let pending = vault.with(|v, k| stage(v, k, provider, rotation.secret, label))?;
    report(Step::Staged { id: &pending });
    match rotation.verify_with {
        Some(upstream) => {
            let check =
                verify::verify(upstream, rotation.provider, rotation.secret, VERIFY_TIMEOUT).await;
            report(Step::Checked {
                id: &pending,
                check: &check,
            });
            vault.with(|v, k| settle_verdict(v, k, &pending, check))?;
        }
        None => report(Step::Unverified),
    }
    Ok(pending)
}

/// Why a rotation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The document does not allow it.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The vault could not be written.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The upstream refused the new key (now `rejected`).
    #[error("rotation aborted: the upstream refused the new key {id}: {explanation}. It is marked rejected (secret wiped); the current key is unchanged")]
    Rejected {
        /// The pending key, now rejected.
        id: String,
        /// Upstream's answer explained.
        explanation: String,
    },
    /// The new key works but its account is out of credit; it stays pending.
    #[error("rotation paused: the new key {id} is valid but its account is out of credit: {explanation}. It stays pending and the current key is unchanged: top up the account and run the same rotation again, or promote it anyway with --no-verify / \"verify\": false")]
    Exhausted {
        /// The pending key.
        id: String,
        /// Upstream's answer explained.
        explanation: String,
    },
    /// Verification said nothing certain; the key stays pending.
    #[error("rotation paused: could not verify {id}: {explanation}. It stays pending and the current key is unchanged: run the same rotation again, or skip verification (--no-verify / \"verify\": false)")]
    Inconclusive {
        /// The pending key.
        id: String,
        /// What happened.
        explanation: String,
    },
    /// The OS RNG failed.
    #[error("the OS random number generator failed: {0}")]
    Random(std::io::Error),
}

/// Step 1: the new key as `pending` (or the same pending key again). Returns its id.
pub fn stage(
    vault: &Vault,
    kek: &Kek,
    provider: &str,
    secret: &Secret,
    label: Option<String>,
) -> Result<String, RotateError> {
    stage_with(vault, kek, provider, secret, label, |_, _, _| Ok(()))
}

/// [`stage`], with `also` run in the same vault write on the document, the
/// staged key's id and the time (the minting service records there what it
/// created at the provider).
pub fn stage_with(
    vault: &Vault,
    kek: &Kek,
    provider: &str,
    secret: &Secret,
    label: Option<String>,
    also: impl FnOnce(&mut Document, &str, u64) -> Result<(), RotateError>,
) -> Result<String, RotateError> {
    let id = ops::new_key_id().map_err(RotateError::Random)?;
    vault.update(kek, |doc| {
        let now = crate::unix_now();
        ops::expire_grace(doc, now);
        let key = NewKey {
            id,
            provider,
            secret,
            label,
            state: KeyState::Pending,
        };
        let id = ops::add(doc, key, now)?;
        also(doc, &id, now)?;
        Ok::<_, RotateError>(id)
    })
}

/// Step 2's consequence: a refused key is recorded as rejected; a key whose
/// account is out of credit, or an inconclusive answer, leaves it pending (it
/// is not promoted without `--no-verify`). `Ok` means go on to step 3.
pub fn settle_verdict(vault: &Vault, kek: &Kek, id: &str, check: Check) -> Result<(), RotateError> {
    let explanation = check.describe();
    match check.verdict {
        Verdict::Ok => Ok(()),
        Verdict::Rejected => {
            vault.update(kek, |doc| {
                Ok::<_, RotateError>(ops::reject(
                    doc,
                    id,
                    explanation.clone(),
                    crate::unix_now(),
                )?)
            })?;
            Err(RotateError::Rejected {
                id: id.to_owned(),
                explanation,
            })
        }
        Verdict::Exhausted => Err(RotateError::Exhausted {
            id: id.to_owned(),
            explanation,
        }),
        Verdict::Inconclusive => Err(RotateError::Inconclusive {
            id: id.to_owned(),
            explanation,
        }),
    }
}

/// Step 3: promote in one write.
pub fn promote(
    vault: &Vault,
    kek: &Kek,
    id: &str,
    replace: Option<&str>,
    verified: bool,
    grace_until: u64,
) -> Result<Promotion, RotateError> {
    vault.update(kek, |doc| {
        let now = crate::unix_now();
        if verified {
            ops::mark_verified(doc, id, now)?;
        }
        Ok::<_, RotateError>(ops::promote(doc, id, replace, grace_until, now)?)
    })
}
