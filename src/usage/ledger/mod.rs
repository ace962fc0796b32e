//! The durable usage ledger at `[metering] db`: a SQLite file per replica,
//! or one PostgreSQL database for the whole fleet (docs/design.md §7, §10).
//! One row per client, provider, model and hour, added to by a background
//! task that drains the meter every `flush_interval` and once more at
//! shutdown; a failed write keeps the drained counts for the next try, so a
//! database that goes away and comes back loses nothing that was drained.
//!
//! Holds names, counts and hours only: never a key or a client key. A
//! PostgreSQL URL may carry a password: errors name the host only.
//!
//! This file is the front: it opens the backend `[metering] db` names,
//! passes each call to it, and runs the flush loop. Below it: `sqlite` and
//! `postgres` (the same table and upserts in each one's SQL), `usage_row`
//! (what a query answers) and `error`.

mod error;
mod key_usage;
mod postgres;
mod sqlite;
mod usage_row;

use std::sync::Arc;
use std::time::Duration;

use super::key_meter::{KeyDelta, KeyMeter, KeyUsageKey};
use super::meter::{Meter, UsageDelta, UsageKey};
use crate::config::LedgerDb;
use crate::shutdown::Shutdown;

pub use self::error::LedgerError;
pub use self::usage_row::{ClientSpend, KeyUsageRow, UsageRow};

/// An open ledger.
pub struct Ledger {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Postgres>),
}

impl Ledger {
    /// Opens (creating the file or the table) the ledger `db` names.
    pub fn open(db: &LedgerDb) -> Result<Ledger, LedgerError> {
        let backend = match db {
            LedgerDb::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::open(path)?),
            LedgerDb::Postgres { url, endpoint } => {
                Backend::Postgres(Box::new(postgres::Postgres::open(url, endpoint)?))
            }
        };
        Ok(Ledger { backend })
    }

    /// Adds drained counters to the hour `hour` (unix seconds / 3600), in
    /// one transaction, written at `now_ms`.
    pub fn add(
        &mut self,
        hour: u64,
        now_ms: u64,
        rows: &[(UsageKey, UsageDelta)],
    ) -> Result<(), LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.add(hour, now_ms, rows),
            Backend::Postgres(pg) => pg.add(hour, now_ms, rows),
        }
    }

    /// Adds drained per-key counters to the hour `hour`, in one transaction.
    pub fn add_keys(
        &mut self,
        hour: u64,
        rows: &[(KeyUsageKey, KeyDelta)],
    ) -> Result<(), LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.add_keys(hour, rows),
            Backend::Postgres(pg) => pg.add_keys(hour, rows),
        }
    }

    /// What keygate sent with each upstream key over the hours
    /// `[from_hour, to_hour)`.
    pub fn key_totals(
        &mut self,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<KeyUsageRow>, LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.key_totals(from_hour, to_hour),
            Backend::Postgres(pg) => pg.key_totals(from_hour, to_hour),
        }
    }

    /// All-time tokens (reported and estimated) and micro-dollars per
    /// client: lifetime budgets survive a restart, including what streams
    /// without usage were charged.
    pub fn client_totals(&mut self) -> Result<Vec<ClientSpend>, LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.client_totals(),
            Backend::Postgres(pg) => pg.client_totals(),
        }
    }

    /// Tokens and micro-dollars per client and hour since `since_hour`:
    /// budgets per period survive a restart.
    pub fn client_hours(&mut self, since_hour: u64) -> Result<Vec<ClientSpend>, LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.client_hours(since_hour),
            Backend::Postgres(pg) => pg.client_hours(since_hour),
        }
    }

    /// Totals per client, provider and model since `since` (unix seconds).
    pub fn totals(
        &mut self,
        client: Option<&str>,
        since: u64,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        match &mut self.backend {
            Backend::Sqlite(sqlite) => sqlite.totals(client, since),
            Backend::Postgres(pg) => pg.totals(client, since),
        }
    }
}

/// Drains `meter` and `keys` into `ledger` every `interval` until `stop`,
/// then once more. A failed write keeps the drained counts and retries them
/// next time.
pub async fn run(
    meter: Arc<Meter>,
    keys: Arc<KeyMeter>,
    mut ledger: Ledger,
    interval: Duration,
    mut stop: Shutdown,
) {
    let mut pending: Vec<(UsageKey, UsageDelta)> = Vec::new();
    let mut pending_keys: Vec<(KeyUsageKey, KeyDelta)> = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.requested() => true,
        };
        pending.extend(meter.drain());
        pending_keys.extend(keys.drain());
        let now_ms = crate::unix_now_ms();
        let hour = now_ms / 3_600_000;
        if !pending.is_empty() {
            let result = tokio::task::block_in_place(|| ledger.add(hour, now_ms, &pending));
            match result {
                Ok(()) => pending.clear(),
                Err(error) => tracing::warn!("usage ledger write failed, will retry: {error}"),
            }
        }
        if !pending_keys.is_empty() {
            let result = tokio::task::block_in_place(|| ledger.add_keys(hour, &pending_keys));
            match result {
                Ok(()) => pending_keys.clear(),
                Err(error) => {
                    tracing::warn!("usage ledger write (per key) failed, will retry: {error}")
                }
            }
        }
        if last {
            return;
        }
    }
}
