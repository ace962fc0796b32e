//! `keygate key add | rotate | verify | promote | rollback | revoke | burn | list | inventory`
//! (upstream API keys; secrets only from stdin, never printed): the
//! subcommands and their dispatch, with the vault-only writes (promote,
//! rollback, revoke) inline.
//!
//! Below it: `new_key` (`add`, and `rotate` with a key from stdin),
//! `list`, `verify`, `provider` (what reaches the provider's
//! management API: `rotate --mint`, `burn`, `revoke --at-provider`, and
//! settling what keygate owes a provider), and `transition` (what they all
//! share: `--grace` as a deadline, a promotion printed, errors as exit codes).

mod inventory;
mod list;
mod new_key;
mod provider;
mod reconcile;
mod settings;
mod transition;
mod verify;

use clap::Subcommand;

use self::list::list;
use self::new_key::{add, rotate};
use self::transition::{grace_until, op_error, print_promotion};
use self::verify::verify;
use super::{CliError, Context};
use crate::keys::ops;

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
    /// Zero-downtime rotation: add the new key (stdin) as pending, verify it, promote it.
    /// With --mint keygate creates the new key at the provider itself (nothing on stdin).
    Rotate {
        /// Provider name.
        provider: String,
        /// Which current key the new one replaces (needed when the provider has a pool).
        #[arg(long, value_name = "KEY_ID")]
        replace: Option<String>,
        /// A label for the new key.
        #[arg(long)]
        label: Option<String>,
        /// Promote without asking the upstream first.
        #[arg(long)]
        no_verify: bool,
        /// How long the old key stays usable as the fallback (default: [keys] default_grace).
        #[arg(long, value_parser = crate::cli::duration_arg)]
        grace: Option<std::time::Duration>,
        /// Create the new key at the provider's management API (needs
        /// `admin-key set PROVIDER` and `[providers.PROVIDER.admin]`); stdin is not read.
        #[arg(long)]
        mint: bool,
        /// How long a minted key may take to start working (tests shorten it).
        #[arg(long, hide = true, value_parser = crate::cli::duration_arg, default_value = "60s")]
        propagation_wait: std::time::Duration,
        /// The bound on each management API call (tests shorten it).
        #[arg(long, hide = true, value_parser = crate::cli::duration_arg, default_value = "15s")]
        management_timeout: std::time::Duration,
    },
    /// Check each key against the provider's cheap authenticated endpoint and
    /// give a verdict (ok, rejected, exhausted, inconclusive) with the provider's
    /// own code, what it means and the fix. Exit 0 only when every key is ok.
    Verify {
        /// Only this provider.
        provider: Option<String>,
        /// One JSON array of rows instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a pending or previous key current (the current one becomes previous).
    Promote {
        /// Key id.
        key_id: String,
        /// Which current key it replaces (pools).
        #[arg(long, value_name = "KEY_ID")]
        replace: Option<String>,
        /// Grace for the demoted key (default: [keys] default_grace).
        #[arg(long, value_parser = crate::cli::duration_arg)]
        grace: Option<std::time::Duration>,
    },
    /// Swap current and previous in one write.
    Rollback {
        /// Provider name.
        provider: String,
    },
    /// Revoke a key (its secret is wiped). Refused for the last usable key without --force.
    /// A key keygate minted is also deleted at the provider.
    Revoke {
        /// Key id.
        key_id: String,
        /// Revoke even the last usable key of its provider.
        #[arg(long)]
        force: bool,
        /// Also delete the key at the provider (Anthropic: disable it), even
        /// one keygate did not create (found there by its hint).
        #[arg(long)]
        at_provider: bool,
    },
    /// Leak response: a replacement goes live first (minted when the provider
    /// allows it, else read from stdin), the key is revoked at once with no
    /// grace, then deleted (Anthropic: disabled) at the provider.
    Burn {
        /// Key id.
        key_id: String,
        /// Burn a current key without a replacement (another usable key must remain).
        #[arg(long)]
        force: bool,
        /// Put the replacement live without asking the upstream first.
        #[arg(long)]
        no_verify: bool,
        /// How long a minted replacement may take to start working (tests shorten it).
        #[arg(long, hide = true, value_parser = crate::cli::duration_arg, default_value = "60s")]
        propagation_wait: std::time::Duration,
        /// The bound on each management API call (tests shorten it).
        #[arg(long, hide = true, value_parser = crate::cli::duration_arg, default_value = "15s")]
        management_timeout: std::time::Duration,
    },
    /// Every key at the provider (through its management API) with keygate's
    /// reading: managed KEY_ID (STATE), orphan (named as keygate names the
    /// keys it creates, unknown to the vault) or unmanaged.
    Inventory(inventory::InventoryArgs),
    /// A key's place in its provider's pool: --weight (shares of new
    /// clients) and --max-in-flight (requests open at once).
    Set(settings::SetArgs),
    /// Outside use: each key's usage at the provider (OpenAI, Anthropic)
    /// against what keygate sent with it, over whole hours.
    Reconcile {
        /// Only this provider.
        provider: Option<String>,
        /// How far back (humantime: 1h, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::cli::duration_arg)]
        since: std::time::Duration,
        /// One JSON array of rows.
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, provider, label, state, fingerprint, age — never the
    /// secret. Keys in use, pending or owed a delete, and keys out of use
    /// for less than --recent (24h); --all for every key ever held.
    List(list::ListArgs),
}

pub(super) fn run(context: &Context, command: KeyCommand) -> Result<(), CliError> {
    match command {
        KeyCommand::Add {
            provider,
            label,
            fallback,
        } => add(context, &provider, label, fallback),
        KeyCommand::List(args) => list(context, args),
        KeyCommand::Reconcile {
            provider,
            since,
            json,
        } => reconcile::run(context, provider.as_deref(), since, json),
        KeyCommand::Inventory(args) => inventory::run(context, args),
        KeyCommand::Set(args) => settings::run(context, args),
        KeyCommand::Rotate {
            provider,
            replace,
            label,
            no_verify,
            grace,
            mint: false,
            ..
        } => rotate(
            context,
            &provider,
            replace.as_deref(),
            label,
            no_verify,
            grace,
        ),
        KeyCommand::Rotate {
            provider,
            replace,
            label,
            no_verify,
            grace,
            mint: true,
            propagation_wait,
            management_timeout,
        } => {
            let rotation = provider::MintArgs {
                replace: replace.as_deref(),
                label,
                verify: !no_verify,
                grace_until: grace_until(context, grace),
                propagation_wait,
                call_timeout: management_timeout,
            };
            provider::rotate_minted(context, &provider, rotation)
        }
        KeyCommand::Verify { provider, json } => verify(context, provider.as_deref(), json),
        KeyCommand::Promote {
            key_id,
            replace,
            grace,
        } => {
            let grace_until = grace_until(context, grace);
            let kek = context.kek()?;
            let promotion = context.vault().update(&kek, |doc| {
                ops::expire_grace(doc, crate::unix_now());
                ops::promote(
                    doc,
                    &key_id,
                    replace.as_deref(),
                    grace_until,
                    crate::unix_now(),
                )
                .map_err(op_error)
            })?;
            print_promotion(&promotion);
            provider::settle_owed(context, &context.vault(), &kek, None)
        }
        KeyCommand::Rollback { provider } => {
            context.provider(&provider)?;
            let grace_until = grace_until(context, None);
            let kek = context.kek()?;
            let (current, previous) = context.vault().update(&kek, |doc| {
                ops::rollback(doc, &provider, grace_until, crate::unix_now()).map_err(op_error)
            })?;
            say!("keygate: rolled back {provider}: {current} is current again, {previous} is the fallback");
            Ok(())
        }
        KeyCommand::Revoke {
            key_id,
            force,
            at_provider,
        } => {
            let kek = context.kek()?;
            let vault = context.vault();
            if at_provider {
                provider::check_at_provider(context, &vault, &kek, &key_id)?;
            }
            vault.update(&kek, |doc| {
                if at_provider {
                    ops::owe_at_provider(doc, &key_id).map_err(op_error)?;
                }
                ops::revoke(
                    doc,
                    &key_id,
                    Some("revoked by operator".to_owned()),
                    force,
                    crate::unix_now(),
                )
                .map_err(op_error)
            })?;
            say!("keygate: {key_id} revoked; a running server stops using it within a second");
            let must = at_provider.then_some(key_id.as_str());
            provider::settle_owed(context, &vault, &kek, must)
        }
        KeyCommand::Burn {
            key_id,
            force,
            no_verify,
            propagation_wait,
            management_timeout,
        } => provider::burn(
            context,
            &key_id,
            force,
            !no_verify,
            (propagation_wait, management_timeout),
        ),
    }
}
