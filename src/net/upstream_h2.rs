//! HTTP/2 to an upstream: streams multiplexed on a few connections per
//! origin, each connection carrying at most what the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows (another is opened when all are
//! full), each stream flow-controlled on its own (a slow client stops
//! releasing its own stream's window, never the others'), idle connections
//! pinged and closed after [`IDLE_TIMEOUT`].
//!
//! Driven through the `h2` crate — the HTTP/2 implementation inside hyper —
//! rather than hyper's own h2 client, which queues a request behind a full
//! connection instead of saying so, and hides which streams a GOAWAY left
//! unprocessed: both are what this room must act on.
//!
//! A request the server did not process (refused, or above a GOAWAY's last
//! stream id) is the caller's to send again ([`H2SendError::unprocessed`]);
//! everything else fails as it would over HTTP/1.1.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{header, HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net::outbound_body::{OutboundBody, StreamingBodyError};

/// Idle connections older than this are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an idle connection is pinged, and how long a pong may take.
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(20);
/// Streams per connection keygate opens at most, whatever the server allows.
const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// Each stream's receive window: what one stalled client can leave
/// unread upstream before that stream (and only it) pauses.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's window: every stream's window at once, so stalled
/// streams can never starve the others of connection-level credit.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS_PER_CONNECTION as u32;

/// Why an HTTP/2 exchange got no response.
#[derive(Debug, thiserror::Error)]
pub enum H2SendError {
    /// The connection or stream failed.
    #[error(transparent)]
    Protocol(#[from] h2::Error),
    /// The request body failed while it was being sent.
    #[error(transparent)]
    Body(#[from] StreamingBodyError),
}

impl H2SendError {
    /// True when the server did not process the request (REFUSED_STREAM, or
    /// a stream above a GOAWAY's last stream id, or a connection that had
    /// already gone away): it may be sent again on another connection.
    pub fn unprocessed(&self) -> bool {
        match self {
            H2SendError::Protocol(error) => {
                (error.is_go_away() && error.is_remote())
                    || (error.is_reset() && error.reason() == Some(Reason::REFUSED_STREAM))
            }
            H2SendError::Body(_) => false,
        }
    }
}

/// One HTTP/2 connection to an upstream; its frames are driven by a task of
/// its own (many requests' tasks share it).
pub struct H2Conn {
    sender: SendRequest<Bytes>,
    /// Streams keygate has open on it (leased, not yet released).
    in_flight: AtomicUsize,
    /// Set once the connection failed, went away or was closed for idleness
    /// (shared with the task driving it).
    closed: Arc<AtomicBool>,
    /// When the last stream ended (ms since `born`), for the idle close.
    idle_since_ms: AtomicU64,
    born: Instant,
    driver: tokio::task::AbortHandle,
}

impl H2Conn {
    /// Speaks HTTP/2 on `io` (ALPN `h2`, or prior knowledge): sends the
    /// preface, then waits one PING round trip so the server's SETTINGS
    /// (its stream limit above all) are in force before any stream is opened.
    pub async fn handshake<T>(io: T) -> Result<Arc<H2Conn>, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_reset_streams(64)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let mut ping = connection.ping_pong();
        let closed = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn({
            let closed = closed.clone();
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!("upstream h2 connection ended: {error}");
                }
                closed.store(true, Ordering::Release);
            }
        });
        if let Some(ping) = ping.as_mut() {
            ping.ping(h2::Ping::opaque()).await?;
        }
        let conn = Arc::new(H2Conn {
            sender,
            in_flight: AtomicUsize::new(0),
            closed,
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
            driver: driver.abort_handle(),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&conn), ping));
        Ok(conn)
    }

    /// True while new streams may be opened on it.
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// The streams this connection may carry at once: the server's limit,
    /// capped by keygate's.
    fn capacity(&self) -> usize {
        self.sender
            .current_max_send_streams()
            .min(MAX_STREAMS_PER_CONNECTION)
    }

    /// Takes one stream slot if one is free.
    fn try_lease(self: &Arc<Self>) -> Option<StreamLease> {
        if !self.is_open() {
            return None;
        }
        let capacity = self.capacity();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamLease(self.clone()))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.driver.abort();
    }
}

/// Pings an idle connection every [`PING_EVERY`]; closes it when a pong
/// does not come back in time, or when it has been idle for [`IDLE_TIMEOUT`].
async fn keep_alive(conn: std::sync::Weak<H2Conn>, mut ping: Option<h2::PingPong>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(conn) = conn.upgrade() else { return };
        if !conn.is_open() {
            return;
        }
        if conn.in_flight.load(Ordering::Acquire) > 0 {
            continue;
        }
        let idle_for = (conn.born.elapsed().as_millis() as u64)
            .saturating_sub(conn.idle_since_ms.load(Ordering::Acquire));
        if Duration::from_millis(idle_for) >= IDLE_TIMEOUT {
            conn.close();
            return;
        }
        if let Some(ping) = ping.as_mut() {
            let answered = tokio::time::timeout(PONG_WITHIN, ping.ping(h2::Ping::opaque())).await;
            if !matches!(answered, Ok(Ok(_))) {
                tracing::debug!("upstream h2 connection did not answer a ping; closing it");
                conn.close();
                return;
            }
        }
    }
}

