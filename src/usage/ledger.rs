//! The durable usage ledger at `[metering] db`: a SQLite file per replica,
//! or one PostgreSQL database for the whole fleet (docs/design.md §7, §10).
//! One row per client, provider, model and hour, added to by a background
//! task that drains the meter every `flush_interval` and once more at
//! shutdown; a failed write keeps the drained counts for the next try, so a
//! database that goes away and comes back loses nothing that was drained.
//!
//! Holds names, counts and hours only: never a key or a client key. A
//! PostgreSQL URL may carry a password: errors name the host only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::meter::{Meter, UsageDelta, UsageKey};
use crate::config::LedgerDb;
use crate::shutdown::Shutdown;

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("usage ledger {path}: {source}; check the path ([metering] db) and that keygate may write there")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed.
    #[error("usage ledger {endpoint}: {detail}; check [metering] db and that the database accepts this user")]
    Postgres {
        /// `postgres://HOST:PORT/DB`, never the password.
        endpoint: String,
        /// What the server or the connection said.
        detail: String,
    },
    /// The directory could not be created.
    #[error("usage ledger {path}: cannot create its directory: {source}")]
    Io {
        /// The database file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Totals of one client, provider and model over a period.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageRow {
    /// Client name.
    pub client: String,
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Errors (status ≥ 400 or cut short).
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens, as the upstream reported them.
    pub total_tokens: u64,
    /// Answers that reported no usage and were charged by estimate.
    pub estimated_requests: u64,
    /// Tokens charged by estimate (not in the counts above; a budget counts both).
    pub estimated_tokens: u64,
}

/// An open ledger.
pub struct Ledger {
    backend: Backend,
    path: String,
}

enum Backend {
    Sqlite(Connection),
    Postgres(Box<postgres_ledger::Postgres>),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,
    client TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    incomplete INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    request_bytes INTEGER NOT NULL DEFAULT 0,
    response_bytes INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    estimated_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, client, provider, model)
);";

/// Columns added after the first release, for ledgers created before them.
const ADDED_COLUMNS: [&str; 2] = [
    "estimated INTEGER NOT NULL DEFAULT 0",
    "estimated_tokens INTEGER NOT NULL DEFAULT 0",
];

impl Ledger {
    /// Opens (creating the file or the table) the ledger `db` names.
    pub fn open(db: &LedgerDb) -> Result<Ledger, LedgerError> {
        match db {
            LedgerDb::Sqlite(path) => Ledger::open_sqlite(path),
            LedgerDb::Postgres { url, endpoint } => Ok(Ledger {
                backend: Backend::Postgres(Box::new(postgres_ledger::Postgres::open(
                    url, endpoint,
                )?)),
                path: endpoint.clone(),
            }),
        }
    }

