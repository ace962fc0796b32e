//! The vault file's byte layout (docs/design.md §6): header fields, offsets, parsing.
//!
//! Pure: no I/O, no crypto, no keys. It turns bytes into borrowed fields and
//! back, and rejects anything malformed before a cipher or Argon2 sees it — in
//! particular it never lets a header ask for unbounded Argon2 memory or time.
//!
//! ```text
//! off  len
//!   0    8  magic "KGVAULT\0"
//!   8    2  version (1)            10   2  flags (0)          12   8  generation
//!  20    1  kek_source (0 raw, 1 argon2id)
//!  21    4  m_cost KiB   25  4  t_cost   29  4  p_cost   33  16  salt   (zeros for raw)
//!  49    8  kek_id
//!  57   12  nonce | 69  48  wrapped DEK        AAD = bytes 0..57
//! 117   12  nonce | 129 ..  body + 16-byte tag  AAD = bytes 0..117
//! ```
//! All integers are big-endian.

/// The first eight bytes of every vault file.
pub const MAGIC: &[u8; 8] = b"KGVAULT\0";
/// The only format version this keygate reads and writes.
pub const VERSION: u16 = 1;

/// Bytes authenticated by the DEK wrap (everything before its nonce).
pub const DEK_AAD_LEN: usize = 57;
/// Bytes authenticated by the body seal (everything before its nonce).
pub const BODY_AAD_LEN: usize = DEK_AAD_LEN + NONCE_LEN + WRAPPED_DEK_LEN;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// A 32-byte DEK plus the 16-byte GCM tag.
pub const WRAPPED_DEK_LEN: usize = 48;
const TAG_LEN: usize = 16;
/// The shortest possible vault: full header and an empty body's tag.
const MIN_LEN: usize = BODY_AAD_LEN + NONCE_LEN + TAG_LEN;

/// Argon2id parameters written on create and rekey: the OWASP floor.
pub const ARGON2_WRITE: (u32, u32, u32) = (19_456, 2, 1);
/// Largest parameters accepted on read. Anything above is a tampered or
/// corrupted header, not a choice keygate ever made.
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_T: u32 = 10;
const ARGON2_MAX_P: u32 = 16;

/// What a reader can learn from a vault without any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bumped on every write; a server never goes back to a lower one.
    pub generation: u64,
    /// First 8 bytes of HKDF-SHA256(KEK, "keygate/v1/kek-id"): names the master key, reveals nothing of it.
    pub kek_id: [u8; 8],
}

/// How the KEK is obtained from the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekSource {
    /// The 32-byte master key is the KEK.
    Raw,
    /// KEK = Argon2id(passphrase, salt, m, t, p).
    Argon2id(Argon2Params),
}

/// Argon2id cost parameters and salt, as stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Random per vault; kept across updates so the KEK stays the same.
    pub salt: [u8; 16],
}

/// A parsed vault file, borrowing from the bytes read.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub source: KekSource,
    pub dek_aad: &'a [u8],
    pub dek_nonce: &'a [u8],
    pub wrapped_dek: &'a [u8],
    pub body_aad: &'a [u8],
    pub body_nonce: &'a [u8],
    pub body: &'a [u8],
}

/// Why bytes are not a vault this keygate can read. Carries no file content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Not a keygate vault at all.
    BadMagic,
    /// Shorter than the layout requires.
    Truncated { len: usize },
    /// A version this keygate does not know (0 is never valid).
    UnsupportedVersion(u16),
    /// A malformed header field; the text names it.
    BadField(&'static str),
}

/// Parses and validates a whole vault file.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, FormatError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::BadMagic);
    }
    // The version is checked before the length so a newer, differently laid
    // out file says "too old" rather than "truncated".
    if bytes.len() < 12 {
        return Err(FormatError::Truncated { len: bytes.len() });
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    if bytes.len() < MIN_LEN {
        return Err(FormatError::Truncated { len: bytes.len() });
    }
    if bytes[10..12] != [0, 0] {
        return Err(FormatError::BadField("unknown flags"));
    }
    let generation = u64::from_be_bytes(array(&bytes[12..20]));
    let m_cost = u32::from_be_bytes(array(&bytes[21..25]));
    let t_cost = u32::from_be_bytes(array(&bytes[25..29]));
    let p_cost = u32::from_be_bytes(array(&bytes[29..33]));
    let salt: [u8; 16] = array(&bytes[33..49]);
    let source = match bytes[20] {
        0 if m_cost == 0 && t_cost == 0 && p_cost == 0 && salt == [0; 16] => KekSource::Raw,
        0 => {
            return Err(FormatError::BadField(
                "raw-key vault with Argon2 parameters",
            ))
        }
        1 => KekSource::Argon2id(checked_argon2(m_cost, t_cost, p_cost, salt)?),
        _ => return Err(FormatError::BadField("unknown key source")),
    };
    if generation == 0 {
        return Err(FormatError::BadField("generation 0"));
    }
    let kek_id = array(&bytes[49..57]);
    let body_nonce_at = BODY_AAD_LEN;
    Ok(Parsed {
        header: Header { generation, kek_id },
        source,
        dek_aad: &bytes[..DEK_AAD_LEN],
        dek_nonce: &bytes[DEK_AAD_LEN..DEK_AAD_LEN + NONCE_LEN],
        wrapped_dek: &bytes[DEK_AAD_LEN + NONCE_LEN..BODY_AAD_LEN],
        body_aad: &bytes[..BODY_AAD_LEN],
        body_nonce: &bytes[body_nonce_at..body_nonce_at + NONCE_LEN],
        body: &bytes[body_nonce_at + NONCE_LEN..],
    })
}

