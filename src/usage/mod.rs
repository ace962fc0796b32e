//! Usage: per client, provider and model — the counters a request adds to
//! ([`meter`]), the tap that reads usage out of a response as it streams
//! ([`tap`], with [`scan`], [`sse`] and the providers' usage [`shapes`]), the
//! durable [`ledger`], and per-client [`limits`] (reserve, then settle).

pub mod ledger;
pub mod limits;
pub mod meter;
pub mod scan;
pub mod shapes;
pub mod sse;
pub mod tap;
