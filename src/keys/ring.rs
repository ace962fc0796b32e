//! Upstream key rings: a provider's usable keys, built from the vault, and the
//! order a request tries them in.
//!
//! A [`KeyRing`] is immutable; the control plane builds a new one from each vault
//! generation and publishes it inside the snapshot. The outbound header value is
//! built once here and marked sensitive, so the hot path never formats a key and
//! HTTP/2 never indexes it. Nothing here logs a secret: only key ids.
//!
//! Over 400 lines: the ring's selection and its key-echo windows (used to
//! scrub every response) are built from the same keys in one pass and kept
//! together on purpose.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::config::{Pool, Provider};
use crate::vault::document::{Document, KeyState, UpstreamKey};
use crate::vault::secret::Secret;

use super::headroom::InFlight;
use super::health::KeyHealth;
use super::pool::{NoPick, Shares, Want};

/// One usable key, ready to put on the wire.
#[derive(Debug)]
pub struct RingKey {
    /// Vault id (`key_…`); safe to log and to use as a metric label.
    pub id: Arc<str>,
    /// `current` or `previous`.
    pub state: KeyState,
    /// Header name for the provider's auth style.
    pub header_name: HeaderName,
    /// Prebuilt, sensitive header value (`Bearer sk-…` or the bare key).
    pub header_value: HeaderValue,
    /// The secret, kept for scrubbing echoes out of upstream responses.
    pub secret: Secret,
    /// Runtime health; carried across vault reloads while the secret is unchanged.
    pub health: Arc<KeyHealth>,
    /// Shares of new clients (`key set --weight`).
    pub weight: u32,
    /// The most requests open on it at once (`key set --max-in-flight`).
    pub max_in_flight: Option<u32>,
}

/// Every provider's key ring, by provider name (one vault generation's).
pub type Rings = std::collections::HashMap<String, std::sync::Arc<KeyRing>>;

/// A provider's usable keys: `current` ones first (a pool when several), then
/// the `previous` fallback. At most 64 keys (a request tracks tries in a `u64`).
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    current: usize,
    /// How the current keys share the load.
    pool: Pool,
    /// The current keys' shares of new clients.
    shares: Shares,
    /// Every 8-byte window of every key, to find echoes in upstream responses.
    /// Looked up once per byte of every response header, so the windows are
    /// `u64`s under unkeyed aHash rather than arrays under SipHash (the set holds only
    /// key windows, so lookups of attacker-chosen bytes cannot slow it).
    echo_windows: EchoWindows,
    /// Every byte value that occurs in some key: what the visible ends of a
    /// masked echo (`sk-ab****wxyz`) can be made of.
    key_bytes: ByteSet,
}

/// A set of byte values.
#[derive(Debug, Default, Clone, Copy)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn remove(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] &= !(1 << (b & 63));
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

/// An 8-byte window as the number the echo set holds.
/// The set of every key's 8-byte windows, with a bit filter in front: a
/// response header's every byte is looked up, almost always for nothing,
/// and one multiply and bit test answers most of those without hashing.
#[derive(Debug, Default)]
struct EchoWindows {
    set: HashSet<u64, std::hash::BuildHasherDefault<ahash::AHasher>>,
    /// One bit per slot, ~64 slots per window (a false hit rate near 1/64).
    filter: Vec<u64>,
    /// 64 minus log2 of the filter's bit count.
    shift: u32,
}

impl EchoWindows {
    fn new(windows: impl Iterator<Item = u64>) -> EchoWindows {
        let set: HashSet<u64, _> = windows.collect();
        let bits = (set.len() * 64).next_power_of_two().max(4096);
        let mut filter = vec![0u64; bits / 64];
        let shift = 64 - bits.trailing_zeros();
        for &window in &set {
            let slot = Self::slot(window, shift);
            filter[slot / 64] |= 1 << (slot % 64);
        }
        EchoWindows { set, filter, shift }
    }

