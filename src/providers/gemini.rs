//! Google Gemini through Google AI Studio's OpenAI-compatible endpoint
//! (`…/v1beta/openai/chat/completions`: the base names the version, so a
//! client's `{prefix}/v1/chat/completions` goes up without its `/v1`).
//!
//! As it really answers (public bug reports against that endpoint): errors
//! in Google's shape `{"error":{"code","message","status","details"}}`, often
//! as a **one-element JSON array** around it. A bad key is a **400**
//! `INVALID_ARGUMENT` whose `details` carry the reason `API_KEY_INVALID`
//! ("API key not valid. Please pass a valid API key."); a suspended or
//! leaked key a 403 `PERMISSION_DENIED`; a depleted prepaid balance a 402;
//! a quota or rate limit a 429 `RESOURCE_EXHAUSTED`. Any other 400 (an unknown
//! field, a bad argument) is the client's. The endpoint takes
//! `stream_options.include_usage`.

use super::{
    ExactFormat, KeyChars, KeyFormat, KeyVerdict, ProviderError, ProviderKind, VerifyRequest,
};

/// The Gemini kind.
pub struct Gemini;

const FORMATS: &[KeyFormat] = &[KeyFormat {
    prefix: "AIza",
    what: "Google API key",
    min: 35,
    max: 35,
    chars: KeyChars::Token,
}];

/// Google API keys: 35 characters after `AIza`.
const EXACT: &[ExactFormat] = &[ExactFormat::plain(
    "AIza",
    "API key",
    &[35],
    KeyChars::Token,
)];

impl ProviderKind for Gemini {
    fn gen_ai_system(&self) -> &'static str {
        "gcp.gemini"
    }

    fn name(&self) -> &'static str {
        "gemini"
    }

    fn display_name(&self) -> &'static str {
        "Google Gemini"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://generativelanguage.googleapis.com/v1beta/openai")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix("/v1") {
            Some(rest) if rest.starts_with('/') => rest,
            _ => path,
        }
    }

    fn takes_stream_usage_option(&self, path: &str) -> bool {
        path.ends_with("/chat/completions")
    }

    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/models",
            headers: &[],
        }
    }

    fn reads_body(&self, status: u16) -> bool {
        status == 400
    }

    fn judge_refusal(&self, status: u16, error: &ProviderError) -> KeyVerdict {
        match status {
            400 if error.reason.as_deref() == Some("API_KEY_INVALID") => KeyVerdict::Rejected,
            status => super::common_reading(status),
        }
    }

    fn console(&self) -> &'static str {
        "aistudio.google.com/apikey"
    }

    fn billing(&self) -> &'static str {
        "add prepaid credit (or enable auto-reload) for the key's project in Google AI Studio"
    }

    fn explain_rejection(
        &self,
        provider: &str,
        status: u16,
        _error: &ProviderError,
    ) -> Option<(String, String)> {
        match status {
            400 => Some((
                "Gemini answers a bad key with 400 API_KEY_INVALID: the key is invalid or deleted".into(),
                format!("create a new key at aistudio.google.com/apikey, then run `keygate key rotate {provider}` with it"),
            )),
            403 => Some((
                "Gemini refused the key (403 PERMISSION_DENIED): suspended, reported as leaked, or its project denied access".into(),
                format!("create a new key in another project at aistudio.google.com/apikey, then run `keygate key rotate {provider}` with it"),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(status: u16, body: &str) -> KeyVerdict {
        super::super::Kind::named("gemini")
            .unwrap()
            .judge(status, &ProviderError::parse(body.as_bytes()))
    }

    #[test]
    fn a_bad_key_is_a_400_with_its_reason_in_either_shape() {
        let bad = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
        assert_eq!(judge(400, bad), KeyVerdict::Rejected);
        assert_eq!(judge(400, &format!("[{bad}]")), KeyVerdict::Rejected);
        let field = r#"[{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"web_search_options\": Cannot find field.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"description":"Invalid JSON payload received."}]}]}}]"#;
        assert_eq!(judge(400, field), KeyVerdict::Unrelated);
    }

    #[test]
    fn leaked_keys_quota_and_credit() {
        let leaked = r#"[{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}]"#;
        assert_eq!(judge(403, leaked), KeyVerdict::Rejected);
        let quota = r#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(judge(429, quota), KeyVerdict::RateLimited);
        assert_eq!(judge(402, ""), KeyVerdict::OutOfCredit);
        assert!(Gemini.takes_stream_usage_option("/v1/chat/completions"));
        assert_eq!(
            Gemini.upstream_path("/v1/chat/completions"),
            "/chat/completions"
        );
        assert_eq!(Gemini.upstream_path("/v1"), "/v1");
    }
}
