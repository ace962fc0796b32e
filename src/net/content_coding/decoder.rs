//! One body's decoding: its stacked codings come off last-applied first,
//! each stage's output fed to the next, and the decoded size is counted
//! against the limit before any piece is handed on.

use super::coding::{Coding, CodingError};
use super::stages::{Sink, Stage};

/// Decodes one body, stacked codings and all, fed chunk by chunk.
pub struct Decoder {
    /// In decoding order: the last coding applied comes off first.
    stages: Vec<Stage>,
    limit: u64,
    produced: u64,
}

impl Decoder {
    /// A decoder for a body encoded with `codings` (in the order applied)
    /// whose decoded size must stay within `limit`.
    pub fn new(codings: &[Coding], limit: u64) -> Decoder {
        Decoder {
            stages: codings.iter().rev().map(|&c| Stage::new(c)).collect(),
            limit,
            produced: 0,
        }
    }

    /// Decodes `input`, handing the decoded bytes to `sink` in pieces.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8])) -> Result<(), CodingError> {
        let (limit, produced) = (self.limit, &mut self.produced);
        let mut limited = |piece: &[u8]| limit_piece(limit, produced, piece, sink);
        push(&mut self.stages, input, &mut limited)
    }

    /// The end of the body: hands on what the decoders still hold, and fails
    /// if a coding's stream was not complete.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<(), CodingError> {
        let (limit, produced) = (self.limit, &mut self.produced);
        let mut limited = |piece: &[u8]| limit_piece(limit, produced, piece, sink);
        finish_all(&mut self.stages, &mut limited)
    }

    /// Decoded bytes handed on so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }
}

/// Decodes a whole in-memory body (request bodies, error bodies).
pub fn decode_all(codings: &[Coding], input: &[u8], limit: u64) -> Result<Vec<u8>, CodingError> {
    let mut decoder = Decoder::new(codings, limit);
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(limit as usize));
    decoder.feed(input, &mut |piece| out.extend_from_slice(piece))?;
    decoder.finish(&mut |piece| out.extend_from_slice(piece))?;
    Ok(out)
}

fn limit_piece(
    limit: u64,
    produced: &mut u64,
    piece: &[u8],
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), CodingError> {
    *produced += piece.len() as u64;
    if *produced > limit {
        return Err(CodingError::TooLarge { limit });
    }
    if !piece.is_empty() {
        sink(piece);
    }
    Ok(())
}

fn push(stages: &mut [Stage], input: &[u8], sink: &mut Sink<'_>) -> Result<(), CodingError> {
    match stages.split_first_mut() {
        None => sink(input),
        Some((first, rest)) => first.feed(input, &mut |piece| push(rest, piece, sink)),
    }
}

fn finish_all(stages: &mut [Stage], sink: &mut Sink<'_>) -> Result<(), CodingError> {
    match stages.split_first_mut() {
        None => Ok(()),
        Some((first, rest)) => {
            first.finish(&mut |piece| push(rest, piece, sink))?;
            finish_all(rest, sink)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::net::content_coding::stages::PIECE;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            e.write_all(data).unwrap();
        }
        out
    }

    fn sample() -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..2000 {
            text.extend_from_slice(format!("data: {{\"n\":{i},\"usage\":null}}\n\n").as_bytes());
        }
        text
    }

    fn chunked(codings: &[Coding], encoded: &[u8], size: usize) -> Result<Vec<u8>, CodingError> {
        let mut decoder = Decoder::new(codings, 1 << 30);
        let mut out = Vec::new();
        for chunk in encoded.chunks(size) {
            decoder.feed(chunk, &mut |p| out.extend_from_slice(p))?;
        }
        decoder.finish(&mut |p| out.extend_from_slice(p))?;
        Ok(out)
    }

    #[test]
    fn each_coding_decodes_at_any_chunking() {
        let plain = sample();
        let cases = [
            (Coding::Gzip, gzip(&plain)),
            (Coding::Deflate, zlib(&plain)),
            (Coding::Deflate, raw_deflate(&plain)),
            (Coding::Zstd, zstd(&plain)),
            (Coding::Br, br(&plain)),
        ];
        for (coding, encoded) in cases {
            for size in [1, 7, 4096, encoded.len()] {
                assert_eq!(
                    chunked(&[coding], &encoded, size).unwrap(),
                    plain,
                    "{coding:?} {size}"
                );
            }
        }
    }

    #[test]
    fn stacked_codings_come_off_last_first() {
        let plain = sample();
        let encoded = zstd(&gzip(&plain));
        assert_eq!(
            chunked(&[Coding::Gzip, Coding::Zstd], &encoded, 100).unwrap(),
            plain
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 50 * 1024 * 1024];
        for (coding, bomb) in [
            (Coding::Gzip, gzip(&zeros)),
            (Coding::Br, br(&zeros)),
            (Coding::Zstd, zstd(&zeros)),
        ] {
            assert!(bomb.len() < 100 * 1024);
            let mut decoder = Decoder::new(&[coding], 1024 * 1024);
            let mut seen = 0usize;
            let err = decoder.feed(&bomb, &mut |p| seen += p.len()).unwrap_err();
            assert!(
                matches!(err, CodingError::TooLarge { .. }),
                "{coding:?}: {err}"
            );
            assert!(seen <= 1024 * 1024);
        }
    }

    /// Found by the `content_coding` fuzz target (regression input in
    /// `fuzz/regressions/content_coding/`): fed in 50-byte pieces, a gzip
    /// stream of zeros past the limit. Each write inflates at most flate2's
    /// 32 KiB buffer, but the flush after it may add the inflater's 32 KiB
    /// window on top, so one piece can reach 4 × PIECE before the limit
    /// stops it: the work past the limit is bounded by that, not by the body.
    #[test]
    fn work_past_the_limit_is_bounded_by_a_few_pieces() {
        let input =
            include_bytes!("../../../fuzz/regressions/content_coding/gzip-flush-past-two-pieces");
        let (piece, body) = (usize::from(input[1]).max(1), &input[2..]);
        let limit = 256 * 1024;
        let mut decoder = Decoder::new(&[Coding::Gzip], limit);
        let mut seen = 0u64;
        for chunk in body.chunks(piece) {
            if decoder
                .feed(chunk, &mut |p| seen += p.len() as u64)
                .is_err()
            {
                break;
            }
        }
        assert!(seen <= limit);
        assert!(
            decoder.produced() <= limit + 4 * PIECE as u64,
            "{} bytes inflated for a {limit}-byte limit",
            decoder.produced()
        );
    }

    #[test]
    fn a_cut_stream_is_truncated_and_garbage_is_corrupt() {
        let encoded = gzip(&sample());
        let cut = &encoded[..encoded.len() / 2];
        assert!(matches!(
            chunked(&[Coding::Gzip], cut, 50),
            Err(CodingError::Truncated { .. })
        ));
        for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            assert!(
                chunked(&[coding], b"definitely not compressed at all", 5).is_err(),
                "{coding:?}"
            );
        }
    }
}
