//! An upstream error answer (4xx/5xx): its body read whole (decoded, up to
//! the scrub limit) so the retry loop can ask the provider's kind what it
//! says about the key before anything reaches the client, then sent on with
//! every fragment of an upstream key masked out — or, too large to scrub or
//! in a coding keygate cannot read, replaced by keygate's own 502.

use std::time::Duration;

use http::header::{self};
use http::Response;

use crate::keys::KeyRing;
use crate::net::content_coding;
use crate::net::upstream::UpstreamBody;
use crate::proxy::error::ProxyError;

use super::headers::response_headers;
use super::response_body::ResponseBody;

/// Error bodies this small (decoded) are read whole so key echoes can be masked.
const SCRUB_LIMIT: usize = 64 * 1024;
/// Compressed bytes read for one error body at most (a stream that decodes to
/// next to nothing must not be read for ever).
const SCRUB_RAW_LIMIT: usize = 4 * SCRUB_LIMIT;
/// How much of an oversized error body the debug log shows (scrubbed).
const LOGGED_PREFIX: usize = 2 * 1024;

/// An upstream error answer, its body read (up to [`SCRUB_LIMIT`], decoded)
/// so the retry loop can ask the provider's kind what it says about the key
/// before anything reaches the client.
pub struct ErrorAnswer {
    /// Status and headers as the upstream sent them.
    pub parts: http::response::Parts,
    /// The body.
    pub body: ErrorBody,
}

/// The body of an [`ErrorAnswer`].
pub enum ErrorBody {
    /// Read whole, and decoded when it came compressed.
    Read(Vec<u8>),
    /// Failed or too slow: never passed on unread.
    Unreadable,
    /// Over [`SCRUB_LIMIT`] decoded (with a Content-Length or chunked,
    /// compressed or not): never passed on; the first [`SCRUB_LIMIT`] bytes
    /// are kept for the debug log.
    TooLarge(Vec<u8>),
    /// In a content coding keygate cannot decode.
    BadEncoding(content_coding::CodingError),
}

impl ErrorAnswer {
    /// The body's decoded bytes, when it was read.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            ErrorBody::Read(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// Reads an upstream error answer's body, decoding it, waiting at most
/// `idle` for it.
pub async fn read_error_body(upstream: Response<UpstreamBody>, idle: Duration) -> ErrorAnswer {
    let (parts, incoming) = upstream.into_parts();
    let body = match content_coding::codings(&parts.headers) {
        Ok(codings) => {
            match tokio::time::timeout(idle, collect_decoded(incoming, &codings)).await {
                Ok(body) => body,
                Err(_) => ErrorBody::Unreadable,
            }
        }
        Err(error) => ErrorBody::BadEncoding(error),
    };
    ErrorAnswer { parts, body }
}

async fn collect_decoded(
    mut incoming: UpstreamBody,
    codings: &[content_coding::Coding],
) -> ErrorBody {
    use http_body_util::BodyExt;
    // One byte over the limit is how "too large" shows.
    let mut decoder = content_coding::Decoder::new(codings, SCRUB_LIMIT as u64 + 1);
    let mut body = Vec::new();
    let mut raw = 0usize;
    let decoded = loop {
        let data = match incoming.frame().await {
            None => break decoder.finish(&mut |piece| body.extend_from_slice(piece)),
            Some(Err(_)) => return ErrorBody::Unreadable,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers of an error body: not kept
            },
        };
        raw += data.len();
        if codings.is_empty() {
            body.extend_from_slice(&data);
        } else if let Err(error) = decoder.feed(&data, &mut |piece| body.extend_from_slice(piece)) {
            break Err(error);
        }
        if body.len() > SCRUB_LIMIT || raw > SCRUB_RAW_LIMIT {
            break Err(content_coding::CodingError::TooLarge {
                limit: SCRUB_LIMIT as u64,
            });
        }
    };
    match decoded {
        Ok(()) => ErrorBody::Read(body),
        Err(content_coding::CodingError::TooLarge { .. }) => {
            body.truncate(SCRUB_LIMIT);
            ErrorBody::TooLarge(body)
        }
        Err(_) => ErrorBody::Unreadable,
    }
}

/// An upstream error answer (4xx/5xx) for the client, with every fragment of
/// an upstream key masked out of its headers and body (OpenAI-style errors
/// quote the key they refused). The body goes out decoded (`Content-Encoding`
/// removed), since it was read to be scrubbed. One too large to scrub, or in
/// a coding keygate cannot read, is replaced by keygate's own 502.
pub fn scrubbed_error_response(
    answer: ErrorAnswer,
    ring: &KeyRing,
    open: super::response_body::Open,
) -> Response<ResponseBody> {
    let ErrorAnswer { parts, body } = answer;
    let status = parts.status.as_u16();
    let body = match body {
        ErrorBody::Read(body) => body,
        // Failed or too slow: the status and headers still go through.
        ErrorBody::Unreadable => b"{\"error\":{\"message\":\"upstream error body could not be read\",\"type\":\"upstream_error\",\"code\":\"upstream_unavailable\"}}".to_vec(),
        ErrorBody::TooLarge(mut head) => {
            ring.mask_echoes(&mut head);
            let shown = &head[..head.len().min(LOGGED_PREFIX)];
            tracing::debug!(
                status,
                body = %String::from_utf8_lossy(shown),
                "upstream error body over the scrub limit, not passed on (first bytes, scrubbed)"
            );
            return ProxyError::UpstreamErrorTooLarge {
                status,
                limit: SCRUB_LIMIT,
            }
            .into_response();
        }
        ErrorBody::BadEncoding(error) => return ProxyError::upstream_encoding(error).into_response(),
    };
    let mut body = without_unicode_escapes(body);
    if ring.mask_echoes(&mut body) {
        tracing::warn!(status, "upstream error body echoed an upstream key; masked");
    }
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = parts.status;
    let mut headers = response_headers(parts.headers, ring);
    headers.remove(header::CONTENT_ENCODING);
    *response.headers_mut() = headers;
    drop(open);
    response
}

/// A JSON body that writes characters as `\uXXXX` escapes, written again
/// without them, so the scrubber sees a key the way the client's JSON
/// decoder will (`"\u0073\u006b-…"` is `"sk-…"`). Anything else — no `\u`,
/// not JSON — is returned as it came.
fn without_unicode_escapes(body: Vec<u8>) -> Vec<u8> {
    if memchr::memmem::find(&body, b"\\u").is_none() {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => serde_json::to_vec(&value).unwrap_or(body),
        Err(_) => body,
    }
}
