//! The end of one request, in one place: what the conductor learned about it,
//! the usage counters and the budget reservation, the request metrics and the
//! one access-log line. It runs once, when the response is over: at once for
//! an answer keygate holds whole (its own errors, a scrubbed upstream error),
//! and for a streamed upstream body when the body ends, is cut, or is dropped
//! because the client went away — so the log line says how it really ended.
//!
//! The counters and the reservation stay here until the response's meter tap
//! is made from them ([`RequestEnd::tap`]); the tap settles them as the body
//! ends, and this value then writes the line. Key ids and names only, never a
//! secret.
//!
//! With `[telemetry] otlp_endpoint` set, the end also records the request's
//! span ([`RequestEnd::trace`]): started when the conductor started, ended
//! now, with the GenAI semantic conventions' attributes and keygate's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::control::metrics::ProviderMetrics;
use crate::control::state::Shared;
use crate::usage::limits::Reservation;
use crate::usage::meter::TokenMetrics;
use crate::usage::meter::{Outcome, UsageCounters};
use crate::usage::tap::MeterTap;

/// How a response ended, as the access log line's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The whole body reached the client.
    Complete,
    /// The upstream stream broke off (its reason becomes the line's `error`).
    Cut(&'static str),
    /// The client went away before the body ended.
    ClientGone,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Cut(_) => "cut",
            Ending::ClientGone => "client_gone",
        }
    }
}

/// Everything a request's end needs, gathered by the conductor as it goes.
pub struct RequestEnd {
    shared: Arc<Shared>,
    started: Instant,
    /// Status and time to the response head, once known.
    head: Option<(StatusCode, Duration)>,
    /// Client name.
    pub client: Option<Arc<str>>,
    /// The provider's metric series.
    pub provider: Option<ProviderMetrics>,
    /// The key of the last attempt.
    pub key_id: Option<Arc<str>>,
    /// Attempts made upstream.
    pub attempts: u32,
    /// keygate's error code, if it answered with one.
    pub error: Option<&'static str>,
    /// Why the client key was refused (`keygate_client_auth_failures_total`).
    pub auth_failure: Option<&'static str>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Why the request went again with another key (the last reason:
    /// `rejected`, `exhausted`, `rate_limited`).
    pub fallback_reason: Option<&'static str>,
    /// Input and output tokens the answer reported, once its body ended.
    pub tokens: Option<(u64, u64)>,
    /// What traces alone need: the model asked for and the operation.
    traced: Option<Traced>,
    usage: Option<Usage>,
    reservation: Option<Reservation>,
    done: bool,
}

/// What only the request's span carries (kept only while traces are on).
struct Traced {
    model: Option<Arc<str>>,
    operation: Option<&'static str>,
}

/// The usage series of this request's client, provider and model.
struct Usage {
    /// The ledger's counters and the token series, until a tap takes them
    /// over (it then records the request's usage itself).
    meter: Option<(Arc<UsageCounters>, TokenMetrics)>,
    /// `keygate_requests_total` of this client and provider for a 200.
    answered_ok: prometheus::IntCounter,
}

impl RequestEnd {
    /// The end of a request that started at `started`.
    pub fn new(shared: Arc<Shared>, started: Instant) -> Self {
        RequestEnd {
            shared,
            started,
            head: None,
            client: None,
            provider: None,
            key_id: None,
            attempts: 0,
            error: None,
            auth_failure: None,
            request_bytes: 0,
            fallback_reason: None,
            tokens: None,
            traced: None,
            usage: None,
            reservation: None,
            done: false,
        }
    }

    /// The usage series the request counts in, once routed.
    pub fn count_in(
        &mut self,
        counters: Arc<UsageCounters>,
        tokens: TokenMetrics,
        answered_ok: prometheus::IntCounter,
    ) {
        self.usage = Some(Usage {
            meter: Some((counters, tokens)),
            answered_ok,
        });
    }

    /// Where the request was routed: the model its body named, and its
    /// path under the provider (for the span's operation). Kept only when
    /// traces are on.
    pub fn routed(&mut self, model: Option<&Arc<str>>, path: &str) {
        if self.shared.telemetry.is_some() {
            self.traced = Some(Traced {
                model: model.cloned(),
                operation: operation_of(path),
            });
        }
    }

    /// Tokens reserved against the client's limits, until settled.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// The meter tap of an upstream body of `content_type`, made from this
    /// request's counters and reservation (`None` before routing).
    pub fn tap(&mut self, content_type: Option<&str>, strip_usage_chunk: bool) -> Option<MeterTap> {
        let (counters, tokens) = self.usage.as_mut()?.meter.take()?;
        let key = self
            .provider
            .as_ref()
            .zip(self.key_id.as_ref())
            .map(|(provider, key_id)| self.shared.key_meter.counters(&provider.name, key_id));
        let tap = MeterTap::new(
            counters,
            tokens,
            content_type,
            strip_usage_chunk,
            Outcome {
                request_bytes: self.request_bytes,
                ..Outcome::default()
            },
            self.reservation.take(),
        );
        Some(match key {
            Some(key) => tap.for_key(key),
            None => tap,
        })
    }

    /// The response head is ready with `status`.
    pub fn head(&mut self, status: StatusCode) {
        self.head = Some((status, self.started.elapsed()));
    }

