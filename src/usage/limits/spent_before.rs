//! What each client had spent when this process started, from the ledger:
//! in all, and per hour of the last 32 days — the seed of a budget's window
//! (lifetime, or the period holding the start), so a restart does not
//! reset what a client may still spend.
//!
//! The ledger counts by hour. A window that starts inside an hour (a budget
//! period shorter than an hour) is seeded with that hour's spend only when
//! the hour was last written after the window started: what was spent
//! earlier in the hour may then count against the window too — a restart
//! errs towards refusing, never towards spending more.

use std::collections::HashMap;

use crate::usage::ledger::ClientSpend;

/// How far back the hourly spend is kept (the longest period is a month).
pub const HISTORY: u64 = 32 * 86_400;

/// Spend per client before the start.
#[derive(Debug, Default)]
pub struct SpentBefore {
    lifetime: HashMap<String, (u64, u64)>,
    hours: HashMap<String, Vec<ClientSpend>>,
}

impl SpentBefore {
    /// From the ledger's lifetime totals and its hours since `now - HISTORY`.
    pub fn new(lifetime: Vec<ClientSpend>, hours: Vec<ClientSpend>) -> SpentBefore {
        let mut by_client: HashMap<String, Vec<ClientSpend>> = HashMap::new();
        for hour in hours {
            by_client.entry(hour.client.clone()).or_default().push(hour);
        }
        SpentBefore {
            lifetime: lifetime
                .into_iter()
                .map(|s| (s.client, (s.tokens, s.micros)))
                .collect(),
            hours: by_client,
        }
    }

    /// Lifetime tokens only (tests and older callers).
    pub fn tokens(spent: impl IntoIterator<Item = (String, u64)>) -> SpentBefore {
        SpentBefore {
            lifetime: spent.into_iter().map(|(c, t)| (c, (t, 0))).collect(),
            hours: HashMap::new(),
        }
    }

    /// (tokens, micro-dollars) `client` spent in the window starting at
    /// `window_start` (unix seconds; 0: its lifetime) before the start.
    pub fn since(&self, client: &str, window_start: u64) -> (u64, u64) {
        if window_start == 0 {
            return self.lifetime.get(client).copied().unwrap_or_default();
        }
        self.hours.get(client).map_or((0, 0), |hours| {
            hours
                .iter()
                .filter(|h| (h.hour + 1) * 3600 > window_start && h.last_ms / 1000 >= window_start)
                .fold((0, 0), |(t, m), h| {
                    (t.saturating_add(h.tokens), m.saturating_add(h.micros))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(hour: u64, tokens: u64, micros: u64, last_s: u64) -> ClientSpend {
        ClientSpend {
            client: "app".to_owned(),
            hour,
            tokens,
            micros,
            last_ms: last_s * 1000,
        }
    }

    #[test]
    fn a_window_is_seeded_with_the_hours_written_inside_it() {
        let h = 500_000u64; // an hour number
        let spent = SpentBefore::new(
            vec![ClientSpend {
                hour: 0,
                ..hour(0, 999, 9_999, 0)
            }],
            vec![
                hour(h - 30, 50, 500, (h - 30) * 3600 + 100),
                hour(h - 1, 10, 100, (h - 1) * 3600 + 3000),
                hour(h, 7, 70, h * 3600 + 1800),
            ],
        );
        assert_eq!(spent.since("app", 0), (999, 9_999));
        // A day from h - 24: the last two hours.
        assert_eq!(spent.since("app", (h - 24) * 3600), (17, 170));
        // A window opened at h:20 (1200 s into the hour): hour h was last
        // written at h:30, so all of it counts; h - 1 was not written inside.
        assert_eq!(spent.since("app", h * 3600 + 1200), (7, 70));
        // A window opened at h:40: nothing was written since.
        assert_eq!(spent.since("app", h * 3600 + 2400), (0, 0));
        assert_eq!(spent.since("other", 0), (0, 0));
    }
}
