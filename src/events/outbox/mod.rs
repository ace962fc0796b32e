//! The durable outbox: every event raised, and for each `[[notify]]`
//! receiver that wants it, its delivery — pending, delivered or given up,
//! with its attempts and last error. It lives beside the usage ledger: in
//! the same SQLite file (`[metering] db`), or in the same PostgreSQL
//! database, where replicas share it and claim each delivery for a while
//! before sending it (`FOR UPDATE SKIP LOCKED`), so one replica delivers
//! each event in the common case.
//!
//! Holds event bodies (names and counts, never a secret) and receiver
//! names, never a receiver's URL (a Slack webhook URL is itself a secret).
//! Bounded on disk: events whose deliveries are over are pruned after
//! `[events] keep`, and the oldest beyond `[events] max_stored` go first.

mod postgres;
mod sql;
mod sqlite;

use crate::config::LedgerDb;

use super::{Event, EventType};

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// SQLite failed.
    #[error(
        "events outbox {path}: {source}; check [metering] db and that keygate may write there"
    )]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed.
    #[error("events outbox {endpoint}: {detail}")]
    Postgres {
        /// `postgres://HOST…`, never the password.
        endpoint: String,
        /// What the server or the connection said.
        detail: String,
    },
    /// The directory could not be created.
    #[error("events outbox {path}: cannot create its directory: {source}")]
    Io {
        /// The database file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet delivered; tried again at `next_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Not delivered within `give_up_after` (or its receiver is gone).
    GivenUp,
}

impl DeliveryState {
    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::GivenUp => "given_up",
        }
    }

    fn named(name: &str) -> DeliveryState {
        match name {
            "delivered" => DeliveryState::Delivered,
            "given_up" => DeliveryState::GivenUp,
            _ => DeliveryState::Pending,
        }
    }
}

/// One event's delivery to one receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The receiver's name (`[[notify]] name`).
    pub target: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// When it is tried next (pending), ms since the epoch.
    pub next_at_ms: u64,
    /// When it was delivered or given up.
    pub done_at_ms: Option<u64>,
    /// The last failure (status or connection error), never a secret.
    pub last_error: Option<String>,
}

/// A stored event and its deliveries.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The event as delivered (`id`, `type`, `time`, fields).
    pub body: serde_json::Value,
    /// Its time, ms since the epoch.
    pub time_ms: u64,
    /// One per receiver that wanted it.
    pub deliveries: Vec<Delivery>,
}

