//! The outside-use check `serve` runs by itself (docs/design.md §16): every
//! `[keys] reconcile_interval` (default 15 minutes; 0 = off), each key's
//! usage at the provider is compared with what keygate sent
//! ([`crate::keys::outside_use`]). Outside use sets
//! `keygate_key_outside_requests`, counts `keygate_key_outside_use_total`,
//! raises `key_outside_use` (once per key and hour of the window's end), is
//! kept for the status page, and with `on_outside_use = "burn"` burns the key
//! as `key burn` does.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::OnOutsideUse;
use crate::control::state::Shared;
use crate::events::{Event, EventType};
use crate::keys::outside_use::{self, Finding, Thresholds};
use crate::shutdown::Shutdown;

/// The last comparison's findings of outside use per provider (key ids).
pub type LastFindings = Mutex<BTreeMap<String, Vec<serde_json::Value>>>;

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let every = shared.config.keys.reconcile_interval;
    if every.is_zero() {
        return;
    }
    let mut told: HashSet<(String, u64)> = HashSet::new();
    loop {
        if shared.is_vault_loaded() {
            look(&shared, &mut told).await;
        }
        if !shared.wait_for_next_look(every, &mut shutdown).await {
            return;
        }
    }
}

async fn look(shared: &Shared, told: &mut HashSet<(String, u64)>) {
    let keys = &shared.config.keys;
    let window = outside_use::hours(
        crate::unix_now(),
        keys.reconcile_window.as_secs(),
        keys.reconcile_lag.as_secs(),
    );
    let document = tokio::task::block_in_place(|| {
        let control = shared.control();
        control.vault().load(control.kek()).map(|l| l.document)
    });
    let Ok(document) = document else { return };
    let thresholds = Thresholds {
        min_requests: keys.outside_use_min_requests,
    };
    // The providers first, then keygate's ledger once every replica has
    // flushed what it sent before (twice the flush interval).
    let mut sides = Vec::new();
    for provider in shared.config.providers.values() {
        if !crate::keys::inventory::can_take(&document, provider) {
            continue;
        }
        match outside_use::provider_side(&shared.upstream, provider, &document, window).await {
            Ok(side) => sides.push((provider, side)),
            // A usage API that fails says nothing: no alarm, no burn.
            Err(error) => {
                tracing::warn!(provider = %provider.name, "outside use of {}'s keys cannot be checked: {error}", provider.name)
            }
        }
    }
    if sides.is_empty() {
        return;
    }
    tokio::time::sleep(shared.config.metering.flush_interval * 2).await;
    let sent = tokio::task::block_in_place(|| {
        crate::usage::ledger::Ledger::open(&shared.config.metering.db)
            .and_then(|mut ledger| ledger.key_totals(window.0, window.1))
    });
    let Ok(sent) = sent else {
        tracing::warn!("outside use: cannot read the ledger; will try again");
        return;
    };
    for (provider, side) in sides {
        let compared = outside_use::finish(&side, &document, &sent, thresholds);
        let mut found = Vec::new();
        for c in &compared {
            let labels = [provider.name.as_str(), c.key_id.as_str()];
            let (requests, tokens) = match c.finding {
                Finding::OutsideUse { requests, tokens } => (requests, tokens),
                Finding::Clean => {
                    shared
                        .metrics
                        .outside_requests
                        .with_label_values(&labels)
                        .set(0);
                    continue;
                }
                Finding::NotReconcilable(_) => continue,
            };
            shared
                .metrics
                .outside_requests
                .with_label_values(&labels)
                .set(i64::try_from(requests.unwrap_or(0)).unwrap_or(i64::MAX));
            let row = c.to_json(window);
            found.push(row.clone());
            if !told.insert((c.key_id.clone(), window.1)) {
                continue;
            }
            shared.metrics.outside_use.with_label_values(&labels).inc();
            tracing::warn!(provider = %provider.name, key_id = %c.key_id, extra_requests = ?requests, extra_tokens = tokens, "OUTSIDE USE of key {} of {}: the provider reports more than keygate sent — someone else holds it", c.key_id, provider.name);
            shared.events.put(Event::once(
                EventType::KeyOutsideUse,
                &format!(
                    "{} {} outside use to hour {}",
                    provider.name, c.key_id, window.1
                ),
                row,
            ));
            let usable = document.key(&c.key_id).is_some_and(|k| k.state.is_usable());
            if keys.on_outside_use == OnOutsideUse::Burn && usable {
                match crate::control::admin::burn_as_admin(shared, &c.key_id).await {
                    Ok(_) => {
                        tracing::warn!(key_id = %c.key_id, "key {} burnt for its outside use", c.key_id)
                    }
                    Err(error) => {
                        tracing::warn!(key_id = %c.key_id, "key {} could not be burnt for its outside use: {error}", c.key_id)
                    }
                }
            }
        }
        shared
            .outside_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.name.clone(), found);
    }
}
