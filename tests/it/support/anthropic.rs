//! A recording mock of api.anthropic.com's Messages API, answering as
//! Anthropic does (shapes from the API reference and anthropic-sdk-python):
//!
//! - `POST /v1/messages` needs `x-api-key` (none: 401 "x-api-key header is
//!   required"; wrong: 401 `authentication_error` "invalid x-api-key") and
//!   `anthropic-version` (missing: 400 `invalid_request_error`); refuses a
//!   top-level field the API does not know with 400 "<field>: Extra inputs
//!   are not permitted" (as for `stream_options`), and a missing required one
//!   with "<field>: Field required".
//! - It answers a JSON `message` with `usage`, or with `"stream": true` the
//!   real event sequence: `message_start` (input count, output 1),
//!   `content_block_start`, `ping`, one `content_block_delta` per piece,
//!   `content_block_stop`, `message_delta` (cumulative output count),
//!   `message_stop`. Every answer has a `request-id` header; errors carry it as
//!   `request_id` in the body too.
//! - A request that uses `cache_control` anywhere reads [`CACHE_READ`] tokens
//!   from the prompt cache (`cache_read_input_tokens`), as a warm cache would.
//! - Other paths: 404 `not_found_error`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::{Method, Response};
use serde_json::{json, Value};

use super::mock::Seen;
use super::recording::{event_stream, full, Body, Gate, Recording};

/// The input tokens of every request (`input_tokens`, cache excluded).
pub const INPUT_TOKENS: u64 = 25;
/// Cache-read tokens of a request that uses `cache_control`.
pub const CACHE_READ: u64 = 8;
/// The text pieces of an answer, one `content_block_delta` each.
pub const PIECES: [&str; 5] = ["Hello", " from", " the", " Anthropic", " mock."];
/// The output tokens of an answer (one per piece).
pub const OUTPUT_TOKENS: u64 = PIECES.len() as u64;

/// The top-level fields of a Messages request the API knows.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "container",
    "context_management",
    "mcp_servers",
    "metadata",
    "service_tier",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
];

struct State {
    key: String,
    requests: AtomicUsize,
    gate: Gate,
}

/// A running Anthropic mock; stops when dropped.
pub struct AnthropicMock {
    server: Recording,
    state: Arc<State>,
}

impl AnthropicMock {
    /// A mock that accepts the upstream key `key`.
    pub async fn start(key: &str) -> AnthropicMock {
        let state = Arc::new(State {
            key: key.to_string(),
            requests: AtomicUsize::new(0),
            gate: Gate::default(),
        });
        let st = state.clone();
        let server = Recording::start(move |seen| {
            let st = st.clone();
            async move { answer(&st, &seen) }
        })
        .await;
        AnthropicMock { server, state }
    }

    /// `http://127.0.0.1:PORT`, for a provider's `base_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request the mock saw, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.server.requests()
    }

    /// The most recent request.
    pub fn last(&self) -> Seen {
        self.server.last()
    }

    /// Streams started from now on send `message_start` and then wait for
    /// [`AnthropicMock::release`].
    pub fn hold_streams(&self) {
        self.state.gate.close();
    }

    /// Let held streams go on.
    pub fn release(&self) {
        self.state.gate.open();
    }
}

fn request_id(st: &State) -> String {
    let n = st.requests.fetch_add(1, Ordering::SeqCst);
    format!("req_011CMockAnthropic{n:06}")
}

fn error(status: u16, kind: &str, message: &str, request_id: &str) -> Response<Body> {
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    full(
        status,
        &[
            ("content-type", "application/json"),
            ("request-id", request_id),
        ],
        body.to_string(),
    )
}

/// The usage object of an answer to `request` with `output` tokens so far.
pub fn usage(request: &Value, output: u64) -> Value {
    let cached = if request.to_string().contains("\"cache_control\"") {
        CACHE_READ
    } else {
        0
    };
    json!({
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
        "service_tier": "standard",
    })
}