    fn open_sqlite(path: &Path) -> Result<Ledger, LedgerError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: name.clone(),
                source,
            })?;
        }
        let sqlite = |source| LedgerError::Sqlite {
            path: name.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        let existing = {
            let mut stmt = conn
                .prepare("SELECT name FROM pragma_table_info('usage')")
                .map_err(sqlite)?;
            let names = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sqlite)?;
            names.collect::<Result<Vec<_>, _>>().map_err(sqlite)?
        };
        for column in ADDED_COLUMNS {
            let name = column.split(' ').next().unwrap_or(column);
            if !existing.iter().any(|e| e == name) {
                conn.execute_batch(&format!("ALTER TABLE usage ADD COLUMN {column}"))
                    .map_err(sqlite)?;
            }
        }
        Ok(Ledger {
            backend: Backend::Sqlite(conn),
            path: name,
        })
    }

    /// Adds drained counters to the hour `hour` (unix seconds / 3600), in one transaction.
    pub fn add(&mut self, hour: u64, rows: &[(UsageKey, UsageDelta)]) -> Result<(), LedgerError> {
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => return pg.add(hour, rows),
        };
        let tx = conn.transaction().map_err(|e| LedgerError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage (hour, client, provider, model, requests, errors, incomplete,
                        prompt_tokens, completion_tokens, total_tokens, request_bytes, response_bytes,
                        estimated, estimated_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (hour, client, provider, model) DO UPDATE SET
                        requests = requests + excluded.requests,
                        errors = errors + excluded.errors,
                        incomplete = incomplete + excluded.incomplete,
                        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                        completion_tokens = completion_tokens + excluded.completion_tokens,
                        total_tokens = total_tokens + excluded.total_tokens,
                        request_bytes = request_bytes + excluded.request_bytes,
                        response_bytes = response_bytes + excluded.response_bytes,
                        estimated = estimated + excluded.estimated,
                        estimated_tokens = estimated_tokens + excluded.estimated_tokens",
                )
                .map_err(|e| LedgerError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            for (key, d) in rows {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                stmt.execute(params![
                    n(hour),
                    &*key.client,
                    &*key.provider,
                    &*key.model,
                    n(d.requests),
                    n(d.errors),
                    n(d.incomplete),
                    n(d.prompt_tokens),
                    n(d.completion_tokens),
                    n(d.total_tokens),
                    n(d.request_bytes),
                    n(d.response_bytes),
                    n(d.estimated),
                    n(d.estimated_tokens),
                ])
                .map_err(|e| LedgerError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            }
        }
        tx.commit().map_err(|e| LedgerError::Sqlite {
            path: self.path.clone(),
            source: e,
        })
    }

    /// All-time tokens per client, reported and estimated (budgets survive a
    /// restart, including what streams without usage were charged).
    pub fn client_totals(&mut self) -> Result<Vec<(String, u64)>, LedgerError> {
        let path = self.path.clone();
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => &*conn,
            Backend::Postgres(pg) => return pg.client_totals(),
        };
        let mut stmt = conn
            .prepare(
                "SELECT client, SUM(total_tokens) + SUM(estimated_tokens) FROM usage GROUP BY client",
            )
            .map_err(|e| sqlite_error(&path, e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })
            .map_err(|e| sqlite_error(&path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite_error(&path, e))
    }

    /// Totals per client, provider and model since `since` (unix seconds).
    pub fn totals(
        &mut self,
        client: Option<&str>,
        since: u64,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let path = self.path.clone();
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => &*conn,
            Backend::Postgres(pg) => return pg.totals(client, since),
        };
        let mut stmt = conn
            .prepare(
                "SELECT client, provider, model, SUM(requests), SUM(errors), SUM(prompt_tokens),
                        SUM(completion_tokens), SUM(total_tokens), SUM(estimated),
                        SUM(estimated_tokens)
                 FROM usage WHERE hour >= ?1 AND (?2 IS NULL OR client = ?2)
                 GROUP BY client, provider, model ORDER BY client, provider, model",
            )
            .map_err(|e| sqlite_error(&path, e))?;
        let hour = i64::try_from(since / 3600).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![hour, client], |row| {
                let n = |i| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                Ok(UsageRow {
                    client: row.get(0)?,
                    provider: row.get(1)?,
                    model: row.get(2)?,
                    requests: n(3)?,
                    errors: n(4)?,
                    prompt_tokens: n(5)?,
                    completion_tokens: n(6)?,
                    total_tokens: n(7)?,
                    estimated_requests: n(8)?,
                    estimated_tokens: n(9)?,
                })
            })
            .map_err(|e| sqlite_error(&path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite_error(&path, e))
    }
}

fn sqlite_error(path: &str, source: rusqlite::Error) -> LedgerError {
    LedgerError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Drains `meter` into `ledger` every `interval` until `stop`, then once more.
/// A failed write keeps the drained counts and retries them next time.
pub async fn run(meter: Arc<Meter>, mut ledger: Ledger, interval: Duration, mut stop: Shutdown) {
    let mut pending: Vec<(UsageKey, UsageDelta)> = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.requested() => true,
        };
        pending.extend(meter.drain());
        if !pending.is_empty() {
            let hour = crate::unix_now() / 3600;
            let result = tokio::task::block_in_place(|| ledger.add(hour, &pending));
            match result {
                Ok(()) => pending.clear(),
                Err(error) => tracing::warn!("usage ledger write failed, will retry: {error}"),
            }
        }
        if last {
            return;
        }
    }
}

mod postgres_ledger {
    //! The PostgreSQL backend: the same table and upserts as SQLite, one
    //! transaction per flush, and a new connection after any failure (a
    //! restarted server is simply reconnected to on the next flush).

    use super::{LedgerError, UsageDelta, UsageKey, UsageRow};
    use crate::vault::secret::Secret;

    const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS usage (
        hour BIGINT NOT NULL,
        client TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests BIGINT NOT NULL DEFAULT 0,
        errors BIGINT NOT NULL DEFAULT 0,
        incomplete BIGINT NOT NULL DEFAULT 0,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0,
        total_tokens BIGINT NOT NULL DEFAULT 0,
        request_bytes BIGINT NOT NULL DEFAULT 0,
        response_bytes BIGINT NOT NULL DEFAULT 0,
        estimated BIGINT NOT NULL DEFAULT 0,
        estimated_tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (hour, client, provider, model)
    )";

