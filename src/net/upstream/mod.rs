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
//! This file picks where each attempt goes and sends it again when that is
//! safe; below it: `connect` opens connections (TLS, ALPN), `pool` keeps
//! them per origin and runs the HTTP/1.1 exchange, `body` is the response
//! body that drives its HTTP/1.1 connection inline, and `error` says what
//! went wrong.

mod body;
mod connect;
mod error;
mod pool;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};

use self::connect::{Connected, Connectors};
use self::pool::{
    close_expired, exchange, to_absolute_form, to_origin_form, Connection, OriginPool,
};
use crate::config::{Config, UpstreamHttp};
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream_h2::{self, StreamLease};

pub use self::body::{BodyError, UpstreamBody};
pub use self::error::{SendError, UpstreamError};

/// Requests an HTTP/2 server left unprocessed (GOAWAY, REFUSED_STREAM)
/// are sent again at most this many times.
const MAX_UNPROCESSED_RETRIES: u32 = 3;

/// The process's one upstream client.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    connectors: Connectors,
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
        let connectors = Connectors::new(&config.server)?;
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
                origins: ArcSwap::from_pointee(Vec::new()),
                modes,
            }),
        })
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
        match Box::pin(self.inner.connectors.connect(pool)).await? {
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
}

/// Where one attempt goes.
enum Route {
    H1 { conn: Box<Connection>, reused: bool },
    H2(StreamLease),
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
