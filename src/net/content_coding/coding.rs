//! The content codings keygate decodes ([`Coding`]), and why a body could
//! not be decoded ([`CodingError`]): the words the header side and the
//! decoders share.

/// Codings stacked deeper than this are refused: real servers apply one.
pub(super) const MAX_STACK: usize = 3;

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

    pub(super) fn from_token(token: &str) -> Option<Coding> {
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
