//! A byte-level scriptable upstream: a tiny raw-TCP HTTP/1.1 server on
//! `127.0.0.1:0` that records each request (head and de-chunked body) and
//! answers it by playing a [`Script`]: exact bytes, written in the pieces the
//! test chose, with the pauses it chose, then the connection is closed (or cut
//! mid-body). hyper would re-frame and coalesce what a test writes; this does
//! not, so the tests see what keygate does with 1-byte reads, split UTF-8,
//! CRLF, close-delimited bodies and upstreams that hang up mid-stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the raw upstream read it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// `POST /v1/chat/completions HTTP/1.1`.
    pub request_line: String,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    pub body: Bytes,
}

impl RawRequest {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw upstream: request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Request line, headers and body as one text, for "never contains" checks.
    pub fn everything(&self) -> String {
        let mut s = format!("{}\n", self.request_line);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// One thing the upstream does on the connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// One `write_all` of exactly these bytes (with TCP_NODELAY, so one segment).
    Write(Bytes),
    /// Sleep this long.
    Pause(Duration),
    /// Stop here and close the connection at once (whatever the framing promised).
    Cut,
}

/// What the upstream answers one request with. When the steps run out the
/// connection is closed.
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub steps: Vec<Step>,
}

/// The head of a `200` streaming answer with a chunked body.
pub const SSE_CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// The head of a `200` streaming answer whose body ends when the connection closes.
pub const SSE_CLOSE_DELIMITED_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";

/// One HTTP/1.1 chunk carrying `data`.
pub fn chunk(data: &[u8]) -> Bytes {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Write these bytes in one piece.
    pub fn write(mut self, bytes: impl AsRef<[u8]>) -> Script {
        self.steps
            .push(Step::Write(Bytes::copy_from_slice(bytes.as_ref())));
        self
    }

    /// Pause.
    pub fn pause(mut self, d: Duration) -> Script {
        self.steps.push(Step::Pause(d));
        self
    }

    /// Write `bytes` one byte per write, pausing `gap` after each.
    pub fn bytewise(mut self, bytes: &[u8], gap: Duration) -> Script {
        for b in bytes {
            self.steps.push(Step::Write(Bytes::copy_from_slice(&[*b])));
            if !gap.is_zero() {
                self.steps.push(Step::Pause(gap));
            }
        }
        self
    }

    /// Write `data` as one HTTP/1.1 chunk, in one write.
    pub fn chunk(self, data: impl AsRef<[u8]>) -> Script {
        let c = chunk(data.as_ref());
        self.write(c)
    }

    /// The last chunk of a chunked body.
    pub fn end_chunks(self) -> Script {
        self.write(b"0\r\n\r\n")
    }

    /// Close the connection now.
    pub fn cut(mut self) -> Script {
        self.steps.push(Step::Cut);
        self
    }

    /// A whole JSON answer with Content-Length, in one write.
    pub fn json(status: u16, body: &str) -> Script {
        Script::new().write(format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    }
}

type Responder = dyn Fn(&RawRequest) -> Script + Send + Sync;

/// A running raw upstream; stops accepting when dropped.
pub struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Start; every request is answered with `respond(&request)`.
    pub async fn start(respond: impl Fn(&RawRequest) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("raw upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let st = seen.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, respond) = (st.clone(), respond.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(60),
                        serve_one(stream, st, respond),
                    )
                    .await;
                });
            }
        });
        RawUpstream { addr, seen, accept }
    }

    /// `http://127.0.0.1:PORT`, for a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Read one request, record it, play its script, close.
async fn serve_one(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    respond: Arc<Responder>,
) {
    let _ = stream.set_nodelay(true);
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let script = respond(&request);
    seen.lock().unwrap().push(request);
    for step in script.steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            Step::Pause(d) => tokio::time::sleep(d).await,
            Step::Cut => break,
        }
    }
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        // Read until the last chunk, then de-chunk.
        loop {
            if let Some(body) = dechunk(&rest) {
                break body;
            }
            let n = stream.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
    } else {
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < len {
            let n = stream.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    };
    Some(RawRequest {
        request_line,
        headers,
        body: Bytes::from(body),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of a complete chunked encoding, or `None` while incomplete.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return find(raw, b"\r\n").map(|_| out);
        }
        if raw.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[test]
fn dechunk_needs_the_last_chunk() {
    assert_eq!(dechunk(b"3\r\nabc\r\n"), None);
    assert_eq!(
        dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
        Some(&b"abcde"[..])
    );
    assert_eq!(
        chunk(b"hello world, 17 b"),
        Bytes::from_static(b"11\r\nhello world, 17 b\r\n")
    );
}
