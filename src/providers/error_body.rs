//! The error a provider put in its body, read from whichever shape it uses —
//! a leaf every kind's judge reads from. Pure: no I/O, no logging.

use serde::Deserialize;

/// The error a provider put in its body, read from whichever shape it uses:
/// OpenAI / OpenRouter / Azure / Groq / DeepSeek / Mistral
/// `{"error":{"message","type","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`, xAI's flat
/// `{"code":"…","error":"…"}`, Google's `{"error":{"code":400,"message",
/// "status","details":[{"reason"}]}}` (which Gemini's OpenAI-compatible
/// endpoint also sends as a one-element array), Mistral's flat
/// `{"object":"error","message","type","code"}`, or plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderError {
    /// `error.code` (OpenAI's `invalid_api_key`, OpenRouter's `402`, xAI's `code`).
    pub code: Option<String>,
    /// `error.type` (OpenAI's `insufficient_quota`, Anthropic's
    /// `authentication_error`), or Google's `error.status` (`INVALID_ARGUMENT`).
    pub kind: Option<String>,
    /// Google's machine-readable reason (`API_KEY_INVALID`) from `error.details`.
    pub reason: Option<String>,
    /// The human message, as the provider wrote it (may quote a masked key:
    /// callers scrub it before showing it).
    pub message: Option<String>,
}

/// The longest message kept from an error body.
pub(crate) const MAX_MESSAGE: usize = 400;

#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Str(String),
    Num(i64),
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::Str(s) => s,
            Text::Num(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Detail {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Nested {
    code: Option<Text>,
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    message: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Nested(Nested),
    Flat(String),
}

#[derive(Deserialize)]
struct Envelope {
    error: Option<ErrorField>,
    code: Option<Text>,
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    Object(Envelope),
    /// Gemini's OpenAI-compatible endpoint: `[{"error":{…}}]`.
    Array([Envelope; 1]),
}

fn clip(s: String) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

impl ProviderError {
    /// Reads the provider's error out of a (decoded) body; empty when it has none.
    pub fn parse(body: &[u8]) -> ProviderError {
        let envelope = match serde_json::from_slice::<Shape>(body) {
            Ok(Shape::Object(envelope)) => envelope,
            Ok(Shape::Array([envelope])) => envelope,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                return ProviderError {
                    message: (!text.trim().is_empty()).then(|| clip(text.into_owned())),
                    ..ProviderError::default()
                };
            }
        };
        match envelope.error {
            Some(ErrorField::Nested(e)) => ProviderError {
                code: e.code.map(Text::into_string),
                kind: e.kind.or(e.status),
                reason: e
                    .details
                    .into_iter()
                    .filter_map(|d| serde_json::from_value::<Detail>(d).ok())
                    .find_map(|d| d.reason),
                message: e.message.map(clip),
            },
            Some(ErrorField::Flat(message)) => ProviderError {
                code: envelope.code.map(Text::into_string),
                kind: envelope.kind,
                reason: None,
                message: Some(clip(message)),
            },
            None => ProviderError {
                code: envelope.code.map(Text::into_string),
                kind: envelope.kind,
                reason: None,
                message: envelope.message.map(clip),
            },
        }
    }

    /// True when the provider's code or type is `value`.
    pub fn is(&self, value: &str) -> bool {
        self.code.as_deref() == Some(value) || self.kind.as_deref() == Some(value)
    }

    /// True when the message begins with one of `prefixes` (lower case): a
    /// provider's own wording about the key, which a value the client sent
    /// (quoted later in the message) cannot imitate.
    pub fn message_starts_with(&self, prefixes: &[&str]) -> bool {
        let Some(message) = &self.message else {
            return false;
        };
        let lower = message.trim_start().to_ascii_lowercase();
        prefixes.iter().any(|p| lower.starts_with(p))
    }

    /// True when the message contains one of `needles` (lower case).
    pub fn message_has(&self, needles: &[&str]) -> bool {
        let Some(message) = &self.message else {
            return false;
        };
        let lower = message.to_ascii_lowercase();
        needles.iter().any(|n| lower.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_are_read() {
        let openai = ProviderError::parse(br#"{"error":{"message":"Incorrect API key provided: sk-ab***wxyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#);
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(openai.kind.as_deref(), Some("invalid_request_error"));
        let xai = ProviderError::parse(br#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***yz. You can obtain an API key from https://console.x.ai."}"#);
        assert_eq!(
            xai.code.as_deref(),
            Some("Client specified an invalid argument")
        );
        assert!(xai.message.unwrap().starts_with("Incorrect API key"));
        let anthropic = ProviderError::parse(br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_1"}"#);
        assert_eq!(anthropic.kind.as_deref(), Some("authentication_error"));
        let openrouter = ProviderError::parse(
            br#"{"error":{"message":"Insufficient credits.","code":402,"metadata":{}}}"#,
        );
        assert_eq!(openrouter.code.as_deref(), Some("402"));
        let text = ProviderError::parse(b"Bad Gateway");
        assert_eq!(text.message.as_deref(), Some("Bad Gateway"));
        assert_eq!(ProviderError::parse(b""), ProviderError::default());
        let long = ProviderError::parse("x".repeat(5000).as_bytes());
        assert!(long.message.unwrap().chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn google_errors_are_read_as_an_object_and_as_a_one_element_array() {
        let object = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
        let array = format!("[{object}]");
        for body in [object.to_owned(), array] {
            let e = ProviderError::parse(body.as_bytes());
            assert_eq!(e.code.as_deref(), Some("400"));
            assert_eq!(e.kind.as_deref(), Some("INVALID_ARGUMENT"));
            assert_eq!(e.reason.as_deref(), Some("API_KEY_INVALID"));
            assert!(e.message.unwrap().starts_with("API key not valid"));
        }
    }

    #[test]
    fn mistrals_flat_error_is_read() {
        let e = ProviderError::parse(br#"{"object":"error","message":"Service tier capacity exceeded for this model.","type":"service_tier_capacity_exceeded","param":null,"code":"3505"}"#);
        assert_eq!(e.kind.as_deref(), Some("service_tier_capacity_exceeded"));
        assert_eq!(e.code.as_deref(), Some("3505"));
    }
}
