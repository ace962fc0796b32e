//! Hostile clients on the client listener (docs/design.md §3 `[server]` timeouts and
//! limits, §4): slowloris headers and bodies, oversized heads and bodies,
//! request smuggling, header injection, connection floods, HTTP/2 rapid
//! reset, and clients that vanish mid-stream. keygate must shed each of them
//! without letting anything odd reach the upstream, and keep serving everyone else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::bad_upstream::{
    hardened, ms, parse_head, BadUpstream, End, RawConn, RawEnd, Script,
};
use crate::support::metrics::metric_value;
use crate::support::raw_h2::{h2_frame, hpack_request, hpack_str, RawH2};
use crate::support::{chat_body, eventually, Env};

/// The standard world with the hardening timeouts (and a tweak on top).
async fn hardened_env(
    tweak: impl FnOnce(crate::support::KeygateBuilder) -> crate::support::KeygateBuilder + 'static,
) -> Env {
    Env::setup()
        .config(move |b| tweak(hardened(b)))
        .start()
        .await
}

/// A raw HTTP/1.1 request with a Content-Length body.
fn raw_post(addr: SocketAddr, path: &str, key: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A normal chat request must answer 200 within a second.
async fn assert_served_quickly(env: &Env, during: &str) -> Duration {
    let t = Instant::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    let took = t.elapsed();
    assert_eq!(resp.status, 200, "{during}: {}", resp.text());
    assert!(
        took < Duration::from_secs(1),
        "{during}: a normal request took {} ms",
        took.as_millis()
    );
    took
}

/// Five normal requests 60 ms apart, each answered within a second (while
/// something else goes on); returns the slowest.
async fn served_quickly_throughout(env: &Env, during: &str) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        worst = worst.max(assert_served_quickly(env, during).await);
    }
    worst
}

/// Connects and writes `bytes` one at a time, `every` apart (then holds the
/// connection), until the server closes it. Returns how long after connecting
/// the server closed it, or `None` when it was still open after `limit`.
async fn trickle_until_closed(
    addr: SocketAddr,
    bytes: Vec<u8>,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    trickle_after(addr, Vec::new(), bytes, every, limit).await
}

