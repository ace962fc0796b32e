//! The OTLP exporter's HTTP client: keygate's own upstream client (rustls,
//! `upstream_ca_file`, connection reuse) instead of a second HTTP stack.
//!
//! The SDK's batch processor exports from a thread of its own, polling this
//! client outside any runtime; each export therefore runs as a task of
//! keygate's runtime, and the thread waits for it — never a request's task.
//! A collector that is down or slow costs that thread its timeout and the
//! spans of the moment, nothing else. The operator hears about it once per
//! change (failing, working again), not once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::Upstream;

/// A collector's answer is read up to this much (it is a small protobuf).
const MAX_ANSWER: usize = 64 * 1024;

/// Sends each export through [`Upstream`] on keygate's runtime.
pub(super) struct ExportClient {
    upstream: Upstream,
    runtime: tokio::runtime::Handle,
    /// `scheme://host:port` of the collector, for the log lines.
    collector: String,
    timeout: Duration,
    /// The last export failed (the next success is announced).
    failing: AtomicBool,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("collector", &self.collector)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    pub(super) fn new(
        upstream: Upstream,
        runtime: tokio::runtime::Handle,
        url: &http::Uri,
        timeout: Duration,
    ) -> Self {
        let collector = match (url.scheme_str(), url.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => url.to_string(),
        };
        ExportClient {
            upstream,
            runtime,
            collector,
            timeout,
            failing: AtomicBool::new(false),
        }
    }

    /// Logs a change between working and failing exports.
    fn note(&self, outcome: &Result<u16, String>) {
        let failure = match outcome {
            Ok(status) if (200..300).contains(status) => None,
            Ok(status) => Some(format!("the collector answered HTTP {status}")),
            Err(detail) => Some(detail.clone()),
        };
        match failure {
            Some(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        collector = %self.collector,
                        error = %error,
                        "OpenTelemetry trace export failed; spans are dropped until the collector answers again (requests are not affected)"
                    );
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(collector = %self.collector, "OpenTelemetry trace export works again");
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, OutboundBody::Full(Some(body)));
        let (upstream, timeout) = (self.upstream.clone(), self.timeout);
        let exchange = self
            .runtime
            .spawn(async move { upstream.exchange(request, MAX_ANSWER, timeout).await })
            .await;
        let answer = match exchange {
            Ok(Some(Ok((status, body)))) => Ok((status, body)),
            Ok(Some(Err(error))) => Err(error.detail()),
            Ok(None) => Err(format!("no answer within {timeout:?}")),
            Err(_) => Err("the export was stopped with the runtime".to_owned()),
        };
        self.note(
            &answer
                .as_ref()
                .map(|(status, _)| *status)
                .map_err(Clone::clone),
        );
        let (status, body) = answer?;
        Ok(Response::builder().status(status).body(body)?)
    }
}
