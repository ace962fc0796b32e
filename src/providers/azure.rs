//! Azure OpenAI (`api-key` header, `api-version` queries, a base path per
//! resource). A bad key is a 401 or 403; a rate limit a 429; Azure bills by
//! subscription, so no answer means "out of credit".

use super::{AuthStyle, KeyVerdict, ProviderError, ProviderKind, VerifyRequest};

/// The Azure OpenAI kind.
pub struct Azure;

impl ProviderKind for Azure {
    fn gen_ai_system(&self) -> &'static str {
        "az.ai.openai"
    }

    /// Azure OpenAI's `x-ratelimit-remaining-requests` / `-tokens` (it sends no reset headers).
    fn rate_limits(&self, headers: &http::HeaderMap) -> super::RateLimits {
        super::rate_limits::x_ratelimit(headers)
    }

    fn name(&self) -> &'static str {
        "azure"
    }

    fn display_name(&self) -> &'static str {
        "Azure OpenAI"
    }

    fn default_auth(&self) -> AuthStyle {
        AuthStyle::ApiKey
    }

    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/models?api-version=2024-10-21",
            headers: &[],
        }
    }

    fn judge_refusal(&self, status: u16, _error: &ProviderError) -> KeyVerdict {
        match status {
            401 | 403 => KeyVerdict::Rejected,
            429 => KeyVerdict::RateLimited,
            _ => KeyVerdict::Unrelated,
        }
    }

    /// Azure OpenAI's global deployments are billed at OpenAI's list
    /// prices; a deployment named other than its model needs a
    /// `[prices."PROVIDER/DEPLOYMENT"]` row.
    fn price_list(&self) -> &'static str {
        "openai"
    }

    fn console(&self) -> &'static str {
        "the Azure portal (Keys and Endpoint)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_means_out_of_credit() {
        let e = ProviderError::default();
        assert_eq!(Azure.judge_refusal(402, &e), KeyVerdict::Unrelated);
        assert_eq!(Azure.judge_refusal(403, &e), KeyVerdict::Rejected);
        assert_eq!(Azure.judge_refusal(429, &e), KeyVerdict::RateLimited);
    }
}
