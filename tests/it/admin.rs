//! The admin listener (docs/design.md §8, §9) and the life of `keygate serve`: the
//! listener lines, health and readiness, metrics, SIGTERM.

use crate::support::metrics::{metric_value, samples};
use crate::support::mock::AuthStyle;
use crate::support::{
    chat_body, eventually, Env, Keygate, KeygateBuilder, Mock, Req, OPENAI_KEY, RELOAD_WAIT,
    XAI_KEY,
};

const METRICS: [&str; 4] = [
    "keygate_requests_total",
    "keygate_request_duration_seconds",
    "keygate_upstream_duration_seconds",
    "keygate_active_requests",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_prints_both_real_listener_addresses_and_exits_0_on_sigterm() {
    let mut env = Env::start().await;
    assert_ne!(env.server.client.port(), 0);
    assert_ne!(env.server.admin.port(), 0);
    assert_ne!(env.server.client, env.server.admin);
    assert!(env.server.client.ip().is_loopback());
    let stdout = env.server.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("keygate: client listener on {}", env.server.client),
            format!("keygate: admin listener on {}", env.server.admin),
        ],
        "serve must print exactly the two listener lines on stdout"
    );
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let status = env.server.terminate();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM must end serve with exit code 0 (got {status:?})\n{}",
        crate::support::keygate::tail(&env.server.stderr())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_is_200() {
    let env = Env::start().await;
    let resp = env.server.admin_get("/healthz").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_without_upstream_keys_and_200_once_they_are_added() {
    let openai = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let xai = Mock::start(&[XAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &openai.url(), "bearer")
            .provider("xai", &xai.url(), "bearer"),
    );
    kg.vault_init();
    let server = kg.serve();
    let resp = server.admin_get("/readyz").await;
    assert_eq!(
        resp.status,
        503,
        "not ready without any upstream key: {}",
        resp.text()
    );
    assert_eq!(server.admin_get("/healthz").await.status, 200);

    kg.add_key("openai", OPENAI_KEY);
    kg.add_key("xai", XAI_KEY);
    let ready = eventually(RELOAD_WAIT, || async {
        (server.admin_get("/readyz").await.status == 200).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/readyz still not 200 3 s after the keys were added"
    );
    drop(server);
    drop(kg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_name_the_request_metrics_and_count_requests() {
    let env = Env::start().await;
    let before = env.server.admin_get("/metrics").await;
    assert_eq!(before.status, 200, "{}", before.text());
    let before = metric_value(&before.text(), "keygate_requests_total", &[]).unwrap_or(0.0);

    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = env
        .server
        .send(Req::post("/v1/chat/completions").json(&chat_body("gpt-4o")))
        .await;
    assert_eq!(resp.status, 401);

    let page = eventually(RELOAD_WAIT, || async {
        let page = env.server.admin_get("/metrics").await.text();
        let now = metric_value(&page, "keygate_requests_total", &[]).unwrap_or(0.0);
        (now >= before + 1.0).then_some(page)
    })
    .await
    .expect("keygate_requests_total did not move after a proxied request");
    let samples = samples(&page);
    for name in METRICS {
        // A histogram's samples are `NAME_bucket`, `NAME_sum` and `NAME_count`.
        assert!(
            samples.iter().any(|s| s.name.starts_with(name)),
            "/metrics has no sample of {name}:\n{page}"
        );
    }
    assert!(
        samples.iter().any(|s| s.name == "keygate_requests_total"
            && s.has(&[("provider", "openai"), ("status", "200")])),
        "no keygate_requests_total sample for the openai 200:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_paths_do_not_exist_on_the_client_listener() {
    let env = Env::start().await;
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/admin/keys",
        "/admin/clients",
    ] {
        let resp = env
            .server
            .send(Req::get(path).bearer(&env.client_key))
            .await;
        resp.assert_keygate_error(404, "unknown_route");
        let resp = env
            .server
            .send(Req::get(path).header("authorization", "Bearer admin-token"))
            .await;
        assert_ne!(resp.status, 200, "{path} answered on the client listener");
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits_0() {
    use std::time::Duration;

    use crate::support::client::{next_data, open_h1};
    use crate::support::mock::sse_events;

    let mut env = Env::start().await;
    let release = env.openai.hold_streams();
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = open_h1(
        env.server.client,
        Req::post("/v1/chat/completions")
            .bearer(&env.client_key)
            .json(&body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = String::new();
    while !got.contains("\n\n") {
        let chunk = next_data(&mut body, Duration::from_secs(5))
            .await
            .expect("stream ended early");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }

    env.server.signal_term();
    env.server.wait_for_log("shutdown requested").await;
    release.release();
    while let Some(chunk) = next_data(&mut body, Duration::from_secs(10)).await {
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    env.server.record("stream", got.clone());
    assert_eq!(
        got,
        sse_events("gpt-4o", true).concat(),
        "an in-flight stream must be drained, not cut, on SIGTERM"
    );
    let status = env.server.wait_exit();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}
