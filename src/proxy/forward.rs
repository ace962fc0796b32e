//! The outbound leg: the outbound request (client credentials and hop-by-hop
//! headers out, the provider's key in) and the head of the response on its
//! way back (hop-by-hop, auth and key-echoing headers out). The body that
//! follows is [`super::response_body`]'s; an upstream error answer is read
//! and scrubbed by [`super::error_answer`]; the connections themselves are
//! [`crate::net::upstream`]'s.
//!
//! Redirects are never followed. The key's header value is prebuilt and
//! sensitive; nothing here logs a header.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Request, Response, Uri};

use super::headers::{keep_end_to_end, response_headers};
use super::response_body::ResponseBody;
use crate::config::Provider;
use crate::keys::{KeyRing, RingKey};
use crate::net::content_coding;
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::UpstreamBody;
use crate::proxy::error::ProxyError;
use crate::usage::tap::MeterTap;

/// The client's headers as every attempt sends them, but for the key:
/// client credentials and hop-by-hop headers out, the operator's account
/// headers in, and only codings keygate can decode offered. Prepared once
/// per request; each attempt then adds its key ([`outbound_request`]).
pub fn outbound_headers(provider: &Provider, mut headers: HeaderMap) -> HeaderMap {
    keep_end_to_end(&mut headers, &["x-forwarded-host", "forwarded"]);
    // Which organisation and project a key bills is the operator's choice.
    let [organization_header, project_header] = provider.kind.account_headers();
    if !provider.allow_client_org_headers {
        headers.remove(organization_header);
        headers.remove(project_header);
    }
    if let Some(organization) = &provider.organization {
        headers.insert(organization_header, organization.clone());
    }
    if let Some(project) = &provider.project {
        headers.insert(project_header, project.clone());
    }
    // Offer only what keygate can decode: the meter and the scrubber read
    // what comes back (DESIGN §4 "Compressed bodies").
    match content_coding::accept_encoding_upstream(headers.get(header::ACCEPT_ENCODING)) {
        Some(offer) => headers.insert(header::ACCEPT_ENCODING, offer),
        None => headers.remove(header::ACCEPT_ENCODING),
    };
    headers
}

/// The outbound request for one attempt with `key`, from the headers
/// [`outbound_headers`] prepared.
pub fn outbound_request(
    method: &http::Method,
    uri: Uri,
    mut headers: HeaderMap,
    key: &RingKey,
    body: OutboundBody,
) -> Request<OutboundBody> {
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
    open: super::response_body::Open,
    mut tap: Option<MeterTap>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (parts, incoming) = upstream.into_parts();
    let codings = content_coding::codings(&parts.headers).map_err(ProxyError::upstream_encoding)?;
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
        open,
        tap,
    ));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Most bytes a compressed response decodes to for the meter (a stream past
/// it passes on unmetered rather than cost keygate the CPU of a bomb).
const RESPONSE_DECODED_LIMIT: u64 = 1 << 30;
