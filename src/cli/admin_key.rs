//! `keygate admin-key set | list | remove` (docs/design.md §2, §12): the
//! providers' management credentials (OpenAI admin key, xAI management key,
//! OpenRouter provisioning key, Anthropic admin key).
//!
//! They live in the vault as their own record kind, apart from the inference
//! keys, so nothing that builds a key ring can pick one up. The secret is read
//! from stdin only and never printed: every output names its fingerprint.

use clap::Subcommand;

use super::{format_time, read_secret_from_stdin, CliError, Context};
use crate::keys::ops;
use crate::vault::document::AdminKey;

/// Management credential commands.
#[derive(Debug, Subcommand)]
pub enum AdminKeyCommand {
    /// Store PROVIDER's management credential (read from stdin), replacing the
    /// one stored before; it is never sent on a client's request.
    Set {
        /// Provider name from the config (`openai`, `xai`, …).
        provider: String,
    },
    /// List management credentials: provider, fingerprint, added, last used,
    /// and whether `[providers.NAME.admin]` is configured — never the secret.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove PROVIDER's management credential from the vault.
    Remove {
        /// Provider name.
        provider: String,
    },
}

pub(super) fn run(context: &Context, command: AdminKeyCommand) -> Result<(), CliError> {
    match command {
        AdminKeyCommand::Set { provider } => set(context, &provider),
        AdminKeyCommand::List { json } => list(context, json),
        AdminKeyCommand::Remove { provider } => remove(context, &provider),
    }
}

fn set(context: &Context, provider: &str) -> Result<(), CliError> {
    let configured = context.provider(provider)?;
    let secret = read_secret_from_stdin("management credential")?;
    // The same check as an inference key: the credential alone, nothing around it.
    let secret =
        ops::upstream_secret(secret.expose()).map_err(|e| CliError::Usage(e.to_string()))?;
    let fingerprint = secret.fingerprint();
    let kek = context.kek()?;
    let replaced = context.vault().update(&kek, |document| {
        // An inference key pasted here by mistake would stay in the ring and
        // be stored twice; say so instead.
        if let Some(key) = document
            .keys
            .iter()
            .find(|k| k.secret.as_ref() == Some(&secret))
        {
            return Err(CliError::Usage(format!(
                "this is the inference key {} ({}) of {}, not a management credential: create an admin / management / provisioning key in the provider's console (see docs/keys.md, \"Management credentials\")",
                key.id, key.fingerprint, key.provider
            )));
        }
        Ok::<_, CliError>(document.set_admin_key(provider, secret, crate::unix_now()))
    })?;
    match replaced {
        Some(old) => say!(
            "keygate: stored the {provider} management credential ({fingerprint}), replacing the one stored {} ({})",
            format_time(old.added),
            old.fingerprint
        ),
        None => say!("keygate: stored the {provider} management credential ({fingerprint})"),
    }
    if configured.admin.is_none() {
        say!(
            "keygate: [providers.{provider}.admin] is not configured yet; add it (docs/vault-and-config.md) before keygate can use this credential"
        );
    }
    say!(
        "keygate: it is kept apart from the inference keys and is never sent on a client's request"
    );
    Ok(())
}

/// One line of `admin-key list`: a stored credential, a configured
/// `[providers.NAME.admin]` table, or both.
struct Row<'a> {
    provider: &'a str,
    key: Option<&'a AdminKey>,
    api: Option<String>,
    provider_configured: bool,
}

fn list(context: &Context, json: bool) -> Result<(), CliError> {
    let loaded = context.vault().load(&context.kek()?)?;
    let providers = &context.config.providers;
    let mut rows: Vec<Row<'_>> = providers
        .values()
        .filter(|p| p.admin.is_some() || loaded.document.admin_key(&p.name).is_some())
        .map(|p| Row {
            provider: &p.name,
            key: loaded.document.admin_key(&p.name),
            api: p.admin.as_ref().map(|a| a.url()),
            provider_configured: true,
        })
        .collect();
    // A credential whose provider left the config is still listed, so it can be removed.
    rows.extend(
        loaded
            .document
            .admin_keys
            .iter()
            .filter(|k| !providers.contains_key(&k.provider))
            .map(|k| Row {
                provider: &k.provider,
                key: Some(k),
                api: None,
                provider_configured: false,
            }),
    );
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let mut value = row.key.map_or_else(
                    || {
                        serde_json::json!({
                            "provider": row.provider,
                            "fingerprint": null,
                            "added": null,
                            "last_used": null,
                        })
                    },
                    AdminKey::summary,
                );
                value["admin_configured"] = serde_json::json!(row.api.is_some());
                value["admin_url"] = serde_json::json!(row.api);
                value["provider_configured"] = serde_json::json!(row.provider_configured);
                value
            })
            .collect();
        say!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        say!("keygate: no management credential stored and no [providers.NAME.admin] configured (see `keygate admin-key set --help`)");
        return Ok(());
    }
    say!(
        "{:<12} {:<12} {:<17} {:<17} MANAGEMENT API",
        "PROVIDER",
        "FINGERPRINT",
        "ADDED",
        "LAST USED"
    );
    for row in rows {
        let api = match (&row.api, row.provider_configured) {
            (Some(url), _) => url.clone(),
            (None, true) => format!("not configured ([providers.{}.admin])", row.provider),
            (None, false) => "provider not in the config".to_owned(),
        };
        let (fingerprint, added, last_used) = match row.key {
            Some(k) => (
                k.fingerprint.clone(),
                format_time(k.added),
                k.last_used.map_or_else(|| "never".to_owned(), format_time),
            ),
            None => ("none (set it)".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        say!(
            "{:<12} {:<12} {:<17} {:<17} {api}",
            row.provider,
            fingerprint,
            added,
            last_used
        );
    }
    Ok(())
}

fn remove(context: &Context, provider: &str) -> Result<(), CliError> {
    // A provider that left the config may still have a stored credential:
    // removing it must stay possible, so the name is checked against the vault too.
    let unknown = context.provider(provider).err();
    let kek = context.kek()?;
    let removed = context.vault().update(&kek, |document| {
        match (document.remove_admin_key(provider), unknown) {
            (Some(removed), _) => Ok(removed),
            (None, Some(unknown)) => Err(unknown),
            (None, None) => Err(CliError::Usage(format!(
                "no management credential is stored for {provider} (see `keygate admin-key list`)"
            ))),
        }
    })?;
    say!(
        "keygate: removed the {provider} management credential ({}) from the vault; revoke it in the provider's console too if it is no longer needed",
        removed.fingerprint
    );
    Ok(())
}
