//! Secrets never leak (DESIGN §2, §5, §6): with every process at
//! `RUST_LOG=trace`, no upstream key, client key or master key — nor any
//! 8-character window of one — appears in any log line, CLI output (apart from
//! the one `client add` line that hands out the key), `/metrics`, or response.
//! The harness runs this check at the end of every test; this module exercises
//! the paths most likely to leak and checks explicitly.

use std::time::Duration;

use serde_json::json;

use crate::support::client::{next_data, open_h1};
use crate::support::mock::closed_port_url;
use crate::support::{chat_body, find_leaks, Env, Req, OPENAI_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_logs_cli_output_metrics_or_error_bodies() {
    let mut env = Env::start().await;
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
    let typo = format!("{}X{}", &key[..20], &key[21..]);
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
async fn no_secret_in_upstream_unavailable_errors() {
    let dead = closed_port_url();
    let env = Env::setup()
        .config(move |b| b.provider_set("openai", "base_url", &format!("\"{dead}\"")))
        .start()
        .await;
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    // Checked by the harness when `env` drops.
}
