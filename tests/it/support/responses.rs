//! A recording mock of OpenAI's Responses API (`POST /v1/responses`),
//! answering as api.openai.com does: Bearer auth (OpenAI's 401 otherwise), a
//! JSON `response` object whose `usage` has `input_tokens`, `output_tokens`,
//! `total_tokens` and their details, or with `"stream": true` the real event
//! sequence (`response.created`, `response.in_progress` — both with
//! `"usage":null` —, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta` per piece,
//! `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.completed` with the usage; no
//! `[DONE]`). Its `stream_options` knows only `include_obfuscation`: any other
//! field is a 400 `unknown_parameter`, as OpenAI answers.

use hyper::{Method, Response};
use serde_json::{json, Value};

use super::mock::Seen;
use super::recording::{event_stream, full, Body, Gate, Recording};

/// Input tokens of every request.
pub const INPUT_TOKENS: u64 = 37;
/// The text pieces of an answer, one `response.output_text.delta` each.
pub const PIECES: [&str; 3] = ["Hi", " there", "!"];
/// Output tokens of every answer.
pub const OUTPUT_TOKENS: u64 = 11;

/// A running Responses API mock; stops when dropped.
pub struct ResponsesMock {
    server: Recording,
}

impl ResponsesMock {
    /// A mock that accepts `Authorization: Bearer KEY`.
    pub async fn start(key: &str) -> ResponsesMock {
        let key = key.to_string();
        let gate = std::sync::Arc::new(Gate::default());
        let server = Recording::start(move |seen| {
            let (key, gate) = (key.clone(), gate.clone());
            async move { answer(&key, &gate, &seen) }
        })
        .await;
        ResponsesMock { server }
    }

    /// `http://127.0.0.1:PORT`, for a provider's `base_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The most recent request.
    pub fn last(&self) -> Seen {
        self.server.last()
    }

    /// Every request the mock saw, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.server.requests()
    }
}

fn openai_error(
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<Body> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    full(
        status,
        &[("content-type", "application/json")],
        body.to_string(),
    )
}

/// The usage object of a finished response.
pub fn usage() -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
    })
}

/// The `response` object, `completed` (with usage) or `in_progress` (usage null).
pub fn response(model: &str, completed: bool) -> Value {
    let text = PIECES.concat();
    json!({
        "id": "resp_mock0001",
        "object": "response",
        "created_at": 1_741_290_958u64,
        "status": if completed { "completed" } else { "in_progress" },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": if completed {
            json!([{"type": "message", "id": "msg_mock0001", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}])
        } else {
            json!([])
        },
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": true,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": if completed { usage() } else { Value::Null },
        "user": null,
        "metadata": {},
    })
}

/// The SSE events of a streamed answer.
pub fn stream_events(model: &str) -> Vec<String> {
    let mut seq = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {name}\ndata: {data}\n\n")
    };
    let item = |status: &str, content: Value| json!({"id": "msg_mock0001", "type": "message", "status": status, "role": "assistant", "content": content});
    let text = PIECES.concat();
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let at = json!({"item_id": "msg_mock0001", "output_index": 0, "content_index": 0});
    let with = |mut base: Value, extra: Value| {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let mut events = vec![
        event(
            "response.created",
            json!({"response": response(model, false)}),
        ),
        event(
            "response.in_progress",
            json!({"response": response(model, false)}),
        ),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": item("in_progress", json!([]))}),
        ),
        event(
            "response.content_part.added",
            with(at.clone(), json!({"part": part("")})),
        ),
    ];
    for piece in PIECES {
        events.push(event(
            "response.output_text.delta",
            with(at.clone(), json!({"delta": piece, "logprobs": []})),
        ));
    }
    events.push(event(
        "response.output_text.done",
        with(at.clone(), json!({"text": text, "logprobs": []})),
    ));
    events.push(event(
        "response.content_part.done",
        with(at, json!({"part": part(&text)})),
    ));
    events.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", json!([part(&text)]))}),
    ));
    events.push(event(
        "response.completed",
        json!({"response": response(model, true)}),
    ));
    events
}

fn answer(key: &str, gate: &Gate, seen: &Seen) -> Response<Body> {
    let bearer = seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(key) {
        return openai_error(
            401,
            "Incorrect API key provided.",
            None,
            Some("invalid_api_key"),
        );
    }
    let path = seen.uri.split('?').next().unwrap_or("");
    if (&seen.method, path) != (&Method::POST, "/v1/responses") {
        return openai_error(
            404,
            &format!("Invalid URL ({} {path})", seen.method),
            None,
            None,
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&seen.body) else {
        return openai_error(
            400,
            "We could not parse the JSON body of your request.",
            None,
            None,
        );
    };
    if let Some(options) = request["stream_options"].as_object() {
        if let Some(field) = options.keys().find(|k| *k != "include_obfuscation") {
            let param = format!("stream_options.{field}");
            return openai_error(
                400,
                &format!("Unknown parameter: '{param}'."),
                Some(&param),
                Some("unknown_parameter"),
            );
        }
    }
    let model = request["model"].as_str().unwrap_or("gpt-4.1").to_string();
    let headers = [
        ("x-request-id", "req_mockresponses0001"),
        ("openai-processing-ms", "12"),
    ];
    if request["stream"] == json!(true) {
        return event_stream(&headers, stream_events(&model), gate.receiver());
    }
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    full(200, &headers, response(&model, true).to_string())
}
