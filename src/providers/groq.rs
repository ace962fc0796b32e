//! Groq (api.groq.com/openai). OpenAI's error shape: a bad key is a 401
//! `invalid_api_key` ("Invalid API Key"), a rate limit a 429
//! `rate_limit_exceeded` (with `retry-after` and `x-ratelimit-*` whose resets
//! are Go durations such as `2m59.56s`); 498 (flex capacity) and 499
//! (cancelled) say nothing about the key. It takes `stream_options` and also
//! reports a stream's usage in the last chunk's `x_groq.usage`.

use super::{ExactFormat, KeyChars, KeyFormat, ProviderKind};

/// The Groq kind.
pub struct Groq;

const FORMATS: &[KeyFormat] = &[KeyFormat {
    prefix: "gsk_",
    what: "key",
    min: 16,
    max: 256,
    chars: KeyChars::Token,
}];

/// Keys as Groq issues them: 52 letters and digits.
const EXACT: &[ExactFormat] = &[ExactFormat::plain(
    "gsk_",
    "API key",
    &[52],
    KeyChars::Alnum,
)];

impl ProviderKind for Groq {
    /// Groq's `x-ratelimit-*` headers: requests per day, tokens per minute, resets as Go durations (`2m59.56s`).
    fn rate_limits(&self, headers: &http::HeaderMap) -> super::RateLimits {
        super::rate_limits::x_ratelimit(headers)
    }

    fn name(&self) -> &'static str {
        "groq"
    }

    fn display_name(&self) -> &'static str {
        "Groq"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.groq.com/openai")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn console(&self) -> &'static str {
        "console.groq.com/keys"
    }

    fn billing(&self) -> &'static str {
        "check the organisation's plan and spend limit at console.groq.com/settings/billing"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{KeyVerdict, ProviderError};

    #[test]
    fn a_bad_key_and_a_rate_limit_and_groqs_own_codes() {
        let bad = ProviderError::parse(br#"{"error":{"message":"Invalid API Key","type":"invalid_request_error","code":"invalid_api_key"}}"#);
        assert_eq!(Groq.judge_refusal(401, &bad), KeyVerdict::Rejected);
        let e = ProviderError::default();
        assert_eq!(Groq.judge_refusal(429, &e), KeyVerdict::RateLimited);
        assert_eq!(Groq.judge_refusal(498, &e), KeyVerdict::Unrelated);
        assert_eq!(Groq.judge_refusal(404, &e), KeyVerdict::Unrelated);
    }
}
