//! The small server under the provider mocks of [`super::anthropic`] and
//! [`super::responses`]: binds `127.0.0.1:0`, serves HTTP/1.1 and h2c, reads
//! each request whole, records it as a [`Seen`] and hands it to the mock's
//! answer function. Also the gate that holds a mock's streams open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::mock::Seen;
use super::ChannelBody;

/// A mock's response body.
pub type Body = BoxBody<Bytes, Infallible>;

/// A running recording server; stops accepting when dropped.
pub struct Recording {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Recording {
    /// Serve every request with `answer`, after recording it.
    pub async fn start<F, Fut>(answer: F) -> Recording
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let recorded = seen.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, recorded) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (answer, recorded) = (answer.clone(), recorded.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body =
                                match tokio::time::timeout(Duration::from_secs(30), body.collect())
                                    .await
                                {
                                    Ok(Ok(b)) => b.to_bytes(),
                                    _ => Bytes::new(),
                                };
                            let seen = Seen {
                                method: parts.method.clone(),
                                version: parts.version,
                                uri: parts.uri.path_and_query().map_or_else(
                                    || parts.uri.path().to_string(),
                                    |p| p.to_string(),
                                ),
                                authority: super::mock::authority_of(&parts),
                                headers: parts.headers,
                                body,
                            };
                            recorded.lock().unwrap().push(seen.clone());
                            Ok::<_, Infallible>(answer(seen).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recording { addr, seen, accept }
    }

    /// `http://127.0.0.1:PORT`, for a provider's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request the server saw, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The most recent request; panics when there was none.
    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the mock saw no request at all")
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A whole response with these headers.
pub fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in headers {
        r.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    r
}

/// A `text/event-stream` response sending `events` one frame each; after
/// the first it waits for `gate` (see [`Gate`]).
pub fn event_stream(
    headers: &[(&str, &str)],
    events: Vec<String>,
    gate: watch::Receiver<bool>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut gate = gate;
        for (i, event) in events.into_iter().enumerate() {
            if i == 1 {
                let _ = tokio::time::timeout(Duration::from_secs(30), gate.wait_for(|open| *open))
                    .await;
            }
            if tx.send(Bytes::from(event)).await.is_err() {
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
    for (name, value) in headers {
        r.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    r
}

/// Holds a mock's streams after their first event until opened: a test can
/// then see that the first event reached the client while the upstream still
/// held the rest (no buffering on the way). Open unless [`Gate::close`]d.
pub struct Gate(watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Self {
        Gate(watch::channel(true).0)
    }
}

impl Gate {
    /// Streams started from now on wait after their first event.
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    /// Let every held stream go on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// What a new stream waits on.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}
