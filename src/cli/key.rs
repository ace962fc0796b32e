//! `keygate key add | rotate | verify | promote | rollback | revoke | burn | list`
//! (upstream API keys; secrets only from stdin, never printed). What reaches
//! the provider's management API is in [`super::key_provider`].
//!
//! Over 400 lines: one function per `key` subcommand (seven), each short;
//! splitting the group would scatter one `--help` page over several files.

use clap::Subcommand;

use super::{format_age, format_time, key_provider, read_secret_from_stdin, CliError, Context};
use crate::keys::health_report::HealthReport;
use crate::keys::verify;
use crate::keys::{ops, rotate};
use crate::net::upstream::Upstream;
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
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        /// Create the new key at the provider's management API (needs
        /// `admin-key set PROVIDER` and `[providers.PROVIDER.admin]`); stdin is not read.
        #[arg(long)]
        mint: bool,
        /// How long a minted key may take to start working (tests shorten it).
        #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "60s")]
        propagation_wait: std::time::Duration,
        /// The bound on each management API call (tests shorten it).
        #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "15s")]
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
        #[arg(long, value_parser = humantime::parse_duration)]
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
        #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "60s")]
        propagation_wait: std::time::Duration,
        /// The bound on each management API call (tests shorten it).
        #[arg(long, hide = true, value_parser = humantime::parse_duration, default_value = "15s")]
        management_timeout: std::time::Duration,
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
            let rotation = key_provider::MintArgs {
                replace: replace.as_deref(),
                label,
                verify: !no_verify,
                grace_until: grace_until(context, grace),
                propagation_wait,
                call_timeout: management_timeout,
            };
            key_provider::rotate_minted(context, &provider, rotation)
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
            key_provider::settle_owed(context, &context.vault(), &kek, None)
        }
        KeyCommand::Rollback { provider } => {
            context.provider(&provider)?;
            let grace_until = grace_until(context, None);
            let kek = context.kek()?;
            let (current, previous) = context.vault().update(&kek, |doc| {
                ops::rollback(doc, &provider, grace_until, crate::unix_now()).map_err(op_error)
            })?;
            println!("keygate: rolled back {provider}: {current} is current again, {previous} is the fallback");
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
                key_provider::check_at_provider(context, &vault, &kek, &key_id)?;
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
            println!("keygate: {key_id} revoked; a running server stops using it within a second");
            let must = at_provider.then_some(key_id.as_str());
            key_provider::settle_owed(context, &vault, &kek, must)
        }
        KeyCommand::Burn {
            key_id,
            force,
            no_verify,
            propagation_wait,
            management_timeout,
        } => key_provider::burn(
            context,
            &key_id,
            force,
            !no_verify,
            (propagation_wait, management_timeout),
        ),
    }
}

pub(super) fn op_error(error: ops::OpError) -> CliError {
    match error {
        ops::OpError::UnknownKey(_)
        | ops::OpError::NotCurrent(_)
        | ops::OpError::AmbiguousReplace { .. } => CliError::Usage(error.to_string()),
        other => CliError::Runtime(other.to_string()),
    }
}

fn grace_until(context: &Context, grace: Option<std::time::Duration>) -> u64 {
    let grace = grace.unwrap_or(context.config.keys.default_grace);
    crate::unix_now().saturating_add(grace.as_secs())
}

pub(super) fn print_promotion(promotion: &ops::Promotion) {
    println!("keygate: {} is now current", promotion.promoted);
    if let Some(demoted) = &promotion.demoted {
        println!("keygate: {demoted} is now previous (the fallback) until its grace ends");
    }
    if let Some(retired) = &promotion.retired {
        println!("keygate: {retired} retired (secret wiped)");
    }
}

/// A small runtime and upstream client for the commands that call the upstream.
pub(super) fn upstream_runtime(
    context: &Context,
) -> Result<(tokio::runtime::Runtime, Upstream), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    let upstream = {
        let _guard = runtime.enter();
        Upstream::new(&context.config)?
    };
    Ok((runtime, upstream))
}

fn rotate(
    context: &Context,
    provider: &str,
    replace: Option<&str>,
    label: Option<String>,
    no_verify: bool,
    grace: Option<std::time::Duration>,
) -> Result<(), CliError> {
    let upstream_provider = context.provider(provider)?;
    let secret = read_key(context)?;
    let kek = context.kek()?;
    let vault = context.vault();
    let (runtime, upstream) = upstream_runtime(context)?;
    let rotation = rotate::Rotation {
        provider: upstream_provider,
        secret: &secret,
        label,
        replace,
        verify_with: (!no_verify).then_some(&upstream),
        grace_until: grace_until(context, grace),
    };
    let fingerprint = secret.fingerprint();
    let report = |step: rotate::Step<'_>| match step {
        rotate::Step::Staged { id } => {
            println!("keygate: {id} ({fingerprint}) added to {provider} as pending")
        }
        rotate::Step::Checked { id, check } => println!("keygate: {id}: {}", check.describe()),
        rotate::Step::Unverified => {
            println!("keygate: --no-verify: promoting without asking the upstream")
        }
    };
    let open = rotate::OpenVault {
        vault: &vault,
        kek: &kek,
    };
    let promotion = runtime
        .block_on(rotate::run(&open, rotation, report))
        .map_err(rotate_error)?;
    print_promotion(&promotion);
    println!(
        "keygate: a running server switches within a second; in-flight requests finish on the old key"
    );
    key_provider::settle_owed(context, &vault, &kek, None)
}

