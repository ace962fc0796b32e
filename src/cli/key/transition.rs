//! What every `key` command that writes shares: `--grace` turned into the
//! deadline of the demoted key, a promotion printed, and a refused
//! transition or failed rotation turned into the [`CliError`] (and so the
//! exit code) it means.

use crate::cli::{CliError, Context};
use crate::keys::{ops, rotate};

/// A refused transition: a usage error (exit 2) when the operator named a
/// key wrongly, else a runtime one.
pub(super) fn op_error(error: ops::OpError) -> CliError {
    match error {
        ops::OpError::UnknownKey(_)
        | ops::OpError::NotCurrent(_)
        | ops::OpError::AmbiguousReplace { .. } => CliError::Usage(error.to_string()),
        other => CliError::Runtime(other.to_string()),
    }
}

/// A failed rotation, as [`op_error`] for a refused transition.
pub(super) fn rotate_error(error: rotate::RotateError) -> CliError {
    match error {
        rotate::RotateError::Op(op) => op_error(op),
        rotate::RotateError::Vault(vault) => CliError::Vault(vault),
        other => CliError::Runtime(other.to_string()),
    }
}

/// When the demoted key's grace ends: `--grace` (or `[keys] default_grace`)
/// from now.
pub(super) fn grace_until(context: &Context, grace: Option<std::time::Duration>) -> u64 {
    let grace = grace.unwrap_or(context.config.keys.default_grace);
    crate::unix_now().saturating_add(grace.as_secs())
}

/// What a promotion moved, one line per key.
pub(super) fn print_promotion(promotion: &ops::Promotion) {
    say!("keygate: {} is now current", promotion.promoted);
    if let Some(demoted) = &promotion.demoted {
        say!("keygate: {demoted} is now previous (the fallback) until its grace ends");
    }
    if let Some(retired) = &promotion.retired {
        say!("keygate: {retired} retired (secret wiped)");
    }
}
