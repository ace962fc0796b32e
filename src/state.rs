//! What every request reads: the [`Snapshot`] (clients and key rings of one
//! vault generation) behind `ArcSwap`, plus the process-wide pieces in [`Shared`].
//!
//! The request path only loads the snapshot (once per request, `load_full`);
//! only `reload` stores a new one, built whole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::clients::ClientKeyDigest;
use crate::config::Config;
use crate::keys::KeyRing;
use crate::limits::{ClientLimits, Limits};
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::reload::{ReloadError, VaultWatch};
use crate::secret::Secret;
use crate::upstream::Upstream;
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
    pub rings: HashMap<String, Arc<KeyRing>>,
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

/// Process-wide state shared by the listeners, the request path and the control plane.
pub struct Shared {
    /// The validated configuration (fixed for the process).
    pub config: Arc<Config>,
    /// The current snapshot; replaced whole by `reload`.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics on the process's own registry.
    pub metrics: Metrics,
    /// The pooled upstream client.
    pub upstream: Upstream,
    /// Set once a vault generation has been loaded.
    pub vault_loaded: AtomicBool,
    /// The control plane's vault access (reload loop and admin writes take
    /// turns; never touched by the request path).
    pub control: Mutex<VaultWatch>,
    /// Bearer token for `/admin/*`; `None` turns the admin API off.
    pub admin_token: Option<Secret>,
    /// Per-client usage counters, drained by the ledger task.
    pub meter: Arc<Meter>,
    /// Per-client limit state.
    pub limits: Limits,
}

impl Shared {
    /// Shared state with an empty snapshot; call [`Shared::reload`] to load the vault.
    pub fn new(
        config: Arc<Config>,
        vault_watch: VaultWatch,
        admin_token: Option<Secret>,
        limits: Limits,
    ) -> Result<Shared, crate::upstream::UpstreamError> {
        let upstream = Upstream::new(&config.server)?;
        let meter = Meter::with_max_keys(
            config.metering.max_series,
            config.metering.max_series_per_client,
        );
        Ok(Shared {
            metrics: Metrics::new(&config),
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            upstream,
            vault_loaded: AtomicBool::new(false),
            control: Mutex::new(vault_watch),
            admin_token,
            meter: Arc::new(meter),
            limits,
        })
    }

    /// The control plane's vault access (blocking; not for the request path).
    pub fn control(&self) -> MutexGuard<'_, VaultWatch> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reloads the vault now; publishes a newer generation. Counts
    /// `keygate_vault_reloads_total` by result.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        let result = self.control().reload(self);
        let label = match &result {
            Ok(true) => "ok",
            Ok(false) => return result,
            Err(_) => "error",
        };
        self.metrics.vault_reloads.with_label_values(&[label]).inc();
        result
    }

    /// Publishes a new snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.vault_loaded.store(true, Ordering::Release);
    }

    /// Whether a vault generation was loaded.
    pub fn is_vault_loaded(&self) -> bool {
        self.vault_loaded.load(Ordering::Acquire)
    }
}
