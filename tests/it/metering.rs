//! Usage metering (docs/design.md §7, §8; README "Usage metering"): tokens per client
//! as the upstream reported them, in `/metrics`, in the SQLite ledger
//! (`keygate usage --json`, `GET /admin/usage`); the SSE tap at byte level;
//! `stream_usage`; cut streams; flushes across SIGTERM and kill -9; and a
//! ledger that never holds key material.
//!
//! The setup is `support::world::World` (the usual mocks, several named
//! clients, the admin token, a 200 ms flush interval), shared with `limits.rs`
//! and `skim_bypass.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::support::client::{open_h1, read_body, send_h1};
use crate::support::keygate::tail;
use crate::support::metrics::metric_value;
use crate::support::mock::sse_events;
use crate::support::raw_upstream::{
    RawUpstream, Script, SSE_CHUNKED_HEAD, SSE_CLOSE_DELIMITED_HEAD,
};
use crate::support::usage::{mock_json_usage, mock_stream_usage, row, rows, Row, Totals};
use crate::support::world::{stream_body, Opts, World, ADMIN_TOKEN, FLUSH};
use crate::support::{find_leaks, Req, OPENAI_KEY, XAI_KEY};

/// A chat completion JSON body reporting this usage (for canned answers).
fn completion_with_usage(model: &str, prompt: u64, completion: u64) -> String {
    json!({
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
    .to_string()
}

/// Send a streaming request, read it whole; panics unless it is a clean 200.
async fn stream_ok(w: &World, req: Req, label: &str) -> String {
    let resp = open_h1(w.server.client, req).await;
    assert_eq!(resp.status(), 200, "{label}");
    let (bytes, clean) = read_body(resp).await;
    let text = String::from_utf8(bytes).expect("stream is UTF-8");
    w.server.record(label, text.clone());
    assert!(clean, "{label}: the stream ended with an error:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_per_client_match_what_the_upstream_reported_in_metrics_ledger_and_admin_api() {
    let w = World::start(Opts {
        clients: &["alpha", "beta"],
        ..Opts::default()
    })
    .await;
    let mut expected: BTreeMap<Row, Totals> = BTreeMap::new();
    let stream_usage = mock_stream_usage();

    // JSON answers with a different usage each (canned, answered in order).
    let json_calls: [(&str, &str, &str, u64, u64); 5] = [
        ("alpha", "openai", "gpt-4o", 100, 20),
        ("alpha", "openai", "gpt-4o", 50, 5),
        ("alpha", "openai", "gpt-4o", 7, 3),
        ("beta", "xai", "grok-3", 30, 40),
        ("beta", "xai", "grok-3", 1, 2),
    ];
    for (client, provider, model, p, c) in json_calls {
        let mock = if provider == "xai" { &w.xai } else { &w.openai };
        mock.push_response(200, &[], &completion_with_usage(model, p, c));
        let resp = w.server.send(w.chat(client, model)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        expected
            .entry(row(client, provider, model))
            .or_default()
            .add_usage((p, c, p + c));
    }
    // The mock's own JSON answer, through plain /v1 routing.
    let resp = w.server.send(w.chat("beta", "gpt-4o-mini")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    expected
        .entry(row("beta", "openai", "gpt-4o-mini"))
        .or_default()
        .add_usage(mock_json_usage());
    // Embeddings report prompt tokens only.
    let resp = w
        .server
        .send(
            Req::post("/v1/embeddings")
                .bearer(w.key("beta"))
                .json(&json!({"model": "text-embedding-3-small", "input": "hi"})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let emb: Value = serde_json::from_str(&crate::support::mock::embeddings_body()).unwrap();
    expected
        .entry(row("beta", "openai", "text-embedding-3-small"))
        .or_default()
        .add_usage((
            emb["usage"]["prompt_tokens"].as_u64().unwrap(),
            0,
            emb["usage"]["total_tokens"].as_u64().unwrap(),
        ));
    // An upstream error is a request and an error, with no tokens.
    w.openai.push_response(
        500,
        &[],
        r#"{"error":{"message":"boom","type":"server_error","code":null}}"#,
    );
    let resp = w.server.send(w.chat("alpha", "gpt-4o")).await;
    assert_eq!(resp.status, 500, "{}", resp.text());
    let e = expected
        .entry(row("alpha", "openai", "gpt-4o"))
        .or_default();
    e.requests += 1;
    e.errors += 1;
    // Streams: asking for usage, not asking (keygate asks), asking for none.
    let streams: [(&str, &str, &str, Option<bool>); 4] = [
        ("alpha", "openai", "gpt-4o", Some(true)),
        ("alpha", "openai", "gpt-4o", None),
        ("beta", "xai", "grok-3", None),
        ("beta", "xai", "grok-3", Some(false)),
    ];
    for (client, provider, model, include) in streams {
        stream_ok(&w, w.stream(client, model, include), "stream").await;
        expected
            .entry(row(client, provider, model))
            .or_default()
            .add_usage(stream_usage);
    }

    // The ledger, once flushed: exactly these rows (no errors, nothing else).
    let ledger = w
        .ledger_until("every request's tokens", |rows| *rows == expected)
        .await;
    assert_eq!(ledger, expected);
    let only_alpha = rows(&w.usage_cli(&["--client", "alpha", "--since", "1h"]));
    let alpha_expected: BTreeMap<Row, Totals> = expected
        .iter()
        .filter(|(k, _)| k.0 == "alpha")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(only_alpha, alpha_expected, "usage --client alpha");

    // The admin API reads the same ledger, and only with the admin token.
    for auth in [None, Some("Bearer wrong-token"), Some("Bearer kg_x")] {
        let mut req = Req::get("/admin/usage");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = send_h1(w.server.admin, req).await;
        w.server
            .record("admin usage without the token", resp.everything());
        assert!(
            resp.status == 401 || resp.status == 403 || resp.status == 404,
            "GET /admin/usage with {auth:?} must be refused, got {}: {}",
            resp.status,
            resp.text()
        );
    }
    assert_eq!(rows(&w.admin_usage("since=1h").await), expected);
    assert_eq!(
        rows(&w.admin_usage("client=beta").await),
        expected
            .iter()
            .filter(|(k, _)| k.0 == "beta")
            .map(|(k, v)| (k.clone(), *v))
            .collect::<BTreeMap<_, _>>(),
        "GET /admin/usage?client=beta"
    );
    // Query values are percent-decoded as any HTTP client encodes them.
    assert_eq!(
        rows(&w.admin_usage("client=b%65ta&since=1%20h").await),
        rows(&w.admin_usage("client=beta").await),
        "GET /admin/usage?client=b%65ta&since=1%20h"
    );

    // Prometheus: keygate_tokens_total per client, provider, model and kind.
    let page = w.metrics().await;
    for ((client, provider, model), t) in &expected {
        for (kind, want) in [("prompt", t.prompt), ("completion", t.completion)] {
            let got = metric_value(
                &page,
                "keygate_tokens_total",
                &[
                    ("client", client),
                    ("provider", provider),
                    ("model", model),
                    ("kind", kind),
                ],
            )
            .unwrap_or(0.0);
            assert_eq!(
                got, want as f64,
                "keygate_tokens_total{{client={client},provider={provider},model={model},kind={kind}}}\n{page}"
            );
        }
    }
    for client in ["alpha", "beta"] {
        let want: u64 = expected
            .iter()
            .filter(|(k, _)| k.0 == client)
            .map(|(_, t)| t.prompt + t.completion)
            .sum();
        let got = metric_value(&page, "keygate_tokens_total", &[("client", client)]).unwrap_or(0.0);
        assert_eq!(got, want as f64, "all tokens of {client}:\n{page}");
        let requests: u64 = expected
            .iter()
            .filter(|(k, _)| k.0 == client)
            .map(|(_, t)| t.requests)
            .sum();
        let got =
            metric_value(&page, "keygate_requests_total", &[("client", client)]).unwrap_or(0.0);
        assert_eq!(got, requests as f64, "requests of {client}:\n{page}");
    }
}

/// An SSE body with everything a parser can trip on: CRLF line endings,
/// `: keep-alive` comments, `data:` without a space, multi-byte UTF-8, and the
/// usage-only chunk `include_usage` asks for.
fn tricky_sse_body(prompt: u64, completion: u64) -> Vec<u8> {
    let chunk = |choices: Value, usage: Value| {
        json!({
            "id": "chatcmpl-raw-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": "gpt-4o",
            "choices": choices,
            "usage": usage,
        })
        .to_string()
    };
    let delta =
        |content: &str| json!([{"index": 0, "delta": {"content": content}, "finish_reason": null}]);
    let mut s = String::new();
    s.push_str(": keep-alive\r\n\r\n");
    s.push_str(&format!(
        "data:{}\r\n\r\n",
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            Value::Null
        )
    ));
    s.push_str(&format!(
        "data: {}\r\n\r\n",
        chunk(delta("Café é "), Value::Null)
    ));
    s.push_str(": keep-alive\r\n\r\n");
    s.push_str(&format!(
        "data:{}\r\n\r\n",
        chunk(delta("日本 — ok"), Value::Null)
    ));
    s.push_str(&format!(
        "data: {}\r\n\r\n",
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null
        )
    ));
    s.push_str(&format!(
        "data:{}\r\n\r\n",
        chunk(
            json!([]),
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
        )
    ));
    s.push_str("data: [DONE]\r\n\r\n");
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytewise_sse_with_split_utf8_crlf_and_comments_passes_unchanged_and_is_metered() {
    const PROMPT: u64 = 123;
    const COMPLETION: u64 = 45;
    let body = tricky_sse_body(PROMPT, COMPLETION);
    assert!(std::str::from_utf8(&body).is_ok());
    // One byte per write, 1 ms apart: every multi-byte character is split
    // across writes. The body ends when the upstream closes (no framing).
    let upstream_body = body.clone();
    let raw = RawUpstream::start(move |_| {
        Script::new()
            .write(SSE_CLOSE_DELIMITED_HEAD)
            .bytewise(&upstream_body, Duration::from_millis(1))
    })
    .await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;

    let resp = open_h1(w.server.client, w.stream("app", "gpt-4o", Some(true))).await;
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    assert!(
        ctype
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{ctype:?}"
    );
    let (got, clean) = read_body(resp).await;
    w.server.record(
        "bytewise stream",
        String::from_utf8_lossy(&got).into_owned(),
    );
    assert!(clean, "the stream ended with an error");
    assert!(
        got == body,
        "a client that asked for usage must get the upstream's bytes unchanged\n--- sent\n{:?}\n--- received\n{:?}",
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&got)
    );
    // The client asked for usage itself: the request went up as it was.
    assert_eq!(raw.hits(), 1);
    assert_eq!(
        raw.requests()[0].json(),
        stream_body("gpt-4o", Some(true)),
        "a request that already asks for usage is forwarded unchanged"
    );

    let expected = BTreeMap::from([(
        row("app", "openai", "gpt-4o"),
        Totals {
            requests: 1,
            errors: 0,
            prompt: PROMPT,
            completion: COMPLETION,
            total: PROMPT + COMPLETION,
        },
    )]);
    let ledger = w
        .ledger_until("the bytewise stream's usage", |r| *r == expected)
        .await;
    assert_eq!(ledger, expected);
    let page = w.metrics().await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_tokens_total",
            &[("client", "app"), ("kind", "prompt")]
        )
        .unwrap_or(0.0),
        PROMPT as f64,
        "{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "keygate_tokens_total",
            &[("client", "app"), ("kind", "completion")]
        )
        .unwrap_or(0.0),
        COMPLETION as f64,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytewise_chunked_sse_loses_only_the_usage_chunk_for_a_client_that_did_not_ask() {
    const PROMPT: u64 = 77;
    const COMPLETION: u64 = 9;
    let body = tricky_sse_body(PROMPT, COMPLETION);
    // One HTTP chunk per byte, one write per chunk.
    let mut script = Script::new().write(SSE_CHUNKED_HEAD);
    for b in &body {
        script = script.chunk([*b]).pause(Duration::from_millis(1));
    }
    let script = script.end_chunks();
    let raw = RawUpstream::start(move |_| script.clone()).await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;

    let text = stream_ok(&w, w.stream("app", "gpt-4o", None), "stripped stream").await;
    // The upstream was asked for usage on the client's behalf...
    assert_eq!(raw.hits(), 1);
    let sent = raw.requests()[0].json();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "keygate must add stream_options.include_usage: {sent}"
    );
    assert_eq!(sent["messages"], stream_body("gpt-4o", None)["messages"]);
    // ...and the client got every byte but the usage-only event.
    let body = String::from_utf8(body).unwrap();
    let usage_event = body
        .split_inclusive("\r\n\r\n")
        .find(|e| e.contains("\"choices\":[]"))
        .expect("usage event")
        .to_string();
    let want = body.replacen(&usage_event, "", 1);
    assert!(
        !text.contains("\"choices\":[]") && !text.contains("prompt_tokens"),
        "a client that did not ask must not see the usage chunk:\n{text:?}"
    );
    assert_eq!(
        text, want,
        "everything but the usage chunk arrives unchanged"
    );

    let expected = BTreeMap::from([(
        row("app", "openai", "gpt-4o"),
        Totals {
            requests: 1,
            errors: 0,
            prompt: PROMPT,
            completion: COMPLETION,
            total: PROMPT + COMPLETION,
        },
    )]);
    let ledger = w
        .ledger_until("the stripped stream's usage", |r| *r == expected)
        .await;
    assert_eq!(ledger, expected);
}

/// One SSE event as JSON without a null `usage`; `[DONE]` as a string.
fn event_json(event: &str) -> Value {
    let data = event
        .trim()
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
    if data == "[DONE]" {
        return json!("[DONE]");
    }
    let mut v: Value =
        serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event JSON ({e}): {data}"));
    if v.get("usage").is_some_and(|u| u.is_null()) {
        v.as_object_mut().expect("object").remove("usage");
    }
    v
}

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(event_json)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_usage_asks_upstream_and_hides_the_chunk_only_from_clients_that_did_not_ask() {
    let w = World::start(Opts::default()).await;
    let without_usage: Vec<Value> = sse_events("gpt-4o", false)
        .iter()
        .map(|e| event_json(e))
        .collect();

    for include in [None, Some(false)] {
        let text = stream_ok(&w, w.stream("app", "gpt-4o", include), "stream").await;
        assert!(
            !text.contains("\"choices\":[]") && !text.contains("prompt_tokens"),
            "stream_options {include:?}: the client did not ask for usage but got the chunk:\n{text}"
        );
        assert_eq!(
            events(&text),
            without_usage,
            "stream_options {include:?}:\n{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let up = w.openai.last().json();
        assert_eq!(
            up["stream_options"]["include_usage"], true,
            "stream_options {include:?}: the upstream was not asked for usage: {up}"
        );
        let mut rest = up.clone();
        rest.as_object_mut().unwrap().remove("stream_options");
        let mut asked = stream_body("gpt-4o", include);
        asked.as_object_mut().unwrap().remove("stream_options");
        assert_eq!(rest, asked, "only stream_options may change");
    }

    // A client that asked gets the chunk, byte for byte.
    let text = stream_ok(&w, w.stream("app", "gpt-4o", Some(true)), "stream").await;
    assert_eq!(text, sse_events("gpt-4o", true).concat());
    assert_eq!(
        w.openai.last().json(),
        stream_body("gpt-4o", Some(true)),
        "a request already asking for usage goes up unchanged"
    );
    assert_eq!(w.openai.hits(), 3);

    let (p, c, t) = mock_stream_usage();
    let expected = BTreeMap::from([(
        row("app", "openai", "gpt-4o"),
        Totals {
            requests: 3,
            errors: 0,
            prompt: 3 * p,
            completion: 3 * c,
            total: 3 * t,
        },
    )]);
    let ledger = w
        .ledger_until("three streams' usage", |r| *r == expected)
        .await;
    assert_eq!(ledger, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_usage_false_forwards_streams_untouched() {
    let w = World::start(Opts {
        env: &[("KEYGATE_METERING__STREAM_USAGE", "false")],
        ..Opts::default()
    })
    .await;
    let text = stream_ok(&w, w.stream("app", "gpt-4o", None), "stream").await;
    assert_eq!(text, sse_events("gpt-4o", false).concat());
    assert_eq!(
        w.openai.last().json(),
        stream_body("gpt-4o", None),
        "with stream_usage = false the request goes up unchanged"
    );
    let ledger = w
        .ledger_until("the stream's request", |r| !r.is_empty())
        .await;
    assert_eq!(
        ledger,
        BTreeMap::from([(
            row("app", "openai", "gpt-4o"),
            Totals {
                requests: 1,
                ..Totals::default()
            }
        )]),
        "a stream without usage counts as a request with no tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_cut_short_is_an_error_and_keeps_the_tokens_seen() {
    let first = format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
               "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}], "usage": null})
    );
    let usage = format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [],
               "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    );
    let (a, b) = (first.clone(), usage.clone());
    // A chunked stream that stops mid-event, without its last chunk.
    let raw = RawUpstream::start(move |_| {
        Script::new()
            .write(SSE_CHUNKED_HEAD)
            .chunk(&a)
            .pause(Duration::from_millis(20))
            .chunk(&b)
            .pause(Duration::from_millis(20))
            .chunk("data: {\"id\":\"c\",\"choi")
            .pause(Duration::from_millis(50))
            .cut()
    })
    .await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;

    let resp = open_h1(w.server.client, w.stream("app", "gpt-4o", Some(true))).await;
    assert_eq!(resp.status(), 200);
    let (got, clean) = read_body(resp).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    w.server.record("cut stream", got.clone());
    assert!(
        got.starts_with(&format!("{first}{usage}")),
        "the events sent before the cut must reach the client:\n{got:?}"
    );
    assert!(
        !clean || !got.contains("[DONE]"),
        "a cut stream must not look complete:\n{got:?}"
    );

    let ledger = w.ledger_until("the cut stream", |r| !r.is_empty()).await;
    let t = ledger
        .get(&row("app", "openai", "gpt-4o"))
        .copied()
        .unwrap_or_else(|| panic!("no row for the cut stream: {ledger:#?}"));
    assert_eq!(t.requests, 1, "{ledger:#?}");
    assert!(
        t.errors >= 1,
        "a stream cut short must count as an error: {t:?}"
    );
    assert_eq!(
        (t.prompt, t.completion, t.total),
        (9, 3, 12),
        "the tokens seen before the cut must be kept"
    );
    let page = w.metrics().await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_tokens_total",
            &[("client", "app"), ("kind", "prompt")]
        )
        .unwrap_or(0.0),
        9.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_cut_by_stream_idle_timeout_is_an_error() {
    let first = format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
               "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}], "usage": null})
    );
    let a = first.clone();
    let raw = RawUpstream::start(move |_| {
        Script::new()
            .write(SSE_CHUNKED_HEAD)
            .chunk(&a)
            .pause(Duration::from_secs(3))
            .end_chunks()
    })
    .await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        env: &[("KEYGATE_SERVER__STREAM_IDLE_TIMEOUT", "300ms")],
        ..Opts::default()
    })
    .await;
    let started = Instant::now();
    let resp = open_h1(w.server.client, w.stream("app", "gpt-4o", Some(true))).await;
    assert_eq!(resp.status(), 200);
    let (got, clean) = read_body(resp).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    w.server.record("idle stream", got.clone());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stream_idle_timeout 300ms did not cut a stream that went quiet"
    );
    assert!(!clean, "a cut stream must not end cleanly: {got:?}");
    assert_eq!(got, first);
    let ledger = w.ledger_until("the cut stream", |r| !r.is_empty()).await;
    let t = ledger[&row("app", "openai", "gpt-4o")];
    assert_eq!((t.requests, t.errors), (1, 1), "{ledger:#?}");
}

/// Three events with a `: keep-alive` comment and a long pause after the
/// first, as upstreams do while a model thinks.
fn keep_alive_script(first: &str, rest: &str) -> Script {
    Script::new()
        .write(SSE_CHUNKED_HEAD)
        .chunk(first)
        .pause(Duration::from_millis(100))
        .chunk(": keep-alive\n\n")
        .pause(Duration::from_millis(1500))
        .chunk(rest)
        .end_chunks()
}

/// docs/design.md §7: the meter "never holds [the stream] back, whatever the chunking
/// (an event split across reads, CRLF, comments)". A held keep-alive defeats
/// its purpose: client and proxy read timeouts fire during a long pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_comments_reach_the_client_at_once_even_when_the_usage_chunk_is_hidden() {
    let events = sse_events("gpt-4o", true);
    let first = events[0].clone();
    let rest = events[1..].concat();
    let (f, r) = (first.clone(), rest.clone());
    let raw = RawUpstream::start(move |_| keep_alive_script(&f, &r)).await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;
    let mut late = Vec::new();
    for include in [Some(true), None] {
        let resp = open_h1(w.server.client, w.stream("app", "gpt-4o", include)).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut keep_alive_at = None;
        let started = Instant::now();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline.into(), body.frame()).await
        {
            if let Ok(d) = frame.into_data() {
                got.push_str(&String::from_utf8_lossy(&d));
            }
            if keep_alive_at.is_none() && got.contains(": keep-alive") {
                keep_alive_at = Some(started.elapsed());
            }
        }
        w.server.record("keep-alive stream", got.clone());
        assert!(
            got.contains(": keep-alive"),
            "{include:?}: comment lost:\n{got}"
        );
        // The upstream sent the comment ~100 ms in and then paused 1.5 s.
        let at = keep_alive_at.unwrap();
        if at > Duration::from_millis(1000) {
            late.push(format!(
                "stream_options.include_usage {include:?}: the keep-alive comment reached the client after {at:?}, held back until the next event"
            ));
        }
    }
    assert!(late.is_empty(), "{}", late.join("\n"));
}

