//! Reads the few top-level fields of a JSON request body that keygate acts
//! on, the way the upstream will read them.
//!
//! Every request needs its `model` (routing, metering), every stream its
//! `stream` / `stream_options` (keygate asks for the usage chunk), and a
//! limited client its `max_tokens` (the estimate). Chat bodies are mostly one
//! long `messages` array, which serde_json walks byte by byte (≈ 6
//! instructions a byte). The [`skim`] jumps through strings with `memchr` and
//! steps only over the few bytes between them, and hands back the raw text
//! of the fields asked for; the caller parses those few bytes with serde.
//!
//! What the skim cannot judge (an escaped key, a body nested deeper than 64
//! levels, anything but JSON whitespace around the object) is [`None`], and
//! [`chat_fields`] then has serde check the whole body and finds the fields
//! with [`members`], which decodes keys. Either way a repeated key is read
//! as serde_json and Python's `json` read it: the last one wins. So on every
//! body serde_json accepts, the fields are serde's (fuzz/fuzz_targets/
//! json_skim.rs checks this); on a body it refuses, the skim may still
//! answer, and the upstream refuses the body anyway.
//!
//! [`members`] finds where an object's members lie in a body serde has
//! checked, so that keygate can add one field without re-writing the rest.

/// The top-level fields of a request body that keygate reads, as raw JSON
/// text (`None` for a field the body lacks; the last one if repeated).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChatFields<'a> {
    /// Routing and metering.
    pub model: Option<&'a [u8]>,
    /// Whether keygate asks for the usage chunk.
    pub stream: Option<&'a [u8]>,
    /// ... and whether the client already did.
    pub stream_options: Option<&'a [u8]>,
    /// The completion cap of Chat Completions, Completions and Anthropic's
    /// Messages (the token estimate).
    pub max_tokens: Option<&'a [u8]>,
    /// The same cap in newer Chat Completions.
    pub max_completion_tokens: Option<&'a [u8]>,
    /// The same cap in the Responses API.
    pub max_output_tokens: Option<&'a [u8]>,
    /// Where the object's `{` is (past any leading whitespace).
    pub open: usize,
    /// True when serde_json has checked the whole body (the slow path).
    pub checked: bool,
}

/// The keys of [`ChatFields`], in its order.
const CHAT_KEYS: [&[u8]; 6] = [
    b"model",
    b"stream",
    b"stream_options",
    b"max_tokens",
    b"max_completion_tokens",
    b"max_output_tokens",
];

impl<'a> ChatFields<'a> {
    fn new(values: [Option<&'a [u8]>; 6], open: usize, checked: bool) -> Self {
        let [model, stream, stream_options, max_tokens, max_completion_tokens, max_output_tokens] =
            values;
        ChatFields {
            model,
            stream,
            stream_options,
            max_tokens,
            max_completion_tokens,
            max_output_tokens,
            open,
            checked,
        }
    }
}

/// The body's [`ChatFields`] as the upstream will read them: the [`skim`]
/// when it can judge the body, else serde_json's check of the whole body
/// and [`members`]. `None`: the body is not a JSON object serde accepts.
pub fn chat_fields(body: &[u8]) -> Option<ChatFields<'_>> {
    skim(body).or_else(|| parsed_fields(body))
}

/// The slow path of [`chat_fields`]: serde_json checks the whole body, then
/// [`members`] finds the fields (keys decoded, the last duplicate wins).
pub fn parsed_fields(body: &[u8]) -> Option<ChatFields<'_>> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let found = members(body, open, CHAT_KEYS)?;
    Some(ChatFields::new(
        found.values.map(|range| range.map(|r| &body[r])),
        open,
        true,
    ))
}

/// One skim of a request body for its [`ChatFields`]; `None` when the skim
/// cannot judge the body.
pub fn skim(body: &[u8]) -> Option<ChatFields<'_>> {
    let (values, open) = top_level(body, CHAT_KEYS)?;
    Some(ChatFields::new(values, open, false))
}

/// JSON's whitespace (RFC 8259 `ws`): not form feed or vertical tab, which
/// `u8::is_ascii_whitespace` would also skip and serde refuses.
fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(body: &[u8], mut at: usize) -> usize {
    while body.get(at).copied().is_some_and(is_ws) {
        at += 1;
    }
    at
}

fn trim_ws_end(mut text: &[u8]) -> &[u8] {
    while let [rest @ .., last] = text {
        if !is_ws(*last) {
            break;
        }
        text = rest;
    }
    text
}