    const UPSERT: &str = "INSERT INTO usage (hour, client, provider, model, requests, errors,
            incomplete, prompt_tokens, completion_tokens, total_tokens, request_bytes,
            response_bytes, estimated, estimated_tokens)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (hour, client, provider, model) DO UPDATE SET
            requests = usage.requests + excluded.requests,
            errors = usage.errors + excluded.errors,
            incomplete = usage.incomplete + excluded.incomplete,
            prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = usage.completion_tokens + excluded.completion_tokens,
            total_tokens = usage.total_tokens + excluded.total_tokens,
            request_bytes = usage.request_bytes + excluded.request_bytes,
            response_bytes = usage.response_bytes + excluded.response_bytes,
            estimated = usage.estimated + excluded.estimated,
            estimated_tokens = usage.estimated_tokens + excluded.estimated_tokens";

    /// Runs `work` on a thread of its own: the sync client runs a runtime of
    /// its own, which may not start on a thread that drives tokio tasks.
    fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| match scope.spawn(work).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    pub(super) struct Postgres {
        url: Secret,
        endpoint: String,
        client: Option<postgres::Client>,
    }

    impl Postgres {
        pub(super) fn open(url: &Secret, endpoint: &str) -> Result<Postgres, LedgerError> {
            let mut pg = Postgres {
                url: url.clone(),
                endpoint: endpoint.to_owned(),
                client: None,
            };
            off_runtime(|| pg.client().map(|_| ()))?;
            Ok(pg)
        }

        fn error(&mut self, error: &postgres::Error) -> LedgerError {
            // The next call connects again.
            self.client = None;
            let detail = match error.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => error.to_string(),
            };
            LedgerError::Postgres {
                endpoint: self.endpoint.clone(),
                detail,
            }
        }

        fn client(&mut self) -> Result<&mut postgres::Client, LedgerError> {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                let mut client = postgres::Client::connect(self.url.expose(), postgres::NoTls)
                    .map_err(|e| self.error(&e))?;
                // Replicas starting together may race to create the table: once more.
                if client.batch_execute(SCHEMA).is_err() {
                    client.batch_execute(SCHEMA).map_err(|e| self.error(&e))?;
                }
                self.client = Some(client);
            }
            self.client.as_mut().ok_or_else(|| LedgerError::Postgres {
                endpoint: self.endpoint.clone(),
                detail: "not connected".to_owned(),
            })
        }

        pub(super) fn add(
            &mut self,
            hour: u64,
            rows: &[(UsageKey, UsageDelta)],
        ) -> Result<(), LedgerError> {
            off_runtime(|| self.add_here(hour, rows))
        }

        fn add_here(
            &mut self,
            hour: u64,
            rows: &[(UsageKey, UsageDelta)],
        ) -> Result<(), LedgerError> {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let result = (|| {
                let client = self.client()?;
                let written = (|| {
                    let mut tx = client.transaction()?;
                    let statement = tx.prepare(UPSERT)?;
                    for (key, d) in rows {
                        tx.execute(
                            &statement,
                            &[
                                &n(hour),
                                &&*key.client,
                                &&*key.provider,
                                &&*key.model,
                                &n(d.requests),
                                &n(d.errors),
                                &n(d.incomplete),
                                &n(d.prompt_tokens),
                                &n(d.completion_tokens),
                                &n(d.total_tokens),
                                &n(d.request_bytes),
                                &n(d.response_bytes),
                                &n(d.estimated),
                                &n(d.estimated_tokens),
                            ],
                        )?;
                    }
                    tx.commit()
                })();
                Ok::<_, LedgerError>(written)
            })()?;
            result.map_err(|e| self.error(&e))
        }

        pub(super) fn client_totals(&mut self) -> Result<Vec<(String, u64)>, LedgerError> {
            off_runtime(|| self.client_totals_here())
        }

        fn client_totals_here(&mut self) -> Result<Vec<(String, u64)>, LedgerError> {
            let rows = self.client()?.query(
                "SELECT client, (SUM(total_tokens) + SUM(estimated_tokens))::BIGINT FROM usage GROUP BY client",
                &[],
            );
            let rows = rows.map_err(|e| self.error(&e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    )
                })
                .collect())
        }

        pub(super) fn totals(
            &mut self,
            client: Option<&str>,
            since: u64,
        ) -> Result<Vec<UsageRow>, LedgerError> {
            off_runtime(|| self.totals_here(client, since))
        }

        fn totals_here(
            &mut self,
            client: Option<&str>,
            since: u64,
        ) -> Result<Vec<UsageRow>, LedgerError> {
            let hour = i64::try_from(since / 3600).unwrap_or(i64::MAX);
            let rows = self.client()?.query(
                "SELECT client, provider, model, SUM(requests)::BIGINT, SUM(errors)::BIGINT,
                        SUM(prompt_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
                        SUM(total_tokens)::BIGINT, SUM(estimated)::BIGINT,
                        SUM(estimated_tokens)::BIGINT
                 FROM usage WHERE hour >= $1 AND ($2::TEXT IS NULL OR client = $2)
                 GROUP BY client, provider, model ORDER BY client, provider, model",
                &[&hour, &client],
            );
            let rows = rows.map_err(|e| self.error(&e))?;
            let n = |r: &postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
            Ok(rows
                .iter()
                .map(|r| UsageRow {
                    client: r.get(0),
                    provider: r.get(1),
                    model: r.get(2),
                    requests: n(r, 3),
                    errors: n(r, 4),
                    prompt_tokens: n(r, 5),
                    completion_tokens: n(r, 6),
                    total_tokens: n(r, 7),
                    estimated_requests: n(r, 8),
                    estimated_tokens: n(r, 9),
                })
                .collect())
        }
    }
}
