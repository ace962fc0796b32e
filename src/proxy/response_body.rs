//! The body of every response on the client listener: keygate's own answer
//! held whole, or the upstream's body streamed frame by frame with an idle
//! timeout, through the meter's tap, with trailers filtered like the head;
//! it ends the request ([`super::request_end`]) when it is over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::control::metrics::ActiveGuard;
use crate::keys::headroom::InFlight;
use crate::keys::KeyRing;
use crate::net::upstream::UpstreamBody;
use crate::proxy::request_end::{Ending, RequestEnd};
use crate::usage::tap::MeterTap;

use super::headers::response_headers;

/// Why a response stream was cut.
#[derive(Debug, thiserror::Error)]
pub enum ResponseStreamError {
    /// No upstream bytes for `stream_idle_timeout`.
    #[error("upstream stream idle for longer than {0:?}")]
    Idle(Duration),
    /// The upstream connection failed mid-body.
    #[error("upstream stream failed: {0}")]
    Upstream(#[from] crate::net::upstream::BodyError),
    /// A compressed stream keygate decodes for the client turned out corrupt.
    #[error("upstream stream could not be decoded")]
    Decode,
}

/// The body of every response on the client listener.
pub enum ResponseBody {
    /// keygate's own answer (errors, admin).
    Full(Option<Bytes>),
    /// The upstream's body, frame by frame.
    Upstream(Box<UpstreamStream>),
}

/// What an answer in flight holds open until it ends: its place in
/// `keygate_active_requests`, and its key's slot under `max_in_flight`.
pub struct Open {
    /// The gauge's count.
    pub active: ActiveGuard,
    /// The key's open request, when it has a `max_in_flight`.
    pub key: Option<InFlight>,
}

/// An upstream body in flight; counted in `keygate_active_requests` until dropped.
pub struct UpstreamStream {
    incoming: UpstreamBody,
    /// Trailers (h2, h2c) are filtered against the same ring as the head.
    ring: Arc<KeyRing>,
    /// Trailers that arrived while the tap still held bytes to send first.
    held_trailers: Option<HeaderMap>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    tap: Option<MeterTap>,
    /// The request's end, run when this body ends, is cut, or is dropped.
    end: Option<RequestEnd>,
    _open: Open,
}

impl UpstreamStream {
    /// The body is over: the tap records its usage, then the request ends.
    fn end(&mut self, ending: Ending) {
        if let Some(tap) = self.tap.as_mut() {
            tap.finish(ending == Ending::Complete);
        }
        if let Some(mut end) = self.end.take() {
            end.tokens = self.tap.as_ref().and_then(MeterTap::tokens);
            end.finish(ending);
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseStreamError>>> {
        if let Some(trailers) = self.held_trailers.take() {
            self.end(Ending::Complete);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        loop {
            match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.idle_timer.as_mut().reset(deadline);
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            // Trailers get the head's treatment: an upstream
                            // that echoes a key there must not leak it either.
                            let Ok(trailers) = frame.into_trailers() else {
                                continue;
                            };
                            let trailers = response_headers(trailers, &self.ring);
                            if trailers.is_empty() {
                                continue;
                            }
                            // Trailers end the body: hyper may not poll again.
                            if let Some(held) = self.tap.as_mut().and_then(MeterTap::flush) {
                                self.held_trailers = Some(trailers);
                                return Poll::Ready(Some(Ok(Frame::data(held))));
                            }
                            self.end(Ending::Complete);
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    };
                    let Some(tap) = self.tap.as_mut() else {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    };
                    let out = tap.on_data(data);
                    if tap.broken() {
                        self.end(Ending::Cut("upstream_undecodable"));
                        return Poll::Ready(Some(Err(ResponseStreamError::Decode)));
                    }
                    // hyper stops polling once a length-delimited body is
                    // complete, so the end is recorded here, not on `None`.
                    if self.incoming.is_end_stream() {
                        let out = match (out, tap.flush()) {
                            (Some(out), Some(rest)) => Some(Bytes::from([out, rest].concat())),
                            (out, rest) => out.or(rest),
                        };
                        self.end(Ending::Complete);
                        return Poll::Ready(out.map(|b| Ok(Frame::data(b))));
                    }
                    match out {
                        Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => continue, // part of an event held back; read on
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.end(Ending::Cut("upstream_stream_failed"));
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    if let Some(rest) = self.tap.as_mut().and_then(MeterTap::flush) {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    self.end(Ending::Complete);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    return match self.idle_timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            self.end(Ending::Cut("upstream_stream_idle"));
                            Poll::Ready(Some(Err(ResponseStreamError::Idle(self.idle))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// Streams `incoming`; `active` keeps the request counted as in flight
    /// until the stream ends or the client goes away.
    pub(super) fn upstream(
        incoming: UpstreamBody,
        ring: Arc<KeyRing>,
        idle: Duration,
        open: Open,
        tap: Option<MeterTap>,
    ) -> Self {
        ResponseBody::Upstream(Box::new(UpstreamStream {
            incoming,
            ring,
            held_trailers: None,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            tap,
            end: None,
            _open: open,
        }))
    }

    /// Hands the request's end to a streamed body, to run when it is over;
    /// a body held whole gives it back (its request ends now).
    pub fn attach(&mut self, end: RequestEnd) -> Option<RequestEnd> {
        match self {
            ResponseBody::Upstream(stream) => {
                stream.end = Some(end);
                None
            }
            ResponseBody::Full(_) => Some(end),
        }
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        // Dropped before its end: hyper lets go of a body whose client left.
        self.end(Ending::ClientGone);
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseStreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(stream) => stream.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            ResponseBody::Upstream(stream) => {
                stream.incoming.is_end_stream() && stream.held_trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // A tap that removes a chunk changes the length: let hyper frame it.
            ResponseBody::Upstream(stream) if stream.tap.as_ref().is_some_and(|t| t.rewrites()) => {
                SizeHint::default()
            }
            ResponseBody::Upstream(stream) => stream.incoming.size_hint(),
        }
    }
}
