//! The admin API's key actions: add, rotate (stdin-fed or minted), revoke,
//! burn — through the same services as the CLI, each a vault write that is
//! live when the call returns.

use super::{load_document, write, AdminError, BurnBody, KeyBody, RevokeBody};
use crate::control::key_upkeep;
use crate::control::state::{ServerVault, Shared};
use crate::keys::rotate::VaultAccess;
use crate::keys::{burn, cleanup, mint, ops, rotate};
use crate::vault::document::KeyState;
use crate::vault::secret::Secret;
fn key_secret(body: &KeyBody) -> Result<Secret, AdminError> {
    let text = body.secret.as_deref().ok_or_else(|| {
        AdminError::BadRequest("\"secret\" is required (or, to rotate, \"mint\": true)".to_owned())
    })?;
    ops::upstream_secret(text).map_err(|e| AdminError::BadRequest(format!("\"secret\": {e}")))
}

fn known_provider(shared: &Shared, provider: &str) -> Result<(), AdminError> {
    if shared.config.providers.contains_key(provider) {
        Ok(())
    } else {
        Err(AdminError::BadRequest(format!(
            "unknown provider `{provider}`"
        )))
    }
}

pub(super) fn add_key(
    shared: &Shared,
    provider: &str,
    body: KeyBody,
) -> Result<serde_json::Value, AdminError> {
    known_provider(shared, provider)?;
    let secret = key_secret(&body)?;
    let state = if body.fallback {
        KeyState::Previous
    } else {
        KeyState::Current
    };
    let id = ops::new_key_id().map_err(|e| AdminError::Failed(e.to_string()))?;
    let id = write(shared, |doc| {
        let key = ops::NewKey {
            id,
            provider,
            secret: &secret,
            label: body.label.clone(),
            state,
        };
        ops::add_now(doc, key)
    })?;
    Ok(
        serde_json::json!({ "id": id, "provider": provider, "state": state.as_str(), "fingerprint": secret.fingerprint() }),
    )
}

pub(super) async fn rotate_key(
    shared: &Shared,
    provider: &str,
    body: KeyBody,
) -> Result<serde_json::Value, AdminError> {
    known_provider(shared, provider)?;
    let grace = match &body.grace {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| AdminError::BadRequest(format!("\"grace\": {e}")))?,
        None => shared.config.keys.default_grace,
    };
    let grace_until = crate::unix_now().saturating_add(grace.as_secs());
    let upstream_provider = &shared.config.providers[provider];
    let result = if body.mint {
        if body.secret.is_some() {
            return Err(AdminError::BadRequest(
                "\"mint\": true creates the key at the provider: leave out \"secret\"".to_owned(),
            ));
        }
        let _lease = rotation_lease(shared)?;
        let rotation = mint::MintRotation {
            provider: upstream_provider,
            label: body.label.clone(),
            replace: body.replace.as_deref(),
            verify: body.verify,
            grace_until,
            propagation_wait: mint::PROPAGATION_WAIT,
            call_timeout: crate::keys::management::CALL_TIMEOUT,
        };
        let result = key_upkeep::mint_logged(shared, rotation).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        shared
            .metrics
            .key_mints
            .with_label_values(&[provider, outcome])
            .inc();
        result.map_err(AdminError::from)
    } else {
        let secret = key_secret(&body)?;
        let rotation = rotate::Rotation {
            provider: upstream_provider,
            secret: &secret,
            label: body.label.clone(),
            replace: body.replace.as_deref(),
            verify_with: body.verify.then_some(&shared.upstream),
            grace_until,
        };
        rotate::run(&ServerVault(shared), rotation, |_| {})
            .await
            .map_err(AdminError::from)
    };
    // Whatever step it stopped at, serve what the vault now says.
    let _ = tokio::task::block_in_place(|| shared.reload());
    let promotion = result?;
    let minted = load_document(shared)?
        .keys
        .iter()
        .find(|k| k.id == promotion.promoted)
        .and_then(|k| k.minted.clone());
    Ok(serde_json::json!({
        "promoted": promotion.promoted,
        "previous": promotion.demoted,
        "retired": promotion.retired,
        "grace_until": grace_until,
        "minted": minted.map(|m| serde_json::json!({"provider_id": m.provider_id, "name": m.name})),
    }))
}

/// The vault's rotation lease, or 409 while another rotation holds it.
fn rotation_lease(shared: &Shared) -> Result<crate::vault::WriteLock, AdminError> {
    ServerVault(shared)
        .with(|v, _| v.try_rotation_lease())?
        .ok_or_else(|| {
            AdminError::Conflict(
                "another rotation or burn of this vault is running; try again when it is done"
                    .to_owned(),
            )
        })
}

