//! `ProxyError`: every failure keygate itself answers on the client listener
//! (DESIGN §4), and the one place it becomes an HTTP response.
//!
//! Building an error never logs; the conductor logs once per request. Messages
//! never contain a secret: they name clients, providers and key ids only.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::time::Duration;

/// A request keygate answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No, malformed, unknown or revoked client key.
    #[error("invalid client key: {0}")]
    InvalidClientKey(&'static str),
    /// Client over its rpm/tpm.
    #[error("client {client} is over its rate limit")]
    ClientRateLimited {
        /// Client name.
        client: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Client over its token budget.
    #[error("client {client} has spent its token budget")]
    ClientBudgetExceeded {
        /// Client name.
        client: String,
    },
    /// Body larger than `max_request_body`.
    #[error("request body is larger than {limit} bytes")]
    RequestTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client paused too long mid-body.
    #[error("request body stalled for longer than {0:?}")]
    BodyTimeout(Duration),
    /// The whole body did not arrive within `body_timeout`.
    #[error("request body did not arrive within {0:?}")]
    BodyDeadline(Duration),
    /// The client's body could not be read.
    #[error("request body could not be read: {0}")]
    BadRequestBody(String),
    /// No provider for this path or model.
    #[error("no route for {0}")]
    UnknownRoute(String),
    /// Every key of the provider was rejected by the upstream.
    #[error("every upstream key of provider {provider} was rejected")]
    UpstreamKeyRejected {
        /// Provider name.
        provider: String,
    },
    /// The provider has no usable key in the vault.
    #[error("provider {provider} has no usable upstream key")]
    NoUpstreamKey {
        /// Provider name.
        provider: String,
    },
    /// Connect or transport failure.
    #[error("upstream {provider} unreachable: {detail}")]
    UpstreamUnavailable {
        /// Provider name.
        provider: String,
        /// The transport error (never holds a header value).
        detail: String,
    },
    /// No response headers within `upstream_first_byte_timeout`.
    #[error("upstream {provider} did not answer within {after:?}")]
    UpstreamTimeout {
        /// Provider name.
        provider: String,
        /// The timeout that expired.
        after: Duration,
    },
}

impl ProxyError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidClientKey(_) => StatusCode::UNAUTHORIZED,
            ProxyError::ClientRateLimited { .. } | ProxyError::ClientBudgetExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout(_) | ProxyError::BodyDeadline(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamKeyRejected { .. } | ProxyError::UpstreamUnavailable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NoUpstreamKey { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OpenAI-style `code` (DESIGN §4).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidClientKey(_) => "invalid_client_key",
            ProxyError::ClientRateLimited { .. } => "client_rate_limited",
            ProxyError::ClientBudgetExceeded { .. } => "client_budget_exceeded",
            ProxyError::RequestTooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout(_) | ProxyError::BodyDeadline(_) => "request_timeout",
            ProxyError::BadRequestBody(_) => "bad_request_body",
            ProxyError::UnknownRoute(_) => "unknown_route",
            ProxyError::UpstreamKeyRejected { .. } => "upstream_key_rejected",
            ProxyError::NoUpstreamKey { .. } => "no_upstream_key",
            ProxyError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ProxyError::InvalidClientKey(_) => "authentication_error",
            ProxyError::ClientRateLimited { .. } | ProxyError::ClientBudgetExceeded { .. } => {
                "rate_limit_error"
            }
            ProxyError::RequestTooLarge { .. }
            | ProxyError::BodyTimeout(_)
            | ProxyError::BodyDeadline(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::UnknownRoute(_) => "invalid_request_error",
            _ => "upstream_error",
        }
    }

    /// What the client reads: says what was wrong and what to do.
    fn message(&self) -> String {
        match self {
            ProxyError::InvalidClientKey(why) => format!(
                "Invalid keygate client key ({why}). This is the key keygate issued to your app \
                 (kg_…, from `keygate client add`), not the upstream provider's API key. \
                 Send it as `Authorization: Bearer kg_…` or `x-api-key: kg_…`."
            ),
            ProxyError::UpstreamKeyRejected { provider } => format!(
                "Every upstream API key keygate holds for provider `{provider}` was rejected by the \
                 upstream. The operator should run `keygate key verify {provider}`."
            ),
            ProxyError::NoUpstreamKey { provider } => format!(
                "keygate has no usable upstream key for provider `{provider}`. The operator should \
                 add one with `keygate key add {provider}`."
            ),
            ProxyError::UnknownRoute(path) => format!(
                "keygate has no route for `{path}`: use /v1/… or /{{provider}}/v1/…"
            ),
            other => {
                let mut text = other.to_string();
                if let Some(first) = text.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                text
            }
        }
    }

    /// The HTTP response: OpenAI error JSON, plus `Retry-After` on 429.
    pub fn into_response<B: From<Bytes>>(&self) -> Response<B> {
        let body = serde_json::json!({
            "error": {
                "message": self.message(),
                "type": self.kind(),
                "code": self.code(),
            }
        });
        let bytes = Bytes::from(body.to_string());
        let mut response = Response::new(B::from(bytes));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let retry_after = match self {
            ProxyError::ClientRateLimited { retry_after, .. } => Some(retry_after.as_secs()),
            // A spent budget does not refill by itself: ask for a long pause.
            ProxyError::ClientBudgetExceeded { .. } => Some(3600),
            _ => None,
        };
        if let Some(secs) = retry_after {
            let secs = secs.max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            self,
            ProxyError::BodyTimeout(_) | ProxyError::BadRequestBody(_)
        ) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Convenience for `Full<Bytes>` bodies.
pub type FullBody = Full<Bytes>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn rejected_keys_say_to_run_key_verify() {
        let err = ProxyError::UpstreamKeyRejected {
            provider: "openai".into(),
        };
        let response: Response<FullBody> = err.into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "upstream_key_rejected");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keygate key verify openai"));
    }
}
