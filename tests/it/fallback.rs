//! Upstream 401 handling (docs/design.md §4, §5): a rejected key is retried once with
//! the next key before any byte reaches the client; when every key is
//! rejected the client gets 502 `upstream_key_rejected`, not the upstream's 401.

use bytes::Bytes;

use crate::support::{chat_body, Env, Req, OPENAI_KEY, OPENAI_KEY_2};

fn bearer(key: &str) -> Option<String> {
    Some(format!("Bearer {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_401_is_retried_once_with_the_fallback_key() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY_2]);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        crate::support::mock::chat_completion_body("gpt-4o")
    );
    let seen = env.openai.requests();
    assert_eq!(seen.len(), 2, "two attempts: current, then fallback");
    assert_eq!(seen[0].header("authorization"), bearer(OPENAI_KEY));
    assert_eq!(seen[1].header("authorization"), bearer(OPENAI_KEY_2));
    assert_eq!(
        seen[0].body, seen[1].body,
        "the retry resends the same body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_resends_a_chunked_body_intact() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY_2]);
    let body = chat_body("gpt-4o").to_string();
    let parts: Vec<Bytes> = body
        .as_bytes()
        .chunks(7)
        .map(Bytes::copy_from_slice)
        .collect();
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&env.client_key)
                .header("content-type", "application/json")
                .chunked(parts),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.openai.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, Bytes::from(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_rejected_is_502_upstream_key_rejected_naming_the_fix() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_keys(&[]);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(502, "upstream_key_rejected");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("openai") && message.contains("keygate key verify"),
        "the message must name the provider and `keygate key verify`: {message}"
    );
    let seen = env.openai.requests();
    assert_eq!(seen.len(), 2, "each key is tried exactly once");
    assert_eq!(seen[0].header("authorization"), bearer(OPENAI_KEY));
    assert_eq!(seen[1].header("authorization"), bearer(OPENAI_KEY_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_rejected_key_is_502_not_the_upstream_401() {
    let env = Env::start().await;
    env.openai.set_keys(&[]);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(502, "upstream_key_rejected");
    assert!(
        !resp.text().contains("invalid_api_key"),
        "the upstream's 401 body must not reach the client: {}",
        resp.text()
    );
    assert_eq!(env.openai.hits(), 1);
}
