//! `key list` (what the vault holds, with the health a running server
//! reported) and `key verify` (what the provider says of each key, recorded
//! as `last_verified` for the keys it accepted).

use crate::cli::{format_age, format_time, upstream_runtime, CliError, Context};
use crate::keys::health_report::HealthReport;
use crate::keys::{ops, rotate, verify};
use crate::vault::document::{KeyState, UpstreamKey};

pub(super) fn list(context: &Context, provider: Option<&str>, json: bool) -> Result<(), CliError> {
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
    // What the provider last said is left of each key's limits (§17).
    let headroom = HealthReport::beside(&context.config.metering.db.local_state()).read_headroom();
    let room_of = |k: &UpstreamKey| headroom.get(&k.id).copied().unwrap_or_default();
    if json {
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let mut row = k.summary(now, rotate_after);
                row["health"] = serde_json::json!(health_of(k));
                row["headroom"] = serde_json::json!(room_of(k));
                row
            })
            .collect();
        say!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    say!(
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
        say!(
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
        let room = room_of(k);
        if room != Default::default() {
            say!(
                "{:<13} headroom: {}, {} open",
                "",
                room.describe(),
                room.in_flight
            );
        }
    }
    Ok(())
}

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
