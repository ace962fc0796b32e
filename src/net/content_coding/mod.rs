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
//! The rooms, top to bottom: `headers` reads `Content-Encoding` and writes
//! the upstream `Accept-Encoding`; `decoder` runs a body through its stacked
//! codings within the limit; `stages` holds one streaming decoder per coding
//! (flate2, brotli, zstd); `coding` names the codings and what can go wrong.

mod coding;
mod decoder;
mod headers;
mod stages;

pub use self::coding::{Coding, CodingError};
pub use self::decoder::{decode_all, Decoder};
pub use self::headers::{accept_encoding_upstream, codings};
pub use self::stages::PIECE;
