//! Content codings (RFC 9110 §8.4): what a `Content-Encoding` header says was
//! applied to a body, streaming decoders for the codings keygate reads
//! (gzip, deflate, br, zstd), and the `Accept-Encoding` keygate offers upstream
//! (only what it can decode).
//!
//! A [`Decoder`] is fed the body chunk by chunk and hands its output on in
//! pieces of at most 2 × [`PIECE`] bytes per coding; it never holds a whole body,
//! and it stops with [`CodingError::TooLarge`] as soon as the decoded size
//! passes its limit, so a small compressed body cannot make keygate inflate
//! gigabytes (a decompression bomb). Nothing here logs, and no error quotes a
//! body byte.
//!
//! Over 400 lines: four streaming decoders behind one interface, the header
//! parsing and the limits they share.

use std::io::Write;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use http::header::{self, HeaderMap, HeaderValue};

/// Most decoded bytes brotli and zstd hand on at once (flate2's inflate: its
/// 32 KiB buffer, `2 * PIECE`; the flush after a write may add the
/// inflater's 32 KiB window, so the work past a limit is at most `4 * PIECE`).
pub const PIECE: usize = 16 * 1024;
/// Codings stacked deeper than this are refused: real servers apply one.
const MAX_STACK: usize = 3;
/// Largest zstd window accepted (2^25 = 32 MiB; zstd's own default is 2^27):
/// the window is memory the decoder must hold, and encoders at ordinary
/// levels use 8 MiB at most.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// A content coding keygate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// RFC 1952 gzip (`x-gzip` too).
    Gzip,
    /// RFC 1950 zlib; a raw RFC 1951 stream (what some servers send) is accepted too.
    Deflate,
    /// RFC 7932 brotli.
    Br,
    /// RFC 8878 zstd.
    Zstd,
}

impl Coding {
    /// The coding's token in `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn from_token(token: &str) -> Option<Coding> {
        const NAMES: [(&str, Coding); 5] = [
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Br),
            ("zstd", Coding::Zstd),
        ];
        NAMES
            .iter()
            .find(|(name, _)| token.eq_ignore_ascii_case(name))
            .map(|&(_, coding)| coding)
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodingError {
    /// A coding keygate does not decode (the token, cut to 32 printable bytes).
    #[error("content coding `{0}` is not one keygate decodes (gzip, deflate, br, zstd)")]
    Unsupported(String),
    /// More codings stacked than [`MAX_STACK`].
    #[error("more than {MAX_STACK} content codings stacked")]
    TooDeep,
    /// The decoded body passed the limit.
    #[error("decoded body is larger than {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: u64,
    },
    /// The bytes are not valid in their coding.
    #[error("{coding} body is corrupt")]
    Corrupt {
        /// The coding's name.
        coding: &'static str,
    },
    /// The body ended before its coding's end marker.
    #[error("{coding} body ended early")]
    Truncated {
        /// The coding's name.
        coding: &'static str,
    },
}

/// The codings of `headers`' `Content-Encoding`, in the order they were
/// applied (`identity` left out). Empty when the body is not encoded; no
/// allocation then.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, CodingError> {
    let mut found = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| CodingError::Unsupported("(not text)".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            let coding = Coding::from_token(token).ok_or_else(|| unsupported(token))?;
            if found.len() == MAX_STACK {
                return Err(CodingError::TooDeep);
            }
            found.push(coding);
        }
    }
    Ok(found)
}

fn unsupported(token: &str) -> CodingError {
    let printable: String = token
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    CodingError::Unsupported(printable)
}

/// The `Accept-Encoding` to send upstream for the client's: the client's
/// list without the codings keygate cannot decode (`*` becomes the four it
/// can). `None`: send none (the client sent none). When the client accepts
/// nothing keygate decodes, `identity`. The client's value is reused as it is
/// when every coding in it is known (the SDKs' `gzip, deflate` and `br`
/// lists), so the usual request allocates nothing here.
pub fn accept_encoding_upstream(client: Option<&HeaderValue>) -> Option<HeaderValue> {
    let client = client?;
    let Ok(text) = client.to_str() else {
        return Some(HeaderValue::from_static("identity"));
    };
    let known = |item: &str| {
        let token = item.split(';').next().unwrap_or("").trim();
        token.is_empty()
            || token.eq_ignore_ascii_case("identity")
            || Coding::from_token(token).is_some()
    };
    if text.split(',').all(known) {
        return Some(client.clone());
    }
    let mut offered: Vec<String> = Vec::new();
    for item in text.split(',') {
        let token = item.split(';').next().unwrap_or("").trim();
        if token == "*" {
            let params = item.find(';').map_or("", |at| &item[at..]);
            for coding in ["gzip", "deflate", "br", "zstd"] {
                offered.push(format!("{coding}{params}"));
            }
        } else if !token.is_empty() && known(item) {
            offered.push(item.trim().to_owned());
        }
    }
    if offered.is_empty() {
        return Some(HeaderValue::from_static("identity"));
    }
    HeaderValue::from_str(&offered.join(", "))
        .ok()
        .or(Some(HeaderValue::from_static("identity")))
}

