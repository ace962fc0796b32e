//! Which headers cross keygate: hop-by-hop and framing headers never do
//! (RFC 9110 §7.6.1), nor a client's credentials on the way up, nor a
//! response header that echoes an upstream key on the way down. Used by the
//! outbound leg, the response body (trailers) and error answers alike.

use http::header::{self, HeaderMap, HeaderName};

use crate::config::AuthStyle;
use crate::keys::KeyRing;

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
pub(super) fn keep_end_to_end(headers: &mut HeaderMap, also_drop: &[&str]) {
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

/// The upstream's response headers as the client may see them: end to end
/// only, and none that echoes a key of `ring`.
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
