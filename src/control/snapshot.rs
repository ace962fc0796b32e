//! One vault generation made ready for the hot path: the [`Snapshot`] of
//! clients and key rings every request loads once, and how it is built from
//! a vault document. Only the reloader ([`crate::control::reload`]) builds and
//! publishes one; requests only read it.

use std::collections::HashMap;
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

/// A client record as `GET /admin/clients` lists it, read from the snapshot
/// so that a listing never decrypts the vault. Revoked clients and decoys are
/// listed too, though they are never in [`Snapshot::clients`].
#[derive(Debug)]
pub struct ListedClient {
    /// Name and limits (shared with the lookup table for active clients).
    pub info: Arc<ClientInfo>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of revocation.
    pub revoked: Option<u64>,
    /// While a rotated client's old key is valid: until when.
    pub old_key_valid_until: Option<u64>,
    /// A decoy (its key is never valid).
    pub decoy: bool,
}

impl ListedClient {
    /// The row `GET /admin/clients` shows (the same fields as `client list --json`).
    pub fn summary(&self) -> serde_json::Value {
        crate::vault::client_record::summary(
            &self.info.name,
            self.created,
            self.revoked,
            self.old_key_valid_until,
            self.decoy,
            &self.info.limits,
        )
    }
}

/// Why a client key this vault issued no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfUse {
    /// Its client was revoked (`client revoke`, a leak report).
    Revoked,
    /// Its client was given a newer key (`client rotate`) and this one's
    /// grace has ended.
    Rotated,
}

/// One vault generation, ready for the hot path.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Vault generation it was built from (0: no vault yet).
    pub generation: u64,
    /// Active clients by key digest.
    pub clients: HashMap<ClientKeyDigest, Arc<ClientInfo>>,
    /// Key digests of clients that were revoked and of rotated clients' old
    /// keys past their grace, so a refusal can say which rather than
    /// "unknown" (never grants access).
    pub out_of_use: HashMap<ClientKeyDigest, OutOfUse>,
    /// Decoy keys (`client add --decoy`) by digest, with the decoy's name:
    /// apart from `clients`, so a valid key's lookup is the same with or
    /// without decoys, and a decoy can never grant access.
    pub decoys: HashMap<ClientKeyDigest, Arc<str>>,
    /// Every client record, by name (ties in the vault's order): the admin
    /// API's listing, paged by name.
    pub roster: Vec<ListedClient>,
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
        let mut clients = HashMap::new();
        let mut out_of_use = HashMap::new();
        let mut decoys = HashMap::new();
        let mut roster = Vec::with_capacity(document.clients.len());
        for c in &document.clients {
            let digest = ClientKeyDigest::from_hex(&c.key_sha256);
            // Both keys of a rotating client stay on the same pool key.
            let sticky = digest.map_or(0, |d| {
                let mut first = [0u8; 8];
                first.copy_from_slice(&d.0[..8]);
                u64::from_le_bytes(first)
            });
            let info = |digest| {
                Arc::new(ClientInfo {
                    name: Arc::from(c.name.as_str()),
                    digest,
                    sticky,
                    limits: c.limits,
                })
            };
            let listed = info(digest.unwrap_or(ClientKeyDigest([0; 32])));
            roster.push(ListedClient {
                info: listed.clone(),
                created: c.created,
                revoked: c.revoked,
                old_key_valid_until: c.old_key.as_ref().map(|o| o.valid_until),
                decoy: c.decoy,
            });
            let Some(digest) = digest else {
                continue;
            };
            let old = c
                .old_key
                .as_ref()
                .and_then(|o| Some((ClientKeyDigest::from_hex(&o.key_sha256)?, o.valid_until)));
            if c.revoked.is_some() {
                out_of_use.insert(digest, OutOfUse::Revoked);
                out_of_use.extend(old.map(|(d, _)| (d, OutOfUse::Revoked)));
                continue;
            }
            if c.decoy {
                decoys.insert(digest, listed.name.clone());
                continue;
            }
            clients.insert(digest, listed);
            match old {
                Some((old, until)) if until > now => {
                    clients.insert(old, info(old));
                }
                Some((old, _)) => {
                    out_of_use.insert(old, OutOfUse::Rotated);
                }
                None => {}
            }
        }
        // Stable: a name's records keep the vault's order.
        roster.sort_by(|a, b| a.info.name.cmp(&b.info.name));
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
        // The next moment what is served changes with no write: a key's or a
        // rotated client key's grace ends.
        let client_graces = document
            .clients
            .iter()
            .filter(|c| c.revoked.is_none())
            .filter_map(|c| c.old_key.as_ref().map(|o| o.valid_until));
        let next_expiry = document
            .keys
            .iter()
            .filter(|k| k.state == crate::vault::document::KeyState::Previous)
            .filter_map(|k| k.grace_until)
            .chain(client_graces)
            .filter(|&t| t > now)
            .min();
        Snapshot {
            generation,
            clients,
            out_of_use,
            decoys,
            roster,
            rings,
            next_expiry,
        }
    }
}
