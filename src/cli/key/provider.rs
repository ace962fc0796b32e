//! The `key` subcommands that reach the provider's management API
//! (docs/design.md §12): `key rotate --mint`, `key burn`, the provider half of
//! `key revoke --at-provider`, and the settling of what keygate still owes a
//! provider after any key write (a minted key whose grace ended is deleted
//! there by the next CLI write when no server did it first).

use std::time::{Duration, Instant};

use super::transition::{op_error, print_promotion, rotate_error};
use crate::cli::{read_secret_from_stdin, upstream_runtime, CliError, Context};
use crate::keys::burn::{self, Burn, BurnError, Replacement};
use crate::keys::{cleanup, mint, ops, rotate};
use crate::vault::{Kek, Vault};

/// How long `key burn` waits for a running server to serve the write.
const PICKUP_WAIT: Duration = Duration::from_secs(3);

/// `key rotate --mint`'s options.
pub(super) struct MintArgs<'a> {
    pub replace: Option<&'a str>,
    pub label: Option<String>,
    pub verify: bool,
    pub grace_until: u64,
    pub propagation_wait: Duration,
    pub call_timeout: Duration,
}

/// Prints a minted rotation's steps as they happen.
fn print_mint_step(provider: &str, step: mint::MintStep<'_>) {
    match step {
        mint::MintStep::Resumed { id } => say!(
            "keygate: resuming the interrupted rotation of {provider}: {id} (minted) is pending"
        ),
        mint::MintStep::OrphanDeleted { name, provider_id } => say!(
            "keygate: deleted {name} (provider id {provider_id}) at {provider}: an earlier run created it but never recorded it"
        ),
        mint::MintStep::Created { name, provider_id } => {
            say!("keygate: created {name} at {provider} (provider id {provider_id})")
        }
        mint::MintStep::Rotation(rotate::Step::Staged { id }) => {
            say!("keygate: {id} added to {provider} as pending")
        }
        mint::MintStep::Rotation(rotate::Step::Checked { id, check }) => {
            say!("keygate: {id}: {}", check.describe())
        }
        mint::MintStep::Rotation(rotate::Step::Unverified) => {
            say!("keygate: --no-verify: promoting without asking the upstream")
        }
        mint::MintStep::Waiting { check, after } => say!(
            "keygate: the new key does not work yet ({}); trying again in {after:?}",
            check.verdict.as_str()
        ),
    }
}

fn mint_error(error: mint::MintRotateError) -> CliError {
    match error {
        mint::MintRotateError::Mint(
            error @ (mint::MintError::NoAdminKey(_)
            | mint::MintError::NotConfigured(_)
            | mint::MintError::CannotMint { .. }),
        ) => CliError::Usage(error.to_string()),
        mint::MintRotateError::Rotate(error) => rotate_error(error),
        mint::MintRotateError::Vault(error) => CliError::Vault(error),
        other => CliError::Runtime(other.to_string()),
    }
}

/// `keygate key rotate PROVIDER --mint`.
pub(super) fn rotate_minted(
    context: &Context,
    provider: &str,
    args: MintArgs<'_>,
) -> Result<(), CliError> {
    let upstream_provider = context.provider(provider)?;
    let kek = context.kek()?;
    let vault = context.vault();
    let (runtime, upstream) = upstream_runtime(context)?;
    let rotation = mint::MintRotation {
        provider: upstream_provider,
        label: args.label,
        replace: args.replace,
        verify: args.verify,
        grace_until: args.grace_until,
        propagation_wait: args.propagation_wait,
        call_timeout: args.call_timeout,
    };
    let events = context.events();
    let open = rotate::OpenVault {
        vault: &vault,
        kek: &kek,
        events: &events,
    };
    // One minted rotation at a time per vault, CLI or server.
    let _lease = vault.rotation_lease()?;
    let promotion = runtime
        .block_on(mint::rotate(&open, &upstream, rotation, |step| {
            print_mint_step(provider, step)
        }))
        .map_err(mint_error)?;
    print_promotion(&promotion);
    say!(
        "keygate: a running server switches within a second; in-flight requests finish on the old key"
    );
    drop(runtime);
    settle_owed(context, &vault, &kek, None)
}

