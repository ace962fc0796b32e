//! What does keygate cost on the wire? Proxied vs direct to the same mock
//! upstream, in one run, reported as ratios (machines here are noisy).
//!
//! Run: `cargo bench --bench proxy_overhead`
//! (`BENCH_SECONDS=10 BENCH_CONNECTIONS=64 cargo bench --bench proxy_overhead` to change the load;
//! `BENCH_ROUNDS=3`: the targets take turns three times, each row a median;
//! `BENCH_KEYGATE_WORKERS=1` runs keygate on one tokio worker thread;
//! `BENCH_KEYGATE_BIN=/path/to/keygate` measures another build.)
//!
//! It starts the mock upstream (HTTP/1.1 and h2c on one port, at most 100
//! streams per HTTP/2 connection as a provider's edge allows) and the
//! proxies as separate processes on 127.0.0.1 — the mock is this same bench
//! binary re-executed with `KEYGATE_BENCH_ROLE=mock` — prepares a vault, a key
//! and a client through the documented CLI, then drives, through each target
//! in turn, a closed loop (N connections, ~1 KB chat bodies), a
//! single-connection latency run, 500 SSE streams (12 events, in one write)
//! one after another, and the shared harness's paced streams (16 at once,
//! 10 rounds, an event every 10 ms: first event and frames per stream,
//! 12 when nothing is held back). The targets:
//! `direct` (the mock itself), the *floor* (this bench binary again, with
//! `KEYGATE_BENCH_ROLE=floor`: hyper's HTTP/1 server and keygate's upstream
//! client with one fixed client key — the plumbing with none of keygate's
//! stages), `nginx` when installed (Debian's `nginx-light`, set up as the
//! shared harness's `proxies/nginx.sh` sets it up), `keygate h1` and
//! `keygate h2` (`[providers.openai] http = "h2"`: h2c to the mock). With
//! `BENCH_UPSTREAM_TLS=1` the mock also serves TLS (a fresh CA, ALPN h2 and
//! http/1.1) and `kg tls h1` / `kg tls h2` join (`upstream_ca_file`). CPU
//! per request comes from /proc/<pid>/stat, RSS from /proc/<pid>/status
//! (a process and its children, for nginx's worker); each keygate column is
//! also given as a ratio to nginx's.
//!
//! Then it holds `BENCH_HELD_STREAMS` (default 10,000; 0 skips) SSE streams
//! open at once through each proxy in turn — each has had its first event
//! and then waits — and prints, while they are all open, the proxy's RSS, KiB
//! per stream, descriptors and established sockets to the mock: the memory a
//! large number of concurrent long generations costs. Holding 10,000 needs
//! ~20,000 descriptors in a proxy; as root the bench raises its limits with
//! `prlimit`. `BENCH_SECONDS=0` skips the closed loops (held streams only).
//!
//! `BENCH_LONG_REQUESTS=5000000` then sends that many JSON requests through
//! each keygate and prints its RSS at the start and after each fifth.
//!
//! With `BENCH_CALLGRIND=4000` (and valgrind installed) it then counts, under
//! callgrind, the user-space instructions the floor, nginx (one process, no
//! master) and keygate spend per request and per SSE stream — a measure that
//! noise does not move:
//! `BENCH_SECONDS=0 BENCH_HELD_STREAMS=0 BENCH_CALLGRIND=4000 cargo bench --bench proxy_overhead`
//! (`BENCH_CALLGRIND_OUT=DIR`, an empty directory, keeps the dumps for
//! `callgrind_annotate`). With `BENCH_EVERYTHING=1` a fourth process is
//! counted: keygate with every feature of the round on
//! (`benches/everything_on.toml`, a client with limits and a dollar budget,
//! the mock sending rate-limit headers). `BENCH_CALLGRIND_CLIENTS=100000`
//! then adds that many clients to the vault (through the library) and counts
//! keygate again: the cost per request at one client and at many, in one run.
//!
//! With `BENCH_REDIS=1` (and redis-server installed) it also compares a
//! limited client's requests with limits in memory against limits shared
//! through Redis (`[cluster] redis_url`): `BENCH_REDIS=1 BENCH_HELD_STREAMS=0
//! cargo bench --bench proxy_overhead`.

// A benchmark panics loudly on a broken setup; that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "support/big_vault.rs"]
mod big_vault;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const UPSTREAM_KEY: &str = "sk-bench-upstream-0000000000000000000000";

fn main() {
    match std::env::var("KEYGATE_BENCH_ROLE").as_deref() {
        Ok("mock") => return run_mock(),
        Ok("floor") => return run_floor(),
        _ => {}
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(Duration::from_secs(seconds), connections));
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- the mock

/// Streams the mock allows on one HTTP/2 connection, as a provider's edge
/// announces in `SETTINGS_MAX_CONCURRENT_STREAMS` (Cloudflare, in front of
/// api.openai.com, says 100 to 256).
const MOCK_MAX_STREAMS: u32 = 100;

/// The mock upstream: HTTP/1.1 and h2c (prior knowledge) on one plain port,
/// and with `MOCK_TLS_CA_OUT=PATH` also TLS (ALPN `h2`, `http/1.1`) on a
/// second port, with a certificate from a fresh CA whose PEM goes to PATH.
fn run_mock() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tls = match std::env::var_os("MOCK_TLS_CA_OUT") {
            Some(ca_out) => {
                let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                println!(
                    "mock tls listening on {}",
                    tls_listener.local_addr().expect("addr")
                );
                Some((tls_listener, mock_tls(std::path::Path::new(&ca_out))))
            }
            None => None,
        };
        println!("mock listening on {}", listener.local_addr().expect("addr"));
        if let Some((tls_listener, acceptor)) = tls {
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = tls_listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            mock_connection(stream).await;
                        }
                    });
                }
            });
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(mock_connection(stream));
        }
    });
}

