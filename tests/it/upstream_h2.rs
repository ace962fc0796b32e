//! HTTP/2 to the upstream (`[providers.NAME] http`; README "HTTP/2 to the
//! upstream"): over h2c (prior knowledge) and over TLS with ALPN against a
//! test CA; chat, streaming event by event and the 401 fallback on one
//! shared connection; a server limit of 2 streams per connection with 20
//! streams held open (another connection for each two); a client that stops
//! reading does not stall the others on its connection; GOAWAYs mid-run cost
//! no client a failed request.

use std::time::Duration;

use crate::support::client::{next_data, open_h1, read_body, Req};
use crate::support::mock::{sse_events, AuthStyle, Listen, Mock, TestCa};
use crate::support::{chat_body, Keygate, KeygateBuilder, Server, OPENAI_KEY, OPENAI_KEY_2};

/// keygate in front of `mock`, speaking `http` to it, with one key and one client.
fn keygate(
    mock: &Mock,
    http: &str,
    extra: impl FnOnce(KeygateBuilder) -> KeygateBuilder,
) -> (Keygate, String) {
    let builder = KeygateBuilder::new()
        .provider("openai", &mock.url(), "bearer")
        .provider_set("openai", "http", &format!("\"{http}\""));
    let kg = Keygate::new(&extra(builder));
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client = kg.add_client("app");
    (kg, client)
}

fn stream_request(client: &str) -> Req {
    let mut body = chat_body("gpt-4o");
    body["stream"] = serde_json::json!(true);
    Req::post("/v1/chat/completions").bearer(client).json(&body)
}

fn chat(client: &str) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(client)
        .json(&chat_body("gpt-4o"))
}

/// The mock's stream as the client sees it: every event in order (the
/// usage chunk keygate asked for removed), then `[DONE]`.
fn assert_whole_stream(text: &str) {
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let contents: String = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(contents, "Hello from the mock.", "{text}");
    assert_eq!(events.len(), sse_events("gpt-4o", false).len(), "{text}");
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
}

/// Reads one SSE stream to its end: (body text, ended cleanly).
async fn whole_stream(server: &Server, client: &str) -> (String, bool) {
    let resp = open_h1(server.client, stream_request(client)).await;
    assert_eq!(resp.status(), 200);
    let (body, clean) = read_body(resp).await;
    (String::from_utf8_lossy(&body).into_owned(), clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_h2c_chat_streams_and_fallback_share_one_connection() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let (kg, client) = keygate(&mock, "h2", |b| b);
    // A rotation to a key the upstream refuses: every request falls back.
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "1h"],
        Some(OPENAI_KEY_2),
        &[],
    )
    .assert_ok("key rotate");
    let server = kg.serve();

    let resp = server.send(chat(&client)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["choices"][0]["message"]["role"], "assistant");

    // Event by event: the first arrives while the upstream holds the rest.
    let release = mock.hold_streams();
    let resp = open_h1(server.client, stream_request(&client)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = next_data(&mut body, Duration::from_secs(5))
        .await
        .expect("the first event, while the upstream holds the stream");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    release.release();
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(more) = next_data(&mut body, Duration::from_secs(5)).await {
        rest.push_str(&String::from_utf8_lossy(&more));
    }
    assert_whole_stream(&rest);

    // Concurrent requests multiplex on the same connection.
    let sends = (0..8).map(|_| server.send(chat(&client)));
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let seen = mock.requests();
    assert!(seen.len() >= 11, "{}", seen.len());
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "every upstream request over HTTP/2"
    );
    assert!(
        seen.iter()
            .all(|s| s.header("host").is_none() && s.header("connection").is_none()),
        "no Host or connection-specific header over h2"
    );
    assert!(
        seen.iter()
            .any(|s| s.header("authorization") == Some(format!("Bearer {OPENAI_KEY_2}"))),
        "the rejected key was tried"
    );
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}")),
        "and the fallback served"
    );
    assert_eq!(
        mock.connections(),
        1,
        "one upstream connection for everything"
    );
}

