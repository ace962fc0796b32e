//! A scriptable raw-TCP upstream that misbehaves on purpose, plus the small
//! client-side helpers the hardening tests share.
//!
//! [`BadUpstream`] speaks just enough HTTP/1.1 by hand to do what a well-behaved
//! server never would: accept and never answer, reset or close mid-stream
//! without the final chunk, stall mid-stream, pace a long stream, send less
//! than its `Content-Length`. Each request takes the next queued [`Script`]
//! (or [`Script::Ok`] when the queue is empty) and every answer closes its
//! connection, so one request is one connection. It records each request head,
//! how many connections are open, and how many the peer (keygate) closed
//! before the script was done.
//!
//! Helpers: [`hardened`] (the small timeouts of these tests), [`drain`] (read a
//! response body to its end *or* its failure), [`open_h2`] (an h2c request
//! whose body the caller reads), [`RawConn`] (a raw socket that tolerates
//! resets), [`parse_head`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::KeygateBuilder;

/// The `[server]` timeouts and limits of the hardening tests (all small).
pub fn hardened(b: KeygateBuilder) -> KeygateBuilder {
    b.server("header_timeout", "\"1s\"")
        .server("body_idle_timeout", "\"1s\"")
        .server("upstream_first_byte_timeout", "\"1s\"")
        .server("stream_idle_timeout", "\"1s\"")
        .server("shutdown_grace", "\"2s\"")
        .server("max_connections", "20")
}

/// How a streamed answer ends after its events.
#[derive(Clone, Debug)]
pub enum End {
    /// `data: [DONE]`, then the terminating zero-length chunk.
    Clean,
    /// RST (zero linger), no final chunk.
    Reset,
    /// FIN, no final chunk.
    Fin,
    /// Send nothing more for this long (connection open), then close with FIN.
    Stall(Duration),
}

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Script {
    /// 200 with a small chat completion (Content-Length), then close.
    Ok,
    /// 200 with a small chat completion, keep-alive, then FIN `after` later
    /// without reading another request (an upstream's idle timeout).
    OkThenClose { after: Duration },
    /// Read the request, never answer; keep the connection until the peer closes it.
    Silent,
    /// 200 `text/event-stream`, chunked: `events` SSE events `interval` apart
    /// (the first at once), then `end`.
    Sse {
        events: usize,
        interval: Duration,
        end: End,
    },
    /// 200 JSON declaring `Content-Length: declared` but sending `sent` bytes, then FIN.
    Truncated { declared: usize, sent: usize },
    /// 200 `text/event-stream`, chunked: `bytes` of ~1 KiB SSE events written
    /// as fast as the peer takes them (see [`BadUpstream::bulk_written`]).
    Bulk { bytes: usize },
}

/// The body of [`Script::Ok`].
pub const OK_BODY: &str = r#"{"id":"chatcmpl-bad-0001","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// The `n`th event of a [`Script::Sse`] stream.
pub fn sse_event(n: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bad-0001\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"piece-{n} \"}},\"finish_reason\":null}}]}}\n\n"
    )
}

