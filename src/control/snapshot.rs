//! One vault generation made ready for the hot path: the [`Snapshot`] of
//! clients and key rings every request loads once, and how it is built from
//! a vault document. Only the reloader ([`crate::control::reload`]) builds and
//! publishes one; requests only read it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::Config;
use crate::keys::{KeyRing, Rings};
use crate::usage::limits::ClientLimits;
use crate::vault::client_key::ClientKeyDigest;
use crate::vault::document::Document;

/// A client allowed to call the proxy.
#[derive(Debug)]
pub struct ClientInfo {
    /// Name, used in logs and metric labels.
    pub name: Arc<str>,
    /// Digest of its key (for the constant-time confirm after the map lookup).
    pub digest: ClientKeyDigest,
    /// Spreads clients over a provider's key pool, stable per client.
    pub sticky: u64,
    /// Its rpm / tpm / budget.
    pub limits: ClientLimits,
}

/// One vault generation, ready for the hot path.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Vault generation it was built from (0: no vault yet).
    pub generation: u64,
    /// Active clients by key digest.
    pub clients: HashMap<ClientKeyDigest, Arc<ClientInfo>>,
    /// Key digests of revoked clients, so a refusal can say "revoked" rather
    /// than "unknown" (never grants access).
    pub revoked_clients: HashSet<ClientKeyDigest>,
    /// Key ring per provider name.
    pub rings: Rings,
    /// Unix seconds when a `previous` key's grace ends (the snapshot must be
    /// rebuilt then, without it).
    pub next_expiry: Option<u64>,
}

impl Snapshot {
    /// Builds the snapshot of `document` for the configured providers at `now`
    /// (unix seconds), carrying key health over from `previous`.
    pub fn build(
        config: &Config,
        document: &Document,
        generation: u64,
        now: u64,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let clients = document
            .clients
            .iter()
            .filter(|c| c.revoked.is_none())
            .filter_map(|c| {
                let digest = ClientKeyDigest::from_hex(&c.key_sha256)?;
                let sticky = u64::from_le_bytes(digest.0[..8].try_into().ok()?);
                Some((
                    digest,
                    Arc::new(ClientInfo {
                        name: Arc::from(c.name.as_str()),
                        digest,
                        sticky,
                        limits: ClientLimits {
                            rpm: c.rpm,
                            tpm: c.tpm,
                            budget_tokens: c.budget_tokens,
                        },
                    }),
                ))
            })
            .collect();
        let revoked_clients = document
            .clients
            .iter()
            .filter(|c| c.revoked.is_some())
            .filter_map(|c| ClientKeyDigest::from_hex(&c.key_sha256))
            .collect();
        let rings = config
            .providers
            .values()
            .map(|p| {
                let old = previous.and_then(|s| s.rings.get(&p.name)).map(|r| &**r);
                (
                    p.name.clone(),
                    Arc::new(KeyRing::build(p, document, now, old)),
                )
            })
            .collect();
        let next_expiry = document
            .keys
            .iter()
            .filter(|k| k.state == crate::vault::document::KeyState::Previous)
            .filter_map(|k| k.grace_until)
            .filter(|&t| t > now)
            .min();
        Snapshot {
            generation,
            clients,
            revoked_clients,
            rings,
            next_expiry,
        }
    }
}