/// keygate in front of a TLS `mock` whose CA is `ca`, speaking `http` to it.
fn keygate_tls(mock: &Mock, ca: &TestCa, http: &str, dir: &std::path::Path) -> (Keygate, String) {
    let ca_file = dir.join(format!("upstream-ca-{http}.pem"));
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let ca_value = format!("\"{}\"", ca_file.display());
    keygate(mock, http, |b| b.server("upstream_ca_file", &ca_value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_auto_negotiates_h2_by_alpn_and_h1_stays_h1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&["h2", "http/1.1"]);
    let mock = Mock::start_with(&[OPENAI_KEY], AuthStyle::Bearer, Listen::default().tls(&ca)).await;
    for (http, version) in [
        ("auto", http::Version::HTTP_2),
        ("h1", http::Version::HTTP_11),
    ] {
        let (kg, client) = keygate_tls(&mock, &ca, http, dir.path());
        let server = kg.serve();
        let resp = server.send(chat(&client)).await;
        assert_eq!(resp.status, 200, "http = {http}: {}", resp.text());
        let (text, clean) = whole_stream(&server, &client).await;
        assert!(clean, "{text}");
        assert_whole_stream(&text);
        assert_eq!(mock.last().version, version, "http = {http}");
    }

    // Without the CA, the certificate is refused: a 502 naming it.
    let (kg, client) = keygate(&mock, "auto", |b| b);
    let server = kg.serve();
    let resp = server.send(chat(&client)).await;
    resp.assert_keygate_error(502, "upstream_unavailable");
    assert!(resp.text().contains("certificate"), "{}", resp.text());

    // A server that offers only HTTP/1.1, with http = "h2": a clear 502.
    let h1_only = TestCa::new(&["http/1.1"]);
    let mock = Mock::start_with(
        &[OPENAI_KEY],
        AuthStyle::Bearer,
        Listen::default().tls(&h1_only),
    )
    .await;
    let (kg, client) = keygate_tls(&mock, &h1_only, "h2", dir.path());
    let server = kg.serve();
    let resp = server.send(chat(&client)).await;
    resp.assert_keygate_error(502, "upstream_unavailable");
    assert!(
        resp.text().contains("did not agree to HTTP/2"),
        "{}",
        resp.text()
    );
    // The same server with "auto" serves over HTTP/1.1.
    let (kg, client) = keygate_tls(&mock, &h1_only, "auto", dir.path());
    let server = kg.serve();
    assert_eq!(server.send(chat(&client)).await.status, 200);
    assert_eq!(mock.last().version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_limit_of_two_streams_opens_a_connection_per_two() {
    let mock = Mock::start_with(
        &[OPENAI_KEY],
        AuthStyle::Bearer,
        Listen::default().max_concurrent_streams(2),
    )
    .await;
    let (kg, client) = keygate(&mock, "h2", |b| b);
    let server = kg.serve();
    let release = mock.hold_streams();
    let opens = (0..20).map(|_| open_h1(server.client, stream_request(&client)));
    let mut bodies = Vec::new();
    for resp in futures_util::future::join_all(opens).await {
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = next_data(&mut body, Duration::from_secs(10)).await;
        assert!(first.is_some(), "every held stream got its first event");
        bodies.push(body);
    }
    assert_eq!(
        mock.connections(),
        10,
        "20 streams held open, 2 allowed per connection"
    );
    release.release();
    for mut body in bodies {
        let mut rest = Vec::new();
        while let Some(more) = next_data(&mut body, Duration::from_secs(10)).await {
            rest.extend_from_slice(&more);
        }
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains(" mock.") && rest.ends_with("data: [DONE]\n\n"),
            "the rest of every stream: {rest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_stalls_only_its_own_stream() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let (kg, client) = keygate(&mock, "h2", |b| b);
    let server = kg.serve();
    // Prime the connection, then a 16 MiB answer the client will not read.
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let big = "x".repeat(16 << 20);
    mock.push_response(200, &[("content-type", "application/octet-stream")], &big);
    let stalled = open_h1(server.client, chat(&client)).await;
    assert_eq!(stalled.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..5 {
        let resp = tokio::time::timeout(Duration::from_secs(5), server.send(chat(&client)))
            .await
            .unwrap_or_else(|_| {
                panic!("request {n} stalled behind the client that stopped reading")
            });
        assert_eq!(resp.status, 200);
    }
    assert_eq!(mock.connections(), 1, "all on the one connection");
    let (body, clean) = read_body(stalled).await;
    assert!(clean);
    assert_eq!(body.len(), 16 << 20, "the stalled stream resumes, intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn goaways_mid_run_fail_no_request() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    mock.set_stream_delay(Duration::from_millis(5));
    let (kg, client) = keygate(&mock, "h2", |b| b);
    let server = std::sync::Arc::new(kg.serve());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|n| {
            let (server, client, stop) = (server.clone(), client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let status = if n % 2 == 0 {
                        server.send(chat(&client)).await.status.as_u16()
                    } else {
                        let (text, clean) = whole_stream(&server, &client).await;
                        if clean && text.ends_with("data: [DONE]\n\n") {
                            200
                        } else {
                            599
                        }
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        mock.go_away();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    assert!(all.len() > 50, "{} requests", all.len());
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
    assert!(
        mock.connections() >= 4,
        "a new connection after each GOAWAY"
    );
}