/// The raw JSON text of each of `keys` at the top level of the object
/// `body` (`None` for a key it lacks, the last one for a repeated key), and
/// where the object opens; `None` when the skim cannot judge the body.
pub fn top_level<'a, const N: usize>(
    body: &'a [u8],
    keys: [&[u8]; N],
) -> Option<([Option<&'a [u8]>; N], usize)> {
    let mut found: [Option<&[u8]>; N] = [None; N];
    // The wanted field whose value is being read, and where it starts.
    let mut value: Option<(usize, usize)> = None;
    let mut depth = 0u32;
    // Bit `d` set: the container at depth `d + 1` is an object (deeper
    // bodies than 64 levels are left to serde).
    let mut objects = 0u64;
    let mut key_next = false;
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut at = open;
    while at < body.len() {
        match body[at] {
            b'"' => {
                let end = string_end(body, at + 1)?;
                if depth == 1 && key_next {
                    let key = &body[at + 1..end];
                    let colon = skip_ws(body, end + 1);
                    // An escaped key may be one of `keys` in disguise
                    // (`"str\u0065am"`): serde decodes it.
                    if body.get(colon) != Some(&b':') || key.contains(&b'\\') {
                        return None;
                    }
                    key_next = false;
                    at = skip_ws(body, colon + 1);
                    // A repeated key starts over: the last one wins, as in
                    // serde_json and Python's json.
                    value = keys
                        .iter()
                        .position(|k| *k == key)
                        .map(|wanted| (wanted, at));
                    continue;
                }
                at = end + 1;
            }
            open @ (b'{' | b'[') => {
                if depth == 64 {
                    return None;
                }
                objects = (objects & !(1 << depth)) | (u64::from(open == b'{') << depth);
                depth += 1;
                key_next = depth == 1;
                at += 1;
            }
            close @ (b'}' | b']') => {
                depth = depth.checked_sub(1)?;
                if (objects >> depth) & 1 != u64::from(close == b'}') {
                    return None; // `]` closing an object, or `}` an array
                }
                at += 1;
                if depth == 0 {
                    // Only whitespace may follow the object.
                    if skip_ws(body, at) != body.len() {
                        return None;
                    }
                    // The object closed; end the value being read, if any.
                    if let Some((wanted, start)) = value.take() {
                        found[wanted] = Some(trim_ws_end(&body[start..at - 1]));
                    }
                    return Some((found, open));
                }
            }
            b',' => {
                if depth == 1 {
                    if let Some((wanted, start)) = value.take() {
                        found[wanted] = Some(trim_ws_end(&body[start..at]));
                    }
                    key_next = true;
                }
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

/// Where the members of one JSON object lie in a body: see [`members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members<const N: usize> {
    /// The value of each key asked for (its last occurrence: JSON's last
    /// duplicate wins, as in serde_json), as a byte range of the body.
    pub values: [Option<std::ops::Range<usize>>; N],
    /// Just past the last member's value (`None`: the object is empty).
    pub last_value_end: Option<usize>,
    /// The object's closing `}`.
    pub close: usize,
}

/// The members of the object whose `{` is at `body[open]`, for a body that
/// serde has already found to be well-formed JSON (so values can be skipped
/// without checking them; anything unexpected is `None` all the same).
/// Keys are compared decoded, so an escaped key (`"str\u0065am"`) is found.
pub fn members<const N: usize>(body: &[u8], open: usize, keys: [&[u8]; N]) -> Option<Members<N>> {
    let skip_ws = |at: usize| skip_ws(body, at);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut found = Members {
        values: std::array::from_fn(|_| None),
        last_value_end: None,
        close: 0,
    };
    let mut at = skip_ws(open + 1);
    if body.get(at) == Some(&b'}') {
        found.close = at;
        return Some(found);
    }
    loop {
        if body.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(body, at + 1)?;
        let raw_key = &body[at + 1..key_end];
        let decoded;
        let key = if raw_key.contains(&b'\\') {
            decoded = serde_json::from_slice::<String>(&body[at..=key_end]).ok()?;
            decoded.as_bytes()
        } else {
            raw_key
        };
        let colon = skip_ws(key_end + 1);
        if body.get(colon) != Some(&b':') {
            return None;
        }
        let start = skip_ws(colon + 1);
        let end = value_end(body, start)?;
        if let Some(wanted) = keys.iter().position(|k| *k == key) {
            found.values[wanted] = Some(start..end);
        }
        found.last_value_end = Some(end);
        at = skip_ws(end);
        match body.get(at) {
            Some(b',') => at = skip_ws(at + 1),
            Some(b'}') => {
                found.close = at;
                return Some(found);
            }
            _ => return None,
        }
    }
}

/// From the byte after an opening quote to its closing quote.
fn string_end(body: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
        match body[at] {
            b'\\' => at += 2,
            _ => return Some(at),
        }
    }
}

/// Just past the well-formed JSON value that starts at `body[start]`.
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match *body.get(start)? {
        b'"' => Some(string_end(body, start + 1)? + 1),
        b'{' | b'[' => {
            let mut depth = 0u32;
            let mut at = start;
            loop {
                match *body.get(at)? {
                    b'"' => at = string_end(body, at + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            let len = body[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))
                .unwrap_or(body.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_at_the_top_level_only() {
        let body = br#"{"messages":[{"model":"inner","content":"a \"model\": b"}],
            "model" : "gpt-4o" , "stream":true,"stream_options":{"include_usage": false} }"#;
        let ([model, stream, options, absent], open) =
            top_level(body, [b"model", b"stream", b"stream_options", b"nope"]).unwrap();
        assert_eq!(open, 0);
        assert_eq!(model, Some(&br#""gpt-4o""#[..]));
        assert_eq!(stream, Some(&b"true"[..]));
        assert_eq!(options, Some(&br#"{"include_usage": false}"#[..]));
        assert_eq!(absent, None);
    }

    #[test]
    fn members_are_found_by_their_last_occurrence() {
        let body = br#"{ "stream" : false, "o":{"stream":1,"s":"}\""}, "str\u0065am":true ,"n":[1,{"a":[]}] }"#;
        let found = members(body, 0, [b"stream", b"o", b"none"]).unwrap();
        let text = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &body[r]);
        assert_eq!(text(&found.values[0]), Some(&b"true"[..]));
        assert_eq!(
            text(&found.values[1]),
            Some(&br#"{"stream":1,"s":"}\""}"#[..])
        );
        assert_eq!(found.values[2], None);
        assert_eq!(
            &body[..found.last_value_end.unwrap()],
            &body[..body.len() - 2]
        );
        assert_eq!(found.close, body.len() - 1);
        let empty = members(b"{ }", 0, [b"x"]).unwrap();
        assert_eq!((empty.last_value_end, empty.close), (None, 2));
        assert!(members(b"[1]", 0, [b"x"]).is_none());
    }

    #[test]
    fn what_it_cannot_judge_is_none() {
        for body in [
            &br#"{"mod\u0065l":"x"}"#[..],
            br#"{"model":"x""#,
            br#"{"model":"x"]]"#,
            br#"{"model":"x"} {}"#,
            b"{\"model\":\"x\"}\x0c",
            b"\x0c{\"model\":\"x\"}",
            b"[1]",
            b"",
        ] {
            assert!(top_level(body, [b"model"]).is_none(), "{body:?}");
        }
    }

    /// The bodies of issue 14 item 3: each was read differently by the skim
    /// and by the upstream's parser.
    #[test]
    fn whitespace_escaped_keys_and_repeats_read_as_the_upstream_reads_them() {
        fn model(body: &[u8]) -> Option<&[u8]> {
            chat_fields(body)?.model
        }
        fn stream(body: &[u8]) -> Option<&[u8]> {
            chat_fields(body)?.stream
        }
        // Whitespace around the object is JSON's; the skim judges it.
        let spaced = b" \r\n\t{\"model\":\"gpt-4o\",\"stream\":true} \n";
        assert_eq!(
            skim(spaced).map(|f| (f.open, f.stream)),
            Some((4, Some(&b"true"[..])))
        );
        assert_eq!(model(spaced), Some(&br#""gpt-4o""#[..]));
        // An escaped key: the skim cannot judge it, serde decodes it.
        let escaped = br#"{"model":"gpt-4o","str\u0065am":true}"#;
        assert!(skim(escaped).is_none());
        let fields = chat_fields(escaped).unwrap();
        assert!(fields.checked);
        assert_eq!(fields.stream, Some(&b"true"[..]));
        // A repeated key: the last one wins, on both paths.
        let repeated = br#"{"model":"gpt-4o","model":"grok-3"}"#;
        assert_eq!(skim(repeated).unwrap().model, Some(&br#""grok-3""#[..]));
        assert_eq!(
            parsed_fields(repeated).unwrap().model,
            Some(&br#""grok-3""#[..])
        );
        let repeated_escaped = br#"{"model":"grok-3","m\u006fdel":"gpt-4o"}"#;
        assert_eq!(model(repeated_escaped), Some(&br#""gpt-4o""#[..]));
        assert_eq!(
            stream(br#"{"stream":true, "stream" : false }"#),
            Some(&b"false"[..])
        );
        // Not JSON serde accepts: no fields at all.
        for body in [
            &b"\x0c{\"model\":\"x\"}"[..],
            br#"{"str\u0065am":true"#,
            b"[]",
        ] {
            assert_eq!(chat_fields(body), None, "{body:?}");
        }
    }
}
