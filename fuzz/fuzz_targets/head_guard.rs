//! keygate's `HeadGuard` against hyper's own framing of the same bytes
//! (`keygate_fuzz::hyper_model`: httparse plus hyper 1.12's framing rules).
//!
//! Input layout: byte 0 = how many chunk-length bytes follow (low 4 bits), then
//! those lengths (see `keygate_fuzz::split`), then the request stream.
//!
//! The guard only refuses bare LF; it follows Content-Length and chunked
//! framing so it never inspects bodies. Checked, with the stream fed whole, in
//! the chosen chunks and one byte at a time (the same verdict each way):
//! - hyper accepts a line ending in a bare LF at offset X (a head or a
//!   trailer): the guard refuses exactly at X (not earlier: that would be a
//!   body byte, a false refusal);
//! - hyper refuses the request starting at X, or stops reading after X: the
//!   guard may do anything from X on, but must not refuse before X;
//! - otherwise the guard refuses nothing, and, if hyper is between requests
//!   (or inside a Content-Length body), a request with a bare LF sent next is
//!   refused: the guard has not lost the framing (the desync that would let a
//!   smuggled head through).

#![no_main]

use keygate::net::head_guard::HeadGuard;
use keygate_fuzz::hyper_model::{self, Stop};
use keygate_fuzz::split;
use libfuzzer_sys::fuzz_target;

/// A request hyper would take as two headers (`Host` and `X-Evil`).
const EVIL: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: a\nX-Evil: 1\r\n\r\n";

/// Offset of the byte whose read the guard refuses, feeding one byte at a time.
fn refusal_offset(guard: &mut HeadGuard, stream: &[u8], base: usize) -> Option<usize> {
    (0..stream.len())
        .find(|&i| guard.observe(&stream[i..=i]).is_err())
        .map(|i| base + i)
}

fn refused(chunks: &[&[u8]]) -> bool {
    let mut guard = HeadGuard::default();
    chunks.iter().any(|c| guard.observe(c).is_err())
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let plan_len = usize::from(ctl & 0x0f).min(rest.len());
    let (plan, stream) = rest.split_at(plan_len);

    let frames = hyper_model::frame(stream);
    let mut guard = HeadGuard::default();
    let at = refusal_offset(&mut guard, stream, 0);
    let verdict = at.is_some();
    assert_eq!(refused(&[stream]), verdict, "whole-stream verdict differs from byte by byte");
    assert_eq!(refused(&split(plan, stream)), verdict, "verdict depends on chunking");

    let report = || format!("stream {:?}\nhyper {frames:?}\nguard refused at {at:?}", String::from_utf8_lossy(stream));
    match frames.stop {
        Stop::BareLf { at: lf } => assert_eq!(at, Some(lf), "hyper accepts a bare LF the guard did not refuse there\n{}", report()),
        Stop::Error { at: end } | Stop::Closed { at: end } => {
            assert!(at.is_none_or(|g| g >= end), "guard refused bytes hyper frames as a valid request\n{}", report())
        }
        Stop::Incomplete { bare_lf } => assert!(at.is_none() || at == bare_lf, "guard refused inside a valid partial request\n{}", report()),
        Stop::Boundary | Stop::Body { .. } => {
            assert!(at.is_none(), "guard refused a stream hyper accepts\n{}", report());
            let filler = match frames.stop {
                Stop::Body { remaining } if remaining <= 1 << 16 => remaining as usize,
                Stop::Body { .. } => return,
                _ => 0,
            };
            // The guard goes on from where it is (one byte at a time above).
            let mut next = vec![b'x'; filler];
            next.extend_from_slice(EVIL);
            assert!(
                refusal_offset(&mut guard, &next, stream.len()).is_some(),
                "guard lost the framing: a bare-LF head sent next passes\n{}",
                report()
            );
        }
    }
});
