//! The response-body meter: `MeterTap` (SSE, JSON and opaque bodies),
//! `SseSplitter::feed`, `UsageScanner::feed` and `usage::find`, at a chunking
//! the input chooses.
//!
//! Input layout: byte 0 = control (low 4 bits: how many chunk-length bytes
//! follow; >= 0xF0: JSON body, 0xE0..=0xEF: opaque body, else SSE), then that
//! many chunk lengths (see `keygate_fuzz::split`), then the body.
//!
//! Checked, for the chosen chunking, one chunk and one byte per chunk:
//! pass-through output is byte-identical to the body; usage and counters do
//! not depend on chunking (pass-through: the scanner's usage of the whole
//! body; stripping: the splitter's events' usage objects, merged field by field); SSE events and their end offsets do not depend on
//! chunking (one byte per chunk: bodies up to 1 KiB); stripping output is exactly the body minus the whole events whose
//! data is a usage-only chunk (so never longer than the body).

#![no_main]

use keygate::usage::scan::UsageScanner;
use keygate::usage::sse::SseSplitter;
use keygate::usage::shapes as usage;
use keygate_fuzz::{run_tap, split};
use libfuzzer_sys::fuzz_target;

/// (event data, absolute offset just past its blank line) for every event.
fn events(chunks: &[&[u8]]) -> Vec<(Vec<u8>, usize)> {
    let mut splitter = SseSplitter::default();
    let mut out = Vec::new();
    let mut base = 0;
    for chunk in chunks {
        splitter.feed(chunk, |data, end| {
            assert!(end <= chunk.len(), "event end {end} past chunk of {}", chunk.len());
            out.push((data.to_vec(), base + end));
        });
        base += chunk.len();
    }
    out
}

fn tokens(d: &keygate::usage::meter::UsageDelta) -> (u64, u64, u64) {
    (d.prompt_tokens, d.completion_tokens, d.total_tokens)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let plan_len = usize::from(ctl & 0x0f).min(rest.len());
    let (plan, body) = rest.split_at(plan_len);
    let chosen = split(plan, body);
    let whole: Vec<&[u8]> = vec![body];
    // One byte per chunk only for small bodies: it costs a tap call per byte.
    let bytewise: Vec<&[u8]> = if body.len() <= 1024 {
        body.chunks(1).collect()
    } else {
        vec![body]
    };
    let chunkings: [&[&[u8]]; 3] = [&whole, &chosen, &bytewise];

    // usage::find on the raw body: no panic, and usage_only implies usage.
    let found = usage::find(body);
    assert!(!found.usage_only_chunk || found.usage.is_some());

    let content_type = match ctl {
        0xF0..=0xFF => "application/json",
        0xE0..=0xEF => "application/octet-stream",
        _ => "text/event-stream",
    };
    let sse = content_type == "text/event-stream";

    // Reference: the events of the body as one chunk.
    let reference = events(&whole);
    let mut last = 0;
    for (data, end) in &reference {
        assert!(*end > last, "event ends out of order");
        assert!(*end <= body.len());
        assert!(matches!(body[*end - 1], b'\n' | b'\r'), "event ends after a non-newline");
        assert!(!data.contains(&b'\r'), "event data holds a CR");
        let f = usage::find(data);
        assert!(!f.usage_only_chunk || f.usage.is_some());
        last = *end;
    }
    // What stripping must produce: the body minus the usage-only events.
    let mut expected_strip = Vec::with_capacity(body.len());
    let mut start = 0;
    let mut expected_usage = None;
    for (data, end) in &reference {
        let f = usage::find(data);
        // Usage objects merge field by field (an Anthropic stream's input
        // count comes from message_start, its output count from message_delta).
        if let Some(u) = f.usage {
            expected_usage = Some(usage::Usage::merged(expected_usage, u));
        }
        if !f.usage_only_chunk {
            expected_strip.extend_from_slice(&body[start..*end]);
        }
        start = *end;
    }
    expected_strip.extend_from_slice(&body[start..]);

    let as_tokens = |u: Option<usage::Usage>| u.map(|u| (u.prompt, u.completion, u.total));
    let mut scanner = UsageScanner::new(sse);
    scanner.feed(body);
    let scanned = if sse || content_type == "application/json" {
        as_tokens(scanner.usage())
    } else {
        None
    }
    .unwrap_or((0, 0, 0));
    let stripped_tokens = if sse { as_tokens(expected_usage).unwrap_or((0, 0, 0)) } else { scanned };

    for chunks in chunkings {
        assert_eq!(events(chunks), reference, "SSE events depend on chunking");

        let (out, delta, flushed) = run_tap(content_type, false, chunks);
        assert!(out == body, "pass-through changed the bytes");
        assert!(flushed.is_none(), "pass-through held bytes");
        assert_eq!(delta.requests, 1);
        assert_eq!((delta.errors, delta.incomplete), (0, 0));
        assert_eq!(delta.response_bytes, body.len() as u64);
        assert_eq!(tokens(&delta), scanned, "usage depends on chunking");

        let (out, delta, _) = run_tap(content_type, true, chunks);
        assert!(out.len() <= body.len(), "stripping grew the body");
        if sse {
            assert!(out == expected_strip, "stripping removed the wrong bytes");
        } else {
            assert!(out == body, "non-SSE body changed");
        }
        assert_eq!(delta.response_bytes, body.len() as u64);
        assert_eq!(tokens(&delta), stripped_tokens, "usage depends on chunking when stripping");
    }
});
