//! Any other OpenAI-compatible server (vLLM, llama.cpp, LiteLLM, …): the
//! common reading of status codes — 401 or 403 a bad key, 402 no credit,
//! 429 a rate limit — and nothing else assumed.

use super::ProviderKind;

/// The generic kind.
pub struct Generic;

impl ProviderKind for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn display_name(&self) -> &'static str {
        "an OpenAI-compatible provider"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{KeyVerdict, ProviderError};

    #[test]
    fn the_common_reading() {
        let e = ProviderError::default();
        assert_eq!(Generic.judge_refusal(401, &e), KeyVerdict::Rejected);
        assert_eq!(Generic.judge_refusal(402, &e), KeyVerdict::OutOfCredit);
        assert_eq!(Generic.judge_refusal(429, &e), KeyVerdict::RateLimited);
        assert_eq!(Generic.judge_refusal(500, &e), KeyVerdict::Unrelated);
    }
}
