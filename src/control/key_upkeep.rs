//! The key upkeep `serve` runs beside the reloader (docs/design.md §12): once
//! a second it retires in the vault every `previous` key whose grace has
//! ended (so a minted one owes its delete within a second or two of
//! `grace_until`), deletes at the provider what keygate owes it, retrying a
//! failure with doubling backoff (1 s up to 5 min), and — with `[keys]
//! auto_rotate` — runs the minted rotation for every current key older than
//! `rotate_after`, at start and hourly, under the vault's rotation lease so
//! one process rotates at a time.
//!
//! Every step logs key ids only, and counts
//! `keygate_provider_deletes_total` / `keygate_key_mints_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::state::{ServerVault, Shared};
use crate::keys::rotate::VaultAccess;
use crate::keys::{cleanup, mint, ops};
use crate::shutdown::Shutdown;
use crate::vault::document::{Document, KeyState};

/// How often the key ages are checked with `auto_rotate`.
const AUTO_ROTATE_EVERY: Duration = Duration::from_secs(3600);

/// The longest pause between two tries of a failing delete.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// When each failing delete may be tried again, and the pause after that.
#[derive(Default)]
struct Backoff {
    next: HashMap<String, (Instant, Duration)>,
}

impl Backoff {
    fn due(&self, id: &str) -> bool {
        self.next
            .get(id)
            .is_none_or(|(at, _)| *at <= Instant::now())
    }

    fn failed(&mut self, id: &str) {
        let pause = self
            .next
            .get(id)
            .map_or(Duration::from_secs(1), |(_, p)| (*p * 2).min(MAX_BACKOFF));
        self.next
            .insert(id.to_owned(), (Instant::now() + pause, pause));
    }

    fn done(&mut self, id: &str) {
        self.next.remove(id);
    }

    /// True when a key never tried yet, or whose pause is over, may be owed.
    fn any_due(&self) -> bool {
        self.next.is_empty() || self.next.values().any(|(at, _)| *at <= Instant::now())
    }
}

/// What the last look at the vault found, so the vault is decrypted again
/// only when there may be something to do.
#[derive(Default)]
struct LastLook {
    generation: u64,
    /// The earliest `grace_until` of a `previous` key.
    next_grace_end: Option<u64>,
    /// Keys that still owe their provider a delete.
    owed: bool,
}

impl LastLook {
    fn of(document: &Document, generation: u64) -> LastLook {
        LastLook {
            generation,
            next_grace_end: document
                .keys
                .iter()
                .filter(|k| k.state == KeyState::Previous)
                .filter_map(|k| k.grace_until)
                .min(),
            owed: !cleanup::owed(document).is_empty(),
        }
    }

    fn worth_a_look(&self, generation: u64, backoff: &Backoff) -> bool {
        generation != self.generation
            || self.next_grace_end.is_some_and(|t| t <= crate::unix_now())
            || (self.owed && backoff.any_due())
    }
}

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::default();
    let mut last = LastLook::default();
    let mut last_auto_rotate: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.requested() => return,
        }
        let generation = shared.snapshot().generation;
        let auto_due = shared.config.keys.auto_rotate
            && last_auto_rotate.is_none_or(|t| t.elapsed() >= AUTO_ROTATE_EVERY);
        if generation == 0 || !(auto_due || last.worth_a_look(generation, &backoff)) {
            continue;
        }
        let Ok(loaded) = ServerVault(&shared).with(|v, k| v.load(k)) else {
            continue;
        };
        let mut wrote = false;
        if !loaded.read_only {
            wrote |= retire_expired(&shared, &loaded.document);
            wrote |= delete_owed(&shared, &loaded.document, &mut backoff).await;
            if auto_due {
                last_auto_rotate = Some(Instant::now());
                wrote |= auto_rotate(&shared).await;
            }
        }
        if wrote {
            if let Err(error) = tokio::task::block_in_place(|| shared.reload()) {
                tracing::warn!("vault reload after key upkeep failed: {error}");
            }
        }
        // Look again at what the writes left (a delete owed by a key just retired).
        last = match load(&shared) {
            Ok(document) if wrote => LastLook::of(&document, 0),
            _ => LastLook::of(&loaded.document, generation),
        };
        if loaded.read_only {
            // Nothing here can be written: wait for the file to change.
            last.next_grace_end = None;
            last.owed = false;
        }
    }
}

fn load(shared: &Shared) -> Result<Document, crate::vault::VaultError> {
    ServerVault(shared).with(|v, k| v.load(k).map(|l| l.document))
}

/// Retires, in one write, every `previous` key whose grace has ended.
fn retire_expired(shared: &Shared, document: &Document) -> bool {
    let now = crate::unix_now();
    let expired = document
        .keys
        .iter()
        .any(|k| k.state == KeyState::Previous && k.grace_until.is_some_and(|t| t <= now));
    if !expired {
        return false;
    }
    let result = ServerVault(shared).with(|v, k| {
        v.update(k, |doc| {
            Ok::<_, crate::vault::VaultError>(ops::expire_grace(doc, crate::unix_now()))
        })
    });
    match result {
        Ok(retired) => {
            for id in &retired {
                tracing::info!(key_id = %id, "key {id} retired: its grace ended");
            }
            !retired.is_empty()
        }
        Err(error) => {
            tracing::debug!("cannot record retired keys in the vault: {error}");
            false
        }
    }
}

