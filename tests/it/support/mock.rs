//! A scriptable, recording mock of an OpenAI-compatible upstream.
//!
//! It runs in the test's tokio runtime on `127.0.0.1:0`, checks the upstream key
//! in the header style of the provider it stands for, records every request it
//! saw (method, path+query, headers, body) and answers like OpenAI:
//! `POST /v1/chat/completions` (JSON, or SSE with `"stream": true`),
//! `GET /v1/models`, `POST /v1/embeddings`, and an OpenAI-style 404 elsewhere.
//! A test can change the accepted keys while it runs, queue canned answers,
//! pace streams, and hold a stream open after its first event.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::provider_answers::{self, Flavor, KeyStanding};
use super::ChannelBody;

pub type Body = BoxBody<Bytes, Infallible>;

/// Which request header carries the upstream key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI, xAI).
    Bearer,
    /// `x-api-key: <key>` (Anthropic-style).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
}

impl AuthStyle {
    /// The style named by a provider's `auth` config value.
    pub fn from_config(auth: &str) -> AuthStyle {
        match auth {
            "x-api-key" => AuthStyle::XApiKey,
            "api-key" => AuthStyle::ApiKey,
            _ => AuthStyle::Bearer,
        }
    }
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// HTTP/1.1 or HTTP/2, as the request arrived.
    pub version: http::Version,
    /// Path and query, e.g. `/v1/models?limit=2`.
    pub uri: String,
    /// The host the request was addressed to: `Host` over HTTP/1.1,
    /// `:authority` over HTTP/2.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// [`Seen::authority`] of a request's head.
pub fn authority_of(parts: &http::request::Parts) -> Option<String> {
    parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        let host = parts.headers.get(http::header::HOST)?;
        Some(String::from_utf8_lossy(host.as_bytes()).into_owned())
    })
}

