//! How each real provider says no, for the mock upstream: a bad key, an
//! account out of credit, a rate limit — status codes, body shapes and headers
//! as the providers send them (their docs, their SDKs' error types, and the
//! answers quoted in public bug reports):
//!
//! - OpenAI: 401 `invalid_api_key` quoting a masked key; 429 `insufficient_quota`
//!   for an empty account; 429 `rate_limit_exceeded` with `x-ratelimit-reset-*`.
//! - xAI: **400** `{"code":"Client specified an invalid argument","error":"Incorrect
//!   API key provided: xa***yz. …"}` for a bad key (flat body, not OpenAI's shape);
//!   403 "…has either used all available credits or reached its monthly spending
//!   limit…" for an empty team; 429 for a rate limit.
//! - Anthropic: 401 `authentication_error`; 400 `invalid_request_error` "Your credit
//!   balance is too low…"; 429 `rate_limit_error` with `retry-after`; every request
//!   needs `anthropic-version`.
//! - OpenRouter: 401 `{"error":{"message":"User not found.","code":401}}`; 402
//!   "Insufficient credits…"; 429; `/v1/models` answers without any key.
//! - Gemini (AI Studio's OpenAI-compatible endpoint, under `/v1beta/openai`):
//!   Google's error object wrapped in a **one-element array** (as public bug
//!   reports against that endpoint show): 400 `INVALID_ARGUMENT` with reason
//!   `API_KEY_INVALID` for a bad key, 402 for a depleted prepaid balance, 429
//!   `RESOURCE_EXHAUSTED` with a `RetryInfo` detail for a quota.
//! - Mistral: 401 `{"message":"Unauthorized","request_id":…}`; 402 (a status
//!   its docs list; no public body, so the mock uses its error object); 429
//!   `{"object":"error","type":"rate_limited","code":"1300"}`; a request with a
//!   field it does not know (`stream_options`) is a 422 `extra_forbidden`.
//! - Groq: 401 `invalid_api_key` "Invalid API Key"; 429 `rate_limit_exceeded`
//!   with `retry-after` and `x-ratelimit-*` (Go-duration resets). Groq
//!   documents no out-of-credit answer: the mock's 402 stands for the
//!   generic reading keygate applies to it.
//! - DeepSeek: 401 `authentication_error` quoting `****` and the key's last
//!   four; 402 "Insufficient Balance"; 429 for the account's concurrency cap.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::mock::Body;

/// Which provider the mock answers like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    OpenAi,
    Xai,
    Anthropic,
    OpenRouter,
    Gemini,
    Mistral,
    Groq,
    DeepSeek,
}

impl Flavor {
    /// The path prefix the provider's OpenAI-compatible API lives under
    /// (Gemini's base names its version; the others answer at `/v1/…`).
    pub fn base_path(self) -> &'static str {
        match self {
            Flavor::Gemini => "/v1beta/openai",
            _ => "",
        }
    }
}

/// What the mock thinks of a presented key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStanding {
    /// Not a key of this account (or none sent).
    Bad,
    /// A real key whose account has no credit left.
    OutOfCredit,
    /// A real key that is over its rate limit right now.
    RateLimited,
}

fn json(status: u16, body: serde_json::Value, headers: &[(&str, &str)]) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    r
}

/// OpenAI's masking of a presented key: a few leading characters, stars, the last four.
pub fn openai_masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "****".to_string();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// xAI's masking: the first two and last two characters around `***`.
pub fn xai_masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 4 {
        return "***".to_string();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}***{tail}")
}

fn openai_error(message: &str, kind: &str, code: Option<&str>) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Google's error shape as Gemini's OpenAI-compatible endpoint sends it: a
/// one-element array around `{"error":{…}}`.
fn google_error(
    code: u16,
    status: &str,
    message: &str,
    details: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!([{"error": {"code": code, "message": message, "status": status, "details": details}}])
}

