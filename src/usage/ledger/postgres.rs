//! The PostgreSQL backend, one database for the whole fleet: the same table
//! and upserts as SQLite, one transaction per flush, through a [`PgLink`]
//! (a new connection after any failure, every call bounded in time).

use super::error::LedgerError;
use super::usage_row::{ClientSpend, KeyUsageRow, UsageRow};
use crate::pg_link::{PgError, PgLink};
use crate::usage::key_meter::{KeyDelta, KeyUsageKey};
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
);
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cost_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS unpriced BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS last_ms BIGINT NOT NULL DEFAULT 0";

const UPSERT: &str = "INSERT INTO usage (hour, client, provider, model, requests, errors,
        incomplete, prompt_tokens, completion_tokens, total_tokens, request_bytes,
        response_bytes, estimated, estimated_tokens, cost_micros, unpriced, last_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
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
        estimated_tokens = usage.estimated_tokens + excluded.estimated_tokens,
        cost_micros = usage.cost_micros + excluded.cost_micros,
        unpriced = usage.unpriced + excluded.unpriced,
        last_ms = GREATEST(usage.last_ms, excluded.last_ms)";

/// Upserts `rows` into the hour `hour` in one transaction.
fn upsert(
    client: &mut postgres::Client,
    hour: u64,
    now_ms: u64,
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
                &n(d.cost_micros),
                &n(d.unpriced),
                &n(now_ms),
            ],
        )?;
    }
    tx.commit()
}

pub(super) struct Postgres {
    link: PgLink,
}

impl Postgres {
    pub(super) fn open(url: &Secret, endpoint: &str) -> Result<Postgres, LedgerError> {
        let error = |e: PgError| LedgerError::Postgres {
            endpoint: endpoint.to_owned(),
            detail: e.detail,
        };
        let mut link = PgLink::open(url, endpoint, SCHEMA).map_err(error)?;
        link.call(|client| client.batch_execute(super::key_usage::SCHEMA))
            .map_err(error)?;
        Ok(Postgres { link })
    }

    fn error(&self, error: PgError) -> LedgerError {
        LedgerError::Postgres {
            endpoint: self.link.endpoint.clone(),
            detail: error.detail,
        }
    }

    pub(super) fn add(
        &mut self,
        hour: u64,
        now_ms: u64,
        rows: &[(UsageKey, UsageDelta)],
    ) -> Result<(), LedgerError> {
        let batch = rows.to_vec();
        match self
            .link
            .call(move |client| upsert(client, hour, now_ms, &batch))
        {
            Ok(()) => Ok(()),
            // The database refused a value (SQLSTATE class 22, a data
            // exception): that row alone is dropped, named in the log, and
            // the others are written, each in its own transaction — one
            // request must never keep every client's usage out of the ledger.
            Err(error) if error.is_data_exception() => {
                for row in rows {
                    let one = [row.clone()];
                    match self
                        .link
                        .call(move |client| upsert(client, hour, now_ms, &one))
                    {
                        Ok(()) => {}
                        Err(error) if error.is_data_exception() => tracing::warn!(
                            client = %row.0.client,
                            provider = %row.0.provider,
                            "usage ledger: PostgreSQL refused one row ({}); it is dropped, the others are kept",
                            error.code.as_deref().unwrap_or_default()
                        ),
                        Err(error) => return Err(self.error(error)),
                    }
                }
                Ok(())
            }
            Err(error) => Err(self.error(error)),
        }
    }

    pub(super) fn add_keys(
        &mut self,
        hour: u64,
        rows: &[(KeyUsageKey, KeyDelta)],
    ) -> Result<(), LedgerError> {
        let batch = rows.to_vec();
        let result = self.link.call(move |client| {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let mut tx = client.transaction()?;
            let statement = tx.prepare(&super::key_usage::UPSERT.replace('?', "$"))?;
            for (key, d) in &batch {
                tx.execute(
                    &statement,
                    &[
                        &n(hour),
                        &&*key.provider,
                        &&*key.key_id,
                        &n(d.requests),
                        &n(d.input_tokens),
                        &n(d.cached_tokens),
                        &n(d.output_tokens),
                        &n(d.cost_micros),
                    ],
                )?;
            }
            tx.commit()
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn key_totals(
        &mut self,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<KeyUsageRow>, LedgerError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (from, to) = (n(from_hour), n(to_hour));
        let result = self.link.call(move |client| {
            let rows = client.query(&super::key_usage::TOTALS.replace('?', "$"), &[&from, &to])?;
            Ok(rows
                .iter()
                .map(|r| {
                    super::key_usage::row(
                        [r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)],
                        r.get(0),
                        r.get(1),
                    )
                })
                .collect())
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn client_totals(&mut self) -> Result<Vec<ClientSpend>, LedgerError> {
        self.spend(
            "SELECT client, 0::BIGINT, (SUM(total_tokens) + SUM(estimated_tokens))::BIGINT,
                    SUM(cost_micros)::BIGINT, MAX(last_ms)::BIGINT
             FROM usage WHERE $1::BIGINT = $1 GROUP BY client",
            0,
        )
    }

    pub(super) fn client_hours(
        &mut self,
        since_hour: u64,
    ) -> Result<Vec<ClientSpend>, LedgerError> {
        self.spend(
            "SELECT client, hour, (SUM(total_tokens) + SUM(estimated_tokens))::BIGINT,
                    SUM(cost_micros)::BIGINT, MAX(last_ms)::BIGINT
             FROM usage WHERE hour >= $1 GROUP BY client, hour",
            since_hour,
        )
    }

    fn spend(
        &mut self,
        query: &'static str,
        since_hour: u64,
    ) -> Result<Vec<ClientSpend>, LedgerError> {
        let since = i64::try_from(since_hour).unwrap_or(i64::MAX);
        let rows = self.link.call(move |client| {
            let rows = client.query(query, &[&since])?;
            let n = |r: &postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
            Ok(rows
                .iter()
                .map(|r| ClientSpend {
                    client: r.get(0),
                    hour: n(r, 1),
                    tokens: n(r, 2),
                    micros: n(r, 3),
                    last_ms: n(r, 4),
                })
                .collect())
        });
        rows.map_err(|e| self.error(e))
    }

    pub(super) fn totals(
        &mut self,
        client: Option<&str>,
        since: u64,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let hour = i64::try_from(since / 3600).unwrap_or(i64::MAX);
        let only: Option<String> = client.map(str::to_owned);
        let rows = self.link.call(move |db| {
            let rows = db.query(
                "SELECT client, provider, model, SUM(requests)::BIGINT, SUM(errors)::BIGINT,
                        SUM(prompt_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
                        SUM(total_tokens)::BIGINT, SUM(estimated)::BIGINT,
                        SUM(estimated_tokens)::BIGINT, SUM(cost_micros)::BIGINT,
                        SUM(unpriced)::BIGINT
                 FROM usage WHERE hour >= $1 AND ($2::TEXT IS NULL OR client = $2)
                 GROUP BY client, provider, model ORDER BY client, provider, model",
                &[&hour, &only],
            )?;
            let n = |r: &postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
            Ok(rows
                .iter()
                .map(|r| {
                    UsageRow {
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
                        unpriced_requests: n(r, 11),
                        ..UsageRow::default()
                    }
                    .with_cost(n(r, 10))
                })
                .collect())
        });
        rows.map_err(|e| self.error(e))
    }
}
