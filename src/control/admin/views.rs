//! The admin API's read-only answers: keys, clients, providers, the status
//! and usage — by id and fingerprint, never a secret.

use super::{load_document, AdminError};
use crate::control::state::Shared;
use crate::vault::document::{Document, KeyState};

pub(super) fn list_keys(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    let now = crate::unix_now();
    let rotate_after = shared.config.keys.rotate_after.as_secs();
    let snapshot = shared.snapshot();
    let now_ms = crate::keys::health::now_ms();
    Ok(serde_json::Value::Array(
        document
            .keys
            .iter()
            .map(|k| {
                let health = snapshot
                    .rings
                    .get(&k.provider)
                    .and_then(|r| r.keys().iter().find(|rk| *rk.id == *k.id))
                    .map(|rk| &rk.health);
                let mut summary = k.summary(now, rotate_after);
                summary["healthy"] =
                    serde_json::json!(health.map(|h| h.healthy_gauge(now_ms) == 1));
                summary["health"] = serde_json::json!(health.map(|h| h.state_name(now_ms)));
                summary["last_refusal"] =
                    serde_json::json!(health.and_then(|h| h.last_refusal()).as_deref());
                summary["headroom"] =
                    serde_json::json!(health
                        .map(|h| { crate::keys::health_report::Room::of(&h.headroom, now_ms) }));
                summary
            })
            .collect(),
    ))
}

/// Rows of `GET /admin/clients` when no `limit` is given.
pub(super) const CLIENTS_PAGE: usize = 1000;
/// The most rows one `GET /admin/clients` answers with.
const CLIENTS_PAGE_MAX: usize = 10_000;

/// `GET /admin/clients?limit=N&after=NAME`: one page of clients by name,
/// from the snapshot being served (a listing never decrypts the vault, so
/// it costs the page, not the vault). The next page starts `after` the last
/// name shown; a name's records (a revoked one and its successor) are never
/// split across pages.
pub(super) fn list_clients(shared: &Shared, query: &str) -> Result<serde_json::Value, AdminError> {
    let (mut limit, mut after) = (CLIENTS_PAGE, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=CLIENTS_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!(
                            "limit: a whole number of clients from 1 to {CLIENTS_PAGE_MAX}"
                        ))
                    })?
            }
            "after" => after = Some(value.into_owned()),
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{name}`"
                )))
            }
        }
    }
    // A change the reloader has not polled yet is listed all the same.
    tokio::task::block_in_place(|| {
        if shared.control().changed() {
            let _ = shared.reload();
        }
    });
    let snapshot = shared.snapshot();
    let roster = &snapshot.roster;
    let start = after.map_or(0, |after| {
        roster.partition_point(|c| *c.info.name <= *after.as_str())
    });
    let mut end = (start + limit).min(roster.len());
    while end > start && end < roster.len() && roster[end].info.name == roster[end - 1].info.name {
        end += 1;
    }
    let now = crate::unix_now();
    Ok(serde_json::Value::Array(
        roster[start..end]
            .iter()
            .map(|c| {
                let mut summary = c.summary();
                // This replica's counts, against the limits (the status page's "how close").
                let (requests, tokens, spent, micros) = shared.limits.counted(&c.info.name, now);
                summary["counted"] = serde_json::json!({
                    "requests_this_minute": requests,
                    "tokens_this_minute": tokens,
                    "tokens_spent": spent,
                    "usd_spent": micros as f64 / 1e6,
                    "budget_window_start": c.info.limits.budget_period.map(|p| p.window_start(now)),
                });
                summary
            })
            .collect(),
    ))
}

/// `GET /admin/status`: the vault generation served, how the last reload
/// went, and the cluster's state when Redis is configured.
pub(super) fn status(shared: &Shared) -> serde_json::Value {
    let last_reload = tokio::task::block_in_place(|| shared.control().last_reload().cloned());
    let cluster = shared.cluster.as_ref().map(|c| {
        serde_json::json!({
            "redis": c.endpoint(),
            "shared": c.is_up(),
            "key_health_subscribed": c.is_subscribed(),
        })
    });
    serde_json::json!({
        "vault_generation": shared.snapshot().generation,
        "last_reload": last_reload,
        "cluster": cluster,
    })
}

/// A rotation under way at `provider`: a key waiting to be verified
/// (`pending`), else an old key serving as the fallback until its grace ends.
fn rotation_in_flight(document: &Document, provider: &str, now: u64) -> serde_json::Value {
    let keys = || document.keys.iter().filter(|k| k.provider == provider);
    if let Some(pending) = keys().find(|k| k.state == KeyState::Pending) {
        return serde_json::json!({ "stage": "pending", "key_id": pending.id });
    }
    keys()
        .find(|k| k.state == KeyState::Previous && k.grace_until.is_some_and(|t| t > now))
        .map_or(serde_json::Value::Null, |previous| {
            serde_json::json!({
                "stage": "grace",
                "key_id": previous.id,
                "grace_until": previous.grace_until,
            })
        })
}

/// `GET /admin/providers`: each provider's kind, usable keys, whether
/// keygate can manage its keys (admin table, management credential stored),
/// and the rotation in flight.
pub(super) fn list_providers(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    let snapshot = shared.snapshot();
    let now = crate::unix_now();
    Ok(serde_json::Value::Array(
        shared
            .config
            .providers
            .values()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "kind": p.kind.as_str(),
                    "default": p.name == shared.config.routing.default,
                    "usable_keys": snapshot.rings.get(&p.name).map_or(0, |r| r.len()),
                    // A provider the embedded defaults only offer is not a problem.
                    "set_up": shared.config.is_set_up(
                        &p.name,
                        document.keys.iter().any(|k| k.provider == p.name)
                    ),
                    "admin_configured": p.admin.is_some(),
                    "management_credential": document.admin_key(&p.name).is_some(),
                    "rotation": rotation_in_flight(&document, &p.name, now),
                    "inventory": shared
                        .inventory
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(&p.name)
                        .cloned(),
                    "outside_use": shared
                        .outside_use
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(&p.name)
                        .cloned()
                        .unwrap_or_default(),
                })
            })
            .collect(),
    ))
}

/// `GET /admin/usage?client=NAME&since=7d`: the same totals as `keygate usage --json`.
pub(super) fn usage(shared: &Shared, query: &str) -> Result<serde_json::Value, AdminError> {
    let mut client = None;
    let mut since = std::time::Duration::from_secs(7 * 86_400);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "client" => client = Some(value.into_owned()),
            "since" => {
                since = humantime::parse_duration(&value)
                    .map_err(|e| AdminError::BadRequest(format!("since: {e}")))?
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{name}`"
                )))
            }
        }
    }
    let rows = tokio::task::block_in_place(|| {
        let mut ledger = crate::usage::ledger::Ledger::open(&shared.config.metering.db)?;
        ledger.totals(
            client.as_deref(),
            crate::unix_now().saturating_sub(since.as_secs()),
        )
    })
    .map_err(|e| AdminError::Failed(e.to_string()))?;
    serde_json::to_value(rows).map_err(|e| AdminError::Failed(e.to_string()))
}

