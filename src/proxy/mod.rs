//! The conductor: one client request, top to bottom.
//!
//! snapshot once → authenticate (a decoy's use is recorded, [`decoy`]) → route
//! by path → receive body → route by model → key ring → forward ⇄ retry with
//! the next key when the provider's kind says the key was rejected, is out of
//! credit or rate limited → stream back.
//!
//! Stages are plain functions in their own modules, called here in order;
//! what several need (which [`headers`] cross, the [`error`] type) sits
//! below them. What an upstream answer means for the key is [`judge`]'s, a
//! pure reading; the key's bookkeeping is `keys::key_events`'. The only loop is forward ⇄ retry, and it only runs before any
//! response byte has gone to the client. The request's end — counters, budget
//! reservation, metrics, the one log line — is [`request_end`]'s, and runs
//! when the response body is over.

mod admission;
pub mod auth;
pub mod body;
pub mod decoy;
pub mod error;
pub mod error_answer;
pub mod forward;
pub mod headers;
pub mod judge;
pub mod request_end;
pub mod response_body;
pub mod route;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::control::metrics::ActiveGuard;
use crate::control::state::Shared;
use crate::keys::key_events::Verdict;
use crate::keys::{self, health, KeyRing, NoPick};
use crate::net::upstream::{SendError, UpstreamBody};
use crate::providers::KeyVerdict;
use crate::proxy::error::{AuthFailure, ProxyError};
use crate::usage::limits;
use crate::usage::meter::{model_label, UsageKey};
use body::{BodyLimits, RequestBody};
use request_end::{Ending, RequestEnd};
use response_body::{Open, ResponseBody};
use route::PathMatch;

/// Entry point for every request on the client listener.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut end = RequestEnd::new(shared.clone(), Instant::now());
    // Boxed: the conductor's state (~3.5 KiB) is then freed as soon as the
    // response head is out, instead of living in hyper's per-connection
    // slot for as long as a stream is held open (10,000 held streams: 29
    // MiB). One allocation per request.
    let mut response = match Box::pin(conduct(&shared, request, &mut end)).await {
        Ok(response) => response,
        Err(error) => {
            end.error = Some(error.code());
            if let ProxyError::InvalidClientKey(why) = &error {
                end.auth_failure = Some(why.reason());
            }
            error.into_response()
        }
    };
    end.head(response.status());
    // A streamed body ends the request when it is over; a whole one now.
    if let Some(mut end) = response.body_mut().attach(end) {
        end.finish(Ending::Complete);
    }
    Ok(response)
}

/// One request: admit it (client, path, body, limits), route it to a
/// provider and its key ring, then attempt it with one key after another
/// until an answer goes back.
async fn conduct(
    shared: &Shared,
    request: Request<Incoming>,
    end: &mut RequestEnd,
) -> Result<Response<ResponseBody>, ProxyError> {
    let snapshot = shared.snapshot();
    let (mut parts, incoming) = request.into_parts();
    let client = auth::authenticate(
        &parts.headers,
        &snapshot,
        shared.config.clients.allow_anonymous,
    )
    .inspect_err(|error| {
        if let ProxyError::InvalidClientKey(AuthFailure::Decoy(name)) = error {
            decoy::record(shared, &decoy::Sighting::of(name.clone(), &parts));
        }
    })?;
    end.client = Some(client.name.clone());
    let path_match = route::by_path(&shared.config, parts.uri.path())?;
    let limits = body_limits(&shared.config);
    let declared_len = declared_length(&parts.headers);
    let mut body = body::receive(incoming, declared_len, limits).await?;
    body::decode_content(&mut body, &mut parts.headers, limits.max)?;
    body::drop_byte_order_mark(&mut body);
    end.request_bytes = body
        .buffered()
        .map_or(declared_len.unwrap_or(0), |b| b.len() as u64);

    let plan = plan(shared, &client.name, path_match, &body, end);
    if let (Some(model), Some(_)) = (&plan.unpriced_model, client.limits.budget_usd_micros) {
        return Err(ProxyError::ModelNotPriced {
            client: client.name.to_string(),
            model: model.to_string(),
            provider: plan.provider.name.clone(),
            price_list: plan.provider.kind.price_list().to_owned(),
        });
    }
    admission::admit(shared, &client, plan.estimate, end).await?;
    if let Some(rewritten) = plan.asks_for_usage {
        // Ask for the usage chunk on the client's behalf, and hide it from them.
        body = RequestBody::Buffered(rewritten);
    }
    let strip_usage_chunk = plan.strips_usage_chunk;
    let provider = plan.provider;
    let ring: &Arc<KeyRing> = snapshot
        .rings
        .get(&provider.name)
        .filter(|ring| !ring.is_empty())
        .ok_or_else(|| ProxyError::NoUpstreamKey {
            provider: provider.name.clone(),
        })?;
    let uri = provider
        .url_of_request(
            provider.kind.upstream_path(plan.path),
            parts.uri.path_and_query(),
        )
        .ok_or_else(|| ProxyError::UnknownRoute(parts.uri.path().to_owned()))?;
    let mut attempt = Attempt {
        shared,
        provider,
        metrics: &plan.metrics,
        ring,
        method: &parts.method,
        headers: forward::outbound_headers(provider, std::mem::take(&mut parts.headers)),
        uri,
        want: keys::Want {
            sticky: client.sticky,
            tokens: plan.estimate.tokens,
        },
        max_body: limits.max,
        idle: limits.idle,
    };
    let (upstream, open) = attempt.until_answered(&mut body, end).await?;
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => return Ok(error_answer::scrubbed_error_response(error, ring, open)),
    };
    respond(shared, upstream, ring, open, end, strip_usage_chunk)
}