/// Deletes at the provider each key that owes it, when its backoff allows.
async fn delete_owed(shared: &Shared, document: &Document, backoff: &mut Backoff) -> bool {
    let mut wrote = false;
    for id in cleanup::owed(document) {
        if !backoff.due(&id) {
            continue;
        }
        let settled =
            cleanup::settle(&ServerVault(shared), &shared.upstream, &shared.config, &id).await;
        let Ok(settled) = settled else {
            continue;
        };
        wrote = true;
        let provider = settled.provider.as_str();
        match &settled.outcome {
            Ok(word) => {
                backoff.done(&id);
                count(&shared.metrics.provider_deletes, provider, "ok");
                tracing::info!(key_id = %id, provider, "key {id} {word} at {provider}");
            }
            Err(error) => {
                backoff.failed(&id);
                count(&shared.metrics.provider_deletes, provider, "failed");
                tracing::warn!(key_id = %id, provider, "key {id} could not be deleted at {provider}, will retry: {error}");
            }
        }
    }
    wrote
}

fn count(counter: &prometheus::IntCounterVec, provider: &str, result: &str) {
    if !provider.is_empty() {
        counter.with_label_values(&[provider, result]).inc();
    }
}

/// Rotates, by minting, every current key older than `rotate_after` of the
/// providers keygate can mint for, under the rotation lease (skipped this
/// round when another process holds it).
pub async fn auto_rotate(shared: &Shared) -> bool {
    // Replicas on other hosts: the Redis lease (the vault lock covers one host).
    let mut cluster_lease = None;
    if let Some(cluster) = &shared.cluster {
        use crate::cluster::lease::{self, Taken};
        match lease::take(cluster, lease::AUTO_ROTATE, Duration::from_secs(600)).await {
            Taken::Held(lease) => cluster_lease = Some(lease),
            Taken::Elsewhere => {
                tracing::info!(
                    "auto_rotate: another replica holds the rotation lease; skipped this round"
                );
                return false;
            }
            Taken::Unknown => {
                tracing::warn!("auto_rotate: Redis did not answer for the rotation lease; going on with the vault's lock alone");
            }
        }
    }
    let wrote = auto_rotate_leased(shared).await;
    if let Some(lease) = cluster_lease {
        lease.release().await;
    }
    wrote
}

async fn auto_rotate_leased(shared: &Shared) -> bool {
    let lease = ServerVault(shared).with(|v, _| v.try_rotation_lease());
    let _lease = match lease {
        Ok(Some(lease)) => lease,
        Ok(None) => {
            tracing::info!(
                "auto_rotate: another process is rotating keys of this vault; skipped this round"
            );
            return false;
        }
        Err(error) => {
            tracing::warn!("auto_rotate: cannot take the rotation lease: {error}");
            return false;
        }
    };
    // Read under the lease: what another process just rotated is not due.
    let Ok(document) = load(shared) else {
        return false;
    };
    let now = crate::unix_now();
    let rotate_after = shared.config.keys.rotate_after.as_secs();
    let due: Vec<(String, String)> = document
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Current && k.due_for_rotation(now, rotate_after))
        .filter(|k| {
            shared
                .config
                .providers
                .get(&k.provider)
                .is_some_and(|p| crate::keys::burn::can_mint(&document, p))
        })
        .map(|k| (k.provider.clone(), k.id.clone()))
        .collect();
    if due.is_empty() {
        tracing::debug!("auto_rotate: no key of a provider keygate can mint for is older than [keys] rotate_after");
    }
    let mut wrote = false;
    for (provider_name, old) in due {
        let provider = &shared.config.providers[&provider_name];
        tracing::info!(provider = %provider_name, key_id = %old, "auto_rotate: {old} is older than [keys] rotate_after; minting its replacement");
        let rotation = mint::MintRotation {
            provider,
            label: Some("auto-rotated".to_owned()),
            replace: Some(&old),
            verify: true,
            grace_until: crate::unix_now()
                .saturating_add(shared.config.keys.default_grace.as_secs()),
            propagation_wait: mint::PROPAGATION_WAIT,
            call_timeout: crate::keys::management::CALL_TIMEOUT,
        };
        wrote = true;
        match mint_logged(shared, rotation).await {
            Ok(promotion) => {
                count(&shared.metrics.key_mints, &provider_name, "ok");
                tracing::info!(provider = %provider_name, key_id = %promotion.promoted, "auto_rotate: {} is current, {old} is the fallback until its grace ends", promotion.promoted);
            }
            Err(error) => {
                count(&shared.metrics.key_mints, &provider_name, "failed");
                tracing::warn!(provider = %provider_name, key_id = %old, "auto_rotate: rotation of {old} failed, it stays current: {error}");
            }
        }
    }
    wrote
}

/// One minted rotation on the server's vault, its steps logged by id.
pub async fn mint_logged(
    shared: &Shared,
    rotation: mint::MintRotation<'_>,
) -> Result<crate::keys::ops::Promotion, mint::MintRotateError> {
    let provider = rotation.provider.name.clone();
    mint::rotate(&ServerVault(shared), &shared.upstream, rotation, |step| {
        if let mint::MintStep::Created { name, provider_id } = step {
            tracing::info!(provider = %provider, provider_id, "created {name} at {provider}");
        }
        if let mint::MintStep::OrphanDeleted { name, provider_id } = step {
            tracing::info!(provider = %provider, provider_id, "deleted orphan {name} at {provider}");
        }
    })
    .await
}
