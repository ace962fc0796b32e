//! `key list [PROVIDER] [--json] [--all | --recent 24h]`: what the vault
//! holds, with the health a running server reported. The vault keeps every
//! key it ever held (retired, rejected and revoked ones as records), so by
//! default the list shows the keys in use or on their way in or out, and the
//! ones that left use recently; `--all` shows the whole history.

use clap::Args;

use crate::cli::table::{Align, Table};
use crate::cli::{format_age, format_time, CliError, Context};
use crate::keys::health_report::HealthReport;
use crate::keys::ops;
use crate::vault::document::{KeyState, UpstreamKey};

/// The arguments of `key list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this provider.
    provider: Option<String>,
    /// Machine-readable output (the same rows).
    #[arg(long)]
    json: bool,
    /// Every key the vault ever held, however long ago it left use.
    #[arg(long, conflicts_with = "recent")]
    all: bool,
    /// How long a key stays listed after it left use (retired, rejected,
    /// revoked); keys in use, pending, or owed a delete at the provider are
    /// always listed.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::cli::duration_arg)]
    recent: std::time::Duration,
}

/// Whether `key` is listed without `--all`: in use or on its way in
/// (pending, current, previous), owed a delete at the provider, or out of
/// use since `left_use` (unix seconds) no longer than `recent` before `now`.
fn listed(key: &UpstreamKey, left_use: u64, now: u64, recent: u64) -> bool {
    let in_play = matches!(
        key.state,
        KeyState::Pending | KeyState::Current | KeyState::Previous
    );
    let owed = key.at_provider.as_ref().is_some_and(|c| c.pending());
    in_play || owed || now.saturating_sub(left_use) <= recent
}

pub(super) fn list(context: &Context, args: ListArgs) -> Result<(), CliError> {
    let provider = args.provider.as_deref();
    if let Some(provider) = provider {
        context.provider(provider)?;
    }
    let mut loaded = context.vault().load(&context.kek()?)?;
    let rotate_after = context.config.keys.rotate_after.as_secs();
    let now = crate::unix_now();
    // As a server sees it: a `previous` key whose grace ended is retired —
    // since its grace ended, not since this listing.
    let retired_now = ops::expire_grace(&mut loaded.document, now);
    let left_use = |k: &UpstreamKey| match k.grace_until {
        Some(end) if retired_now.contains(&k.id) => end,
        _ => k.state_changed,
    };
    let of_provider: Vec<&UpstreamKey> = loaded
        .document
        .keys
        .iter()
        .filter(|k| provider.is_none_or(|p| k.provider == p))
        .collect();
    let keys: Vec<&UpstreamKey> = of_provider
        .iter()
        .copied()
        .filter(|k| args.all || listed(k, left_use(k), now, args.recent.as_secs()))
        .collect();
    let hidden = of_provider.len() - keys.len();
    if hidden > 0 {
        note!(
            "keygate: {hidden} key(s) out of use for longer than {} not listed (--all lists them)",
            humantime::format_duration(args.recent)
        );
    }
    let due = |k: &UpstreamKey| k.due_for_rotation(now, rotate_after);
    // What a running server knows about each key's health (none: "-").
    let health = HealthReport::beside(&context.config.metering.db.local_state())
        .read()
        .unwrap_or_default();
    let health_of = |k: &UpstreamKey| health.get(&k.id).map(String::as_str);
    // What the provider last said is left of each key's limits (§17).
    let headroom = HealthReport::beside(&context.config.metering.db.local_state()).read_headroom();
    let room_of = |k: &UpstreamKey| headroom.get(&k.id).copied().unwrap_or_default();
    if args.json {
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
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("PROVIDER", Align::Left),
        ("LABEL", Align::Left),
        ("STATE", Align::Left),
        ("HEALTH", Align::Left),
        ("FINGERPRINT", Align::Left),
        ("CREATED", Align::Left),
        ("AGE", Align::Right),
        ("LAST VERIFIED", Align::Left),
        ("GRACE ENDS", Align::Left),
        ("", Align::Left),
    ]);
    for k in &keys {
        table.row(vec![
            k.id.clone(),
            k.provider.clone(),
            k.label.clone().unwrap_or_else(|| "-".to_owned()),
            k.state_shown(),
            health_of(k).unwrap_or("-").to_owned(),
            k.fingerprint.clone(),
            format_time(k.created),
            format_age(k.created),
            k.last_verified
                .map_or_else(|| "never".to_owned(), format_time),
            k.grace_until.map_or_else(|| "-".to_owned(), format_time),
            if due(k) { "due for rotation" } else { "" }.to_owned(),
        ]);
    }
    let lines = table.lines();
    let mut lines = lines.iter();
    if let Some(header) = lines.next() {
        say!("{header}");
    }
    for (line, k) in lines.zip(&keys) {
        say!("{line}");
        // Under its key's row, outside the columns: the provider's word on its limits.
        let room = room_of(k);
        if room != Default::default() {
            say!("  headroom: {}, {} open", room.describe(), room.in_flight);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: KeyState, changed: u64) -> UpstreamKey {
        let json = serde_json::json!({
            "id": "key_1", "provider": "openai", "label": null, "secret": null,
            "fingerprint": "sk-…abcd", "state": state, "created": 1, "state_changed": changed,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn keys_out_of_use_are_listed_while_recent_and_keys_in_play_always() {
        let day = 86_400;
        let now = 10 * day;
        for state in [KeyState::Pending, KeyState::Current, KeyState::Previous] {
            assert!(listed(&key(state, 1), 1, now, day), "{state:?}");
        }
        for state in [KeyState::Retired, KeyState::Rejected, KeyState::Revoked] {
            let changed = now - day + 1;
            assert!(listed(&key(state, changed), changed, now, day), "{state:?}");
            assert!(!listed(&key(state, 1), 1, now, day), "{state:?}");
        }
    }
}