/// The limits a request body is read under.
fn body_limits(config: &crate::config::Config) -> BodyLimits {
    BodyLimits {
        max: config.server.max_request_body,
        retry_buffer: config.server.retry_buffer,
        idle: config.server.body_idle_timeout,
        total: config.server.body_timeout,
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Where a request goes and what it will cost, from its path and body.
struct Plan<'a> {
    provider: &'a crate::config::Provider,
    /// Its metrics, resolved once for the request.
    metrics: crate::control::metrics::ProviderMetrics,
    /// The `/v1/…` path under the provider.
    path: &'a str,
    /// Tokens and micro-dollars to hold until the real cost is known.
    estimate: limits::Estimate,
    /// The body names a model no price row covers.
    unpriced_model: Option<Arc<str>>,
    /// The body rewritten to ask for a stream's usage, when it was.
    asks_for_usage: Option<bytes::Bytes>,
    /// The usage chunk keygate asked for is hidden from the client.
    strips_usage_chunk: bool,
}

/// Routes the request by path or model, counts it in its usage series, and
/// reads what the body asks for — as the upstream will read it.
fn plan<'a>(
    shared: &'a Shared,
    client: &Arc<str>,
    path_match: PathMatch<'a>,
    body: &RequestBody,
    end: &mut RequestEnd,
) -> Plan<'a> {
    let config = &shared.config;
    let fields = body
        .buffered()
        .and_then(|b| crate::json_skim::chat_fields(b));
    let model = route::model_of(fields.as_ref());
    let (provider, path) = match path_match {
        PathMatch::Prefixed(provider, rest) => (provider, rest),
        PathMatch::Plain(path) => (route::by_model(config, model.as_deref()), path),
    };
    let provider_metrics = shared.metrics.provider(&provider.name);
    end.provider = Some(provider_metrics.clone());
    let named_model = model.is_some();
    let label = model.map_or_else(|| Arc::from("-"), |m| model_label(&m));
    end.routed(named_model.then_some(&label), path);
    let series = shared.meter.series(
        UsageKey {
            client: client.clone(),
            provider: provider_metrics.name.clone(),
            model: label.clone(),
        },
        |key| {
            let price = config
                .prices
                .find(&provider.name, provider.kind.price_list(), &key.model)
                .map(|row| row.price);
            shared.metrics.usage_series(key, price)
        },
    );
    let price = series.metrics.tokens.price;
    end.count_in(
        series.counters,
        series.metrics.tokens,
        series.metrics.answered_ok,
    );
    let unpriced_model = (named_model && price.is_none()).then_some(label);
    // A request without a body (a `GET`) asks for nothing to be generated.
    let estimate = match body.buffered() {
        Some(b) if b.is_empty() => limits::Estimate::default(),
        _ => limits::estimate(fields.as_ref(), end.request_bytes, price),
    };
    let asks_for_usage = (config.metering.stream_usage
        && provider.kind.takes_stream_usage_option(path))
    .then(|| {
        body.buffered()
            .zip(fields.as_ref())
            .and_then(|(b, fields)| crate::usage::meter::ask_for_usage(b, fields))
    })
    .flatten();
    Plan {
        provider,
        metrics: provider_metrics,
        path,
        estimate,
        unpriced_model,
        strips_usage_chunk: asks_for_usage.is_some(),
        asks_for_usage,
    }
}

/// Everything one attempt with one key needs.
struct Attempt<'a> {
    shared: &'a Shared,
    provider: &'a crate::config::Provider,
    metrics: &'a crate::control::metrics::ProviderMetrics,
    ring: &'a Arc<KeyRing>,
    method: &'a http::Method,
    /// The headers every attempt sends ([`forward::outbound_headers`]);
    /// the last attempt possible takes them instead of a copy.
    headers: http::HeaderMap,
    uri: http::Uri,
    want: keys::Want,
    max_body: u64,
    idle: std::time::Duration,
}

/// An upstream answer to pass on: a success, or an error read whole.
type Answer = Result<Response<UpstreamBody>, error_answer::ErrorAnswer>;