/// `keygate key burn KEY_ID [--force] [--no-verify]`.
pub(super) fn burn(
    context: &Context,
    key_id: &str,
    force: bool,
    verify: bool,
    timing: (Duration, Duration),
) -> Result<(), CliError> {
    let (propagation_wait, call_timeout) = timing;
    let started = Instant::now();
    let kek = context.kek()?;
    let vault = context.vault();
    let document = vault.load(&kek)?.document;
    let key = document
        .key(key_id)
        .ok_or_else(|| op_error(ops::OpError::UnknownKey(key_id.to_owned())))?;
    let provider = context.provider(&key.provider)?;
    let needs = burn::needs_replacement(&document, key_id).map_err(op_error)?;
    let mintable = burn::can_mint(&document, provider);
    let given;
    let replacement = if !needs || force {
        Replacement::Without
    } else if mintable {
        Replacement::Mint {
            propagation_wait,
            call_timeout,
        }
    } else {
        let text = read_secret_from_stdin("replacement upstream API key").map_err(|_| {
            CliError::Usage(
                BurnError::NeedsReplacement {
                    id: key_id.to_owned(),
                    provider: provider.name.clone(),
                }
                .to_string(),
            )
        })?;
        given = ops::upstream_secret(text.expose()).map_err(|e| CliError::Usage(e.to_string()))?;
        Replacement::Given(&given)
    };
    let at_provider = burn::can_clean_up(&document, provider);
    say!(
        "keygate: burning {key_id} ({}, {})",
        provider.name,
        key.state.as_str()
    );
    let (runtime, upstream) = upstream_runtime(context)?;
    let events = context.events();
    let open = rotate::OpenVault {
        vault: &vault,
        kek: &kek,
        events: &events,
    };
    let _lease = vault.rotation_lease()?;
    let request = Burn {
        key_id,
        provider,
        replacement,
        verify,
        at_provider,
    };
    let burned = runtime
        .block_on(burn::burn(&open, &upstream, request, |step| {
            print_mint_step(&provider.name, step)
        }))
        .map_err(|error| match error {
            BurnError::Op(op) => op_error(op),
            BurnError::Vault(vault) => CliError::Vault(vault),
            other => CliError::Runtime(other.to_string()),
        })?;
    match (&burned.burnt.replacement, burned.replacement_kind) {
        (Some(new), Some(kind)) => say!(
            "keygate: {new} ({kind}) is current, ready after {}",
            millis(burned.replacement_took)
        ),
        _ => say!(
            "keygate: no replacement needed: other usable keys of {} remain",
            provider.name
        ),
    }
    say!(
        "keygate: {key_id} revoked: out of keygate's use, no grace (vault write {})",
        millis(burned.write_took)
    );
    wait_for_server(&vault)?;
    let mut provider_half = Ok(());
    if at_provider {
        let settled = runtime
            .block_on(cleanup::settle(&open, &upstream, &context.config, key_id))
            .map_err(CliError::Vault)?;
        provider_half = report_settled(&settled);
    } else {
        say!(
            "keygate: keygate cannot reach {}'s management API ({}): delete the key in the provider's console now",
            provider.name,
            if provider.admin.is_none() { "no [providers.NAME.admin]" } else { "no management credential, or its kind has no such API" }
        );
    }
    say!("keygate: burn done in {}", millis(started.elapsed()));
    provider_half
}

/// `keygate key revoke KEY_ID --at-provider`: the provider half, after the
/// vault write that owed it.
pub(super) fn check_at_provider(
    context: &Context,
    vault: &Vault,
    kek: &Kek,
    key_id: &str,
) -> Result<(), CliError> {
    let document = vault.load(kek)?.document;
    let key = document
        .key(key_id)
        .ok_or_else(|| op_error(ops::OpError::UnknownKey(key_id.to_owned())))?;
    let provider = context.provider(&key.provider)?;
    if burn::can_clean_up(&document, provider) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "--at-provider: keygate cannot reach {0}'s management API: it needs a kind with one (openai, xai, openrouter, anthropic), [providers.{0}.admin] and `keygate admin-key set {0}`; nothing was changed",
        provider.name
    )))
}

/// After a key write: retires keys whose grace ended and deletes at the
/// provider what keygate owes it (minted keys out of use, keys revoked
/// `--at-provider`), printing a line for each. A failure is a warning (the
/// key stays `delete pending` and is retried), except for `must`, the key
/// the command was about: then it is the command's error.
pub(super) fn settle_owed(
    context: &Context,
    vault: &Vault,
    kek: &Kek,
    must: Option<&str>,
) -> Result<(), CliError> {
    let now = crate::unix_now();
    let loaded = vault.load(kek)?;
    let expired = loaded.document.keys.iter().any(|k| {
        k.state == crate::vault::document::KeyState::Previous
            && k.grace_until.is_some_and(|t| t <= now)
    });
    if expired && !loaded.read_only {
        for id in vault.update(kek, |doc| {
            Ok::<_, CliError>(ops::expire_grace(doc, crate::unix_now()))
        })? {
            say!("keygate: {id} retired: its grace ended");
        }
    }
    if cleanup::owed(&vault.load(kek)?.document).is_empty() {
        return Ok(());
    }
    let (runtime, upstream) = upstream_runtime(context)?;
    let events = context.events();
    let open = rotate::OpenVault {
        vault,
        kek,
        events: &events,
    };
    let settled = runtime
        .block_on(cleanup::settle_all(&open, &upstream, &context.config))
        .map_err(CliError::Vault)?;
    let mut result = Ok(());
    for one in &settled {
        match report_settled(one) {
            Err(error) if must == Some(one.key_id.as_str()) => result = Err(error),
            Err(error) => note!("keygate: warning: {error}"),
            Ok(()) => {}
        }
    }
    result
}

fn report_settled(settled: &cleanup::Settled) -> Result<(), CliError> {
    match &settled.outcome {
        Ok(word) => {
            say!(
                "keygate: {} {word} at {} ({})",
                settled.key_id,
                settled.provider,
                millis(settled.took)
            );
            Ok(())
        }
        Err(error) => Err(CliError::Runtime(format!(
            "{} is out of keygate's use but could not be removed at {}: {error}. It stays listed as delete pending; a running server retries, or run `keygate key list` later",
            settled.key_id, settled.provider
        ))),
    }
}

/// Waits until a running server serves the vault as just written (its
/// served-generation record catches up), so the burnt key is unused once
/// this returns; says so when no server answers.
fn wait_for_server(vault: &Vault) -> Result<(), CliError> {
    let written = vault.peek()?.generation;
    let Some(record) = vault.served_record() else {
        return Ok(());
    };
    let started = Instant::now();
    while started.elapsed() < PICKUP_WAIT {
        if record.highest().unwrap_or(0) >= written {
            say!(
                "keygate: the running server serves the new keys ({} after the write)",
                millis(started.elapsed())
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say!(
        "keygate: no running server picked up the write within {PICKUP_WAIT:?} (none running here?): any server that loads this vault never uses the burnt key"
    );
    Ok(())
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
