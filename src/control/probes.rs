//! The admin listener's front: the health probes (`GET /healthz`, `GET
//! /readyz`), the Prometheus page (`GET /metrics`), and everything under
//! `/admin/` handed to the admin API ([`super::admin`]). Probes need no token
//! and say nothing secret.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::admin::text;
use crate::control::state::Shared;
use crate::proxy::response_body::ResponseBody;

/// Entry point for every request on the admin listener.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => super::status_page::page(),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => readiness(&shared),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        (_, path) if path.starts_with("/admin/") => super::admin::answer(&shared, request).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}"#
                .to_owned(),
        ),
    };
    Ok(response)
}

/// Ready when a vault generation is loaded and the default provider has a
/// usable key; the body lists every provider's state. (Requiring *every*
/// provider would keep the default config, which lists xai, unready for a team
/// that only uses OpenAI.)
fn readiness(shared: &Shared) -> Response<ResponseBody> {
    let snapshot = shared.snapshot();
    let providers: serde_json::Map<String, serde_json::Value> = shared
        .config
        .providers
        .keys()
        .map(|name| {
            let usable = snapshot.rings.get(name).map_or(0, |ring| ring.len());
            (name.clone(), serde_json::json!({ "usable_keys": usable }))
        })
        .collect();
    let default_ok = snapshot
        .rings
        .get(&shared.config.routing.default)
        .is_some_and(|ring| !ring.is_empty());
    let ready = shared.is_vault_loaded() && default_ok;
    // Redis away does not make a replica unready (it serves on alone), but it says so.
    let cluster = shared.cluster.as_ref().map(|c| {
        serde_json::json!({
            "redis": c.endpoint(),
            "shared": c.is_up(),
            "key_health_subscribed": c.is_subscribed(),
            "state": if c.is_up() { "shared" } else { "redis unreachable: limits and key health per replica" },
        })
    });
    let body = serde_json::json!({
        "ready": ready,
        "vault_generation": snapshot.generation,
        "providers": providers,
        "cluster": cluster,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", body.to_string())
}
