//! Token usage in response bodies: the `usage` object of a JSON response or
//! of an SSE event, in the shapes the providers write (docs/design.md §11):
//!
//! - OpenAI Chat Completions, Completions, Embeddings (and the kinds that
//!   answer in their shape: xAI, Gemini, Groq, Mistral): `prompt_tokens`,
//!   `completion_tokens`, `total_tokens`; `prompt_tokens` already includes
//!   the cached tokens, which `prompt_tokens_details.cached_tokens` counts
//!   (DeepSeek: `prompt_cache_hit_tokens`).
//! - OpenAI Responses API: `input_tokens`, `output_tokens`, `total_tokens`, at
//!   `response.usage` (JSON) or in the `response.completed` event; cached
//!   tokens in `input_tokens_details.cached_tokens`.
//! - Anthropic Messages: `input_tokens`, `output_tokens`, and the prompt-cache
//!   counts `cache_creation_input_tokens` / `cache_read_input_tokens`, which
//!   Anthropic's `input_tokens` excludes but bills: they count into the prompt.
//!   In a stream, `message_start` carries the input count and each
//!   `message_delta` the cumulative output count.
//!
//! One response may carry several usage objects (an Anthropic stream does), so
//! the counts are merged field by field: where both carry a field the larger
//! wins (counts within an answer only grow), fields a later object lacks (or
//! sends as `null`) keep what was seen.
//! Accounting only: no framing, no I/O.

use serde::Deserialize;

/// Tokens reported by the upstream, as counted: `prompt`, `completion` and
/// `total`. It also remembers which counts the upstream actually wrote, so a
/// later report can be [merged](Usage::merge) into it field by field.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Prompt (input) tokens, cache reads and writes included.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// Total tokens: the upstream's own total when it wrote one, else
    /// prompt + completion.
    pub total: u64,
    /// Of `prompt`, the tokens read from the provider's prompt cache (billed
    /// at the cached-input price).
    pub cached: u64,
    /// Of `prompt`, the tokens written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, billed at the cache-write price).
    pub cache_write: u64,
    /// The counts as written (capped), for [`Usage::merge`].
    reported: Reported,
    /// Some count was over [`MAX_ANSWER_TOKENS`] and was cut to it.
    pub capped: bool,
}

/// Two usages are equal when they count the same tokens.
impl PartialEq for Usage {
    fn eq(&self, other: &Self) -> bool {
        (self.prompt, self.completion, self.total) == (other.prompt, other.completion, other.total)
    }
}

impl Eq for Usage {}

/// The fields of one usage object, as the upstream wrote them (`None`:
/// absent or `null`). The OpenAI and Anthropic names are kept apart, so an
/// object carrying both is read rather than refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Reported {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

/// `prompt_tokens_details` / `input_tokens_details`: the cached share.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl Reported {
    /// The cached tokens, in whichever field this provider writes them.
    fn cached(&self) -> Option<u64> {
        self.cache_read_input_tokens
            .or(self.prompt_tokens_details.and_then(|d| d.cached_tokens))
            .or(self.input_tokens_details.and_then(|d| d.cached_tokens))
            .or(self.prompt_cache_hit_tokens)
    }

    /// `later`'s fields where it has them, else `self`'s.
    /// Counts within one answer only grow (Anthropic's are cumulative; the
    /// others report once), so where both carry a field the larger wins: a
    /// later zero (an upstream bug, or a hostile one) cannot undo a count.
    fn merge(self, later: Reported) -> Reported {
        let larger = |earlier: Option<u64>, later: Option<u64>| match (earlier, later) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => b.or(a),
        };
        Reported {
            prompt_tokens: larger(self.prompt_tokens, later.prompt_tokens),
            input_tokens: larger(self.input_tokens, later.input_tokens),
            cache_creation_input_tokens: larger(
                self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            cache_read_input_tokens: larger(
                self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
            completion_tokens: larger(self.completion_tokens, later.completion_tokens),
            output_tokens: larger(self.output_tokens, later.output_tokens),
            total_tokens: larger(self.total_tokens, later.total_tokens),
            prompt_tokens_details: details(self.prompt_tokens_details, later.prompt_tokens_details),
            input_tokens_details: details(self.input_tokens_details, later.input_tokens_details),
            prompt_cache_hit_tokens: larger(
                self.prompt_cache_hit_tokens,
                later.prompt_cache_hit_tokens,
            ),
        }
    }
}

/// The larger cached count of two details objects (either may be absent).
fn details(earlier: Option<Details>, later: Option<Details>) -> Option<Details> {
    match (earlier, later) {
        (Some(a), Some(b)) => Some(Details {
            cached_tokens: match (a.cached_tokens, b.cached_tokens) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => y.or(x),
            },
        }),
        (a, b) => b.or(a),
    }
}

/// The most tokens one answer is taken to report in any count: far above
/// any context window (a few million), far below what could overflow a sum.
/// An upstream that reports more (a bug, or a hostile upstream reporting
/// `u64::MAX` to wrap a budget) is counted at this cap and flagged.
pub const MAX_ANSWER_TOKENS: u64 = 100_000_000;