/// DeepSeek's masking of a presented key: `****` and the last four.
fn deepseek_masked(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

fn anthropic_error(kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CMockMockMockMock"})
}

/// The answer `flavor` gives to `key` (`""`: none was sent) in `standing`.
pub fn refusal(flavor: Flavor, standing: KeyStanding, key: &str) -> Response<Body> {
    match (flavor, standing) {
        (Flavor::OpenAi, KeyStanding::Bad) if key.is_empty() => json(
            401,
            openai_error("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.", "invalid_request_error", None),
            &[],
        ),
        (Flavor::OpenAi, KeyStanding::Bad) => json(
            401,
            openai_error(
                &format!("Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.", openai_masked(key)),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            &[],
        ),
        (Flavor::OpenAi, KeyStanding::OutOfCredit) => json(
            429,
            openai_error("You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.", "insufficient_quota", Some("insufficient_quota")),
            &[],
        ),
        (Flavor::OpenAi, KeyStanding::RateLimited) => json(
            429,
            openai_error("Rate limit reached for gpt-4o in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more.", "requests", Some("rate_limit_exceeded")),
            &[
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "20s"),
            ],
        ),
        (Flavor::Xai, KeyStanding::Bad) => json(
            400,
            serde_json::json!({
                "code": "Client specified an invalid argument",
                "error": format!("Incorrect API key provided: {}. You can obtain an API key from https://console.x.ai.", xai_masked(key)),
            }),
            &[],
        ),
        (Flavor::Xai, KeyStanding::OutOfCredit) => json(
            403,
            serde_json::json!({
                "code": "The caller does not have permission to execute the specified operation",
                "error": "Your team 0c7a4f2e-5b1d-4e9a-8f3c-2d6b9e1a7c40 has either used all available credits or reached its monthly spending limit. To continue making API requests, please purchase more credits or raise your spending limit.",
            }),
            &[],
        ),
        (Flavor::Xai, KeyStanding::RateLimited) => json(
            429,
            serde_json::json!({
                "code": "Some resource has been exhausted",
                "error": "Too many requests: you have exceeded the rate limit of 60 requests per minute for grok-3. Please retry later.",
            }),
            &[("retry-after", "20")],
        ),
        (Flavor::Anthropic, KeyStanding::Bad) => json(
            401,
            anthropic_error("authentication_error", "invalid x-api-key"),
            &[("request-id", "req_011CMockMockMockMock")],
        ),
        (Flavor::Anthropic, KeyStanding::OutOfCredit) => json(
            400,
            anthropic_error("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."),
            &[("request-id", "req_011CMockMockMockMock")],
        ),
        (Flavor::Anthropic, KeyStanding::RateLimited) => json(
            429,
            anthropic_error("rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."),
            &[("retry-after", "20"), ("anthropic-ratelimit-requests-remaining", "0")],
        ),
        (Flavor::OpenRouter, KeyStanding::Bad) if key.is_empty() => json(
            401,
            serde_json::json!({"error": {"message": "No auth credentials found", "code": 401}}),
            &[],
        ),
        (Flavor::OpenRouter, KeyStanding::Bad) => json(
            401,
            serde_json::json!({"error": {"message": "User not found.", "code": 401}}),
            &[],
        ),
        (Flavor::OpenRouter, KeyStanding::OutOfCredit) => json(
            402,
            serde_json::json!({"error": {"message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits", "code": 402}}),
            &[],
        ),
        (Flavor::OpenRouter, KeyStanding::RateLimited) => json(
            429,
            serde_json::json!({"error": {"message": "Rate limit exceeded: limit_rpm/openai/gpt-4o. High demand for openai/gpt-4o on OpenRouter - limited to 20 requests per minute. Please retry shortly.", "code": 429}}),
            &[("retry-after", "20")],
        ),
        (Flavor::Gemini, KeyStanding::Bad) => json(
            400,
            google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", serde_json::json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}
            ])),
            &[],
        ),
        (Flavor::Gemini, KeyStanding::OutOfCredit) => json(
            402,
            google_error(402, "RESOURCE_EXHAUSTED", "Your prepaid credit balance is depleted. Add credits or enable auto-reload in Google AI Studio to continue.", serde_json::json!([])),
            &[],
        ),
        (Flavor::Gemini, KeyStanding::RateLimited) => json(
            429,
            google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 20, model: gemini-2.5-flash\nPlease retry in 20.4s.", serde_json::json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "20"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}
            ])),
            &[],
        ),
        (Flavor::Mistral, KeyStanding::Bad) => json(
            401,
            serde_json::json!({"message": "Unauthorized", "request_id": "c61f2f15feca71626a990e3740f99245"}),
            &[],
        ),
        (Flavor::Mistral, KeyStanding::OutOfCredit) => json(
            402,
            serde_json::json!({"object": "error", "message": "Payment required: your workspace has no credit left.", "type": "payment_required", "param": null, "code": "1600"}),
            &[],
        ),
        (Flavor::Mistral, KeyStanding::RateLimited) => json(
            429,
            serde_json::json!({"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": null, "code": "1300"}),
            &[
                ("retry-after", "20"),
                ("x-ratelimit-limit-req-minute", "60"),
                ("x-ratelimit-remaining-req-minute", "0"),
            ],
        ),
        (Flavor::Groq, KeyStanding::Bad) => json(
            401,
            serde_json::json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            &[("x-groq-region", "us-west-1")],
        ),
        (Flavor::Groq, KeyStanding::OutOfCredit) => json(
            402,
            serde_json::json!({"error": {"message": "Your organization has reached its spend limit. Raise it at https://console.groq.com/settings/billing", "type": "invalid_request_error", "code": "spend_limit_reached"}}),
            &[],
        ),
        (Flavor::Groq, KeyStanding::RateLimited) => json(
            429,
            serde_json::json!({"error": {"message": "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01mock` service tier `on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 2m59.56s.", "type": "requests", "code": "rate_limit_exceeded"}}),
            &[
                ("retry-after", "20"),
                ("x-ratelimit-limit-requests", "30"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2m59.56s"),
            ],
        ),
        (Flavor::DeepSeek, KeyStanding::Bad) => json(
            401,
            serde_json::json!({"error": {"message": format!("Authentication Fails, Your api key: {} is invalid", deepseek_masked(key)), "type": "authentication_error", "param": null, "code": "invalid_request_error"}}),
            &[],
        ),
        (Flavor::DeepSeek, KeyStanding::OutOfCredit) => json(
            402,
            serde_json::json!({"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": null, "code": "invalid_request_error"}}),
            &[],
        ),
        (Flavor::DeepSeek, KeyStanding::RateLimited) => json(
            429,
            serde_json::json!({"error": {"message": "Rate Limit Reached", "type": "rate_limit_error", "param": null, "code": "invalid_request_error"}}),
            &[],
        ),
    }
}

