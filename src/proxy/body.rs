//! The client's request body: size limit, idle timeout, total deadline, retry buffer.
//!
//! A body that ends within `retry_buffer` is kept whole (it can be sent again
//! with the next key after a 401, and plain `/v1` routing can read its `model`).
//! A larger one streams to the upstream as it arrives, still under the size
//! limit, idle timeout and deadline, and gets exactly one attempt. Nothing else
//! buffers. The deadline (`body_timeout`) is what stops a slowloris body: one
//! trickled just faster than the idle timeout would otherwise hold its
//! connection for as long as the client likes.
//!
//! A buffered body sent with `Content-Encoding` (Codex sends zstd) is decoded
//! here, held to the same size limit decoded (a decompression bomb gets 413),
//! and forwarded decoded: routing, the usage option and the token estimate
//! read what the upstream then reads. A compressed body too large to buffer
//! streams on as it came, unread.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::net::content_coding::{self, CodingError};
use crate::proxy::error::ProxyError;

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

/// A request body after the edge checks.
pub enum RequestBody {
    /// Complete and in memory: may be sent any number of times.
    Buffered(Bytes),
    /// Larger than the retry buffer: streams once.
    Streaming(StreamingBody),
}

impl RequestBody {
    /// The buffered bytes, when the body is complete in memory.
    pub fn buffered(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Buffered(bytes) => Some(bytes),
            RequestBody::Streaming(_) => None,
        }
    }

    /// The body for one more attempt, or `None` once a streaming body was sent.
    pub fn next_attempt(&mut self) -> Option<OutboundBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(OutboundBody::Full(Some(bytes.clone()))),
            RequestBody::Streaming(stream) => stream.take().map(OutboundBody::Streaming),
        }
    }
}

/// Reads the body up to the retry buffer; refuses it early when the declared
/// length is already over the limit.
pub async fn receive(
    mut incoming: Incoming,
    declared_len: Option<u64>,
    limits: BodyLimits,
) -> Result<RequestBody, ProxyError> {
    if declared_len.is_some_and(|len| len > limits.max) {
        return Err(ProxyError::RequestTooLarge { limit: limits.max });
    }
    if incoming.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    let deadline = Instant::now() + limits.total;
    let capacity = declared_len.unwrap_or(0).min(limits.retry_buffer) as usize;
    let mut buffered = BytesMut::with_capacity(capacity);
    let mut chunks = VecDeque::new();
    loop {
        let wait_until = (Instant::now() + limits.idle).min(deadline);
        let frame = match tokio::time::timeout_at(wait_until, incoming.frame()).await {
            Err(_) if wait_until == deadline => return Err(ProxyError::BodyDeadline(limits.total)),
            Err(_) => return Err(ProxyError::BodyTimeout(limits.idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::BadRequestBody(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        let seen = (buffered.len() + data.len()) as u64;
        if seen > limits.max {
            return Err(ProxyError::RequestTooLarge { limit: limits.max });
        }
        if seen > limits.retry_buffer {
            // Too big to keep: what was read goes first, the rest streams.
            if !buffered.is_empty() {
                chunks.push_back(buffered.freeze());
            }
            chunks.push_back(data);
            return Ok(RequestBody::Streaming(StreamingBody {
                inner: Some(StreamingState {
                    head: chunks,
                    rest: incoming,
                    seen,
                    limits,
                    idle_timer: Box::pin(tokio::time::sleep_until(
                        (Instant::now() + limits.idle).min(deadline),
                    )),
                    deadline,
                    declared_len,
                }),
                overflow: Arc::new(AtomicBool::new(false)),
            }));
        }
        buffered.extend_from_slice(&data);
    }
    Ok(RequestBody::Buffered(buffered.freeze()))
}

/// Decodes a buffered body the client sent compressed, and drops its
/// `Content-Encoding` from `headers` (the upstream gets the decoded bytes).
/// A coding keygate cannot decode is refused (415).
pub fn decode_content(
    body: &mut RequestBody,
    headers: &mut http::HeaderMap,
    max: u64,
) -> Result<(), ProxyError> {
    let codings = content_coding::codings(headers)
        .map_err(|e| ProxyError::UnsupportedRequestEncoding(e.to_string()))?;
    if codings.is_empty() {
        headers.remove(http::header::CONTENT_ENCODING); // `identity` only
        return Ok(());
    }
    let RequestBody::Buffered(bytes) = body else {
        return Ok(());
    };
    let decoded = content_coding::decode_all(&codings, bytes, max).map_err(|e| match e {
        CodingError::TooLarge { .. } => ProxyError::RequestTooLarge { limit: max },
        other => ProxyError::BadRequestBody(other.to_string()),
    })?;
    *body = RequestBody::Buffered(Bytes::from(decoded));
    headers.remove(http::header::CONTENT_ENCODING);
    Ok(())
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
    fn take(&mut self) -> Option<Box<StreamingSend>> {
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