impl From<Reported> for Usage {
    fn from(reported: Reported) -> Self {
        let cap = |n: Option<u64>| n.map(|n| n.min(MAX_ANSWER_TOKENS));
        let capped = [
            reported.prompt_tokens,
            reported.input_tokens,
            reported.cache_creation_input_tokens,
            reported.cache_read_input_tokens,
            reported.completion_tokens,
            reported.output_tokens,
            reported.total_tokens,
            reported.cached(),
        ]
        .into_iter()
        .flatten()
        .any(|n| n > MAX_ANSWER_TOKENS);
        let cap_details = |d: Option<Details>| {
            d.map(|d| Details {
                cached_tokens: cap(d.cached_tokens),
            })
        };
        let reported = Reported {
            prompt_tokens: cap(reported.prompt_tokens),
            input_tokens: cap(reported.input_tokens),
            cache_creation_input_tokens: cap(reported.cache_creation_input_tokens),
            cache_read_input_tokens: cap(reported.cache_read_input_tokens),
            completion_tokens: cap(reported.completion_tokens),
            output_tokens: cap(reported.output_tokens),
            total_tokens: cap(reported.total_tokens),
            prompt_tokens_details: cap_details(reported.prompt_tokens_details),
            input_tokens_details: cap_details(reported.input_tokens_details),
            prompt_cache_hit_tokens: cap(reported.prompt_cache_hit_tokens),
        };
        // Saturating: an upstream's absurd counts must not wrap or panic.
        let prompt = match reported.prompt_tokens {
            // OpenAI's prompt count includes cached tokens already.
            Some(prompt) => prompt,
            // Anthropic's input count excludes the cache reads and writes it bills.
            None => reported
                .input_tokens
                .unwrap_or(0)
                .saturating_add(reported.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(reported.cache_read_input_tokens.unwrap_or(0)),
        };
        let completion = reported
            .completion_tokens
            .or(reported.output_tokens)
            .unwrap_or(0);
        // Shares of the prompt, never more than it (a hostile upstream's
        // cached count cannot make the uncached share negative).
        let cached = reported.cached().unwrap_or(0).min(prompt);
        let cache_write = reported
            .cache_creation_input_tokens
            .unwrap_or(0)
            .min(prompt - cached);
        Usage {
            prompt,
            completion,
            cached,
            cache_write,
            total: reported
                .total_tokens
                .unwrap_or(prompt.saturating_add(completion))
                .min(MAX_ANSWER_TOKENS.saturating_mul(3)),
            reported,
            capped,
        }
    }
}

impl Usage {
    /// A usage of these counts (all three as if the upstream wrote them).
    pub fn new(prompt: u64, completion: u64, total: u64) -> Usage {
        Usage::from(Reported {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(total),
            ..Reported::default()
        })
    }

    /// This usage updated by a later report of the same response: the larger
    /// of each field both carry, fields the later lacks keep their value (an
    /// Anthropic stream's input count from `message_start` survives the
    /// `message_delta` that reports only the output count). The total is the
    /// latest explicit `total_tokens`, else prompt + completion.
    pub fn merge(self, later: Usage) -> Usage {
        let mut merged = Usage::from(self.reported.merge(later.reported));
        merged.capped |= self.capped || later.capped;
        merged
    }

