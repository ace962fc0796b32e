//! The request body as it goes to an upstream: a complete body (sent again
//! on a retry), or the one streaming attempt of a body larger than the retry
//! buffer, still held to the size limit, the idle timeout and the deadline
//! while it streams. The proxy decides which (`proxy::body`); the upstream
//! pool, management calls and `key verify` send it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Limits applied while reading a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Larger bodies are refused (413).
    pub max: u64,
    /// Bodies up to this are kept for a retry.
    pub retry_buffer: u64,
    /// Longest pause between two body frames (408).
    pub idle: Duration,
    /// The whole body must have arrived within this (408).
    pub total: Duration,
}

/// Why a streaming request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamingBodyError {
    /// Exceeded `max_request_body`.
    #[error("request body exceeded the size limit")]
    TooLarge,
    /// The client paused longer than `body_idle_timeout`.
    #[error("request body stalled")]
    Idle,
    /// The body had not arrived within `body_timeout`.
    #[error("request body took too long")]
    Deadline,
    /// The client connection failed.
    #[error("request body: {0}")]
    Client(#[from] hyper::Error),
}

/// A request body larger than the retry buffer (single use).
pub struct StreamingBody {
    inner: Option<StreamingState>,
    overflow: Arc<AtomicBool>,
}

impl StreamingBody {
    /// A body whose first `head` chunks (`seen` bytes) were read already and
    /// whose `rest` streams on under `limits` until `deadline`.
    pub fn new(
        head: VecDeque<Bytes>,
        rest: Incoming,
        seen: u64,
        limits: BodyLimits,
        deadline: Instant,
        declared_len: Option<u64>,
    ) -> StreamingBody {
        StreamingBody {
            inner: Some(StreamingState {
                head,
                rest,
                seen,
                limits,
                idle_timer: Box::pin(tokio::time::sleep_until(
                    (Instant::now() + limits.idle).min(deadline),
                )),
                deadline,
                declared_len,
            }),
            overflow: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body for its one attempt (`None` once taken).
    pub fn take(&mut self) -> Option<Box<StreamingSend>> {
        self.inner.take().map(|state| {
            Box::new(StreamingSend {
                state,
                overflow: self.overflow.clone(),
            })
        })
    }

    /// True when sending stopped because the body went over the limit.
    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }
}

struct StreamingState {
    head: VecDeque<Bytes>,
    rest: Incoming,
    seen: u64,
    limits: BodyLimits,
    /// Fires at the idle timeout or the deadline, whichever comes first.
    idle_timer: Pin<Box<Sleep>>,
    deadline: Instant,
    declared_len: Option<u64>,
}

/// The streaming body in flight to the upstream.
pub struct StreamingSend {
    state: StreamingState,
    overflow: Arc<AtomicBool>,
}

/// What the upstream client sends.
pub enum OutboundBody {
    /// A complete body (`None` once sent).
    Full(Option<Bytes>),
    /// The single streaming attempt (boxed: every pooled upstream connection
    /// keeps a queue of 32 requests' worth of slots).
    Streaming(Box<StreamingSend>),
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = StreamingBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            OutboundBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutboundBody::Streaming(send) => {
                let state = &mut send.state;
                if let Some(chunk) = state.head.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                match Pin::new(&mut state.rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        };
                        state.seen += data.len() as u64;
                        if state.seen > state.limits.max {
                            send.overflow.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(StreamingBodyError::TooLarge)));
                        }
                        let wake = (Instant::now() + state.limits.idle).min(state.deadline);
                        state.idle_timer.as_mut().reset(wake);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => match state.idle_timer.as_mut().poll(cx) {
                        Poll::Ready(()) if Instant::now() >= state.deadline => {
                            Poll::Ready(Some(Err(StreamingBodyError::Deadline)))
                        }
                        Poll::Ready(()) => Poll::Ready(Some(Err(StreamingBodyError::Idle))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutboundBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            OutboundBody::Streaming(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutboundBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            OutboundBody::Streaming(send) => match send.state.declared_len {
                Some(len) => SizeHint::with_exact(len),
                None => SizeHint::default(),
            },
        }
    }
}
