//! The shapes of provider keys (a public prefix, then so many characters
//! of a kind), which each kind's file declares, and the reading they serve:
//! which provider a key sent to keygate by mistake belongs to.

/// The characters that may follow a key format's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChars {
    /// Letters, digits, `-` and `_` (most providers' keys).
    Token,
    /// Lower-case hexadecimal digits only.
    Hex,
    /// Letters and digits only.
    Alnum,
}

impl KeyChars {
    /// True when `b` may appear in a key of this shape.
    pub fn allows(self, b: u8) -> bool {
        match self {
            KeyChars::Token => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            KeyChars::Hex => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            KeyChars::Alnum => b.is_ascii_alphanumeric(),
        }
    }
}

/// One documented shape of a provider's keys: a public prefix, then
/// `min..=max` characters of `chars`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFormat {
    /// The public prefix (`sk-proj-`, `AIza`).
    pub prefix: &'static str,
    /// What such a key is ("project key").
    pub what: &'static str,
    /// The fewest characters after the prefix.
    pub min: usize,
    /// The most characters after the prefix.
    pub max: usize,
    /// What those characters may be.
    pub chars: KeyChars,
}

impl KeyFormat {
    /// True when `text` is a whole key of this shape.
    pub fn matches(&self, text: &str) -> bool {
        text.strip_prefix(self.prefix).is_some_and(|rest| {
            (self.min..=self.max).contains(&rest.len())
                && rest.bytes().all(|b| self.chars.allows(b))
        })
    }

    /// How telling a match is: an exact length beats a range, then the
    /// longer prefix wins (`sk-ant-` before `sk-`).
    fn specificity(&self) -> (bool, usize) {
        (self.min == self.max, self.prefix.len())
    }
}

/// The exact shape of a provider's key as it issues it, for finding keys
/// in text (`keygate scan`): stricter than [`KeyFormat`], so prose that
/// starts like a key (`sk-learn`) is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactFormat {
    /// The public prefix.
    pub prefix: &'static str,
    /// What such a key is.
    pub what: &'static str,
    /// The lengths the part after the prefix may have.
    pub lengths: &'static [usize],
    /// What that part is made of.
    pub chars: KeyChars,
    /// A marker it holds, and where it may start in that part
    /// (OpenAI's `T3BlbkFJ`, "OpenAI" in base64).
    pub marker: Option<(&'static str, &'static [usize])>,
    /// What it ends with (Anthropic's `AA`).
    pub ends_with: Option<&'static str>,
}

impl ExactFormat {
    /// A prefix, then exactly `length` characters of `chars`.
    pub const fn plain(
        prefix: &'static str,
        what: &'static str,
        length: &'static [usize],
        chars: KeyChars,
    ) -> ExactFormat {
        ExactFormat {
            prefix,
            what,
            lengths: length,
            chars,
            marker: None,
            ends_with: None,
        }
    }

    /// True when `text` is a whole key of this shape.
    pub fn matches(&self, text: &str) -> bool {
        let Some(body) = text.strip_prefix(self.prefix) else {
            return false;
        };
        self.lengths.contains(&body.len())
            && body.bytes().all(|b| self.chars.allows(b))
            && self.marker.is_none_or(|(marker, at)| {
                at.iter()
                    .any(|&i| body.get(i..i + marker.len()) == Some(marker))
            })
            && self.ends_with.is_none_or(|end| body.ends_with(end))
    }
}

/// The provider (as a user knows it) whose API key `presented` is, by the
/// documented formats of every kind; the most specific format wins.
pub fn lookalike(presented: &str) -> Option<&'static str> {
    super::KINDS
        .iter()
        .flat_map(|kind| kind.key_formats().iter().map(move |f| (kind, f)))
        .filter(|(_, format)| format.matches(presented))
        .max_by_key(|(_, format)| format.specificity())
        .map(|(kind, _)| kind.display_name())
}