    fn slot(window: u64, shift: u32) -> usize {
        (window.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn contains(&self, window: u64) -> bool {
        let slot = Self::slot(window, self.shift);
        self.filter
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
            && self.set.contains(&window)
    }
}

fn echo_window(window: &[u8]) -> Option<u64> {
    <[u8; ECHO_WINDOW]>::try_from(window)
        .ok()
        .map(u64::from_ne_bytes)
}

/// Length of the key fragment that counts as an echo of a key.
pub const ECHO_WINDOW: usize = 8;

/// The fewest characters a masked echo shows on each side of its mask (xAI
/// shows two: `xa***yz`).
const MASK_MIN_SHOWN: usize = 2;
/// How far either side of a mask is searched for the key's visible ends
/// (providers show at most 8 or so; longer ends also trip the 8-byte windows).
const MASK_MAX_SHOWN: usize = 64;

/// One element of the mask providers put in the middle of a key they quote:
/// `*`, `.`, `…` (UTF-8) or `\u2026` (its JSON escape). Its length in bytes
/// and what it is.
fn mask_element(bytes: &[u8]) -> Option<(usize, MaskElement)> {
    match bytes {
        [b'*', ..] => Some((1, MaskElement::Star)),
        [b'.', ..] => Some((1, MaskElement::Dot)),
        [0xE2, 0x80, 0xA6, ..] => Some((3, MaskElement::Ellipsis)),
        [b'\\', b'u', b'2', b'0', b'2', b'6', ..] => Some((6, MaskElement::Ellipsis)),
        _ => None,
    }
}

/// Where the next byte that may begin a [`mask_element`] is. Most header
/// values and bodies hold none, and memchr skips them many bytes at a time
/// (the byte-by-byte walk was 1.4 % of a request's instructions).
fn next_mask_start(bytes: &[u8]) -> Option<usize> {
    let symbol = memchr::memchr3(b'*', b'.', 0xE2, bytes);
    let escape = memchr::memchr(b'\\', &bytes[..symbol.unwrap_or(bytes.len())]);
    escape.or(symbol)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MaskElement {
    Star,
    Dot,
    Ellipsis,
}

/// The key chosen for one attempt.
#[derive(Debug)]
pub struct Pick<'a> {
    /// Position in the ring (bit in the request's tried-mask).
    pub index: usize,
    /// The key.
    pub key: &'a RingKey,
    /// This attempt probes a suspect key whose cooldown is over.
    pub probe: bool,
    /// The request open on a key with a `max_in_flight`, until dropped.
    pub in_flight: Option<InFlight>,
}

impl KeyRing {
    /// Builds `provider`'s ring from a vault document at `now` (unix seconds),
    /// keeping the runtime health of keys already in `previous_ring`. A
    /// `previous` key past its grace, or a secret that cannot be a header value,
    /// is left out.
    pub fn build(
        provider: &Provider,
        document: &Document,
        now: u64,
        previous_ring: Option<&KeyRing>,
    ) -> KeyRing {
        let usable = |state: KeyState| {
            document.keys.iter().filter(move |k| {
                k.provider == provider.name
                    && k.state == state
                    && (state != KeyState::Previous || k.grace_until.is_none_or(|t| now < t))
            })
        };
        let mut keys = Vec::new();
        let mut current = 0;
        for key in usable(KeyState::Current)
            .chain(usable(KeyState::Previous))
            .take(64)
        {
            let Some(secret) = key.secret.as_ref() else {
                continue;
            };
            let Some((header_name, header_value)) = provider.auth.header(secret) else {
                continue;
            };
            let health = previous_ring
                .and_then(|ring| {
                    ring.keys
                        .iter()
                        .find(|k| *k.id == *key.id && k.secret == *secret)
                })
                .map(|k| k.health.clone())
                .unwrap_or_default();
            current += usize::from(key.state == KeyState::Current);
            keys.push(RingKey {
                id: Arc::from(key.id.as_str()),
                state: key.state,
                header_name,
                header_value,
                secret: secret.clone(),
                health,
                weight: key.weight.unwrap_or(1),
                max_in_flight: key.max_in_flight.filter(|max| *max > 0),
            });
        }
        let echo_windows = EchoWindows::new(
            keys.iter()
                .flat_map(|k| k.secret.expose().as_bytes().windows(ECHO_WINDOW))
                .filter_map(echo_window),
        );
        let mut key_bytes = ByteSet::default();
        for key in &keys {
            for &b in key.secret.expose().as_bytes() {
                key_bytes.insert(b);
            }
        }
        // A mask element is never part of a key's visible end.
        for b in [b'*', b'.', b'\\', 0xE2] {
            key_bytes.remove(b);
        }
        let weights: Vec<u32> = keys[..current].iter().map(|k| k.weight).collect();
        KeyRing {
            keys,
            current,
            pool: provider.pool,
            shares: Shares::new(&weights),
            echo_windows,
            key_bytes,
        }
    }

    /// Replaces every fragment of a key (any 8 bytes of one) in `bytes` with
    /// `*`, and every masked echo of one too: the key's first and last
    /// characters around a run of `*`, `...` or `…`, the way providers quote a
    /// key they refused (OpenAI `sk-proj-****…abcd`, `sk-...abcd`; xAI
    /// `xa***yz`), since those ends fingerprint the key and let a guess be
    /// confirmed. Stars that do not sit between the ends of a key of this ring
    /// are left alone. Returns true when something was masked.
    pub fn mask_echoes(&self, bytes: &mut [u8]) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        // Before the windows: once a long visible prefix is starred out, the
        // suffix it belonged with could no longer be recognised.
        let shapes = self.masked_echoes(bytes);
        for range in &shapes {
            bytes[range.clone()].fill(b'*');
        }
        let mut masked = !shapes.is_empty();
        if bytes.len() < ECHO_WINDOW || self.echo_windows.is_empty() {
            return masked;
        }
        let mut masked_until = 0;
        for start in 0..=bytes.len() - ECHO_WINDOW {
            let window = &bytes[start..start + ECHO_WINDOW];
            if window.iter().all(|&b| b == b'*') {
                continue;
            }
            let Some(window) = echo_window(window) else {
                continue;
            };
            if self.echo_windows.contains(window) {
                masked_until = start + ECHO_WINDOW;
                masked = true;
            }
            if start < masked_until && start + ECHO_WINDOW >= masked_until {
                bytes[start..masked_until].fill(b'*');
            }
        }
        masked
    }

    /// True when `bytes` holds a fragment of a key, or a masked echo of one.
    /// One pass over the bytes (every response header value goes through
    /// here): each window looked up, and the mask search only when a byte
    /// that may begin a mask was seen.
    pub fn contains_echo(&self, bytes: &[u8]) -> bool {
        let mut may_be_masked = false;
        for (at, &byte) in bytes.iter().enumerate() {
            may_be_masked |= matches!(byte, b'*' | b'.' | b'\\' | 0xE2);
            if let Some(window) = bytes.get(at..at + ECHO_WINDOW).and_then(echo_window) {
                if self.echo_windows.contains(window) {
                    return true;
                }
            }
        }
        may_be_masked && !self.keys.is_empty() && !self.masked_echoes(bytes).is_empty()
    }

    /// The byte ranges of masked echoes in `bytes`: a mask (a run holding a
    /// `*`, three `.` or an ellipsis) with, right before it, the first ≥ 2
    /// characters of one of the ring's keys and, right after it, that key's
    /// last ≥ 2. Each range covers the visible ends and the mask.
    fn masked_echoes(&self, bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(next) = next_mask_start(&bytes[at..]) {
            at += next;
            if mask_element(&bytes[at..]).is_none() {
                at += 1;
                continue;
            }
            let start = at;
            let (mut stars, mut dots, mut ellipses) = (0, 0, 0);
            while let Some((len, element)) = mask_element(&bytes[at..]) {
                match element {
                    MaskElement::Star => stars += 1,
                    MaskElement::Dot => dots += 1,
                    MaskElement::Ellipsis => ellipses += 1,
                }
                at += len;
            }
            if stars > 0 || dots >= 3 || ellipses > 0 {
                if let Some(range) = self.masked_echo_around(bytes, start, at) {
                    found.push(range);
                }
            }
        }
        found
    }

    /// The masked echo around the mask `bytes[start..end]`, if its two sides
    /// are the beginning and the end of one key.
    fn masked_echo_around(
        &self,
        bytes: &[u8],
        start: usize,
        end: usize,
    ) -> Option<std::ops::Range<usize>> {
        let is_key_byte = |b: u8| self.key_bytes.contains(b);
        let mut left = start;
        while left > start.saturating_sub(MASK_MAX_SHOWN) && is_key_byte(bytes[left - 1]) {
            left -= 1;
        }
        let mut right = end;
        while right < bytes.len().min(end + MASK_MAX_SHOWN) && is_key_byte(bytes[right]) {
            right += 1;
        }
        if start - left < MASK_MIN_SHOWN || right - end < MASK_MIN_SHOWN {
            return None;
        }
        let mut echo: Option<std::ops::Range<usize>> = None;
        for key in &self.keys {
            let key = key.secret.expose().as_bytes();
            // The longest visible beginning and end of this key.
            let Some(from) =
                (left..=start - MASK_MIN_SHOWN).find(|&i| key.starts_with(&bytes[i..start]))
            else {
                continue;
            };
            let Some(to) = (end + MASK_MIN_SHOWN..=right)
                .rev()
                .find(|&i| key.ends_with(&bytes[end..i]))
            else {
                continue;
            };
            echo = Some(match echo {
                Some(r) => r.start.min(from)..r.end.max(to),
                None => from..to,
            });
        }
        echo
    }

    /// True when no key can be used.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys a request may try.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every key, current ones first.
    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// How many keys are `current` (the pool; they come first).
    pub(super) fn current_count(&self) -> usize {
        self.current
    }

    /// How the pool shares the load.
    pub(super) fn pool(&self) -> Pool {
        self.pool
    }

    /// The current keys' shares of new clients.
    pub(super) fn shares(&self) -> &Shares {
        &self.shares
    }

    /// The key for the next attempt ([`super::pool`]): `Err` when every key
    /// was tried, or the keys left are at capacity.
    pub fn pick(&self, want: &Want, tried: u64, now_ms: u64) -> Result<Pick<'_>, NoPick> {
        super::pool::pick(self, want, tried, now_ms)
    }