impl Attempt<'_> {
    /// Forward ⇄ retry: each key at most once, and only before any response
    /// byte has gone to the client.
    async fn until_answered(
        &mut self,
        body: &mut RequestBody,
        end: &mut RequestEnd,
    ) -> Result<(Answer, Open), ProxyError> {
        let provider = self.provider;
        let mut tried = 0u64;
        loop {
            let rejected = || ProxyError::UpstreamKeyRejected {
                provider: provider.name.clone(),
            };
            let mut pick = match self.ring.pick(&self.want, tried, health::now_ms()) {
                Ok(pick) => pick,
                Err(NoPick::AllTried) => return Err(rejected()),
                Err(NoPick::AtCapacity(retry_after)) => {
                    return Err(ProxyError::KeysAtCapacity {
                        provider: provider.name.clone(),
                        retry_after,
                    })
                }
            };
            let outbound_body = body.next_attempt().ok_or_else(rejected)?;
            tried |= 1 << pick.index;
            end.attempts += 1;
            end.key_id = Some(pick.key.id.clone());
            let open = Open {
                active: ActiveGuard::new(self.metrics.active.clone()),
                key: pick.in_flight.take(),
            };
            let may_retry = self.ring.pick_would_find(tried) && body.buffered().is_some();
            let headers = if may_retry {
                self.headers.clone()
            } else {
                std::mem::take(&mut self.headers)
            };
            let upstream = self.send(&pick, headers, outbound_body, body).await?;
            let status = upstream.status();
            self.shared
                .key_events
                .observe_headroom(provider, pick.key, upstream.headers());
            // Asked again: the body may have outgrown the retry buffer on
            // its way up. Never true when the headers were given away.
            let another_key_left =
                may_retry && self.ring.pick_would_find(tried) && body.buffered().is_some();
            // An error's body is read (it is scrubbed before the client sees
            // it anyway), so the provider's kind can judge it before anything
            // is sent.
            let answer = if status.is_client_error() || status.is_server_error() {
                Err(error_answer::read_error_body(upstream, self.idle).await)
            } else {
                Ok(upstream)
            };
            let judged = judge::read_answer(provider.kind, status, answer.as_ref().err());
            let error = answer.as_ref().err();
            self.shared.key_events.record(
                self.ring,
                &pick,
                &Verdict {
                    provider: &provider.name,
                    verdict: judged.verdict,
                    status: status.as_u16(),
                    error: judged.error.as_ref(),
                    headers: error.map(|e| &e.parts.headers),
                    body: error.and_then(error_answer::ErrorAnswer::bytes),
                    another_key_left,
                },
            );
            match judged.verdict {
                KeyVerdict::Rejected if !another_key_left => return Err(rejected()),
                KeyVerdict::Rejected | KeyVerdict::OutOfCredit | KeyVerdict::RateLimited
                    if another_key_left =>
                {
                    end.fallback_reason = Some(judged.verdict.reason());
                    continue;
                }
                _ => return Ok((answer, open)),
            }
        }
    }

    /// Sends one attempt with `pick`'s key, within the first-byte timeout.
    async fn send(
        &self,
        pick: &crate::keys::Pick<'_>,
        headers: http::HeaderMap,
        outbound_body: crate::net::outbound_body::OutboundBody,
        body: &RequestBody,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let provider = self.provider;
        let key = pick.key;
        let outbound =
            forward::outbound_request(self.method, self.uri.clone(), headers, key, outbound_body);
        let timeout = self.shared.config.server.upstream_first_byte_timeout;
        let sent = Instant::now();
        let failed = match tokio::time::timeout(timeout, self.shared.upstream.send(outbound)).await
        {
            Ok(Ok(upstream)) => {
                self.metrics
                    .upstream_duration
                    .observe(sent.elapsed().as_secs_f64());
                // hyper hands back only `101 Switching Protocols` of the 1xx
                // answers: keygate does not proxy upgrades, and relaying one
                // would hand the client a raw connection to the upstream.
                if !upstream.status().is_informational() {
                    return Ok(upstream);
                }
                ProxyError::UpstreamUnavailable {
                    provider: provider.name.clone(),
                    detail: format!(
                        "upstream answered {}; keygate does not proxy protocol upgrades",
                        upstream.status()
                    ),
                }
            }
            Err(_) => ProxyError::UpstreamTimeout {
                provider: provider.name.clone(),
                after: timeout,
            },
            Ok(Err(error)) => send_failure(&provider.name, body, self.max_body, &error),
        };
        if pick.probe {
            key.health.end_probe();
        }
        Err(failed)
    }
}

/// The client's response: the upstream's, streamed and metered.
fn respond(
    shared: &Shared,
    upstream: Response<UpstreamBody>,
    ring: &Arc<KeyRing>,
    open: Open,
    end: &mut RequestEnd,
    strip_usage_chunk: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let tap = end.tap(
        upstream
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        strip_usage_chunk,
    );
    forward::client_response(
        upstream,
        ring,
        shared.config.server.stream_idle_timeout,
        open,
        tap,
    )
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
