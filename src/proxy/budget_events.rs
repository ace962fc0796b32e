//! The conductor's bookkeeping of budgets: `budget_threshold` when a
//! request takes a client past 80 % of a budget, `budget_exceeded` on the
//! first refusal of a period — each once per client and period, by an event
//! id derived from them (so replicas and restarts raise it once).

use serde_json::{json, Value};

use crate::control::snapshot::ClientInfo;
use crate::events::{Event, EventType, Events};
use crate::usage::limits::{Crossing, Limits};

/// What both events say about the budgets and the period.
fn fields(client: &ClientInfo, window: u64, spent_tokens: u64, spent_micros: u64) -> Value {
    let limits = client.limits;
    let window_start = (window > 0).then(|| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(window),
        )
        .to_string()
    });
    json!({
        "client": &*client.name,
        "period": limits.budget_period.map_or_else(|| "lifetime".to_owned(), |p| p.to_string()),
        "period_start": window_start,
        "budget_usd": limits.budget_usd_micros.map(|m| m as f64 / 1e6),
        "spent_usd": spent_micros as f64 / 1e6,
        "budget_tokens": limits.budget_tokens,
        "spent_tokens": spent_tokens,
    })
}

/// A budget crossed 80 % with this request.
pub(super) fn threshold(events: &Events, client: &ClientInfo, crossing: Crossing) {
    let mut fields = fields(
        client,
        crossing.window,
        crossing.spent_tokens,
        crossing.spent_micros,
    );
    fields["percent"] = json!(crossing.percent);
    events.put(Event::once(
        EventType::BudgetThreshold,
        &format!("{} budget 80% of window {}", client.name, crossing.window),
        fields,
    ));
}

/// The first refusal of a period.
pub(super) fn exceeded(
    events: &Events,
    limits: &Limits,
    client: &ClientInfo,
    window: u64,
    now: u64,
) {
    let (_, _, spent_tokens, spent_micros) = limits.counted(&client.name, now);
    events.put(Event::once(
        EventType::BudgetExceeded,
        &format!("{} budget spent in window {window}", client.name),
        fields(client, window, spent_tokens, spent_micros),
    ));
}
