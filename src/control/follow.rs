//! The reloader's loop: follows the vault file while `serve` runs — polls
//! for changes every 250 ms (one `stat` each of the vault and the master key
//! file; a Kubernetes `..data` symlink swap shows because `stat` follows the
//! link), reloads on change, on SIGHUP and when a grace period ends; writes
//! the key-health report once a second and warns once a day about keys due
//! for rotation.

use std::sync::Arc;
use std::time::Duration;

use crate::control::state::Shared;
use crate::events::{Event, EventType};
use crate::shutdown::Shutdown;
use serde_json::json;

/// Runs until `shutdown`: polls for changes, reloads on change and on SIGHUP.
pub async fn run(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rotation_warning: Option<std::time::Instant> = None;
    let health_report =
        crate::keys::health_report::HealthReport::beside(&shared.config.metering.db.local_state());
    let mut last_report = std::time::Instant::now() - Duration::from_secs(60);
    let mut warned_master_key_gone = false;
    let mut last_reload_failure: Option<String> = None;
    loop {
        let gone = shared
            .control()
            .master_key_file_missing()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()));
        match gone {
            Some(path) if !warned_master_key_gone => {
                warned_master_key_gone = true;
                tracing::warn!(
                    path = %path.display(),
                    "the master key file {} has disappeared: this server goes on with the key it holds, but no restart or CLI command can open the vault until it is restored from its backup",
                    path.display()
                );
            }
            None => warned_master_key_gone = false,
            Some(_) => {}
        }
        // `key list` shows what this server knows about each key's health.
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = std::time::Instant::now();
            let snapshot = shared.snapshot();
            let now_ms = crate::keys::health::now_ms();
            if let Err(error) =
                tokio::task::block_in_place(|| health_report.write(&snapshot.rings, now_ms))
            {
                tracing::debug!("cannot write the key health report: {error}");
            }
        }
        if last_rotation_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(86_400)) {
            last_rotation_warning = Some(std::time::Instant::now());
            tokio::task::block_in_place(|| warn_keys_due_for_rotation(&shared));
        }
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
            _ = shutdown.requested() => {
                health_report.remove();
                return;
            }
        };
        let expired = shared
            .snapshot()
            .next_expiry
            .is_some_and(|t| t <= crate::unix_now());
        if !forced && !expired && !shared.control().changed() {
            continue;
        }
        // On the blocking pool, not in `block_in_place`: a reload of a big
        // vault takes ~140 ms, and with this worker blocked in place every
        // connection stalled at once for up to 80 ms per reload (paced load
        // p99 2.8 ms, worst 66 ms; on the pool 2.1 ms, worst 6.6 ms:
        // docs/performance.md "Vault at scale").
        let reloading = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || shared.reload())
        };
        let result = match reloading.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The runtime is shutting down.
            Err(_) => {
                health_report.remove();
                return;
            }
        };
        match result {
            Err(error) => {
                let serving = shared.snapshot().generation;
                tracing::warn!(
                    serving_generation = serving,
                    "vault reload failed, still serving the last good keys: {error}"
                );
                // Once per distinct failure, not once per second while it lasts.
                let text = error.to_string();
                if last_reload_failure.as_deref() != Some(text.as_str()) {
                    shared.events.raise(
                        EventType::VaultReloadFailed,
                        json!({"serving_generation": serving, "error": text}),
                    );
                    last_reload_failure = Some(text);
                }
            }
            Ok(_) => last_reload_failure = None,
        }
    }
}

/// Logs, once a day, every usable key older than `[keys] rotate_after`, and
/// raises `key_due_for_rotation` for each such current key.
fn warn_keys_due_for_rotation(shared: &Shared) {
    let rotate_after = shared.config.keys.rotate_after.as_secs();
    let now = crate::unix_now();
    let control = shared.control();
    let Ok(loaded) = control.vault().load(control.kek()) else {
        return;
    };
    for key in &loaded.document.keys {
        let age = now.saturating_sub(key.created);
        if key.state.is_usable() && age > rotate_after {
            if key.state == crate::vault::document::KeyState::Current {
                // One a day per key, whichever replica or restart raises it first.
                let day = now / 86_400;
                shared.events.put(Event::once(
                    EventType::KeyDueForRotation,
                    &format!("{} due on day {day}", key.id),
                    json!({"provider": key.provider, "key_id": key.id, "age_days": age / 86_400,
                           "rotate_after_days": rotate_after / 86_400}),
                ));
            }
            tracing::warn!(
                provider = %key.provider,
                key_id = %key.id,
                age_days = age / 86_400,
                "key {} of {} is due for rotation (older than [keys] rotate_after): run `keygate key rotate {}`",
                key.id,
                key.provider,
                key.provider
            );
        }
    }
}
