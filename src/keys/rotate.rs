//! The three steps of a zero-downtime rotation, shared by `keygate key rotate`
//! and `POST /admin/keys/{provider}/rotate`:
//! stage (one write: pending) → verify (the caller calls the upstream) →
//! promote (one write: pending → current, current → previous).
//!
//! Each step is its own vault write, so a crash between them leaves a pending
//! key that running the same rotation again resumes.

use crate::keys::ops::{self, OpError, Promotion};
use crate::keys::verify::{Check, Verdict};
use crate::secret::Secret;
use crate::vault::document::KeyState;
use crate::vault::{Kek, Vault, VaultError};

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
    let id = ops::new_key_id().map_err(RotateError::Random)?;
    vault.update(kek, |doc| {
        let now = crate::unix_now();
        ops::expire_grace(doc, now);
        Ok::<_, RotateError>(ops::add(
            doc,
            id,
            provider,
            secret,
            label,
            KeyState::Pending,
            now,
        )?)
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
