//! The connections kept per origin ([`OriginPool`]): idle HTTP/1.1
//! connections, checked before reuse and closed after [`IDLE_TIMEOUT`],
//! beside the origin's HTTP/2 ones; and the HTTP/1.1 exchange on one
//! [`Connection`], which the request's own task drives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::config::UpstreamHttp;
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream_h2::H2Connections;

/// What an upstream connection runs over: TCP, with or without TLS.
pub(super) type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Idle connections older than this are closed, not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin; past it a finished connection is closed.
const MAX_IDLE_PER_ORIGIN: usize = 512;

/// Sends `request` on `conn`, driving the connection until the response
/// head is in. The connection comes back unless it closed on the way.
pub(super) async fn exchange(
    mut conn: Box<Connection>,
    request: Request<OutboundBody>,
) -> Result<
    (Response<Incoming>, Option<Box<Connection>>),
    hyper::client::conn::TrySendError<Request<OutboundBody>>,
> {
    let mut response = std::pin::pin!(conn.sender.try_send_request(request));
    let mut open = true;
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = response.as_mut().poll(cx) {
            return Poll::Ready(response);
        }
        if open && Pin::new(&mut conn.driver).poll(cx).is_ready() {
            open = false;
            return response.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await?;
    Ok((response, open.then_some(conn)))
}

/// URIs on an HTTP/1 connection are sent as path and query only.
pub(super) fn to_origin_form(uri: &mut Uri) {
    // Moved, not cloned: the path's bytes are shared, not copied.
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = None;
    parts.authority = None;
    if let Ok(origin_form) = Uri::from_parts(parts) {
        *uri = origin_form;
    }
}

/// Back from [`to_origin_form`], for a request sent again (the next
/// connection may be HTTP/2, which carries the origin in the request).
pub(super) fn to_absolute_form(uri: &mut Uri, pool: &OriginPool) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(pool.scheme.clone());
    parts.authority = Some(pool.authority.clone());
    if let Ok(absolute) = Uri::from_parts(parts) {
        *uri = absolute;
    }
}

/// One HTTP/1.1 connection: the handle requests are sent on, and the
/// connection state machine, polled by whoever holds it. Always boxed: it is
/// large and changes hands (pool, request, body) on every request.
pub(super) struct Connection {
    pub(super) sender: http1::SendRequest<OutboundBody>,
    pub(super) driver: http1::Connection<Io, OutboundBody>,
}

impl Connection {
    /// Lets the connection notice what arrived while nobody polled it (the
    /// upstream's close, the end of the last exchange); `None` once closed
    /// or not ready for another request. One poll is enough: hyper finishes
    /// the exchange and asks for the next request within it. The next holder
    /// polls it with its own waker.
    fn poll_idle(mut self: Box<Self>) -> Option<Box<Connection>> {
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.driver).poll(&mut cx).is_ready() || !self.sender.is_ready() {
            return None;
        }
        Some(self)
    }
}

/// The connections to one origin: idle HTTP/1.1 ones, and HTTP/2 ones.
pub(super) struct OriginPool {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) mode: UpstreamHttp,
    /// `auto`: the last connection opened agreed to HTTP/2.
    pub(super) speaks_h2: std::sync::atomic::AtomicBool,
    pub(super) h2: H2Connections,
    /// `Host` for every request to this origin (default ports left out).
    pub(super) host: HeaderValue,
    pub(super) connect_uri: Uri,
    idle: ArrayQueue<Idle>,
}

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

impl Idle {
    /// `None` when idle too long or closed by the upstream meanwhile.
    fn still_usable(self) -> Option<Idle> {
        if self.since.elapsed() >= IDLE_TIMEOUT {
            return None;
        }
        let since = self.since;
        self.conn.poll_idle().map(|conn| Idle { conn, since })
    }
}

impl OriginPool {
    pub(super) fn new(
        scheme: Scheme,
        authority: Authority,
        mode: UpstreamHttp,
    ) -> Option<OriginPool> {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str(),
            _ => authority.host(),
        };
        let host = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes())).ok()?;
        let connect_uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        Some(OriginPool {
            scheme,
            authority,
            mode,
            speaks_h2: std::sync::atomic::AtomicBool::new(false),
            h2: H2Connections::default(),
            host,
            connect_uri,
            idle: ArrayQueue::new(MAX_IDLE_PER_ORIGIN),
        })
    }

    pub(super) fn uses_h2(&self) -> bool {
        match self.mode {
            UpstreamHttp::H1 => false,
            UpstreamHttp::H2 => true,
            UpstreamHttp::Auto => self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub(super) fn checkout(&self) -> Option<Box<Connection>> {
        while let Some(idle) = self.idle.pop() {
            if let Some(idle) = idle.still_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    pub(super) fn put(&self, conn: Box<Connection>) {
        if let Some(conn) = conn.poll_idle() {
            // Full: the connection is dropped, which closes it.
            let _ = self.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle too long or closed by the upstream.
    fn close_expired(&self) {
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { return };
            if let Some(idle) = idle.still_usable() {
                let _ = self.idle.push(idle);
            }
        }
    }
}

/// Sweeps one origin's idle connections until the pool is gone.
pub(super) async fn close_expired(pool: Weak<OriginPool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.close_expired(),
            None => return,
        }
    }
}
