//! The conductor: one client request, top to bottom.
//!
//! snapshot once → authenticate → route by path → receive body → route by model
//! → key ring → forward ⇄ retry with the next key on 401/402/403 → stream back.
//!
//! Stages are plain functions in their own modules, called here in order; none
//! calls another. The only loop is forward ⇄ retry, and it only runs before any
//! response byte has gone to the client. Logs once per request, at the end,
//! with names and key ids, never a secret.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, BodyLimits, RequestBody};
use crate::error::ProxyError;
use crate::forward::{self, ResponseBody};
use crate::metrics::ActiveGuard;
use crate::route::{self, PathMatch};
use crate::state::Shared;
use crate::{auth, keys::KeyRing};

/// What the conductor learns about a request, for the one log line and metrics.
#[derive(Default)]
struct RequestContext {
    client: Option<Arc<str>>,
    provider: Option<String>,
    key_id: Option<Arc<str>>,
    attempts: u32,
    error: Option<&'static str>,
}

/// Entry point for every request on the client listener.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let mut ctx = RequestContext::default();
    let response = match conduct(&shared, request, &mut ctx).await {
        Ok(response) => response,
        Err(error) => {
            ctx.error = Some(error.code());
            error.into_response()
        }
    };
    record(&shared, &ctx, response.status(), started);
    Ok(response)
}

async fn conduct(
    shared: &Shared,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &shared.config;
    let snapshot = shared.snapshot.load_full();
    let (parts, incoming) = request.into_parts();

    let client = auth::authenticate(&parts.headers, &snapshot, config.clients.allow_anonymous)?;
    ctx.client = Some(client.name.clone());

    let path_match = route::by_path(config, parts.uri.path())?;

    let declared_len = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limits = BodyLimits {
        max: config.server.max_request_body,
        retry_buffer: config.server.retry_buffer,
        idle: config.server.body_idle_timeout,
    };
    let mut body = body::receive(incoming, declared_len, limits).await?;

    let (provider, path) = match path_match {
        PathMatch::Prefixed(provider, rest) => (provider, rest),
        PathMatch::Plain(path) => (
            route::by_model(config, body.buffered().map(|b| &b[..])),
            path,
        ),
    };
    ctx.provider = Some(provider.name.clone());
    let active = ActiveGuard::new(
        shared
            .metrics
            .active_requests
            .with_label_values(&[&provider.name]),
    );

    let ring: &KeyRing = snapshot
        .rings
        .get(&provider.name)
        .filter(|ring| !ring.is_empty())
        .ok_or_else(|| ProxyError::NoUpstreamKey {
            provider: provider.name.clone(),
        })?;
    let uri = forward::upstream_uri(provider, path, parts.uri.query())
        .ok_or_else(|| ProxyError::UnknownRoute(parts.uri.path().to_owned()))?;

    let mut attempt = 0;
    loop {
        let rejected = || ProxyError::UpstreamKeyRejected {
            provider: provider.name.clone(),
        };
        let key = ring.nth_choice(client.sticky, attempt).ok_or_else(rejected)?;
        let outbound_body = body.next_attempt().ok_or_else(rejected)?;
        attempt += 1;
        ctx.attempts = attempt as u32;
        ctx.key_id = Some(key.id.clone());

        let outbound =
            forward::outbound_request(&parts.method, uri.clone(), &parts.headers, key, outbound_body);
        let sent = Instant::now();
        let timeout = config.server.upstream_first_byte_timeout;
        let upstream = match tokio::time::timeout(timeout, shared.upstream.send(outbound)).await {
            Err(_) => {
                return Err(ProxyError::UpstreamTimeout {
                    provider: provider.name.clone(),
                    after: timeout,
                })
            }
            Ok(Err(error)) => return Err(send_failure(&provider.name, &body, limits.max, &error)),
            Ok(Ok(upstream)) => upstream,
        };
        shared
            .metrics
            .upstream_duration
            .with_label_values(&[&provider.name])
            .observe(sent.elapsed().as_secs_f64());

        if is_key_rejection(upstream.status()) {
            tracing::warn!(
                provider = %provider.name,
                key_id = %key.id,
                status = upstream.status().as_u16(),
                "upstream rejected key {}; trying the next key of {}",
                key.id,
                provider.name
            );
            continue;
        }
        return Ok(forward::client_response(
            upstream,
            config.server.stream_idle_timeout,
            active,
        ));
    }
}

/// 401 invalid/revoked, 402 billing, 403 permission: the key, not the request.
fn is_key_rejection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401..=403)
}

fn send_failure(
    provider: &str,
    body: &RequestBody,
    limit: u64,
    error: &hyper_util::client::legacy::Error,
) -> ProxyError {
    if let RequestBody::Streaming(stream) = body {
        if stream.overflowed() {
            return ProxyError::RequestTooLarge { limit };
        }
    }
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    ProxyError::UpstreamUnavailable {
        provider: provider.to_owned(),
        detail,
    }
}

fn record(shared: &Shared, ctx: &RequestContext, status: StatusCode, started: Instant) {
    let client = ctx.client.as_deref().unwrap_or("-");
    let provider = ctx.provider.as_deref().unwrap_or("-");
    let elapsed = started.elapsed();
    shared
        .metrics
        .requests_total
        .with_label_values(&[client, provider, status.as_str()])
        .inc();
    if ctx.provider.is_some() {
        shared
            .metrics
            .request_duration
            .with_label_values(&[provider])
            .observe(elapsed.as_secs_f64());
    }
    tracing::info!(
        client,
        provider,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        key_id = ctx.key_id.as_deref().unwrap_or("-"),
        attempts = ctx.attempts,
        error = ctx.error.unwrap_or("-"),
        "request"
    );
}
