//! Admission: a request is held against its client's limits — here, then
//! across the cluster for a limited client — and its reservation kept until
//! the answer ends; and the bookkeeping of budgets that goes with it:
//! `budget_threshold` when a request takes a client past 80 % of a budget,
//! `budget_exceeded` on the first refusal of a period — each once per client
//! and period, by an event id derived from them (so replicas and restarts
//! raise it once).

use serde_json::{json, Value};

use super::request_end::RequestEnd;
use crate::control::snapshot::ClientInfo;
use crate::control::state::Shared;
use crate::events::{Event, EventType, Events};
use crate::proxy::error::ProxyError;
use crate::usage::limits::{self, Crossing, Limits};

/// Admits the request against the client's limits (here, then across the
/// cluster for a limited client) and holds its reservation; a budget
/// crossing 80 %, or spent, is told once per period.
pub(super) async fn admit(
    shared: &Shared,
    client: &crate::control::snapshot::ClientInfo,
    estimate: limits::Estimate,
    end: &mut RequestEnd,
) -> Result<(), ProxyError> {
    let now = crate::unix_now();
    let admitted = shared
        .limits
        .admit(&client.name, client.limits, || estimate, now);
    // Only a limited client pays the Redis round trip.
    let admitted = match (admitted, &shared.cluster) {
        (Ok(reservation), Some(cluster)) if client.limits.any() => {
            let spent_before = shared
                .limits
                .spent_before(&client.name, reservation.window());
            crate::cluster::limits::reserve(
                cluster,
                reservation,
                &client.name,
                client.limits,
                spent_before,
                crate::unix_now_ms(),
            )
            .await
        }
        (admitted, _) => admitted,
    };
    match admitted {
        Ok(reservation) => {
            if let Some(crossing) = reservation.crossed {
                threshold(&shared.events, client, crossing);
            }
            end.hold(reservation);
            Ok(())
        }
        Err(error) => {
            if let limits::LimitError::BudgetExceeded {
                first: true,
                window,
                ..
            } = error
            {
                exceeded(&shared.events, &shared.limits, client, window, now);
            }
            Err(error.into())
        }
    }
}

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
fn threshold(events: &Events, client: &ClientInfo, crossing: Crossing) {
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
fn exceeded(events: &Events, limits: &Limits, client: &ClientInfo, window: u64, now: u64) {
    let (_, _, spent_tokens, spent_micros) = limits.counted(&client.name, now);
    events.put(Event::once(
        EventType::BudgetExceeded,
        &format!("{} budget spent in window {window}", client.name),
        fields(client, window, spent_tokens, spent_micros),
    ));
}
