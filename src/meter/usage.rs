//! Token usage in OpenAI-compatible response bodies: the `usage` object of a
//! JSON response or of an SSE chunk (chat, completions, embeddings, and the
//! Responses API's `response.usage`). Accounting only: no framing, no I/O.

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
            // Saturating: an upstream's absurd counts must not wrap or panic.
            total: raw
                .total_tokens
                .unwrap_or(raw.prompt_tokens.saturating_add(raw.completion_tokens)),
        }
    }
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
/// Only the `usage` object itself is parsed: documents without one (every
/// streaming chunk but the last carries `"usage":null`) cost a substring search.
pub fn find(json: &[u8]) -> Found {
    let Some(object) = usage_object(json) else {
        return Found::default();
    };
    let mut deserializer = serde_json::Deserializer::from_slice(&json[object..]);
    let Ok(raw) = RawUsage::deserialize(&mut deserializer) else {
        return Found::default();
    };
    Found {
        usage: Some(raw.into()),
        usage_only_chunk: is_empty_choices(json),
    }
}

/// Parses the `usage` object at the start of `bytes` (whatever follows it),
/// returning it and its length; `None` if it is not whole there or not usage.
pub fn parse_object_prefix(bytes: &[u8]) -> Option<(Usage, usize)> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<RawUsage>();
    let raw = values.next()?.ok()?;
    Some((raw.into(), values.byte_offset()))
}

/// Offset of the `{` of the first `"usage"` key whose value is an object.
/// (`"usage"` cannot match inside a JSON string: quotes there are escaped.)
fn usage_object(json: &[u8]) -> Option<usize> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\"usage\""));
    finder.find_iter(json).find_map(|at| {
        let after = at + 7;
        let skip = json[after..]
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))?;
        (json[after + skip] == b'{').then_some(after + skip)
    })
}

fn is_empty_choices(json: &[u8]) -> bool {
    memchr::memmem::find_iter(json, b"\"choices\"").any(|at| {
        let rest = json[at + 9..]
            .iter()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        let mut rest = rest.copied();
        rest.next() == Some(b':') && rest.next() == Some(b'[') && rest.next() == Some(b']')
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

    #[test]
    fn absurd_counts_saturate_the_total() {
        let body = br#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#;
        let found = parse_object_prefix(body).map(|(usage, _)| usage.total);
        assert_eq!(found, Some(u64::MAX));
    }
}
