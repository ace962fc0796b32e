//! The status page (`GET /` on the admin listener): one self-contained page
//! built into the binary — HTML, CSS and a little JavaScript, no external
//! asset — that asks for the admin token once (kept in `sessionStorage`, sent
//! as `Authorization: Bearer`, never in a URL) and shows every provider's
//! rotation in flight and last hour of refusals and fallbacks, every key's
//! state, health, age, grace and last refusal, every client's tokens, the
//! last events with their deliveries, and the last reload, from the `/admin/*` JSON every five seconds. Read-only.
//!
//! The Content-Security-Policy allows only the page's own inline script and
//! style, by their SHA-256, and nothing from anywhere else; the page may not
//! be framed. The page itself carries no data: everything it shows comes
//! from the admin API, behind the token.

use std::sync::LazyLock;

use base64::Engine;
use http::{header, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::proxy::response_body::ResponseBody;

const HTML: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// The page and its policy, assembled once.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let hash = |text: &str| {
        let digest = Sha256::digest(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(JS),
        hash(CSS)
    );
    let html = HTML.replace("/*CSS*/", CSS).replace("/*JS*/", JS);
    (html, policy)
});

/// `GET /`: the status page.
pub fn page() -> Response<ResponseBody> {
    let (html, policy) = &*PAGE;
    let mut response = Response::new(ResponseBody::full(html.clone()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}
