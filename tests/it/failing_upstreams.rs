//! Upstreams that fail (docs/design.md §3 `[server]` timeouts, §4 error table): refused
//! connections, silence, resets and stalls mid-stream. keygate answers with its
//! own 502/504 when nothing was sent yet, never dresses a broken stream up as a
//! complete one, and the next request through it works.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::bad_upstream::{
    drain, hardened, ms, open_h2, read_until, BadUpstream, BodyEnd, End, RefusingPort, Script,
    OK_BODY,
};
use crate::support::client::open_h1;
use crate::support::{eventually, Env, Req};

/// The standard world with the small timeouts and `openai` pointing at `url`.
async fn env_for(url: String) -> Env {
    Env::setup()
        .config(move |b| hardened(b).provider("openai", &url, "bearer"))
        .start()
        .await
}

fn stream_body() -> serde_json::Value {
    json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Count."}],
        "stream": true,
    })
}

fn stream_req(env: &Env) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(&env.client_key)
        .json(&stream_body())
}

/// A plain request through keygate to the (by now well-behaved) upstream works.
async fn next_request_succeeds(env: &Env, after: &str) {
    let t = Instant::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(
        resp.status,
        200,
        "the request after {after} failed: {}",
        resp.text()
    );
    assert_eq!(resp.text(), OK_BODY, "after {after}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the request after {after} took {} ms",
        ms(t)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_connections_costs_no_request() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;
    for i in 0..10 {
        // Each answer is kept alive, then closed 20 ms later, as an upstream
        // with a short idle timeout does, before keygate reuses it.
        bad.push(Script::OkThenClose {
            after: Duration::from_millis(20),
        });
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), OK_BODY, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bad.accepted(), 10, "each request on a fresh connection");
    next_request_succeeds(&env, "ten closed idle connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_a_fast_502_and_keygate_recovers_when_the_upstream_returns() {
    let port = RefusingPort::new();
    let env = env_for(port.url()).await;

    let t = Instant::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    let took = t.elapsed();
    resp.assert_keygate_error(502, "upstream_unavailable");
    assert!(
        took < Duration::from_secs(1),
        "a refused connection must fail fast, took {} ms",
        took.as_millis()
    );

    // The upstream comes up on that very port: nothing about the failure sticks.
    let bad = BadUpstream::start_on(port);
    next_request_succeeds(&env, "a refused connection").await;
    assert_eq!(bad.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_a_504_after_first_byte_timeout_and_its_connection_is_dropped() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;
    bad.push(Script::Silent);

    let t = Instant::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    let took = t.elapsed();
    resp.assert_keygate_error(504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "upstream_first_byte_timeout is 1s; the 504 came after {} ms",
        took.as_millis()
    );
    assert_eq!(bad.requests(), 1, "the request reached the upstream once");

    // keygate gave up on that exchange: it must not keep the connection to a
    // silent upstream open (one leaked socket per 504).
    let closed = eventually(Duration::from_secs(3), || async {
        (bad.peer_closed() >= 1).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "keygate still holds the connection to the silent upstream 3 s after the 504 (open: {})",
        bad.open()
    );

    next_request_succeeds(&env, "a silent upstream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_stream_breaks_the_client_stream_instead_of_ending_it() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;

    for (end, proto) in [
        (End::Reset, "h1"),
        (End::Fin, "h1"),
        (End::Reset, "h2"),
        (End::Fin, "h2"),
    ] {
        let what = format!("{end:?} after 2 events over {proto}");
        bad.push(Script::Sse {
            events: 2,
            interval: Duration::from_millis(50),
            end,
        });
        let resp = if proto == "h1" {
            open_h1(env.server.client, stream_req(&env)).await
        } else {
            open_h2(
                env.server.client,
                "/v1/chat/completions",
                &env.client_key,
                &stream_body(),
            )
            .await
        };
        assert_eq!(resp.status(), 200, "{what}");
        let mut body = resp.into_body();
        let t = Instant::now();
        let (text, how) = drain(&mut body, Duration::from_secs(4)).await;
        env.server.record(&format!("stream ({what})"), text.clone());
        // Over h2 the reset may discard the last DATA frame still queued for
        // the stream; the earlier event must be there.
        let must_have = if proto == "h1" { "piece-1" } else { "piece-0" };
        assert!(
            text.contains(must_have),
            "{what}: the events sent before the failure must arrive: {text:?}"
        );
        assert!(
            !text.contains("[DONE]"),
            "{what}: the client got a [DONE] the upstream never sent: {text:?}"
        );
        assert!(
            matches!(how, BodyEnd::Broken(_)),
            "{what}: the client's stream must end as broken (unterminated chunked body / \
             stream reset), not {how:?}; a clean end makes a truncated answer look complete"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{what}: the break took {} ms to reach the client",
            ms(t)
        );
        next_request_succeeds(&env, &what).await;
    }

    // A JSON answer cut short of its Content-Length is not complete either.
    bad.push(Script::Truncated {
        declared: 1000,
        sent: 100,
    });
    let resp = open_h1(env.server.client, env.chat("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (text, how) = drain(&mut body, Duration::from_secs(4)).await;
    assert!(
        matches!(how, BodyEnd::Broken(_)),
        "a body 900 bytes short of its Content-Length must reach the client broken, \
         not {how:?} after {} bytes",
        text.len()
    );
    next_request_succeeds(&env, "a truncated JSON body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_longer_than_stream_idle_timeout_cuts_the_stream_and_the_upstream_connection() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;
    bad.push(Script::Sse {
        events: 2,
        interval: Duration::from_millis(50),
        end: End::Stall(Duration::from_secs(6)),
    });
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = read_until(&mut body, "piece-1").await;
    let stalled_at = Instant::now();
    let (rest, how) = drain(&mut body, Duration::from_secs(4)).await;
    let took = stalled_at.elapsed();
    text.push_str(&rest);
    env.server.record("stalled stream", text.clone());
    assert!(
        matches!(how, BodyEnd::Broken(_)),
        "a stream stalled past stream_idle_timeout must be cut (broken), not {how:?}"
    );
    assert!(!text.contains("[DONE]"), "{text:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2500),
        "stream_idle_timeout is 1s; the stream was cut {} ms into the stall",
        took.as_millis()
    );
    let closed = eventually(Duration::from_secs(2), || async {
        (bad.peer_closed() >= 1).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "keygate cut the client's stream but kept the stalled upstream connection open"
    );
    next_request_succeeds(&env, "a stalled stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_slow_stream_survives_stream_idle_timeout() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;
    // Ten events 300 ms apart (~3 s in all, three times stream_idle_timeout).
    bad.push(Script::Sse {
        events: 10,
        interval: Duration::from_millis(300),
        end: End::Clean,
    });
    let t = Instant::now();
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (text, how) = drain(&mut body, Duration::from_secs(3)).await;
    env.server.record("slow stream", text.clone());
    assert_eq!(
        how,
        BodyEnd::Clean,
        "a stream with a gap of 300 ms never idles for 1 s; got {text:?}"
    );
    for n in 0..10 {
        assert!(text.contains(&format!("piece-{n} ")), "piece-{n} missing");
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "the stream was paced over ~3 s"
    );
    next_request_succeeds(&env, "a slow stream").await;
}

/// An upstream that puts a key into its HTTP trailers (issue 14 item 1):
/// the trailers reach an h2c client filtered like the head — credentials and
/// key echoes dropped, the rest (a checksum) passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_are_filtered_and_scrubbed_like_headers() {
    use crate::support::raw_upstream::{RawUpstream, Script as RawScript};
    use crate::support::OPENAI_KEY;
    use http_body_util::BodyExt;

    let body = r#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let raw = RawUpstream::start(move |_| {
        RawScript::new()
            .write(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\ntrailer: x-api-key, x-key-echo, x-checksum\r\n\r\n",
            )
            .chunk(body)
            .write(format!(
                "0\r\nx-api-key: {OPENAI_KEY}\r\nx-key-echo: refused {OPENAI_KEY} here\r\nx-checksum: abc123\r\n\r\n"
            ))
    })
    .await;
    let env = env_for(raw.url()).await;
    let bodies = [
        ("h2c", stream_body()),
        ("h2c", json!({"model": "gpt-4o", "messages": []})),
    ];
    for (proto, json) in bodies {
        let resp = open_h2(
            env.server.client,
            "/v1/chat/completions",
            &env.client_key,
            &json,
        )
        .await;
        assert_eq!(resp.status(), 200, "{proto}");
        let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("body within 10 s")
            .expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&collected.to_bytes()), body);
        assert_eq!(
            trailers.get("x-checksum").and_then(|v| v.to_str().ok()),
            Some("abc123"),
            "the harmless trailer must pass ({proto}): {trailers:?}"
        );
        assert!(!trailers.contains_key("x-api-key"), "{trailers:?}");
        assert!(!trailers.contains_key("x-key-echo"), "{trailers:?}");
        let text = format!("{trailers:?}");
        for w in OPENAI_KEY.as_bytes().windows(8) {
            assert!(
                !text.contains(std::str::from_utf8(w).unwrap()),
                "a key window reached the client in trailers: {text}"
            );
        }
    }
}

/// keygate does not proxy protocol upgrades: an upstream `101 Switching
/// Protocols` to a POST is keygate's own 502, not a relayed 101 (issue 14 item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_switching_protocols_is_a_502() {
    use crate::support::raw_upstream::{RawUpstream, Script as RawScript};

    let raw = RawUpstream::start(|_| {
        RawScript::new().write(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw bytes after the upgrade",
        )
    })
    .await;
    let env = env_for(raw.url()).await;
    for resp in [
        env.server.send(env.chat("gpt-4o")).await,
        env.server.send_h2(env.chat("gpt-4o")).await,
    ] {
        assert_eq!(resp.status, 502, "{}", resp.text());
        let err = resp.json();
        assert_eq!(err["error"]["code"], "upstream_unavailable", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("101"),
            "{err}"
        );
        assert!(!resp.text().contains("raw bytes"));
    }
    assert_eq!(raw.hits(), 2);
}

/// The access line is written when the response is over and says how it
/// ended: a stream the upstream cut logs `error="upstream_stream_failed"
/// outcome="cut"`, one whose client left `outcome="client_gone"`, a whole one
/// neither (issue 15 item 2: the line used to be written at head time, so a
/// stream cut later still logged `error="-"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_says_how_a_stream_really_ended() {
    let bad = BadUpstream::start().await;
    let env = env_for(bad.url()).await;
    let line_with = |needle: &'static str| {
        let env = &env;
        async move {
            crate::support::eventually(Duration::from_secs(5), || async {
                env.server
                    .stderr()
                    .lines()
                    .find(|l| l.contains(" keygate::proxy: request ") && l.contains(needle))
                    .map(str::to_owned)
            })
            .await
            .unwrap_or_else(|| panic!("no access line with {needle}:\n{}", env.server.stderr()))
        }
    };

    // Cut by the upstream after two events.
    bad.push(Script::Sse {
        events: 2,
        interval: Duration::from_millis(20),
        end: End::Reset,
    });
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let (_, how) = drain(&mut resp.into_body(), Duration::from_secs(4)).await;
    assert!(matches!(how, BodyEnd::Broken(_)), "{how:?}");
    let cut = line_with("outcome=\"cut\"").await;
    assert!(
        cut.contains("status=200") && cut.contains(r#"error="upstream_stream_failed""#),
        "{cut}"
    );

    // The client leaves while the upstream is still streaming.
    bad.push(Script::Sse {
        events: 50,
        interval: Duration::from_millis(50),
        end: End::Clean,
    });
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    read_until(&mut body, "piece-1").await;
    drop(body);
    let gone = line_with("outcome=\"client_gone\"").await;
    assert!(gone.contains("status=200"), "{gone}");

    // A whole answer: no outcome field, as before.
    next_request_succeeds(&env, "the two broken streams").await;
    let whole = crate::support::eventually(Duration::from_secs(5), || async {
        let log = env.server.stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" keygate::proxy: request "))
            .collect();
        (lines.len() >= 3).then(|| lines[2].to_owned())
    })
    .await
    .unwrap_or_else(|| panic!("no third access line:\n{}", env.server.stderr()));
    assert!(
        whole.ends_with(r#" attempts=1 error="-""#) && !whole.contains("outcome="),
        "{whole}"
    );
}
