//! Routing (docs/design.md §4): `/{prefix}/v1/...` goes to that provider with the
//! prefix stripped; plain `/v1/...` goes to `routing.default` unless the body's
//! `model` starts with a prefix listed in `routing.models`; anything else is a
//! 404 `unknown_route` that reaches no upstream.

use crate::support::{chat_body, Env, Req, OPENAI_KEY, XAI_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn path_prefix_routes_to_its_provider_with_the_prefix_stripped() {
    let env = Env::start().await;
    // The model would route to openai; the path prefix wins.
    let resp = env
        .server
        .send(
            Req::post("/xai/v1/chat/completions")
                .bearer(&env.client_key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.xai.hits(), 1);
    assert_eq!(env.openai.hits(), 0);
    let seen = env.xai.last();
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {XAI_KEY}").as_str()),
        "each provider gets its own key"
    );

    let resp = env
        .server
        .send(Req::get("/openai/v1/models?limit=1").bearer(&env.client_key))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.openai.hits(), 1);
    assert_eq!(env.openai.last().uri, "/v1/models?limit=1");
    assert_eq!(
        env.openai.last().header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_prefix_routes_plain_v1_requests() {
    let env = Env::start().await;
    let resp = env.server.send(env.chat("grok-3")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!((env.xai.hits(), env.openai.hits()), (1, 0), "grok-3 → xai");
    assert_eq!(env.xai.last().uri, "/v1/chat/completions");
    assert_eq!(env.xai.last().json()["model"], "grok-3");

    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        (env.xai.hits(), env.openai.hits()),
        (1, 1),
        "gpt-4o → openai"
    );

    // No model at all (GET): the default provider.
    let resp = env
        .server
        .send(Req::get("/v1/models").bearer(&env.client_key))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!((env.xai.hits(), env.openai.hits()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_are_404_and_reach_no_upstream() {
    let env = Env::start().await;
    for path in [
        "/nope",
        "/v2/x",
        "/",
        "/nope/v1/chat/completions",
        "/xai/v2/chat/completions",
    ] {
        let resp = env
            .server
            .send(
                Req::post(path)
                    .bearer(&env.client_key)
                    .json(&chat_body("gpt-4o")),
            )
            .await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        resp.assert_keygate_error(404, "unknown_route");
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dot_segments_cannot_climb_out_of_the_route() {
    let env = Env::start().await;
    for path in [
        "/v1/../admin/keys",
        "/xai/v1/../../openai/v1/models",
        "/v1/%2e%2e/%2e%2e/etc",
        "/openai/v1/%2E%2E/x",
    ] {
        let resp = env
            .server
            .send(Req::get(path).bearer(&env.client_key))
            .await;
        resp.assert_keygate_error(400, "invalid_path");
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}
