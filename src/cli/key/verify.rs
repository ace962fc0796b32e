//! `key verify`: what the provider says of each key, recorded as
//! `last_verified` for the keys it accepted.

use crate::cli::{upstream_runtime, CliError, Context};
use crate::keys::{ops, rotate, verify};
use crate::vault::document::KeyState;

pub(super) fn verify(
    context: &Context,
    provider: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
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
            say!(
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
        say!("{}", serde_json::Value::Array(rows));
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
