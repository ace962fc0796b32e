//! The conductor: one client request, top to bottom.
//!
//! snapshot once → authenticate → route by path → receive body → route by model
//! → key ring → forward ⇄ retry with the next key when the provider's kind says
//! the key was rejected, is out of credit or rate limited → stream back.
//!
//! Stages are plain functions in their own modules, called here in order; none
//! calls another. The only loop is forward ⇄ retry, and it only runs before any
//! response byte has gone to the client. Logs once per request, at the end,
//! with names and key ids, never a secret.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth;
use crate::body::{self, BodyLimits, RequestBody};
use crate::config::Provider;
use crate::error::ProxyError;
use crate::forward::{self, ResponseBody};
use crate::keys::{health, KeyRing, Pick};
use crate::limits::{self, Reservation};
use crate::meter::tap::MeterTap;
use crate::meter::{Outcome, UsageCounters, UsageKey};
use crate::metrics::{ActiveGuard, ProviderMetrics};
use crate::providers::{KeyVerdict, ProviderError};
use crate::route::{self, PathMatch};
use crate::state::Shared;
use crate::upstream::SendError;

/// What the conductor learns about a request, for the one log line and metrics.
#[derive(Default)]
struct RequestContext {
    client: Option<Arc<str>>,
    provider: Option<ProviderMetrics>,
    key_id: Option<Arc<str>>,
    attempts: u32,
    error: Option<&'static str>,
    /// Why the client key was refused (`keygate_client_auth_failures_total`).
    auth_failure: Option<&'static str>,
    /// The usage counters, until a response tap takes them over.
    usage: Option<Arc<UsageCounters>>,
    /// `keygate_requests_total` of this client and provider for a 200.
    answered_ok: Option<prometheus::IntCounter>,
    request_bytes: u64,
    /// Tokens reserved against the client's limits, until settled.
    reservation: Option<Reservation>,
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
            if let ProxyError::InvalidClientKey(why) = &error {
                ctx.auth_failure = Some(why.reason());
            }
            error.into_response()
        }
    };
    record(&shared, &mut ctx, response.status(), started);
    Ok(response)
}

