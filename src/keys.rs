//! Upstream key rings: a provider's usable keys, built from the vault, and the
//! order a request tries them in.
//!
//! A [`KeyRing`] is immutable; the control plane builds a new one from each vault
//! generation and publishes it inside the snapshot. The outbound header value is
//! built once here and marked sensitive, so the hot path never formats a key and
//! HTTP/2 never indexes it. Nothing here logs a secret: only key ids.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::config::{AuthStyle, Provider};
use crate::secret::Secret;
use crate::vault::document::{Document, KeyState};

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
}

/// A provider's usable keys: `current` ones (a pool when several) then the
/// `previous` fallback.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// `current` keys in vault order.
    pub current: Vec<RingKey>,
    /// The fallback, if any.
    pub previous: Option<RingKey>,
}

impl KeyRing {
    /// Builds `provider`'s ring from a vault document. Keys whose secret cannot be
    /// a header value are skipped (they could never authenticate).
    pub fn build(provider: &Provider, document: &Document) -> KeyRing {
        let mut ring = KeyRing::default();
        for key in document.keys.iter().filter(|k| k.provider == provider.name) {
            let Some(secret) = key.secret.as_ref() else {
                continue;
            };
            if !key.state.is_usable() {
                continue;
            }
            let Some((header_name, header_value)) = auth_header(provider.auth, secret) else {
                continue;
            };
            let ring_key = RingKey {
                id: Arc::from(key.id.as_str()),
                state: key.state,
                header_name,
                header_value,
                secret: secret.clone(),
            };
            match key.state {
                KeyState::Current => ring.current.push(ring_key),
                _ => ring.previous = Some(ring_key),
            }
        }
        ring
    }

    /// True when no key can be used.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_none()
    }

    /// Number of keys a request may try.
    pub fn len(&self) -> usize {
        self.current.len() + usize::from(self.previous.is_some())
    }

    /// The `attempt`-th key to try for a client with stickiness `sticky`:
    /// current keys starting at the client's own (so a pool keeps each client on
    /// one key and provider-side prompt caches keep working), then `previous`.
    /// Each key comes up once; `None` when all were offered.
    pub fn nth_choice(&self, sticky: u64, attempt: usize) -> Option<&RingKey> {
        let pool = self.current.len();
        if attempt < pool {
            let start = (sticky % pool as u64) as usize;
            return self.current.get((start + attempt) % pool);
        }
        if attempt == pool {
            return self.previous.as_ref();
        }
        None
    }

    /// Every key's secret, for scrubbing upstream responses.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.current
            .iter()
            .chain(self.previous.as_ref())
            .map(|k| &k.secret)
    }
}

/// The header that carries `secret` in `style`, marked sensitive.
pub fn auth_header(style: AuthStyle, secret: &Secret) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match style {
        AuthStyle::Bearer => (
            http::header::AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {}", secret.expose())).ok()?,
        ),
        AuthStyle::XApiKey => (
            HeaderName::from_static("x-api-key"),
            HeaderValue::try_from(secret.expose()).ok()?,
        ),
        AuthStyle::ApiKey => (
            HeaderName::from_static("api-key"),
            HeaderValue::try_from(secret.expose()).ok()?,
        ),
    };
    let mut value = value;
    value.set_sensitive(true);
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::vault::document::UpstreamKey;

    fn key(id: &str, state: KeyState) -> UpstreamKey {
        UpstreamKey {
            id: id.into(),
            provider: "openai".into(),
            label: None,
            secret: Some(Secret::new(format!("sk-test-{id}-000000000000"))),
            fingerprint: "sk-…0000".into(),
            state,
            created: 0,
            state_changed: 0,
            last_verified: None,
            reason: None,
        }
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
            clients: vec![],
        };
        let ring = KeyRing::build(&config.providers["openai"], &document);
        assert_eq!(ring.len(), 3);
        let order: Vec<&str> = (0..4)
            .filter_map(|n| ring.nth_choice(1, n))
            .map(|k| &*k.id)
            .collect();
        assert_eq!(order, ["b", "a", "old"]);
        assert!(ring.nth_choice(0, 0).unwrap().header_value.is_sensitive());
    }
}
