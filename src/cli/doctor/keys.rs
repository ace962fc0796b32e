//! The keys: every provider the operator set up has a usable key that the
//! provider accepts (verified live), keys due for rotation and graces about
//! to end, management credentials where `auto_rotate` needs them, and the
//! keys at each provider keygate can list. A provider the embedded defaults
//! only offer (`Config::is_set_up`) is said to be not set up, not warned about.

use std::time::Duration;

use super::{Report, Status};
use crate::cli::{upstream_runtime, CliError, Context};
use crate::keys::verify;
use crate::vault::document::{Document, KeyState};

pub(super) fn key_checks(
    context: &Context,
    document: &Document,
    report: &mut Report,
) -> Result<(), CliError> {
    let (runtime, upstream) = upstream_runtime(context)?;
    let now = crate::unix_now();
    let rotate_after = context.config.keys.rotate_after.as_secs();
    for provider in context.config.providers.values() {
        let usable: Vec<_> = document
            .keys
            .iter()
            .filter(|k| k.provider == provider.name && k.state.is_usable() && k.secret.is_some())
            .filter(|k| !(k.state == KeyState::Previous && k.grace_until.is_some_and(|t| t <= now)))
            .collect();
        let default = provider.name == context.config.routing.default;
        let has_keys = document.keys.iter().any(|k| k.provider == provider.name);
        if !context.config.is_set_up(&provider.name, has_keys) {
            report.add(
                "keys",
                Status::Ok,
                format!(
                    "{}: not set up (offered by the embedded defaults, no key in the vault): nothing to check",
                    provider.name
                ),
                None,
            );
            continue;
        }
        if usable.is_empty() {
            report.add(
                "keys",
                if default { Status::Fail } else { Status::Warn },
                format!(
                    "{} has no usable key{}",
                    provider.name,
                    if default {
                        " (it is the default provider)"
                    } else {
                        ""
                    }
                ),
                Some(format!(
                    "printf '%s' \"$KEY\" | keygate key add {}",
                    provider.name
                )),
            );
            continue;
        }
        let mut working = 0;
        for key in &usable {
            let Some(secret) = key.secret.as_ref() else {
                continue;
            };
            let check = runtime.block_on(verify::verify(
                &upstream,
                provider,
                secret,
                Duration::from_secs(10),
            ));
            if check.is_ok() {
                working += 1;
            } else {
                report.add(
                    "keys",
                    Status::Warn,
                    format!("{} {}: {}", provider.name, key.id, check.describe()),
                    None,
                );
            }
            if key.due_for_rotation(now, rotate_after) {
                report.add(
                    "rotation",
                    Status::Warn,
                    format!(
                        "{} {} is older than [keys] rotate_after",
                        provider.name, key.id
                    ),
                    Some(format!("keygate key rotate {}", provider.name)),
                );
            }
            if let Some(until) = key.grace_until.filter(|t| t.saturating_sub(now) < 86_400) {
                report.add(
                    "grace",
                    Status::Warn,
                    format!(
                        "{} {}'s grace ends in {} s",
                        provider.name,
                        key.id,
                        until.saturating_sub(now)
                    ),
                    None,
                );
            }
        }
        let status = if working > 0 {
            Status::Ok
        } else if default {
            Status::Fail
        } else {
            Status::Warn
        };
        report.add(
            "keys",
            status,
            format!(
                "{}: {working} of {} usable keys verified working",
                provider.name,
                usable.len()
            ),
            (working == 0).then(|| format!("keygate key verify {}", provider.name)),
        );
    }
    Ok(())
}

/// Every provider with `[providers.NAME.admin]` has its management
/// credential when `auto_rotate` will mint for it.
pub(super) fn auto_rotate_checks(context: &Context, document: &Document, report: &mut Report) {
    if !context.config.keys.auto_rotate {
        return;
    }
    for provider in context.config.providers.values() {
        if provider.admin.is_some() && document.admin_key(&provider.name).is_none() {
            report.add(
                "auto_rotate",
                Status::Fail,
                format!(
                    "{} has [providers.{0}.admin] but no management credential",
                    provider.name
                ),
                Some(format!(
                    "printf '%s' \"$ADMIN_KEY\" | keygate admin-key set {}",
                    provider.name
                )),
            );
        }
    }
}

/// Orphans (keys keygate created but never recorded) and unmanaged keys at
/// each provider keygate can list: warnings, with the command that clears them.
pub(super) fn inventory_checks(
    context: &Context,
    document: &Document,
    report: &mut Report,
) -> Result<(), CliError> {
    use crate::keys::inventory;
    let listable: Vec<_> = context
        .config
        .providers
        .values()
        .filter(|p| inventory::can_take(document, p))
        .collect();
    if listable.is_empty() {
        return Ok(());
    }
    let (runtime, upstream) = upstream_runtime(context)?;
    for provider in listable {
        let name = &provider.name;
        match runtime.block_on(inventory::take(&upstream, provider, document, None)) {
            Ok(entries) => {
                let counts = inventory::Counts::of(&entries);
                let status = if counts.orphan > 0 || counts.unmanaged > 0 {
                    Status::Warn
                } else {
                    Status::Ok
                };
                report.add(
                    "inventory",
                    status,
                    format!(
                        "{name}: {} keys at the provider, {} managed, {} orphan, {} unmanaged",
                        entries.len(),
                        counts.managed,
                        counts.orphan,
                        counts.unmanaged
                    ),
                    (status == Status::Warn).then(|| {
                        format!("keygate key inventory {name}, then --delete PROVIDER_KEY_ID what is not needed")
                    }),
                );
            }
            Err(error) => report.add("inventory", Status::Warn, format!("{name}: {error}"), None),
        }
    }
    Ok(())
}
