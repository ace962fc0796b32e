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
    usage: Option<Usage>,
    reservation: Option<Reservation>,
    done: bool,
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
    }
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        // Dropped before its end was run: the client went away mid-body.
        self.finish(Ending::ClientGone);
    }
}
