//! `key add` and `key rotate` with the new key read from stdin: the one
//! check of the secret, then one vault write (add), or the rotation service
//! (stage as pending, verify with the provider, promote).

use super::provider::settle_owed;
use super::transition::{grace_until, op_error, print_promotion, rotate_error};
use crate::cli::{read_secret_from_stdin, upstream_runtime, CliError, Context};
use crate::keys::{ops, rotate};
use crate::vault::document::KeyState;

fn read_key(_context: &Context) -> Result<crate::vault::secret::Secret, CliError> {
    let secret = read_secret_from_stdin("upstream API key")?;
    ops::upstream_secret(secret.expose()).map_err(|e| CliError::Usage(e.to_string()))
}

pub(super) fn add(
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
    say!(
        "keygate: added {id} ({}) to {provider} as {}",
        secret.fingerprint(),
        state.as_str()
    );
    Ok(())
}

pub(super) fn rotate(
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
            say!("keygate: {id} ({fingerprint}) added to {provider} as pending")
        }
        rotate::Step::Checked { id, check } => say!("keygate: {id}: {}", check.describe()),
        rotate::Step::Unverified => {
            say!("keygate: --no-verify: promoting without asking the upstream")
        }
    };
    let events = context.events();
    let open = rotate::OpenVault {
        vault: &vault,
        kek: &kek,
        events: &events,
    };
    let promotion = runtime
        .block_on(rotate::run(&open, rotation, report))
        .map_err(rotate_error)?;
    print_promotion(&promotion);
    say!(
        "keygate: a running server switches within a second; in-flight requests finish on the old key"
    );
    settle_owed(context, &vault, &kek, None)
}
