//! Secrets never leak (docs/design.md §2, §5, §6): with every process at
//! `RUST_LOG=trace`, no upstream key, client key or master key — nor any
//! 8-character window of one — appears in any log line, CLI output (apart from
//! the one `client add` line that hands out the key), `/metrics`, or response.
//! The harness runs this check at the end of every test; this module exercises
//! the paths most likely to leak and checks explicitly.

use std::time::Duration;

use serde_json::json;

use crate::support::client::{next_data, open_h1};
use crate::support::mock::closed_port_url;
use crate::support::webhook::{Webhook, WEBHOOK_TOKEN};
use crate::support::{chat_body, find_leaks, Env, Req, OPENAI_KEY, XAI_KEY};

/// The `[[notify]]` receiver's signing key (obviously fake).
const NOTIFY_SECRET: &str = "whsec-test-Lr5Wq9Xe2Bt7Mk3Zc";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_logs_cli_output_metrics_or_error_bodies() {
    // Every event is delivered to a receiver whose deliveries are checked too.
    let hook = Webhook::start().await;
    let table = hook.table("ops", "secret_env = \"KEYGATE_NOTIFY_SECRET\"");
    let mut env = Env::setup()
        .config(move |b| b.extra(&table))
        .serve_env("KEYGATE_NOTIFY_SECRET", NOTIFY_SECRET)
        .start()
        .await;
    env.kg.register_secret(NOTIFY_SECRET);
    env.kg.register_secret(WEBHOOK_TOKEN);
    let key = env.client_key.clone();
    // Successes, in both client auth styles, JSON and streaming.
    assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    assert_eq!(env.server.send(env.chat("grok-3")).await.status, 200);
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .header("x-api-key", &key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200);
    let stream = json!({"model": "gpt-4o", "messages": [], "stream": true});
    let resp = open_h1(
        env.server.client,
        Req::post("/v1/chat/completions").bearer(&key).json(&stream),
    )
    .await;
    let mut body = resp.into_body();
    let mut text = String::new();
    while let Some(c) = next_data(&mut body, Duration::from_secs(10)).await {
        text.push_str(&String::from_utf8_lossy(&c));
    }
    env.server.record("stream", text);

    // keygate's own errors, some carrying near-misses of the real client key.
    // A different character at position 20, whatever the key has there.
    let swapped = if &key[20..21] == "X" { "Y" } else { "X" };
    let typo = format!("{}{swapped}{}", &key[..20], &key[21..]);
    for auth in [format!("Bearer {typo}"), format!("Bearer {key}junk")] {
        let resp = env
            .server
            .send(
                Req::post("/v1/chat/completions")
                    .header("authorization", &auth)
                    .json(&chat_body("gpt-4o")),
            )
            .await;
        assert_eq!(resp.status, 401);
    }
    assert_eq!(
        env.server
            .send(Req::post("/nope").bearer(&key).json(&json!({})))
            .await
            .status,
        404
    );
    // The upstream rejecting the key: keygate answers without echoing it.
    env.openai.set_keys(&[]);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert!(
        resp.status.is_client_error() || resp.status.is_server_error(),
        "{}",
        resp.status
    );
    env.openai.set_keys(&[OPENAI_KEY]);

    // Admin pages and CLI listings.
    assert_eq!(env.server.admin_get("/metrics").await.status, 200);
    env.server.admin_get("/readyz").await;
    env.kg.run(&["key", "list"]).assert_ok("key list");
    env.kg
        .run(&["key", "list", "--json"])
        .assert_ok("key list --json");
    env.kg.run(&["client", "list"]).assert_ok("client list");
    env.kg
        .run(&["client", "list", "--json"])
        .assert_ok("client list --json");
    // The refusal above is an event: its delivery and the listings of it.
    let delivered = crate::support::eventually(Duration::from_secs(10), || async {
        hook.delivered_of("key_rejected")
    })
    .await;
    assert!(
        delivered.is_some(),
        "the key_rejected event was not delivered"
    );
    env.kg.run(&["events", "--json"]).assert_ok("events --json");
    env.kg.run(&["events"]).assert_ok("events");
    for attempt in hook.attempts() {
        env.kg.record(
            "a [[notify]] delivery",
            format!(
                "{:?}\n{}",
                attempt.seen.headers,
                String::from_utf8_lossy(&attempt.seen.body)
            ),
        );
    }

    // Flush whatever serve still logs on the way out, then check everything.
    env.server.terminate();
    assert!(
        !env.server.stderr().is_empty(),
        "serve logged nothing at RUST_LOG=trace: is the log capture working?"
    );
    assert!(env.kg.captured_bytes() > 1000);
    env.kg.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_error_body_echoing_the_key_is_masked() {
    let env = Env::start().await;
    let echoed = format!(
        r#"{{"error":{{"message":"Key {OPENAI_KEY} is not allowed to use this model.","type":"invalid_request_error","param":null,"code":"model_not_allowed"}}}}"#
    );
    env.openai.push_response(400, &[], &echoed);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let leaks = find_leaks(
        &[OPENAI_KEY.to_string()],
        &[("client response".to_string(), resp.everything())],
    );
    assert!(
        leaks.is_empty(),
        "an upstream body echoing the key reached the client unmasked:\n{}",
        leaks.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_echoed_as_json_unicode_escapes_is_masked_too() {
    let env = Env::start().await;
    // The client's JSON decoder turns `\u0073\u006b…` back into the key.
    let escaped: String = OPENAI_KEY
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let echoed = format!(
        r#"{{"error":{{"message":"Key {escaped} is not allowed to use this model.","type":"invalid_request_error","param":null,"code":"model_not_allowed"}}}}"#
    );
    env.openai.push_response(400, &[], &echoed);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let decoded = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    let leaks = find_leaks(
        &[OPENAI_KEY.to_string()],
        &[
            ("client response".to_string(), resp.everything()),
            ("the message as the client decodes it".to_string(), decoded),
        ],
    );
    assert!(
        leaks.is_empty(),
        "a key echoed as \\u escapes reached the client:\n{}",
        leaks.join("\n")
    );
    assert!(resp.text().contains("not allowed"), "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_upstream_unavailable_errors() {
    let dead = closed_port_url();
    let mut env = Env::setup()
        .config(move |b| b.provider_set("openai", "base_url", &format!("\"{dead}\"")))
        .start()
        .await;
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    env.server.record("upstream unavailable", resp.everything());
    // The server's whole output (its log of the failure included) is in the
    // captures once it has exited.
    env.server.terminate();
    assert!(
        env.kg.captured_bytes() > resp.everything().len(),
        "the leak check must cover the server's output, not only the response"
    );
    env.kg.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masked_key_echoes_in_provider_error_shapes_are_scrubbed() {
    let env = Env::start().await;
    // How providers quote a key they refused: its first and last characters
    // around a mask (OPENAI_KEY is sk-test-…c0Fg, XAI_KEY xai-test-…0Mx).
    let stars = "*".repeat(104);
    let openai_shapes = [
        // Project-key style: the prefix, a long run of stars, the last 4.
        format!("sk-test-{stars}c0Fg"),
        // Older: the first 5 to 8 characters, stars, the last 4.
        "sk-te***************************************c0Fg".to_string(),
        "sk-tes***...c0Fg".to_string(),
        // Newest: `sk-...` and the last 4; and an ellipsis, raw and JSON-escaped.
        "sk-...c0Fg".to_string(),
        "sk-te…c0Fg".to_string(),
        r"sk-te\u2026c0Fg".to_string(),
    ];
    let openai_body = |shape: &str| {
        format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {shape}. You can find your API key at https://platform.openai.com/account/api-keys. **Note** 2*3 stays.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
        )
    };
    let leaks_in = |resp: &crate::support::client::Resp| {
        find_leaks(
            &[OPENAI_KEY.to_string(), XAI_KEY.to_string()],
            &[("client response".to_string(), resp.everything())],
        )
    };
    for shape in &openai_shapes {
        // A 400 passes through: the message arrives, the masked key does not.
        env.openai.push_response(400, &[], &openai_body(shape));
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 400, "{}", resp.text());
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.starts_with("Incorrect API key provided: ***")
                && message.ends_with(
                    "***. You can find your API key at https://platform.openai.com/account/api-keys. **Note** 2*3 stays."
                ),
            "{shape}: {message}"
        );
        for fragment in [shape.as_str(), "c0Fg", "sk-te"] {
            assert!(!resp.everything().contains(fragment), "{shape}: {message}");
        }
        assert!(leaks_in(&resp).is_empty(), "{:?}", leaks_in(&resp));
        // OpenAI's real 401 with the same quote: whatever reaches the client
        // carries none of it either.
        env.openai.push_response(401, &[], &openai_body(shape));
        let resp = env.server.send(env.chat("gpt-4o")).await;
        for fragment in [shape.as_str(), "c0Fg", "sk-te"] {
            assert!(
                !resp.everything().contains(fragment),
                "{}",
                resp.everything()
            );
        }
        assert!(leaks_in(&resp).is_empty(), "{:?}", leaks_in(&resp));
    }

    // xAI answers a bad key with a 400 quoting two characters each side.
    let xai_body = r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***Mx. You can obtain an API key from https://console.x.ai."}"#;
    env.xai.push_response(400, &[], xai_body);
    let resp = env.server.send(env.chat("grok-3")).await;
    let text = resp.everything();
    assert!(!text.contains("xa***Mx") && !text.contains("Mx."), "{text}");
    if resp.status == 400 {
        assert!(
            resp.json()["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("Incorrect API key provided: ***")
                    && e.ends_with("*. You can obtain an API key from https://console.x.ai.")),
            "{text}"
        );
    }
    assert!(leaks_in(&resp).is_empty(), "{:?}", leaks_in(&resp));

    // A response header quoting a masked key is dropped.
    env.openai.push_response(
        400,
        &[("x-debug-key", "sk-te****c0Fg"), ("x-request-id", "req_123")],
        r#"{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}"#,
    );
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.headers.get("x-debug-key").is_none(),
        "{}",
        resp.everything()
    );
    assert!(
        resp.headers.get("x-request-id").is_some(),
        "{}",
        resp.everything()
    );
}

/// An upstream error body too large to scrub in flight, quoting the key: the
/// client gets keygate's own 502 and the debug log shows its first bytes —
/// scrubbed, like everything else (the one log path that prints upstream
/// body bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_error_body_is_logged_scrubbed() {
    let mut env = Env::setup().serve_env("RUST_LOG", "debug").start().await;
    let mut body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {OPENAI_KEY}.","type":"invalid_request_error","padding":""#
    );
    body.push_str(&"x".repeat(70 * 1024));
    body.push_str(r#""}}"#);
    env.openai.push_response(400, &[], &body);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "upstream_error_too_large");
    env.server.terminate();
    let log = env.server.stderr();
    assert!(
        log.contains("upstream error body over the scrub limit"),
        "the debug line must be there for this test to mean anything:\n{log}"
    );
    env.kg.assert_no_secret_leaks();
}
