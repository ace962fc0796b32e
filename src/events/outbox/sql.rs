//! The outbox's SQL, as both backends run it (`?N` is `$N` to PostgreSQL,
//! `BIGINT` an integer to SQLite), and a delivery row as both read it.

use super::{u, Delivery, DeliveryState};

/// The tables, in SQL both backends read (`BIGINT` is an integer to SQLite).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ms);
CREATE TABLE IF NOT EXISTS event_deliveries (
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL,
    claimed_until_ms BIGINT NOT NULL DEFAULT 0,
    done_at_ms BIGINT,
    last_error TEXT,
    PRIMARY KEY (event_id, target)
);
CREATE INDEX IF NOT EXISTS event_deliveries_due ON event_deliveries (state, target, next_at_ms);
";

/// Statements both backends run as written (`?N` is `$N` to PostgreSQL).
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO events (id, type, time_ms, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING";
pub(super) const INSERT_DELIVERY: &str =
    "INSERT INTO event_deliveries (event_id, target, state, attempts, next_at_ms)
     VALUES (?1, ?2, 'pending', 0, ?3) ON CONFLICT (event_id, target) DO NOTHING";
pub(super) const RECORD: &str = "UPDATE event_deliveries SET state = ?3, attempts = attempts + 1,
     next_at_ms = ?4, done_at_ms = ?5, last_error = ?6, claimed_until_ms = 0
     WHERE event_id = ?1 AND target = ?2";
pub(super) const LIST_EVENTS: &str = "SELECT id, time_ms, body FROM events
     WHERE time_ms >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR type = ?2)
     ORDER BY time_ms DESC, id LIMIT ?3";
pub(super) const LIST_DELIVERIES: &str =
    "SELECT d.event_id, d.target, d.state, d.attempts, d.next_at_ms, d.done_at_ms, d.last_error
     FROM event_deliveries d JOIN (SELECT id FROM events
         WHERE time_ms >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR type = ?2)
         ORDER BY time_ms DESC, id LIMIT ?3) e ON e.id = d.event_id
     ORDER BY d.target";
pub(super) const DEPTH: &str = "SELECT COUNT(*) FROM event_deliveries WHERE state = 'pending'";
pub(super) const PRUNE_OLD: &str = "DELETE FROM events WHERE time_ms < ?1 AND NOT EXISTS
     (SELECT 1 FROM event_deliveries d WHERE d.event_id = events.id AND d.state = 'pending')";
pub(super) const PRUNE_ORPHAN_DELIVERIES: &str =
    "DELETE FROM event_deliveries WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = event_id)";
pub(super) const ABANDON: &str = "UPDATE event_deliveries SET state = 'given_up', done_at_ms = ?2,
     last_error = 'its receiver is no longer configured' WHERE state = 'pending' AND target = ?1";
pub(super) const PENDING_TARGETS: &str =
    "SELECT DISTINCT target FROM event_deliveries WHERE state = 'pending'";

/// A delivery row as both backends read it.
pub(super) fn delivery(
    target: String,
    state: &str,
    attempts: i64,
    next_at: i64,
    done_at: Option<i64>,
    last_error: Option<String>,
) -> Delivery {
    Delivery {
        target,
        state: DeliveryState::named(state),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_at_ms: u(next_at),
        done_at_ms: done_at.map(u),
        last_error,
    }
}