async fn conduct(
    shared: &Shared,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &shared.config;
    let snapshot = shared.snapshot.load_full();
    let (mut parts, incoming) = request.into_parts();

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
        total: config.server.body_timeout,
    };
    let mut body = body::receive(incoming, declared_len, limits).await?;
    body::decode_content(&mut body, &mut parts.headers, limits.max)?;

    let skimmed = body
        .buffered()
        .and_then(|b| crate::json_skim::chat_fields(b));
    let model = route::model_of(body.buffered().map(|b| &b[..]), skimmed.as_ref())
        .map(|m| Arc::<str>::from(&*m));
    let (provider, path) = match path_match {
        PathMatch::Prefixed(provider, rest) => (provider, rest),
        PathMatch::Plain(path) => (route::by_model(config, model.as_deref()), path),
    };
    let provider_metrics = shared.metrics.provider(&provider.name);
    ctx.provider = Some(provider_metrics.clone());
    let model = model.unwrap_or_else(|| Arc::from("-"));
    let series = shared.meter.series(
        UsageKey {
            client: client.name.clone(),
            provider: provider_metrics.name.clone(),
            model,
        },
        |key| shared.metrics.usage_series(key),
    );
    ctx.usage = Some(series.counters);
    ctx.answered_ok = Some(series.metrics.answered_ok);
    let token_metrics = series.metrics.tokens;
    ctx.request_bytes = body
        .buffered()
        .map_or(declared_len.unwrap_or(0), |b| b.len() as u64);
    let request_bytes = ctx.request_bytes;
    let estimate = || limits::estimate_tokens(body.buffered().map(|b| &b[..]), request_bytes);
    ctx.reservation =
        shared
            .limits
            .admit(&client.name, client.limits, estimate, crate::unix_now())?;
    // Ask for the usage chunk on the client's behalf, and hide it from them.
    let mut strip_usage_chunk = false;
    if config.metering.stream_usage
        && provider.kind.has_stream_usage_option()
        && crate::meter::has_stream_usage_option(path)
    {
        let rewritten = body
            .buffered()
            .and_then(|b| crate::meter::ask_for_usage(b, skimmed.as_ref()));
        if let Some(rewritten) = rewritten {
            body = RequestBody::Buffered(rewritten);
            strip_usage_chunk = true;
        }
    }
    let active = ActiveGuard::new(provider_metrics.active.clone());

    let ring: &KeyRing = snapshot
        .rings
        .get(&provider.name)
        .filter(|ring| !ring.is_empty())
        .ok_or_else(|| ProxyError::NoUpstreamKey {
            provider: provider.name.clone(),
        })?;
    let uri = provider
        .url(path, parts.uri.query())
        .ok_or_else(|| ProxyError::UnknownRoute(parts.uri.path().to_owned()))?;

    // Forward ⇄ retry: each key at most once, and only before any response
    // byte has gone to the client.
    let timeout = config.server.upstream_first_byte_timeout;
    let mut tried = 0u64;
    loop {
        let rejected = || ProxyError::UpstreamKeyRejected {
            provider: provider.name.clone(),
        };
        let pick = ring
            .pick(client.sticky, tried, health::now_ms())
            .ok_or_else(rejected)?;
        let key = pick.key;
        let outbound_body = body.next_attempt().ok_or_else(rejected)?;
        tried |= 1 << pick.index;
        ctx.attempts += 1;
        ctx.key_id = Some(key.id.clone());

        let outbound = forward::outbound_request(
            provider,
            &parts.method,
            uri.clone(),
            &parts.headers,
            key,
            outbound_body,
        );
        let sent = Instant::now();
        let upstream = match tokio::time::timeout(timeout, shared.upstream.send(outbound)).await {
            Ok(Ok(upstream)) => upstream,
            failed => {
                if pick.probe {
                    key.health.end_probe();
                }
                return Err(match failed {
                    Err(_) => ProxyError::UpstreamTimeout {
                        provider: provider.name.clone(),
                        after: timeout,
                    },
                    Ok(Err(error)) => send_failure(&provider.name, &body, limits.max, &error),
                    Ok(Ok(_)) => rejected(),
                });
            }
        };
        provider_metrics
            .upstream_duration
            .observe(sent.elapsed().as_secs_f64());
        let status = upstream.status();
        let another_key_left = ring.pick_would_find(tried) && body.buffered().is_some();
        // An error's body is read (it is scrubbed before the client sees it
        // anyway), so the provider's kind can judge it before anything is sent.
        let answer = if status.is_client_error() || status.is_server_error() {
            Err(forward::read_error_body(upstream, limits.idle).await)
        } else {
            Ok(upstream)
        };
        let verdict = judge_answer(
            shared,
            provider,
            &pick,
            status,
            answer.as_ref().err(),
            another_key_left,
        );
        match verdict {
            KeyVerdict::Rejected if !another_key_left => return Err(rejected()),
            KeyVerdict::Rejected | KeyVerdict::OutOfCredit | KeyVerdict::RateLimited
                if another_key_left =>
            {
                continue
            }
            _ => {}
        }
        let upstream = match answer {
            Ok(upstream) => upstream,
            Err(error) => return Ok(forward::scrubbed_error_response(error, ring, active)),
        };
        let tap = ctx.usage.take().map(|counters| {
            MeterTap::new(
                counters,
                token_metrics,
                upstream
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                strip_usage_chunk,
                Outcome {
                    request_bytes: ctx.request_bytes,
                    ..Outcome::default()
                },
                ctx.reservation.take(),
            )
        });
        return forward::client_response(
            upstream,
            ring,
            config.server.stream_idle_timeout,
            active,
            tap,
        );
    }
}

