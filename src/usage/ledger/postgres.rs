//! The PostgreSQL backend, one database for the whole fleet: the same table
//! and upserts as SQLite, one transaction per flush, and a new connection
//! after any failure (a restarted server is simply reconnected to on the
//! next flush).

use super::error::LedgerError;
use super::usage_row::UsageRow;
use crate::usage::meter::{UsageDelta, UsageKey};
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

/// How long connecting may take, and how long sent data may go unacknowledged.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long one call (a flush, a query) may take before its connection is
/// given up.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Upserts `rows` into the hour `hour` in one transaction.
fn upsert(
    client: &mut postgres::Client,
    hour: u64,
    rows: &[(UsageKey, UsageDelta)],
) -> Result<(), postgres::Error> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
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
}

/// True for an error the database raised about a value (SQLSTATE class 22:
/// an invalid byte sequence, a number out of range), not about itself.
fn is_data_exception(error: &postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code().starts_with("22"))
}

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

/// The sync client runs a runtime of its own, which panics when dropped on
/// a thread that drives tokio tasks (on SIGTERM, or when `serve` refuses an
/// older vault before it runs): it is dropped on a thread of its own too.
impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
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
            let mut config: postgres::Config =
                self.url.expose().parse().map_err(|e| self.error(&e))?;
            // A database that does not answer is an error in seconds, not a
            // flush that waits for ever.
            config
                .connect_timeout(CONNECT_TIMEOUT)
                .keepalives_idle(std::time::Duration::from_secs(30))
                .tcp_user_timeout(CONNECT_TIMEOUT);
            let mut client = config
                .connect(postgres::NoTls)
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

    fn add_here(&mut self, hour: u64, rows: &[(UsageKey, UsageDelta)]) -> Result<(), LedgerError> {
        let batch = rows.to_vec();
        match self.call(move |client| upsert(client, hour, &batch))? {
            Ok(()) => Ok(()),
            // The database refused a value (SQLSTATE class 22, a data
            // exception): that row alone is dropped, named in the log, and
            // the others are written, each in its own transaction — one
            // request must never keep every client's usage out of the ledger.
            Err(error) if is_data_exception(&error) => {
                for row in rows {
                    let one = [row.clone()];
                    match self.call(move |client| upsert(client, hour, &one))? {
                        Ok(()) => {}
                        Err(error) if is_data_exception(&error) => tracing::warn!(
                            client = %row.0.client,
                            provider = %row.0.provider,
                            "usage ledger: PostgreSQL refused one row ({}); it is dropped, the others are kept",
                            error.as_db_error().map_or("", |db| db.code().code())
                        ),
                        Err(error) => return Err(self.error(&error)),
                    }
                }
                Ok(())
            }
            Err(error) => Err(self.error(&error)),
        }
    }

    /// Runs `work` with the connection on a thread of its own and waits at
    /// most [`CALL_TIMEOUT`]: a database that accepted the connection and
    /// then went silent (a frozen host) costs one abandoned thread and
    /// connection, not the ledger writer. The next call connects again.
    fn call<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<Result<T, postgres::Error>, LedgerError> {
        self.client()?;
        let Some(mut client) = self.client.take() else {
            return Err(self.not_connected());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = work(&mut client);
            // The client goes back with the answer; when nobody waits any
            // more, it is dropped here, off every runtime.
            let _ = tx.send((result, client));
        });
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok((result, client)) => {
                self.client = Some(client);
                Ok(result)
            }
            Err(_) => Err(LedgerError::Postgres {
                endpoint: self.endpoint.clone(),
                detail: format!(
                    "no answer within {CALL_TIMEOUT:?}; the connection is given up and the next flush opens a new one"
                ),
            }),
        }
    }

    fn not_connected(&self) -> LedgerError {
        LedgerError::Postgres {
            endpoint: self.endpoint.clone(),
            detail: "not connected".to_owned(),
        }
    }

    pub(super) fn client_totals(&mut self) -> Result<Vec<(String, u64)>, LedgerError> {
        off_runtime(|| self.client_totals_here())
    }

    fn client_totals_here(&mut self) -> Result<Vec<(String, u64)>, LedgerError> {
        let rows = self.call(|client| {
            let rows = client.query(
                "SELECT client, (SUM(total_tokens) + SUM(estimated_tokens))::BIGINT FROM usage GROUP BY client",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    )
                })
                .collect())
        })?;
        rows.map_err(|e| self.error(&e))
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
        let only: Option<String> = client.map(str::to_owned);
        let rows = self.call(move |db| {
            let rows = db.query(
                "SELECT client, provider, model, SUM(requests)::BIGINT, SUM(errors)::BIGINT,
                        SUM(prompt_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
                        SUM(total_tokens)::BIGINT, SUM(estimated)::BIGINT,
                        SUM(estimated_tokens)::BIGINT
                 FROM usage WHERE hour >= $1 AND ($2::TEXT IS NULL OR client = $2)
                 GROUP BY client, provider, model ORDER BY client, provider, model",
                &[&hour, &only],
            )?;
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
        })?;
        rows.map_err(|e| self.error(&e))
    }
}
