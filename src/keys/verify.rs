//! Verification: one authenticated `GET {base_url}/v1/models` with a key, the
//! answer explained in the operator's terms. Redirects are never followed.
//!
//! Only 401/403 are a verdict against the key; 429, 5xx and network errors are
//! inconclusive (the key may be fine). Never prints or logs the key.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::body::OutboundBody;
use crate::config::Provider;
use crate::forward;
use crate::keys::auth_header;
use crate::secret::Secret;
use crate::upstream::Upstream;

/// What the upstream said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the key works.
    Accepted,
    /// 401/403: the key is refused.
    Rejected {
        /// Upstream status.
        status: u16,
        /// What it means and what to do.
        explanation: String,
    },
    /// 402/429/5xx/3xx/network: says nothing certain about the key.
    Inconclusive {
        /// What happened and what to do.
        explanation: String,
    },
}

impl Verdict {
    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Accepted => "ok: the upstream accepted the key".to_owned(),
            Verdict::Rejected { explanation, .. } => explanation.clone(),
            Verdict::Inconclusive { explanation } => format!("inconclusive: {explanation}"),
        }
    }
}

/// Explains an upstream status for a key check.
pub fn classify(status: StatusCode) -> Verdict {
    let code = status.as_u16();
    match code {
        200..=299 => Verdict::Accepted,
        401 => Verdict::Rejected {
            status: code,
            explanation: "401 Unauthorized: the key is invalid or revoked — create a new key in the provider's dashboard".to_owned(),
        },
        403 => Verdict::Rejected {
            status: code,
            explanation: "403 Forbidden: the key lacks permission — wrong project or organisation, a restricted key, or a region the provider does not serve".to_owned(),
        },
        402 => Verdict::Inconclusive {
            explanation: "402 Payment Required: the account behind the key has a billing problem — check the provider's billing page".to_owned(),
        },
        429 => Verdict::Inconclusive {
            explanation: "429 Too Many Requests: quota or rate limit reached — check the account's usage limits, then retry".to_owned(),
        },
        300..=399 => Verdict::Inconclusive {
            explanation: format!("{code}: the upstream redirected (keygate never follows redirects) — check the provider's base_url"),
        },
        500..=599 => Verdict::Inconclusive {
            explanation: format!("{code}: the upstream had a server error — retry later"),
        },
        _ => Verdict::Inconclusive {
            explanation: format!("{code}: unexpected answer to GET /v1/models — check the provider's base_url"),
        },
    }
}

/// Checks `secret` against `provider`.
pub async fn verify(
    upstream: &Upstream,
    provider: &Provider,
    secret: &Secret,
    timeout: Duration,
) -> Verdict {
    let Some((name, value)) = auth_header(provider.auth, secret) else {
        return Verdict::Rejected {
            status: 0,
            explanation: "the key contains characters that cannot be sent in an HTTP header"
                .to_owned(),
        };
    };
    let Some(uri) = forward::upstream_uri(provider, "/v1/models", None) else {
        return Verdict::Inconclusive {
            explanation: "the provider's base_url does not form a valid URL".to_owned(),
        };
    };
    let mut request = http::Request::new(OutboundBody::Full(None));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    request.headers_mut().insert(name, value);
    match tokio::time::timeout(timeout, upstream.send(request)).await {
        Ok(Ok(response)) => classify(response.status()),
        Ok(Err(error)) => Verdict::Inconclusive {
            explanation: format!(
                "network error, upstream unreachable at {}: {} — check connectivity and base_url",
                provider.origin,
                error.detail()
            ),
        },
        Err(_) => Verdict::Inconclusive {
            explanation: format!(
                "timeout: {} did not answer within {timeout:?} — check connectivity and base_url",
                provider.origin
            ),
        },
    }
}