/// [`trickle_until_closed`] after writing `prefix` at once.
async fn trickle_after(
    addr: SocketAddr,
    prefix: Vec<u8>,
    bytes: Vec<u8>,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(&prefix).await.is_err() {
            return;
        }
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        // Hold the write side open: only the server may end this connection.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    writer.abort();
    closed.ok().map(|()| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_header_trickle_is_closed_at_header_timeout_while_others_are_served() {
    let env = hardened_env(|b| b.server("max_connections", "200")).await;
    let addr = env.server.client;
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(200)
    )
    .into_bytes();
    let sockets: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(trickle_until_closed(
                addr,
                head.clone(),
                Duration::from_millis(50),
                Duration::from_secs(4),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_served_quickly(&env, "while 50 clients trickle their headers").await;

    let mut late = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        match s.await.expect("trickle task") {
            Some(d) if d <= Duration::from_secs(2) => {}
            other => late.push(format!("socket {i}: {other:?}")),
        }
    }
    assert!(
        late.is_empty(),
        "header_timeout is 1s: every trickling connection must be closed within 2 s of \
         connecting; these were not (None = still open after 4 s):\n{}",
        late.join("\n")
    );
    assert_eq!(
        env.openai.hits(),
        1,
        "only the normal request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_partial_preface_connections_are_closed_at_header_timeout() {
    let env = hardened_env(|b| b.server("max_connections", "200")).await;
    let addr = env.server.client;
    let mut sockets = Vec::new();
    for i in 0..20 {
        // Half send nothing at all; half trickle the first 16 bytes of the h2c preface.
        let bytes = if i % 2 == 0 {
            Vec::new()
        } else {
            b"PRI * HTTP/2.0\r\n".to_vec()
        };
        sockets.push(tokio::spawn(trickle_until_closed(
            addr,
            bytes,
            Duration::from_millis(50),
            Duration::from_secs(3),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_served_quickly(&env, "while 20 clients hold connections").await;
    let mut open = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let kind = if i % 2 == 0 {
            "silent"
        } else {
            "partial h2 preface"
        };
        match s.await.expect("socket task") {
            Some(d) if d <= Duration::from_secs(2) => {}
            other => open.push(format!("socket {i} ({kind}): {other:?}")),
        }
    }
    assert!(
        open.is_empty(),
        "header_timeout is 1s, yet these connections were not closed within 2 s \
         (None = still open after 3 s); each holds a max_connections slot forever:\n{}",
        open.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_body_gets_408_within_body_idle_timeout_and_never_reaches_upstream() {
    let env = hardened_env(|b| b).await;
    let addr = env.server.client;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        env.client_key
    );
    let mut conn = RawConn::connect(addr).await;
    assert!(conn.send(head.as_bytes()).await);
    // One byte every 600 ms (each pause shorter than body_idle_timeout), then nothing.
    let mut last = Instant::now();
    for b in b"{\"mod" {
        tokio::time::sleep(Duration::from_millis(600)).await;
        if !conn.send(&[*b]).await {
            break;
        }
        last = Instant::now();
    }
    let end = conn.read_response(Duration::from_secs(4)).await;
    let took = last.elapsed();
    env.server.record("slow body response", conn.text());
    match conn.status() {
        Some(status) => {
            assert_eq!(status, 408, "{}", conn.text());
            let head = parse_head(&conn.got).expect("response head");
            let json = head.json().expect("408 body is JSON");
            assert_eq!(json["error"]["code"], "request_timeout", "{json}");
        }
        None => assert_ne!(end, RawEnd::Open, "no 408 and the connection is still open"),
    }
    assert!(
        took <= Duration::from_millis(2200),
        "body_idle_timeout is 1s: the stalled body was answered {} ms after its last byte",
        took.as_millis()
    );
    assert_eq!(
        env.openai.hits(),
        0,
        "a request whose body never finished reached the upstream"
    );
}

/// Sends `head`, then `body` one byte every `every` without ever pausing long
/// enough for `body_idle_timeout`; returns the connection (read until it ended
/// or `wait` passed) and how long after the head the answer came.
async fn trickle_whole_body(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    every: Duration,
    wait: Duration,
) -> (RawConn, Duration) {
    let mut conn = RawConn::connect(addr).await;
    assert!(conn.send(head.as_bytes()).await);
    let t0 = Instant::now();
    let trickle = async {
        for b in body {
            tokio::time::sleep(every).await;
            if !conn.send(&[*b]).await {
                break;
            }
        }
    };
    // The server answers (and closes) while the client is still sending.
    let _ = tokio::time::timeout(wait, trickle).await;
    conn.read_response(Duration::from_secs(1)).await;
    (conn, t0.elapsed())
}

/// The slowloris body: one byte every 300 ms *without stopping*, so no pause
/// reaches `body_idle_timeout` (1 s). `body_timeout` (2 s) cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuously_trickled_body_gets_408_at_body_timeout() {
    let env = hardened_env(|b| b.server("body_timeout", "\"2s\"")).await;
    let addr = env.server.client;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        env.client_key
    );
    let (conn, took) = trickle_whole_body(
        addr,
        &head,
        &[b' '; 1000],
        Duration::from_millis(300),
        Duration::from_secs(4),
    )
    .await;
    env.server.record("trickled body response", conn.text());
    assert_eq!(conn.status(), Some(408), "{}", conn.text());
    let json = parse_head(&conn.got)
        .expect("response head")
        .json()
        .expect("408 body is JSON");
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_secs(3),
        "body_timeout is 2s: answered after {} ms",
        took.as_millis()
    );
    assert_eq!(
        env.openai.hits(),
        0,
        "the trickled body reached the upstream"
    );
}

/// The same, for a body larger than `retry_buffer`: it is already streaming to
/// the upstream when the deadline passes, and the upstream never gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuously_trickled_streaming_body_is_cut_at_body_timeout() {
    let env = hardened_env(|b| {
        // The upstream waits for the body: only the deadline may end this.
        b.server("body_timeout", "\"2s\"")
            .server("retry_buffer", "\"64\"")
            .server("upstream_first_byte_timeout", "\"10s\"")
    })
    .await;
    let addr = env.server.client;
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"pad\":\"{}\"}}",
        "x".repeat(968)
    );
    assert_eq!(body.len(), 1000);
    let (prefix, rest) = body.as_bytes().split_at(100);
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{}",
        env.client_key,
        String::from_utf8_lossy(prefix)
    );
    let (conn, took) = trickle_whole_body(
        addr,
        &head,
        rest,
        Duration::from_millis(300),
        Duration::from_secs(4),
    )
    .await;
    env.server
        .record("trickled streaming body response", conn.text());
    assert!(
        took <= Duration::from_secs(3),
        "body_timeout is 2s: still sending after {} ms ({})",
        took.as_millis(),
        conn.text()
    );
    if let Some(status) = conn.status() {
        assert!(
            status >= 400,
            "a cut body was answered {status}: {}",
            conn.text()
        );
    }
    assert!(
        took >= Duration::from_millis(1800),
        "cut after {} ms, before body_timeout: {}",
        took.as_millis(),
        conn.text()
    );
    assert!(
        env.openai.requests().iter().all(|r| r.body.len() < 1000),
        "the upstream received the cut body as complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_heads_get_431_or_400_and_close() {
    let env = hardened_env(|b| b).await;
    let addr = env.server.client;
    let key = &env.client_key;
    let big_value = format!(
        "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let mut many =
        format!("GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n");
    for i in 0..2000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");

    for (what, raw) in [("one 100 KiB header", big_value), ("2,000 headers", many)] {
        let mut conn = RawConn::connect(addr).await;
        let _ = conn.send(raw.as_bytes()).await; // may fail once the server gave up
        let end = conn.read_to_close(Duration::from_secs(3)).await;
        env.server.record(what, conn.text());
        let status = conn.status();
        assert!(
            matches!(status, Some(431) | Some(400)),
            "{what}: expected 431 or 400, got {status:?} ({end:?}): {:?}",
            conn.text().chars().take(300).collect::<String>()
        );
        assert_ne!(end, RawEnd::Open, "{what}: the connection must be closed");
    }
    assert_eq!(env.openai.hits(), 0);
    assert_served_quickly(&env, "after oversized heads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_bodies_get_413_and_never_reach_upstream() {
    let env = hardened_env(|b| b.server("max_request_body", "\"4KiB\"")).await;
    let addr = env.server.client;
    let key = &env.client_key;

    // Declared over the limit (only part of it is ever sent).
    let declared = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{}",
        " ".repeat(8192)
    );
    // Chunked, going over the limit in its third chunk (no last chunk).
    let mut chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..3 {
        chunked.push_str(&format!("800\r\n{}\r\n", " ".repeat(2048)));
    }
    for (what, raw) in [
        ("Content-Length over the limit", declared),
        ("chunked body over the limit", chunked),
    ] {
        let mut conn = RawConn::connect(addr).await;
        let _ = conn.send(raw.as_bytes()).await;
        let end = conn.read_response(Duration::from_secs(3)).await;
        env.server.record(what, conn.text());
        let head = parse_head(&conn.got)
            .unwrap_or_else(|| panic!("{what}: no response ({end:?}): {:?}", conn.text()));
        assert_eq!(head.status, 413, "{what}: {}", conn.text());
        let json = head
            .json()
            .unwrap_or_else(|| panic!("{what}: {}", conn.text()));
        assert_eq!(json["error"]["code"], "request_too_large", "{what}: {json}");
    }
    assert_eq!(
        env.openai.hits(),
        0,
        "an oversized body reached the upstream"
    );

    // A body under the limit still goes through.
    assert_served_quickly(&env, "a small body after oversized ones").await;
}

/// One smuggling attempt: the raw bytes, and whether keygate may legitimately
/// forward the outer request (framing it understood unambiguously).
struct Smuggle {
    name: &'static str,
    raw: String,
    outer_may_pass: bool,
}

fn smuggling_cases(addr: SocketAddr, key: &str) -> Vec<Smuggle> {
    let smuggled = format!(
        "GET /v1/models?smuggled=1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    let start = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nConnection: keep-alive\r\n"
    );
    let te_body = format!("0\r\n\r\n{smuggled}");
    let mut cases = vec![
        Smuggle {
            name: "CL then TE",
            raw: format!(
                "{start}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{te_body}",
                te_body.len()
            ),
            outer_may_pass: true,
        },
        Smuggle {
            name: "TE then CL",
            raw: format!(
                "{start}Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{te_body}",
                te_body.len()
            ),
            outer_may_pass: true,
        },
        Smuggle {
            name: "two different Content-Lengths",
            raw: format!(
                "{start}Content-Length: 2\r\nContent-Length: {}\r\n\r\n{{}}{smuggled}",
                smuggled.len() + 2
            ),
            outer_may_pass: false,
        },
        Smuggle {
            name: "Content-Length: +2",
            raw: format!("{start}Content-Length: +2\r\n\r\n{{}}{smuggled}"),
            outer_may_pass: false,
        },
        Smuggle {
            name: "Transfer-Encoding: chunked, identity",
            raw: format!("{start}Transfer-Encoding: chunked, identity\r\n\r\n{te_body}"),
            outer_may_pass: false,
        },
        Smuggle {
            name: "obs-fold hiding Transfer-Encoding",
            raw: format!(
                "{start}Content-Length: {}\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n{te_body}",
                te_body.len()
            ),
            outer_may_pass: false,
        },
        Smuggle {
            name: "chunk size overflowing 64 bits",
            raw: format!(
                "{start}Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\n{{}}\r\n0\r\n\r\n{smuggled}"
            ),
            outer_may_pass: false,
        },
        Smuggle {
            name: "chunk-size line with a 20 KiB extension",
            raw: format!(
                "{start}Transfer-Encoding: chunked\r\n\r\n2;ext={}\r\n{{}}\r\n0\r\n\r\n{smuggled}",
                "x".repeat(20 * 1024)
            ),
            outer_may_pass: false,
        },
    ];
    // A whole request as the body of another: framing is unambiguous, so it
    // must stay a body.
    cases.push(Smuggle {
        name: "request hidden in a Content-Length body",
        raw: format!(
            "{}Content-Length: {}\r\n\r\n{smuggled}",
            start.replace("keep-alive", "close"),
            smuggled.len()
        ),
        outer_may_pass: true,
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_smuggling_attempts_never_reach_the_upstream_as_a_second_request() {
    let env = hardened_env(|b| b).await;
    let addr = env.server.client;
    let mut problems = Vec::new();
    for case in smuggling_cases(addr, &env.client_key) {
        let hits_before = env.openai.hits();
        let mut conn = RawConn::connect(addr).await;
        let _ = conn.send(case.raw.as_bytes()).await;
        let end = conn.read_to_close(Duration::from_secs(3)).await;
        env.server.record(case.name, conn.text());
        let status = conn.status();
        let responses = conn.responses();
        let forwarded = env.openai.hits() - hits_before;
        let rejected = status == Some(400) || (status.is_none() && end != RawEnd::Open);
        let summary = format!(
            "{}: status {status:?}, {responses} response(s), connection {end:?}, {forwarded} request(s) upstream",
            case.name
        );
        eprintln!("smuggling: {summary}");
        if !rejected {
            if !case.outer_may_pass {
                problems.push(format!(
                    "{summary}: ambiguous framing must be refused with 400"
                ));
            } else if responses > 1 || end == RawEnd::Open {
                problems.push(format!(
                    "{summary}: after an ambiguous request the connection must close after one response"
                ));
            }
        }
        if forwarded > usize::from(case.outer_may_pass) {
            problems.push(format!(
                "{summary}: more requests reached the upstream than were sent"
            ));
        }
    }
    let smuggled: Vec<String> = env
        .openai
        .requests()
        .iter()
        .filter(|r| r.uri.contains("smuggled"))
        .map(|r| r.everything())
        .collect();
    assert!(
        smuggled.is_empty(),
        "a smuggled request reached the upstream:\n{}",
        smuggled.join("\n---\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The hidden request that was a body arrived as one, byte for byte.
    let hidden =
        env.openai.requests().into_iter().find(|r| {
            r.uri == "/v1/embeddings" && r.body.starts_with(b"GET /v1/models?smuggled=1")
        });
    assert!(
        hidden.is_some(),
        "the request whose body is a whole HTTP request must reach the upstream with that body"
    );

    // Control: the same request line sent openly does reach the upstream, so
    // the check above would have seen a smuggled one.
    let open_req = format!(
        "GET /v1/models?control=1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        env.client_key
    );
    let mut conn = RawConn::connect(addr).await;
    assert!(conn.send(open_req.as_bytes()).await);
    conn.read_to_close(Duration::from_secs(3)).await;
    assert_eq!(conn.status(), Some(200), "{}", conn.text());
    assert!(env
        .openai
        .requests()
        .iter()
        .any(|r| r.uri == "/v1/models?control=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cr_lf_in_a_client_header_value_never_becomes_an_upstream_header() {
    let env = hardened_env(|b| b).await;
    let addr = env.server.client;
    let key = env.client_key.clone();
    let body = chat_body("gpt-4o").to_string();

    // HTTP/1.1: a bare CR inside a value.
    let raw = raw_post(
        addr,
        "/v1/chat/completions",
        &key,
        &body,
        "X-Inject: a\rX-Evil: injected\r\nConnection: close\r\n",
    );
    let mut conn = RawConn::connect(addr).await;
    let _ = conn.send(&raw).await;
    let end = conn.read_to_close(Duration::from_secs(3)).await;
    env.server.record("bare CR", conn.text());
    assert!(
        conn.status() == Some(400) || (conn.status().is_none() && end != RawEnd::Open),
        "a bare CR in a header value must be refused (400); got {:?}",
        conn.text()
    );

    // HTTP/2 (h2c): header values carrying CR LF / LF / CR, which HTTP/2 forbids
    // (RFC 9113 §8.2.1) and which would split the header on keygate's HTTP/1.1
    // leg to the upstream. First a clean value, to prove this raw client works.
    let bearer = format!("Bearer {key}");
    let authority = addr.to_string();
    let cases: [(&str, &[u8]); 4] = [
        ("clean", b"clean-value"),
        ("CR LF", b"a\r\nx-evil: injected-crlf"),
        ("LF", b"a\nx-evil: injected-lf"),
        ("CR", b"a\rx-evil: injected-cr"),
    ];
    for (what, value) in cases {
        let h2 = RawH2::connect(addr).await;
        let block = hpack_request(
            &authority,
            true,
            "/v1/chat/completions",
            &[
                ("authorization", bearer.as_bytes()),
                ("content-type", b"application/json"),
                ("x-inject", value),
            ],
        );
        let mut frames = h2_frame(0x1, 0x4, 1, &block);
        frames.extend(h2_frame(0x0, 0x1, 1, body.as_bytes()));
        assert!(h2.send(&frames).await, "{what}: could not send");
        if what == "clean" {
            let seen = eventually(Duration::from_secs(3), || async {
                env.openai
                    .requests()
                    .iter()
                    .any(|r| r.header("x-inject").as_deref() == Some("clean-value"))
                    .then_some(())
            })
            .await;
            assert!(
                seen.is_some(),
                "the raw h2 control request never reached the upstream"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    let bad: Vec<String> = env
        .openai
        .requests()
        .iter()
        .filter(|r| {
            r.header("x-evil").is_some()
                || r.headers
                    .iter()
                    .any(|(_, v)| v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'))
                || r.header("x-inject").is_some_and(|v| v != "clean-value")
        })
        .map(|r| r.everything())
        .collect();
    assert!(
        bad.is_empty(),
        "CR/LF from a client header value reached the upstream:\n{}",
        bad.join("\n---\n")
    );
}

/// A bare LF in the middle of an HTTP/1.1 header value. hyper (httparse)
/// takes it for a line end (RFC 9112 §2.2 lets a recipient do so), so the
/// rest of the value arrives upstream as a header of its own. Behind a front
/// proxy that keeps the bare LF inside the value, that is header injection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bare_lf_in_a_header_value_never_becomes_an_upstream_header() {
    let env = hardened_env(|b| b).await;
    let addr = env.server.client;
    let body = chat_body("gpt-4o").to_string();
    let raw = raw_post(
        addr,
        "/v1/chat/completions",
        &env.client_key,
        &body,
        "X-Inject: b\nX-Evil: injected-bare-lf\r\nConnection: close\r\n",
    );
    let mut conn = RawConn::connect(addr).await;
    let _ = conn.send(&raw).await;
    let end = conn.read_to_close(Duration::from_secs(3)).await;
    env.server.record("bare LF", conn.text());
    let injected: Vec<String> = env
        .openai
        .requests()
        .iter()
        .filter(|r| r.header("x-evil").is_some())
        .map(|r| r.everything())
        .collect();
    assert!(
        injected.is_empty(),
        "`X-Inject: b<LF>X-Evil: …` (answered {:?}, connection {end:?}) reached the upstream \
         with an X-Evil header:\n{}",
        conn.status(),
        injected.join("\n---\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_max_connections_are_refused_and_slots_come_back() {
    // max_connections = 20; a longer header_timeout so it cannot be what
    // closes the idle keep-alive connection or the idle sockets here.
    let env = hardened_env(|b| b.server("header_timeout", "\"5s\"")).await;
    let addr = env.server.client;
    let models = format!(
        "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        env.client_key
    );

    // One keep-alive connection, in use before the flood.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let keep_alive_req = || {
        hyper::Request::get("/v1/models")
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {}", env.client_key))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        sender.send_request(keep_alive_req()),
    )
    .await
    .expect("keep-alive request timed out")
    .expect("keep-alive request");
    assert_eq!(first.status(), 200);
    let _ = first.into_body().collect().await;

    // max_connections + 10 idle sockets.
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(TcpStream::connect(addr).await.expect("connect idle"));
    }
    // Wait (bounded) until keygate has accepted and dropped the surplus.
    let mut is_closed = vec![false; idle.len()];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for (s, done) in idle.iter_mut().zip(is_closed.iter_mut()) {
            if *done {
                continue;
            }
            let mut b = [0u8; 16];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(2), s.read(&mut b)).await
            {
                *done = true;
            }
        }
        let closed = is_closed.iter().filter(|c| **c).count();
        if closed >= 11 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment more, so a limit that refused too many shows up as well.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (s, done) in idle.iter_mut().zip(is_closed.iter_mut()) {
        let mut b = [0u8; 16];
        if !*done {
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(2), s.read(&mut b)).await
            {
                *done = true;
            }
        }
    }
    let closed = is_closed.iter().filter(|c| **c).count();
    // The keep-alive connection holds one slot: 19 idle ones fit, 11 do not.
    assert!(
        (10..=12).contains(&closed),
        "with max_connections = 20 and 1 connection in use, 11 of 30 idle sockets should be \
         refused; {closed} were"
    );

    // The existing keep-alive connection still works while the listener is full.
    let t = Instant::now();
    let again = tokio::time::timeout(
        Duration::from_secs(2),
        sender.send_request(keep_alive_req()),
    )
    .await
    .expect("keep-alive request timed out while the listener was full")
    .expect("the existing keep-alive connection failed while the listener was full");
    assert_eq!(again.status(), 200);
    let _ = again.into_body().collect().await;
    assert!(t.elapsed() < Duration::from_secs(1));

    // A new connection is refused now...
    let mut extra = RawConn::connect(addr).await;
    let _ = extra.send(models.as_bytes()).await;
    let end = extra.read_response(Duration::from_secs(1)).await;
    assert!(
        extra.status().is_none() && end != RawEnd::Open,
        "a connection over max_connections must be refused; got {end:?} {:?}",
        extra.text()
    );

    // ... and accepted again once the idle sockets are gone.
    drop(idle);
    let served = eventually(Duration::from_secs(3), || async {
        let mut c = RawConn::connect(addr).await;
        let _ = c.send(models.as_bytes()).await;
        c.read_response(Duration::from_millis(500)).await;
        (c.status() == Some(200)).then_some(())
    })
    .await;
    assert!(
        served.is_some(),
        "new connections are still refused 3 s after the idle sockets were closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_rapid_reset_flood_does_not_starve_other_clients() {
    let env = hardened_env(|b| b.server("max_connections", "100")).await;
    let addr = env.server.client;
    let bearer = format!("Bearer {}", env.client_key);
    let authority = addr.to_string();
    let h2 = RawH2::connect(addr).await;

    let flood = async {
        let mut sent = 0u32;
        'outer: for batch in 0..40u32 {
            let mut frames = Vec::new();
            for i in 0..50u32 {
                let id = 2 * (batch * 50 + i) + 1;
                // Alternate complete GETs and POSTs whose body never comes; reset both at once.
                let post = i % 2 == 1;
                let block = hpack_request(
                    &authority,
                    post,
                    if post {
                        "/v1/chat/completions"
                    } else {
                        "/v1/models"
                    },
                    &[("authorization", bearer.as_bytes())],
                );
                let flags = if post { 0x4 } else { 0x5 };
                frames.extend(h2_frame(0x1, flags, id, &block));
                frames.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
            }
            if !h2.send(&frames).await {
                break 'outer;
            }
            sent += 50;
            tokio::task::yield_now().await;
        }
        sent
    };
    let probe = served_quickly_throughout(&env, "during an h2 rapid-reset flood");
    let (sent, worst) = tokio::join!(flood, probe);
    assert!(
        sent == 2000 || h2.got_goaway(),
        "the flood stopped after {sent} streams without a GOAWAY from keygate"
    );
    assert_served_quickly(&env, "after an h2 rapid-reset flood").await;
    let idle = eventually(Duration::from_secs(3), || async {
        let page = env.server.admin_get("/metrics").await.text();
        (metric_value(&page, "keygate_active_requests", &[]).unwrap_or(0.0) == 0.0).then_some(())
    })
    .await;
    assert!(
        idle.is_some(),
        "keygate_active_requests did not return to 0 after the reset flood"
    );
    eprintln!(
        "rapid reset: {sent} streams sent, GOAWAY: {}, worst probe {} ms, upstream saw {} requests",
        h2.got_goaway(),
        worst.as_millis(),
        env.openai.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_clients_that_disconnect_release_their_upstream_streams() {
    const STREAMS: usize = 30;
    let bad = BadUpstream::start().await;
    let url = bad.url();
    let env = hardened_env(move |b| {
        b.server("max_connections", "100")
            .provider("openai", &url, "bearer")
    })
    .await;
    let addr = env.server.client;
    for _ in 0..STREAMS {
        // 200 events 50 ms apart: ten seconds of stream each.
        bad.push(Script::Sse {
            events: 200,
            interval: Duration::from_millis(50),
            end: End::Clean,
        });
    }
    let body = serde_json::json!({"model": "gpt-4o", "messages": [], "stream": true}).to_string();
    let raw = raw_post(addr, "/v1/chat/completions", &env.client_key, &body, "");
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        let mut c = RawConn::connect(addr).await;
        assert!(c.send(&raw).await);
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.text().contains("piece-1") {
            assert!(
                Instant::now() < deadline,
                "client {i} got no events: {:?}",
                c.text()
            );
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => c.got.extend_from_slice(&buf[..n]),
                other => panic!("client {i}: stream failed early: {other:?}"),
            }
        }
    }
    assert_eq!(
        bad.open(),
        STREAMS,
        "all {STREAMS} streams are running upstream"
    );
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(&page, "keygate_active_requests", &[]),
        Some(STREAMS as f64),
        "{STREAMS} streams in flight"
    );

    let t = Instant::now();
    drop(clients);
    let released = eventually(Duration::from_secs(2), || async {
        (bad.open() == 0).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "2 s after {STREAMS} streaming clients left, {} upstream streams are still open",
        bad.open()
    );
    assert_eq!(
        bad.peer_closed(),
        STREAMS,
        "keygate closed every abandoned upstream stream"
    );
    let gauge = eventually(Duration::from_secs(2), || async {
        let page = env.server.admin_get("/metrics").await.text();
        (metric_value(&page, "keygate_active_requests", &[]) == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        gauge.is_some(),
        "keygate_active_requests did not return to 0 after the clients left"
    );
    eprintln!(
        "{STREAMS} abandoned streams released upstream in {} ms",
        ms(t)
    );
}

/// Backpressure: a client reading 1 KiB/s from a 50 MiB stream. keygate reads
/// from the upstream only as fast as the client takes bytes, so its memory
/// stays flat and the upstream is held back by full socket buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_of_a_huge_stream_holds_keygate_memory_flat() {
    let bad = BadUpstream::start().await;
    let url = bad.url();
    let env = hardened_env(move |b| {
        b.provider("openai", &url, "bearer")
            .server("stream_idle_timeout", "\"30s\"")
    })
    .await;
    let addr = env.server.client;
    // Warm up (pools, allocator arenas) before the baseline.
    bad.push(Script::Ok);
    let warm = raw_post(
        addr,
        "/v1/chat/completions",
        &env.client_key,
        &chat_body("gpt-4o").to_string(),
        "Connection: close\r\n",
    );
    let mut c = RawConn::connect(addr).await;
    assert!(c.send(&warm).await);
    c.read_to_close(Duration::from_secs(3)).await;
    assert_eq!(c.status(), Some(200), "{}", c.text());
    let baseline = env.server.rss_kib();

    const STREAM: usize = 50 * 1024 * 1024;
    bad.push(Script::Bulk { bytes: STREAM });
    let body = serde_json::json!({"model": "gpt-4o", "messages": [], "stream": true}).to_string();
    let raw = raw_post(addr, "/v1/chat/completions", &env.client_key, &body, "");
    let mut reader = RawConn::connect(addr).await;
    assert!(reader.send(&raw).await);
    let mut read = 0;
    let mut peak = baseline;
    let mut written = Vec::new();
    for _ in 0..8 {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), reader.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            other => panic!("the slow stream failed after {read} bytes: {other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(env.server.rss_kib());
        written.push(bad.bulk_written());
    }
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!(
        "slow reader: read {read} bytes in 8 s; upstream wrote {:.1} MiB; keygate RSS {} KiB -> peak {} KiB (+{growth_mib:.1} MiB)",
        *written.last().unwrap_or(&0) as f64 / 1048576.0,
        baseline,
        peak
    );
    assert!(baseline > 0, "could not read keygate's RSS");
    assert!(
        growth_mib < 16.0,
        "keygate's RSS grew {growth_mib:.1} MiB while a client read a stream at 1 KiB/s"
    );
    let last = written[written.len() - 1];
    assert!(
        last < STREAM / 2,
        "the upstream wrote {last} bytes: keygate did not hold it back"
    );
    assert_eq!(
        written[written.len() - 3],
        last,
        "the upstream kept writing while the client read 1 KiB/s: {written:?}"
    );
}

/// The HTTP/2 CONTINUATION flood (CVE-2024-27316 class): one HEADERS frame
/// without END_HEADERS, then CONTINUATION frames without end. keygate must
/// refuse the connection rather than buffer or decode forever, and serve
/// others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_continuation_flood_is_cut_and_does_not_starve_other_clients() {
    let env = hardened_env(|b| b.server("max_connections", "100")).await;
    let addr = env.server.client;
    let bearer = format!("Bearer {}", env.client_key);
    let h2 = RawH2::connect(addr).await;
    let baseline = env.server.rss_kib();

    let block = hpack_request(
        &addr.to_string(),
        false,
        "/v1/models",
        &[("authorization", bearer.as_bytes())],
    );
    // HEADERS with END_STREAM but no END_HEADERS.
    assert!(h2.send(&h2_frame(0x1, 0x1, 1, &block)).await);
    // Each CONTINUATION carries 16 KiB of fresh literal headers.
    let mut fragment = Vec::new();
    while fragment.len() < 16 * 1024 {
        fragment.push(0x00);
        hpack_str(b"x-flood", &mut fragment);
        hpack_str(&[b'a'; 1000], &mut fragment);
    }
    let frame = h2_frame(0x9, 0, 1, &fragment);
    let flood = async {
        let mut sent = 0usize;
        while sent < 10_000 {
            if !h2.send(&frame).await {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(50) {
                tokio::task::yield_now().await;
            }
        }
        sent
    };
    let probe = served_quickly_throughout(&env, "during an h2 CONTINUATION flood");
    let (sent, worst) = tokio::join!(flood, probe);
    let peak = env.server.rss_kib();
    eprintln!(
        "CONTINUATION flood: {sent} frames of 16 KiB accepted before the cut, GOAWAY: {}, worst probe {} ms, RSS +{} KiB",
        h2.got_goaway(),
        worst.as_millis(),
        peak.saturating_sub(baseline)
    );
    assert!(
        sent < 10_000,
        "keygate took {sent} CONTINUATION frames (160 MiB of headers) for one request without refusing the connection"
    );
    // A stalled write would also stop the flood: keygate must have said GOAWAY.
    assert!(
        h2.got_goaway(),
        "the flood stopped after {sent} frames without a GOAWAY from keygate"
    );
    assert!(
        peak.saturating_sub(baseline) < 32 * 1024,
        "keygate's RSS grew {} KiB during the flood",
        peak.saturating_sub(baseline)
    );
    assert!(
        env.openai
            .requests()
            .iter()
            .all(|r| r.headers.get("x-flood").is_none()),
        "the flooded request reached the upstream"
    );
    assert_served_quickly(&env, "after an h2 CONTINUATION flood").await;
}