    /// Runs the end once: counters (unless a tap recorded them), metrics and
    /// the log line.
    pub fn finish(&mut self, ending: Ending) {
        if self.done {
            return;
        }
        self.done = true;
        let (status, latency) = self
            .head
            .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, self.started.elapsed()));
        if let Ending::Cut(reason) = ending {
            self.error.get_or_insert(reason);
        }
        // No body reported usage: nothing was spent upstream.
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(Some(crate::usage::limits::Charge {
                tokens: 0,
                micros: 0,
            }));
        }
        let client = self.client.as_deref().unwrap_or("-");
        let provider = self.provider.as_ref().map_or("-", |p| &*p.name);
        if let Some(usage) = &self.usage {
            // Answered without a tap (keygate's own error, or a scrubbed upstream error).
            if let Some((counters, _)) = &usage.meter {
                counters.record(&Outcome {
                    error: status.as_u16() >= 400,
                    request_bytes: self.request_bytes,
                    ..Outcome::default()
                });
            }
            if status == StatusCode::OK {
                usage.answered_ok.inc();
            }
        }
        if self.usage.is_none() || status != StatusCode::OK {
            self.shared
                .metrics
                .requests_total
                .with_label_values(&[client, provider, status.as_str()])
                .inc();
        }
        if let Some(provider) = &self.provider {
            provider.request_duration.observe(latency.as_secs_f64());
        }
        if let Some(reason) = self.auth_failure {
            self.shared
                .metrics
                .client_auth_failures
                .with_label_values(&[reason])
                .inc();
        }
        tracing::info!(
            target: "keygate::proxy",
            client,
            provider,
            status = status.as_u16(),
            latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            // Only on a refused client key (a `None` field is left out).
            auth_failure = self.auth_failure,
            key_id = self.key_id.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            error = self.error.unwrap_or("-"),
            // Only when the body did not end whole (a `None` field is left out).
            outcome = (ending != Ending::Complete).then(|| ending.name()),
            "request"
        );
        if let Some(telemetry) = &self.shared.telemetry {
            self.trace(telemetry.tracer(), status, ending);
        }
    }

    /// Records the request's span: from the conductor's start to now.
    fn trace(
        &self,
        tracer: &opentelemetry_sdk::trace::SdkTracer,
        status: StatusCode,
        ending: Ending,
    ) {
        use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
        use opentelemetry::{KeyValue, Value};
        let now = std::time::SystemTime::now();
        let start = now.checked_sub(self.started.elapsed()).unwrap_or(now);
        // Sampled first: a request left out costs no attribute at all.
        let mut span = tracer
            .span_builder("keygate.request")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start(tracer);
        if !span.is_recording() {
            return;
        }
        let traced = self.traced.as_ref();
        let model = traced.and_then(|t| t.model.clone());
        let operation = traced.and_then(|t| t.operation);
        match (operation, &model) {
            (Some(operation), Some(model)) => span.update_name(format!("{operation} {model}")),
            (Some(operation), None) => span.update_name(operation),
            _ => {}
        }
        let mut attributes = Vec::with_capacity(16);
        let mut put = |key: &'static str, value: Option<Value>| {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value));
            }
        };
        // Names and ids are shared (`Arc<str>`) or static: nothing is copied.
        let count = |value: u64| Some(Value::I64(i64::try_from(value).unwrap_or(i64::MAX)));
        let provider = self.provider.as_ref().map(|p| p.name.clone());
        let kind = provider
            .as_deref()
            .and_then(|name| self.shared.config.providers.get(name))
            .map(|p| Value::from(p.kind.gen_ai_system()));
        put("gen_ai.system", kind);
        put("gen_ai.operation.name", operation.map(Value::from));
        put("gen_ai.request.model", model.map(Value::from));
        if let Some((input, output)) = self.tokens {
            put("gen_ai.usage.input_tokens", count(input));
            put("gen_ai.usage.output_tokens", count(output));
        }
        put(
            "http.response.status_code",
            count(u64::from(status.as_u16())),
        );
        put("keygate.client", self.client.clone().map(Value::from));
        put("keygate.provider", provider.map(Value::from));
        put("keygate.key_id", self.key_id.clone().map(Value::from));
        put("keygate.attempts", count(u64::from(self.attempts)));
        put(
            "keygate.fallback_reason",
            self.fallback_reason.map(Value::from),
        );
        put("keygate.auth_failure", self.auth_failure.map(Value::from));
        put("keygate.outcome", Some(Value::from(ending.name())));
        put("error.type", self.error.map(Value::from));
        span.set_attributes(attributes);
        if status.is_server_error() || matches!(ending, Ending::Cut(_)) {
            span.set_status(Status::error(self.error.unwrap_or("upstream error")));
        }
        span.end_with_timestamp(now);
    }
}

/// The GenAI operation (`gen_ai.operation.name`) of a path under a provider.
fn operation_of(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions")
        || path.ends_with("/messages")
        || path.ends_with("/responses")
    {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        // Dropped before its end was run: the client went away mid-body.
        self.finish(Ending::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::operation_of;

    #[test]
    fn the_path_names_the_genai_operation() {
        for (path, operation) in [
            ("/v1/chat/completions", Some("chat")),
            ("/chat/completions/", Some("chat")),
            ("/v1/messages", Some("chat")),
            ("/v1/responses", Some("chat")),
            ("/v1/completions", Some("text_completion")),
            ("/v1/embeddings", Some("embeddings")),
            ("/v1/models", None),
            ("/v1/responses/resp_123", None),
        ] {
            assert_eq!(operation_of(path), operation, "{path}");
        }
    }
}
