//! Keys keygate creates itself (docs/design.md §12): the minted rotation
//! built on the rotation service's steps ([`rotate`]): clear orphans → mint
//! (one management call) → stage (one write that also records the
//! provider's id) → verify, patiently, since a new key takes a moment to reach
//! the provider's inference API → promote.
//!
//! Every step is one vault write or one provider call, so a crash anywhere
//! leaves something the next run resumes: a minted pending key is verified and
//! promoted, not minted again; a key the provider created but the vault never
//! recorded is an *orphan*, found by the name keygate gives every key it
//! creates (`keygate-PROVIDER-…`) and deleted before anything new is created.

use std::time::{Duration, Instant};

use crate::config::Provider;
use crate::events::EventType;
use crate::keys::management::{ManagementApi, ManagementError};
use crate::keys::ops::{OpError, Promotion};
use crate::keys::rotate::{self, RotateError, Step, VaultAccess};
use crate::keys::verify::{self, Check, Verdict};
use crate::net::upstream::Upstream;
use crate::providers::management::{Listed, Listing};
use crate::vault::document::{Document, KeyState, MintRecord};
use crate::vault::secret::Secret;
use crate::vault::{Kek, Vault};
use serde_json::json;

/// How long a minted key is given to start working before it counts as refused.
pub const PROPAGATION_WAIT: Duration = Duration::from_secs(60);

/// Why the provider did not create a key.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No management credential in the vault.
    #[error("no management credential is stored for {0}: run `keygate admin-key set {0}` (see docs/keys.md, \"Management credentials\")")]
    NoAdminKey(String),
    /// No `[providers.NAME.admin]` table.
    #[error("[providers.{0}.admin] is not configured: add it (project for openai, team for xai; docs/vault-and-config.md) so keygate knows where to create keys")]
    NotConfigured(String),
    /// The provider's kind has no key-creating API.
    #[error("{provider} (kind {kind}) cannot create keys through an API: rotate it with a key on stdin (`keygate key rotate {provider}`)")]
    CannotMint {
        /// Provider name.
        provider: String,
        /// Its kind.
        kind: &'static str,
    },
    /// A pending key keygate did not mint would block staging the minted one.
    #[error("{provider} already has a pending key {id}: finish that rotation (`keygate key promote {id}`) or revoke it before minting a new key")]
    PendingExists {
        /// Provider name.
        provider: String,
        /// The pending key.
        id: String,
    },
    /// The management API failed before anything new was recorded.
    #[error("{source}; nothing was recorded in the vault{}", if source.outcome_unknown() { format!(". If the provider created {name} anyway, the next `keygate key rotate --mint` finds it by that name and deletes it") } else { String::new() })]
    Api {
        /// The failure.
        source: ManagementError,
        /// The name keygate asked for (or would have).
        name: String,
    },
}

/// One minted rotation, as asked for.
pub struct MintRotation<'a> {
    /// The provider whose key rotates.
    pub provider: &'a Provider,
    /// A label for humans.
    pub label: Option<String>,
    /// The current key it replaces (pools: required).
    pub replace: Option<&'a str>,
    /// Verify before promoting (`false`: `--no-verify`).
    pub verify: bool,
    /// When the demoted key's grace ends (unix seconds).
    pub grace_until: u64,
    /// How long the new key may take to start working ([`PROPAGATION_WAIT`]).
    pub propagation_wait: Duration,
    /// The bound on each management API call ([`crate::keys::management::CALL_TIMEOUT`]).
    pub call_timeout: Duration,
}

/// What a minted rotation reports as it goes, beyond the rotation's own steps.
pub enum MintStep<'a> {
    /// A minted pending key from an interrupted run is taken up again.
    Resumed {
        /// The pending key.
        id: &'a str,
    },
    /// A key keygate created at the provider but never recorded was deleted there.
    OrphanDeleted {
        /// The name keygate gave it.
        name: &'a str,
        /// The provider's id.
        provider_id: &'a str,
    },
    /// The provider created the key.
    Created {
        /// The name keygate gave it.
        name: &'a str,
        /// The provider's id.
        provider_id: &'a str,
    },
    /// A rotation step.
    Rotation(Step<'a>),
    /// The key did not work yet; trying again after `after`.
    Waiting {
        /// The last answer.
        check: &'a Check,
        /// The pause before the next try.
        after: Duration,
    },
}

