//! The process-wide pieces every part of keygate shares ([`Shared`]): the
//! configuration, the current [`Snapshot`] behind `ArcSwap`, metrics, the
//! upstream pool, the meter, the limits and the reloader's vault access.
//!
//! The request path only loads the snapshot (once per request, `load_full`);
//! only the reloader stores a new one, built whole.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::control::metrics::Metrics;
use crate::control::reload::{ReloadError, VaultWatch};
use crate::control::snapshot::Snapshot;
use crate::events::outbox::Outbox;
use crate::events::queue::EventQueue;
use crate::events::{Event, Events};
use crate::keys::key_events::KeyEvents;
use crate::net::upstream::Upstream;
use crate::usage::limits::Limits;
use crate::usage::meter::Meter;
use crate::vault::secret::Secret;

/// Process-wide state shared by the listeners, the request path and the control plane.
pub struct Shared {
    /// The validated configuration (fixed for the process).
    pub config: Arc<Config>,
    /// The current snapshot; replaced whole by the reloader only.
    snapshot: ArcSwap<Snapshot>,
    /// Metrics on the process's own registry.
    pub metrics: Metrics,
    /// The pooled upstream client.
    pub upstream: Upstream,
    /// The control plane's vault access (reload loop and admin writes take
    /// turns; never touched by the request path).
    pub control: Mutex<VaultWatch>,
    /// Bearer token for `/admin/*`; `None` turns the admin API off.
    pub admin_token: Option<Secret>,
    /// Per-client usage counters, drained by the ledger task.
    pub meter: Arc<Meter>,
    /// Per-upstream-key usage counters, drained by the ledger task.
    pub key_meter: Arc<crate::usage::key_meter::KeyMeter>,
    /// Per-client limit state.
    pub limits: Limits,
    /// What replicas share through Redis (`[cluster] redis_url`), if set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Where verdicts on keys are recorded (health, metrics, the last hour,
    /// other replicas).
    pub key_events: KeyEvents,
    /// Where events are raised (queued for the outbox; never blocks).
    pub events: Events,
    /// The queue behind `events`.
    pub event_queue: Arc<EventQueue>,
    /// The durable outbox (`keygate events`, `/admin/events`, deliveries).
    pub outbox: Arc<Mutex<Outbox>>,
    /// The last inventory's counts per provider (status page, `/admin/providers`).
    pub inventory: crate::control::inventory_watch::LastCounts,
    /// The last outside-use findings per provider (status page, `/admin/providers`).
    pub outside_use: crate::control::reconcile_watch::LastFindings,
    /// OpenTelemetry traces (`[telemetry] otlp_endpoint`), once `serve`
    /// started them; `None`: no spans at all.
    pub telemetry: Option<crate::control::telemetry::Telemetry>,
    /// What the outbox writer drains; taken once by `serve`.
    event_receiver: Mutex<Option<tokio::sync::mpsc::Receiver<Event>>>,
}

impl Shared {
    /// Shared state with an empty snapshot; call [`Shared::reload`] to load the vault.
    pub fn new(
        config: Arc<Config>,
        vault_watch: VaultWatch,
        admin_token: Option<Secret>,
        limits: Limits,
        outbox: Outbox,
    ) -> Result<Shared, crate::net::upstream::UpstreamError> {
        let upstream = Upstream::new(&config)?;
        let meter = Meter::with_max_keys(
            config.metering.max_series,
            config.metering.max_series_per_client,
        );
        let metrics = Metrics::new(&config);
        // The URL was checked with the config; an error here names the host only.
        let cluster = crate::cluster::Cluster::new(&config.cluster, metrics.cluster_errors.clone())
            .unwrap_or_else(|error| {
                tracing::warn!("{error}; limits and key health stay per replica");
                None
            });
        let (event_queue, event_receiver) = EventQueue::new(
            metrics.events.raised.clone(),
            metrics.events.dropped.clone(),
        );
        let events = Events::to(event_queue.clone());
        let key_events = KeyEvents {
            events: events.clone(),
            key_healthy: metrics.key_healthy.clone(),
            key_rejections: metrics.key_rejections.clone(),
            fallback_retries: metrics.fallback_retries.clone(),
            recent: crate::keys::recent::Recent::new(config.providers.keys()),
            news: cluster
                .clone()
                .map(|cluster| cluster as Arc<dyn crate::keys::key_events::KeyNews>),
            suspect_cooldown: config.keys.suspect_cooldown,
            exhausted_cooldown: config.keys.exhausted_cooldown,
        };
        Ok(Shared {
            key_events,
            events,
            event_queue,
            outbox: Arc::new(Mutex::new(outbox)),
            event_receiver: Mutex::new(Some(event_receiver)),
            inventory: Mutex::default(),
            outside_use: Mutex::default(),
            telemetry: None,
            metrics,
            cluster,
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            upstream,
            control: Mutex::new(vault_watch),
            admin_token,
            meter: Arc::new(meter),
            key_meter: Arc::default(),
            limits,
        })
    }

    /// The outbox writer's end of the events queue (the first call only).
    pub fn take_event_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Event>> {
        self.event_receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// The control plane's vault access (blocking; not for the request path).
    pub fn control(&self) -> MutexGuard<'_, VaultWatch> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The snapshot being served (one `load_full`: keep it for the request).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reloads the vault now; the reloader publishes a newer generation.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        self.control()
            .reload(&self.config, &self.snapshot, &self.metrics)
    }

    /// Waits until a periodic check's next look: `every` once the vault is
    /// loaded, a second while it is not. False when `shutdown` came first.
    pub async fn wait_for_next_look(
        &self,
        every: std::time::Duration,
        shutdown: &mut crate::shutdown::Shutdown,
    ) -> bool {
        let pause = if self.is_vault_loaded() {
            every
        } else {
            std::time::Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = shutdown.requested() => false,
        }
    }

    /// Whether a vault generation was loaded (generations start at 1).
    pub fn is_vault_loaded(&self) -> bool {
        self.snapshot.load().generation > 0
    }
}

/// The server's vault for the key services, reached through its single
/// writer's lock, one write at a time (never held across an await).
pub struct ServerVault<'a>(pub &'a Shared);

impl crate::keys::rotate::VaultAccess for ServerVault<'_> {
    fn with<R>(&self, write: impl FnOnce(&crate::vault::Vault, &crate::vault::Kek) -> R) -> R {
        tokio::task::block_in_place(|| {
            let control = self.0.control();
            write(control.vault(), control.kek())
        })
    }

    fn events(&self) -> &Events {
        &self.0.events
    }
}
