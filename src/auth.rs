//! Client authentication: the presented `kg_…` key → a known, unrevoked client.
//!
//! The key is parsed (shape + checksum) before any lookup, hashed, looked up by
//! digest and confirmed in constant time. Never logs or returns the key.

use std::sync::{Arc, OnceLock};

use http::HeaderMap;

use crate::clients::{self, ClientKeyDigest};
use crate::error::ProxyError;
use crate::state::{ClientInfo, Snapshot};

/// The client making this request.
pub fn authenticate(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    allow_anonymous: bool,
) -> Result<Arc<ClientInfo>, ProxyError> {
    let Some(presented) = presented_key(headers) else {
        if allow_anonymous {
            return Ok(anonymous());
        }
        return Err(ProxyError::InvalidClientKey("no client key was sent"));
    };
    let digest = clients::parse(presented)
        .map_err(|_| ProxyError::InvalidClientKey("the key is not a well-formed keygate key"))?;
    match snapshot.clients.get(&digest) {
        Some(client) if client.digest.ct_eq(&digest) => Ok(client.clone()),
        _ => Err(ProxyError::InvalidClientKey(
            "the key is unknown or was revoked",
        )),
    }
}

/// `Authorization: Bearer …` (what the OpenAI SDK sends), else `x-api-key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn anonymous() -> Arc<ClientInfo> {
    static ANONYMOUS: OnceLock<Arc<ClientInfo>> = OnceLock::new();
    ANONYMOUS
        .get_or_init(|| {
            Arc::new(ClientInfo {
                name: Arc::from("anonymous"),
                digest: ClientKeyDigest([0; 32]),
                sticky: 0,
                limits: crate::limits::ClientLimits::default(),
            })
        })
        .clone()
}