async fn mock_connection<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MOCK_MAX_STREAMS);
    let _ = builder
        .serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(mock_answer),
        )
        .await;
}

/// A CA (its PEM written to `ca_out`, for keygate's `upstream_ca_file`) and
/// a `localhost` certificate from it.
fn mock_tls(ca_out: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    std::fs::write(ca_out, ca.pem()).expect("write the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

type MockBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into()).boxed()
}

/// How long a `"model":"hold"` stream waits after its first event.
const HOLD: Duration = Duration::from_secs(60);

/// Pause between a paced stream's events (the shared harness's `-paced`
/// model: 10 ms), so each event leaves the mock as its own frame.
const PACE: Duration = Duration::from_millis(10);

/// A generation as a provider streams it: the first event at once, with the
/// head (a timer would add its ~1 ms tick), then one event every `gap`, then
/// the end one `gap` after the last. A held stream is a first event and no
/// more for [`HOLD`].
struct ScriptedStream {
    first: Option<Bytes>,
    events: std::collections::VecDeque<Bytes>,
    gap: Duration,
    wait: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl ScriptedStream {
    fn new(mut events: std::collections::VecDeque<Bytes>, gap: Duration) -> Self {
        ScriptedStream {
            first: events.pop_front(),
            events,
            gap,
            wait: Box::pin(tokio::time::sleep(gap)),
        }
    }
}

impl http_body::Body for ScriptedStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        std::task::ready!(std::future::Future::poll(self.wait.as_mut(), cx));
        let next = tokio::time::Instant::now() + self.gap;
        self.wait.as_mut().reset(next);
        std::task::Poll::Ready(
            self.events
                .pop_front()
                .map(|e| Ok(http_body::Frame::data(e))),
        )
    }
}

/// The 12 events of a streamed answer: 11 tokens, then the usage chunk with
/// `[DONE]`.
fn sse_events() -> Vec<String> {
    let mut events: Vec<String> = (0..11)
        .map(|n| format!("data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{n} \"}}}}],\"usage\":null}}\n\n"))
        .collect();
    events.push("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":11,\"total_tokens\":31}}\n\ndata: [DONE]\n\n".to_owned());
    events
}

async fn mock_answer(request: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {UPSTREAM_KEY}").as_bytes());
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !authorized {
        return Ok(Response::builder()
            .status(401)
            .body(full(Bytes::from_static(b"{\"error\":{\"message\":\"bad key\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}")))
            .expect("response"));
    }
    if memchr::memmem::find(&body, b"\"model\":\"hold\"").is_some() {
        let held = ScriptedStream::new(
            [Bytes::from_static(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok\"}}],\"usage\":null}\n\n")].into(),
            HOLD,
        );
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(held.boxed())
            .expect("response"));
    }
    if memchr::memmem::find(&body, b"\"model\":\"gpt-4o-mini-paced\"").is_some() {
        let paced = ScriptedStream::new(sse_events().into_iter().map(Bytes::from).collect(), PACE);
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(paced.boxed())
            .expect("response"));
    }
    if memchr::memmem::find(&body, b"\"stream\":true").is_some() {
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(full(sse_events().concat()))
            .expect("response"));
    }
    let limited = std::env::var_os("MOCK_RATE_LIMIT_HEADERS").is_some();
    let content = "x".repeat(700);
    let json = format!("{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":160,\"total_tokens\":180}}}}");
    let mut response = Response::builder().header("content-type", "application/json");
    if limited {
        // What api.openai.com says on every answer (BENCH_EVERYTHING=1).
        for (name, value) in [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "30000000"),
            ("x-ratelimit-remaining-tokens", "29999820"),
            ("x-ratelimit-reset-tokens", "0s"),
        ] {
            response = response.header(name, value);
        }
    }
    Ok(response.body(full(json)).expect("response"))
}

// ---------------------------------------------------------------- the floor