/// Where decoded bytes go; an error stops decoding.
type Sink<'a> = dyn FnMut(&[u8]) -> Result<(), CodingError> + 'a;

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

/// One coding's decoder.
enum Stage {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    /// `deflate` before its first two bytes show zlib or raw (bytes so far).
    DeflateUndecided(Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    Br(Box<Brotli>),
    Zstd(Box<Zstd>),
}

struct Brotli {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    out: Box<[u8]>,
    done: bool,
}

struct Zstd {
    /// `None` once it failed: every later input is refused.
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    out: Box<[u8]>,
    /// Between frames (nothing started, or the last frame ended).
    at_frame_end: bool,
}

impl Stage {
    fn new(coding: Coding) -> Stage {
        match coding {
            Coding::Gzip => Stage::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => Stage::DeflateUndecided(Vec::new()),
            Coding::Br => Stage::Br(Box::new(Brotli {
                state: BrotliState::new(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                ),
                out: vec![0; PIECE].into_boxed_slice(),
                done: false,
            })),
            Coding::Zstd => {
                let decoder = zstd::stream::raw::Decoder::new().and_then(|mut d| {
                    d.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                        ZSTD_WINDOW_LOG_MAX,
                    ))?;
                    Ok(d)
                });
                Stage::Zstd(Box::new(Zstd {
                    // Creation fails only when memory runs out: refuse the body then.
                    decoder: decoder.ok(),
                    out: vec![0; PIECE].into_boxed_slice(),
                    at_frame_end: true,
                }))
            }
        }
    }

    fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> Result<(), CodingError> {
        match self {
            Stage::Gzip(d) => flate_feed(d, input, sink, "gzip"),
            Stage::Zlib(d) => flate_feed(d, input, sink, "deflate"),
            Stage::RawDeflate(d) => flate_feed(d, input, sink, "deflate"),
            Stage::DeflateUndecided(seen) => {
                seen.extend_from_slice(input);
                if seen.len() < 2 {
                    return Ok(());
                }
                let head = std::mem::take(seen);
                // RFC 1950: CM = 8 in the low nibble, and CMF·256 + FLG a
                // multiple of 31. A raw stream rarely starts that way.
                let zlib =
                    head[0] & 0x0f == 8 && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
                *self = if zlib {
                    Stage::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
                } else {
                    Stage::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
                };
                self.feed(&head, sink)
            }
            Stage::Br(b) => brotli_feed(b, input, sink),
            Stage::Zstd(z) => zstd_feed(z, input, sink),
        }
    }

    fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), CodingError> {
        match self {
            Stage::Gzip(d) => flate_finish(d, sink, "gzip"),
            Stage::Zlib(d) => flate_finish(d, sink, "deflate"),
            Stage::RawDeflate(d) => flate_finish(d, sink, "deflate"),
            Stage::DeflateUndecided(_) => Err(CodingError::Truncated { coding: "deflate" }),
            Stage::Br(b) if b.done => Ok(()),
            Stage::Br(_) => Err(CodingError::Truncated { coding: "br" }),
            Stage::Zstd(z) => {
                zstd_feed(z, &[], sink)?;
                if z.at_frame_end {
                    Ok(())
                } else {
                    Err(CodingError::Truncated { coding: "zstd" })
                }
            }
        }
    }
}

/// The three flate2 write-side decoders, which write into a `Vec` keygate drains.
trait FlateWrite: Write {
    fn out(&mut self) -> &mut Vec<u8>;
    fn try_finish(&mut self) -> std::io::Result<()>;
}

macro_rules! flate_write {
    ($($t:ty),*) => {$(
        impl FlateWrite for $t {
            fn out(&mut self) -> &mut Vec<u8> {
                self.get_mut()
            }
            fn try_finish(&mut self) -> std::io::Result<()> {
                <$t>::try_finish(self)
            }
        }
    )*};
}
flate_write!(
    flate2::write::GzDecoder<Vec<u8>>,
    flate2::write::ZlibDecoder<Vec<u8>>,
    flate2::write::DeflateDecoder<Vec<u8>>
);

fn drain(out: &mut Vec<u8>, sink: &mut Sink<'_>) -> Result<(), CodingError> {
    if out.is_empty() {
        return Ok(());
    }
    let result = sink(out);
    out.clear();
    result
}

