//! The secret type: an upstream key, a client key, a passphrase.
//!
//! A [`Secret`] is zeroized on drop, prints only a fingerprint in `Debug` and
//! `Display`, has no `Serialize`, and compares in constant time. The only way to
//! see the bytes is [`Secret::expose`], which is called where a secret must leave
//! the process (the outbound auth header, the vault cipher, `client add` output).
//! This module must never log, format or clone a secret into a plain `String`.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A secret string. Zeroized on drop; `Debug` shows a fingerprint only.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`; the caller's `String` is moved in, so no copy is left behind.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// Reads a secret from a reader (stdin), dropping one trailing newline (`\n`
    /// or `\r\n`) so `printf '%s\n' "$KEY" | keygate key add` stores the key itself.
    pub fn read_from(mut reader: impl std::io::Read) -> std::io::Result<Self> {
        let mut raw = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut raw)?;
        while matches!(raw.last(), Some(b'\n' | b'\r')) {
            raw.pop();
        }
        let text = std::str::from_utf8(&raw).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "secret is not UTF-8")
        })?;
        Ok(Secret::new(text.to_owned()))
    }

    /// The secret itself. Call only where it must leave the process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// A short, non-reversible label such as `sk-…wxyz`: the first three and the
    /// last four characters of a long secret, nothing of a short one. Never shows
    /// eight consecutive characters of the secret.
    pub fn fingerprint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 16 {
            return "…".to_owned();
        }
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// Serde glue used only by the vault document (which is encrypted before it
/// touches disk). `Secret` itself deliberately implements no `Serialize`.
pub(crate) mod vault_field {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(secret) => s.serialize_some(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        let raw: Option<Zeroizing<String>> = Option::deserialize(d)?;
        Ok(raw.map(|s| Secret::new(s.as_str().to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_show_only_a_fingerprint() {
        let secret = Secret::new("sk-test-0123456789abcdefWXYZ".to_owned());
        let debug = format!("{secret:?}");
        let display = format!("{secret}");
        assert_eq!(display, "sk-…WXYZ");
        assert!(!debug.contains("0123456789"));
        assert!(!display.contains("test-0"));
    }

    #[test]
    fn short_secrets_show_nothing() {
        assert_eq!(Secret::new("abcdefgh".to_owned()).fingerprint(), "…");
    }

    #[test]
    fn read_from_strips_one_trailing_newline() {
        let s = Secret::read_from(&b"sk-abc\r\n"[..]).unwrap();
        assert_eq!(s.expose(), "sk-abc");
    }
}
