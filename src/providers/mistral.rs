//! Mistral (api.mistral.ai). A bad key is a 401 (`{"message":"Unauthorized",
//! "request_id":…}` or `{"detail":"Unauthorized"}`); no credit a 402; a rate
//! limit a 429 (`{"object":"error","type":"rate_limited","code":"1300"}`).
//! Its API refuses fields it does not know with a 422 (`extra_forbidden`),
//! `stream_options` among them, and reports a stream's usage unasked in the
//! last chunk. Keys have no prefix, so none is recognised by its shape.

use super::ProviderKind;

/// The Mistral kind.
pub struct Mistral;

impl ProviderKind for Mistral {
    fn gen_ai_system(&self) -> &'static str {
        "mistral_ai"
    }

    fn name(&self) -> &'static str {
        "mistral"
    }

    fn display_name(&self) -> &'static str {
        "Mistral"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.mistral.ai")
    }

    fn takes_stream_usage_option(&self, _path: &str) -> bool {
        false
    }

    fn console(&self) -> &'static str {
        "console.mistral.ai/api-keys"
    }

    fn billing(&self) -> &'static str {
        "add credit or raise the workspace's limits at console.mistral.ai (Billing)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{KeyVerdict, ProviderError};

    #[test]
    fn a_bad_key_no_credit_and_a_rate_limit() {
        let e = ProviderError::parse(br#"{"detail":"Unauthorized"}"#);
        assert_eq!(Mistral.judge_refusal(401, &e), KeyVerdict::Rejected);
        assert_eq!(Mistral.judge_refusal(402, &e), KeyVerdict::OutOfCredit);
        let e = ProviderError::parse(br#"{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}"#);
        assert_eq!(Mistral.judge_refusal(429, &e), KeyVerdict::RateLimited);
        assert_eq!(Mistral.judge_refusal(422, &e), KeyVerdict::Unrelated);
        assert!(!Mistral.takes_stream_usage_option("/v1/chat/completions"));
    }
}
