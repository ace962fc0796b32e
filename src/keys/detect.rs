//! Finding keys in text (the detector of `keygate scan`, docs/design.md
//! §15): every provider key in the exact shape its kind's file declares
//! ([`crate::providers::ExactFormat`]), and keygate's own `kg_` client keys
//! (checksum-checked, so a random `kg_` string is not one).
//!
//! One pass of a literal-prefix automaton (aho-corasick) finds where a key
//! could start; only there is the candidate — the run of key characters from
//! that prefix — read and checked against the shapes. A candidate must start
//! a token (not be the tail of a longer word) and be whole (the run ends
//! where the key ends). Pure: no I/O, nothing kept.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use crate::providers::{ExactFormat, Kind};

/// One key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its byte range in the text.
    pub start: usize,
    /// The end of that range.
    pub end: usize,
    /// Whose key (`OpenAI`, `Anthropic`, … or `keygate`).
    pub provider: &'static str,
    /// The kind's config name (`openai`), `None` for a keygate client key.
    pub kind: Option<&'static str>,
    /// What it is (`project key`, `client key`).
    pub what: &'static str,
}

/// The prefix of keygate's own client keys.
const CLIENT_PREFIX: &str = "kg_";

/// Every shape, by the index of its prefix in the automaton.
struct Detector {
    automaton: AhoCorasick,
    /// For each pattern: the shapes with that prefix (longest-prefix shapes
    /// are separate patterns), with their kind; `None`: the client prefix.
    shapes: Vec<Option<Vec<(Kind, &'static ExactFormat)>>>,
}

static DETECTOR: LazyLock<Option<Detector>> = LazyLock::new(|| {
    let mut prefixes: Vec<&'static str> = vec![CLIENT_PREFIX];
    let mut shapes: Vec<Option<Vec<(Kind, &'static ExactFormat)>>> = vec![None];
    for kind in Kind::all() {
        for format in kind.exact_formats() {
            match prefixes.iter().position(|p| *p == format.prefix) {
                Some(i) => shapes[i].get_or_insert_with(Vec::new).push((kind, format)),
                None => {
                    prefixes.push(format.prefix);
                    shapes.push(Some(vec![(kind, format)]));
                }
            }
        }
    }
    // Built from constants: it cannot fail, and without it nothing is found.
    let automaton = AhoCorasick::new(&prefixes).ok()?;
    Some(Detector { automaton, shapes })
});

/// A byte that can be part of a key.
fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Every key in `text`, in order.
pub fn find(text: &str) -> Vec<Found> {
    let Some(detector) = DETECTOR.as_ref() else {
        return Vec::new();
    };
    let bytes = text.as_bytes();
    let mut found: Vec<Found> = Vec::new();
    for hit in detector.automaton.find_overlapping_iter(text) {
        let start = hit.start();
        if start > 0 && key_byte(bytes[start - 1]) {
            continue;
        }
        if found.last().is_some_and(|f| f.end > start) {
            continue;
        }
        let end = start + bytes[start..].iter().take_while(|b| key_byte(**b)).count();
        let candidate = &text[start..end];
        let shape = match &detector.shapes[hit.pattern().as_usize()] {
            None => crate::vault::client_key::parse(candidate)
                .is_ok()
                .then_some(("keygate", None, "client key")),
            Some(shapes) => shapes
                .iter()
                .find(|(_, format)| format.matches(candidate))
                .map(|(kind, format)| (kind.display_name(), Some(kind.as_str()), format.what)),
        };
        if let Some((provider, kind, what)) = shape {
            found.push(Found {
                start,
                end,
                provider,
                kind,
                what,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` characters of a pattern, for keys built here (never a real key).
    fn fill(pattern: &str, n: usize) -> String {
        pattern.chars().cycle().take(n).collect()
    }

    fn keys() -> Vec<(String, &'static str)> {
        let tok = |n| fill("Ab3_Cd4-Ef5Gh6", n);
        let alnum = |n| fill("Ab3Cd4Ef5Gh6", n);
        let hex = |n| fill("0a1b2c3d4e5f", n);
        vec![
            (format!("sk-proj-{}T3BlbkFJ{}", tok(74), tok(74)), "OpenAI"),
            (
                format!("sk-svcacct-{}T3BlbkFJ{}", tok(58), tok(58)),
                "OpenAI",
            ),
            (format!("sk-admin-{}T3BlbkFJ{}", tok(58), tok(74)), "OpenAI"),
            (format!("sk-{}T3BlbkFJ{}", alnum(20), alnum(20)), "OpenAI"),
            (format!("sk-ant-api03-{}AA", tok(93)), "Anthropic"),
            (format!("sk-ant-admin01-{}AA", tok(93)), "Anthropic"),
            (format!("xai-{}", alnum(80)), "xAI"),
            (format!("sk-or-v1-{}", hex(64)), "OpenRouter"),
            (format!("gsk_{}", alnum(52)), "Groq"),
            (format!("AIza{}", tok(35)), "Google"),
            (format!("sk-{}", hex(32)), "DeepSeek"),
        ]
    }

    #[test]
    fn every_kinds_key_is_found_where_it_is_whatever_surrounds_it() {
        for (key, provider) in keys() {
            for text in [
                key.clone(),
                format!("OPENAI_API_KEY={key}\n"),
                format!("{{\"key\": \"{key}\"}}"),
                format!("  api_key = '{key}'  # prod"),
            ] {
                let found = find(&text);
                assert_eq!(found.len(), 1, "{provider}: {text}");
                assert_eq!(&text[found[0].start..found[0].end], key, "{provider}");
                assert!(
                    found[0].provider.starts_with(provider),
                    "{} for {provider}",
                    found[0].provider
                );
            }
        }
        let (client, _) = crate::vault::client_key::generate().unwrap();
        let text = format!("KEYGATE_CLIENT_KEY={}", client.expose());
        let found = find(&text);
        assert_eq!((found.len(), found[0].what), (1, "client key"));
    }

    #[test]
    fn bait_is_not_a_key() {
        let (client, _) = crate::vault::client_key::generate().unwrap();
        let mut bad_checksum = client.expose().to_owned();
        let last = bad_checksum.pop().unwrap();
        bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
        let sk = format!("sk-{}", fill("0a1b2c3d4e5f", 32));
        for bait in [
            "pip install sk-learn-extensions-for-scientific-computing".to_owned(),
            "the sk- prefix marks a secret key; sk-proj- a project key".to_owned(),
            "uuid 123e4567-e89b-12d3-a456-426614174000 sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            format!("a longer token: xsk-{}", fill("0a1b2c3d4e5f", 32)),
            format!("{sk}ff (a longer run)"),
            format!("kg_ {bad_checksum}"),
            format!("AIza{} (too short)", fill("Ab3", 30)),
            format!("sk-ant-api03-{}AB", fill("Ab3_", 93)),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".to_owned(),
        ] {
            assert!(find(&bait).is_empty(), "{bait}: {:?}", find(&bait));
        }
    }
}