    /// True when `pick` would offer another key (some key is untried).
    pub fn pick_would_find(&self, tried: u64) -> bool {
        (0..self.keys.len()).any(|i| tried & (1u64 << i) == 0)
    }
}

/// Masks every fragment of `secret` (and the masked shapes providers echo)
/// in `text`, with the scrubber the proxy uses on error bodies: for answers
/// about one key that is not in a ring yet (verification, a management API).
pub fn mask_secret(provider: &Provider, secret: &Secret, text: String) -> String {
    mask_secrets(provider, &[secret], text)
}

/// [`mask_secret`] for several secrets at once (every secret keygate holds,
/// for a management API's answer).
pub fn mask_secrets(provider: &Provider, secrets: &[&Secret], text: String) -> String {
    let document = Document {
        keys: secrets
            .iter()
            .map(|secret| {
                UpstreamKey::new(
                    String::new(),
                    &provider.name,
                    secret,
                    None,
                    KeyState::Current,
                    0,
                )
            })
            .collect(),
        ..Document::default()
    };
    let ring = KeyRing::build(provider, &document, 0, None);
    let mut bytes = text.into_bytes();
    ring.mask_echoes(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::vault::document::UpstreamKey;

    fn key(id: &str, state: KeyState) -> UpstreamKey {
        let secret = Secret::new(format!("sk-test-{id}-000000000000"));
        UpstreamKey::new(id.into(), "openai", &secret, None, state, 0)
    }

    #[test]
    fn pool_is_sticky_then_falls_back_to_previous() {
        let config = Config::from_toml("").unwrap();
        let document = Document {
            keys: vec![
                key("a", KeyState::Current),
                key("b", KeyState::Current),
                key("old", KeyState::Previous),
                key("gone", KeyState::Retired),
            ],
            ..Document::default()
        };
        let ring = KeyRing::build(&config.providers["openai"], &document, 0, None);
        assert_eq!(ring.len(), 3);
        let mut tried = 0u64;
        let mut order = Vec::new();
        while let Ok(pick) = ring.pick(
            &Want {
                sticky: 1,
                tokens: 0,
            },
            tried,
            0,
        ) {
            tried |= 1 << pick.index;
            order.push(pick.key.id.to_string());
        }
        assert_eq!(order, ["b", "a", "old"]);
        assert!(ring.keys()[0].header_value.is_sensitive());
    }

    #[test]
    fn suspect_keys_are_skipped_until_nothing_else_is_left() {
        let config = Config::from_toml("").unwrap();
        let document = Document {
            keys: vec![key("a", KeyState::Current), key("old", KeyState::Previous)],
            ..Document::default()
        };
        let ring = KeyRing::build(&config.providers["openai"], &document, 0, None);
        ring.keys()[0]
            .health
            .record_rejection(std::time::Duration::from_secs(60), 10, false);
        let first = ring
            .pick(
                &Want {
                    sticky: 0,
                    tokens: 0,
                },
                0,
                20,
            )
            .unwrap();
        assert_eq!(&*first.key.id, "old");
        // With the fallback tried too, the suspect key is used anyway.
        let last = ring
            .pick(
                &Want {
                    sticky: 0,
                    tokens: 0,
                },
                1 << first.index,
                20,
            )
            .unwrap();
        assert_eq!(&*last.key.id, "a");
        // Health survives a rebuild from the same secret.
        let rebuilt = KeyRing::build(&config.providers["openai"], &document, 0, Some(&ring));
        assert!(Arc::ptr_eq(
            &rebuilt.keys()[0].health,
            &ring.keys()[0].health
        ));
    }

    #[test]
    fn echoed_key_fragments_are_masked() {
        let config = Config::from_toml("").unwrap();
        let document = Document {
            keys: vec![key("a", KeyState::Current)],
            ..Document::default()
        };
        let ring = KeyRing::build(&config.providers["openai"], &document, 0, None);
        let mut body = b"bad key sk-test-a-000000000000 and a-0000000 end".to_vec();
        assert!(ring.mask_echoes(&mut body));
        let text = String::from_utf8(body).unwrap();
        assert!(!ring.contains_echo(text.as_bytes()), "{text}");
        assert!(
            text.starts_with("bad key *") && text.ends_with(" end"),
            "{text}"
        );
        let mut clean = b"nothing to see here".to_vec();
        assert!(!ring.mask_echoes(&mut clean));
    }

    fn ring_of(secrets: &[&str]) -> KeyRing {
        let config = Config::from_toml("").unwrap();
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| UpstreamKey {
                secret: Some(Secret::new(secret.to_string())),
                ..key(&format!("k{i}"), KeyState::Current)
            })
            .collect();
        let document = Document {
            keys,
            ..Document::default()
        };
        KeyRing::build(&config.providers["openai"], &document, 0, None)
    }

    fn masked(ring: &KeyRing, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        ring.mask_echoes(&mut bytes);
        String::from_utf8(bytes).unwrap()
    }

    const PROJECT_KEY: &str = "sk-proj-A-fake-test-key-not-real-0000000000000000abcd";
    const XAI: &str = "xai-fake-test-key-not-real-00000000005yz";

    #[test]
    fn masked_echoes_in_every_provider_shape_are_masked() {
        let ring = ring_of(&[PROJECT_KEY, XAI]);
        let stars = "*".repeat(100);
        let cases = [
            // OpenAI, project keys: the prefix, a long run of stars, the last 4.
            format!("Incorrect API key provided: sk-proj-{stars}abcd. You can find your API key at https://platform.openai.com/account/api-keys."),
            // OpenAI, older: first 8 (or 6, 5) characters, stars, last 4.
            "Incorrect API key provided: sk-proj-***************abcd.".to_string(),
            "key sk-pr****abcd, again sk-proj-A***...abcd".to_string(),
            // OpenAI, newest: `sk-...` and the last 4.
            "Incorrect API key provided: sk-...abcd. You can".to_string(),
            "as text sk-proj…abcd and as JSON sk-proj\\u2026abcd".to_string(),
            // xAI (400): two characters each side.
            "Incorrect API key provided: xa***yz. You can obtain an API key from https://console.x.ai.".to_string(),
            // Quoted in odd wrappers.
            "<sk-proj-****abcd> ${xa***5yz} \\u003csk-pro***bcd\\u003e".to_string(),
        ];
        for text in cases {
            let out = masked(&ring, &text);
            assert!(
                !out.contains("abcd") && !out.contains("yz"),
                "{text}\n→ {out}"
            );
            assert!(
                !out.contains("sk-p") && !out.contains("xa*"),
                "{text}\n→ {out}"
            );
            assert!(!ring.contains_echo(out.as_bytes()), "{out}");
            assert!(ring.contains_echo(text.as_bytes()), "{text}");
            assert_eq!(out.len(), text.len());
        }
        let out = masked(&ring, &format!("provided: sk-proj-{stars}abcd. You can find your API key at https://platform.openai.com/account/api-keys."));
        assert!(out.starts_with("provided: ***"), "{out}");
        assert!(
            out.ends_with(
                "***. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "{out}"
        );
    }

    #[test]
    fn stars_that_are_not_a_masked_key_stay() {
        let ring = ring_of(&[PROJECT_KEY, XAI]);
        for text in [
            "**bold** and 2*3=6 and a***b and ... trailing...",
            // A masked key, but not one of this ring's.
            "Incorrect API key provided: sk-pr********qqqq and xa***qq and zz***yz.",
            // One side only.
            "sk-pr**** and ****abcd",
            "",
            "*",
        ] {
            assert_eq!(masked(&ring, text), text);
            assert!(!ring.contains_echo(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn previous_past_its_grace_is_not_used() {
        let config = Config::from_toml("").unwrap();
        let mut old = key("old", KeyState::Previous);
        old.grace_until = Some(100);
        let document = Document {
            keys: vec![key("a", KeyState::Current), old],
            ..Document::default()
        };
        assert_eq!(
            KeyRing::build(&config.providers["openai"], &document, 99, None).len(),
            2
        );
        assert_eq!(
            KeyRing::build(&config.providers["openai"], &document, 100, None).len(),
            1
        );
    }

    #[test]
    fn a_management_credential_never_enters_the_ring() {
        let config = Config::from_toml("").unwrap();
        let admin = "sk-admin-test-Lk2Jh4Gf6Ds8Ap0Zx1Cv3Bn";
        let mut document = Document::default();
        document.set_admin_key("openai", Secret::new(admin.to_owned()), 0);
        let provider = &config.providers["openai"];
        assert!(KeyRing::build(provider, &document, 0, None).is_empty());
        document.keys.push(key("a", KeyState::Current));
        let ring = KeyRing::build(provider, &document, 0, None);
        assert_eq!(ring.len(), 1);
        assert!(ring.keys().iter().all(|k| k.secret.expose() != admin
            && k.header_value.as_bytes() != format!("Bearer {admin}").as_bytes()));
        // Nor does the ring know it as a key to mask: it was never one of its keys.
        assert!(!ring.contains_echo(admin.as_bytes()));
    }
}