/// The prompt tokens keygate should meter for `request` (cache reads count).
pub fn metered_prompt(request: &Value) -> u64 {
    let u = usage(request, 0);
    u["input_tokens"].as_u64().unwrap()
        + u["cache_creation_input_tokens"].as_u64().unwrap()
        + u["cache_read_input_tokens"].as_u64().unwrap()
}

fn answer(st: &State, seen: &Seen) -> Response<Body> {
    let id = request_id(st);
    match seen.headers.get("x-api-key").map(|v| v.as_bytes()) {
        None => {
            return error(
                401,
                "authentication_error",
                "x-api-key header is required",
                &id,
            )
        }
        Some(key) if key != st.key.as_bytes() => {
            return error(401, "authentication_error", "invalid x-api-key", &id)
        }
        Some(_) => {}
    }
    if seen.headers.get("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            &id,
        );
    }
    let path = seen.uri.split('?').next().unwrap_or("");
    if (&seen.method, path) != (&Method::POST, "/v1/messages") {
        return error(404, "not_found_error", "Not Found", &id);
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&seen.body) else {
        return error(
            400,
            "invalid_request_error",
            "There was an error parsing the body of your request.",
            &id,
        );
    };
    if let Some(field) = request.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return error(
            400,
            "invalid_request_error",
            &format!("{field}: Extra inputs are not permitted"),
            &id,
        );
    }
    for required in ["model", "messages", "max_tokens"] {
        if !request.contains_key(required) {
            return error(
                400,
                "invalid_request_error",
                &format!("{required}: Field required"),
                &id,
            );
        }
    }
    let request = Value::Object(request);
    let model = request["model"].as_str().unwrap_or("claude").to_string();
    let headers = [
        ("request-id", id.as_str()),
        (
            "anthropic-organization-id",
            "3c9f5a7e-0000-4000-8000-mockorg00001",
        ),
    ];
    if request["stream"] == json!(true) {
        return event_stream(
            &headers,
            stream_events(&request, &model),
            st.gate.receiver(),
        );
    }
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    full(200, &headers, message(&request, &model).to_string())
}

/// The JSON `message` the mock answers.
pub fn message(request: &Value, model: &str) -> Value {
    json!({
        "id": "msg_01MockAnthropicJson",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": PIECES.concat()}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": usage(request, OUTPUT_TOKENS),
    })
}

/// The SSE events (`event: …\ndata: …\n\n`) of a streamed answer.
pub fn stream_events(request: &Value, model: &str) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_01MockAnthropicStream", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": usage(request, 1),
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        // Anthropic writes the ping with a space after the colon.
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_string(),
    ];
    for piece in PIECES {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": OUTPUT_TOKENS}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// The mock itself answers as the tests assume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_behaves_like_anthropic() {
    use super::client::{send_h1, Req};

    let mock = AnthropicMock::start("sk-ant-test-good").await;
    let addr = mock.server.addr;
    let body = json!({"model": "claude-x", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let messages = |key: Option<&str>, body: &Value| {
        let req = Req::post("/v1/messages").json(body);
        let req = match key {
            Some(key) => req.header("x-api-key", key),
            None => req,
        };
        req.header("anthropic-version", "2023-06-01")
    };
    let r = send_h1(addr, messages(None, &body)).await;
    assert_eq!(r.status, 401);
    let r = send_h1(addr, messages(Some("sk-ant-wrong"), &body)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "invalid x-api-key");
    let r = send_h1(
        addr,
        Req::post("/v1/messages")
            .header("x-api-key", "sk-ant-test-good")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let mut extra = body.clone();
    extra["stream_options"] = json!({"include_usage": true});
    let r = send_h1(addr, messages(Some("sk-ant-test-good"), &extra)).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "stream_options: Extra inputs are not permitted"
    );
    let r = send_h1(addr, messages(Some("sk-ant-test-good"), &body)).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("request-id").is_some());
    assert_eq!(r.json(), message(&body, "claude-x"));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = send_h1(addr, messages(Some("sk-ant-test-good"), &streamed)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), stream_events(&streamed, "claude-x").concat());
    assert_eq!(mock.requests().len(), 6);
}