/// Anthropic refuses a request without `anthropic-version`.
pub fn anthropic_version_missing() -> Response<Body> {
    json(
        400,
        anthropic_error(
            "invalid_request_error",
            "anthropic-version: header is required",
        ),
        &[],
    )
}

/// OpenRouter's `GET /api/v1/key` for an accepted key.
pub fn openrouter_key_info() -> Response<Body> {
    json(
        200,
        serde_json::json!({"data": {"label": "sk-or-v1-0e6...1c96", "limit": null, "limit_remaining": null, "usage": 0.0, "is_free_tier": false, "is_provisioning_key": false}}),
        &[],
    )
}

/// Mistral's answer to a request field it does not know (its API validates
/// strictly, `stream_options` included).
pub fn mistral_extra_forbidden(field: &str) -> Response<Body> {
    json(
        422,
        serde_json::json!({"object": "error", "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", field, "include_usage"], "msg": "Extra inputs are not permitted", "input": true}]}, "type": "invalid_request_error", "param": null, "code": null}),
        &[],
    )
}

/// Google's 404 for a path its OpenAI-compatible endpoint does not have.
pub fn gemini_not_found() -> Response<Body> {
    json(
        404,
        google_error(
            404,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
            serde_json::json!([]),
        ),
        &[],
    )
}

/// An OpenAI-style error body for a status (the mock's own 400/404 answers).
pub fn openai_style(status: u16, message: &str, code: Option<&str>) -> Response<Body> {
    json(
        status,
        openai_error(message, "invalid_request_error", code),
        &[],
    )
}

/// What a provider says is left of a key's request limit, in its own
/// headers: Anthropic's `anthropic-ratelimit-requests-*` (the reset an RFC
/// 3339 instant, rounded up to the second as Anthropic sends it), everyone
/// else's OpenAI-style `x-ratelimit-*` (the reset a Go duration).
pub fn rate_limit_headers(
    flavor: Flavor,
    limit: u64,
    left: u64,
    resets_in: std::time::Duration,
) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = match flavor {
        Flavor::Anthropic => {
            let at =
                std::time::SystemTime::now() + resets_in + std::time::Duration::from_millis(999);
            let at = humantime::format_rfc3339_seconds(at).to_string();
            vec![
                ("anthropic-ratelimit-requests-limit", limit.to_string()),
                ("anthropic-ratelimit-requests-remaining", left.to_string()),
                ("anthropic-ratelimit-requests-reset", at.clone()),
                ("anthropic-ratelimit-tokens-limit", "400000".to_owned()),
                ("anthropic-ratelimit-tokens-remaining", "399000".to_owned()),
                ("anthropic-ratelimit-tokens-reset", at),
            ]
        }
        _ => {
            let reset = format!("{}ms", resets_in.as_millis().max(1));
            vec![
                ("x-ratelimit-limit-requests", limit.to_string()),
                ("x-ratelimit-remaining-requests", left.to_string()),
                ("x-ratelimit-reset-requests", reset),
                ("x-ratelimit-limit-tokens", "400000".to_owned()),
                ("x-ratelimit-remaining-tokens", "399000".to_owned()),
                ("x-ratelimit-reset-tokens", "6m0s".to_owned()),
            ]
        }
    };
    pairs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
}
