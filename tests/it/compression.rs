//! Compressed bodies (DESIGN §4 "Compressed bodies"; README "Compressed
//! bodies"): with an upstream that gzips or brotli-encodes its answers as the
//! real APIs do, keygate still meters every token, enforces budgets and masks
//! key echoes in error bodies; the client still gets bytes it can decode;
//! oversized error bodies become keygate's own 502; compressed request bodies
//! are decoded for routing and limits (a bomb gets 413); a coding keygate
//! cannot decode is refused.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::support::mock::{chat_completion_body, sse_events};
use crate::support::raw_upstream::{chunk, RawUpstream, Script};
use crate::support::usage::row;
use crate::support::world::{Opts, World};
use crate::support::{find_leaks, Req, OPENAI_KEY, XAI_KEY};

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        other => panic!("no decoder for {other}"),
    }
    out
}

fn usage_of(value: &Value) -> (u64, u64) {
    let u = &value["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// The usage the mock reports in a stream (its last usage chunk).
fn stream_usage() -> (u64, u64) {
    sse_events("gpt-4o", true)
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|v| v["usage"].is_object())
        .map(|v| usage_of(&v))
        .next_back()
        .unwrap()
}

fn assert_no_key_window(what: &str, text: &str) {
    let leaks = find_leaks(
        &[OPENAI_KEY.to_string(), XAI_KEY.to_string()],
        &[(what.to_string(), text.to_string())],
    );
    assert!(
        leaks.is_empty(),
        "{what}: key material reached the client:\n{}",
        leaks.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_json_and_sse_answers_are_metered_and_reach_the_client_decodable() {
    for coding in ["gzip", "br"] {
        let w = World::start(Opts::default()).await;
        w.openai.set_compression(Some(coding));
        let accept = "gzip, deflate, br, zstd";

        // JSON: passed through compressed, as the upstream sent it.
        let resp = w
            .server
            .send(w.chat("app", "gpt-4o").header("accept-encoding", accept))
            .await;
        assert_eq!(resp.status, 200, "{coding}: {}", resp.text());
        assert_eq!(
            resp.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            Some(coding)
        );
        let json: Value = serde_json::from_slice(&decode(coding, &resp.body)).unwrap();
        let json_usage = usage_of(&json);
        assert_eq!(
            json_usage,
            usage_of(&serde_json::from_str(&chat_completion_body("gpt-4o")).unwrap())
        );

        // SSE the client asked usage for: passed through compressed.
        let resp = w
            .server
            .send(
                w.stream("app", "gpt-4o", Some(true))
                    .header("accept-encoding", accept),
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            Some(coding)
        );
        let text = String::from_utf8(decode(coding, &resp.body)).unwrap();
        assert!(
            text.contains("prompt_tokens") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );

        // SSE keygate asked usage for: re-framed, so sent decoded, without the usage chunk.
        let resp = w
            .server
            .send(
                w.stream("app", "gpt-4o", None)
                    .header("accept-encoding", accept),
            )
            .await;
        assert_eq!(resp.status, 200);
        assert!(
            resp.headers.get("content-encoding").is_none(),
            "{:?}",
            resp.headers
        );
        let text = resp.text();
        assert!(
            !text.contains("prompt_tokens") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );

        let (sp, sc) = stream_usage();
        let expected = (json_usage.0 + 2 * sp, json_usage.1 + 2 * sc);
        let rows = w
            .ledger_until("every compressed answer's tokens", |rows| {
                rows.get(&row("app", "openai", "gpt-4o"))
                    .is_some_and(|t| (t.prompt, t.completion) == expected)
            })
            .await;
        assert_eq!(
            rows[&row("app", "openai", "gpt-4o")].requests,
            3,
            "{coding}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_triggers_with_gzip_answers() {
    let w = World::start(Opts {
        limits: &[("app", &["--budget-tokens", "60"])],
        ..Opts::default()
    })
    .await;
    w.openai.set_compression(Some("gzip"));
    let mut refused = None;
    for i in 0..20 {
        let resp = w
            .server
            .send(
                // max_tokens 1: the admission estimate (≈ 20) is near the real use (18).
                Req::post("/v1/chat/completions")
                    .bearer(w.key("app"))
                    .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))
                    .header("accept-encoding", "gzip, deflate"),
            )
            .await;
        if resp.status == 429 {
            resp.assert_keygate_error(429, "client_budget_exceeded");
            refused = Some(i);
            break;
        }
        assert_eq!(resp.status, 200);
    }
    let refused = refused.expect("the budget never triggered: gzip answers were not metered");
    assert!(
        (2..=6).contains(&refused),
        "refused after {refused} requests"
    );
    // Spent as metered from the gzip bodies, not as estimated.
    let (p, c) = usage_of(&serde_json::from_str(&chat_completion_body("gpt-4o")).unwrap());
    let expected = (refused as u64 * p, refused as u64 * c);
    w.ledger_until("the gzip answers' real tokens", |rows| {
        rows.get(&row("app", "openai", "gpt-4o"))
            .is_some_and(|t| (t.prompt, t.completion) == expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_error_body_quoting_the_key_is_scrubbed_and_sent_decoded() {
    for coding in ["gzip", "br"] {
        let w = World::start(Opts::default()).await;
        w.openai.set_compression(Some(coding));
        let message = format!("Invalid model for key {OPENAI_KEY}; see docs");
        let body =
            json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
        w.openai.push_response(400, &[], &body.to_string());
        let resp = w
            .server
            .send(
                w.chat("app", "gpt-4o")
                    .header("accept-encoding", "gzip, br"),
            )
            .await;
        assert_eq!(resp.status, 400, "{coding}");
        assert!(resp.headers.get("content-encoding").is_none());
        let json = resp.json();
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("see docs"));
        assert_no_key_window(coding, &resp.everything());
    }
}

fn big_error_body() -> String {
    let filler = "x".repeat(70 * 1024);
    json!({"error": {"message": format!("bad key {OPENAI_KEY} {filler}"), "type": "invalid_request_error"}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_over_the_scrub_limit_becomes_keygates_own_502() {
    let body = big_error_body();
    // With a Content-Length, and chunked; plain and gzip.
    let plain_cl = Script::json(400, &body);
    let mut chunked = Script::new().write(
        "HTTP/1.1 400 X\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for piece in body.as_bytes().chunks(8192) {
        chunked = chunked.write(chunk(piece));
    }
    chunked = chunked.end_chunks();
    for (what, script) in [("content-length", plain_cl), ("chunked", chunked)] {
        let script = std::sync::Mutex::new(Some(script));
        let raw = RawUpstream::start(move |_| {
            script
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| Script::json(500, "{}"))
        })
        .await;
        let w = World::start(Opts {
            openai_url: Some(raw.url()),
            ..Opts::default()
        })
        .await;
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        resp.assert_keygate_error(502, "upstream_error_too_large");
        assert!(
            resp.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("400"),
            "{what}"
        );
        assert_no_key_window(what, &resp.everything());
    }
    // Compressed, with a Content-Length (the mock keeps whole bodies whole).
    let w = World::start(Opts::default()).await;
    w.openai.set_compression(Some("gzip"));
    w.openai.push_response(400, &[], &body);
    let resp = w
        .server
        .send(w.chat("app", "gpt-4o").header("accept-encoding", "gzip"))
        .await;
    resp.assert_keygate_error(502, "upstream_error_too_large");
    assert_no_key_window("gzip", &resp.everything());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_request_body_gets_413() {
    let w = World::start(Opts {
        env: &[("KEYGATE_SERVER__MAX_REQUEST_BODY", "1MiB")],
        ..Opts::default()
    })
    .await;
    let mut body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 20 * 1024 * 1024));
    body.extend_from_slice(br#""}]}"#);
    let bomb = gzip(&body);
    assert!(bomb.len() < 64 * 1024);
    let resp = w
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(w.key("app"))
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(bomb),
        )
        .await;
    resp.assert_keygate_error(413, "request_too_large");
    assert_eq!(w.openai.hits(), 0);

    let resp = w
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(w.key("app"))
                .header("content-encoding", "compress")
                .body("x"),
        )
        .await;
    resp.assert_keygate_error(415, "unsupported_content_encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_request_body_is_routed_by_its_model_and_metered() {
    let w = World::start(Opts::default()).await;
    let body =
        json!({"model": "grok-3", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let encoded = zstd::stream::encode_all(body.to_string().as_bytes(), 3).unwrap();
    let resp = w
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(w.key("app"))
                .header("content-type", "application/json")
                .header("content-encoding", "zstd")
                .body(encoded),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.xai.hits(), 1, "routed by the model in the zstd body");
    let seen = w.xai.last();
    assert!(seen.header("content-encoding").is_none());
    // Decoded, so keygate could add the usage option.
    assert_eq!(seen.json()["stream_options"]["include_usage"], true);
    let (sp, sc) = stream_usage();
    w.ledger_until("the zstd request's tokens", |rows| {
        rows.get(&row("app", "xai", "grok-3"))
            .is_some_and(|t| (t.prompt, t.completion) == (sp, sc))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_an_unknown_coding_is_refused_and_only_known_codings_are_offered() {
    let w = World::start(Opts::default()).await;
    w.openai
        .push_response(200, &[("content-encoding", "compress")], "garbage");
    let resp = w
        .server
        .send(
            w.chat("app", "gpt-4o")
                .header("accept-encoding", "gzip, compress, br;q=0.5"),
        )
        .await;
    resp.assert_keygate_error(502, "upstream_bad_encoding");
    assert_eq!(
        w.openai.last().header("accept-encoding").as_deref(),
        Some("gzip, br;q=0.5")
    );
    // No Accept-Encoding from the client: none upstream.
    let resp = w.server.send(w.chat("app", "gpt-4o")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(w.openai.last().header("accept-encoding"), None);
}
