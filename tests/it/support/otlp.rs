//! An OpenTelemetry collector as keygate meets one: a real OTLP/HTTP
//! receiver on 127.0.0.1:0 that accepts `POST /v1/traces` with
//! `application/x-protobuf`, decodes each `ExportTraceServiceRequest` with
//! the official protobuf definitions (`opentelemetry-proto`), and keeps the
//! spans and the raw bytes (for the leak check).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::json;

use super::eventually;
use super::recording::{full, Recording};

/// One span as the collector received it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    /// `SPAN_KIND_*`: 2 server, 3 client, 1 internal.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// `STATUS_CODE_*`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The resource's attributes (`service.name`, …).
    pub resource: BTreeMap<String, serde_json::Value>,
}

impl ReceivedSpan {
    /// An attribute's value as JSON (`Null` when absent).
    pub fn attr(&self, key: &str) -> serde_json::Value {
        self.attributes
            .get(key)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Received {
    /// Hold every export without answering (a collector that hangs).
    hang: bool,
    /// Exports that arrived while hanging.
    held: usize,
    spans: Vec<ReceivedSpan>,
    /// Every export's body, as bytes.
    raw: Vec<Vec<u8>>,
    /// Content types the exports came with.
    content_types: Vec<String>,
}

pub struct Collector {
    recording: Recording,
    received: Arc<Mutex<Received>>,
}

impl Collector {
    pub async fn start() -> Collector {
        let received = Arc::new(Mutex::new(Received::default()));
        let keeping = received.clone();
        let recording = Recording::start(move |seen| {
            let received = keeping.clone();
            async move {
                if seen.method != http::Method::POST || seen.uri != "/v1/traces" {
                    return full(404, &[], "");
                }
                let hang = {
                    let mut received = received.lock().unwrap();
                    received.held += usize::from(received.hang);
                    received.hang
                };
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let Ok(request) = ExportTraceServiceRequest::decode(&seen.body[..]) else {
                    return full(400, &[], "not an ExportTraceServiceRequest");
                };
                let mut received = received.lock().unwrap();
                received.raw.push(seen.body.to_vec());
                received.content_types.push(
                    seen.headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                );
                for resource_spans in request.resource_spans {
                    let resource = attributes(
                        resource_spans
                            .resource
                            .map(|r| r.attributes)
                            .unwrap_or_default(),
                    );
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            let status = span.status.unwrap_or_default();
                            received.spans.push(ReceivedSpan {
                                name: span.name,
                                kind: span.kind,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                                start_unix_nano: span.start_time_unix_nano,
                                end_unix_nano: span.end_time_unix_nano,
                                status_code: status.code,
                                status_message: status.message,
                                attributes: attributes(span.attributes),
                                resource: resource.clone(),
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                full(200, &[("content-type", "application/x-protobuf")], "")
            }
        })
        .await;
        Collector {
            recording,
            received,
        }
    }

    /// From now on, hold every export and never answer.
    pub fn hang(&self) {
        self.received.lock().unwrap().hang = true;
    }

    /// Exports held unanswered since [`Collector::hang`].
    pub fn held(&self) -> usize {
        self.received.lock().unwrap().held
    }

    /// The base URL, for `[telemetry] otlp_endpoint`.
    pub fn url(&self) -> String {
        self.recording.url()
    }

    /// A `[telemetry]` table pointing at this collector.
    pub fn table(&self, extra: &str) -> String {
        format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\n{extra}\n",
            self.url()
        )
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Waits (up to 15 s) until `count` spans named `name` arrived.
    pub async fn wait_for(&self, name: &str, count: usize) -> Vec<ReceivedSpan> {
        let found = eventually(Duration::from_secs(15), || async {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.name == name)
                .collect();
            (spans.len() >= count).then_some(spans)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{count} span(s) named {name:?} did not reach the collector within 15 s; it has {:?}",
                self.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    }

    /// Every export's bytes, as text (protobuf strings are UTF-8), for
    /// the leak check.
    pub fn raw_text(&self) -> String {
        let received = self.received.lock().unwrap();
        received
            .raw
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The content type of every export.
    pub fn content_types(&self) -> Vec<String> {
        self.received.lock().unwrap().content_types.clone()
    }
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, serde_json::Value> {
    list.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(Value::StringValue(s)) => json!(s),
                Some(Value::IntValue(i)) => json!(i),
                Some(Value::BoolValue(b)) => json!(b),
                Some(Value::DoubleValue(d)) => json!(d),
                other => json!(format!("{other:?}")),
            };
            (kv.key, value)
        })
        .collect()
}
