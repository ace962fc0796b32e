//! `keygate usage [--client NAME] [--since 7d] [--json]`: totals from the ledger.

use clap::Args;

use super::{CliError, Context};
use crate::usage::ledger::{Ledger, UsageRow};

/// Usage report options.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this client.
    #[arg(long)]
    client: Option<String>,
    /// How far back (humantime: 1h, 7d, 30d).
    #[arg(long, default_value = "7d", value_parser = crate::cli::duration_arg)]
    since: std::time::Duration,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Per upstream key instead: what keygate sent with each (answers,
    /// input, cached input and output tokens, cost).
    #[arg(long, conflicts_with = "client")]
    by_key: bool,
}

/// Reads totals per client, provider and model since `since` ago.
pub fn totals(
    context: &Context,
    client: Option<&str>,
    since: std::time::Duration,
) -> Result<Vec<UsageRow>, CliError> {
    let mut ledger =
        Ledger::open(&context.config.metering.db).map_err(|e| CliError::Runtime(e.to_string()))?;
    let from = crate::unix_now().saturating_sub(since.as_secs());
    ledger
        .totals(client, from)
        .map_err(|e| CliError::Runtime(e.to_string()))
}

pub(super) fn run(context: &Context, args: UsageArgs) -> Result<(), CliError> {
    if args.by_key {
        return by_key(context, args.since, args.json);
    }
    let rows = totals(context, args.client.as_deref(), args.since)?;
    if args.json {
        let text = serde_json::to_string(&rows).map_err(|e| CliError::Runtime(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    say!(
        "{:<20} {:<10} {:<28} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "CLIENT",
        "PROVIDER",
        "MODEL",
        "REQUESTS",
        "ERRORS",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "ESTIMATED",
        "COST"
    );
    for r in &rows {
        say!(
            "{:<20} {:<10} {:<28} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>12}",
            r.client,
            r.provider,
            r.model,
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            estimated(r),
            cost(r)
        );
    }
    if rows.is_empty() {
        say!("(no usage recorded in this period)");
        return Ok(());
    }
    let total: u64 = rows.iter().map(|r| r.cost_micros).sum();
    say!("{:>140}", format!("total ${}", dollars(total)));
    if rows.iter().any(|r| r.estimated_requests > 0) {
        say!(
            "ESTIMATED: tokens charged by their admission estimate to answers that reported no usage (N/requests); not in TOTAL, counted by budgets and in COST at the output price"
        );
    }
    if rows.iter().any(|r| r.unpriced_requests > 0) {
        say!(
            "unpriced: answers whose model has no row in the price table (`keygate prices`), cost 0; add one with [prices.\"KIND/MODEL\"] in the config"
        );
    }
    Ok(())
}

/// Micro-dollars as dollars with six decimals.
pub(super) fn dollars(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `$0.004512`, with how many answers were unpriced.
fn cost(row: &UsageRow) -> String {
    match row.unpriced_requests {
        0 => format!("${}", dollars(row.cost_micros)),
        n if n == row.requests => "unpriced".to_owned(),
        n => format!("${} +{n} unpriced", dollars(row.cost_micros)),
    }
}

/// `1234/3`: estimated tokens over the answers charged so; `-` when none.
fn estimated(row: &UsageRow) -> String {
    if row.estimated_requests == 0 {
        return "-".to_owned();
    }
    format!("{}/{}", row.estimated_tokens, row.estimated_requests)
}

/// `keygate usage --by-key`: per upstream key since `since` ago.
fn by_key(context: &Context, since: std::time::Duration, json: bool) -> Result<(), CliError> {
    let mut ledger =
        Ledger::open(&context.config.metering.db).map_err(|e| CliError::Runtime(e.to_string()))?;
    let from = crate::unix_now().saturating_sub(since.as_secs()) / 3600;
    let rows = ledger
        .key_totals(from, u64::MAX)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut value = serde_json::to_value(r).unwrap_or_default();
                value["cost_usd"] = serde_json::json!(r.cost_micros as f64 / 1e6);
                value
            })
            .collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    say!(
        "{:<10} {:<16} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "PROVIDER",
        "KEY",
        "REQUESTS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "COST"
    );
    for r in &rows {
        say!(
            "{:<10} {:<16} {:>9} {:>12} {:>12} {:>12} {:>12}",
            r.provider,
            r.key_id,
            r.requests,
            r.input_tokens,
            r.cached_tokens,
            r.output_tokens,
            format!("${}", dollars(r.cost_micros))
        );
    }
    if rows.is_empty() {
        say!("(no usage recorded in this period)");
    }
    Ok(())
}
