//! `keygate prices [PROVIDER] [--json]`: the effective price table — the
//! embedded rows and the config's `[prices]` — and where each row came from.

use clap::Args;

use super::{CliError, Context};
use crate::usage::prices::PriceRow;

/// Price listing options.
#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Only the rows that price this provider's models (a configured
    /// provider's name, or a kind).
    provider: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(context: &Context, args: PricesArgs) -> Result<(), CliError> {
    let table = &context.config.prices;
    let rows: Vec<&PriceRow> =
        match args.provider.as_deref() {
            None => table.rows(None),
            Some(name) => {
                let list =
                    match context.config.providers.get(name) {
                        Some(provider) => provider.kind.price_list(),
                        None if crate::config::Kind::named(name).is_some() => name,
                        None => {
                            return Err(CliError::Usage(format!(
                        "`{name}` is neither a configured provider ({}) nor a provider kind",
                        context.config.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                        }
                    };
                let mut rows = table.rows(Some(name));
                if list != name {
                    rows.extend(table.rows(Some(list)));
                }
                rows
            }
        };
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "key": row.key,
                    "input": row.raw.input,
                    "cached_input": row.raw.cached_input.unwrap_or(row.raw.input),
                    "output": row.raw.output,
                    "cache_write": row.raw.cache_write,
                    "origin": row.origin,
                    "source": row.raw.source,
                    "date": row.raw.date,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    say!("US dollars per million tokens; a model matches its exact name, else the longest listed prefix");
    say!(
        "{:<40} {:>9} {:>9} {:>9} {:>11}  FROM",
        "KIND/MODEL",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "CACHE WRITE"
    );
    for row in &rows {
        let from = match (&row.raw.date, row.origin.as_str()) {
            (Some(date), "embedded") => format!("embedded {date}"),
            (_, origin) => origin.to_owned(),
        };
        say!(
            "{:<40} {:>9} {:>9} {:>9} {:>11}  {from}",
            row.key,
            row.raw.input,
            row.raw.cached_input.unwrap_or(row.raw.input),
            row.raw.output,
            row.raw
                .cache_write
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        );
    }
    if rows.is_empty() {
        say!("(no row: add [prices.\"KIND/MODEL\"] with input and output to the config)");
    }
    Ok(())
}
