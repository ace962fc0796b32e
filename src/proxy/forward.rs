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

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Uri};

use super::response_body::ResponseBody;
use crate::config::{AuthStyle, Provider};
use crate::control::metrics::ActiveGuard;
use crate::keys::{KeyRing, RingKey};
use crate::net::content_coding;
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::UpstreamBody;
use crate::proxy::error::ProxyError;
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
    matches!(name, "keep-alive" | "http2-settings")
        || AuthStyle::KEY_HEADERS.contains(&name)
        || name.starts_with("proxy-")
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

pub(super) fn bad_encoding(error: content_coding::CodingError) -> ProxyError {
    ProxyError::UpstreamBadEncoding {
        detail: error.to_string(),
    }
}

pub(super) fn response_headers(mut headers: HeaderMap, ring: &KeyRing) -> HeaderMap {
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
