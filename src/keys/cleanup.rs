//! Settles what keygate owes the providers (docs/design.md §12): a key whose
//! `at_provider` is pending — a minted key out of use, or a key burnt or
//! revoked `--at-provider` — is deleted (Anthropic: disabled) through the
//! management API, and the answer is recorded in one vault write per key.
//!
//! The CLI settles after each of its writes; `serve` settles in its key
//! upkeep, retrying with backoff. A key keygate did not create is found at
//! the provider by the hint the provider shows of it; two matches are never
//! guessed between. A 404, or no match at all, means the provider no longer
//! has the key, which is what was wanted.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::events::EventType;
use crate::keys::management::{ManagementApi, Removed};
use crate::keys::rotate::VaultAccess;
use crate::net::upstream::Upstream;
use crate::providers::management::{hint_matches, Listing};
use crate::vault::document::Document;
use crate::vault::VaultError;
use serde_json::json;

/// Ids of the keys that still owe their provider a delete.
pub fn owed(document: &Document) -> Vec<String> {
    document
        .keys
        .iter()
        .filter(|k| k.at_provider.as_ref().is_some_and(|c| c.pending()))
        .map(|k| k.id.clone())
        .collect()
}

/// The provider's answer for one key.
pub struct Settled {
    /// The key.
    pub key_id: String,
    /// Its provider.
    pub provider: String,
    /// `Ok(word)`: done (`"deleted"`, `"disabled"`, `"already gone"`); `Err`: why not.
    pub outcome: Result<&'static str, String>,
    /// How long it took.
    pub took: Duration,
}

/// Settles every key that owes its provider something, one at a time.
pub async fn settle_all(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    config: &Config,
) -> Result<Vec<Settled>, VaultError> {
    let document = vault.with(|v, k| v.load(k))?.document;
    let mut settled = Vec::new();
    for id in owed(&document) {
        settled.push(settle(vault, upstream, config, &id).await?);
    }
    Ok(settled)
}

/// Settles what `key_id` owes its provider and records the answer.
pub async fn settle(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    config: &Config,
    key_id: &str,
) -> Result<Settled, VaultError> {
    let started = Instant::now();
    let document = vault.with(|v, k| v.load(k))?.document;
    let (provider, outcome) = match document.key(key_id) {
        Some(key) => (
            key.provider.clone(),
            remove_at_provider(&document, key, upstream, config).await,
        ),
        None => (String::new(), Err(format!("no key {key_id}"))),
    };
    if outcome.is_ok() {
        crate::keys::crash_point("deleted");
    }
    let recorded = outcome
        .as_ref()
        .map(|(_, found)| found.clone())
        .map_err(Clone::clone);
    vault.with(|v, k| {
        v.update(k, |doc| {
            let _ = crate::keys::ops::settle_at_provider(doc, key_id, recorded, crate::unix_now());
            Ok::<_, VaultError>(())
        })
    })?;
    let settled = Settled {
        key_id: key_id.to_owned(),
        provider,
        outcome: outcome.map(|(word, _)| word),
        took: started.elapsed(),
    };
    match &settled.outcome {
        Ok(word) => vault.events().raise(
            EventType::KeyDeletedAtProvider,
            json!({"provider": settled.provider, "key_id": key_id, "outcome": word}),
        ),
        Err(error) => vault.events().raise(
            EventType::KeyDeleteFailed,
            json!({"provider": settled.provider, "key_id": key_id, "error": error}),
        ),
    }
    Ok(settled)
}

/// One removal: by the recorded id, or by the key's hint. `Ok((word,
/// found id))`.
async fn remove_at_provider(
    document: &Document,
    key: &crate::vault::document::UpstreamKey,
    upstream: &Upstream,
    config: &Config,
) -> Result<(&'static str, Option<String>), String> {
    let provider = config
        .providers
        .get(&key.provider)
        .ok_or_else(|| format!("provider {} is no longer configured", key.provider))?;
    if !provider.kind.can_remove() {
        return Err(format!(
            "{} (kind {}) has no management API keygate can delete keys with: delete it in the provider's console",
            provider.name,
            provider.kind.as_str()
        ));
    }
    let admin = document.admin_key(&provider.name).ok_or_else(|| {
        format!(
            "no management credential is stored for {0}: run `keygate admin-key set {0}`",
            provider.name
        )
    })?;
    let api = ManagementApi::new(upstream, provider, &admin.secret)
        .map_err(|e| e.to_string())?
        .scrubbing(document);
    let word = |removed: Removed| match removed {
        Removed::Now => provider
            .kind
            .management()
            .map_or("deleted", |m| m.removal_word()),
        Removed::AlreadyGone => "already gone",
    };
    let listing = if key.minted.is_some() {
        Listing::Minted
    } else {
        Listing::Hinted
    };
    let known = key.at_provider.as_ref().and_then(|c| c.provider_id.clone());
    if let Some(id) = known {
        let removed = api.remove(listing, &id).await.map_err(|e| e.to_string())?;
        return Ok((word(removed), None));
    }
    let secret = key.secret.as_ref().ok_or(
        "its secret is wiped, so it cannot be found at the provider: delete it in the console",
    )?;
    let listed = api.list(Listing::Hinted).await.map_err(|e| e.to_string())?;
    let matches: Vec<_> = listed
        .iter()
        .filter(|l| {
            l.hint
                .as_deref()
                .is_some_and(|h| hint_matches(h, secret.expose()))
        })
        .collect();
    match matches.as_slice() {
        [] => Ok(("already gone", None)),
        [only] => {
            let removed = api.remove(Listing::Hinted, &only.id).await.map_err(|e| e.to_string())?;
            Ok((word(removed), Some(only.id.clone())))
        }
        many => Err(format!(
            "{} keys at the provider show the same hint ({}); keygate will not guess: delete the right one in the console",
            many.len(),
            many.iter().map(|l| l.id.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}
