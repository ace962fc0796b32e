//! One streaming decoder per coding, behind [`Stage`]: flate2's write-side
//! decoders (gzip, zlib, raw deflate — a `deflate` body's first two bytes
//! say which), brotli's decompressor, and libzstd's. Each hands its output
//! on in pieces of at most 2 × [`PIECE`] bytes, as soon as it is decoded.

use std::io::Write;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};

use super::coding::{Coding, CodingError};

/// Most decoded bytes brotli and zstd hand on at once (flate2's inflate: its
/// 32 KiB buffer, `2 * PIECE`; the flush after a write may add the
/// inflater's 32 KiB window, so the work past a limit is at most `4 * PIECE`).
pub const PIECE: usize = 16 * 1024;
/// Largest zstd window accepted (2^25 = 32 MiB; zstd's own default is 2^27):
/// the window is memory the decoder must hold, and encoders at ordinary
/// levels use 8 MiB at most.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Where decoded bytes go; an error stops decoding.
pub(super) type Sink<'a> = dyn FnMut(&[u8]) -> Result<(), CodingError> + 'a;

/// One coding's decoder.
pub(super) enum Stage {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    /// `deflate` before its first two bytes show zlib or raw (bytes so far).
    DeflateUndecided(Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    Br(Box<Brotli>),
    Zstd(Box<Zstd>),
}

pub(super) struct Brotli {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    out: Box<[u8]>,
    done: bool,
}

pub(super) struct Zstd {
    /// `None` once it failed: every later input is refused.
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    out: Box<[u8]>,
    /// Between frames (nothing started, or the last frame ended).
    at_frame_end: bool,
}

impl Stage {
    pub(super) fn new(coding: Coding) -> Stage {
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

    pub(super) fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> Result<(), CodingError> {
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

    pub(super) fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), CodingError> {
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