/// The plumbing alone: hyper's HTTP/1 server and keygate's upstream client
/// (the pool driven inline), with one fixed client key checked and the
/// upstream key injected — no auth table, routing, retry buffer, metering,
/// metrics, head guard, timeouts or logging. What any proxy on this stack pays;
/// keygate's column minus this one is the cost of keygate's own stages.
fn run_floor() {
    let upstream_base = std::env::var("FLOOR_UPSTREAM").expect("FLOOR_UPSTREAM");
    let client_auth = Bytes::from(format!(
        "Bearer {}",
        std::env::var("FLOOR_CLIENT_KEY").expect("FLOOR_CLIENT_KEY")
    ));
    let config = keygate::config::Config::load(&keygate::config::Sources::default())
        .expect("embedded defaults");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let upstream = keygate::net::upstream::Upstream::new(&config).expect("upstream");
        // FLOOR_LISTEN: a fixed address, to run the floor in another harness.
        let listen = std::env::var("FLOOR_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        println!(
            "floor listening on {}",
            listener.local_addr().expect("addr")
        );
        // FLOOR_UPSTREAM_KEY: to run the floor alone against another mock.
        let upstream_key =
            std::env::var("FLOOR_UPSTREAM_KEY").unwrap_or_else(|_| UPSTREAM_KEY.to_owned());
        let inject = http::HeaderValue::from_str(&format!("Bearer {upstream_key}")).expect("key");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (upstream, upstream_base, client_auth, inject) = (
                upstream.clone(),
                upstream_base.clone(),
                client_auth.clone(),
                inject.clone(),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (upstream, upstream_base, client_auth, inject) = (
                        upstream.clone(),
                        upstream_base.clone(),
                        client_auth.clone(),
                        inject.clone(),
                    );
                    async move {
                        floor_forward(request, &upstream, &upstream_base, &client_auth, inject)
                            .await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

type FloorBody = http_body_util::Either<keygate::net::upstream::UpstreamBody, Full<Bytes>>;

async fn floor_forward(
    request: Request<Incoming>,
    upstream: &keygate::net::upstream::Upstream,
    upstream_base: &str,
    client_auth: &[u8],
    inject: http::HeaderValue,
) -> Result<Response<FloorBody>, Infallible> {
    let refuse = |status: u16| {
        Ok(Response::builder()
            .status(status)
            .body(http_body_util::Either::Right(Full::new(Bytes::new())))
            .expect("response"))
    };
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == client_auth);
    if !authorized {
        return refuse(401);
    }
    let uri = format!("{upstream_base}{}", request.uri().path());
    let content_type = request.headers().get("content-type").cloned();
    let method = request.method().clone();
    let Ok(body) = request.into_body().collect().await else {
        return refuse(400);
    };
    let mut outbound = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", inject)
        .body(keygate::proxy::body::OutboundBody::Full(Some(
            body.to_bytes(),
        )))
        .expect("request");
    if let Some(content_type) = content_type {
        outbound.headers_mut().insert("content-type", content_type);
    }
    match upstream.send(outbound).await {
        Ok(response) => Ok(response.map(http_body_util::Either::Left)),
        Err(_) => refuse(502),
    }
}

// ---------------------------------------------------------------- the run

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's worker outlives a killed master: its children go first.
        for child in process_tree(self.0.id()).into_iter().skip(1) {
            let _ = Command::new("kill")
                .args(["-9", &child.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_reading(mut command: Command, marker: &str) -> (Proc, Vec<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&String| l.contains(marker))
        .count()
        < 1
        || (marker == "listener" && lines.iter().filter(|l| l.contains(marker)).count() < 2)
    {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            panic!("process exited before printing {marker}: {lines:?}");
        }
        lines.push(line.trim().to_owned());
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (Proc(child), lines)
}

fn addr_after(lines: &[String], marker: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(marker))
        .and_then(|l| l.rsplit(' ').next())
        .expect("address line")
        .to_owned()
}

fn keygate(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(keygate_exe())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("keygate");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "keygate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `keygate serve` on `config`, as `command` starts keygate (the binary
/// itself, or valgrind running it).
fn keygate_serve(mut command: Command, config: &std::path::Path) -> Command {
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn");
    with_workers(command)
}

/// Shared limits' cost: the client gets a limit it never reaches, then the
/// same closed loop and single-connection run go through the running keygate
/// (its own limits, in memory) and through a second one with `[cluster]
/// redis_url` pointing at a redis-server started here (one Lua call per
/// request). Needs `redis-server` on PATH.
async fn redis_rows(
    config: &std::path::Path,
    client_key: &str,
    (local_pid, local_addr): (u32, &str),
    connections: usize,
    run_for: Duration,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut redis = Command::new("redis-server");
    redis
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(redis) = redis.spawn() else {
        println!("BENCH_REDIS: redis-server is not installed; skipped");
        return;
    };
    let redis = Proc(redis);
    keygate(
        config,
        &["client", "limits", "bench", "--rpm", "100000000"],
        None,
    );
    std::thread::sleep(Duration::from_millis(700)); // the running keygate reloads
    let mut serve = keygate_serve(Command::new(keygate_exe()), config);
    serve
        .env(
            "KEYGATE_CLUSTER__REDIS_URL",
            format!("redis://127.0.0.1:{port}/0"),
        )
        .env(
            "KEYGATE_METERING__DB",
            config.with_file_name("usage-redis.sqlite"),
        );
    let (shared_proc, lines) = spawn_reading(serve, "listener");
    let shared_addr = addr_after(&lines, "client listener on");
    std::thread::sleep(Duration::from_millis(1500)); // connected to Redis
    let local = measure(
        &format!("http://{local_addr}"),
        client_key,
        local_pid,
        connections,
        run_for,
    )
    .await;
    let shared = measure(
        &format!("http://{shared_addr}"),
        client_key,
        shared_proc.0.id(),
        connections,
        run_for,
    )
    .await;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!("limited client: limits in memory vs shared through Redis on loopback");
    println!(
        "{:<32} {:>11} {:>11} {:>9}",
        "", "in memory", "redis", "redis×"
    );
    for (name, a, b) in [
        ("requests/s (N connections)", local.rps, shared.rps),
        (
            "p50 latency (1 connection) µs",
            us(local.single_p50),
            us(shared.single_p50),
        ),
        (
            "p99 latency (1 connection) µs",
            us(local.single_p99),
            us(shared.single_p99),
        ),
        (
            "CPU per request µs",
            local.cpu_us_per_request.unwrap_or(0.0),
            shared.cpu_us_per_request.unwrap_or(0.0),
        ),
    ] {
        println!("{name:<32} {a:>11.1} {b:>11.1} {:>8.2}x", b / a.max(1e-12));
    }
    drop(shared_proc);
    drop(redis);
}

/// The floor in front of the mock, as `command` starts this bench binary.
fn floor_serve(mut command: Command, mock_addr: &str, client_key: &str) -> Command {
    command
        .env("KEYGATE_BENCH_ROLE", "floor")
        .env("FLOOR_UPSTREAM", format!("http://{mock_addr}"))
        .env("FLOOR_CLIENT_KEY", client_key);
    with_workers(command)
}

/// BENCH_KEYGATE_WORKERS=1|2: the proxies' tokio worker threads (default: one per core).
fn with_workers(mut command: Command) -> Command {
    if let Ok(workers) = std::env::var("BENCH_KEYGATE_WORKERS") {
        command.env("TOKIO_WORKER_THREADS", workers);
    }
    command
}

/// The keygate under test: this build's, or `BENCH_KEYGATE_BIN` (an older
/// build, to compare two in the same conditions).
fn keygate_exe() -> std::ffi::OsString {
    std::env::var_os("BENCH_KEYGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_keygate").into())
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) // utime + stime (fields 14, 15 of the full line)
}

fn cpu_ticks_tree(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(cpu_ticks).sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Result_ {
    rps: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    single_p50: Duration,
    single_p99: Duration,
    ttfe_p50: Duration,
    stream_rps: f64,
    frames_per_stream: f64,
    paced_first_event: Duration,
    paced_frames: f64,
    cpu_us_per_request: Option<f64>,
    rss_mib: Option<f64>,
}

/// Each field's median over the rounds.
fn median(runs: &[Result_]) -> Result_ {
    fn mid<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).expect("a number"));
        values[values.len() / 2]
    }
    let of = |f: fn(&Result_) -> f64| mid(runs.iter().map(f).collect());
    let at = |f: fn(&Result_) -> Duration| mid(runs.iter().map(f).collect());
    Result_ {
        rps: of(|r| r.rps),
        p50: at(|r| r.p50),
        p99: at(|r| r.p99),
        p999: at(|r| r.p999),
        single_p50: at(|r| r.single_p50),
        single_p99: at(|r| r.single_p99),
        ttfe_p50: at(|r| r.ttfe_p50),
        stream_rps: of(|r| r.stream_rps),
        frames_per_stream: of(|r| r.frames_per_stream),
        paced_first_event: at(|r| r.paced_first_event),
        paced_frames: of(|r| r.paced_frames),
        cpu_us_per_request: Some(of(|r| r.cpu_us_per_request.unwrap_or(0.0))),
        rss_mib: Some(of(|r| r.rss_mib.unwrap_or(0.0))),
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(http)
}

fn chat_body(stream: bool) -> Bytes {
    chat_body_for("gpt-4o-mini", stream)
}

fn chat_body_for(model: &str, stream: bool) -> Bytes {
    let prompt = "Summarise the following text in one sentence. ".repeat(16);
    Bytes::from(format!(
        "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"system\",\"content\":\"You are terse.\"}},{{\"role\":\"user\",\"content\":\"{prompt}\"}}],\"temperature\":0.2,\"stream\":{stream}{}}}",
        if stream { ",\"stream_options\":{\"include_usage\":true}" } else { "" }
    ))
}

async fn one_request(client: &HttpClient, url: &str, key: &str, body: Bytes) -> Duration {
    let started = Instant::now();
    let request = Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    response.into_body().collect().await.expect("body");
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn closed_loop(
    url: &str,
    key: &str,
    connections: usize,
    run_for: Duration,
) -> (usize, Vec<Duration>) {
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, key, stop) =
            (client.clone(), url.to_owned(), key.to_owned(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                latencies.push(one_request(&client, &url, &key, chat_body(false)).await);
            }
            latencies
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort();
    (all.len(), all)
}

/// One streamed answer, read frame by frame: when its first data frame came
/// and how many data frames it came in (a proxy that buffers joins them).
async fn one_stream(client: &HttpClient, url: &str, key: &str, body: Bytes) -> (Duration, usize) {
    let t = Instant::now();
    let request = Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let mut body = client.request(request).await.expect("response").into_body();
    let mut first_event = None;
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        if frame.expect("frame").is_data() {
            frames += 1;
            first_event.get_or_insert_with(|| t.elapsed());
        }
    }
    (first_event.unwrap_or_default(), frames)
}

async fn streams(url: &str, key: &str, count: usize) -> (Vec<Duration>, f64, f64) {
    let client = client();
    let mut first_event = Vec::new();
    let mut frames = 0usize;
    let started = Instant::now();
    for _ in 0..count {
        let (first, n) = one_stream(&client, url, key, chat_body(true)).await;
        first_event.push(first);
        frames += n;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    first_event.sort();
    (first_event, rate, frames as f64 / count as f64)
}

/// The shared harness's `paced` test: 16 streams at once, 10 rounds, each
/// event 10 ms after the one before. Returns the first event's p50 and the
/// data frames per stream (12 when nothing is held back).
async fn paced_streams(url: &str, key: &str) -> (Duration, f64) {
    let client = client();
    let mut first_events = Vec::new();
    let mut frames = 0usize;
    for _ in 0..10 {
        let round: Vec<_> = (0..16)
            .map(|_| {
                let (client, url, key) = (client.clone(), url.to_owned(), key.to_owned());
                tokio::spawn(async move {
                    one_stream(
                        &client,
                        &url,
                        &key,
                        chat_body_for("gpt-4o-mini-paced", true),
                    )
                    .await
                })
            })
            .collect();
        for task in round {
            let (first, n) = task.await.expect("task");
            first_events.push(first);
            frames += n;
        }
    }
    first_events.sort();
    (
        percentile(&first_events, 0.5),
        frames as f64 / first_events.len() as f64,
    )
}

async fn measure(
    url_base: &str,
    key: &str,
    pid: u32,
    connections: usize,
    run_for: Duration,
) -> Result_ {
    let url = format!("{url_base}/v1/chat/completions");
    // Warm up connections and caches.
    closed_loop(&url, key, connections, Duration::from_millis(500)).await;
    let ticks_before = cpu_ticks_tree(pid);
    let (count, latencies) = closed_loop(&url, key, connections, run_for).await;
    let ticks = cpu_ticks_tree(pid) - ticks_before;
    let rss = rss_tree_kib(pid);
    let (_, single) = closed_loop(&url, key, 1, run_for / 2).await;
    let (first_events, stream_rps, frames) = streams(&url, key, 500).await;
    let (paced_first_event, paced_frames) = paced_streams(&url, key).await;
    let ticks_per_second = 100.0; // USER_HZ on Linux
    Result_ {
        rps: count as f64 / run_for.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        single_p50: percentile(&single, 0.5),
        single_p99: percentile(&single, 0.99),
        ttfe_p50: percentile(&first_events, 0.5),
        stream_rps,
        frames_per_stream: frames,
        paced_first_event,
        paced_frames,
        cpu_us_per_request: Some(ticks as f64 / ticks_per_second * 1e6 / count.max(1) as f64),
        rss_mib: Some(rss as f64 / 1024.0),
    }
}

/// One proxy (or the mock itself) the bench drives.
struct Target {
    name: &'static str,
    base: String,
    key: String,
    /// Its process; with children (nginx's worker), all are counted.
    pid: u32,
}

/// A keygate workspace's config: the vault and ledger in `dir`, `openai` at
/// `base_url` spoken to as `http`.
fn keygate_config(
    dir: &std::path::Path,
    name: &str,
    base_url: &str,
    extra: &str,
) -> std::path::PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_connections = 20000\n{extra_server}\
             [vault]\npath = \"{d}/keygate.vault\"\nmaster_key_file = \"{d}/master.key\"\n\
             [metering]\ndb = \"{d}/usage-{name}.sqlite\"\n\
             [providers.openai]\nbase_url = \"{base_url}\"\n{extra_provider}",
            d = dir.display(),
            extra_server = extra.split_once("|").map_or("", |(s, _)| s),
            extra_provider = extra.split_once("|").map_or(extra, |(_, p)| p),
        ),
    )
    .expect("config");
    config
}

