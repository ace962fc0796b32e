//! keygate — an authenticating reverse proxy for LLM APIs.
//!
//! ```text
//! client ──► net ──► proxy: auth ─► route ─► body ─► keys (pick) ─► forward ─► net::upstream ──► provider
//!  (SDK)    (h1/h2,  (one conductor, top to bottom; forward ⇄ retry with the next key
//!           TLS,      while no byte has gone back, as the provider's kind judges the answer)
//!           guard)
//!      ◄── response streamed back unbuffered, usage tapped on the way (usage::tap) ◄──┘
//! ```
//!
//! The data plane ([`net`], [`proxy`], [`usage`]) only *reads* the
//! [`control::snapshot::Snapshot`] that the control plane ([`control`])
//! publishes whole from the [`vault`].
//!
//! Map of the rooms (folders group them by concern):
//! - [`config`]: figment layers (embedded defaults → file → `KEYGATE_*`) → typed [`config::Config`]
//! - [`providers`]: one file per provider kind behind [`providers::ProviderKind`] (auth,
//!   key formats, verify request, usage option, what an upstream answer says about the
//!   key, price list), and the management APIs behind `ManagementKind` (create, list,
//!   remove, per-key usage reports)
//! - [`net`]: client listeners (h1/h2, TLS, timeouts, drain), the HTTP/1 head guard, the upstream
//!   pool and the outbound body it sends, content codings (gzip, deflate, br, zstd)
//! - [`proxy`]: the conductor of one request, and the stages it calls in order —
//!   client auth (and a decoy key's bookkeeping), routing, request body, the
//!   outbound leg, the judge of an upstream answer, error answers, the response
//!   body, the request's end, admission against limits and budgets — and
//!   `ProxyError`, the one place a failure becomes an HTTP answer
//! - [`keys`]: the key ring and its runtime health; the key lifecycle (ops, the rotation
//!   service, verification); the inventory at the provider and outside use
//! - [`events`]: what keygate raises, the durable outbox, `[[notify]]` deliveries
//! - [`usage`]: the meter's counters (per client, per upstream key), the price table,
//!   the response tap (SSE splitter, usage shapes), the ledger (SQLite or PostgreSQL),
//!   per-client limits and budgets
//! - [`cluster`]: what replicas share through Redis: per-client limits and budgets,
//!   key health news (pub/sub), the auto-rotation lease
//! - [`control`]: shared state, the snapshot and its single writer (reload, follow),
//!   the admin listener (probes, admin API), metrics, the periodic watches (key upkeep,
//!   inventory, outside use), log format, core-dump protection
//! - shared leaves below all of these: [`json_skim`] (the few top-level fields of a
//!   JSON body, read as the upstream reads them), [`shutdown`] (one cancellation),
//!   [`calendar`] (UTC days and months), [`pg_link`] (one PostgreSQL connection)
//!   and [`file_owner`] (files keygate creates as root keep the service's owner)
//! - [`vault`]: the encrypted file (format, crypto, atomic writes, who may read it, master key sources,
//!   rollback record), the secret type, the `kg_` client-key format, the
//!   `fingerprint_mac` that names every upstream key it ever held
//! - [`cli`]: the commands; the only code that prints to stdout

pub mod calendar;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod events;
pub mod file_owner;
pub mod json_skim;
pub mod keys;
pub mod net;
pub mod pg_link;
pub mod providers;
pub mod proxy;
pub mod shutdown;
pub mod usage;
pub mod vault;

/// Milliseconds since the Unix epoch (0 if the clock is before it): shared
/// with other replicas (the cluster's limit windows), unlike
/// [`keys::health::now_ms`].
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
