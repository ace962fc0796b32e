//! The events room: what keygate did or saw that a person should hear about
//! (docs/events.md, docs/design.md §16). An [`Event`] has a unique `id`, a
//! `type`, an RFC 3339 `time` and its fields — key ids, provider and client
//! names, counts; never a secret. Rooms raise events through [`Events`], a
//! cheap handle that never blocks and never fails: the server queues them
//! for the outbox writer, the CLI writes them to the outbox itself.
//!
//! Below it: `outbox` (the durable table beside the ledger, SQLite or
//! PostgreSQL), `notify` (the `[[notify]]` receivers: format, signature,
//! delivery with backoff), `queue` (the server's bounded path from a raise to
//! the outbox, and the last events the status page shows).

pub mod direct;
pub mod notify;
pub mod outbox;
pub mod queue;

use std::sync::Arc;

use serde_json::{Map, Value};

/// What happened. The names are the contract (`docs/events.md`): receivers
/// filter on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A rotation promoted a new current key.
    KeyRotated,
    /// A rotation stopped before promoting.
    KeyRotationFailed,
    /// keygate created a key at the provider.
    KeyMinted,
    /// The upstream refused a key (first refusal of a healthy key).
    KeyRejected,
    /// The upstream said a key's account is out of credit.
    KeyExhausted,
    /// A key put aside was accepted again.
    KeyRecovered,
    /// A key was burnt (out of use at once, replacement live first).
    KeyBurned,
    /// A key out of use was deleted (or disabled) at the provider.
    KeyDeletedAtProvider,
    /// Deleting a key at the provider failed; it will be tried again.
    KeyDeleteFailed,
    /// A current key is older than `[keys] rotate_after` and nothing rotates it.
    KeyDueForRotation,
    /// The provider reports use of a key that keygate did not send.
    KeyOutsideUse,
    /// A secret scanner reported a key keygate holds.
    KeyLeakReported,
    /// A decoy client key was presented.
    DecoyUsed,
    /// A client's spend crossed a share of its budget.
    BudgetThreshold,
    /// A client's budget is spent.
    BudgetExceeded,
    /// The vault on disk could not be loaded; the last good one is served.
    VaultReloadFailed,
    /// The provider holds keys keygate does not manage.
    UnmanagedKeysFound,
}

impl EventType {
    /// Every type, in the order docs/events.md lists them.
    pub const ALL: [EventType; 17] = [
        EventType::KeyRotated,
        EventType::KeyRotationFailed,
        EventType::KeyMinted,
        EventType::KeyRejected,
        EventType::KeyExhausted,
        EventType::KeyRecovered,
        EventType::KeyBurned,
        EventType::KeyDeletedAtProvider,
        EventType::KeyDeleteFailed,
        EventType::KeyDueForRotation,
        EventType::KeyOutsideUse,
        EventType::KeyLeakReported,
        EventType::DecoyUsed,
        EventType::BudgetThreshold,
        EventType::BudgetExceeded,
        EventType::VaultReloadFailed,
        EventType::UnmanagedKeysFound,
    ];

