//! OpenTelemetry traces over OTLP/HTTP (`[telemetry]`, docs/operations.md
//! "Traces"): the tracer provider `serve` starts, and what the rest of
//! keygate writes into it — a span per proxied request (attributes set by
//! `proxy::request_end` when the response ends), and spans for rotations and
//! management API calls (`keys::rotate`, `keys::management`, through the
//! OpenTelemetry API's global tracer, which is a no-op until `serve` installs
//! this one).
//!
//! Export never slows or fails a request: a finished span is handed to the
//! SDK's batch processor with a non-blocking send into a bounded queue (full:
//! the span is dropped), and a thread of the SDK's own exports the batches
//! through keygate's upstream client ([`export`]), with its timeout. With no
//! `otlp_endpoint` there is no provider at all, and the request path pays one
//! branch. Never a secret in a span: key ids, client and provider names,
//! models and counts only.

mod export;

use std::time::Duration;

use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample,
};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;
use crate::net::upstream::Upstream;

/// The instrumentation scope of every span keygate writes.
pub const SCOPE: &str = "keygate";

/// How long one export (with the exporter's retries) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished spans waiting for export; past it, new spans are dropped.
const MAX_QUEUED_SPANS: usize = 8192;

/// How long the last export may take when `serve` stops.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Why traces could not be set up (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry export to {endpoint}: {detail}")]
pub struct TelemetryError {
    endpoint: String,
    detail: String,
}

/// The running tracer provider and keygate's tracer.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Starts exporting to `[telemetry] otlp_endpoint` through `upstream`
    /// (from inside keygate's runtime); `None` when it is not set. The
    /// provider is also installed as the process's global one, for the
    /// spans of the key services.
    pub fn start(
        config: &TelemetryConfig,
        upstream: &Upstream,
    ) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(url) = &config.traces_url else {
            return Ok(None);
        };
        let error = |detail: String| TelemetryError {
            endpoint: url.to_string(),
            detail,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| error("not started from keygate's runtime".to_owned()))?;
        let client = export::ExportClient::new(upstream.clone(), runtime, url, EXPORT_TIMEOUT);
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(KeygateSampler::new(config.sample_ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer(SCOPE);
        tracing::info!(
            endpoint = %url,
            sample_ratio = config.sample_ratio,
            service_name = %config.service_name,
            "exporting OpenTelemetry traces over OTLP/HTTP"
        );
        Ok(Some(Telemetry { provider, tracer }))
    }

    /// keygate's tracer.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports what is still queued (within a few seconds: a collector that
    /// does not answer must not hold a stopping replica), then stops.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        if let Ok(Err(error)) = stopped {
            tracing::warn!(%error, "the last OpenTelemetry spans were not exported");
        }
    }
}

/// `sample_ratio` of the proxied requests (server spans, by trace id, so
/// every replica keeps the same ones); the rest — rotations and management
/// calls, rare and worth every one — always, or as their parent was.
#[derive(Debug, Clone)]
struct KeygateSampler {
    requests: Sampler,
    others: Sampler,
}

impl KeygateSampler {
    fn new(ratio: f64) -> Self {
        KeygateSampler {
            requests: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            others: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }
}

impl ShouldSample for KeygateSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let sampler = match span_kind {
            SpanKind::Server => &self.requests,
            _ => &self.others,
        };
        sampler.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::SamplingDecision;

    fn decisions(sampler: &KeygateSampler, kind: SpanKind) -> usize {
        (1..=1000u128)
            .filter(|n| {
                let id = TraceId::from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
                sampler
                    .should_sample(None, id, "span", &kind, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample
            })
            .count()
    }

    #[test]
    fn the_ratio_samples_requests_and_every_rotation() {
        let none = KeygateSampler::new(0.0);
        assert_eq!(decisions(&none, SpanKind::Server), 0);
        assert_eq!(decisions(&none, SpanKind::Internal), 1000);
        assert_eq!(decisions(&none, SpanKind::Client), 1000);
        let all = KeygateSampler::new(1.0);
        assert_eq!(decisions(&all, SpanKind::Server), 1000);
        let some = decisions(&KeygateSampler::new(0.25), SpanKind::Server);
        assert!((150..350).contains(&some), "{some} of 1000 at 0.25");
    }
}
