//! The request path end to end (docs/design.md §4): what the upstream receives, what
//! the client gets back, and keygate's own errors.

use bytes::Bytes;
use serde_json::json;

use crate::support::client::send_raw;
use crate::support::mock::{self, closed_port_url};
use crate::support::{chat_body, Env, Req, OPENAI_KEY, XAI_KEY};

/// The upstream never sees anything of the client's credential.
fn assert_no_client_credential(seen: &mock::Seen, client_key: &str) {
    let all = seen.everything();
    assert!(
        !all.contains(client_key) && !all.contains("kg_"),
        "the upstream saw the client key:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_sees_vault_key_and_never_client_bearer_key() {
    let env = Env::start().await;
    let body = chat_body("gpt-4o");
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&env.client_key)
                .json(&body),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        mock::chat_completion_body("gpt-4o"),
        "the completion must reach the client unchanged"
    );
    assert_eq!(env.openai.hits(), 1);
    assert_eq!(env.xai.hits(), 0);
    let seen = env.openai.last();
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(seen.header("x-api-key"), None);
    assert_no_client_credential(&seen, &env.client_key);
    assert_eq!(
        seen.body,
        Bytes::from(body.to_string()),
        "a non-streaming body is forwarded as-is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_sees_vault_key_and_never_client_x_api_key() {
    let env = Env::start().await;
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .header("x-api-key", &env.client_key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.openai.last();
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the client's x-api-key must be stripped"
    );
    assert_no_client_credential(&seen, &env.client_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_with_x_api_key_auth_receives_x_api_key_and_no_authorization() {
    let env = Env::setup()
        .config(|b| b.provider_set("xai", "auth", "\"x-api-key\""))
        .start()
        .await;
    let resp = env.server.send(env.chat("grok-3")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.xai.hits(), 1);
    let seen = env.xai.last();
    assert_eq!(seen.header("x-api-key").as_deref(), Some(XAI_KEY));
    assert_eq!(
        seen.header("authorization"),
        None,
        "no Authorization header for an x-api-key provider"
    );
    assert_no_client_credential(&seen, &env.client_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_with_api_key_auth_receives_api_key_and_no_authorization() {
    let env = Env::setup()
        .config(|b| b.provider_set("openai", "auth", "\"api-key\""))
        .start()
        .await;
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.openai.last();
    assert_eq!(seen.header("api-key").as_deref(), Some(OPENAI_KEY));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
    assert_no_client_credential(&seen, &env.client_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn method_path_query_and_body_are_forwarded_as_is() {
    let env = Env::start().await;
    let resp = env
        .server
        .send(Req::get("/v1/models?limit=2&order=desc").bearer(&env.client_key))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), mock::models_body());
    let seen = env.openai.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/v1/models?limit=2&order=desc");

    let body = r#"{"model":"text-embedding-3-small","input":"ünïcode   and  spacing"}"#;
    let resp = env
        .server
        .send(
            Req::post("/v1/embeddings")
                .bearer(&env.client_key)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), mock::embeddings_body());
    let seen = env.openai.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/v1/embeddings");
    assert_eq!(seen.body, Bytes::from(body), "body bytes must be unchanged");
    assert_eq!(
        seen.header("content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_headers_and_client_credentials_are_not_forwarded() {
    let env = Env::start().await;
    let body = chat_body("gpt-4o").to_string();
    let key = &env.client_key;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n\
         Host: {}\r\n\
         Authorization: Bearer {key}\r\n\
         x-api-key: {key}\r\n\
         api-key: {key}\r\n\
         Connection: close, X-Foo\r\n\
         X-Foo: named-by-connection\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Custom-Keep: end-to-end\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {body}",
        env.server.client,
        body.len()
    );
    let (status, text) = send_raw(env.server.client, raw.as_bytes()).await;
    env.server.record("raw response", text.clone());
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.openai.hits(), 1);
    let seen = env.openai.last();
    assert_eq!(
        seen.version,
        crate::support::config::upstream_version(),
        "the protocol the provider's `http` asks for (KEYGATE_TEST_UPSTREAM_HTTP)"
    );
    // Addressed to the provider (`Host` or `:authority`), not to keygate.
    let provider_host = env.openai.url().split_once("://").unwrap().1.to_owned();
    assert_eq!(seen.authority, Some(provider_host), "{}", seen.everything());
    for h in [
        "x-foo",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "api-key",
        "x-api-key",
    ] {
        assert_eq!(
            seen.header(h),
            None,
            "`{h}` must not reach the upstream:\n{}",
            seen.everything()
        );
    }
    if let Some(c) = seen.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-foo"),
            "the client's Connection header was forwarded: {c}"
        );
    }
    assert_eq!(
        seen.header("x-custom-keep").as_deref(),
        Some("end-to-end"),
        "end-to-end headers are forwarded"
    );
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_no_client_credential(&seen, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_host_forwarded_host_and_body_urls_do_not_change_the_upstream() {
    let env = Env::start().await;
    let elsewhere = closed_port_url();
    let authority = elsewhere.trim_start_matches("http://").to_string();
    let mut body = chat_body("gpt-4o");
    body["api_base"] = json!(elsewhere);
    body["base_url"] = json!(elsewhere);
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&env.client_key)
                .header("host", &authority)
                .header("x-forwarded-host", &authority)
                .header("x-forwarded-proto", "https")
                .json(&body),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        env.openai.hits(),
        1,
        "the request must go to the configured upstream"
    );

    // An absolute-form request target naming another host changes nothing either.
    let b = chat_body("gpt-4o").to_string();
    let raw = format!(
        "POST {elsewhere}/v1/chat/completions HTTP/1.1\r\n\
         Host: {authority}\r\n\
         Authorization: Bearer {}\r\n\
         Connection: close\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{b}",
        env.client_key,
        b.len()
    );
    let (status, text) = send_raw(env.server.client, raw.as_bytes()).await;
    env.server.record("raw response", text.clone());
    assert_eq!(status, 200, "{text}");
    assert_eq!(env.openai.hits(), 2);
    assert_eq!(env.openai.last().uri, "/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_over_max_request_body_is_413_and_upstream_sees_nothing() {
    let env = Env::setup()
        .config(|b| {
            b.server("max_request_body", "\"1KiB\"")
                .server("retry_buffer", "\"1KiB\"")
        })
        .start()
        .await;
    let mut big = chat_body("gpt-4o");
    big["messages"][0]["content"] = json!("x".repeat(2048));
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&env.client_key)
                .json(&big),
        )
        .await;
    resp.assert_keygate_error(413, "request_too_large");
    assert_eq!(env.openai.hits(), 0, "the upstream must see nothing");

    // Without Content-Length (chunked), the limit holds too.
    let text = big.to_string().into_bytes();
    let parts: Vec<Bytes> = text.chunks(512).map(Bytes::copy_from_slice).collect();
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&env.client_key)
                .header("content-type", "application/json")
                .chunked(parts),
        )
        .await;
    resp.assert_keygate_error(413, "request_too_large");

    // A body under the limit still works.
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_upstream_is_502_upstream_unavailable() {
    let dead = closed_port_url();
    let env = Env::setup()
        .config(move |b| b.provider_set("openai", "base_url", &format!("\"{dead}\"")))
        .start()
        .await;
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(502, "upstream_unavailable");
    assert_eq!(env.openai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_without_key_is_503_no_upstream_key() {
    let env = Env::setup().no_key("xai").start().await;
    let resp = env
        .server
        .send(
            Req::post("/xai/v1/chat/completions")
                .bearer(&env.client_key)
                .json(&chat_body("grok-3")),
        )
        .await;
    resp.assert_keygate_error(503, "no_upstream_key");
    assert_eq!(env.xai.hits(), 0, "nothing may be sent without a key");

    // The provider that has a key is unaffected.
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_error_statuses_pass_through_unchanged() {
    let env = Env::start().await;
    let cases = [
        (
            400,
            r#"{"error":{"message":"Invalid value for 'temperature'.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o on tokens per min (TPM).","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            500,
            r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
        ),
    ];
    for (status, body) in cases {
        env.openai
            .push_response(status, &[("x-request-id", "req_mock_123")], body);
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
        assert_eq!(resp.text(), body, "the upstream body must pass unchanged");
        assert_eq!(
            resp.headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("req_mock_123"),
            "upstream response headers pass through"
        );
    }
    assert_eq!(
        env.openai.hits(),
        3,
        "no retries for 400/429 (single key)/500"
    );

    // An upstream 404 (path unknown upstream) is the upstream's, not keygate's.
    let resp = env
        .server
        .send(
            Req::post("/v1/no-such-endpoint")
                .bearer(&env.client_key)
                .json(&json!({})),
        )
        .await;
    assert_eq!(resp.status, 404);
    assert!(
        resp.text().contains("Invalid URL"),
        "expected the upstream's 404 body, got {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_prior_knowledge_request_is_proxied() {
    let env = Env::start().await;
    let resp = env.server.send_h2(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), mock::chat_completion_body("gpt-4o"));
    let seen = env.openai.last();
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_no_client_credential(&seen, &env.client_key);

    // And a keygate error over h2 has the same shape.
    let resp = env
        .server
        .send_h2(Req::post("/v1/chat/completions").json(&chat_body("gpt-4o")))
        .await;
    resp.assert_keygate_error(401, "invalid_client_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_added_on_a_running_server_is_used() {
    let env = Env::setup().no_key("xai").start().await;
    let resp = env.server.send(env.chat("grok-3")).await;
    resp.assert_keygate_error(503, "no_upstream_key");

    env.kg.add_key("xai", XAI_KEY);
    let ok = crate::support::eventually(crate::support::RELOAD_WAIT, || async {
        (env.server.send(env.chat("grok-3")).await.status == 200).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "a key added with `key add` is not used by the running server after 3 s"
    );
    assert_eq!(
        env.xai.last().header("authorization").as_deref(),
        Some(format!("Bearer {XAI_KEY}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_redirect_is_passed_back_not_followed() {
    let env = Env::start().await;
    let location = format!("{}/v1/chat/completions", env.xai.url());
    env.openai
        .push_response(307, &[("location", location.as_str())], "{}");
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 307, "{}", resp.text());
    assert_eq!(
        resp.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(location.as_str())
    );
    assert_eq!(env.openai.hits(), 1);
    assert_eq!(env.xai.hits(), 0, "keygate must never follow a redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_headers_from_the_upstream_never_reach_the_client() {
    let env = Env::start().await;
    env.openai.push_response(
        200,
        &[
            ("connection", "x-up-hop"),
            ("x-up-hop", "named-by-connection"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"up\""),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
            ("x-up-keep", "end-to-end"),
        ],
        &mock::chat_completion_body("gpt-4o"),
    );
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for h in [
        "x-up-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(
            resp.headers.get(h).is_none(),
            "`{h}` from the upstream reached the client: {:?}",
            resp.headers
        );
    }
    if let Some(c) = resp.headers.get("connection") {
        assert!(
            !c.to_str().unwrap_or("").contains("x-up-hop"),
            "the upstream's Connection header was passed on: {c:?}"
        );
    }
    assert_eq!(
        resp.headers.get("x-up-keep").map(|v| v.to_str().unwrap()),
        Some("end-to-end"),
        "end-to-end headers come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let env = Env::start().await;
    for i in 0..20 {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    for i in 0..5 {
        let resp = env.server.send(env.chat_stream("gpt-4o")).await;
        assert_eq!(resp.status, 200, "stream {i}: {}", resp.text());
        assert!(resp.text().contains("data: [DONE]"), "stream {i}");
    }
    assert_eq!(
        env.openai.connections(),
        1,
        "25 requests one after another must share one upstream connection"
    );

    // Concurrent requests open more, but never more than are in flight at
    // once: two bursts of 8 need at most 8 connections between them.
    let burst = || {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (addr, req) = (env.server.client, env.chat("gpt-4o"));
            set.spawn(async move { crate::support::client::send_h1(addr, req).await.status });
        }
        set.join_all()
    };
    for round in 0..2 {
        let statuses = burst().await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "burst {round}: {statuses:?}"
        );
    }
    let opened = env.openai.connections();
    assert!(
        opened <= 8,
        "{opened} upstream connections for two bursts of 8 requests: idle ones were not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_answering_with_empty_bodies_are_reused_too() {
    let env = Env::start().await;
    for i in 0..5 {
        env.openai
            .push_response(200, &[("content-type", "application/json")], "");
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "", "request {i}");
    }
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        env.openai.connections(),
        1,
        "an empty upstream body must not cost its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_logs_one_access_line() {
    let env = Env::start().await;
    let ok = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refused = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer("kg_not_a_key")
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text());

    // The log reaches the harness through a pipe: wait for it, then count.
    let access_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains(" INFO keygate::proxy: request "))
            .count()
    };
    crate::support::eventually(std::time::Duration::from_secs(3), || async {
        (access_lines(&env.server.stderr()) >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let log = env.server.stderr();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" INFO keygate::proxy: request "))
        .collect();
    assert_eq!(access.len(), 2, "one line per request:\n{log}");
    // RFC 3339 UTC with microseconds, then the fields in a fixed order.
    for line in &access {
        let stamp = line.split(' ').next().unwrap_or_default();
        assert_eq!(stamp.len(), 27, "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
    }
    let latency_of = |line: &str| -> Option<u64> {
        let rest = line.split(" latency_us=").nth(1)?;
        rest.split(' ').next()?.parse().ok()
    };
    let served = access[0];
    assert!(
        served.contains(r#"request client="app" provider="openai" status=200 latency_us="#),
        "{served}"
    );
    assert!(
        served.contains(r#" key_id="key_"#) && served.ends_with(r#" attempts=1 error="-""#),
        "{served}"
    );
    assert!(latency_of(served).is_some(), "{served}");
    let denied = access[1];
    assert!(
        denied.contains(r#"request client="-" provider="-" status=401 latency_us="#),
        "{denied}"
    );
    assert!(
        denied.ends_with(r#" key_id="-" attempts=0 error="invalid_client_key""#),
        "{denied}"
    );
    assert!(latency_of(denied).is_some(), "{denied}");
}
