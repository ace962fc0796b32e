//! `keygate key inventory [PROVIDER] [--json] [--unused-for 90d]
//! [--delete PROVIDER_KEY_ID [--yes]]`: every key at the provider with
//! keygate's reading, and removing an unmanaged or orphan one.

use std::io::BufRead as _;

use crate::cli::{format_time, upstream_runtime, CliError, Context};
use crate::config::Provider;
use crate::events::EventType;
use crate::keys::inventory::{self, Entry, InventoryError, Reading};
use crate::keys::management::Removed;

/// What was asked.
#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// Only this provider.
    provider: Option<String>,
    /// One JSON array of rows.
    #[arg(long)]
    json: bool,
    /// Mark keys not used (or, never used, not created) for this long.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::duration_arg)]
    unused_for: Option<std::time::Duration>,
    /// Delete (Anthropic: disable) this unmanaged or orphan key at the
    /// provider; a managed key still in use is refused.
    #[arg(long, value_name = "PROVIDER_KEY_ID")]
    delete: Option<String>,
    /// Do not ask before --delete.
    #[arg(long)]
    yes: bool,
}

fn failed(error: InventoryError) -> CliError {
    match error {
        InventoryError::NoCredential(_) => CliError::Usage(error.to_string()),
        InventoryError::Management(error) => CliError::Runtime(error.to_string()),
    }
}

pub(super) fn run(context: &Context, args: InventoryArgs) -> Result<(), CliError> {
    let document = context.vault().load(&context.kek()?)?.document;
    let providers: Vec<&Provider> = match args.provider.as_deref() {
        Some(name) => {
            let provider = context.provider(name)?;
            if !inventory::can_take(&document, provider) {
                return Err(CliError::Usage(format!(
                    "keygate cannot list {name}'s keys: it needs a kind with a management API (openai, xai, openrouter, anthropic), [providers.{name}.admin] and `keygate admin-key set {name}`"
                )));
            }
            vec![provider]
        }
        None => context
            .config
            .providers
            .values()
            .filter(|p| inventory::can_take(&document, p))
            .collect(),
    };
    if args.delete.is_some() && args.provider.is_none() {
        return Err(CliError::Usage(
            "--delete needs the provider: keygate key inventory PROVIDER --delete PROVIDER_KEY_ID"
                .to_owned(),
        ));
    }
    let (runtime, upstream) = upstream_runtime(context)?;
    let unused_for = args.unused_for.map(|d| d.as_secs());
    let mut all = Vec::new();
    for provider in &providers {
        let entries = runtime
            .block_on(inventory::take(&upstream, provider, &document, unused_for))
            .map_err(failed)?;
        all.push((*provider, entries));
    }
    if let (Some(id), Some((provider, entries))) = (&args.delete, all.first()) {
        let entry = entries.iter().find(|e| e.listed.id == *id).ok_or_else(|| {
            CliError::Usage(format!(
                "{} lists no key {id}: see `keygate key inventory {}`",
                provider.name, provider.name
            ))
        })?;
        return delete(
            context, &runtime, &upstream, provider, &document, entry, args.yes,
        );
    }
    if args.json {
        let rows: Vec<_> = all
            .iter()
            .flat_map(|(p, entries)| entries.iter().map(|e| e.to_json(&p.name)))
            .collect();
        say!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if providers.is_empty() {
        say!("(no provider keygate can list: each needs [providers.NAME.admin] and `keygate admin-key set NAME`)");
        return Ok(());
    }
    say!(
        "{:<10} {:<36} {:<28} {:<8} {:<17} {:<17} {:<28} READING",
        "PROVIDER",
        "PROVIDER KEY ID",
        "NAME",
        "SHOWS",
        "CREATED",
        "LAST USED",
        "OWNER"
    );
    for (provider, entries) in &all {
        for e in entries {
            let l = &e.listed;
            let when = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), format_time);
            let mut reading = e.reading.describe();
            if e.idle == Some(true) {
                reading.push_str(", idle");
            }
            if l.active == Some(false) {
                reading.push_str(", inactive at the provider");
            }
            say!(
                "{:<10} {:<36} {:<28} {:<8} {:<17} {:<17} {:<28} {reading}",
                provider.name,
                l.id,
                l.name.as_deref().unwrap_or("-"),
                l.hint
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), inventory::last_four),
                when(l.created),
                when(l.last_used),
                l.owner.as_deref().unwrap_or("-"),
            );
        }
        let count = |word| entries.iter().filter(|e| e.reading.word() == word).count();
        say!(
            "{:<10} {} keys: {} managed, {} orphan, {} unmanaged",
            provider.name,
            entries.len(),
            count("managed"),
            count("orphan"),
            count("unmanaged")
        );
    }
    Ok(())
}

fn delete(
    context: &Context,
    runtime: &tokio::runtime::Runtime,
    upstream: &crate::net::upstream::Upstream,
    provider: &Provider,
    document: &crate::vault::document::Document,
    entry: &Entry,
    yes: bool,
) -> Result<(), CliError> {
    let id = &entry.listed.id;
    if let Reading::Managed { key_id, state } = &entry.reading {
        if state.is_usable() || *state == crate::vault::document::KeyState::Pending {
            return Err(CliError::Usage(format!(
                "{id} at {} is keygate's key {key_id} ({}), still in use: take it out of use with `keygate key revoke {key_id} --at-provider` (or `keygate key burn {key_id}` if it leaked); nothing was changed",
                provider.name,
                state.as_str()
            )));
        }
    }
    if !yes {
        use std::io::Write as _;
        let _ = write!(
            std::io::stderr(),
            "keygate: {} {id} ({}) at {}? Type yes to go on: ",
            provider
                .kind
                .management()
                .map_or("delete", |m| if m.removal_word() == "disabled" {
                    "disable"
                } else {
                    "delete"
                }),
            entry.reading.describe(),
            provider.name
        );
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim() != "yes" {
            return Err(CliError::Usage(
                "not confirmed: nothing was changed (pass --yes in scripts)".to_owned(),
            ));
        }
    }
    let removed = runtime
        .block_on(inventory::delete(upstream, provider, document, entry))
        .map_err(failed)?;
    let word = match removed {
        Removed::Now => provider
            .kind
            .management()
            .map_or("deleted", |m| m.removal_word()),
        Removed::AlreadyGone => "already gone",
    };
    context.events().raise(
        EventType::KeyDeletedAtProvider,
        serde_json::json!({
            "provider": provider.name,
            "provider_key_id": id,
            "reading": entry.reading.word(),
            "outcome": word,
        }),
    );
    say!("keygate: {id} at {}: {word}", provider.name);
    Ok(())
}