impl StoredEvent {
    /// The event as listed (`keygate events --json`, `GET /admin/events`):
    /// its own fields, and `deliveries`, one per receiver.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = match &self.body {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let time = |ms: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        };
        let deliveries = self
            .deliveries
            .iter()
            .map(|d| {
                serde_json::json!({
                    "receiver": d.target,
                    "state": d.state.as_str(),
                    "attempts": d.attempts,
                    "next_attempt": (d.state == DeliveryState::Pending).then(|| time(d.next_at_ms)),
                    "done": d.done_at_ms.map(time),
                    "last_error": d.last_error,
                })
            })
            .collect();
        body.insert(
            "deliveries".to_owned(),
            serde_json::Value::Array(deliveries),
        );
        serde_json::Value::Object(body)
    }

    /// One line on where its deliveries stand: `ops: delivered`, `ops:
    /// pending (2 attempts: …)`; `-` when no receiver wanted it.
    pub fn delivery_summary(&self) -> String {
        if self.deliveries.is_empty() {
            return "-".to_owned();
        }
        self.deliveries
            .iter()
            .map(|d| match (d.state, &d.last_error) {
                (DeliveryState::Delivered, _) => format!("{}: delivered", d.target),
                (state, Some(error)) => format!(
                    "{}: {} ({} attempts: {error})",
                    d.target,
                    state.as_str(),
                    d.attempts
                ),
                (state, None) => format!("{}: {}", d.target, state.as_str()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Query {
    /// Events of the last `since`, of type `kind` (a name), at most `limit`.
    pub fn new(
        since: std::time::Duration,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Query, String> {
        let kind = match kind {
            None | Some("") | Some("*") => None,
            Some(name) => Some(EventType::named(name).ok_or_else(|| {
                format!(
                    "`{name}` is not an event type (known: {})",
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })?),
        };
        let since_ms = crate::unix_now_ms()
            .saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        Ok(Query {
            since_ms,
            kind,
            limit,
        })
    }
}

/// A delivery claimed for sending.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The event's id.
    pub event_id: String,
    /// The event's JSON, exactly as stored (every attempt sends the same bytes).
    pub body: String,
    /// When the event was raised (the give-up clock starts there).
    pub time_ms: u64,
    /// Attempts before this one.
    pub attempts: u32,
}

/// What the list asks for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Events raised at or after (ms since the epoch).
    pub since_ms: u64,
    /// Only this type.
    pub kind: Option<EventType>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// An event on its way in, with the receivers that want it.
pub struct Incoming<'a> {
    /// The event.
    pub event: &'a Event,
    /// Names of the receivers it goes to.
    pub targets: Vec<&'a str>,
}

/// An open outbox.
pub struct Outbox {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Postgres>),
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Outbox {
    /// Opens (creating the tables) the outbox beside the ledger `db` names.
    pub fn open(db: &LedgerDb) -> Result<Outbox, OutboxError> {
        let backend = match db {
            LedgerDb::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::open(path)?),
            LedgerDb::Postgres { url, endpoint } => {
                Backend::Postgres(Box::new(postgres::Postgres::open(url, endpoint)?))
            }
        };
        Ok(Outbox { backend })
    }

    /// Stores events and their pending deliveries in one transaction; an
    /// event whose id is already stored (a once-only event raised again) is
    /// skipped with its deliveries.
    pub fn put(&mut self, batch: &[Incoming<'_>]) -> Result<(), OutboxError> {
        let rows: Vec<_> = batch
            .iter()
            .map(|incoming| {
                let event = incoming.event;
                (
                    event.id.clone(),
                    event.kind.as_str(),
                    n(event.time_ms),
                    event.to_json().to_string(),
                    incoming
                        .targets
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        match &mut self.backend {
            Backend::Sqlite(db) => db.put(&rows),
            Backend::Postgres(db) => db.put(rows),
        }
    }

    /// Claims up to `limit` due deliveries to `target` until `until_ms`:
    /// no other replica takes them before then.
    pub fn claim(
        &mut self,
        target: &str,
        now_ms: u64,
        until_ms: u64,
        limit: u32,
    ) -> Result<Vec<Claimed>, OutboxError> {
        match &mut self.backend {
            Backend::Sqlite(db) => db.claim(target, n(now_ms), n(until_ms), limit),
            Backend::Postgres(db) => db.claim(target, n(now_ms), n(until_ms), limit),
        }
    }

    /// Records an attempt's outcome: delivered, or failed with `error` and
    /// tried again at `next_at_ms`, or given up.
    pub fn record(
        &mut self,
        event_id: &str,
        target: &str,
        outcome: Outcome<'_>,
        now_ms: u64,
    ) -> Result<(), OutboxError> {
        let (state, next_at, error) = match outcome {
            Outcome::Delivered => (DeliveryState::Delivered, now_ms, None),
            Outcome::Retry { next_at_ms, error } => {
                (DeliveryState::Pending, next_at_ms, Some(error))
            }
            Outcome::GiveUp { error } => (DeliveryState::GivenUp, now_ms, Some(error)),
        };
        let done = (state != DeliveryState::Pending).then_some(n(now_ms));
        let row = (
            event_id.to_owned(),
            target.to_owned(),
            state.as_str(),
            n(next_at),
            done,
            error.map(str::to_owned),
        );
        match &mut self.backend {
            Backend::Sqlite(db) => db.record(row),
            Backend::Postgres(db) => db.record(row),
        }
    }

    /// Stored events, newest first, with their deliveries.
    pub fn list(&mut self, query: &Query) -> Result<Vec<StoredEvent>, OutboxError> {
        let kind = query.kind.map(|k| k.as_str().to_owned());
        let (since, limit) = (n(query.since_ms), i64::from(query.limit.max(1)));
        let (events, deliveries) = match &mut self.backend {
            Backend::Sqlite(db) => db.list(since, kind, limit)?,
            Backend::Postgres(db) => db.list(since, kind, limit)?,
        };
        Ok(events
            .into_iter()
            .map(|(id, time_ms, body)| StoredEvent {
                body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                time_ms: u(time_ms),
                deliveries: deliveries
                    .iter()
                    .filter(|d| d.0 == id)
                    .map(|d| d.1.clone())
                    .collect(),
            })
            .collect())
    }

    /// Deliveries still pending (every receiver).
    pub fn depth(&mut self) -> Result<u64, OutboxError> {
        match &mut self.backend {
            Backend::Sqlite(db) => db.depth(),
            Backend::Postgres(db) => db.depth(),
        }
        .map(u)
    }

    /// Gives up pending deliveries to receivers no longer configured, then
    /// deletes events older than `before_ms` with nothing pending, and the
    /// oldest beyond `max_stored`. Returns how many events were deleted.
    pub fn prune(
        &mut self,
        targets: &[String],
        before_ms: u64,
        max_stored: u64,
        now_ms: u64,
    ) -> Result<u64, OutboxError> {
        let (before, max, now) = (n(before_ms), n(max_stored), n(now_ms));
        match &mut self.backend {
            Backend::Sqlite(db) => db.prune(targets.to_vec(), before, max, now),
            Backend::Postgres(db) => db.prune(targets.to_vec(), before, max, now),
        }
        .map(u)
    }
}

/// What one attempt came to.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; try again then.
    Retry {
        /// ms since the epoch.
        next_at_ms: u64,
        /// What went wrong.
        error: &'a str,
    },
    /// It did not, and the event is older than `give_up_after`.
    GiveUp {
        /// What went wrong last.
        error: &'a str,
    },
}

/// One row for `put`: id, type, time, body, targets.
type PutRow = (String, &'static str, i64, String, Vec<String>);
/// One row for `record`: event id, target, state, next at, done at, error.
type RecordRow = (
    String,
    String,
    &'static str,
    i64,
    Option<i64>,
    Option<String>,
);
/// What `list` reads: events (id, time, body) and deliveries by event id.
type Listed = (Vec<(String, i64, String)>, Vec<(String, Delivery)>);
