//! The last hour, minute by minute: how many times each provider refused a
//! key and how many requests fell back to another key — the status page's
//! sparklines (`GET /admin/activity`). Per replica, in memory, lock-free.
//!
//! Each minute is one `AtomicU64` holding the minute's number (high 32 bits)
//! and its count (low 32 bits), so a bucket left over from an hour ago is
//! recognised and restarted by the same compare-and-swap that counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Minutes kept.
pub const MINUTES: usize = 60;

/// One counter per minute over the last [`MINUTES`].
#[derive(Debug)]
pub struct Minutes([AtomicU64; MINUTES]);

impl Default for Minutes {
    fn default() -> Self {
        Minutes(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Minutes {
    /// Counts one event in minute `minute` (unix seconds / 60).
    pub fn count(&self, minute: u64) {
        let stamp = minute & 0xFFFF_FFFF;
        let slot = &self.0[minute as usize % MINUTES];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            Some(if packed >> 32 == stamp {
                packed.saturating_add(1).min(stamp << 32 | 0xFFFF_FFFF)
            } else {
                stamp << 32 | 1
            })
        });
    }

    /// The counts of the [`MINUTES`] minutes ending with `minute`, oldest first.
    pub fn last_hour(&self, minute: u64) -> Vec<u64> {
        (0..MINUTES as u64)
            .rev()
            .map(|ago| {
                let wanted = minute.saturating_sub(ago);
                let packed = self.0[wanted as usize % MINUTES].load(Ordering::Acquire);
                if packed >> 32 == wanted & 0xFFFF_FFFF {
                    packed & 0xFFFF_FFFF
                } else {
                    0
                }
            })
            .collect()
    }
}

/// One provider's minutes.
#[derive(Debug, Default)]
pub struct ProviderMinutes {
    /// Answers that refused the key sent (rejected, out of credit, rate limited).
    pub refusals: Minutes,
    /// Requests sent again with another key.
    pub fallbacks: Minutes,
}

/// Every configured provider's minutes (providers are fixed for the process).
#[derive(Debug, Default)]
pub struct Recent {
    providers: HashMap<String, ProviderMinutes>,
}

impl Recent {
    /// Minutes for each of `providers`.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a String>) -> Recent {
        Recent {
            providers: providers
                .into_iter()
                .map(|name| (name.clone(), ProviderMinutes::default()))
                .collect(),
        }
    }

    /// `provider`'s minutes (`None` for a name not configured).
    pub fn provider(&self, provider: &str) -> Option<&ProviderMinutes> {
        self.providers.get(provider)
    }

    /// The current minute (unix seconds / 60).
    pub fn this_minute() -> u64 {
        crate::unix_now() / 60
    }

    /// `{"minute_start": unix, "minutes": 60, "providers": {name: {"refusals": […], "fallbacks": […]}}}`,
    /// oldest minute first, the current (partial) minute last.
    pub fn to_json(&self, minute: u64) -> serde_json::Value {
        let providers: serde_json::Map<String, serde_json::Value> = self
            .providers
            .iter()
            .map(|(name, m)| {
                let series = serde_json::json!({
                    "refusals": m.refusals.last_hour(minute),
                    "fallbacks": m.fallbacks.last_hour(minute),
                });
                (name.clone(), series)
            })
            .collect();
        serde_json::json!({
            "minute_start": minute * 60,
            "minutes": MINUTES,
            "providers": providers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_an_hour_later_start_over() {
        let minutes = Minutes::default();
        minutes.count(1000);
        minutes.count(1000);
        minutes.count(1059);
        let hour = minutes.last_hour(1059);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!((hour[0], hour[59], hour.iter().sum::<u64>()), (2, 1, 3));
        // Minute 1060 reuses minute 1000's bucket: the old count is not carried.
        minutes.count(1060);
        let hour = minutes.last_hour(1060);
        assert_eq!((hour[59], hour.iter().sum::<u64>()), (1, 2));
        // Long quiet: nothing left in the window.
        assert_eq!(minutes.last_hour(5000).iter().sum::<u64>(), 0);
    }

    #[test]
    fn concurrent_counts_are_all_kept() {
        let minutes = std::sync::Arc::new(Minutes::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = minutes.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| m.count(7)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(minutes.last_hour(7)[59], 40_000);
    }
}