/// `GET /admin/events?since=24h&type=T&limit=100`: the outbox's events,
/// newest first, with their deliveries.
pub(super) async fn events(shared: &Shared, query: &str) -> Result<serde_json::Value, AdminError> {
    let (mut since, mut kind, mut limit) = (std::time::Duration::from_secs(86_400), None, 100u32);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "since" => {
                since = humantime::parse_duration(&value)
                    .map_err(|e| AdminError::BadRequest(format!("since: {e}")))?
            }
            "type" => kind = Some(value.into_owned()),
            "limit" => {
                limit = value.parse().map_err(|_| {
                    AdminError::BadRequest("limit: a whole number of events".to_owned())
                })?
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{name}`"
                )))
            }
        }
    }
    let query = crate::events::outbox::Query::new(since, kind.as_deref(), limit)
        .map_err(AdminError::BadRequest)?;
    let outbox = shared.outbox.clone();
    let listed = tokio::task::spawn_blocking(move || {
        outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list(&query)
    })
    .await
    .map_err(|_| AdminError::Failed("the events listing stopped".to_owned()))?
    .map_err(|e| AdminError::Failed(e.to_string()))?;
    Ok(serde_json::Value::Array(
        listed.iter().map(|e| e.to_json()).collect(),
    ))
}

/// `GET /admin/inventory?provider=NAME&unused_for=90d`: every key at each
/// provider keygate can list, read now (the JSON of `key inventory --json`).
pub(super) async fn inventory(
    shared: &Shared,
    query: &str,
) -> Result<serde_json::Value, AdminError> {
    let (mut only, mut unused_for) = (None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "provider" => only = Some(value.into_owned()),
            "unused_for" => {
                unused_for = Some(
                    humantime::parse_duration(&value)
                        .map_err(|e| AdminError::BadRequest(format!("unused_for: {e}")))?
                        .as_secs(),
                )
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{name}`"
                )))
            }
        }
    }
    let document = load_document(shared)?;
    let mut rows = Vec::new();
    for provider in shared.config.providers.values() {
        if only.as_ref().is_some_and(|o| *o != provider.name) {
            continue;
        }
        if !crate::keys::inventory::can_take(&document, provider) {
            if only.is_some() {
                return Err(AdminError::BadRequest(format!(
                    "keygate cannot list {}'s keys: it needs [providers.{0}.admin] and `keygate admin-key set {0}`",
                    provider.name
                )));
            }
            continue;
        }
        let entries =
            crate::keys::inventory::take(&shared.upstream, provider, &document, unused_for)
                .await
                .map_err(|e| AdminError::Provider(e.to_string()))?;
        rows.extend(entries.iter().map(|e| e.to_json(&provider.name)));
    }
    Ok(serde_json::Value::Array(rows))
}
