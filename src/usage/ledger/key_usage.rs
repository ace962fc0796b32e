//! The `key_usage` table: per upstream key and hour, what keygate sent with
//! it (docs/design.md §16) — the same SQL in both backends (`?N` is `$N` to
//! PostgreSQL, `BIGINT` an integer to SQLite).

use super::usage_row::KeyUsageRow;

/// The table and its index.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_usage (
    hour BIGINT NOT NULL,
    provider TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, provider, key_id)
);";

/// Adds one key's drained counters to an hour.
pub(super) const UPSERT: &str = "INSERT INTO key_usage (hour, provider, key_id, requests,
        input_tokens, cached_tokens, output_tokens, cost_micros)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (hour, provider, key_id) DO UPDATE SET
        requests = key_usage.requests + excluded.requests,
        input_tokens = key_usage.input_tokens + excluded.input_tokens,
        cached_tokens = key_usage.cached_tokens + excluded.cached_tokens,
        output_tokens = key_usage.output_tokens + excluded.output_tokens,
        cost_micros = key_usage.cost_micros + excluded.cost_micros";

/// Totals per key since an hour (and, optionally, before one).
pub(super) const TOTALS: &str = "SELECT provider, key_id, CAST(SUM(requests) AS BIGINT),
        CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(cached_tokens) AS BIGINT),
        CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT)
     FROM key_usage WHERE hour >= ?1 AND hour < ?2
     GROUP BY provider, key_id ORDER BY provider, key_id";

/// A row of [`TOTALS`] from its seven columns.
pub(super) fn row(values: [i64; 5], provider: String, key_id: String) -> KeyUsageRow {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    KeyUsageRow {
        provider,
        key_id,
        requests: n(values[0]),
        input_tokens: n(values[1]),
        cached_tokens: n(values[2]),
        output_tokens: n(values[3]),
        cost_micros: n(values[4]),
    }
}
