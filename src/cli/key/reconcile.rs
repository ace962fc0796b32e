//! `keygate key reconcile [PROVIDER] [--since 24h] [--json]`: each key's
//! usage at the provider against what keygate sent with it (outside use).

use crate::cli::{upstream_runtime, CliError, Context};
use crate::keys::outside_use::{self, Finding, Thresholds};
use crate::usage::ledger::Ledger;

pub(super) fn run(
    context: &Context,
    provider: Option<&str>,
    since: std::time::Duration,
    json: bool,
) -> Result<(), CliError> {
    let providers: Vec<_> = match provider {
        Some(name) => vec![context.provider(name)?],
        None => context.config.providers.values().collect(),
    };
    let document = context.vault().load(&context.kek()?)?.document;
    let keys = &context.config.keys;
    let window = outside_use::hours(
        crate::unix_now(),
        since.as_secs(),
        keys.reconcile_lag.as_secs(),
    );
    let thresholds = Thresholds {
        min_requests: keys.outside_use_min_requests,
    };
    let (runtime, upstream) = upstream_runtime(context)?;
    // The providers first, then the ledger (what they counted was sent before).
    let mut sides = Vec::new();
    for provider in providers {
        let side = runtime
            .block_on(outside_use::provider_side(
                &upstream, provider, &document, window,
            ))
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        sides.push(side);
    }
    let sent = Ledger::open(&context.config.metering.db)
        .and_then(|mut ledger| ledger.key_totals(window.0, window.1))
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let rows: Vec<_> = sides
        .iter()
        .flat_map(|side| outside_use::finish(side, &document, &sent, thresholds))
        .collect();
    if json {
        let list: Vec<_> = rows.iter().map(|c| c.to_json(window)).collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    say!(
        "{:<10} {:<16} {:<32} {:>12} {:>12} {:>12} {:>12}  FINDING",
        "PROVIDER",
        "KEY",
        "PROVIDER KEY ID",
        "SENT REQ",
        "SENT TOKENS",
        "THEIR REQ",
        "THEIR TOKENS"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for c in &rows {
        let finding = match &c.finding {
            Finding::Clean => "clean".to_owned(),
            Finding::OutsideUse { requests, tokens } => format!(
                "OUTSIDE USE: {} more requests, {tokens} more tokens than keygate sent",
                show(*requests)
            ),
            Finding::NotReconcilable(why) => format!("not reconcilable: {why}"),
        };
        say!(
            "{:<10} {:<16} {:<32} {:>12} {:>12} {:>12} {:>12}  {finding}",
            c.provider,
            c.key_id,
            c.provider_key_id.as_deref().unwrap_or("-"),
            c.keygate.0,
            c.keygate.1,
            show(c.provider_reports.and_then(|p| p.0)),
            show(c.provider_reports.map(|p| p.1)),
        );
    }
    if rows.is_empty() {
        say!("(no key in use and no traffic in this window)");
    }
    Ok(())
}