pub(super) fn rotate_error(error: rotate::RotateError) -> CliError {
    match error {
        rotate::RotateError::Op(op) => op_error(op),
        rotate::RotateError::Vault(vault) => CliError::Vault(vault),
        other => CliError::Runtime(other.to_string()),
    }
}

fn verify(context: &Context, provider: Option<&str>, json: bool) -> Result<(), CliError> {
    if let Some(provider) = provider {
        context.provider(provider)?;
    }
    let kek = context.kek()?;
    let vault = context.vault();
    let mut loaded = vault.load(&kek)?;
    // A `previous` key whose grace ended is retired: no server uses it, nothing to verify.
    ops::expire_grace(&mut loaded.document, crate::unix_now());
    let (runtime, upstream) = upstream_runtime(context)?;
    let mut failed = 0;
    let mut accepted = Vec::new();
    let mut rows = Vec::new();
    let candidates = loaded.document.keys.iter().filter(|k| {
        provider.is_none_or(|p| k.provider == p)
            && (k.state.is_usable() || k.state == KeyState::Pending)
            && k.secret.is_some()
            && context.config.providers.contains_key(&k.provider)
    });
    let mut checked = 0;
    for key in candidates {
        let Some(secret) = key.secret.as_ref() else {
            continue;
        };
        checked += 1;
        let upstream_provider = &context.config.providers[&key.provider];
        let check = runtime.block_on(verify::verify(
            &upstream,
            upstream_provider,
            secret,
            rotate::VERIFY_TIMEOUT,
        ));
        if json {
            rows.push(check.to_json(&key.id, &key.provider, key.label.as_deref()));
        } else {
            let mark = if check.is_ok() { "ok    " } else { "FAILED" };
            println!(
                "{mark} {} {:<8} {:<9} {}: {}",
                key.id,
                key.provider,
                key.state.as_str(),
                key.fingerprint,
                check.describe()
            );
        }
        if check.is_ok() {
            accepted.push(key.id.clone());
        } else {
            failed += 1;
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if checked == 0 {
        return Err(CliError::Runtime(
            "no usable or pending key to verify (see `keygate key list`)".to_owned(),
        ));
    }
    if !accepted.is_empty() && !loaded.read_only {
        vault.update(&kek, |doc| {
            let now = crate::unix_now();
            for id in &accepted {
                let _ = ops::mark_verified(doc, id, now);
            }
            Ok::<(), CliError>(())
        })?;
    }
    if failed > 0 {
        return Err(CliError::Runtime(format!(
            "{failed} of {checked} keys failed verification"
        )));
    }
    Ok(())
}

fn read_key(_context: &Context) -> Result<crate::vault::secret::Secret, CliError> {
    let secret = read_secret_from_stdin("upstream API key")?;
    ops::upstream_secret(secret.expose()).map_err(|e| CliError::Usage(e.to_string()))
}

fn add(
    context: &Context,
    provider: &str,
    label: Option<String>,
    fallback: bool,
) -> Result<(), CliError> {
    context.provider(provider)?;
    let secret = read_key(context)?;
    let id = ops::new_key_id().map_err(|e| CliError::Runtime(e.to_string()))?;
    let state = if fallback {
        KeyState::Previous
    } else {
        KeyState::Current
    };
    let kek = context.kek()?;
    let id = context.vault().update(&kek, |document| {
        let key = ops::NewKey {
            id,
            provider,
            secret: &secret,
            label,
            state,
        };
        ops::add_now(document, key).map_err(op_error)
    })?;
    println!(
        "keygate: added {id} ({}) to {provider} as {}",
        secret.fingerprint(),
        state.as_str()
    );
    Ok(())
}

fn list(context: &Context, provider: Option<&str>, json: bool) -> Result<(), CliError> {
    if let Some(provider) = provider {
        context.provider(provider)?;
    }
    let mut loaded = context.vault().load(&context.kek()?)?;
    let rotate_after = context.config.keys.rotate_after.as_secs();
    let now = crate::unix_now();
    // As a server sees it: a `previous` key whose grace ended is retired.
    ops::expire_grace(&mut loaded.document, now);
    let keys: Vec<&UpstreamKey> = loaded
        .document
        .keys
        .iter()
        .filter(|k| provider.is_none_or(|p| k.provider == p))
        .collect();
    let due = |k: &UpstreamKey| k.due_for_rotation(now, rotate_after);
    // What a running server knows about each key's health (none: "-").
    let health = HealthReport::beside(&context.config.metering.db.local_state())
        .read()
        .unwrap_or_default();
    let health_of = |k: &UpstreamKey| health.get(&k.id).map(String::as_str);
    if json {
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let mut row = k.summary(now, rotate_after);
                row["health"] = serde_json::json!(health_of(k));
                row
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<13} {:<10} {:<14} {:<9} {:<9} {:<12} {:<17} {:>5}  {:<17} {:<17}",
        "ID",
        "PROVIDER",
        "LABEL",
        "STATE",
        "HEALTH",
        "FINGERPRINT",
        "CREATED",
        "AGE",
        "LAST VERIFIED",
        "GRACE ENDS"
    );
    for k in keys {
        println!(
            "{:<13} {:<10} {:<14} {:<9} {:<9} {:<12} {:<17} {:>5}  {:<17} {:<17}{}",
            k.id,
            k.provider,
            k.label.as_deref().unwrap_or("-"),
            k.state_shown(),
            health_of(k).unwrap_or("-"),
            k.fingerprint,
            format_time(k.created),
            format_age(k.created),
            k.last_verified
                .map_or_else(|| "never".to_owned(), format_time),
            k.grace_until.map_or_else(|| "-".to_owned(), format_time),
            if due(k) { "  due for rotation" } else { "" },
        );
    }
    Ok(())
}
