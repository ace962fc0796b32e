//! The inventory `serve` takes by itself (docs/design.md §15): every
//! `[keys] inventory_interval` (default a day; 0 = off), for each provider
//! keygate can list, every key at the provider is read; the counts are kept
//! for the status page and `GET /admin/providers`, and when the unmanaged
//! keys change (first found, more, fewer) `unmanaged_keys_found` is raised —
//! once per provider and set of keys, whichever replica sees it first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::control::state::Shared;
use crate::events::{Event, EventType};
use crate::keys::inventory::{self, Counts, InventoryError};
use crate::shutdown::Shutdown;

/// The last counts per provider.
pub type LastCounts = Mutex<BTreeMap<String, Counts>>;

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let every = shared.config.keys.inventory_interval;
    if every.is_zero() {
        return;
    }
    // The first look waits for the vault, then goes at once.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        if shared.is_vault_loaded() {
            look(&shared, &mut seen).await;
        }
        if !shared.wait_for_next_look(every, &mut shutdown).await {
            return;
        }
    }
}

async fn look(shared: &Shared, seen: &mut BTreeMap<String, Vec<String>>) {
    let loaded = tokio::task::block_in_place(|| {
        let control = shared.control();
        control.vault().load(control.kek())
    });
    let Ok(loaded) = loaded else { return };
    let document = loaded.document;
    for provider in shared.config.providers.values() {
        if !inventory::can_take(&document, provider) {
            continue;
        }
        let taken = inventory::take(&shared.upstream, provider, &document, None).await;
        let counts = match &taken {
            Ok(entries) => Counts::of(entries),
            Err(error) => {
                tracing::warn!(provider = %provider.name, "inventory of {} failed: {error}", provider.name);
                Counts {
                    at: crate::unix_now(),
                    error: Some(error_text(error)),
                    ..Counts::default()
                }
            }
        };
        shared
            .inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.name.clone(), counts.clone());
        let Ok(entries) = taken else { continue };
        let mut unmanaged: Vec<String> = entries
            .iter()
            .filter(|e| e.reading.word() == "unmanaged")
            .map(|e| e.listed.id.clone())
            .collect();
        unmanaged.sort();
        let before = seen.insert(provider.name.clone(), unmanaged.clone());
        let changed = match &before {
            None => !unmanaged.is_empty(),
            Some(before) => *before != unmanaged,
        };
        if changed {
            tracing::warn!(provider = %provider.name, unmanaged = unmanaged.len(), "{} holds {} key(s) keygate does not manage: see `keygate key inventory {}`", provider.name, unmanaged.len(), provider.name);
            shared.events.put(Event::once(
                EventType::UnmanagedKeysFound,
                &format!("{} unmanaged {}", provider.name, unmanaged.join(",")),
                json!({
                    "provider": provider.name,
                    "count": unmanaged.len(),
                    "provider_key_ids": unmanaged,
                    "orphans": counts.orphan,
                }),
            ));
        }
    }
}

fn error_text(error: &InventoryError) -> String {
    error.to_string()
}
