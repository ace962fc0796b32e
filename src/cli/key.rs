//! `keygate key add | list` (upstream API keys; secrets only from stdin).

use clap::Subcommand;

use super::{format_age, format_time, read_secret_from_stdin, CliError, Context};
use crate::vault::document::{KeyState, UpstreamKey};

/// Upstream key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add an upstream key (secret on stdin) as `current`, or with --fallback as `previous`.
    Add {
        /// Provider name from the config (`openai`, `xai`, …).
        provider: String,
        /// A label for humans (`prod`, `team-a`).
        #[arg(long)]
        label: Option<String>,
        /// Add as the fallback (`previous`) instead of `current`.
        #[arg(long)]
        fallback: bool,
    },
    /// List keys: id, provider, label, state, fingerprint, age — never the secret.
    List {
        /// Only this provider.
        provider: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(context: &Context, command: KeyCommand) -> Result<(), CliError> {
    match command {
        KeyCommand::Add {
            provider,
            label,
            fallback,
        } => add(context, &provider, label, fallback),
        KeyCommand::List { provider, json } => list(context, provider.as_deref(), json),
    }
}

fn new_key_id() -> Result<String, CliError> {
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| CliError::Runtime(format!("the OS random number generator failed: {e}")))?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

fn add(
    context: &Context,
    provider: &str,
    label: Option<String>,
    fallback: bool,
) -> Result<(), CliError> {
    context.provider(provider)?;
    let secret = read_secret_from_stdin("upstream API key")?;
    if secret.expose().chars().any(|c| c.is_control() || c == ' ') {
        return Err(CliError::Usage(
            "the key contains spaces or control characters; paste only the key itself".to_owned(),
        ));
    }
    let id = new_key_id()?;
    let fingerprint = secret.fingerprint();
    let state = if fallback {
        KeyState::Previous
    } else {
        KeyState::Current
    };
    let kek = context.kek()?;
    context.vault().update(&kek, |document| {
        let same_provider = || document.keys.iter().filter(|k| k.provider == provider);
        if let Some(existing) = same_provider().find(|k| k.secret.as_ref() == Some(&secret)) {
            return Err(CliError::Usage(format!(
                "this key is already in the vault as {} ({}); nothing was changed",
                existing.id,
                existing.state.as_str()
            )));
        }
        if fallback {
            if let Some(previous) = same_provider().find(|k| k.state == KeyState::Previous) {
                return Err(CliError::Usage(format!(
                    "provider `{provider}` already has a fallback key {}; a provider has at most one",
                    previous.id
                )));
            }
        }
        let now = crate::unix_now();
        document.keys.push(UpstreamKey {
            id: id.clone(),
            provider: provider.to_owned(),
            label: label.clone(),
            secret: Some(secret.clone()),
            fingerprint: fingerprint.clone(),
            state,
            created: now,
            state_changed: now,
            last_verified: None,
            reason: None,
        });
        Ok(())
    })?;
    println!(
        "keygate: added {id} ({fingerprint}) to {provider} as {}",
        state.as_str()
    );
    Ok(())
}

fn list(context: &Context, provider: Option<&str>, json: bool) -> Result<(), CliError> {
    if let Some(provider) = provider {
        context.provider(provider)?;
    }
    let loaded = context.vault().load(&context.kek()?)?;
    let rotate_after = context.config.keys.rotate_after.as_secs();
    let now = crate::unix_now();
    let keys: Vec<&UpstreamKey> = loaded
        .document
        .keys
        .iter()
        .filter(|k| provider.is_none_or(|p| k.provider == p))
        .collect();
    let due = |k: &UpstreamKey| k.state.is_usable() && now.saturating_sub(k.created) > rotate_after;
    if json {
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "provider": k.provider,
                    "label": k.label,
                    "state": k.state.as_str(),
                    "fingerprint": k.fingerprint,
                    "created": k.created,
                    "age_seconds": now.saturating_sub(k.created),
                    "state_changed": k.state_changed,
                    "last_verified": k.last_verified,
                    "reason": k.reason,
                    "due_for_rotation": due(k),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<13} {:<10} {:<14} {:<9} {:<12} {:<17} {:>5}  {:<17}",
        "ID", "PROVIDER", "LABEL", "STATE", "FINGERPRINT", "CREATED", "AGE", "LAST VERIFIED"
    );
    for k in keys {
        println!(
            "{:<13} {:<10} {:<14} {:<9} {:<12} {:<17} {:>5}  {:<17}{}",
            k.id,
            k.provider,
            k.label.as_deref().unwrap_or("-"),
            k.state.as_str(),
            k.fingerprint,
            format_time(k.created),
            format_age(k.created),
            k.last_verified.map_or_else(|| "never".to_owned(), format_time),
            if due(k) { "  due for rotation" } else { "" },
        );
    }
    Ok(())
}
