//! keygate's streaming `UsageScanner` against serde_json reading the same
//! bytes (`keygate_fuzz::usage_ref`, which states the rules and the scanner's
//! deliberate differences).
//!
//! Input layout: byte 0 = control: low 4 bits, how many chunk-length bytes
//! follow (see `keygate_fuzz::split`); bit 7 clear: the rest is a JSON body;
//! bit 7 set: the rest is SSE event payloads separated by NUL bytes, written
//! as a server writes them (bits 4–5: line ending, bit 6: a space after
//! `data:`). The chunk lengths cut the body or the written stream.
//!
//! Checked, fed whole, in the chosen chunks and one byte at a time: the
//! scanner's usage (prompt, completion, total) equals the reference's merged
//! usage, and it reports none where the reference finds none.

#![no_main]

use keygate::usage::scan::UsageScanner;
use keygate_fuzz::split;
use keygate_fuzz::usage_ref::{self, Verdict};
use libfuzzer_sys::fuzz_target;

fn scan(sse: bool, chunks: &[&[u8]]) -> Option<(u64, u64, u64)> {
    let mut scanner = UsageScanner::new(sse);
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.usage().map(|u| (u.prompt, u.completion, u.total))
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let plan_len = usize::from(ctl & 0x0f).min(rest.len());
    let (plan, input) = rest.split_at(plan_len);
    let sse = ctl & 0x80 != 0;
    let (bytes, verdict) = if sse {
        let payloads: Vec<&[u8]> = input.split(|&b| b == 0).collect();
        let stream = usage_ref::write_sse(&payloads, (ctl >> 4) & 3, ctl & 0x40 != 0);
        let verdict = usage_ref::sse_stream(&stream);
        (stream, verdict)
    } else {
        (input.to_vec(), usage_ref::json_body(input))
    };
    let whole = scan(sse, &[&bytes]);
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    for (how, chunks) in [("in the chosen chunks", split(plan, &bytes)), ("byte by byte", bytewise)] {
        assert_eq!(scan(sse, &chunks), whole, "usage read {how} differs from the whole body's");
    }
    if let Verdict::Usage(expected) = verdict {
        assert_eq!(
            whole,
            expected,
            "scanner and serde disagree on {}",
            String::from_utf8_lossy(&bytes)
        );
    }
});
