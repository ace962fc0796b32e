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

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::net::content_coding::{self, CodingError};
pub use crate::net::outbound_body::{BodyLimits, OutboundBody, StreamingBody};
use crate::proxy::error::ProxyError;

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
            return Ok(RequestBody::Streaming(StreamingBody::new(
                chunks,
                incoming,
                seen,
                limits,
                deadline,
                declared_len,
            )));
        }
        buffered.extend_from_slice(&data);
    }
    Ok(RequestBody::Buffered(buffered.freeze()))
}

/// Drops a UTF-8 byte order mark before a buffered body: JSON has none
/// (RFC 8259 §8.1), a reader that skips it sees fields keygate's reading
/// would miss (a stream then went unmetered), and one that refuses it would
/// refuse the body anyway. Keygate and the upstream read the same bytes.
pub fn drop_byte_order_mark(body: &mut RequestBody) {
    if let RequestBody::Buffered(bytes) = body {
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            *bytes = bytes.slice(3..);
        }
    }
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
