//! The outbound leg: the outbound request (client credentials and hop-by-hop
//! headers out, the provider's key in), and the response on its way back
//! (hop-by-hop and auth headers out, body streamed frame by frame with an
//! idle timeout). The connections themselves are [`crate::net::upstream`]'s.
//!
//! Redirects are never followed. The key's header value is prebuilt and
//! sensitive; nothing here logs a header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::config::Provider;
use crate::control::metrics::ActiveGuard;
use crate::keys::{KeyRing, RingKey};
use crate::net::content_coding;
use crate::net::upstream::UpstreamBody;
use crate::proxy::body::OutboundBody;
use crate::proxy::error::ProxyError;
use crate::proxy::request_end::{Ending, RequestEnd};
use crate::usage::tap::MeterTap;

/// Hop-by-hop and framing headers keygate never passes through (RFC 9110 §7.6.1;
/// framing is redone by keygate itself), and client credential headers (never
/// forwarded, never returned). Called for every header of every request and
/// response: standard names compare as `HeaderName`s (an enum compare), and
/// only the few others as text.
fn is_hop_by_hop_or_credential(name: &HeaderName) -> bool {
    const STANDARD: [HeaderName; 11] = [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
        header::HOST,
        header::EXPECT,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::AUTHORIZATION,
    ];
    if STANDARD.contains(name) {
        return true;
    }
    let name = name.as_str();
    matches!(
        name,
        "keep-alive" | "http2-settings" | "x-api-key" | "api-key"
    ) || name.starts_with("proxy-")
}

/// Removes hop-by-hop headers, headers named in `Connection`, credential
/// headers and `also_drop` from `headers`, in place (nothing is copied or
/// rehashed; nothing is allocated unless the client sent `Connection`).
fn keep_end_to_end(headers: &mut HeaderMap, also_drop: &[&str]) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let dropped = |name: &HeaderName| {
        is_hop_by_hop_or_credential(name)
            || also_drop.contains(&name.as_str())
            || named_by_connection.contains(name)
    };
    // A head has a dozen names and two or three to drop: finding the next
    // one again costs what collecting them does (callgrind), without the Vec.
    while let Some(name) = headers.keys().find(|name| dropped(name)).cloned() {
        headers.remove(name);
    }
}

/// The outbound request for one attempt with `key`.
pub fn outbound_request(
    provider: &Provider,
    method: &http::Method,
    uri: Uri,
    client_headers: &HeaderMap,
    key: &RingKey,
    body: OutboundBody,
) -> Request<OutboundBody> {
    // Cloned per attempt: a retry starts again from the client's headers.
    let mut headers = client_headers.clone();
    keep_end_to_end(&mut headers, &["x-forwarded-host", "forwarded"]);
    // Which organisation and project a key bills is the operator's choice.
    if !provider.allow_client_org_headers {
        headers.remove("openai-organization");
        headers.remove("openai-project");
    }
    if let Some(organization) = &provider.organization {
        headers.insert("openai-organization", organization.clone());
    }
    if let Some(project) = &provider.project {
        headers.insert("openai-project", project.clone());
    }
    // Offer only what keygate can decode: the meter and the scrubber read
    // what comes back (DESIGN §4 "Compressed bodies").
    match content_coding::accept_encoding_upstream(headers.get(header::ACCEPT_ENCODING)) {
        Some(offer) => headers.insert(header::ACCEPT_ENCODING, offer),
        None => headers.remove(header::ACCEPT_ENCODING),
    };
    headers.insert(key.header_name.clone(), key.header_value.clone());
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// The client's response: upstream status and end-to-end headers (minus any
/// that echo a key), body streamed.
///
/// A compressed body goes out as the upstream encoded it while the tap
/// decodes a copy for the meter; only when the tap re-frames the stream (it
/// removes the usage chunk keygate asked for) does the client get the decoded
/// stream, with `Content-Encoding` removed: re-compressing it would cost more
/// than the bytes it saves on a local hop. A coding keygate cannot decode is
/// refused (502 `upstream_bad_encoding`): its usage and key echoes could not
/// be read.
pub fn client_response(
    upstream: Response<UpstreamBody>,
    ring: &Arc<KeyRing>,
    stream_idle_timeout: Duration,
    active: ActiveGuard,
    mut tap: Option<MeterTap>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (parts, incoming) = upstream.into_parts();
    let codings = content_coding::codings(&parts.headers).map_err(bad_encoding)?;
    let mut headers = response_headers(parts.headers, ring);
    if let (false, Some(tap)) = (codings.is_empty(), tap.as_mut()) {
        let decoder = content_coding::Decoder::new(&codings, RESPONSE_DECODED_LIMIT);
        if tap.decode(decoder) {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
    let mut response = Response::new(ResponseBody::upstream(
        incoming,
        ring.clone(),
        stream_idle_timeout,
        active,
        tap,
    ));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Most bytes a compressed response decodes to for the meter (a stream past
/// it passes on unmetered rather than cost keygate the CPU of a bomb).
const RESPONSE_DECODED_LIMIT: u64 = 1 << 30;

fn bad_encoding(error: content_coding::CodingError) -> ProxyError {
    ProxyError::UpstreamBadEncoding {
        detail: error.to_string(),
    }
}

fn response_headers(mut headers: HeaderMap, ring: &KeyRing) -> HeaderMap {
    keep_end_to_end(&mut headers, &[]);
    let echoing: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, value)| ring.contains_echo(value.as_bytes()))
        .map(|(name, _)| name.clone())
        .collect();
    for name in echoing {
        tracing::warn!(header = %name, "upstream response header echoed an upstream key; dropped");
        headers.remove(name);
    }
    headers
}

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
    active: ActiveGuard,
) -> Response<ResponseBody> {
    let ErrorAnswer { parts, body } = answer;
    let status = parts.status.as_u16();
    let mut body = match body {
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
        ErrorBody::BadEncoding(error) => return bad_encoding(error).into_response(),
    };
    if ring.mask_echoes(&mut body) {
        tracing::warn!(status, "upstream error body echoed an upstream key; masked");
    }
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = parts.status;
    let mut headers = response_headers(parts.headers, ring);
    headers.remove(header::CONTENT_ENCODING);
    *response.headers_mut() = headers;
    drop(active);
    response
}

/// Why a response stream was cut.
#[derive(Debug, thiserror::Error)]
pub enum ResponseStreamError {
    /// No upstream bytes for `stream_idle_timeout`.
    #[error("upstream stream idle for longer than {0:?}")]
    Idle(Duration),
    /// The upstream connection failed mid-body.
    #[error("upstream stream failed: {0}")]
    Upstream(#[from] hyper::Error),
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
    _active: ActiveGuard,
}

impl UpstreamStream {
    /// The body is over: the tap records its usage, then the request ends.
    fn end(&mut self, ending: Ending) {
        if let Some(tap) = self.tap.as_mut() {
            tap.finish(ending == Ending::Complete);
        }
        if let Some(mut end) = self.end.take() {
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
    fn upstream(
        incoming: UpstreamBody,
        ring: Arc<KeyRing>,
        idle: Duration,
        active: ActiveGuard,
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
            _active: active,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer kg_x"),
            ("x-api-key", "kg_x"),
            ("api-key", "kg_x"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("host", "evil.example"),
            ("content-type", "application/json"),
        ] {
            headers.append(HeaderName::from_static(name), value.parse().unwrap());
        }
        keep_end_to_end(&mut headers, &[]);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("content-type"));
    }
}