async fn bench(run_for: Duration, connections: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    raise_descriptor_limit(std::process::id());
    let tls = env_or("BENCH_UPSTREAM_TLS", 0) == 1;
    let ca_file = dir.path().join("mock-ca.pem");
    let mut mock_cmd = Command::new(std::env::current_exe().expect("exe"));
    mock_cmd.env("KEYGATE_BENCH_ROLE", "mock");
    // BENCH_EVERYTHING=1: the mock says what is left of the key's limits.
    let everything = env_or("BENCH_EVERYTHING", 0) == 1;
    if everything {
        mock_cmd.env("MOCK_RATE_LIMIT_HEADERS", "1");
    }
    if tls {
        mock_cmd.env("MOCK_TLS_CA_OUT", &ca_file);
    }
    let (mock, lines) = spawn_reading(mock_cmd, "mock listening");
    let mock_addr = addr_after(&lines, "mock listening on");
    let mock_pid = mock.0.id();
    let mock_ports: Vec<u16> = lines
        .iter()
        .filter(|l| l.starts_with("mock"))
        .filter_map(|l| l.rsplit(':').next()?.parse().ok())
        .collect();
    let plain = format!("http://{mock_addr}");
    let config = keygate_config(dir.path(), "h1", &plain, "");
    keygate(&config, &["vault", "init"], None);
    keygate(
        &config,
        &["key", "add", "openai", "--label", "bench"],
        Some(UPSTREAM_KEY),
    );
    let out = keygate(&config, &["client", "add", "bench"], None);
    let client_key = out
        .split_whitespace()
        .find(|w| w.starts_with("kg_"))
        .expect("client key")
        .to_owned();

    // The keygates: HTTP/1.1 and h2c to the mock (and over TLS, by ALPN,
    // with BENCH_UPSTREAM_TLS=1), all on the same vault.
    let mut keygates = vec![
        ("keygate h1", config.clone()),
        (
            "keygate h2",
            keygate_config(dir.path(), "h2", &plain, "http = \"h2\"\n"),
        ),
    ];
    if tls {
        let tls_addr = addr_after(&lines, "mock tls listening on");
        let port = tls_addr.rsplit(':').next().expect("port");
        let base = format!("https://localhost:{port}");
        let server = format!("upstream_ca_file = \"{}\"\n|", ca_file.display());
        keygates.push((
            "kg tls h1",
            keygate_config(
                dir.path(),
                "tls-h1",
                &base,
                &format!("{server}http = \"h1\"\n"),
            ),
        ));
        keygates.push((
            "kg tls h2",
            keygate_config(
                dir.path(),
                "tls-h2",
                &base,
                &format!("{server}http = \"h2\"\n"),
            ),
        ));
    }
    let mut procs = Vec::new();
    let mut targets = vec![Target {
        name: "direct",
        base: plain.clone(),
        key: UPSTREAM_KEY.to_owned(),
        pid: mock_pid,
    }];
    let floor_cmd = floor_serve(
        Command::new(std::env::current_exe().expect("exe")),
        &mock_addr,
        &client_key,
    );
    let (floor_proc, lines) = spawn_reading(floor_cmd, "floor listening");
    targets.push(Target {
        name: "floor",
        base: format!("http://{}", addr_after(&lines, "floor listening on")),
        key: client_key.clone(),
        pid: floor_proc.0.id(),
    });
    procs.push(floor_proc);
    match nginx_serve(dir.path(), &mock_addr, &client_key) {
        Some((nginx_proc, addr)) => {
            targets.push(Target {
                name: "nginx",
                base: format!("http://{addr}"),
                key: client_key.clone(),
                pid: nginx_proc.0.id(),
            });
            procs.push(nginx_proc);
        }
        None => println!("nginx is not installed (Debian: nginx-light); its column is left out"),
    }
    for (name, config) in &keygates {
        let (proc, lines) = spawn_reading(
            keygate_serve(Command::new(keygate_exe()), config),
            "listener",
        );
        targets.push(Target {
            name,
            base: format!("http://{}", addr_after(&lines, "client listener on")),
            key: client_key.clone(),
            pid: proc.0.id(),
        });
        procs.push(proc);
    }

    println!("proxy_overhead: {connections} connections, {}s closed loop, ~1 KB chat bodies, 500 SSE streams of 12 events", run_for.as_secs());
    println!(
        "floor = hyper's HTTP/1 server + keygate's upstream client, one fixed key, nothing else"
    );
    // BENCH_SECONDS=0: only the held streams (and what else is asked for).
    // BENCH_ROUNDS=N: the targets take turns N times; each row is a median.
    if !run_for.is_zero() {
        let rounds: usize = env_or("BENCH_ROUNDS", 1);
        let mut runs: Vec<Vec<Result_>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds.max(1) {
            for (target, runs) in targets.iter().zip(&mut runs) {
                runs.push(
                    measure(&target.base, &target.key, target.pid, connections, run_for).await,
                );
            }
        }
        let results: Vec<Result_> = runs.iter().map(|r| median(r)).collect();
        print_table(&targets, &results);
    }

    // BENCH_REDIS=1: what shared limits cost ([cluster] redis_url), in one run.
    if env_or("BENCH_REDIS", 0) == 1 {
        let h1 = targets.iter().find(|t| t.name == "keygate h1").expect("h1");
        redis_rows(
            &config,
            &client_key,
            (h1.pid, h1.base.trim_start_matches("http://")),
            connections,
            run_for,
        )
        .await;
    }

    let held: usize = env_or("BENCH_HELD_STREAMS", 10_000);
    if held > 0 {
        println!();
        println!("{held} SSE streams held open at once (each has had its first event), one proxy at a time:");
        println!(
            "{:<12} {:>7} {:>10} {:>10} {:>12} {:>12} {:>16}",
            "", "open", "idle MiB", "RSS MiB", "KiB/stream", "descriptors", "upstream sockets"
        );
        raise_descriptor_limit(mock_pid);
        for target in targets.iter().filter(|t| t.name != "direct") {
            for pid in process_tree(target.pid) {
                raise_descriptor_limit(pid);
            }
            let idle = rss_tree_kib(target.pid);
            let addr = target.base.trim_start_matches("http://");
            let h = held_streams(addr, &target.key, target.pid, &mock_ports, held).await;
            println!(
                "{:<12} {:>7} {:>10.1} {:>10.1} {:>12.1} {:>12} {:>16}",
                target.name,
                h.open,
                idle as f64 / 1024.0,
                h.rss_kib as f64 / 1024.0,
                h.rss_kib.saturating_sub(idle) as f64 / h.open.max(1) as f64,
                h.descriptors,
                h.upstream_sockets,
            );
            // Let the proxy see its clients go and close what they held.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    // BENCH_LONG_REQUESTS=N: N JSON requests through each keygate, RSS on
    // the way (does memory stay flat over a long run?).
    let long: usize = env_or("BENCH_LONG_REQUESTS", 0);
    if long > 0 {
        println!();
        for target in targets.iter().filter(|t| t.name.starts_with("keygate")) {
            let url = format!("{}/v1/chat/completions", target.base);
            let mut line = format!("{} over {long} requests, RSS MiB:", target.name);
            let steps = 5;
            line.push_str(&format!(
                " start {:.1}",
                rss_kib(target.pid) as f64 / 1024.0
            ));
            for step in 1..=steps {
                fixed_count(&url, &target.key, false, long / steps).await;
                line.push_str(&format!(
                    ", after {} {:.1}",
                    long / steps * step,
                    rss_kib(target.pid) as f64 / 1024.0
                ));
            }
            println!("{line}");
        }
    }
    drop(procs);

    // BENCH_CALLGRIND=N: instructions per request, counted by valgrind.
    let counted: usize = env_or("BENCH_CALLGRIND", 0);
    if counted > 0 {
        // BENCH_EVERYTHING=1: also keygate with every feature of this
        // round on (benches/everything_on.toml, a client with limits and a
        // dollar budget), counted in the same run.
        let all = everything.then(|| {
            let all = dir.path().join("everything.toml");
            let base = std::fs::read_to_string(&config).expect("config");
            let extra = include_str!("everything_on.toml");
            std::fs::write(&all, format!("{base}\n{extra}")).expect("config");
            let out = keygate(
                &all,
                &[
                    "client",
                    "add",
                    "bench-all",
                    "--rpm",
                    "100000000",
                    "--tpm",
                    "1000000000",
                    "--budget-usd",
                    "1000000",
                ],
                None,
            );
            let key = out
                .split_whitespace()
                .find(|w| w.starts_with("kg_"))
                .expect("client key")
                .to_owned();
            (all, key)
        });
        instructions_per_request(&config, &mock_addr, &client_key, all.as_ref(), counted).await;
    }
    drop(mock);
}

/// Every target's row values, then each keygate's ratio to nginx (the
/// issue's yardstick) and to the direct path.
fn print_table(targets: &[Target], results: &[Result_]) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let direct = &results[0];
    let nginx = targets.iter().position(|t| t.name == "nginx");
    type Value<'a> = Box<dyn Fn(&Result_) -> f64 + 'a>;
    let rows: Vec<(&str, Value)> = vec![
        ("requests/s (N connections)", Box::new(|r| r.rps)),
        (
            "CPU µs per request",
            Box::new(|r| r.cpu_us_per_request.unwrap_or(0.0)),
        ),
        ("p50 µs (N connections)", Box::new(move |r| us(r.p50))),
        ("p99 µs (N connections)", Box::new(move |r| us(r.p99))),
        ("p99.9 µs (N connections)", Box::new(move |r| us(r.p999))),
        ("p50 µs (1 connection)", Box::new(move |r| us(r.single_p50))),
        ("p99 µs (1 connection)", Box::new(move |r| us(r.single_p99))),
        (
            "added p50 µs (1 connection)",
            Box::new(move |r| us(r.single_p50) - us(direct.single_p50)),
        ),
        (
            "added p99 µs (1 connection)",
            Box::new(move |r| us(r.single_p99) - us(direct.single_p99)),
        ),
        ("first SSE event p50 µs", Box::new(move |r| us(r.ttfe_p50))),
        (
            "first event added µs",
            Box::new(move |r| us(r.ttfe_p50) - us(direct.ttfe_p50)),
        ),
        ("SSE streams/s (sequential)", Box::new(|r| r.stream_rps)),
        ("data frames per stream", Box::new(|r| r.frames_per_stream)),
        (
            "paced first event p50 µs",
            Box::new(move |r| us(r.paced_first_event)),
        ),
        (
            "paced first event added µs",
            Box::new(move |r| us(r.paced_first_event) - us(direct.paced_first_event)),
        ),
        ("paced frames per stream", Box::new(|r| r.paced_frames)),
        (
            "RSS MiB after the run",
            Box::new(|r| r.rss_mib.unwrap_or(0.0)),
        ),
    ];
    println!();
    let mut head = format!("{:<30}", "");
    for t in targets {
        head.push_str(&format!(" {:>11}", t.name));
    }
    if nginx.is_some() {
        for t in targets
            .iter()
            .filter(|t| t.name.contains("h1") || t.name.contains("h2"))
        {
            head.push_str(&format!(
                " {:>13}",
                format!(
                    "{}÷nginx",
                    t.name
                        .trim_start_matches("keygate ")
                        .trim_start_matches("kg ")
                )
            ));
        }
    }
    println!("{head}");
    for (name, value) in &rows {
        let mut line = format!("{name:<30}");
        for r in results {
            line.push_str(&format!(" {:>11.1}", value(r)));
        }
        if let Some(n) = nginx {
            let base = value(&results[n]);
            for (t, r) in targets.iter().zip(results) {
                if t.name.contains("h1") || t.name.contains("h2") {
                    line.push_str(&format!(" {:>12.2}x", value(r) / base.max(1e-12)));
                }
            }
        }
        println!("{line}");
    }
}

/// nginx (Debian's) set up as the shared harness's `proxies/nginx.sh` sets it
/// up for the same job: the client key checked by a `map`, the upstream key
/// set, upstream keep-alive, no response buffering; one worker. Enough
/// descriptors for the held streams.
fn nginx_serve(dir: &std::path::Path, mock_addr: &str, client_key: &str) -> Option<(Proc, String)> {
    nginx_serve_under(Command::new("nginx"), dir, mock_addr, client_key, "")
}

/// [`nginx_serve`] run by `program` (`nginx` itself, or valgrind with
/// `nginx` as its last argument), with more `-g` directives.
fn nginx_serve_under(
    mut program: Command,
    dir: &std::path::Path,
    mock_addr: &str,
    client_key: &str,
    directives: &str,
) -> Option<(Proc, String)> {
    Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = dir.join("nginx");
    std::fs::create_dir_all(d.join("tmp")).expect("nginx dir");
    let conf = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 25000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  client_body_buffer_size 64k;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  map_hash_bucket_size 128;
  map $http_authorization $client_ok {{ "Bearer {client_key}" 1; default 0; }}
  upstream llm_upstream {{ server {mock_addr}; keepalive 256; keepalive_requests 1000000; }}
  server {{
    listen {addr} backlog=4096;
    default_type application/json;
    location /v1/ {{
      if ($client_ok = 0) {{
        return 401 '{{"error":{{"message":"invalid proxy key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}';
      }}
      proxy_pass http://llm_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {UPSTREAM_KEY}";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"#,
        d = d.display()
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = program
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", &format!("daemon off; {directives}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let proc = Proc(child);
    // Under valgrind nginx takes seconds to start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            d.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((proc, addr))
}

/// Two descriptors per held stream in a proxy; as root the bench raises the
/// limit (without root fewer streams open, and the count is printed).
fn raise_descriptor_limit(pid: u32) {
    let _ = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=65536:65536"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `pid` and its children (nginx's master and worker).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

fn rss_tree_kib(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(rss_kib).sum()
}

/// Socket inodes a process tree holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let mut inodes = std::collections::HashSet::new();
    for pid in process_tree(pid) {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

fn descriptors(pid: u32) -> usize {
    process_tree(pid)
        .into_iter()
        .map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

/// Established TCP connections the process tree holds to one of `ports`
/// (the mock's): its upstream sockets.
fn upstream_sockets(pid: u32, ports: &[u16]) -> usize {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let established = f.get(3) == Some(&"01");
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            established
                && remote_port.is_some_and(|p| ports.contains(&p))
                && inode.is_some_and(|i| inodes.contains(&i))
        })
        .count()
}

/// keygate and the floor, each under callgrind: the user-space instructions
/// one request (and one SSE stream) costs, after a warm-up. Unlike time, the
/// count barely moves between runs on a noisy machine, so a change of a few
/// per cent shows. Needs `valgrind` (Debian package `valgrind`).
async fn instructions_per_request(
    config: &std::path::Path,
    mock_addr: &str,
    client_key: &str,
    everything: Option<&(std::path::PathBuf, String)>,
    count: usize,
) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("BENCH_CALLGRIND: valgrind is not installed; skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // BENCH_CALLGRIND_OUT=DIR keeps the dumps for callgrind_annotate.
    let dumps_dir = std::env::var_os("BENCH_CALLGRIND_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("dumps"));
    std::fs::create_dir_all(&dumps_dir).expect("dumps dir");
    let mut rows = Vec::new();
    let many: usize = env_or("BENCH_CALLGRIND_CLIENTS", 0);
    let mut names = vec!["floor", "nginx", "keygate"];
    if everything.is_some() {
        names.push("keygate+all");
    }
    if many > 0 {
        names.push("keygate, many clients");
    }
    for name in names {
        if name == "keygate, many clients" {
            let dir = config.parent().expect("config dir");
            let kek = big_vault::kek(&dir.join("master.key"));
            big_vault::fill(&dir.join("keygate.vault"), &kek, "openai", many, 0);
        }
        let out = dumps_dir.join(name.replace(", ", "-").replace(' ', "-"));
        let (config, client_key) = match (name, everything) {
            ("keygate+all", Some((all, key))) => (all.as_path(), key.as_str()),
            _ => (config, client_key),
        };
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()));
        let (proc, url) = match name {
            "floor" => {
                command.arg(std::env::current_exe().expect("exe"));
                let command = floor_serve(command, mock_addr, client_key);
                let (proc, lines) = spawn_reading(command, "floor listening on");
                let addr = addr_after(&lines, "floor listening on");
                (proc, addr)
            }
            "nginx" => {
                // One process (no master), so the one valgrind runs counts it all.
                command.arg("nginx");
                let Some(served) = nginx_serve_under(
                    command,
                    &dir.path().join("nginx-callgrind"),
                    mock_addr,
                    client_key,
                    "master_process off;",
                ) else {
                    continue;
                };
                served
            }
            _ => {
                command.arg(keygate_exe());
                // spawn_reading's "listener" waits for both of keygate's listener lines.
                let (proc, lines) = spawn_reading(keygate_serve(command, config), "listener");
                let addr = addr_after(&lines, "client listener on");
                (proc, addr)
            }
        };
        let url = format!("http://{url}/v1/chat/completions");
        let pid = proc.0.id().to_string();
        let mut per = Vec::new();
        for stream in [false, true] {
            fixed_count(&url, client_key, stream, count / 10).await; // warm-up
            callgrind_control(&["-z", &pid]);
            fixed_count(&url, client_key, stream, count).await;
            let dumps = std::fs::read_dir(&dumps_dir).expect("dir").count();
            callgrind_control(&["-d", &pid]);
            let dump = dumps_dir.join(format!(
                "{}.{}",
                name.replace(", ", "-").replace(' ', "-"),
                per.len() + 1
            ));
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::fs::read_dir(&dumps_dir).expect("dir").count() == dumps
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await; // written whole
            let text = std::fs::read_to_string(&dump).unwrap_or_default();
            let total: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("summary:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            per.push(total as f64 / count as f64);
        }
        rows.push((name, per));
        drop(proc);
    }
    println!();
    println!("user-space instructions (callgrind, {count} each after a warm-up, 8 connections):");
    let of = |who: &str| rows.iter().find(|(n, _)| *n == who).map(|(_, per)| per);
    let (Some(floor), Some(keygate)) = (of("floor"), of("keygate")) else {
        return;
    };
    for (i, what) in ["per JSON request", "per SSE stream"].iter().enumerate() {
        let mut line = format!("  {what:<18} floor {:>8.0}", floor[i]);
        if let Some(nginx) = of("nginx") {
            line.push_str(&format!("   nginx {:>8.0}", nginx[i]));
        }
        line.push_str(&format!(
            "   keygate {:>8.0}   keygate − floor {:>7.0} ({:.2}x)",
            keygate[i],
            keygate[i] - floor[i],
            keygate[i] / floor[i].max(1.0)
        ));
        if let Some(nginx) = of("nginx") {
            line.push_str(&format!(", ÷ nginx {:.2}x", keygate[i] / nginx[i].max(1.0)));
        }
        if let Some(all) = of("keygate+all") {
            line.push_str(&format!(
                "\n  {:<18} keygate with everything on {:>8.0} (+{:.0})",
                "",
                all[i],
                all[i] - keygate[i]
            ));
        }
        println!("{line}");
    }
    if let Some(big) = of("keygate, many clients") {
        for (i, what) in ["per JSON request", "per SSE stream"].iter().enumerate() {
            println!(
                "  {what:<18} keygate, 1 client {:>8.0}   with {many} more clients {:>8.0} ({:+.2} %)",
                keygate[i],
                big[i],
                (big[i] / keygate[i].max(1.0) - 1.0) * 100.0
            );
        }
    }
}

fn callgrind_control(args: &[&str]) {
    let _ = Command::new("callgrind_control")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Exactly `total` requests (JSON or SSE, read to the end) over 8 connections.
async fn fixed_count(url: &str, key: &str, stream: bool, total: usize) {
    let client = client();
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(total));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, key, left) =
            (client.clone(), url.to_owned(), key.to_owned(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                one_request(&client, &url, &key, chat_body(stream)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

/// What a proxy holds while its streams are open.
struct Held {
    open: usize,
    rss_kib: u64,
    descriptors: usize,
    upstream_sockets: usize,
}

/// Opens `count` streams through a proxy, each read up to its first event and
/// then left open; returns how many got there and what the proxy held then.
async fn held_streams(addr: &str, key: &str, pid: u32, mock_ports: &[u16], count: usize) -> Held {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = "{\"model\":\"hold\",\"messages\":[],\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    let request: Arc<[u8]> = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Connect a few hundred at a time: a burst of 10,000 SYNs overflows the backlog.
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (request, opened, connecting, addr) = (
            request.clone(),
            opened.clone(),
            connecting.clone(),
            addr.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.expect("semaphore");
            let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            if stream.write_all(&request).await.is_err() {
                return;
            }
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while memchr::memmem::find(&seen, b"data:").is_none() {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            drop(permit);
            opened.fetch_add(1, Ordering::SeqCst);
            // Hold the stream open until the bench aborts this task.
            let _ = stream.read(&mut buf).await;
            std::future::pending::<()>().await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = 0;
    let mut still = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = opened.load(Ordering::SeqCst);
        if now >= count {
            break;
        }
        if now != last {
            (last, still) = (now, Instant::now());
        } else if still.elapsed() > Duration::from_secs(10) {
            break; // no progress: report what opened
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = Held {
        open: opened.load(Ordering::SeqCst),
        rss_kib: rss_tree_kib(pid),
        descriptors: descriptors(pid),
        upstream_sockets: upstream_sockets(pid, mock_ports),
    };
    for task in tasks {
        task.abort();
    }
    result
}
