//! The upstream response body ([`UpstreamBody`]), over HTTP/1.1 or HTTP/2.
//! The HTTP/1.1 one drives its own connection as it is polled, so the frames
//! one read brought in are decoded in the same poll; it hands the connection
//! back to its pool once the body has ended, and closes it when dropped early.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{Connection, OriginPool};
use crate::net::upstream_h2::H2Body;

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

/// An upstream response body, over HTTP/1.1 or HTTP/2.
pub struct UpstreamBody(BodyKind);

enum BodyKind {
    H1(H1Body),
    H2(H2Body),
}

impl UpstreamBody {
    pub(super) fn h1(
        incoming: Incoming,
        conn: Option<Box<Connection>>,
        pool: Arc<OriginPool>,
    ) -> Self {
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

    pub(super) fn h2(body: H2Body) -> Self {
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
