//! Usage as each API reports it (docs/design.md §7, §11; README "Usage metering"):
//! Anthropic's Messages API (JSON, and streams whose input count comes from
//! `message_start` and output count from the last `message_delta`; prompt-cache
//! reads count into the prompt) and OpenAI's Responses API (`usage` of the
//! response, or of `response.completed`), metered through a real keygate
//! against mocks that answer as those APIs do. `stream_options` is added only
//! where the API has it (Chat Completions, Completions) — Anthropic refuses an
//! unknown field with a 400 — and then spliced into the client's own bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::anthropic::{self, AnthropicMock};
use crate::support::client::{next_data, open_h1, read_body};
use crate::support::keygate::tail;
use crate::support::mock::sse_events;
use crate::support::responses::{self, ResponsesMock};
use crate::support::usage::{mock_stream_usage, row, rows, Row, Totals};
use crate::support::{Env, Req, OPENAI_KEY};

/// The anthropic upstream key (obviously fake).
const ANTHROPIC_KEY: &str = "sk-ant-test-Wq3Rt8Yp1Lk6Mn4Bv9Cx2Zs7Df0Gh";

/// `serve` flushes the ledger this often in these tests.
const FLUSH: (&str, &str) = ("KEYGATE_METERING__FLUSH_INTERVAL", "200ms");

/// The ledger's rows once `done` holds (bounded).
async fn ledger_until(
    env: &Env,
    done: impl Fn(&BTreeMap<Row, Totals>) -> bool,
) -> BTreeMap<Row, Totals> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = env.kg.run(&["usage", "--json"]);
        out.assert_ok("usage --json");
        let found = rows(&serde_json::from_str(out.stdout.trim()).unwrap());
        if done(&found) || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A keygate with provider `anthropic` (`auth = "x-api-key"`) at the mock.
async fn anthropic_env() -> (Env, AnthropicMock) {
    let mock = AnthropicMock::start(ANTHROPIC_KEY).await;
    let url = mock.url();
    let env = Env::setup()
        .config(move |b| b.provider("anthropic", &url, "x-api-key"))
        .key("anthropic", ANTHROPIC_KEY, &[])
        .serve_env(FLUSH.0, FLUSH.1)
        .start()
        .await;
    (env, mock)
}

