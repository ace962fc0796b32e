//! Finds the `usage` object in a response body as it streams past, without
//! framing the stream: a SIMD substring search for `"usage"` over each chunk,
//! then a small state machine that captures just that object — across chunk
//! boundaries, and across SSE `data:` line continuations — and parses it.
//!
//! Pass-through metering (JSON bodies, and SSE streams keygate does not
//! rewrite) uses this instead of the SSE splitter: each byte is looked at once
//! by `memchr`'s vectorised search, and only the few bytes after a `"usage"`
//! key are walked one by one. The key cannot match inside a JSON string
//! (quotes there are escaped), so only real keys are followed. In a stream,
//! every usage object is merged into the one before it, field by field
//! ([`Usage::merge`]): an OpenAI stream's one final usage chunk carries every
//! count, an Anthropic stream's `message_start` the input count and its last
//! `message_delta` the cumulative output count. In a JSON body the last usage
//! object wins (see `UsageScanner::record`).
//!
//! A streaming chunk with `stream_options.include_usage` carries
//! `"usage":null` in every event; stopping at each of those would cost more
//! than the search itself. So once the body shows it is written compactly (a
//! `"usage"` key directly followed by `:`, as every serializer upstreams use
//! does), the search narrows to `"usage":{` and skips the nulls without stopping.
//! A serializer writes one body in one style, so nothing is missed; and the
//! switch depends only on the bytes, never on how they were chunked.

use std::sync::OnceLock;

use memchr::arch::all::packedpair::HeuristicFrequencyRank;
use memchr::memmem::{Finder, FinderBuilder};

use super::shapes::{self as usage, Usage};

const KEY: &[u8] = b"\"usage\"";
/// The key and the start of an object, as a compact body writes them.
const COMPACT_KEY: &[u8] = b"\"usage\":{";
/// Bytes kept from the end of a chunk, so a key split across two chunks is seen.
const CARRY: usize = COMPACT_KEY.len() - 1;
/// A usage object larger than this is not one (real ones are ~100–400 bytes).
const MAX_OBJECT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the next `"usage"` key.
    Searching,
    /// Just past the key: expecting `:` (`spaced`: whitespace came first).
    AfterKey { spaced: bool },
    /// Just past the colon: `{` starts an object, anything else is no usage.
    AfterColon { spaced: bool },
    /// Inside the object (its bytes so far in `object`, nesting in `depth`).
    Object,
    /// An SSE line ended inside the object: `matched` bytes of the next line's
    /// `data:` prefix seen so far.
    Continuation { matched: usize, after_cr: bool },
}

/// The key's searchers, built once (building one per response would cost
/// more than scanning a short body).
fn key_finder(compact: bool) -> &'static Finder<'static> {
    static FINDER: OnceLock<Finder<'static>> = OnceLock::new();
    static COMPACT: OnceLock<Finder<'static>> = OnceLock::new();
    let build =
        |key: &'static [u8]| FinderBuilder::new().build_forward_with_ranker(JsonByteRank, key);
    if compact {
        COMPACT.get_or_init(|| build(COMPACT_KEY))
    } else {
        FINDER.get_or_init(|| build(KEY))
    }
}

/// How common a byte is in JSON chat traffic, for the vectorised search's
/// choice of the two bytes it looks for first. memchr's default ranking is
/// tuned for prose and code and picks `"` and `{`, which JSON is full of (every
/// `"delta":{` would be a candidate); here the punctuation, digits and spaces
/// JSON writes everywhere rank most common and letters follow English
/// frequency, so the search keys on `g` and `u`.
struct JsonByteRank;

impl HeuristicFrequencyRank for JsonByteRank {
    fn rank(&self, byte: u8) -> u8 {
        const LETTERS_BY_FREQUENCY: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
        let lower = byte.to_ascii_lowercase();
        match LETTERS_BY_FREQUENCY.iter().position(|&b| b == lower) {
            Some(index) => 204 - 4 * index as u8,
            None if byte.is_ascii() => 255,
            None => 50,
        }
    }
}

/// Streaming search for the `usage` object of one response body.
pub struct UsageScanner {
    sse: bool,
    /// The body writes `"usage":` with no space: search for `"usage":{`.
    compact: bool,
    state: State,
    carry: [u8; CARRY],
    carry_len: usize,
    object: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    usage: Option<Usage>,
}

