//! The upstream client: per provider origin, a pool of HTTP/1.1 keep-alive
//! connections, each driven by the task that is using it — or, where the
//! origin speaks HTTP/2 (`[providers.NAME] http`, ALPN), streams on a few
//! shared connections ([`super::upstream_h2`]).
//!
//! hyper's pooled client runs every connection as a task of its own and hands
//! the response over one body frame per wake-up, so an SSE answer read in one
//! `recv` left keygate as one `writev` per event, and every request paid two
//! hops between tasks. Here the request's own task polls the connection: the
//! frames one read brought in are decoded in the same poll and leave the
//! client socket together, each still its own chunk, and nothing waits for
//! more data before it is forwarded.
//!
//! `http = "h1"` speaks HTTP/1.1 only, as nginx does (TLS by rustls, ALPN
//! `http/1.1`); `"auto"` (the default) offers `h2` too over TLS and keeps to
//! HTTP/1.1 over plain `http://`; `"h2"` requires HTTP/2 (prior knowledge
//! over `http://`). An idle connection is checked before reuse; a request that
//! never left a stale connection — or that an HTTP/2 server did not process —
//! is sent again on another one. Idle connections are closed after 90 s.
//!
//! Over 400 lines: the pool and the body that drives its connection inline
//! share the connection's life (release on end, drop on failure); apart,
//! each would need the other's internals.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::config::{Config, UpstreamHttp};
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream_h2::{self, H2Body, H2Conn, H2Connections, H2SendError, StreamLease};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections older than this are closed, not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin; past it a finished connection is closed.
const MAX_IDLE_PER_ORIGIN: usize = 512;

/// Requests an HTTP/2 server left unprocessed (GOAWAY, REFUSED_STREAM)
/// are sent again at most this many times.
const MAX_UNPROCESSED_RETRIES: u32 = 3;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TLS setup failed.
    #[error("cannot set up TLS for upstream connections: {0}")]
    Tls(#[from] rustls::Error),
    /// `[server] upstream_ca_file` could not be read.
    #[error("server.upstream_ca_file {path}: {detail}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong with it.
        detail: String,
    },
}

/// Why an upstream response body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over HTTP/1.1.
    #[error(transparent)]
    H1(#[from] hyper::Error),
    /// Over HTTP/2.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (DNS, TCP, TLS).
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed before the response head arrived.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The HTTP/2 stream failed before the response head arrived.
    #[error("HTTP/2: {0}")]
    H2(#[from] H2SendError),
}

impl SendError {
    /// The error and every cause, `: `-separated (no secrets: hosts and
    /// socket errors only).
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        detail
    }
}

/// The process's one upstream client.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// ALPN `http/1.1`; `h2`, `http/1.1` (for `auto`, and for `h2`, which
    /// then refuses a server that picks HTTP/1.1 with a clear error rather
    /// than a TLS alert).
    connectors: [Connector; 2],
    http1: http1::Builder,
    /// One pool per origin, looked up without a lock; replaced whole when
    /// an origin is first seen.
    origins: ArcSwap<Vec<Arc<OriginPool>>>,
    /// What each provider's origin is to be spoken to in; other origins
    /// (management APIs elsewhere) get `auto`.
    modes: Vec<(Scheme, Authority, UpstreamHttp)>,
}

