//! Token usage in OpenAI-compatible response bodies: the `usage` object of a
//! JSON response or of an SSE chunk (chat, completions, embeddings, and the
//! Responses API's `response.usage`). Accounting only: no framing, no I/O.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// Tokens reported by the upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// Total tokens.
    pub total: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Self {
        Usage {
            prompt: raw.prompt_tokens,
            completion: raw.completion_tokens,
            total: raw
                .total_tokens
                .unwrap_or(raw.prompt_tokens + raw.completion_tokens),
        }
    }
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    response: Option<Nested>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// What one JSON document says about usage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The usage, if the document carries a non-null one.
    pub usage: Option<Usage>,
    /// True for the usage-only chunk that `stream_options.include_usage` adds
    /// (`"choices": []` with a usage object).
    pub usage_only_chunk: bool,
}

/// Reads usage from one JSON document (a response body or an SSE `data`).
/// Cheap on documents without usage: they are skipped before parsing.
pub fn find(json: &[u8]) -> Found {
    if !has_usage_object(json) {
        return Found::default();
    }
    let Ok(body) = serde_json::from_slice::<Body>(json) else {
        return Found::default();
    };
    let usage = body
        .usage
        .or_else(|| body.response.and_then(|r| r.usage))
        .map(Usage::from);
    Found {
        usage,
        usage_only_chunk: usage.is_some() && body.choices.is_some_and(|c| c.is_empty()),
    }
}

/// True when some `"usage"` key is followed by an object (not `null`):
/// streaming chunks carry `"usage":null` on every event, and parsing each of
/// them would cost far more than the bytes themselves.
fn has_usage_object(json: &[u8]) -> bool {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\"usage\""));
    finder.find_iter(json).any(|at| {
        json[at + 7..]
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
            == Some(&b'{')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_usage() {
        let found = find(br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#);
        assert_eq!(
            found.usage,
            Some(Usage {
                prompt: 12,
                completion: 30,
                total: 42
            })
        );
        assert!(!found.usage_only_chunk);
    }

    #[test]
    fn usage_only_stream_chunk_is_recognised() {
        let found = find(
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        );
        assert!(found.usage_only_chunk);
        assert_eq!(
            find(br#"{"choices":[{"delta":{}}],"usage":null}"#),
            Found::default()
        );
    }

    #[test]
    fn responses_api_and_embeddings() {
        let responses = find(br#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#);
        assert_eq!(
            responses.usage,
            Some(Usage {
                prompt: 5,
                completion: 7,
                total: 12
            })
        );
        let embeddings = find(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#);
        assert_eq!(
            embeddings.usage,
            Some(Usage {
                prompt: 8,
                completion: 0,
                total: 8
            })
        );
    }
}