/// `n` JSON requests and `n` streams (keygate asks for usage) as `app`; the rows they make.
async fn traffic(w: &World, n: u64) -> BTreeMap<Row, Totals> {
    for _ in 0..n {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        stream_ok(w, w.stream("app", "gpt-4o-mini", None), "stream").await;
    }
    let (p, c, t) = mock_json_usage();
    let (sp, sc, st) = mock_stream_usage();
    BTreeMap::from([
        (
            row("app", "openai", "gpt-4o"),
            Totals {
                requests: n,
                errors: 0,
                prompt: n * p,
                completion: n * c,
                total: n * t,
            },
        ),
        (
            row("app", "openai", "gpt-4o-mini"),
            Totals {
                requests: n,
                errors: 0,
                prompt: n * sp,
                completion: n * sc,
                total: n * st,
            },
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_right_after_requests_loses_no_usage() {
    // A flush interval far longer than the test: only the shutdown flush can
    // put these requests in the ledger.
    let mut w = World::start(Opts {
        env: &[("KEYGATE_METERING__FLUSH_INTERVAL", "10m")],
        ..Opts::default()
    })
    .await;
    let mut expected = traffic(&w, 4).await;
    // And one stream still in flight when SIGTERM arrives: drained, then metered.
    let release = w.openai.hold_streams();
    let resp = open_h1(w.server.client, w.stream("app", "gpt-4o-mini", None)).await;
    assert_eq!(resp.status(), 200);
    w.server.signal_term();
    w.server.wait_for_log("shutdown requested").await;
    release.release();
    let (got, clean) = read_body(resp).await;
    w.server
        .record("drained stream", String::from_utf8_lossy(&got).into_owned());
    assert!(clean, "the in-flight stream was cut by SIGTERM");
    let e = expected
        .get_mut(&row("app", "openai", "gpt-4o-mini"))
        .unwrap();
    e.add_usage(mock_stream_usage());
    let status = w.server.wait_exit();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM must end serve with 0\n{}",
        tail(&w.server.stderr())
    );
    assert_eq!(
        w.ledger(),
        expected,
        "every request done before SIGTERM must be in the ledger after exit"
    );

    // A second life adds to the same ledger.
    w.restart();
    let more = traffic(&w, 1).await;
    w.server.terminate();
    let mut sum = expected.clone();
    for (k, t) in more {
        let e = sum.entry(k).or_default();
        e.requests += t.requests;
        e.prompt += t.prompt;
        e.completion += t.completion;
        e.total += t.total;
    }
    assert_eq!(w.ledger(), sum, "usage of both runs adds up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_nothing_older_than_one_flush_interval() {
    let w = World::start(Opts::default()).await;
    let expected = traffic(&w, 3).await;
    // More than one interval after the last request (4 × 200 ms, for slack on
    // a loaded machine), then SIGKILL: no chance for a shutdown flush.
    tokio::time::sleep(FLUSH * 4).await;
    let World {
        server,
        kg,
        openai,
        xai,
        ..
    } = w;
    drop(server); // Server's drop is `Child::kill`: SIGKILL.
    let out = kg.run(&["usage", "--json"]);
    out.assert_ok("usage --json after kill -9");
    let got = rows(&serde_json::from_str(out.stdout.trim()).expect("usage JSON"));
    assert_eq!(
        got, expected,
        "after SIGKILL, usage older than one flush interval must be in the ledger"
    );
    drop((kg, openai, xai));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_file_holds_no_client_or_upstream_key() {
    let mut w = World::start(Opts {
        clients: &["alpha", "beta"],
        ..Opts::default()
    })
    .await;
    for client in ["alpha", "beta"] {
        for model in ["gpt-4o", "grok-3"] {
            let resp = w.server.send(w.chat(client, model)).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            stream_ok(&w, w.stream(client, model, None), "stream").await;
        }
    }
    // An upstream error answer is metered too.
    let resp = w
        .server
        .send(Req::get("/v1/nope").bearer(w.key("alpha")))
        .await;
    assert_eq!(resp.status, 404);
    w.ledger_until("the traffic", |r| r.len() >= 4).await;

    let mut secrets: Vec<String> = w.keys.values().cloned().collect();
    secrets.extend([
        OPENAI_KEY.to_string(),
        XAI_KEY.to_string(),
        ADMIN_TOKEN.to_string(),
    ]);
    let db = w.kg.dir().join("usage.sqlite");
    let scan = |when: &str| {
        let mut captures = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = format!("{}{suffix}", db.display());
            if let Ok(bytes) = std::fs::read(&path) {
                captures.push((
                    format!("{when}: {path}"),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        assert!(
            captures
                .iter()
                .any(|(_, t)| t.contains("alpha") && t.contains("grok-3")),
            "{when}: the ledger files at {} do not hold the usage rows, so this check would prove nothing",
            db.display()
        );
        let leaks = find_leaks(&secrets, &captures);
        assert!(
            leaks.is_empty(),
            "{when}: key material in the ledger:\n{}",
            leaks.join("\n")
        );
    };
    scan("while serving");
    w.server.terminate();
    scan("after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_usage_split_across_many_reads_is_counted() {
    let body = completion_with_usage("gpt-4o", 31, 8);
    let json_body = body.clone();
    let n = std::sync::atomic::AtomicUsize::new(0);
    // 1st request: Content-Length, one byte per write; 2nd: one chunk per byte.
    let raw = RawUpstream::start(move |_| {
        let gap = Duration::from_millis(1);
        if n
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2)
        {
            Script::new()
                .write(format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    json_body.len()
                ))
                .bytewise(json_body.as_bytes(), gap)
        } else {
            let mut script = Script::new().write(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            );
            for b in json_body.as_bytes() {
                script = script.chunk([*b]).pause(gap);
            }
            script.end_chunks()
        }
    })
    .await;
    let w = World::start(Opts {
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;
    for framing in ["content-length", "chunked"] {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        assert_eq!(resp.status, 200, "{framing}: {}", resp.text());
        assert_eq!(resp.text(), body, "{framing}: the body arrives unchanged");
    }
    let expected = BTreeMap::from([(
        row("app", "openai", "gpt-4o"),
        Totals {
            requests: 2,
            errors: 0,
            prompt: 62,
            completion: 16,
            total: 78,
        },
    )]);
    let ledger = w
        .ledger_until("both split JSON answers' usage", |r| *r == expected)
        .await;
    assert_eq!(ledger, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upstream_plays_its_script_exactly() {
    // The byte-level upstream itself: exact bytes, in order, recorded request.
    let raw =
        RawUpstream::start(|req| Script::json(201, &format!("{{\"len\":{}}}", req.body.len())))
            .await;
    let addr: std::net::SocketAddr = raw.url().trim_start_matches("http://").parse().unwrap();
    let resp = send_h1(
        addr,
        Req::post("/v1/x").chunked(vec![Bytes::from("ab"), Bytes::from("cde")]),
    )
    .await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "{\"len\":5}");
    assert_eq!(&raw.requests()[0].body[..], b"abcde");
    assert!(raw.requests()[0].request_line.starts_with("POST /v1/x "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_model_name_is_kept_bounded_and_printable_in_metrics_ledger_and_usage() {
    let w = World::start(Opts {
        clients: &["app"],
        ..Opts::default()
    })
    .await;
    // NUL (which PostgreSQL refuses), a terminal escape and a newline, then
    // 100 KiB more: the client chooses the model name.
    let hostile = format!("gpt\u{0}x\u{1b}[31mred\n{}", "A".repeat(100 * 1024));
    let resp = w.server.send(w.chat("app", &hostile)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let label = format!("gpt?x?[31mred?{}", "A".repeat(256 - 14));
    let rows = w
        .ledger_until("the hostile request", |rows| !rows.is_empty())
        .await;
    let models: Vec<&str> = rows.keys().map(|(_, _, model)| model.as_str()).collect();
    assert_eq!(models, [label.as_str()], "{models:?}");
    let page = w.server.admin_get("/metrics").await.text();
    assert!(
        page.contains(&format!("model=\"{label}\"")),
        "no bounded label"
    );
    assert!(!page.contains('\u{1b}') && !page.contains('\u{0}'));
    assert!(page.len() < 200 * 1024, "the 100 KiB name reached /metrics");
    let printed = w.kg.run(&["usage"]);
    printed.assert_ok("usage");
    assert!(
        !printed.stdout.contains('\u{1b}') && !printed.stdout.contains('\u{0}'),
        "a terminal escape reached the operator's terminal: {:?}",
        printed.stdout
    );
}
