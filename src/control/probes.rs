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
    if !host_allowed(&request, &shared.config.admin.allowed_hosts) {
        return Ok(text(
            StatusCode::MISDIRECTED_REQUEST,
            "application/json",
            r#"{"error":{"message":"this Host is not one the admin listener answers to: use its IP address or localhost, or add the name to [admin] allowed_hosts","type":"invalid_request_error","code":"host_not_allowed"}}"#
                .to_owned(),
        ));
    }
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => super::status_page::page(),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => readiness(&shared),
        (&Method::GET, "/metrics") => {
            shared
                .metrics
                .observe_headroom(&shared.snapshot().rings, crate::keys::health::now_ms());
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                shared.metrics.render(),
            )
        }
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

/// True when the request names a host the admin listener answers to: an IP
/// literal (probes and scrapers address a pod or host by its IP), `localhost`,
/// or a name in `[admin] allowed_hosts`; a request without a host (HTTP/1.0)
/// too. A DNS-rebinding page reaches keygate under its own name, which is
/// none of these, so it cannot read `/metrics` or `/readyz` from a browser.
fn host_allowed(request: &Request<Incoming>, allowed: &[String]) -> bool {
    let host = match request.uri().host() {
        Some(host) => host.to_owned(),
        None => match request.headers().get(http::header::HOST) {
            None => return true,
            Some(value) => match value.to_str() {
                Ok(value) => value.to_owned(),
                Err(_) => return false,
            },
        },
    };
    host_name_allowed(&host, allowed)
}

/// [`host_allowed`] on the text of a `Host` (`name[:port]`, `[v6]:port`).
fn host_name_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
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

#[cfg(test)]
mod tests {
    use super::host_name_allowed;

    #[test]
    fn only_addresses_localhost_and_listed_names_reach_the_admin_listener() {
        let listed = vec!["keygate.internal".to_owned()];
        for host in [
            "127.0.0.1:8081",
            "10.1.2.3:8081",
            "[::1]:8081",
            "localhost:8081",
            "LOCALHOST",
            "keygate.internal:8081",
        ] {
            assert!(host_name_allowed(host, &listed), "{host}");
        }
        for host in [
            "evil.example:8081",
            "127.0.0.1.evil.example",
            "keygate.internal.evil.example",
        ] {
            assert!(!host_name_allowed(host, &listed), "{host}");
        }
    }
}
