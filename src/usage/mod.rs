//! Usage: per client, provider and model — the counters a request adds to
//! ([`meter`]), the tap that reads usage out of a response as it streams
//! ([`tap`], with [`scan`], [`sse`] and the providers' usage [`shapes`]), the
//! durable [`ledger`], and per-client [`limits`] (reserve, then settle).

pub mod key_meter;
pub mod ledger;
pub mod limits;
pub mod meter;
pub mod prices;
pub mod scan;
pub mod shapes;
pub mod sse;
pub mod tap;

/// The hasher of the usage and limit maps, which every request looks up:
/// aHash, seeded at random per map like std's SipHash (a client picks the
/// model names that key them), at a fraction of SipHash's cost.
#[derive(Clone)]
pub struct RandomlySeeded(ahash::RandomState);

impl Default for RandomlySeeded {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let std_seeded = std::collections::hash_map::RandomState::new();
        let [a, b, c, d] = [0u8, 1, 2, 3].map(|n| std_seeded.hash_one(n));
        RandomlySeeded(ahash::RandomState::with_seeds(a, b, c, d))
    }
}

impl std::hash::BuildHasher for RandomlySeeded {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        self.0.build_hasher()
    }
}

/// A concurrent map hashed with [`RandomlySeeded`].
pub type UsageMap<K, V> = dashmap::DashMap<K, V, RandomlySeeded>;