/// Asks the provider's kind what an upstream answer says about the key that
/// was sent, and does the bookkeeping that follows: the key's health, the
/// metrics and one log line per transition (key ids only, never a secret).
/// The conductor decides only what to do next: send again, or answer.
fn judge_answer(
    shared: &Shared,
    provider: &Provider,
    pick: &Pick<'_>,
    status: StatusCode,
    error: Option<&forward::ErrorAnswer>,
    another_key_left: bool,
) -> KeyVerdict {
    let kind = provider.kind;
    let provider_error = error
        .filter(|_| kind.reads_body(status.as_u16()))
        .and_then(forward::ErrorAnswer::bytes)
        .map(ProviderError::parse)
        .unwrap_or_default();
    let verdict = kind.judge(status.as_u16(), &provider_error);
    let key = pick.key;
    let metrics = &shared.metrics;
    let labels = [provider.name.as_str(), &*key.id];
    let now = health::now_ms();
    let next = if another_key_left {
        ", retrying with the next key"
    } else {
        ""
    };
    match verdict {
        KeyVerdict::Accepted | KeyVerdict::Unrelated => {
            if pick.probe {
                if verdict == KeyVerdict::Accepted && key.health.record_success() {
                    metrics.key_healthy.with_label_values(&labels).set(1);
                    tracing::info!(provider = %provider.name, key_id = %key.id, "key {} accepted again: healthy", key.id);
                } else {
                    key.health.end_probe();
                }
            }
            return verdict;
        }
        KeyVerdict::Rejected => {
            let (cooldown, was_healthy) =
                key.health
                    .record_rejection(shared.config.keys.suspect_cooldown, now, pick.probe);
            metrics.key_healthy.with_label_values(&labels).set(0);
            tracing::warn!(
                provider = %provider.name,
                key_id = %key.id,
                status = status.as_u16(),
                probe = pick.probe,
                first_failure = was_healthy,
                cooldown_s = cooldown.as_secs(),
                "UPSTREAM REJECTED KEY {} of provider {} ({}); it is suspect for {:?}{}",
                key.id,
                provider.name,
                status,
                cooldown,
                next
            );
        }
        KeyVerdict::OutOfCredit => {
            let rest = shared.config.keys.exhausted_cooldown;
            let first = key.health.record_exhausted(rest, now, pick.probe);
            metrics.key_healthy.with_label_values(&labels).set(0);
            tracing::warn!(
                provider = %provider.name,
                key_id = %key.id,
                status = status.as_u16(),
                probe = pick.probe,
                first_failure = first,
                rest_s = rest.as_secs(),
                "KEY {} of provider {} IS OUT OF CREDIT ({}): the account behind it must be topped up; it rests for {:?}{}",
                key.id,
                provider.name,
                status,
                rest,
                next
            );
        }
        KeyVerdict::RateLimited => {
            if pick.probe {
                key.health.end_probe();
            }
            if another_key_left {
                let headers = error.map(|e| &e.parts.headers);
                let cooling = headers.map_or(Duration::from_secs(1), retry_after);
                key.health.record_rate_limited(cooling, now);
                tracing::info!(
                    provider = %provider.name,
                    key_id = %key.id,
                    cooling_s = cooling.as_secs(),
                    "upstream rate-limited key {}; cooling it and trying the next key",
                    key.id
                );
            }
        }
    }
    metrics
        .key_rejections
        .with_label_values(&[provider.name.as_str(), &*key.id, verdict.reason()])
        .inc();
    if another_key_left {
        let reason = match verdict {
            KeyVerdict::OutOfCredit => "402",
            KeyVerdict::RateLimited => "429",
            _ => "401",
        };
        metrics
            .fallback_retries
            .with_label_values(&[&provider.name, reason])
            .inc();
    }
    verdict
}

/// How long a rate-limited key cools: `Retry-After` (seconds), else
/// `retry-after-ms`, else OpenAI's `x-ratelimit-reset-requests` duration
/// (`"1s"`, `"6m0s"`); default 1 s, at most an hour.
fn retry_after(headers: &http::HeaderMap) -> Duration {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let cooling = text("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            text("retry-after-ms")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        })
        .or_else(|| {
            text("x-ratelimit-reset-requests").and_then(|v| humantime::parse_duration(v).ok())
        })
        .unwrap_or(Duration::from_secs(1));
    cooling.clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

fn send_failure(provider: &str, body: &RequestBody, limit: u64, error: &SendError) -> ProxyError {
    if let RequestBody::Streaming(stream) = body {
        if stream.overflowed() {
            return ProxyError::RequestTooLarge { limit };
        }
    }
    ProxyError::UpstreamUnavailable {
        provider: provider.to_owned(),
        detail: error.detail(),
    }
}

fn record(shared: &Shared, ctx: &mut RequestContext, status: StatusCode, started: Instant) {
    // No response body will report usage: nothing was spent upstream.
    if let Some(reservation) = ctx.reservation.take() {
        reservation.settle(Some(0));
    }
    // Answered without a tap (keygate's own error, or a scrubbed upstream error).
    if let Some(usage) = &ctx.usage {
        usage.record(&Outcome {
            error: status.as_u16() >= 400,
            request_bytes: ctx.request_bytes,
            ..Outcome::default()
        });
    }
    let client = ctx.client.as_deref().unwrap_or("-");
    let provider = ctx.provider.as_ref().map_or("-", |p| &*p.name);
    let elapsed = started.elapsed();
    match ctx.answered_ok.take() {
        Some(answered_ok) if status == StatusCode::OK => answered_ok.inc(),
        _ => shared
            .metrics
            .requests_total
            .with_label_values(&[client, provider, status.as_str()])
            .inc(),
    }
    if let Some(provider) = &ctx.provider {
        provider.request_duration.observe(elapsed.as_secs_f64());
    }
    if let Some(reason) = ctx.auth_failure {
        shared
            .metrics
            .client_auth_failures
            .with_label_values(&[reason])
            .inc();
    }
    tracing::info!(
        client,
        provider,
        status = status.as_u16(),
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        // Only on a refused client key (a `None` field is left out).
        auth_failure = ctx.auth_failure,
        key_id = ctx.key_id.as_deref().unwrap_or("-"),
        attempts = ctx.attempts,
        error = ctx.error.unwrap_or("-"),
        "request"
    );
}
