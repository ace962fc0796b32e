//! The SQLite backend: a file per replica, in WAL mode, with the columns
//! added since the first release added to older files on open; one
//! transaction per flush.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::error::LedgerError;
use super::usage_row::{ClientSpend, KeyUsageRow, UsageRow};
use crate::usage::key_meter::{KeyDelta, KeyUsageKey};
use crate::usage::meter::{UsageDelta, UsageKey};

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
    cost_micros INTEGER NOT NULL DEFAULT 0,
    unpriced INTEGER NOT NULL DEFAULT 0,
    last_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, client, provider, model)
);";

/// Columns added after the first release, for ledgers created before them.
const ADDED_COLUMNS: [&str; 5] = [
    "estimated INTEGER NOT NULL DEFAULT 0",
    "estimated_tokens INTEGER NOT NULL DEFAULT 0",
    "cost_micros INTEGER NOT NULL DEFAULT 0",
    "unpriced INTEGER NOT NULL DEFAULT 0",
    "last_ms INTEGER NOT NULL DEFAULT 0",
];

/// An open SQLite ledger.
pub(super) struct Sqlite {
    conn: Connection,
    /// The file, as errors name it.
    path: String,
}

impl Sqlite {
    /// Opens `path`, creating its directory, the file and the table, and
    /// adding the columns an older file lacks.
    pub(super) fn open(path: &Path) -> Result<Sqlite, LedgerError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::file_owner::create_dirs(dir, 0o777).map_err(|source| LedgerError::Io {
                path: name.clone(),
                source,
            })?;
        }
        let sqlite = |source| LedgerError::Sqlite {
            path: name.clone(),
            source,
        };
        let created = !path.exists();
        let conn = Connection::open(path).map_err(sqlite)?;
        // Before the first write: SQLite gives its -wal and -shm files the
        // main file's owner when run as root, so a root CLI command leaves
        // files the service can open.
        if created {
            crate::file_owner::adopt_new(path).map_err(|source| LedgerError::Io {
                path: name.clone(),
                source,
            })?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        conn.execute_batch(super::key_usage::SCHEMA)
            .map_err(sqlite)?;
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
        Ok(Sqlite { conn, path: name })
    }

    /// Adds drained counters to the hour `hour` (unix seconds / 3600), in one transaction.
    pub(super) fn add(
        &mut self,
        hour: u64,
        now_ms: u64,
        rows: &[(UsageKey, UsageDelta)],
    ) -> Result<(), LedgerError> {
        let tx = self.conn.transaction().map_err(|e| LedgerError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage (hour, client, provider, model, requests, errors, incomplete,
                        prompt_tokens, completion_tokens, total_tokens, request_bytes, response_bytes,
                        estimated, estimated_tokens, cost_micros, unpriced, last_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
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
                        estimated_tokens = estimated_tokens + excluded.estimated_tokens,
                        cost_micros = cost_micros + excluded.cost_micros,
                        unpriced = unpriced + excluded.unpriced,
                        last_ms = MAX(last_ms, excluded.last_ms)",
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
                    n(d.cost_micros),
                    n(d.unpriced),
                    n(now_ms),
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

    /// Adds drained per-key counters to the hour `hour`, in one transaction.
    pub(super) fn add_keys(
        &mut self,
        hour: u64,
        rows: &[(KeyUsageKey, KeyDelta)],
    ) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(super::key_usage::UPSERT)?;
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                for (key, d) in rows {
                    stmt.execute(params![
                        n(hour),
                        &*key.provider,
                        &*key.key_id,
                        n(d.requests),
                        n(d.input_tokens),
                        n(d.cached_tokens),
                        n(d.output_tokens),
                        n(d.cost_micros),
                    ])?;
                }
            }
            tx.commit()
        })();
        result.map_err(|e| sqlite_error(&path, e))
    }

    /// Per-key totals over the hours `[from_hour, to_hour)`.
    pub(super) fn key_totals(
        &mut self,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<KeyUsageRow>, LedgerError> {
        let path = self.path.clone();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare(super::key_usage::TOTALS)
            .map_err(|e| sqlite_error(&path, e))?;
        let rows = stmt
            .query_map(params![n(from_hour), n(to_hour)], |row| {
                let v = |i| row.get::<_, i64>(i);
                Ok(super::key_usage::row(
                    [v(2)?, v(3)?, v(4)?, v(5)?, v(6)?],
                    row.get(0)?,
                    row.get(1)?,
                ))
            })
            .map_err(|e| sqlite_error(&path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite_error(&path, e))
    }

    /// All-time tokens (reported and estimated) and micro-dollars per client.
    pub(super) fn client_totals(&mut self) -> Result<Vec<ClientSpend>, LedgerError> {
        self.spend(
            "SELECT client, 0, SUM(total_tokens) + SUM(estimated_tokens), SUM(cost_micros), MAX(last_ms)
             FROM usage WHERE ?1 = ?1 GROUP BY client",
            0,
        )
    }

    /// Tokens and micro-dollars per client and hour since `since_hour`.
    pub(super) fn client_hours(
        &mut self,
        since_hour: u64,
    ) -> Result<Vec<ClientSpend>, LedgerError> {
        self.spend(
            "SELECT client, hour, SUM(total_tokens) + SUM(estimated_tokens), SUM(cost_micros), MAX(last_ms)
             FROM usage WHERE hour >= ?1 GROUP BY client, hour",
            since_hour,
        )
    }

    fn spend(&mut self, query: &str, since_hour: u64) -> Result<Vec<ClientSpend>, LedgerError> {
        let path = self.path.clone();
        let mut stmt = self
            .conn
            .prepare(query)
            .map_err(|e| sqlite_error(&path, e))?;
        let since = i64::try_from(since_hour).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![since], |row| {
                Ok(ClientSpend {
                    client: row.get(0)?,
                    hour: count(row, 1)?,
                    tokens: count(row, 2)?,
                    micros: count(row, 3)?,
                    last_ms: count(row, 4)?,
                })
            })
            .map_err(|e| sqlite_error(&path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite_error(&path, e))
    }

    /// Totals per client, provider and model since `since` (unix seconds).
    pub(super) fn totals(
        &mut self,
        client: Option<&str>,
        since: u64,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let path = self.path.clone();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT client, provider, model, SUM(requests), SUM(errors), SUM(prompt_tokens),
                        SUM(completion_tokens), SUM(total_tokens), SUM(estimated),
                        SUM(estimated_tokens), SUM(cost_micros), SUM(unpriced)
                 FROM usage WHERE hour >= ?1 AND (?2 IS NULL OR client = ?2)
                 GROUP BY client, provider, model ORDER BY client, provider, model",
            )
            .map_err(|e| sqlite_error(&path, e))?;
        let hour = i64::try_from(since / 3600).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![hour, client], |row| {
                let n = |i| count(row, i);
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
                    unpriced_requests: n(11)?,
                    ..UsageRow::default()
                }
                .with_cost(n(10)?))
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

/// A summed count as a number of tokens or requests: SQLite turns an
/// integer sum that overflows into a REAL (an older build let an upstream's
/// absurd count through), so a REAL is read too, saturating; NULL is 0.
fn count(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<u64> {
    Ok(match row.get::<_, rusqlite::types::Value>(index)? {
        rusqlite::types::Value::Integer(n) => u64::try_from(n).unwrap_or(0),
        // `as` saturates: NaN is 0, anything past u64::MAX is u64::MAX.
        rusqlite::types::Value::Real(x) => x as u64,
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_from_the_first_release_gains_the_new_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE usage (hour INTEGER NOT NULL, client TEXT NOT NULL,
                    provider TEXT NOT NULL, model TEXT NOT NULL,
                    requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
                    incomplete INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
                    completion_tokens INTEGER NOT NULL DEFAULT 0, total_tokens INTEGER NOT NULL DEFAULT 0,
                    request_bytes INTEGER NOT NULL DEFAULT 0, response_bytes INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (hour, client, provider, model));
                 INSERT INTO usage (hour, client, provider, model, requests, total_tokens)
                    VALUES (1, 'app', 'openai', 'gpt-4o', 2, 30);",
            )
            .unwrap();
        }
        let mut ledger = Sqlite::open(&path).unwrap();
        let key = UsageKey {
            client: "app".into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
        };
        let delta = UsageDelta {
            requests: 1,
            total_tokens: 10,
            cost_micros: 1234,
            unpriced: 0,
            ..UsageDelta::default()
        };
        ledger.add(1, 3_600_500, &[(key, delta)]).unwrap();
        let rows = ledger.totals(None, 0).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].total_tokens), (3, 40));
        assert_eq!((rows[0].cost_micros, rows[0].cost_usd), (1234, 0.001234));
    }
}
