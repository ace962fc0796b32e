//! `keygate::net::content_coding::Decoder` on arbitrary bytes, for every coding and
//! a stacked pair, fed in pieces whose sizes come from the input. Never
//! panics, and never hands on more decoded bytes than its limit (a
//! decompression bomb stops at the limit, however small the input).

#![no_main]

use keygate::net::content_coding::{Coding, Decoder, PIECE};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&piece, body)) = rest.split_first() else {
        return;
    };
    let codings: &[Coding] = match selector % 6 {
        0 => &[Coding::Gzip],
        1 => &[Coding::Deflate],
        2 => &[Coding::Br],
        3 => &[Coding::Zstd],
        4 => &[Coding::Gzip, Coding::Br],
        _ => &[Coding::Zstd, Coding::Deflate],
    };
    let mut decoder = Decoder::new(codings, LIMIT);
    let mut seen = 0u64;
    let mut count = |p: &[u8]| {
        assert!(!p.is_empty());
        seen += p.len() as u64;
    };
    let size = usize::from(piece).max(1);
    let mut failed = false;
    for chunk in body.chunks(size) {
        if decoder.feed(chunk, &mut count).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        let _ = decoder.finish(&mut count);
    }
    assert!(seen <= LIMIT, "{seen} bytes handed on past the {LIMIT} limit");
    // The piece that passed the limit is counted, never handed on (flate2's
    // inflate hands on up to its 32 KiB buffer at once, and the flush after a
    // write up to its 32 KiB window more: found by this target, see
    // `work_past_the_limit_is_bounded_by_a_few_pieces`).
    assert!(decoder.produced() <= LIMIT + 4 * PIECE as u64);
});