fn flate_feed<D: FlateWrite>(
    decoder: &mut D,
    mut input: &[u8],
    sink: &mut Sink<'_>,
    coding: &'static str,
) -> Result<(), CodingError> {
    let corrupt = |_| CodingError::Corrupt { coding };
    // Each `write` inflates at most flate2's 32 KiB buffer's worth, so the
    // `Vec` never holds more than that before it is drained.
    while !input.is_empty() {
        let taken = decoder.write(input).map_err(corrupt)?;
        drain(decoder.out(), sink)?;
        if taken == 0 {
            break; // the stream ended; what follows it is ignored, as browsers do
        }
        input = &input[taken..];
    }
    // Hand on what is decoded so far now, not with the next chunk: an SSE
    // event must not wait for the one after it.
    decoder.flush().map_err(corrupt)?;
    drain(decoder.out(), sink)
}

fn flate_finish<D: FlateWrite>(
    decoder: &mut D,
    sink: &mut Sink<'_>,
    coding: &'static str,
) -> Result<(), CodingError> {
    let result = decoder.try_finish();
    drain(decoder.out(), sink)?;
    result.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::WriteZero => {
            CodingError::Truncated { coding }
        }
        _ => CodingError::Corrupt { coding },
    })
}

fn brotli_feed(b: &mut Brotli, input: &[u8], sink: &mut Sink<'_>) -> Result<(), CodingError> {
    if b.done {
        return Ok(()); // past the end of the stream: ignored
    }
    let mut available_in = input.len();
    let mut input_offset = 0;
    loop {
        let mut available_out = b.out.len();
        let mut output_offset = 0;
        let mut total_out = 0;
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            input,
            &mut available_out,
            &mut output_offset,
            &mut b.out,
            &mut total_out,
            &mut b.state,
        );
        if output_offset > 0 {
            sink(&b.out[..output_offset])?;
        }
        match result {
            BrotliResult::NeedsMoreOutput => continue,
            BrotliResult::NeedsMoreInput => return Ok(()),
            BrotliResult::ResultSuccess => {
                b.done = true;
                return Ok(());
            }
            BrotliResult::ResultFailure => return Err(CodingError::Corrupt { coding: "br" }),
        }
    }
}

fn zstd_feed(z: &mut Zstd, input: &[u8], sink: &mut Sink<'_>) -> Result<(), CodingError> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let corrupt = CodingError::Corrupt { coding: "zstd" };
    let Some(decoder) = z.decoder.as_mut() else {
        return Err(corrupt);
    };
    let mut source = InBuffer::around(input);
    loop {
        let mut target = OutBuffer::around(&mut z.out[..]);
        let hint = decoder.run(&mut source, &mut target);
        let written = target.pos();
        let Ok(hint) = hint else {
            z.decoder = None;
            return Err(corrupt);
        };
        if written > 0 {
            sink(&z.out[..written])?;
        }
        if hint == 0 {
            z.at_frame_end = true;
        } else if written > 0 || source.pos() > 0 {
            z.at_frame_end = false;
        }
        // Done with this input once it is consumed and the output did not
        // fill up (a full buffer may mean more is waiting inside).
        if source.pos() == input.len() && written < z.out.len() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            include_bytes!("../../fuzz/regressions/content_coding/gzip-flush-past-two-pieces");
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

    #[test]
    fn content_encoding_is_parsed_in_order() {
        let mut headers = HeaderMap::new();
        assert!(codings(&headers).unwrap().is_empty());
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(codings(&headers).unwrap().is_empty());
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("GZIP, br"),
        );
        assert_eq!(codings(&headers).unwrap(), [Coding::Gzip, Coding::Br]);
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("compress"),
        );
        assert!(matches!(codings(&headers), Err(CodingError::Unsupported(t)) if t == "compress"));
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip,gzip,gzip,gzip"),
        );
        assert!(matches!(codings(&headers), Err(CodingError::TooDeep)));
    }

    #[test]
    fn only_decodable_codings_are_offered_upstream() {
        let offer = |v: &'static str| {
            accept_encoding_upstream(Some(&HeaderValue::from_static(v)))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(accept_encoding_upstream(None), None);
        assert_eq!(offer("gzip, deflate").as_deref(), Some("gzip, deflate"));
        assert_eq!(
            offer("gzip, compress;q=0.5, br;q=0.8").as_deref(),
            Some("gzip, br;q=0.8")
        );
        assert_eq!(offer("compress").as_deref(), Some("identity"));
        assert_eq!(
            offer("*;q=0.1").as_deref(),
            Some("gzip;q=0.1, deflate;q=0.1, br;q=0.1, zstd;q=0.1")
        );
    }
}
