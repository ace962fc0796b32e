//! Reads a few top-level fields of a JSON request body without parsing the
//! rest.
//!
//! Every request needs its `model` (routing, metering), and every stream its
//! `stream` / `stream_options` (keygate asks for the usage chunk). Chat bodies
//! are mostly one long `messages` array, which serde_json's typed read walks
//! byte by byte (≈ 6 instructions a byte). The skim jumps through strings
//! with `memchr` and steps only over the few bytes between them, and hands
//! back the raw text of the fields asked for; the caller parses those few
//! bytes with serde. Anything unusual (an escaped or repeated key, an
//! unclosed body) is [`None`]: the caller then lets serde read the whole
//! body, so the answer is serde's wherever the JSON is well formed.
//!
//! [`members`] finds where an object's members lie in a body serde has
//! checked, so that keygate can add one field without re-writing the rest.

/// The top-level fields of a chat request that keygate reads, as raw JSON
/// text (`None` for a field the body lacks).
#[derive(Debug, Default, Clone, Copy)]
pub struct ChatFields<'a> {
    /// Routing and metering.
    pub model: Option<&'a [u8]>,
    /// Whether keygate asks for the usage chunk.
    pub stream: Option<&'a [u8]>,
    /// ... and whether the client already did.
    pub stream_options: Option<&'a [u8]>,
}

/// One skim of a request body for its [`ChatFields`]; `None` when the skim
/// cannot judge the body (the callers then parse it with serde).
pub fn chat_fields(body: &[u8]) -> Option<ChatFields<'_>> {
    let [model, stream, stream_options] =
        top_level(body, [b"model", b"stream", b"stream_options"])?;
    Some(ChatFields {
        model,
        stream,
        stream_options,
    })
}

/// The raw JSON text of each of `keys` at the top level of the object
/// `body` (`Some(None)` for a key it lacks), or `None` when the skim cannot
/// judge the body.
pub fn top_level<'a, const N: usize>(
    body: &'a [u8],
    keys: [&[u8]; N],
) -> Option<[Option<&'a [u8]>; N]> {
    // From the byte after an opening quote to its closing quote.
    let string_end = |from: usize| -> Option<usize> {
        let mut at = from;
        loop {
            at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
            match body[at] {
                b'\\' => at += 2,
                _ => return Some(at),
            }
        }
    };
    let skip_ws = |mut at: usize| {
        while body.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
            at += 1;
        }
        at
    };
    let mut found: [Option<&[u8]>; N] = [None; N];
    // The wanted field whose value is being read, and where it starts.
    let mut value: Option<(usize, usize)> = None;
    let mut depth = 0u32;
    // Bit `d` set: the container at depth `d + 1` is an object (deeper
    // bodies than 64 levels are left to serde).
    let mut objects = 0u64;
    let mut key_next = false;
    let mut at = skip_ws(0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    while at < body.len() {
        match body[at] {
            b'"' => {
                let end = string_end(at + 1)?;
                if depth == 1 && key_next {
                    let key = &body[at + 1..end];
                    let colon = skip_ws(end + 1);
                    if body.get(colon) != Some(&b':') || key.contains(&b'\\') {
                        return None;
                    }
                    key_next = false;
                    at = skip_ws(colon + 1);
                    if let Some(wanted) = keys.iter().position(|k| *k == key) {
                        if found[wanted].is_some() {
                            return None; // repeated: serde's rules decide
                        }
                        value = Some((wanted, at));
                    }
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
                    // The object closed; end the value being read, if any.
                    if let Some((wanted, start)) = value.take() {
                        found[wanted] = Some(body[start..at - 1].trim_ascii_end());
                    }
                    return Some(found);
                }
            }
            b',' => {
                if depth == 1 {
                    if let Some((wanted, start)) = value.take() {
                        found[wanted] = Some(body[start..at].trim_ascii_end());
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
    let skip_ws = |mut at: usize| {
        while body.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
            at += 1;
        }
        at
    };
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
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
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
        let [model, stream, options, absent] =
            top_level(body, [b"model", b"stream", b"stream_options", b"nope"]).unwrap();
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
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"mod\u0065l":"x"}"#,
            br#"{"model":"x""#,
            br#"{"model":"x"]]"#,
            b"[1]",
            b"",
        ] {
            assert!(top_level(body, [b"model"]).is_none(), "{body:?}");
        }
    }
}