impl Upstream {
    /// Builds the client: rustls with the webpki roots (and
    /// `upstream_ca_file`), TCP keep-alive, connect timeout, TCP_NODELAY.
    pub fn new(config: &Config) -> Result<Upstream, UpstreamError> {
        let server = &config.server;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(server.upstream_connect_timeout));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &server.upstream_ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
        };
        let connectors = [
            builder().enable_http1().wrap_connector(tcp.clone()),
            builder().enable_all_versions().wrap_connector(tcp),
        ];
        let modes = config
            .providers
            .values()
            .filter_map(|p| {
                let parts = p.origin.clone().into_parts();
                Some((parts.scheme?, parts.authority?, p.http))
            })
            .collect();
        Ok(Upstream {
            inner: Arc::new(Inner {
                connectors,
                http1: http1::Builder::new(),
                origins: ArcSwap::from_pointee(Vec::new()),
                modes,
            }),
        })
    }

    /// Open HTTP/2 connections to `origin` (`scheme://authority`), for tests
    /// and benches that count sockets.
    pub fn h2_connections(&self, uri: &Uri) -> usize {
        self.pool_for(uri).map_or(0, |pool| pool.h2.open())
    }

    /// Sends one attempt to the origin of its absolute URI.
    pub async fn send(
        &self,
        mut request: Request<OutboundBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let Some(pool) = self.pool_for(request.uri()) else {
            return Err(SendError::Connect("the upstream URI has no origin".into()));
        };
        let mut unprocessed = 0;
        loop {
            match self.route(&pool).await? {
                Route::H1 { conn, reused } => {
                    // HTTP/2 carries the origin as `:authority` instead.
                    request
                        .headers_mut()
                        .insert(http::header::HOST, pool.host.clone());
                    to_origin_form(request.uri_mut());
                    match exchange(conn, request).await {
                        Ok((response, conn)) => {
                            return Ok(
                                response.map(|incoming| UpstreamBody::h1(incoming, conn, pool))
                            )
                        }
                        Err(mut failed) => match failed.take_message() {
                            // The upstream closed an idle connection as it was
                            // taken: nothing was sent, so another one may carry it.
                            Some(unsent) if reused => {
                                request = unsent;
                                to_absolute_form(request.uri_mut(), &pool);
                            }
                            _ => return Err(SendError::Exchange(failed.into_error())),
                        },
                    }
                }
                Route::H2(lease) => {
                    let replay = (unprocessed < MAX_UNPROCESSED_RETRIES)
                        .then(|| replayable(&request))
                        .flatten();
                    match upstream_h2::send(lease, request).await {
                        Ok(response) => return Ok(response.map(UpstreamBody::h2)),
                        Err(error) if error.unprocessed() && replay.is_some() => {
                            tracing::debug!("upstream h2 did not process the request ({error}); sending it on another connection");
                            request = replay.unwrap_or_else(|| unreachable!());
                            unprocessed += 1;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }

    /// Where the next attempt goes: a free stream on an HTTP/2 connection,
    /// an idle HTTP/1.1 connection, or a new connection of whichever version
    /// the origin speaks. New HTTP/2 connections open one at a time per
    /// origin, so a burst fills each before opening the next.
    async fn route(&self, pool: &OriginPool) -> Result<Route, SendError> {
        let mut _connecting = None;
        if pool.uses_h2() {
            if let Some(lease) = pool.h2.lease() {
                return Ok(Route::H2(lease));
            }
            _connecting = Some(pool.h2.connecting().await);
            if let Some(lease) = pool.h2.lease() {
                return Ok(Route::H2(lease));
            }
        } else if let Some(conn) = pool.checkout() {
            return Ok(Route::H1 { conn, reused: true });
        }
        // Boxed: the connect future holds a whole TLS stream, and would
        // otherwise grow every request's future by that much.
        match Box::pin(self.connect(pool)).await? {
            Connected::H1(conn) => {
                pool.speaks_h2
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Ok(Route::H1 {
                    conn,
                    reused: false,
                })
            }
            Connected::H2(conn) => {
                pool.speaks_h2
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                pool.h2.add(conn).map(Route::H2).ok_or_else(|| {
                    SendError::Connect("the new HTTP/2 connection allows no stream".into())
                })
            }
        }
    }

    /// One whole exchange for the control plane (`key verify`, the
    /// management APIs): sends `request` and reads at most `limit` bytes of
    /// the answer, all within `timeout`. `None`: no answer in time. An
    /// unreadable body reads as empty (the status still says something).
    pub async fn exchange(
        &self,
        request: Request<OutboundBody>,
        limit: usize,
        timeout: std::time::Duration,
    ) -> Option<Result<(u16, bytes::Bytes), SendError>> {
        tokio::time::timeout(timeout, async {
            let response = self.send(request).await?;
            let status = response.status().as_u16();
            let limited = http_body_util::Limited::new(response.into_body(), limit);
            let body = http_body_util::BodyExt::collect(limited)
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok((status, body))
        })
        .await
        .ok()
    }

    fn pool_for(&self, uri: &Uri) -> Option<Arc<OriginPool>> {
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        let find = |origins: &Vec<Arc<OriginPool>>| {
            origins
                .iter()
                .find(|pool| pool.scheme == *scheme && pool.authority == *authority)
                .cloned()
        };
        if let Some(pool) = find(&self.inner.origins.load()) {
            return Some(pool);
        }
        let mode = self
            .inner
            .modes
            .iter()
            .find(|(s, a, _)| s == scheme && a == authority)
            .map_or(UpstreamHttp::Auto, |(_, _, mode)| *mode);
        let created = Arc::new(OriginPool::new(scheme.clone(), authority.clone(), mode)?);
        let mut pool = None;
        self.inner.origins.rcu(|origins| {
            let mut origins = Vec::clone(origins);
            pool = find(&origins);
            if pool.is_none() {
                origins.push(created.clone());
            }
            origins
        });
        match pool {
            Some(existing) => Some(existing),
            None => {
                tokio::spawn(close_expired(Arc::downgrade(&created)));
                Some(created)
            }
        }
    }

    async fn connect(&self, pool: &OriginPool) -> Result<Connected, SendError> {
        use hyper_util::client::legacy::connect::Connection as _;
        let index = match pool.mode {
            UpstreamHttp::H1 => 0,
            UpstreamHttp::Auto | UpstreamHttp::H2 => 1,
        };
        let mut connector = self.inner.connectors[index].clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(pool.connect_uri.clone())
            .await
            .map_err(SendError::Connect)?;
        let tls = matches!(io, hyper_rustls::MaybeHttpsStream::Https(_));
        let negotiated_h2 = io.connected().is_negotiated_h2();
        let h2 = match pool.mode {
            UpstreamHttp::H1 => false,
            UpstreamHttp::Auto => negotiated_h2,
            UpstreamHttp::H2 if tls && !negotiated_h2 => {
                return Err(SendError::Connect(
                    "the upstream did not agree to HTTP/2 by ALPN (http = \"h2\"; \"auto\" falls back to HTTP/1.1)".into(),
                ))
            }
            UpstreamHttp::H2 => true,
        };
        if h2 {
            let conn = H2Conn::handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            return Ok(Connected::H2(conn));
        }
        let (sender, driver) = self.inner.http1.handshake(io).await?;
        Ok(Connected::H1(Box::new(Connection { sender, driver })))
    }
}

/// Where one attempt goes.
enum Route {
    H1 { conn: Box<Connection>, reused: bool },
    H2(StreamLease),
}

/// A new connection, in the version the origin agreed to.
enum Connected {
    H1(Box<Connection>),
    H2(Arc<H2Conn>),
}

/// A copy of `request` to send again if an HTTP/2 server does not process
/// it: only a body held whole can be sent twice.
fn replayable(request: &Request<OutboundBody>) -> Option<Request<OutboundBody>> {
    let OutboundBody::Full(body) = request.body() else {
        return None;
    };
    let mut copy = Request::new(OutboundBody::Full(body.clone()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Adds the PEM certificates of `path` to `roots`.
fn add_ca_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    let failed = |detail: String| UpstreamError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(failed("no usable CA certificate in it".into()));
    }
    Ok(())
}

/// Sends `request` on `conn`, driving the connection until the response
/// head is in. The connection comes back unless it closed on the way.
async fn exchange(
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
fn to_origin_form(uri: &mut Uri) {
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
fn to_absolute_form(uri: &mut Uri, pool: &OriginPool) {
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
struct Connection {
    sender: http1::SendRequest<OutboundBody>,
    driver: http1::Connection<Io, OutboundBody>,
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
struct OriginPool {
    scheme: Scheme,
    authority: Authority,
    mode: UpstreamHttp,
    /// `auto`: the last connection opened agreed to HTTP/2.
    speaks_h2: std::sync::atomic::AtomicBool,
    h2: H2Connections,
    /// `Host` for every request to this origin (default ports left out).
    host: HeaderValue,
    connect_uri: Uri,
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
    fn new(scheme: Scheme, authority: Authority, mode: UpstreamHttp) -> Option<OriginPool> {
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

    fn uses_h2(&self) -> bool {
        match self.mode {
            UpstreamHttp::H1 => false,
            UpstreamHttp::H2 => true,
            UpstreamHttp::Auto => self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn checkout(&self) -> Option<Box<Connection>> {
        while let Some(idle) = self.idle.pop() {
            if let Some(idle) = idle.still_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn put(&self, conn: Box<Connection>) {
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
async fn close_expired(pool: Weak<OriginPool>) {
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

/// An upstream response body, over HTTP/1.1 or HTTP/2.
pub struct UpstreamBody(BodyKind);

enum BodyKind {
    H1(H1Body),
    H2(H2Body),
}

impl UpstreamBody {
    fn h1(incoming: Incoming, conn: Option<Box<Connection>>, pool: Arc<OriginPool>) -> Self {
        let mut body = H1Body {
            incoming,
            conn,
            pool,
            failed: None,
        };
        // An empty body (204, `Content-Length: 0`) is never polled, so its
        // connection is handed back here.
        if body.incoming.is_end_stream() {
            body.release();
        }
        UpstreamBody(BodyKind::H1(body))
    }

    fn h2(body: H2Body) -> Self {
        UpstreamBody(BodyKind::H2(body))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            BodyKind::H1(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            BodyKind::H2(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::H1(body) => body.is_end_stream(),
            BodyKind::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::H1(body) => body.size_hint(),
            BodyKind::H2(body) => body.size_hint(),
        }
    }
}

/// An HTTP/1.1 response body. Polling it drives its connection, which goes
/// back to the pool once the body has ended; dropped early, it closes it.
struct H1Body {
    incoming: Incoming,
    conn: Option<Box<Connection>>,
    pool: Arc<OriginPool>,
    /// A failure held back for one poll (see `poll_frame`).
    failed: Option<hyper::Error>,
}

impl H1Body {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let mut driven = false;
        loop {
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if this.incoming.is_end_stream() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(None);
                }
                // Frames handed over in this same run of polls are still in
                // hyper's write buffer, and a body error drops that buffer:
                // a Pending first lets it flush them to the client.
                Poll::Ready(Some(Err(error))) => {
                    this.conn = None;
                    this.failed = Some(error);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // Nothing decoded yet: drive the connection once (it reads
                // and decodes at most one frame per poll), then look again.
                Poll::Pending if !driven => {
                    driven = true;
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Pending;
                    };
                    if Pin::new(&mut conn.driver).poll(cx).is_ready() {
                        this.conn = None;
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