pub(super) async fn revoke_key(
    shared: &Shared,
    id: &str,
    body: RevokeBody,
) -> Result<serde_json::Value, AdminError> {
    if body.at_provider {
        let document = load_document(shared)?;
        let key = document.key(id).ok_or_else(|| {
            AdminError::BadRequest(ops::OpError::UnknownKey(id.to_owned()).to_string())
        })?;
        let provider = &shared.config.providers[&key.provider];
        if !burn::can_clean_up(&document, provider) {
            return Err(AdminError::BadRequest(format!(
                "\"at_provider\": keygate cannot reach {0}'s management API (it needs [providers.{0}.admin] and `keygate admin-key set {0}`); nothing was changed",
                provider.name
            )));
        }
    }
    write(shared, |doc| {
        if body.at_provider {
            ops::owe_at_provider(doc, id)?;
        }
        ops::revoke(
            doc,
            id,
            Some("revoked via admin API".to_owned()),
            body.force,
            crate::unix_now(),
        )
    })?;
    let at_provider = settle_at_provider(shared, id).await?;
    Ok(serde_json::json!({ "revoked": id, "at_provider": at_provider }))
}

pub(super) async fn burn_key(
    shared: &Shared,
    id: &str,
    body: BurnBody,
) -> Result<serde_json::Value, AdminError> {
    let started = std::time::Instant::now();
    let document = load_document(shared)?;
    let key = document.key(id).ok_or_else(|| {
        AdminError::BadRequest(ops::OpError::UnknownKey(id.to_owned()).to_string())
    })?;
    let provider = &shared.config.providers[&key.provider];
    let given = body
        .secret
        .as_deref()
        .map(ops::upstream_secret)
        .transpose()
        .map_err(|e| AdminError::BadRequest(format!("\"secret\": {e}")))?;
    let mintable = burn::can_mint(&document, provider);
    let needs = burn::needs_replacement(&document, id)?;
    let replacement = match (&given, needs && !body.force, mintable) {
        (_, false, _) => burn::Replacement::Without,
        (Some(secret), true, _) => burn::Replacement::Given(secret),
        (None, true, true) => burn::Replacement::Mint {
            propagation_wait: mint::PROPAGATION_WAIT,
            call_timeout: crate::keys::management::CALL_TIMEOUT,
        },
        (None, true, false) => {
            return Err(burn::BurnError::NeedsReplacement {
                id: id.to_owned(),
                provider: provider.name.clone(),
            }
            .into())
        }
    };
    let minting = matches!(replacement, burn::Replacement::Mint { .. });
    let at_provider = burn::can_clean_up(&document, provider);
    let _lease = rotation_lease(shared)?;
    let request = burn::Burn {
        key_id: id,
        provider,
        replacement,
        verify: body.verify,
        at_provider,
    };
    let result = burn::burn(&ServerVault(shared), &shared.upstream, request, |_| {}).await;
    if minting {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        shared
            .metrics
            .key_mints
            .with_label_values(&[&provider.name, outcome])
            .inc();
    }
    // The burnt key is out of the served ring before this answers.
    let _ = tokio::task::block_in_place(|| shared.reload());
    let burned = result?;
    let out_of_use_ms = started.elapsed().as_millis() as u64;
    let provider_half = settle_at_provider(shared, id).await?;
    Ok(serde_json::json!({
        "burnt": burned.burnt.burnt,
        "replacement": burned.burnt.replacement,
        "replacement_kind": burned.replacement_kind,
        "at_provider": provider_half,
        "took_ms": {
            "replacement": burned.replacement_took.as_millis() as u64,
            "write": burned.write_took.as_millis() as u64,
            "out_of_use": out_of_use_ms,
            "total": started.elapsed().as_millis() as u64,
        },
    }))
}

/// Settles what `id` owes its provider, if anything: `{"result": "deleted"}`
/// or `{"result": "failed", "error": …}` (retried by the key upkeep), or null.
async fn settle_at_provider(shared: &Shared, id: &str) -> Result<serde_json::Value, AdminError> {
    let owed = cleanup::owed(&load_document(shared)?);
    if !owed.iter().any(|o| o == id) {
        return Ok(serde_json::Value::Null);
    }
    let settled =
        cleanup::settle(&ServerVault(shared), &shared.upstream, &shared.config, id).await?;
    let _ = tokio::task::block_in_place(|| shared.reload());
    let (result, error) = match &settled.outcome {
        Ok(word) => (*word, None),
        Err(error) => ("failed", Some(error.clone())),
    };
    shared
        .metrics
        .provider_deletes
        .with_label_values(&[
            settled.provider.as_str(),
            if error.is_none() { "ok" } else { "failed" },
        ])
        .inc();
    Ok(serde_json::json!({
        "result": result,
        "error": error,
        "took_ms": settled.took.as_millis() as u64,
    }))
}
