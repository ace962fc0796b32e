//! The control plane: the process-wide [`state`], the [`snapshot`] requests
//! read and its single writer ([`reload`], looped by [`follow`]), the
//! admin listener (health [`probes`], the [`admin`] API and the
//! [`status_page`]), the
//! [`key_upkeep`] (retiring, deleting at the provider, auto-rotation), the
//! daily [`inventory_watch`], the outside-use check ([`reconcile_watch`]),
//! [`metrics`], the [`log_format`], OpenTelemetry traces ([`telemetry`])
//! and [`core_dumps`] protection.

pub mod admin;
pub mod core_dumps;
pub mod follow;
pub mod inventory_watch;
pub mod key_upkeep;
pub mod log_format;
pub mod metrics;
pub mod probes;
pub mod reconcile_watch;
pub mod reload;
pub mod snapshot;
pub mod state;
pub mod status_page;
pub mod telemetry;
