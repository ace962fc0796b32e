//! DeepSeek (api.deepseek.com, which also answers under `/v1`). OpenAI's
//! error shape with its own words: a bad key is a 401 `authentication_error`
//! ("Authentication Fails, Your api key: ****cd15 is invalid"); an empty
//! account a **402** "Insufficient Balance"; the account's concurrency cap a
//! 429; an unknown model a 400 "Model Not Exist". Keys are `sk-` and 32
//! lower-case hex digits.

use super::{ExactFormat, KeyChars, KeyFormat, ProviderKind, VerifyRequest};

/// The DeepSeek kind.
pub struct DeepSeek;

const FORMATS: &[KeyFormat] = &[KeyFormat {
    prefix: "sk-",
    what: "key",
    min: 32,
    max: 32,
    chars: KeyChars::Hex,
}];

/// Keys as DeepSeek issues them: 32 hex digits.
const EXACT: &[ExactFormat] = &[ExactFormat::plain("sk-", "API key", &[32], KeyChars::Hex)];

impl ProviderKind for DeepSeek {
    fn name(&self) -> &'static str {
        "deepseek"
    }

    fn display_name(&self) -> &'static str {
        "DeepSeek"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.deepseek.com")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/models",
            headers: &[],
        }
    }

    fn console(&self) -> &'static str {
        "platform.deepseek.com/api_keys"
    }

    fn billing(&self) -> &'static str {
        "top up the balance at platform.deepseek.com/top_up"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{KeyVerdict, ProviderError};

    #[test]
    fn insufficient_balance_is_out_of_credit() {
        let e = ProviderError::parse(br#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#);
        assert_eq!(DeepSeek.judge_refusal(402, &e), KeyVerdict::OutOfCredit);
        assert_eq!(DeepSeek.judge_refusal(401, &e), KeyVerdict::Rejected);
        assert_eq!(DeepSeek.judge_refusal(400, &e), KeyVerdict::Unrelated);
    }
}