/// A Messages request as the Anthropic SDK sends it, with the client key in `x-api-key`.
fn messages(env: &Env, body: &str) -> Req {
    Req::post("/anthropic/v1/messages")
        .header("x-api-key", &env.client_key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_messages_json_and_stream_are_metered_and_get_no_stream_options() {
    let (env, mock) = anthropic_env().await;

    // JSON, with a cached system prompt: cache reads count into the prompt.
    let json_body = r#"{"model":"claude-json","max_tokens":256,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"Hi"}]}"#;
    let resp = env.server.send(messages(&env, json_body)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let request: Value = serde_json::from_str(json_body).unwrap();
    assert_eq!(resp.json(), anthropic::message(&request, "claude-json"));
    let seen = mock.last();
    assert_eq!(seen.header("x-api-key").as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(
        seen.body,
        json_body.as_bytes(),
        "the body goes up untouched"
    );

    // Streamed: event by event (the first arrives while the mock holds the rest).
    let stream_body = r#"{"model":"claude-stream","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    mock.hold_streams();
    let resp = open_h1(env.server.client, messages(&env, stream_body)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream; charset=utf-8")
    );
    let request: Value = serde_json::from_str(stream_body).unwrap();
    let events = anthropic::stream_events(&request, "claude-stream");
    let mut body = resp.into_body();
    let first = next_data(&mut body, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        first,
        events[0].as_bytes(),
        "message_start, before the rest was sent"
    );
    mock.release();
    let (rest, clean) = read_body(hyper::Response::new(body)).await;
    assert!(clean);
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    text.push_str(std::str::from_utf8(&rest).unwrap());
    env.server.record("anthropic stream", text.clone());
    assert_eq!(
        text,
        events.concat(),
        "the stream reaches the client unchanged"
    );
    let seen = mock.last();
    assert!(
        !String::from_utf8_lossy(&seen.body).contains("stream_options"),
        "Anthropic was sent stream_options: {}",
        String::from_utf8_lossy(&seen.body)
    );
    assert_eq!(seen.body, stream_body.as_bytes());
    assert_eq!(mock.requests().len(), 2);

    let expected = BTreeMap::from([
        (
            row("app", "anthropic", "claude-json"),
            totals(
                anthropic::INPUT_TOKENS + anthropic::CACHE_READ,
                anthropic::OUTPUT_TOKENS,
            ),
        ),
        (
            row("app", "anthropic", "claude-stream"),
            totals(anthropic::INPUT_TOKENS, anthropic::OUTPUT_TOKENS),
        ),
    ]);
    let ledger = ledger_until(&env, |r| *r == expected).await;
    assert_eq!(
        ledger,
        expected,
        "serve stderr:\n{}",
        tail(&env.server.stderr())
    );
}

/// One request's totals with these counts (total = prompt + completion).
fn totals(prompt: u64, completion: u64) -> Totals {
    Totals {
        requests: 1,
        errors: 0,
        prompt,
        completion,
        total: prompt + completion,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_api_json_and_stream_are_metered_and_the_body_goes_up_untouched() {
    let mock = ResponsesMock::start(OPENAI_KEY).await;
    let url = mock.url();
    let env = Env::setup()
        .config(move |b| b.provider("openai", &url, "bearer"))
        .serve_env(FLUSH.0, FLUSH.1)
        .start()
        .await;
    let send = |body: &str| {
        Req::post("/v1/responses")
            .bearer(&env.client_key)
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    let json_body = r#"{"model":"gpt-resp-json","input":"Say hi."}"#;
    let resp = env.server.send(send(json_body)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), responses::response("gpt-resp-json", true));
    assert_eq!(mock.last().body, json_body.as_bytes());

    // The Responses API has its own stream_options: keygate adds nothing to it.
    let stream_body = r#"{"model":"gpt-resp-stream", "input":"Say hi.", "stream":true, "stream_options":{"include_obfuscation":false}}"#;
    let resp = open_h1(env.server.client, send(stream_body)).await;
    assert_eq!(resp.status(), 200);
    let (bytes, clean) = read_body(resp).await;
    let text = String::from_utf8(bytes).unwrap();
    env.server.record("responses stream", text.clone());
    assert!(clean);
    assert_eq!(text, responses::stream_events("gpt-resp-stream").concat());
    assert_eq!(
        mock.last().body,
        stream_body.as_bytes(),
        "the body goes up untouched"
    );

    let each = totals(responses::INPUT_TOKENS, responses::OUTPUT_TOKENS);
    let expected = BTreeMap::from([
        (row("app", "openai", "gpt-resp-json"), each),
        (row("app", "openai", "gpt-resp-stream"), each),
    ]);
    let ledger = ledger_until(&env, |r| *r == expected).await;
    assert_eq!(
        ledger,
        expected,
        "serve stderr:\n{}",
        tail(&env.server.stderr())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_completions_get_the_option_spliced_into_the_clients_own_bytes() {
    let env = Env::setup().serve_env(FLUSH.0, FLUSH.1).start().await;
    // Field order, spacing, escapes, unicode and a duplicate key (the last
    // `stream` decides) as a client might send them.
    let sent = "{ \"stream\": false, \"model\" : \"gpt-4o\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9 \\\"}\\\" 日本 🎉\"}],\n  \"stream\": true\n}\n";
    let want = "{ \"stream\": false, \"model\" : \"gpt-4o\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9 \\\"}\\\" 日本 🎉\"}],\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n";
    let req = Req::post("/v1/chat/completions")
        .bearer(&env.client_key)
        .header("content-type", "application/json")
        .body(sent.to_string());
    let resp = open_h1(env.server.client, req).await;
    assert_eq!(resp.status(), 200);
    let (bytes, clean) = read_body(resp).await;
    let text = String::from_utf8(bytes).unwrap();
    assert!(clean);
    // The usage chunk the client did not ask for is hidden from it.
    let without_usage_chunk: String = sse_events("gpt-4o", true)
        .into_iter()
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect();
    assert_eq!(text, without_usage_chunk);
    let up = env.openai.last();
    assert_eq!(
        String::from_utf8_lossy(&up.body),
        want,
        "only the option may be added to the client's bytes"
    );

    let (p, c, t) = mock_stream_usage();
    let expected = BTreeMap::from([(
        row("app", "openai", "gpt-4o"),
        Totals {
            requests: 1,
            errors: 0,
            prompt: p,
            completion: c,
            total: t,
        },
    )]);
    let ledger = ledger_until(&env, |r| *r == expected).await;
    assert_eq!(ledger, expected);
}

/// The official Anthropic Python SDK (`examples/anthropic_sdk.py`) through
/// keygate: `messages.create` and `messages.stream` with the `kg_` key as its
/// API key. Needs `python3` with the `anthropic` package; `.ci/run` installs
/// it and sets `KEYGATE_REQUIRE_SDK_TEST=1`, which turns a missing SDK into a
/// failure. Without it (a developer machine) the test passes with a loud
/// `SKIPPED` line (`support/skips.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_python_sdk_works_through_keygate_and_is_metered() {
    use std::process::Command;

    let sdk_present = crate::support::blocking(|| {
        Command::new("python3")
            .args(["-c", "import anthropic"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !sdk_present {
        crate::support::skips::skip_unless_required(
            "providers_usage::anthropic_python_sdk_works_through_keygate_and_is_metered",
            "python3 with the anthropic package (pip install anthropic)",
            "KEYGATE_REQUIRE_SDK_TEST",
        );
        return;
    }
    let (env, mock) = anthropic_env().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anthropic_sdk.py");
    let sdk = crate::support::blocking(|| {
        Command::new("python3")
            .arg(script)
            .arg(format!("http://{}/anthropic", env.server.client))
            .env("KEYGATE_CLIENT_KEY", &env.client_key)
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&sdk.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&sdk.stderr).into_owned();
    env.server.record("anthropic SDK stdout", stdout.clone());
    env.server.record("anthropic SDK stderr", stderr.clone());
    assert!(
        sdk.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    let text = anthropic::PIECES.concat();
    let (input, output) = (anthropic::INPUT_TOKENS, anthropic::OUTPUT_TOKENS);
    assert!(
        stdout.contains(&format!("message: {text} | usage: {input} {output}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "stream: {text} ({} pieces) | usage: {input} {output}",
            anthropic::PIECES.len()
        )),
        "{stdout}"
    );
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "one message, one stream");
    for request in &seen {
        assert_eq!(request.header("x-api-key").as_deref(), Some(ANTHROPIC_KEY));
        assert!(request.header("anthropic-version").is_some());
        assert!(!String::from_utf8_lossy(&request.body).contains("stream_options"));
    }

    let mut both = totals(input, output);
    both.requests = 2;
    both.prompt *= 2;
    both.completion *= 2;
    both.total *= 2;
    let expected = BTreeMap::from([(row("app", "anthropic", "claude-sonnet-4-5"), both)]);
    let ledger = ledger_until(&env, |r| *r == expected).await;
    assert_eq!(
        ledger,
        expected,
        "serve stderr:\n{}",
        tail(&env.server.stderr())
    );
}

/// An Anthropic stream written one byte per write is metered whole; one cut
/// after `message_start` keeps the input count it reported (and counts as an
/// error), so a client that hangs up early is still charged its prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_streams_are_metered_bytewise_and_when_cut_after_message_start() {
    use crate::support::raw_upstream::{
        chunk, RawUpstream, Script, SSE_CHUNKED_HEAD, SSE_CLOSE_DELIMITED_HEAD,
    };

    let raw = RawUpstream::start(move |request| {
        let model = request.json()["model"].as_str().unwrap_or("").to_string();
        let events = events_of(&model);
        if model == "claude-bytewise" {
            Script::new()
                .write(SSE_CLOSE_DELIMITED_HEAD)
                .bytewise(events.concat().as_bytes(), Duration::ZERO)
                .cut()
        } else {
            Script::new()
                .write(SSE_CHUNKED_HEAD)
                .write(chunk(events[..4].concat().as_bytes()))
                .pause(Duration::from_millis(50))
                .cut()
        }
    })
    .await;
    let url = raw.url();
    let env = Env::setup()
        .config(move |b| b.provider("anthropic", &url, "x-api-key"))
        .key("anthropic", ANTHROPIC_KEY, &[])
        .serve_env(FLUSH.0, FLUSH.1)
        .start()
        .await;

    for model in ["claude-bytewise", "claude-cut"] {
        let resp = open_h1(env.server.client, messages(&env, &stream_request(model))).await;
        assert_eq!(resp.status(), 200, "{model}");
        let (got, clean) = read_body(resp).await;
        let got = String::from_utf8(got).unwrap();
        env.server.record(model, got.clone());
        if model == "claude-bytewise" {
            assert!(clean);
            assert_eq!(got, events_of(model).concat(), "passed through unchanged");
        } else {
            assert!(!clean || !got.contains("message_stop"), "{got}");
        }
    }
    let expected = BTreeMap::from([
        (
            row("app", "anthropic", "claude-bytewise"),
            totals(anthropic::INPUT_TOKENS, anthropic::OUTPUT_TOKENS),
        ),
        (
            row("app", "anthropic", "claude-cut"),
            Totals {
                errors: 1,
                ..totals(anthropic::INPUT_TOKENS, 1)
            },
        ),
    ]);
    let ledger = ledger_until(&env, |r| *r == expected).await;
    assert_eq!(
        ledger,
        expected,
        "serve stderr:\n{}",
        tail(&env.server.stderr())
    );
}

/// A streaming Messages request body for `model`.
fn stream_request(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"stream":true,"messages":[{{"role":"user","content":"Hi"}}]}}"#
    )
}

/// The events the Anthropic mock sends for [`stream_request`]`(model)`.
fn events_of(model: &str) -> Vec<String> {
    let request: Value = serde_json::from_str(&stream_request(model)).unwrap();
    anthropic::stream_events(&request, model)
}
