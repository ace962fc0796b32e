//! The key services' spans (docs/operations.md "Traces"): a rotation
//! (`keygate.rotation`) and each call to a provider's management API
//! (`keygate.management_call`, the child of the rotation it is part of).
//!
//! Written through the OpenTelemetry API's global tracer, which is a no-op
//! until `serve` exports traces (`control::telemetry`); the CLI's own
//! rotations therefore cost nothing. Ids, names and statuses only, never a
//! secret.

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

use crate::keys::ops::Promotion;

/// The tracer's name (the instrumentation scope).
const SCOPE: &str = "keygate";

/// A rotation's span (`keygate.rotation`): the management API calls made
/// inside [`Self::around`] are its children.
pub struct RotationTrace(Context);

impl RotationTrace {
    /// Starts the span of a rotation of `provider`'s key.
    pub fn start(provider: &str, minted: bool) -> RotationTrace {
        let tracer = opentelemetry::global::tracer(SCOPE);
        let span = tracer
            .span_builder("keygate.rotation")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("keygate.provider", provider.to_owned()),
                KeyValue::new("keygate.minted", minted),
            ])
            .start(&tracer);
        RotationTrace(Context::current_with_span(span))
    }

    /// `work`, run inside the rotation's span.
    pub fn around<F: std::future::Future>(
        &self,
        work: F,
    ) -> opentelemetry::context::WithContext<F> {
        opentelemetry::context::FutureExt::with_context(work, self.0.clone())
    }

    /// Ends the span with the keys it moved, or the error.
    pub fn end(self, result: Result<&Promotion, &(impl std::fmt::Display + ?Sized)>) {
        let span = self.0.span();
        match result {
            Ok(promotion) => {
                span.set_attribute(KeyValue::new("keygate.key_id", promotion.promoted.clone()));
                if let Some(demoted) = &promotion.demoted {
                    span.set_attribute(KeyValue::new("keygate.previous_key_id", demoted.clone()));
                }
                if let Some(retired) = &promotion.retired {
                    span.set_attribute(KeyValue::new("keygate.retired_key_id", retired.clone()));
                }
            }
            Err(error) => span.set_status(Status::error(error.to_string())),
        }
        span.end();
    }
}

/// One management API call's span; a child of the current rotation's.
pub struct ManagementCallTrace(opentelemetry::global::BoxedSpan);

impl ManagementCallTrace {
    /// Starts the span of `action` (`METHOD` to the management API at `url`).
    pub fn start(provider: &str, action: &str, method: &http::Method, url: &str) -> Self {
        let tracer = opentelemetry::global::tracer(SCOPE);
        let span = tracer
            .span_builder("keygate.management_call")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("keygate.provider", provider.to_owned()),
                KeyValue::new("keygate.action", action.to_owned()),
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("keygate.management_url", url.to_owned()),
            ])
            .start(&tracer);
        ManagementCallTrace(span)
    }

    /// Ends the span with the answer's status, or the error.
    pub fn end(mut self, status: Option<u16>, error: Option<&impl std::fmt::Display>) {
        if let Some(status) = status {
            self.0.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(error) = error {
            self.0.set_status(Status::error(error.to_string()));
        }
        self.0.end();
    }
}