/// One open stream's claim on its connection's capacity; released on drop.
pub struct StreamLease(Arc<H2Conn>);

impl Drop for StreamLease {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            conn.idle_since_ms
                .store(conn.born.elapsed().as_millis() as u64, Ordering::Release);
        }
    }
}

/// One origin's HTTP/2 connections, read without a lock, replaced whole
/// when one is added or dropped.
#[derive(Default)]
pub struct H2Connections {
    conns: ArcSwap<Vec<Arc<H2Conn>>>,
    /// One connect at a time per origin: a burst waits for the connection
    /// being opened instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Connections {
    /// A stream slot on an open connection with room, if there is one.
    pub fn lease(&self) -> Option<StreamLease> {
        let conns = self.conns.load();
        let lease = conns.iter().find_map(H2Conn::try_lease);
        if lease.is_none() && conns.iter().any(|c| !c.is_open()) {
            self.conns.rcu(|conns| {
                conns
                    .iter()
                    .filter(|c| c.is_open())
                    .cloned()
                    .collect::<Vec<_>>()
            });
        }
        lease
    }

    /// Serialises connecting: the guard is held while one connection opens.
    pub async fn connecting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.connecting.lock().await
    }

    /// Adds a new connection and leases a stream on it.
    pub fn add(&self, conn: Arc<H2Conn>) -> Option<StreamLease> {
        let lease = conn.try_lease();
        self.conns.rcu(|conns| {
            let mut conns: Vec<_> = conns.iter().filter(|c| c.is_open()).cloned().collect();
            conns.push(conn.clone());
            conns
        });
        lease
    }

    /// Open connections (for tests and the bench's descriptor count).
    pub fn open(&self) -> usize {
        self.conns.load().iter().filter(|c| c.is_open()).count()
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2), dropped from what is sent:
/// hop-by-hop on HTTP/1.1, and `Host`, which `:authority` replaces.
fn drop_connection_headers(headers: &mut HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// Sends `request` (absolute URI) on the leased stream and drives its body
/// until the response head is in; the rest of a body still being sent then
/// goes on in a task of its own.
pub async fn send(
    lease: StreamLease,
    request: Request<OutboundBody>,
) -> Result<Response<H2Body>, H2SendError> {
    let (mut parts, body) = request.into_parts();
    drop_connection_headers(&mut parts.headers);
    parts.version = http::Version::HTTP_2;
    let head = Request::from_parts(parts, ());
    let conn = &lease.0;
    // A connection that cannot open a stream (gone away, failed) takes no more.
    let gone = |error: h2::Error| {
        conn.closed.store(true, Ordering::Release);
        H2SendError::from(error)
    };
    let mut sender = conn.sender.clone().ready().await.map_err(gone)?;
    let end_of_stream = body.is_end_stream();
    let (response, send_stream) = sender.send_request(head, end_of_stream).map_err(gone)?;
    let mut response = std::pin::pin!(response);
    let mut pipe = (!end_of_stream).then(|| Box::pin(PipeBody::new(body, send_stream)));
    let head = std::future::poll_fn(|cx| {
        if let Some(running) = pipe.as_mut() {
            match running.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => pipe = None,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        response.as_mut().poll(cx).map_err(H2SendError::from)
    })
    .await?;
    if let Some(rest) = pipe {
        tokio::spawn(async move {
            if let Err(error) = rest.await {
                tracing::debug!("upstream h2 request body stopped after the answer: {error}");
            }
        });
    }
    Ok(head.map(|recv| H2Body {
        recv,
        _lease: lease,
    }))
}

/// Feeds a request body into its stream as the stream's window allows.
struct PipeBody {
    body: OutboundBody,
    stream: SendStream<Bytes>,
    /// Data waiting for window.
    pending: Option<Bytes>,
}

impl PipeBody {
    fn new(body: OutboundBody, stream: SendStream<Bytes>) -> Self {
        PipeBody {
            body,
            stream,
            pending: None,
        }
    }
}

impl Future for PipeBody {
    type Output = Result<(), H2SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.pending.as_mut() {
                this.stream.reserve_capacity(data.len());
                match this.stream.poll_capacity(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error.into())),
                    Poll::Ready(Some(Ok(granted))) => {
                        let chunk = data.split_to(granted.min(data.len()));
                        if data.is_empty() {
                            this.pending = None;
                        }
                        this.stream.send_data(chunk, false)?;
                    }
                }
                continue;
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(error.into()));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => this.pending = Some(data),
                    Ok(_) => {}
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
            }
        }
    }
}

/// An HTTP/2 response body. Each frame's window is handed back to the
/// server as the frame is taken, so a client that stops reading stops only
/// its own stream.
pub struct H2Body {
    recv: RecvStream,
    _lease: StreamLease,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        match this.recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = this.recv.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => match this.recv.poll_trailers(cx) {
                Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::HOST, "api.openai.com".parse().unwrap());
        headers.insert(header::TE, "gzip".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        drop_connection_headers(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        let mut trailers = HeaderMap::new();
        trailers.insert(header::TE, "trailers".parse().unwrap());
        drop_connection_headers(&mut trailers);
        assert_eq!(trailers.len(), 1, "te: trailers is allowed");
    }
}