impl UsageScanner {
    /// A scanner for an SSE stream (`sse`: a line break inside the object
    /// continues on the next `data:` line) or a plain JSON body.
    pub fn new(sse: bool) -> Self {
        UsageScanner {
            sse,
            compact: false,
            state: State::Searching,
            carry: [0; CARRY],
            carry_len: 0,
            object: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            usage: None,
        }
    }

    /// True for an SSE stream, false for a plain JSON body.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// One usage object found. A stream's objects are merged field by field
    /// (Anthropic reports input and output counts in different events); in a
    /// JSON body the last one replaces any before it. A JSON body has one real
    /// usage object, written after the content by every provider, while the
    /// content can hold objects the model wrote — a tool call's `input` with a
    /// `usage` member of zeros, chosen by the client's tool schema — which a
    /// merge would keep (found by the `usage_scan` fuzz target's reference).
    fn record(&mut self, found: Usage) {
        self.usage = Some(if self.sse {
            Usage::merged(self.usage, found)
        } else {
            found
        });
    }

    /// The usage objects seen so far (merged in a stream, the last in a JSON body).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Scans one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut pos = 0;
        if self.state == State::Searching {
            pos = self.key_across_boundary(chunk);
        }
        let mut search_from = pos;
        while pos < chunk.len() {
            if self.state == State::Searching {
                search_from = pos;
                match key_finder(self.compact).find(&chunk[pos..]) {
                    Some(at) => {
                        let key_end = pos + at + self.key_len();
                        pos = self.found_key(chunk, key_end);
                    }
                    None => break,
                }
            } else {
                pos = self.walk(chunk, pos);
            }
        }
        self.keep_carry(chunk, search_from);
    }

    /// A key that starts in the carried tail of the previous chunk and ends in
    /// this one: returns the offset in `chunk` just past it, or 0.
    fn key_across_boundary(&mut self, chunk: &[u8]) -> usize {
        if self.carry_len == 0 {
            return 0;
        }
        let head = chunk.len().min(CARRY);
        let mut window = [0u8; 2 * CARRY];
        window[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
        window[self.carry_len..self.carry_len + head].copy_from_slice(&chunk[..head]);
        let window = &window[..self.carry_len + head];
        let key_len = self.key_len();
        match key_finder(self.compact).find(window) {
            // Only a key that straddles: one wholly in the carry was searched before.
            Some(at) if at < self.carry_len && at + key_len > self.carry_len => {
                self.found_key(chunk, at + key_len - self.carry_len)
            }
            _ => 0,
        }
    }

    fn key_len(&self) -> usize {
        if self.compact {
            COMPACT_KEY.len()
        } else {
            KEY.len()
        }
    }

    /// Enters the state after a key found at `key_end` (just past it) in
    /// `chunk`; returns where to go on.
    fn found_key(&mut self, chunk: &[u8], key_end: usize) -> usize {
        if self.compact {
            self.start_object(chunk, key_end - 1)
        } else {
            self.state = State::AfterKey { spaced: false };
            key_end
        }
    }

    /// The object opens at `chunk[open]`; returns where to go on. When the
    /// whole object is in this chunk (nearly always) it is parsed in place;
    /// otherwise it is walked byte by byte, and kept, until it closes.
    fn start_object(&mut self, chunk: &[u8], open: usize) -> usize {
        if let Some((usage, len)) = usage::parse_object_prefix(&chunk[open..]) {
            // Exactly what the walk would find, unless it would give up (too
            // long) or an SSE line ends inside (a continuation to check).
            let inside = &chunk[open..open + len];
            if len <= MAX_OBJECT && !(self.sse && memchr::memchr2(b'\n', b'\r', inside).is_some()) {
                self.record(usage);
                self.state = State::Searching;
                return open + len;
            }
        }
        self.object.clear();
        self.object.push(b'{');
        self.depth = 1;
        self.in_string = false;
        self.escaped = false;
        self.state = State::Object;
        open + 1
    }

    /// Remembers the last bytes searched (never bytes already taken as a key
    /// or object), joining a short chunk onto the previous carry.
    fn keep_carry(&mut self, chunk: &[u8], search_from: usize) {
        if self.state != State::Searching {
            self.carry_len = 0;
            return;
        }
        let tail = &chunk[search_from..];
        if tail.len() >= CARRY {
            self.carry.copy_from_slice(&tail[tail.len() - CARRY..]);
            self.carry_len = CARRY;
            return;
        }
        // A short tail: keep the old carry in front only if the whole chunk was
        // searched (nothing taken since the carry was made).
        let keep_old = if search_from == 0 { self.carry_len } else { 0 };
        let keep_old = keep_old.min(CARRY - tail.len());
        let old_start = self.carry_len - keep_old;
        self.carry.copy_within(old_start..self.carry_len, 0);
        self.carry[keep_old..keep_old + tail.len()].copy_from_slice(tail);
        self.carry_len = keep_old + tail.len();
    }

    /// Steps the state machine over `chunk[pos..]` until it goes back to
    /// searching or the chunk ends; returns where it stopped.
    fn walk(&mut self, chunk: &[u8], mut pos: usize) -> usize {
        while pos < chunk.len() {
            let byte = chunk[pos];
            match self.state {
                State::Searching => return pos,
                State::AfterKey { spaced } => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => self.state = State::AfterKey { spaced: true },
                    b':' => self.state = State::AfterColon { spaced },
                    _ => {
                        self.state = State::Searching;
                        return pos;
                    }
                },
                State::AfterColon { spaced } => {
                    if matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
                        self.state = State::AfterColon { spaced: true };
                    } else {
                        // `"usage":` with nothing around the colon: a compact writer.
                        self.compact |= !spaced;
                        if byte != b'{' {
                            self.state = State::Searching;
                            return pos;
                        }
                        pos = self.start_object(chunk, pos);
                        continue;
                    }
                }
                State::Object => self.object_byte(byte),
                State::Continuation { matched, after_cr } => {
                    if after_cr && byte == b'\n' {
                        self.state = State::Continuation {
                            matched,
                            after_cr: false,
                        };
                    } else if matched < 5 {
                        if byte != b"data:"[matched] {
                            // Not a data line (a blank line ends the event):
                            // the object is cut off, so it is no usage.
                            self.state = State::Searching;
                            return pos;
                        }
                        self.state = State::Continuation {
                            matched: matched + 1,
                            after_cr: false,
                        };
                    } else {
                        self.state = State::Object;
                        if byte != b' ' {
                            self.object_byte(byte);
                        }
                    }
                }
            }
            pos += 1;
        }
        pos
    }

    fn object_byte(&mut self, byte: u8) {
        if self.sse && matches!(byte, b'\n' | b'\r') {
            // SSE joins continued data lines with a newline.
            self.object.push(b'\n');
            self.state = State::Continuation {
                matched: 0,
                after_cr: byte == b'\r',
            };
            return;
        }
        self.object.push(byte);
        if self.object.len() > MAX_OBJECT {
            self.state = State::Searching;
            return;
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' => self.depth += 1,
            b'}' => {
                self.depth -= 1;
                if self.depth == 0 {
                    if let Some((found, _)) = usage::parse_object_prefix(&self.object) {
                        self.record(found);
                    }
                    self.state = State::Searching;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(sse: bool, chunks: &[&[u8]]) -> Option<(u64, u64, u64)> {
        let mut scanner = UsageScanner::new(sse);
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.usage().map(|u| (u.prompt, u.completion, u.total))
    }

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\":{\"}}],\"usage\":null}\r\n\r\n: ping\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7,\"details\":{\"x\":\"}\"}}}\n\ndata: [DONE]\n\n";

    #[test]
    fn finds_the_usage_object_at_any_split() {
        assert_eq!(scan(true, &[STREAM]), Some((3, 4, 7)));
        for split in 0..STREAM.len() {
            assert_eq!(
                scan(true, &[&STREAM[..split], &STREAM[split..]]),
                Some((3, 4, 7)),
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(scan(true, &bytes), Some((3, 4, 7)));
    }

    #[test]
    fn a_usage_object_continued_on_the_next_data_line() {
        let stream =
            b"data: {\"usage\":{\"prompt_tokens\":1,\r\ndata:\"completion_tokens\":2}}\r\n\r\n";
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(true, &[stream]), Some((1, 2, 3)));
        assert_eq!(scan(true, &bytes), Some((1, 2, 3)));
        // An event that ends inside the object carries no usage.
        assert_eq!(
            scan(true, &[b"data: {\"usage\":{\"prompt_tokens\":1,\n\n"]),
            None
        );
    }

    #[test]
    fn in_a_json_body_the_last_usage_object_wins() {
        // An Anthropic answer whose tool input (written by the model, to a
        // schema the client chose) holds a `usage` of zeros before the real one.
        let body = br#"{"type":"message","content":[{"type":"tool_use","name":"t","input":{"usage":{"prompt_tokens":0,"total_tokens":0}}}],"usage":{"input_tokens":40,"output_tokens":12}}"#;
        assert_eq!(scan(false, &[body]), Some((40, 12, 52)));
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(scan(false, &[a, b]), Some((40, 12, 52)), "split at {split}");
        }
    }

    #[test]
    fn json_bodies_may_be_pretty_printed() {
        let body =
            b"{\n  \"usage\" : {\n    \"prompt_tokens\": 8,\n    \"total_tokens\": 8\n  }\n}";
        assert_eq!(scan(false, &[body]), Some((8, 0, 8)));
    }

    /// Anthropic's Messages stream, as api.anthropic.com writes it.
    const ANTHROPIC_STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn an_anthropic_stream_keeps_the_input_count_of_message_start() {
        // 25 input + 100 cache reads; the last message_delta's cumulative 15 output.
        let want = Some((125, 15, 140));
        assert_eq!(scan(true, &[ANTHROPIC_STREAM]), want);
        for split in 0..ANTHROPIC_STREAM.len() {
            let (a, b) = ANTHROPIC_STREAM.split_at(split);
            assert_eq!(scan(true, &[a, b]), want, "split at {split}");
        }
        // Cut after message_start: the input count (and its first output token).
        let cut = ANTHROPIC_STREAM
            .windows(22)
            .position(|w| w == b"event: content_block_s")
            .unwrap();
        assert_eq!(scan(true, &[&ANTHROPIC_STREAM[..cut]]), Some((125, 1, 126)));
    }

    #[test]
    fn later_usage_replaces_earlier_fields_and_null_is_none() {
        assert_eq!(scan(true, &[b"data: {\"usage\":null}\n\n"]), None);
        let two =
            b"data: {\"usage\":{\"total_tokens\":1}}\n\ndata: {\"usage\":{\"total_tokens\":2}}\n\n";
        assert_eq!(scan(true, &[two]), Some((0, 0, 2)));
        // A writer that puts spaces around the colon (Python's json.dumps).
        let spaced = b"data: {\"usage\": null}\n\ndata: {\"usage\": {\"total_tokens\": 4}}\n\n";
        assert_eq!(scan(true, &[spaced]), Some((0, 0, 4)));
    }

    #[test]
    fn an_endless_object_is_given_up() {
        let mut body = b"{\"usage\":{\"a\":\"".to_vec();
        body.resize(MAX_OBJECT + 100, b'x');
        body.extend_from_slice(b"\"},\"usage\":{\"total_tokens\":5}}");
        assert_eq!(scan(false, &[&body]), Some((0, 0, 5)));
    }

    /// Streams built from tricky pieces, cut at pseudo-random points: the
    /// scanner's answer never depends on where the cuts fall.
    #[test]
    fn random_chunkings_give_the_whole_body_answer() {
        const PIECES: &[&[u8]] = &[
            b"data: {\"choices\":[],\"usage\":null}\n\n",
            b"data: {\"usage\":{\"prompt_tokens\":2,\"total_tokens\":9}}\r\n\r\n",
            b"data:{\"usage\" :\r\n{\"completion_tokens\":4}}\n\n",
            b"data: {\"usage\":{\"prompt_tokens\":1,\ndata: \"total_tokens\":3}}\n\n",
            b": keep-alive \"usage\"\n\n",
            b"\"usage\"\"usage\":{\"s\":\"\\\"}\",\"total_tokens\":6}",
            b"data: {\"usage\":{\"prompt_tokens\":1,\n\n",
            b"\xc3\xa9\"usa",
            b"ge\":{\"total_tokens\":11}}",
            b"data: {\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
            b"data: {\"usage\":{\"output_tokens\":15,\"input_tokens\":null}}\n\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % bound
        };
        for _ in 0..500 {
            let mut body = Vec::new();
            for _ in 0..1 + next(8) {
                body.extend_from_slice(PIECES[next(PIECES.len())]);
            }
            for sse in [true, false] {
                let whole = scan(sse, &[&body]);
                let mut chunks = Vec::new();
                let mut at = 0;
                while at < body.len() {
                    let len = 1 + next(9);
                    let end = (at + len).min(body.len());
                    chunks.push(&body[at..end]);
                    at = end;
                }
                assert_eq!(
                    scan(sse, &chunks),
                    whole,
                    "{:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
}