/// Why a minted rotation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MintRotateError {
    /// Nothing was created.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The key was created at the provider, then the rotation stopped.
    #[error("{0}")]
    Rotate(#[from] RotateError),
    /// The vault could not be read before minting.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// The name prefix of every key keygate creates at `provider`.
pub fn name_prefix(provider: &str) -> String {
    format!("keygate-{provider}-")
}

/// Mints a key at the provider and rotates to it: resume a minted pending
/// key, or delete orphans and create one; stage (recording the provider's id
/// and name); verify with backoff for up to the propagation wait; promote. A
/// key the provider created that never worked is left `rejected` and owes
/// the provider its delete.
pub async fn rotate(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    rotation: MintRotation<'_>,
    report: impl FnMut(MintStep<'_>),
) -> Result<Promotion, MintRotateError> {
    let (replace, verified, grace_until) =
        (rotation.replace, rotation.verify, rotation.grace_until);
    let provider = rotation.provider.name.clone();
    let trace = crate::keys::trace::RotationTrace::start(&provider, true);
    let result = match trace
        .around(stage_verified(vault, upstream, rotation, report))
        .await
    {
        Ok(pending) => vault
            .with(|v, k| rotate::promote(v, k, &pending, replace, verified, grace_until))
            .map_err(MintRotateError::from),
        Err(error) => Err(error),
    };
    trace.end(result.as_ref());
    rotate::tell_rotation(vault.events(), &provider, result.as_ref(), verified, true);
    let promotion = result?;
    crate::keys::crash_point("promoted");
    Ok(promotion)
}

/// The minted rotation's steps up to promotion: a working minted key staged
/// as pending (resumed, or created after clearing orphans). Returns its id.
pub async fn stage_verified(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    rotation: MintRotation<'_>,
    mut report: impl FnMut(MintStep<'_>),
) -> Result<String, MintRotateError> {
    let provider = rotation.provider;
    let ready = vault.with(|v, k| preflight(v, k, provider))?;
    let (pending, secret) = match ready.resume {
        Some((id, secret)) => {
            report(MintStep::Resumed { id: &id });
            (id, secret)
        }
        None => {
            let name = format!("{}{}", name_prefix(&provider.name), unique_suffix());
            let api_error = |source| MintError::Api {
                source,
                name: name.clone(),
            };
            let api = ManagementApi::new(upstream, provider, &ready.admin)
                .map_err(api_error)?
                .with_timeout(rotation.call_timeout)
                .scrubbing(&ready.document);
            for orphan in orphans(&api, &ready.document, &provider.name)
                .await
                .map_err(api_error)?
            {
                api.remove(Listing::Minted, &orphan.id)
                    .await
                    .map_err(api_error)?;
                report(MintStep::OrphanDeleted {
                    name: orphan.name.as_deref().unwrap_or_default(),
                    provider_id: &orphan.id,
                });
            }
            let created = api.create(&name).await.map_err(api_error)?;
            report(MintStep::Created {
                name: &name,
                provider_id: &created.provider_id,
            });
            crate::keys::crash_point("created");
            let (record_id, record_name) = (created.provider_id.clone(), name.clone());
            let record = MintRecord {
                provider_id: created.provider_id.clone(),
                name,
            };
            let pending = vault
                .with(|v, k| stage(v, k, provider, &created.secret, rotation.label, record))?;
            report(MintStep::Rotation(Step::Staged { id: &pending }));
            vault.events().raise(
                EventType::KeyMinted,
                json!({"provider": provider.name, "key_id": pending, "provider_key_id": record_id, "name": record_name}),
            );
            crate::keys::crash_point("recorded");
            (pending, created.secret)
        }
    };
    if rotation.verify {
        let check = verify_patiently(
            upstream,
            provider,
            &secret,
            rotation.propagation_wait,
            &mut report,
        )
        .await;
        report(MintStep::Rotation(Step::Checked {
            id: &pending,
            check: &check,
        }));
        vault.with(|v, k| rotate::settle_verdict(v, k, &pending, check))?;
        crate::keys::crash_point("verified");
    } else {
        report(MintStep::Rotation(Step::Unverified));
    }
    Ok(pending)
}

/// Distinguishes names minted within one second (two rotations, or a retry).
fn unique_suffix() -> String {
    let mut bytes = [0u8; 2];
    let _ = getrandom::getrandom(&mut bytes);
    format!("{}-{}", crate::unix_now(), hex::encode(bytes))
}

/// Keys at the provider named like keygate's that the vault does not know:
/// created by a run that died before recording them.
async fn orphans(
    api: &ManagementApi<'_>,
    document: &Document,
    provider: &str,
) -> Result<Vec<Listed>, ManagementError> {
    let prefix = name_prefix(provider);
    let known = |id: &str| {
        document
            .keys
            .iter()
            .any(|k| k.minted.as_ref().is_some_and(|m| m.provider_id == id))
    };
    Ok(api
        .list(Listing::Minted)
        .await?
        .into_iter()
        .filter(|l| l.name.as_deref().is_some_and(|n| n.starts_with(&prefix)) && !known(&l.id))
        .collect())
}

/// What the preflight found.
struct Ready {
    admin: Secret,
    document: Document,
    /// A minted pending key to take up again, with its secret.
    resume: Option<(String, Secret)>,
}

/// Before anything is created: the admin table, the credential, and either
/// a minted pending key to resume or no pending key at all.
fn preflight(vault: &Vault, kek: &Kek, provider: &Provider) -> Result<Ready, MintRotateError> {
    if !provider.kind.can_create() {
        return Err(MintError::CannotMint {
            provider: provider.name.clone(),
            kind: provider.kind.as_str(),
        }
        .into());
    }
    if provider.admin.is_none() {
        return Err(MintError::NotConfigured(provider.name.clone()).into());
    }
    let document = vault.load(kek)?.document;
    let admin = document
        .admin_key(&provider.name)
        .map(|a| a.secret.clone())
        .ok_or_else(|| MintError::NoAdminKey(provider.name.clone()))?;
    let mut resume = None;
    if let Some(pending) = document
        .keys
        .iter()
        .find(|k| k.provider == provider.name && k.state == KeyState::Pending)
    {
        match (&pending.minted, &pending.secret) {
            (Some(_), Some(secret)) => resume = Some((pending.id.clone(), secret.clone())),
            _ => {
                return Err(MintError::PendingExists {
                    provider: provider.name.clone(),
                    id: pending.id.clone(),
                }
                .into())
            }
        }
    }
    Ok(Ready {
        admin,
        document,
        resume,
    })
}

/// Stage in one write: the minted key as pending with its provider record,
/// and the management credential's last use.
fn stage(
    vault: &Vault,
    kek: &Kek,
    provider: &Provider,
    secret: &Secret,
    label: Option<String>,
    record: MintRecord,
) -> Result<String, RotateError> {
    rotate::stage_with(vault, kek, &provider.name, secret, label, |doc, id, now| {
        let staged = doc
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| OpError::UnknownKey(id.to_owned()))?;
        staged.minted = Some(record);
        if let Some(admin) = doc
            .admin_keys
            .iter_mut()
            .find(|a| a.provider == provider.name)
        {
            admin.last_used = Some(now);
        }
        Ok(())
    })
}

/// Verifies until the key works or `patience` is spent: a refused or
/// inconclusive answer is retried with doubling pauses (a new key can take a
/// while to reach the inference API). Out of credit is final at once.
async fn verify_patiently(
    upstream: &Upstream,
    provider: &Provider,
    secret: &Secret,
    patience: Duration,
    report: &mut impl FnMut(MintStep<'_>),
) -> Check {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    loop {
        let check = verify::verify(upstream, provider, secret, rotate::VERIFY_TIMEOUT).await;
        let retry = matches!(check.verdict, Verdict::Rejected | Verdict::Inconclusive);
        let left = deadline.saturating_duration_since(Instant::now());
        if !retry || left.is_zero() {
            return check;
        }
        let after = pause.min(left);
        report(MintStep::Waiting {
            check: &check,
            after,
        });
        tokio::time::sleep(after).await;
        pause = (pause * 2).min(Duration::from_secs(8));
    }
}