#[derive(Default)]
struct State {
    scripts: Mutex<VecDeque<Script>>,
    heads: Mutex<Vec<String>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    peer_closed: AtomicUsize,
    bulk_written: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A port on 127.0.0.1 that refuses connections yet stays ours: the socket is
/// bound but not listening. A port merely closed again could be handed by the
/// kernel to anyone's next outgoing connection before the test listens on it.
pub struct RefusingPort {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind the refusing port");
        let addr = socket.local_addr().expect("refusing port addr");
        RefusingPort { socket, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running scriptable upstream on 127.0.0.1; every task stops when dropped.
pub struct BadUpstream {
    addr: SocketAddr,
    state: Arc<State>,
}

impl BadUpstream {
    /// Listen on `127.0.0.1:0`.
    pub async fn start() -> BadUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind bad upstream");
        BadUpstream::serve_on(listener)
    }

    /// Start listening on a port that refused connections until now.
    pub fn start_on(port: RefusingPort) -> BadUpstream {
        BadUpstream::serve_on(
            port.socket
                .listen(1024)
                .expect("listen on the reserved port"),
        )
    }

    fn serve_on(listener: TcpListener) -> BadUpstream {
        let addr = listener.local_addr().expect("bad upstream addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                let conn_state = st.clone();
                let task = tokio::spawn(async move {
                    serve(&conn_state, stream).await;
                    conn_state.open.fetch_sub(1, Ordering::SeqCst);
                });
                st.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        BadUpstream { addr, state }
    }

    /// Body bytes the [`Script::Bulk`] streams have written so far.
    pub fn bulk_written(&self) -> usize {
        self.state.bulk_written.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`, for a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue the script for the next request without one.
    pub fn push(&self, script: Script) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// Every request head received (request line and headers), oldest first.
    pub fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.state.heads.lock().unwrap().len()
    }

    /// How many connections were accepted.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections not yet finished.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Connections the peer closed before the script was done with them.
    pub fn peer_closed(&self) -> usize {
        self.state.peer_closed.load(Ordering::SeqCst)
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Reads one request (head, then a Content-Length or chunked body); `None` on
/// EOF, error or after 10 s.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 256 * 1024 {
            return None;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let content_length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let complete = |buf: &[u8]| match (content_length, chunked) {
        (_, true) => find(&buf[head_end..], b"0\r\n\r\n").is_some(),
        (Some(len), false) => buf.len() >= head_end + len,
        (None, false) => true,
    };
    while !complete(&buf) {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some(head)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn chunk(data: &str) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Waits until the peer closes its side (EOF or error), for at most `limit`;
/// true when it did.
async fn peer_closes(read: &mut tokio::net::tcp::OwnedReadHalf, limit: Duration) -> bool {
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The 200 of [`Script::Ok`], with `extra` header lines.
fn ok_response(extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{OK_BODY}",
        OK_BODY.len()
    )
}

async fn serve(st: &State, mut stream: TcpStream) {
    let Some(head) = read_request(&mut stream).await else {
        return;
    };
    st.heads.lock().unwrap().push(head);
    let script = st.scripts.lock().unwrap().pop_front().unwrap_or(Script::Ok);
    match script {
        Script::Ok => {
            let _ = stream
                .write_all(ok_response("connection: close\r\n").as_bytes())
                .await;
            let _ = stream.shutdown().await;
        }
        Script::OkThenClose { after } => {
            let _ = stream.write_all(ok_response("").as_bytes()).await;
            tokio::time::sleep(after).await;
            let _ = stream.shutdown().await;
        }
        Script::Silent => {
            let (mut read, _write) = stream.into_split();
            if peer_closes(&mut read, Duration::from_secs(60)).await {
                st.peer_closed.fetch_add(1, Ordering::SeqCst);
            }
        }
        Script::Truncated { declared, sent } => {
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n{}",
                "x".repeat(sent)
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Script::Bulk { bytes } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let event = format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
                "x".repeat(990)
            );
            let piece = chunk(&event.repeat(64));
            let mut sent = 0;
            while sent < bytes {
                if stream.write_all(&piece).await.is_err() {
                    return;
                }
                sent += piece.len();
                st.bulk_written.fetch_add(piece.len(), Ordering::SeqCst);
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
            let _ = stream.shutdown().await;
        }
        Script::Sse {
            events,
            interval,
            end,
        } => {
            let (mut read, mut write) = stream.into_split();
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if write.write_all(head.as_bytes()).await.is_err() {
                st.peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            for n in 0..events {
                if n > 0 && peer_closes(&mut read, interval).await {
                    st.peer_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if write.write_all(&chunk(&sse_event(n))).await.is_err() {
                    st.peer_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            match end {
                End::Clean => {
                    if peer_closes(&mut read, interval).await {
                        st.peer_closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let mut tail = chunk("data: [DONE]\n\n");
                    tail.extend_from_slice(b"0\r\n\r\n");
                    let _ = write.write_all(&tail).await;
                    let _ = write.shutdown().await;
                }
                End::Reset => {
                    if let Ok(stream) = read.reunite(write) {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                }
                End::Fin => {
                    let _ = write.shutdown().await;
                }
                End::Stall(d) => {
                    if peer_closes(&mut read, d).await {
                        st.peer_closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let _ = write.shutdown().await;
                }
            }
        }
    }
}

/// How reading a response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body ended properly (final chunk / END_STREAM / full length).
    Clean,
    /// The body failed: connection error, reset, incomplete message.
    Broken(String),
    /// No frame for the per-frame wait.
    Stalled,
}

/// Reads a body until it ends, fails, or no frame arrives for `frame_wait`.
/// Returns the text read and how it ended.
pub async fn drain(body: &mut Incoming, frame_wait: Duration) -> (String, BodyEnd) {
    let mut text = String::new();
    loop {
        match tokio::time::timeout(frame_wait, body.frame()).await {
            Err(_) => return (text, BodyEnd::Stalled),
            Ok(None) => return (text, BodyEnd::Clean),
            Ok(Some(Err(e))) => return (text, BodyEnd::Broken(format!("{e:?}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    }
}

/// Reads until `needle` shows up in the body (or it ends/fails/stalls for 5 s).
pub async fn read_until(body: &mut Incoming, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            other => panic!("body ended before {needle:?} arrived ({other:?}); got {text:?}"),
        }
    }
    text
}

/// Sends `POST path` with a JSON body and bearer key over h2c and returns as
/// soon as the response head arrives.
pub async fn open_h2(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    json: &serde_json::Value,
) -> Response<Incoming> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.expect("connect (h2c)");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post(format!("http://{addr}{path}"))
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_string())))
            .expect("build h2 request");
        sender.send_request(req).await.expect("h2c request")
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("no h2 response head within 15 s")
}

/// How a raw read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// The server closed (FIN).
    Eof,
    /// The connection was reset / failed.
    Reset,
    /// Still open when the wait ran out.
    Open,
}

/// A raw client connection that tolerates the server closing or resetting it
/// at any point (writes that fail are reported, not panicked on).
pub struct RawConn {
    pub stream: TcpStream,
    pub got: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawConn {
            stream,
            got: Vec::new(),
        }
    }

    /// Writes all of `bytes`; false when the connection failed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads until the server closes, resets, or `wait` passes; keeps the bytes.
    pub async fn read_to_close(&mut self, wait: Duration) -> RawEnd {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 16384];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return RawEnd::Open,
                Ok(Ok(0)) => return RawEnd::Eof,
                Ok(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return RawEnd::Reset,
            }
        }
    }

    /// Reads until one whole response (head + Content-Length body, or a
    /// chunked body's end) is in, or the connection ends, or `wait` passes.
    pub async fn read_response(&mut self, wait: Duration) -> RawEnd {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 16384];
        loop {
            if response_complete(&self.got) {
                return RawEnd::Open;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return RawEnd::Open,
                Ok(Ok(0)) => return RawEnd::Eof,
                Ok(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return RawEnd::Reset,
            }
        }
    }

    /// Everything read so far as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }

    /// The status of the first response read, if any.
    pub fn status(&self) -> Option<u16> {
        parse_head(&self.got).map(|h| h.status)
    }

    /// How many response status lines were read.
    pub fn responses(&self) -> usize {
        let text = self.text();
        let at_start = usize::from(text.starts_with("HTTP/1."));
        at_start + text.matches("\r\nHTTP/1.").count()
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Bytes after the head.
    pub body: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body (up to its Content-Length when there is one) as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        let len = self
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(self.body.len())
            .min(self.body.len());
        serde_json::from_slice(&self.body[..len]).ok()
    }
}

/// Parses the first response head in `bytes`.
pub fn parse_head(bytes: &[u8]) -> Option<Head> {
    let end = find(bytes, b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    })
}

fn response_complete(bytes: &[u8]) -> bool {
    let Some(head) = parse_head(bytes) else {
        return false;
    };
    if let Some(len) = head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        return head.body.len() >= len;
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        return find(&head.body, b"0\r\n\r\n").is_some();
    }
    false
}

/// Milliseconds since `t`, for messages.
pub fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}
