//! `keygate events [--since 24h] [--type T] [--limit N] [--json]`: the
//! events in the outbox, newest first, with where each delivery stands.

use clap::Args;

use super::{CliError, Context};
use crate::events::outbox::{Outbox, Query};

/// Event listing options.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// How far back (humantime: 1h, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = crate::cli::duration_arg)]
    since: std::time::Duration,
    /// Only events of this type (docs/events.md lists them).
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(context: &Context, args: EventsArgs) -> Result<(), CliError> {
    let query =
        Query::new(args.since, args.kind.as_deref(), args.limit).map_err(CliError::Usage)?;
    let mut outbox =
        Outbox::open(&context.config.metering.db).map_err(|e| CliError::Runtime(e.to_string()))?;
    let events = outbox
        .list(&query)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    if args.json {
        let list: Vec<_> = events.iter().map(|e| e.to_json()).collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if events.is_empty() {
        say!("(no events in this period)");
        return Ok(());
    }
    say!(
        "{:<24} {:<24} {:<36} {:<40} DELIVERY",
        "TIME",
        "TYPE",
        "ID",
        "DETAILS"
    );
    for event in &events {
        let body = &event.body;
        let details = body
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, value)| {
                !matches!(name.as_str(), "id" | "type" | "time") && !value.is_null()
            })
            .map(|(name, value)| match value {
                serde_json::Value::String(s) => format!("{name}={s}"),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        say!(
            "{:<24} {:<24} {:<36} {:<40} {}",
            body["time"].as_str().unwrap_or_default(),
            body["type"].as_str().unwrap_or_default(),
            body["id"].as_str().unwrap_or_default(),
            details,
            event.delivery_summary()
        );
    }
    Ok(())
}