    /// The type's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::KeyRotated => "key_rotated",
            EventType::KeyRotationFailed => "key_rotation_failed",
            EventType::KeyMinted => "key_minted",
            EventType::KeyRejected => "key_rejected",
            EventType::KeyExhausted => "key_exhausted",
            EventType::KeyRecovered => "key_recovered",
            EventType::KeyBurned => "key_burned",
            EventType::KeyDeletedAtProvider => "key_deleted_at_provider",
            EventType::KeyDeleteFailed => "key_delete_failed",
            EventType::KeyDueForRotation => "key_due_for_rotation",
            EventType::KeyOutsideUse => "key_outside_use",
            EventType::KeyLeakReported => "key_leak_reported",
            EventType::DecoyUsed => "decoy_used",
            EventType::BudgetThreshold => "budget_threshold",
            EventType::BudgetExceeded => "budget_exceeded",
            EventType::VaultReloadFailed => "vault_reload_failed",
            EventType::UnmanagedKeysFound => "unmanaged_keys_found",
        }
    }

    /// The type named `name`.
    pub fn named(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique: `evt_` and 32 hex digits of randomness, or a name derived
    /// from what it is about for an event raised at most once (so a second
    /// replica's copy is the same row).
    pub id: String,
    /// What happened.
    pub kind: EventType,
    /// When (milliseconds since the epoch).
    pub time_ms: u64,
    /// What it is about (names and counts only).
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event with a random id, now. `fields` is an object (anything
    /// else is kept under `detail`).
    pub fn new(kind: EventType, fields: Value) -> Event {
        let mut bytes = [0u8; 16];
        // A failed RNG still yields a unique id: the time and a counter.
        let id = match getrandom::getrandom(&mut bytes) {
            Ok(()) => format!("evt_{}", hex::encode(bytes)),
            Err(_) => fallback_id(),
        };
        Event::with_id(id, kind, fields)
    }

    /// An event raised at most once for `about` (the same id each time it is
    /// raised again: the outbox keeps the first).
    pub fn once(kind: EventType, about: &str, fields: Value) -> Event {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(about.as_bytes());
        let id = format!("evt_{}", hex::encode(&digest[..16]));
        Event::with_id(id, kind, fields)
    }

    fn with_id(id: String, kind: EventType, fields: Value) -> Event {
        let fields = match fields {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("detail".to_owned(), other)]),
        };
        Event {
            id,
            kind,
            time_ms: crate::unix_now_ms(),
            fields,
        }
    }

    /// The time as RFC 3339 (UTC, milliseconds).
    pub fn time(&self) -> String {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.time_ms);
        humantime::format_rfc3339_millis(at).to_string()
    }

    /// The event as it is stored and delivered: `id`, `type`, `time` and
    /// its fields, side by side.
    pub fn to_json(&self) -> Value {
        let mut object = Map::with_capacity(self.fields.len() + 3);
        object.insert("id".to_owned(), Value::from(self.id.as_str()));
        object.insert("type".to_owned(), Value::from(self.kind.as_str()));
        object.insert("time".to_owned(), Value::from(self.time()));
        for (name, value) in &self.fields {
            if !matches!(name.as_str(), "id" | "type" | "time") {
                object.insert(name.clone(), value.clone());
            }
        }
        Value::Object(object)
    }

    /// A field as text (`""` when absent).
    pub fn text(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }
}

fn fallback_id() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "evt_{:016x}{:08x}{:08x}",
        crate::unix_now_ms(),
        std::process::id(),
        n
    )
}

/// Where raised events go.
pub trait EventSink: Send + Sync {
    /// Takes `event` without blocking the caller for long and without failing
    /// (what cannot be kept is counted and logged by the sink).
    fn put(&self, event: Event);
}

/// The handle rooms raise events through: a clone of one `Arc`, or nothing
/// (tests, and commands with nowhere to keep events).
#[derive(Clone, Default)]
pub struct Events {
    sink: Option<Arc<dyn EventSink>>,
}

impl Events {
    /// Events that go to `sink`.
    pub fn to(sink: Arc<dyn EventSink>) -> Events {
        Events { sink: Some(sink) }
    }

    /// Events that go nowhere.
    pub fn none() -> Events {
        Events::default()
    }

    /// Raises a new event of `kind` about `fields` (a JSON object).
    pub fn raise(&self, kind: EventType, fields: Value) {
        self.put(Event::new(kind, fields));
    }

    /// Hands a built event (e.g. [`Event::once`]) to the sink.
    pub fn put(&self, event: Event) {
        if let Some(sink) = &self.sink {
            sink.put(event);
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() {
            "Events(on)"
        } else {
            "Events(off)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_round_trips_by_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::named(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::named("key_rotate"), None);
    }

    #[test]
    fn ids_are_unique_and_once_ids_repeat() {
        let a = Event::new(EventType::KeyRotated, json!({}));
        let b = Event::new(EventType::KeyRotated, json!({}));
        assert_ne!(a.id, b.id);
        assert!(a.id.starts_with("evt_") && a.id.len() == 36, "{}", a.id);
        let c = Event::once(EventType::KeyDueForRotation, "k1 2026-12-06", json!({}));
        let d = Event::once(EventType::KeyDueForRotation, "k1 2026-12-06", json!({}));
        let e = Event::once(EventType::KeyDueForRotation, "k1 2026-12-07", json!({}));
        assert_eq!(c.id, d.id);
        assert_ne!(c.id, e.id);
    }

    #[test]
    fn the_json_carries_id_type_and_time_and_fields_cannot_shadow_them() {
        let mut event = Event::new(
            EventType::KeyBurned,
            json!({"provider": "openai", "key_id": "key_1", "type": "forged"}),
        );
        event.time_ms = 1_764_979_200_123;
        let json = event.to_json();
        assert_eq!(json["type"], "key_burned");
        assert_eq!(json["time"], "2025-12-06T00:00:00.123Z");
        assert_eq!(json["key_id"], "key_1");
        assert_eq!(json["id"], event.id.as_str());
    }
}