/// The first [`DEK_AAD_LEN`] bytes of a new file; the writer appends the
/// wrapped DEK and the body after them.
pub fn encode_header(generation: u64, source: &KekSource, kek_id: &[u8; 8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_LEN + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    match source {
        KekSource::Raw => out.extend_from_slice(&[0u8; 29]),
        KekSource::Argon2id(p) => {
            out.push(1);
            out.extend_from_slice(&p.m_cost.to_be_bytes());
            out.extend_from_slice(&p.t_cost.to_be_bytes());
            out.extend_from_slice(&p.p_cost.to_be_bytes());
            out.extend_from_slice(&p.salt);
        }
    }
    out.extend_from_slice(kek_id);
    out
}

fn checked_argon2(m: u32, t: u32, p: u32, salt: [u8; 16]) -> Result<Argon2Params, FormatError> {
    let (min_m, min_t, min_p) = ARGON2_WRITE;
    if !(min_m..=ARGON2_MAX_M_KIB).contains(&m) {
        return Err(FormatError::BadField("Argon2 memory cost out of range"));
    }
    if !(min_t..=ARGON2_MAX_T).contains(&t) {
        return Err(FormatError::BadField("Argon2 time cost out of range"));
    }
    if !(min_p..=ARGON2_MAX_P).contains(&p) {
        return Err(FormatError::BadField("Argon2 parallelism out of range"));
    }
    Ok(Argon2Params {
        m_cost: m,
        t_cost: t,
        p_cost: p,
        salt,
    })
}

/// Copies a slice whose length the caller's constant offsets guarantee.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(source: KekSource) -> Vec<u8> {
        let mut bytes = encode_header(7, &source, &[9; 8]);
        assert_eq!(bytes.len(), DEK_AAD_LEN);
        bytes.extend_from_slice(&[1; NONCE_LEN + WRAPPED_DEK_LEN]);
        bytes.extend_from_slice(&[2; NONCE_LEN + TAG_LEN + 5]);
        bytes
    }

    fn argon(m: u32, t: u32, p: u32) -> KekSource {
        KekSource::Argon2id(Argon2Params {
            m_cost: m,
            t_cost: t,
            p_cost: p,
            salt: [3; 16],
        })
    }

    #[test]
    fn header_round_trips_and_slices_line_up() {
        let (m, t, p) = ARGON2_WRITE;
        let bytes = sample(argon(m, t, p));
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.header.generation, 7);
        assert_eq!(parsed.header.kek_id, [9; 8]);
        assert_eq!(parsed.source, argon(m, t, p));
        assert_eq!(parsed.wrapped_dek.len(), WRAPPED_DEK_LEN);
        assert_eq!(parsed.body_aad.len(), BODY_AAD_LEN);
        assert_eq!(parsed.body.len(), TAG_LEN + 5);
        assert!(parsed.body_nonce.iter().all(|b| *b == 2));
    }

    #[test]
    fn truncation_and_bad_magic_are_told_apart() {
        let bytes = sample(KekSource::Raw);
        assert!(parse(&bytes).is_ok());
        for len in [0, 5, 11, MIN_LEN - 1] {
            assert!(matches!(
                parse(&bytes[..len]),
                Err(FormatError::Truncated { .. })
            ));
        }
        assert_eq!(parse(b"{\"keys\":[]}").unwrap_err(), FormatError::BadMagic);
    }

    #[test]
    fn unknown_version_flags_and_source_are_rejected() {
        let mut bytes = sample(KekSource::Raw);
        bytes[9] = 2;
        assert_eq!(
            parse(&bytes).unwrap_err(),
            FormatError::UnsupportedVersion(2)
        );
        let mut bytes = sample(KekSource::Raw);
        bytes[11] = 1;
        assert!(matches!(parse(&bytes), Err(FormatError::BadField(_))));
        let mut bytes = sample(KekSource::Raw);
        bytes[20] = 7;
        assert!(matches!(parse(&bytes), Err(FormatError::BadField(_))));
        let mut bytes = sample(KekSource::Raw);
        bytes[40] = 1; // salt byte on a raw vault
        assert!(matches!(parse(&bytes), Err(FormatError::BadField(_))));
    }

    #[test]
    fn argon2_parameters_outside_floor_and_cap_are_rejected() {
        for (m, t, p) in [
            (1024, 2, 1),
            (19_456, 1, 1),
            (19_456, 2, 0),
            (u32::MAX, 2, 1),
            (19_456, 1000, 1),
            (19_456, 2, 255),
        ] {
            let err = parse(&sample(argon(m, t, p))).unwrap_err();
            assert!(matches!(err, FormatError::BadField(_)), "{m} {t} {p}");
        }
    }
}
