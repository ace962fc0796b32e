//! A minimal HTTP client for talking to keygate the way an SDK would: HTTP/1.1
//! or h2c (HTTP/2 prior knowledge), one fresh connection per request, every
//! wait bounded. Also a raw-socket sender for requests hyper would not write.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ChannelBody;

/// How long any single request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

enum ReqBody {
    Empty,
    Full(Bytes),
    Chunked(Vec<Bytes>),
}

/// A request to send to keygate's client or admin listener.
pub struct Req {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: ReqBody,
}

impl Req {
    pub fn new(method: Method, path: &str) -> Req {
        Req {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: ReqBody::Empty,
        }
    }

    pub fn get(path: &str) -> Req {
        Req::new(Method::GET, path)
    }

    pub fn post(path: &str) -> Req {
        Req::new(Method::POST, path)
    }

    /// Add a header (repeatable; sent exactly as given).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `Authorization: Bearer <key>`, as the OpenAI SDK sends it.
    pub fn bearer(self, key: &str) -> Req {
        self.header("authorization", &format!("Bearer {key}"))
    }

    /// A JSON body with its content type (sent with Content-Length).
    pub fn json(mut self, v: &serde_json::Value) -> Req {
        self.headers
            .push(("content-type".to_string(), "application/json".to_string()));
        self.body = ReqBody::Full(Bytes::from(v.to_string()));
        self
    }

    /// A raw body sent with Content-Length.
    pub fn body(mut self, b: impl Into<Bytes>) -> Req {
        self.body = ReqBody::Full(b.into());
        self
    }

    /// A body sent with `Transfer-Encoding: chunked`, in these pieces.
    pub fn chunked(mut self, parts: Vec<Bytes>) -> Req {
        self.body = ReqBody::Chunked(parts);
        self
    }

    /// `METHOD path`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn build(self, uri: String, host: &str) -> Request<BoxBody<Bytes, Infallible>> {
        let mut b = Request::builder().method(self.method).uri(uri);
        let has_host = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if !has_host {
            b = b.header("host", host);
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let body = match self.body {
            ReqBody::Empty => Full::new(Bytes::new()).boxed(),
            ReqBody::Full(bytes) => Full::new(bytes).boxed(),
            ReqBody::Chunked(parts) => {
                let (tx, rx) = mpsc::channel(parts.len().max(1));
                for p in parts {
                    tx.try_send(p).expect("queue body part");
                }
                ChannelBody(rx).boxed()
            }
        };
        b.body(body).expect("build request")
    }
}

/// A whole response, read to its end.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Assert a keygate error: this status, this `error.code`, the OpenAI error
    /// shape (`message`, `type`, `code` all strings).
    pub fn assert_keygate_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {code}, got {} with body {}",
            self.status,
            self.text()
        );
        let v = self.json();
        let err = &v["error"];
        assert_eq!(
            err["code"].as_str(),
            Some(code),
            "wrong error code in {}",
            self.text()
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.text()
        );
        assert!(
            err["type"].as_str().is_some_and(|t| !t.is_empty()),
            "error without a type: {}",
            self.text()
        );
    }

    /// Everything the client saw, for leak checks.
    pub fn everything(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&self.text());
        s
    }
}

/// Send over HTTP/1.1 and read the whole response.
pub async fn send_h1(addr: SocketAddr, req: Req) -> Resp {
    let resp = open_h1(addr, req).await;
    read_whole(resp).await
}

/// Send over h2c (HTTP/2 with prior knowledge) and read the whole response.
pub async fn send_h2(addr: SocketAddr, req: Req) -> Resp {
    let fut = async {
        let stream = TcpStream::connect(addr).await.expect("connect (h2c)");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake with keygate");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri = format!("http://{addr}{}", req.path);
        let req = req.build(uri, &addr.to_string());
        sender.send_request(req).await.expect("h2c request")
    };
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("h2c request timed out");
    read_whole(resp).await
}

/// Send over HTTP/1.1 and return as soon as the response head arrives, so the
/// caller can read the body frame by frame.
pub async fn open_h1(addr: SocketAddr, req: Req) -> Response<Incoming> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = req.path.clone();
        let req = req.build(path, &addr.to_string());
        sender.send_request(req).await.expect("http/1.1 request")
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("no response head within the timeout")
}

/// Read a response body to its end (bounded).
pub async fn read_whole(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
        .await
        .expect("response body did not end within the timeout")
        .expect("response body failed")
        .to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The next data bytes of a body, or `None` at its end; panics after `wait`.
pub async fn next_data(body: &mut Incoming, wait: Duration) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(wait, body.frame())
            .await
            .expect("no body bytes arrived in time")?;
        let frame = frame.expect("body error");
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Some(data);
            }
        }
    }
}

/// Read a response body to its end or its error (bounded); the bytes and
/// whether it ended cleanly.
pub async fn read_body(resp: Response<Incoming>) -> (Vec<u8>, bool) {
    let mut body = resp.into_body();
    let mut got = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), body.frame())
            .await
            .expect("the response body stalled for 15 s");
        match frame {
            None => return (got, true),
            Some(Err(_)) => return (got, false),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
        }
    }
}

/// Write `raw` bytes on a fresh connection and read until the server closes it
/// (send `Connection: close`). Returns the status code and the whole response text.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw).await.expect("write raw request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read raw response");
        out
    };
    let out = tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("raw request: no complete response within the timeout");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}
