//! `ProxyError`: every failure keygate itself answers on the client listener
//! (docs/design.md §4), and the one place it becomes an HTTP response.
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
    /// No, malformed, unknown or revoked client key: which case it is.
    #[error("invalid client key ({})", .0.reason())]
    InvalidClientKey(AuthFailure),
    /// Client over its rpm/tpm.
    #[error("client {client} is over its rate limit")]
    ClientRateLimited {
        /// Client name.
        client: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Client over a budget (tokens or dollars) for its period.
    #[error("client {client} has spent its budget")]
    ClientBudgetExceeded {
        /// Client name.
        client: String,
        /// What is left of its dollar budget, in micro-dollars (the
        /// `x-keygate-budget-remaining-usd` header), when it has one.
        remaining_usd_micros: Option<u64>,
        /// Until its period starts over (`None`: a lifetime budget).
        retry_after: Option<Duration>,
    },
    /// A client with a dollar budget asked for a model no price row covers.
    #[error("model `{model}` has no price, and client {client} has a dollar budget")]
    ModelNotPriced {
        /// Client name.
        client: String,
        /// The model asked for.
        model: String,
        /// The provider it would go to.
        provider: String,
        /// Its price list (a kind's name).
        price_list: String,
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
    /// A path servers would normalise to another path (`\\`, `%2e`, `%2f`,
    /// `%5c`, `%25`, a malformed escape, a dot segment).
    #[error("path {0} reads differently once normalised")]
    InvalidPath(String),
    /// No provider for this path or model.
    #[error("no route for {0}")]
    UnknownRoute(String),
    /// Every key of the provider was rejected by the upstream.
    #[error("every upstream key of provider {provider} was rejected")]
    UpstreamKeyRejected {
        /// Provider name.
        provider: String,
    },
    /// Every key of the provider the request could use is at its rate limit
    /// (the provider said 0 left) or at its `max_in_flight`: no request is
    /// sent only to come back 429 (docs/design.md §17).
    #[error("every upstream key of provider {provider} is at its rate limit or its max_in_flight")]
    KeysAtCapacity {
        /// Provider name.
        provider: String,
        /// When the first of them has room again.
        retry_after: Duration,
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
    /// The upstream's error body is larger than keygate can scrub.
    #[error(
        "The upstream answered {status} with an error body larger than {limit} bytes; keygate \
         does not pass on an error body it cannot scrub of key material"
    )]
    UpstreamErrorTooLarge {
        /// The upstream's status.
        status: u16,
        /// The scrub limit.
        limit: usize,
    },
    /// The upstream answered in a content coding keygate cannot decode.
    #[error("upstream answered in a content coding keygate cannot read: {detail}")]
    UpstreamBadEncoding {
        /// What was wrong (never quotes a body byte).
        detail: String,
    },
    /// The client's body is in a content coding keygate cannot decode.
    #[error("request body content coding is not supported: {0}")]
    UnsupportedRequestEncoding(String),
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
    /// An upstream answer in a coding keygate cannot decode (502): its usage
    /// and key echoes could not be read.
    pub fn upstream_encoding(error: crate::net::content_coding::CodingError) -> ProxyError {
        ProxyError::UpstreamBadEncoding {
            detail: error.to_string(),
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidClientKey(_) => StatusCode::UNAUTHORIZED,
            ProxyError::ModelNotPriced { .. } => StatusCode::FORBIDDEN,
            ProxyError::ClientRateLimited { .. }
            | ProxyError::ClientBudgetExceeded { .. }
            | ProxyError::KeysAtCapacity { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout(_) | ProxyError::BodyDeadline(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequestBody(_) | ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamKeyRejected { .. }
            | ProxyError::UpstreamUnavailable { .. }
            | ProxyError::UpstreamErrorTooLarge { .. }
            | ProxyError::UpstreamBadEncoding { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UnsupportedRequestEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::NoUpstreamKey { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OpenAI-style `code` (docs/design.md §4).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidClientKey(_) => "invalid_client_key",
            ProxyError::ClientRateLimited { .. } => "client_rate_limited",
            ProxyError::ClientBudgetExceeded { .. } => "client_budget_exceeded",
            ProxyError::ModelNotPriced { .. } => "model_not_priced",
            ProxyError::RequestTooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout(_) | ProxyError::BodyDeadline(_) => "request_timeout",
            ProxyError::BadRequestBody(_) => "bad_request_body",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::UnknownRoute(_) => "unknown_route",
            ProxyError::UpstreamKeyRejected { .. } => "upstream_key_rejected",
            ProxyError::NoUpstreamKey { .. } => "no_upstream_key",
            ProxyError::KeysAtCapacity { .. } => "upstream_keys_at_capacity",
            ProxyError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamErrorTooLarge { .. } => "upstream_error_too_large",
            ProxyError::UpstreamBadEncoding { .. } => "upstream_bad_encoding",
            ProxyError::UnsupportedRequestEncoding(_) => "unsupported_content_encoding",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ProxyError::InvalidClientKey(_) => "authentication_error",
            ProxyError::ClientRateLimited { .. }
            | ProxyError::ClientBudgetExceeded { .. }
            | ProxyError::KeysAtCapacity { .. } => "rate_limit_error",
            ProxyError::RequestTooLarge { .. }
            | ProxyError::BodyTimeout(_)
            | ProxyError::BodyDeadline(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::InvalidPath(_)
            | ProxyError::UnsupportedRequestEncoding(_)
            | ProxyError::UnknownRoute(_) => "invalid_request_error",
            ProxyError::ModelNotPriced { .. } => "permission_error",
            _ => "upstream_error",
        }
    }

    /// What the client reads: says what was wrong and what to do.
    fn message(&self) -> String {
        match self {
            ProxyError::InvalidClientKey(why) => client_key_message(why),
            ProxyError::UpstreamKeyRejected { provider } => format!(
                "Every upstream API key keygate holds for provider `{provider}` was rejected by the \
                 upstream. The operator should run `keygate key verify {provider}`."
            ),
            ProxyError::KeysAtCapacity {
                provider,
                retry_after,
            } => format!(
                "Every upstream API key keygate holds for provider `{provider}` is at the rate \
                 limit the provider reported (or at the number of requests keygate keeps open on \
                 it); the first has room again in {}s. keygate did not send the request, so it \
                 cost nothing. Retry after that, or the operator adds keys to the pool.",
                retry_after.as_secs().max(1)
            ),
            ProxyError::NoUpstreamKey { provider } => format!(
                "keygate has no usable upstream key for provider `{provider}`. The operator should \
                 add one with `keygate key add {provider}`."
            ),
            ProxyError::InvalidPath(path) => format!(
                "keygate refuses the path `{path}`: a backslash, an encoded dot, slash, backslash \
                 or percent (%2e, %2f, %5c, %25), an encoded control byte, a malformed % escape \
                 or a `.`/`..` segment reads as another path on many servers. Send the path as \
                 the API documents it."
            ),
            ProxyError::UnknownRoute(path) => format!(
                "keygate has no route for `{path}`: use /v1/… or /{{provider}}/v1/…"
            ),
            ProxyError::ModelNotPriced {
                client,
                model,
                provider,
                price_list,
            } => format!(
                "Client `{client}` has a dollar budget, and keygate has no price for model \
                 `{model}` at provider `{provider}`, so it cannot keep the request within the \
                 budget. Use a priced model (`keygate prices {provider}`), or the operator adds \
                 a row: [prices.\"{price_list}/{model}\"] with input and output in dollars per \
                 million tokens."
            ),
            ProxyError::ClientBudgetExceeded {
                client,
                retry_after,
                ..
            } => match retry_after {
                Some(after) => format!(
                    "Client `{client}` has spent its budget for this period; it starts over in \
                     {}s.",
                    after.as_secs()
                ),
                None => format!(
                    "Client `{client}` has spent its budget. The operator can raise it with \
                     `keygate client limits {client}`."
                ),
            },
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
            ProxyError::ClientRateLimited { retry_after, .. }
            | ProxyError::KeysAtCapacity { retry_after, .. } => Some(retry_after.as_secs()),
            // A budget per period refills when the period starts over; a
            // lifetime budget does not by itself: ask for a long pause.
            ProxyError::ClientBudgetExceeded { retry_after, .. } => {
                Some(retry_after.map_or(3600, |after| after.as_secs()))
            }
            _ => None,
        };
        if let ProxyError::ClientBudgetExceeded {
            remaining_usd_micros: Some(micros),
            ..
        } = self
        {
            let remaining = crate::vault::client_record::dollars(*micros);
            if let Ok(value) = HeaderValue::from_str(&remaining) {
                response
                    .headers_mut()
                    .insert("x-keygate-budget-remaining-usd", value);
            }
        }
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

/// The 401 text for each [`AuthFailure`]: it is about
/// the keygate client key (not the upstream key), which case it is, and what
/// to do. Never quotes what was presented.
fn client_key_message(why: &AuthFailure) -> String {
    const NOT_UPSTREAM: &str = "This is about the keygate client key keygate issued to your app \
         (kg_…, from `keygate client add`), not the upstream provider's API key, which keygate \
         holds itself.";
    const SEND: &str =
        "Send it as `Authorization: Bearer kg_…`, `x-api-key: kg_…` or `api-key: kg_…`.";
    match why {
        AuthFailure::Missing => format!("No keygate client key was sent. {SEND} {NOT_UPSTREAM}"),
        AuthFailure::NoBearerScheme => format!(
            "The Authorization header has no `Bearer ` scheme, so it carries no keygate client \
             key. {SEND} {NOT_UPSTREAM}"
        ),
        &AuthFailure::ProviderKey(provider) => {
            // "an OpenAI", "an xAI", "a Groq".
            let article = match provider.as_bytes().first() {
                Some(b'A' | b'E' | b'I' | b'O' | b'U' | b'x') => "an",
                _ => "a",
            };
            format!(
                "The key sent looks like {article} {provider} API key, not a keygate client key. Your app \
                 must send the kg_… key keygate issued to it (from `keygate client add`); keygate \
                 holds the {provider} keys itself. Treat that {provider} key as exposed: it was \
                 handed to the wrong place, so rotate it at {provider}. {SEND}"
            )
        }
        AuthFailure::BadChecksum => format!(
            "The keygate client key sent starts with kg_ but fails its checksum: it was mistyped, \
             cut short or has extra characters. Copy the whole key again (kg_ and 42 letters and \
             digits, as `keygate client add` printed it). {NOT_UPSTREAM}"
        ),
        AuthFailure::Malformed => format!(
            "The key sent is not a keygate client key (those are kg_ followed by 42 letters and \
             digits). {SEND} {NOT_UPSTREAM}"
        ),
        // A decoy is told exactly what an unknown key is told.
        AuthFailure::Unknown | AuthFailure::Decoy(_) => format!(
            "The keygate client key sent is well-formed but unknown to this keygate (issued by \
             another keygate or vault?). Ask the operator for a key (`keygate client add`). \
             {NOT_UPSTREAM}"
        ),
        AuthFailure::Revoked => format!(
            "The keygate client key sent was revoked. Ask the operator for a new one \
             (`keygate client add`). {NOT_UPSTREAM}"
        ),
        AuthFailure::Rotated => format!(
            "This keygate client key was rotated: its client has a newer key (`keygate client \
             rotate`), and this one's grace period is over. Send the new key (ask the operator \
             for it). {NOT_UPSTREAM}"
        ),
    }
}

/// Convenience for `Full<Bytes>` bodies.
pub type FullBody = Full<Bytes>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn each_client_key_refusal_says_what_to_do() {
        use super::AuthFailure;
        let cases = [
            (AuthFailure::Missing, "No keygate client key was sent"),
            (AuthFailure::NoBearerScheme, "no `Bearer ` scheme"),
            (
                AuthFailure::ProviderKey("Anthropic"),
                "rotate it at Anthropic",
            ),
            (AuthFailure::BadChecksum, "mistyped, cut short"),
            (AuthFailure::Malformed, "not a keygate client key"),
            (AuthFailure::Unknown, "unknown to this keygate"),
            (AuthFailure::Revoked, "was revoked"),
            (AuthFailure::Rotated, "client key was rotated"),
        ];
        for (why, says) in cases {
            let err = ProxyError::InvalidClientKey(why.clone());
            assert_eq!(
                (err.status(), err.code()),
                (StatusCode::UNAUTHORIZED, "invalid_client_key")
            );
            let message = err.message();
            assert!(message.contains(says), "{why:?}: {message}");
            assert!(message.contains("kg_"), "{why:?}: {message}");
        }
    }

    #[tokio::test]
    async fn a_decoy_is_answered_byte_for_byte_as_an_unknown_key() {
        let read = |why: AuthFailure| async move {
            let error = ProxyError::InvalidClientKey(why);
            let response: Response<FullBody> = error.into_response();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (
                parts.status,
                format!("{:?}", parts.headers),
                body,
                error.code(),
            )
        };
        let decoy = AuthFailure::Decoy(std::sync::Arc::from("old-env-file"));
        assert_eq!(decoy.reason(), AuthFailure::Unknown.reason());
        assert_eq!(read(decoy).await, read(AuthFailure::Unknown).await);
    }

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

impl From<crate::usage::limits::LimitError> for ProxyError {
    fn from(error: crate::usage::limits::LimitError) -> Self {
        use crate::usage::limits::LimitError;
        match error {
            LimitError::RateLimited {
                client,
                retry_after,
            } => ProxyError::ClientRateLimited {
                client,
                retry_after,
            },
            LimitError::BudgetExceeded {
                client,
                remaining_usd_micros,
                retry_after,
                ..
            } => ProxyError::ClientBudgetExceeded {
                client,
                remaining_usd_micros,
                retry_after,
            },
        }
    }
}

/// Why a request's client key was refused (carried by
/// [`ProxyError::InvalidClientKey`]; the message is written in `error.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential header at all (or an empty one).
    Missing,
    /// `Authorization` carried something without the `Bearer ` scheme
    /// (`Authorization: kg_…`, `Token …`, `Basic …`).
    NoBearerScheme,
    /// An upstream provider's API key, sent to keygate by mistake: the
    /// provider as a user knows it (`crate::providers::lookalike`).
    ProviderKey(&'static str),
    /// `kg_…` but the checksum does not match: mistyped, cut short or extended.
    BadChecksum,
    /// Not a keygate key at all.
    Malformed,
    /// A well-formed keygate key this vault does not know.
    Unknown,
    /// A key of a client that was revoked.
    Revoked,
    /// A rotated client's old key, after its grace (`client rotate`).
    Rotated,
    /// A decoy's key (`client add --decoy`), named for the conductor's
    /// bookkeeping. Answered, counted and logged exactly as
    /// [`AuthFailure::Unknown`]: nothing the presenter can see tells them.
    Decoy(std::sync::Arc<str>),
}

impl AuthFailure {
    /// Every `reason` label value of `keygate_client_auth_failures_total`.
    pub const REASONS: [&'static str; 8] = [
        "missing",
        "no_bearer_scheme",
        "provider_key",
        "bad_checksum",
        "malformed",
        "unknown",
        "revoked",
        "rotated",
    ];

    /// The `reason` label and log field value.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::NoBearerScheme => "no_bearer_scheme",
            AuthFailure::ProviderKey(_) => "provider_key",
            AuthFailure::BadChecksum => "bad_checksum",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown | AuthFailure::Decoy(_) => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Rotated => "rotated",
        }
    }
}