impl Seen {
    /// The value of a header as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The request body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Every header name and value and the body, as one text, for "never contains" checks.
    pub fn everything(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.uri);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// A canned answer the mock gives instead of its normal behaviour.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

struct State {
    keys: Mutex<HashSet<String>>,
    auth: Mutex<AuthStyle>,
    seen: Mutex<Vec<Seen>>,
    hits: AtomicUsize,
    connections: AtomicUsize,
    canned: Mutex<VecDeque<Canned>>,
    stream_delay: Mutex<Duration>,
    hold: Mutex<Option<watch::Receiver<bool>>>,
    /// See [`Mock::tag_responses`].
    tag: std::sync::atomic::AtomicBool,
    /// See [`Mock::set_reject_delay`].
    reject_delay: Mutex<Duration>,
    /// See [`Mock::set_flavor`].
    flavor: Mutex<Flavor>,
    /// Keys whose account is out of credit ([`Mock::set_out_of_credit_keys`]).
    out_of_credit: Mutex<HashSet<String>>,
    /// Keys over their rate limit ([`Mock::set_rate_limited_keys`]).
    rate_limited: Mutex<HashSet<String>>,
    /// See [`Mock::set_compression`].
    compression: Mutex<Option<&'static str>>,
    /// Requests per key per window, as a provider's rate limit
    /// ([`Mock::set_request_limit`]), and each key's window (start, used).
    request_limit: Mutex<Option<(u64, Duration)>>,
    windows: Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
    /// 429s answered for a key over that limit.
    limit_refusals: AtomicUsize,
    /// Chat completions answered, per key: (requests, input, output tokens),
    /// as a provider's usage report attributes them ([`KeyAdder::served`]).
    served: Mutex<std::collections::HashMap<String, (u64, u64, u64)>>,
}

/// A running mock upstream; stops accepting when dropped.
pub struct Mock {
    addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
    /// Bumped by [`Mock::go_away`]: every open connection shuts down gracefully.
    goaway: Arc<watch::Sender<u64>>,
    /// `https://` when started with [`Listen::tls`].
    tls: bool,
}

/// How a [`Mock`] listens: plain (HTTP/1.1 and h2c), or TLS offering `h2` and
/// `http/1.1` by ALPN with a certificate for `localhost` from a test CA; and
/// the HTTP/2 stream limit it announces.
#[derive(Default)]
pub struct Listen {
    tls: Option<Arc<rustls::ServerConfig>>,
    max_concurrent_streams: Option<u32>,
}

/// A test CA and a `localhost` server certificate it signed.
pub struct TestCa {
    /// The CA certificate (PEM), for `[server] upstream_ca_file`.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A new CA and a `localhost`/`127.0.0.1` certificate from it; the
    /// server offers `alpn` (`["h2", "http/1.1"]`, or `["http/1.1"]`).
    pub fn new(alpn: &[&str]) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keygate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TestCa {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

impl Listen {
    /// TLS with `ca`'s server certificate.
    pub fn tls(mut self, ca: &TestCa) -> Listen {
        self.tls = Some(ca.server.clone());
        self
    }

    /// Announce `SETTINGS_MAX_CONCURRENT_STREAMS = n` on HTTP/2 connections.
    pub fn max_concurrent_streams(mut self, n: u32) -> Listen {
        self.max_concurrent_streams = Some(n);
        self
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Adds accepted keys to a running [`Mock`] ([`Mock::key_adder`]).
#[derive(Clone)]
pub struct KeyAdder(Arc<State>);

impl KeyAdder {
    /// Accept `key` from now on, besides the keys accepted so far.
    pub fn add(&self, key: &str) {
        self.0.keys.lock().unwrap().insert(key.to_string());
    }

    /// Refuse `key` from now on (deleted or disabled at the provider).
    pub fn remove(&self, key: &str) {
        self.0.keys.lock().unwrap().remove(key);
    }

    /// What the mock served with `key`: chat completions answered (requests,
    /// input tokens, output tokens) — a provider's per-key usage.
    pub fn served(&self, key: &str) -> (u64, u64, u64) {
        self.0
            .served
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or_default()
    }
}

/// Lets held streams continue (see [`Mock::hold_streams`]).
pub struct Release(watch::Sender<bool>);

impl Release {
    /// Let every held stream send the rest of its events.
    pub fn release(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.release();
    }
}

impl Mock {
    /// Start a mock accepting `keys` in the given header style.
    pub async fn start(keys: &[&str], auth: AuthStyle) -> Mock {
        Mock::start_with(keys, auth, Listen::default()).await
    }

    /// [`Mock::start`], listening as `listen` says.
    pub async fn start_with(keys: &[&str], auth: AuthStyle, listen: Listen) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(State {
            keys: Mutex::new(keys.iter().map(|k| k.to_string()).collect()),
            auth: Mutex::new(auth),
            seen: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            canned: Mutex::new(VecDeque::new()),
            stream_delay: Mutex::new(Duration::ZERO),
            hold: Mutex::new(None),
            tag: std::sync::atomic::AtomicBool::new(false),
            reject_delay: Mutex::new(Duration::ZERO),
            flavor: Mutex::new(Flavor::OpenAi),
            out_of_credit: Mutex::new(HashSet::new()),
            rate_limited: Mutex::new(HashSet::new()),
            compression: Mutex::new(None),
            served: Mutex::default(),
            request_limit: Mutex::new(None),
            windows: Mutex::default(),
            limit_refusals: AtomicUsize::new(0),
        });
        let st = state.clone();
        let (goaway, _) = watch::channel(0u64);
        let goaway = Arc::new(goaway);
        let goaways = goaway.clone();
        let tls = listen.tls.is_some();
        let accept = tokio::spawn(async move {
            let acceptor = listen.tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                let mut goaway = goaways.subscribe();
                let max_streams = listen.max_concurrent_streams;
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move {
                            let coding = st.compression.lock().unwrap().filter(|coding| {
                                req.headers()
                                    .get("accept-encoding")
                                    .and_then(|v| v.to_str().ok())
                                    .is_some_and(|v| v.contains(coding))
                            });
                            let response = handle(st, req).await;
                            Ok::<_, Infallible>(match coding {
                                Some(coding) => compress(response, coding).await,
                                None => response,
                            })
                        }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        builder.http2().max_concurrent_streams(n);
                    }
                    let io: Box<dyn Io> = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                        None => Box::new(stream),
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = goaway.changed() => {}
                    }
                    // GOAWAY: streams already taken finish, new ones go elsewhere.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
        });
        Mock {
            addr,
            state,
            accept,
            goaway,
            tls,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` with TLS), for a
    /// provider's `base_url`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Every open connection shuts down gracefully: over HTTP/2 a GOAWAY
    /// (streams in flight finish, the client must open new ones elsewhere),
    /// over HTTP/1.1 a close after the exchange in flight.
    pub fn go_away(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    /// Compress every answer (JSON, SSE, errors, canned) with `coding`
    /// (`"gzip"` or `"br"`) when the request's Accept-Encoding allows it, as
    /// the real APIs do; `None`: plain bytes (the default).
    pub fn set_compression(&self, coding: Option<&'static str>) {
        *self.state.compression.lock().unwrap() = coding;
    }

    /// Replace the set of accepted upstream keys.
    pub fn set_keys(&self, keys: &[&str]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.to_string()).collect();
    }

    /// A handle that adds accepted keys from elsewhere (a mock management API
    /// creating keys while the test runs).
    pub fn key_adder(&self) -> KeyAdder {
        KeyAdder(self.state.clone())
    }

    /// Refuse keys the way this provider does from now on (status codes and
    /// bodies in [`provider_answers`]).
    pub fn set_flavor(&self, flavor: Flavor) {
        *self.state.flavor.lock().unwrap() = flavor;
    }

    /// These keys are real, but their account is out of credit.
    pub fn set_out_of_credit_keys(&self, keys: &[&str]) {
        *self.state.out_of_credit.lock().unwrap() = keys.iter().map(|k| k.to_string()).collect();
    }

    /// These keys are real, but over their rate limit.
    /// Each key may make `per_window` chat completions per `window`, as the
    /// provider's rate limit: every answer says what is left in the
    /// provider's own headers (OpenAI's `x-ratelimit-*`, Anthropic's
    /// `anthropic-ratelimit-*`), and a request over it gets the provider's 429.
    pub fn set_request_limit(&self, per_window: u64, window: Duration) {
        *self.state.request_limit.lock().unwrap() = Some((per_window, window));
    }

    /// How many requests came back 429 for being over [`Mock::set_request_limit`].
    pub fn limit_refusals(&self) -> usize {
        self.state.limit_refusals.load(Ordering::SeqCst)
    }

    pub fn set_rate_limited_keys(&self, keys: &[&str]) {
        *self.state.rate_limited.lock().unwrap() = keys.iter().map(|k| k.to_string()).collect();
    }

    /// Check the upstream key in this header from now on.
    pub fn set_auth(&self, style: AuthStyle) {
        *self.state.auth.lock().unwrap() = style;
    }

    /// How many requests reached the mock.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// How many connections the mock accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request the mock saw, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The most recent request; panics when there was none.
    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream saw no request at all")
    }

    /// Answer the next request with this instead of the normal behaviour.
    pub fn push_response(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.state.canned.lock().unwrap().push_back(Canned {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        });
    }

    /// From now on, every chat completion answer (JSON, and every SSE event)
    /// carries the id [`tagged_id`]`(N)` instead of `chatcmpl-mock-0001`, N being
    /// the index in [`Mock::requests`] of the upstream request it answers, so a
    /// test can tell which upstream request (and key) every byte came from.
    pub fn tag_responses(&self) {
        self.state.tag.store(true, Ordering::SeqCst);
    }

    /// Wait this long before answering a request whose key is not accepted
    /// (a slow 401), so that concurrent requests all reach the mock with a
    /// key before the first rejection comes back.
    pub fn set_reject_delay(&self, delay: Duration) {
        *self.state.reject_delay.lock().unwrap() = delay;
    }

    /// Pause this long between SSE events.
    pub fn set_stream_delay(&self, delay: Duration) {
        *self.state.stream_delay.lock().unwrap() = delay;
    }

    /// From now on, every stream sends its first event and then waits until the
    /// returned [`Release`] is released (or dropped; at most 30 s).
    pub fn hold_streams(&self) -> Release {
        let (tx, rx) = watch::channel(false);
        *self.state.hold.lock().unwrap() = Some(rx);
        Release(tx)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// The non-streaming chat completion the mock answers for `model`.
pub fn chat_completion_body(model: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-mock-0001",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the mock upstream.", "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        "system_fingerprint": "fp_mock"
    })
    .to_string()
}

/// The content pieces of a mock stream, in order.
pub const STREAM_PIECES: [&str; 4] = ["Hello", " from", " the", " mock."];

/// The SSE events (each `data: ...\n\n`) the mock sends for a stream of `model`.
pub fn sse_events(model: &str, include_usage: bool) -> Vec<String> {
    let chunk = |choices: serde_json::Value| {
        let mut v = serde_json::json!({
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        format!("data: {v}\n\n")
    };
    let mut out = vec![chunk(serde_json::json!([{
        "index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null
    }]))];
    for p in STREAM_PIECES {
        out.push(chunk(serde_json::json!([{
            "index": 0, "delta": {"content": p}, "finish_reason": null
        }])));
    }
    out.push(chunk(serde_json::json!([{
        "index": 0, "delta": {}, "finish_reason": "stop"
    }])));
    if include_usage {
        let v = serde_json::json!({
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
        });
        out.push(format!("data: {v}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// The embeddings answer the mock gives.
pub fn embeddings_body() -> String {
    serde_json::json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 3, "total_tokens": 3}
    })
    .to_string()
}

/// The model list the mock gives.
pub fn models_body() -> String {
    serde_json::json!({
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"},
            {"id": "grok-3", "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"}
        ]
    })
    .to_string()
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("content type"),
    );
    r
}

fn openai_error(status: u16, message: &str, code: Option<&str>) -> Response<Body> {
    provider_answers::openai_style(status, message, code)
}

/// `None` when the key is accepted, else the refusal to send, in the words of
/// the provider the mock stands for.
fn presented_key(st: &State, headers: &HeaderMap) -> String {
    let style = *st.auth.lock().unwrap();
    let presented = match style {
        AuthStyle::Bearer => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string()),
        AuthStyle::XApiKey => headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        AuthStyle::ApiKey => headers
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    presented.unwrap_or_default()
}

/// Response headers to add, as (name, value).
type Headers = Vec<(String, String)>;

/// The window's count for the key of this request: `Err(headers)` when it
/// is over [`Mock::set_request_limit`], else the headers that say what is left.
fn count_request(st: &State, flavor: Flavor, key: &str) -> Result<Headers, Headers> {
    let Some((per_window, window)) = *st.request_limit.lock().unwrap() else {
        return Ok(Vec::new());
    };
    let (left, resets_in) = {
        let mut windows = st.windows.lock().unwrap();
        let entry = windows
            .entry(key.to_owned())
            .or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= window {
            *entry = (std::time::Instant::now(), 0);
        }
        let resets_in = window.saturating_sub(entry.0.elapsed());
        if entry.1 >= per_window {
            (None, resets_in)
        } else {
            entry.1 += 1;
            (Some(per_window - entry.1), resets_in)
        }
    };
    let headers =
        provider_answers::rate_limit_headers(flavor, per_window, left.unwrap_or(0), resets_in);
    left.map(|_| headers.clone()).ok_or(headers)
}

fn check_auth(st: &State, headers: &HeaderMap) -> Option<Response<Body>> {
    let flavor = *st.flavor.lock().unwrap();
    let key = presented_key(st, headers);
    let standing = if st.out_of_credit.lock().unwrap().contains(&key) {
        KeyStanding::OutOfCredit
    } else if st.rate_limited.lock().unwrap().contains(&key) {
        KeyStanding::RateLimited
    } else if !key.is_empty() && st.keys.lock().unwrap().contains(&key) {
        return None;
    } else {
        KeyStanding::Bad
    };
    Some(provider_answers::refusal(flavor, standing, &key))
}

fn set_headers(response: &mut Response<Body>, headers: &[(String, String)]) {
    for (name, value) in headers {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(Duration::from_secs(30), body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let index = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(Seen {
            method: parts.method.clone(),
            version: parts.version,
            uri: uri.clone(),
            authority: authority_of(&parts),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        seen.len() - 1
    };
    st.hits.fetch_add(1, Ordering::SeqCst);

    if let Some(c) = st.canned.lock().unwrap().pop_front() {
        let mut r = full(c.status, "application/json", c.body);
        for (k, v) in c.headers {
            r.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(&v).expect("header value"),
            );
        }
        return r;
    }
    let flavor = *st.flavor.lock().unwrap();
    if flavor == Flavor::Anthropic && !parts.headers.contains_key("anthropic-version") {
        return provider_answers::anthropic_version_missing();
    }
    // OpenRouter lists its models to anyone: no key needed (so verifying a key
    // with it would prove nothing).
    if flavor == Flavor::OpenRouter && parts.uri.path() == "/v1/models" {
        return full(200, "application/json", models_body());
    }
    if let Some(r) = check_auth(&st, &parts.headers) {
        let delay = *st.reject_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return r;
    }
    // Gemini's OpenAI-compatible API lives under its versioned base; the
    // others at `/v1/…`.
    let path = match flavor.base_path() {
        "" => parts.uri.path(),
        base => match parts.uri.path().strip_prefix(base) {
            Some(rest) if matches!(rest, "/chat/completions" | "/models" | "/embeddings") => {
                match rest {
                    "/chat/completions" => "/v1/chat/completions",
                    "/models" => "/v1/models",
                    _ => "/v1/embeddings",
                }
            }
            _ => return provider_answers::gemini_not_found(),
        },
    };
    // Mistral validates strictly: a field it does not know is a 422.
    if flavor == Flavor::Mistral && path == "/v1/chat/completions" {
        let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if sent.get("stream_options").is_some() {
            return provider_answers::mistral_extra_forbidden("stream_options");
        }
    }
    match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => {
            let key = presented_key(&st, &parts.headers);
            let limit_headers = match count_request(&st, flavor, &key) {
                Ok(headers) => headers,
                Err(headers) => {
                    st.limit_refusals.fetch_add(1, Ordering::SeqCst);
                    let delay = *st.reject_delay.lock().unwrap();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut refusal =
                        provider_answers::refusal(flavor, KeyStanding::RateLimited, &key);
                    set_headers(&mut refusal, &headers);
                    return refusal;
                }
            };
            let tag = st.tag.load(Ordering::SeqCst).then_some(index);
            let mut answer = chat(st.clone(), &body, tag);
            set_headers(&mut answer, &limit_headers);
            if answer.status() == StatusCode::OK {
                // The provider bills what it answered: the mock's usage
                // (11 in, 7 out; a stream 11 in, 4 out).
                let stream = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["stream"] == serde_json::Value::Bool(true));
                let key = parts
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_start_matches("Bearer ").to_owned())
                    .unwrap_or_default();
                let mut served = st.served.lock().unwrap();
                let entry = served.entry(key).or_default();
                *entry = (
                    entry.0 + 1,
                    entry.1 + 11,
                    entry.2 + if stream { 4 } else { 7 },
                );
            }
            answer
        }
        (&Method::GET, "/v1/models") => full(200, "application/json", models_body()),
        (&Method::GET, "/v1/key") if flavor == Flavor::OpenRouter => {
            provider_answers::openrouter_key_info()
        }
        (&Method::POST, "/v1/embeddings") => full(200, "application/json", embeddings_body()),
        _ => openai_error(404, &format!("Invalid URL ({} {path})", parts.method), None),
    }
}

fn chat(st: Arc<State>, body: &Bytes, tag: Option<usize>) -> Response<Body> {
    let tagged = |text: String| match tag {
        Some(index) => text.replace("chatcmpl-mock-0001", &tagged_id(index)),
        None => text,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return openai_error(
            400,
            "We could not parse the JSON body of your request.",
            None,
        );
    };
    let Some(model) = v["model"].as_str().map(str::to_string) else {
        return openai_error(400, "you must provide a model parameter", None);
    };
    if v["stream"] != serde_json::Value::Bool(true) {
        return full(
            200,
            "application/json",
            tagged(chat_completion_body(&model)),
        );
    }
    let include_usage = v["stream_options"]["include_usage"] == serde_json::Value::Bool(true);
    let events: Vec<String> = sse_events(&model, include_usage)
        .into_iter()
        .map(tagged)
        .collect();
    let delay = *st.stream_delay.lock().unwrap();
    let hold = st.hold.lock().unwrap().clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i == 1 {
                if let Some(mut h) = hold.clone() {
                    let _ = tokio::time::timeout(Duration::from_secs(30), h.wait_for(|v| *v)).await;
                }
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Bytes::from(e)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// `response` with its body encoded in `coding`: a whole body stays whole
/// (hyper sends it with a Content-Length); a stream is encoded event by event,
/// each flushed at once, as a compressing server streams SSE.
async fn compress(response: Response<Body>, coding: &'static str) -> Response<Body> {
    use std::io::Write;
    let (mut parts, mut body) = response.into_parts();
    parts
        .headers
        .insert("content-encoding", HeaderValue::from_static(coding));
    // The encoder writes into a sink shared with this function, which takes
    // what it wrote after each event.
    let sink = Arc::new(Mutex::new(Vec::<u8>::new()));
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut encoder: Box<dyn Write + Send> = match coding {
        "gzip" => Box::new(flate2::write::GzEncoder::new(
            Shared(sink.clone()),
            flate2::Compression::default(),
        )),
        _ => Box::new(brotli::CompressorWriter::new(
            Shared(sink.clone()),
            4096,
            5,
            22,
        )),
    };
    let take = move || std::mem::take(&mut *sink.lock().unwrap());
    if http_body::Body::size_hint(&body).exact().is_some() {
        let whole = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        encoder.write_all(&whole).unwrap();
        drop(encoder); // finishes the stream
        return Response::from_parts(parts, Full::new(Bytes::from(take())).boxed());
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            encoder.write_all(&data).unwrap();
            encoder.flush().unwrap();
            let out = take();
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
        drop(encoder);
        let _ = tx.send(Bytes::from(take())).await;
    });
    Response::from_parts(parts, ChannelBody(rx).boxed())
}

/// The completion id a tagged chat answer carries (see [`Mock::tag_responses`]):
/// `chatcmpl-mock-req-N`, N being the request's index in [`Mock::requests`].
pub fn tagged_id(index: usize) -> String {
    format!("chatcmpl-mock-req-{index}")
}

/// The mock itself behaves as the tests assume (so a keygate test failure is
/// never the mock's fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_behaves_like_openai() {
    use super::client::{next_data, open_h1, send_h1, send_h2, Req};

    let mock = Mock::start(&["sk-test-good"], AuthStyle::Bearer).await;
    let addr = mock.addr;
    let chat = |key: &str| {
        Req::post("/v1/chat/completions")
            .bearer(key)
            .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
    };
    let r = send_h1(addr, chat("sk-test-bad-0000wxyz")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert!(r.text().contains("sk-*************wxyz"), "{}", r.text());
    let r = send_h1(addr, chat("sk-test-good")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), chat_completion_body("gpt-4o"));
    let r = send_h2(addr, chat("sk-test-good")).await;
    assert_eq!(r.status, 200);
    let r = send_h1(addr, Req::get("/v1/nope").bearer("sk-test-good")).await;
    assert_eq!(r.status, 404);
    assert_eq!(mock.hits(), 4);
    assert_eq!(mock.last().uri, "/v1/nope");

    mock.set_auth(AuthStyle::XApiKey);
    let r = send_h1(
        addr,
        Req::get("/v1/models?x=1").header("x-api-key", "sk-test-good"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.last().uri, "/v1/models?x=1");
    mock.set_auth(AuthStyle::Bearer);

    mock.push_response(429, &[("retry-after", "3")], "{\"x\":1}");
    let r = send_h1(addr, chat("sk-test-good")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (429, "{\"x\":1}"));

    let release = mock.hold_streams();
    let stream = Req::post("/v1/chat/completions").bearer("sk-test-good").json(
        &serde_json::json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
    );
    let resp = open_h1(addr, stream).await;
    let mut body = resp.into_body();
    let first = next_data(&mut body, Duration::from_secs(5)).await.unwrap();
    let events = sse_events("m", true);
    assert_eq!(first, Bytes::from(events[0].clone()));
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        next_data(&mut body, Duration::from_secs(5)),
    )
    .await;
    assert!(
        early.is_err(),
        "a held stream sent more than its first event"
    );
    release.release();
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(c) = next_data(&mut body, Duration::from_secs(5)).await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert_eq!(rest, events.concat());
    assert!(rest.contains("\"choices\":[]"));
}