    /// `later` merged into `seen` (or `later` itself when nothing was seen).
    pub fn merged(seen: Option<Usage>, later: Usage) -> Usage {
        seen.map_or(later, |seen| seen.merge(later))
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
    let Ok(raw) = Reported::deserialize(&mut deserializer) else {
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
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Reported>();
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
    fn an_absurd_count_is_capped_and_flagged_never_wrapped() {
        let found = find(br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":9223372036854775808}}"#);
        let usage = found.usage.unwrap();
        assert!(usage.capped);
        assert_eq!(usage.prompt, MAX_ANSWER_TOKENS);
        assert_eq!(usage.completion, MAX_ANSWER_TOKENS);
        assert_eq!(usage.total, 2 * MAX_ANSWER_TOKENS);
        let fine = find(br#"{"usage":{"prompt_tokens":10,"completion_tokens":2}}"#)
            .usage
            .unwrap();
        assert!(!fine.capped);
        assert!(fine.merge(usage).capped);
    }

    #[test]
    fn a_later_zero_cannot_undo_a_count() {
        let real =
            find(br#"{"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120}}"#)
                .usage
                .unwrap();
        let zero = find(br#"{"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#)
            .usage
            .unwrap();
        assert_eq!(real.merge(zero), Usage::new(100, 20, 120));
    }

    #[test]
    fn chat_completion_usage() {
        let found = find(br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#);
        assert_eq!(found.usage, Some(Usage::new(12, 30, 42)));
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
    fn cached_tokens_in_every_providers_field() {
        let cases: [(&[u8], u64, u64); 5] = [
            // OpenAI Chat Completions (and xAI, Gemini, Groq).
            (br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0}}}"#, 1920, 0),
            // OpenAI Responses API.
            (br#"{"response":{"usage":{"input_tokens":2006,"input_tokens_details":{"cached_tokens":1024},"output_tokens":300}}}"#, 1024, 0),
            // DeepSeek.
            (br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"prompt_cache_hit_tokens":1500,"prompt_cache_miss_tokens":506}}"#, 1500, 0),
            // Anthropic: reads and writes come on top of input_tokens.
            (br#"{"usage":{"input_tokens":6,"cache_creation_input_tokens":500,"cache_read_input_tokens":1500,"output_tokens":300}}"#, 1500, 500),
            // No breakdown: nothing cached.
            (br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300}}"#, 0, 0),
        ];
        for (json, cached, written) in cases {
            let usage = find(json).usage.unwrap();
            assert_eq!(
                (usage.cached, usage.cache_write),
                (cached, written),
                "{}",
                String::from_utf8_lossy(json)
            );
            assert!(usage.cached + usage.cache_write <= usage.prompt);
        }
        // A cached count past the prompt is cut to it.
        let odd = find(br#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":99}}}"#).usage.unwrap();
        assert_eq!(odd.cached, 10);
        // Anthropic's stream: message_start carries the cache counts, message_delta only output.
        let start = find(br#"{"type":"message_start","message":{"usage":{"input_tokens":6,"cache_read_input_tokens":1500,"output_tokens":1}}}"#).usage.unwrap();
        let delta = find(br#"{"type":"message_delta","usage":{"output_tokens":300}}"#)
            .usage
            .unwrap();
        let merged = start.merge(delta);
        assert_eq!(
            (merged.prompt, merged.cached, merged.completion),
            (1506, 1500, 300)
        );
    }

    #[test]
    fn responses_api_and_embeddings() {
        let responses = find(br#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#);
        assert_eq!(responses.usage, Some(Usage::new(5, 7, 12)));
        let embeddings = find(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#);
        assert_eq!(embeddings.usage, Some(Usage::new(8, 0, 8)));
    }

    #[test]
    fn absurd_counts_are_capped_not_saturated() {
        // Saturating at u64::MAX let a budget sum wrap (issue 28 item 3):
        // each count stops at MAX_ANSWER_TOKENS instead.
        let body = br#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#;
        let found = parse_object_prefix(body).map(|(usage, _)| usage.total);
        assert_eq!(found, Some(MAX_ANSWER_TOKENS + 1));
        let cache = br#"{"input_tokens":18446744073709551615,"cache_read_input_tokens":5}"#;
        let found = parse_object_prefix(cache).map(|(usage, _)| (usage.prompt, usage.total));
        assert_eq!(found, Some((MAX_ANSWER_TOKENS + 5, MAX_ANSWER_TOKENS + 5)));
    }

    fn counts(json: &[u8]) -> (u64, u64, u64) {
        let usage = find(json).usage.unwrap();
        (usage.prompt, usage.completion, usage.total)
    }

    #[test]
    fn anthropic_messages_count_cache_reads_and_writes_into_the_prompt() {
        let message = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":15,"service_tier":"standard"}}"#;
        assert_eq!(counts(message), (175, 15, 190));
        // No cache counts (or null ones): the input count alone.
        let plain =
            br#"{"usage":{"input_tokens":25,"cache_read_input_tokens":null,"output_tokens":15}}"#;
        assert_eq!(counts(plain), (25, 15, 40));
        // OpenAI's prompt count includes cached tokens: taken as is.
        let openai = br#"{"usage":{"prompt_tokens":30,"completion_tokens":2,"total_tokens":32,"prompt_tokens_details":{"cached_tokens":20}}}"#;
        assert_eq!(counts(openai), (30, 2, 32));
    }

    #[test]
    fn later_reports_replace_only_the_fields_they_carry() {
        let usage = |json: &[u8]| parse_object_prefix(json).unwrap().0;
        // Anthropic's stream: input from message_start, cumulative output from the last message_delta.
        let start = usage(br#"{"input_tokens":25,"cache_read_input_tokens":10,"output_tokens":1}"#);
        let delta = usage(br#"{"output_tokens":15}"#);
        let merged = start.merge(delta);
        assert_eq!(
            (merged.prompt, merged.completion, merged.total),
            (35, 15, 50)
        );
        // A newer message_delta that repeats the input counts (null or not).
        let full_delta =
            usage(br#"{"input_tokens":25,"cache_read_input_tokens":null,"output_tokens":20}"#);
        let merged = merged.merge(full_delta);
        assert_eq!(
            (merged.prompt, merged.completion, merged.total),
            (35, 20, 55)
        );
        // The total is the latest explicit one, else the sum.
        let with_total = usage(br#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":9}"#);
        let merged = with_total.merge(usage(br#"{"completion_tokens":4}"#));
        assert_eq!((merged.prompt, merged.completion, merged.total), (1, 4, 9));
        assert_eq!(Usage::merged(None, delta), delta);
        // An OpenAI stream's one usage object: as before.
        let openai = usage(br#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#);
        assert_eq!(Usage::merged(Some(start), openai), Usage::new(3, 4, 7));
    }
}
