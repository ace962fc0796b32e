//! Per-client limits: requests per minute, tokens per minute, a total token
//! budget (docs/design.md §2 `client add --rpm --tpm --budget-tokens`).
//!
//! Tokens are reserved before the request is sent (an estimate from the body)
//! and settled with the upstream's real usage when the response ends, so
//! concurrent requests can overspend by at most what is in flight. State is
//! atomics per client, found once per request (only for limited clients);
//! in-memory per replica, and with `[cluster] redis_url` also shared
//! ([`crate::cluster::limits`]: this replica's count goes on underneath, and
//! decides alone while Redis is away). Never sees a secret.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::UsageMap;

/// A client's configured limits (defined with the client's vault record).
pub use crate::vault::document::ClientLimits;

/// Live counters of one client.
#[derive(Debug, Default)]
pub struct LimitState {
    minute: AtomicU64,
    requests_this_minute: AtomicU64,
    tokens_this_minute: AtomicI64,
    tokens_spent: AtomicI64,
}

impl LimitState {
    fn roll(&self, minute: u64) {
        let seen = self.minute.load(Ordering::Acquire);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests_this_minute.store(0, Ordering::Release);
            self.tokens_this_minute.store(0, Ordering::Release);
        }
    }
}

/// Why a client's request was not admitted; the proxy turns it into its 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Over its rpm or tpm this minute.
    #[error("client {client} is over its rate limit")]
    RateLimited {
        /// Client name.
        client: String,
        /// When the minute turns.
        retry_after: Duration,
    },
    /// Its token budget is spent.
    #[error("client {client} has spent its budget")]
    BudgetExceeded {
        /// Client name.
        client: String,
    },
}

/// The part of a reservation held somewhere else (the cluster's Redis),
/// settled with the same real usage when the answer ends.
pub trait SharedReservation: std::fmt::Debug + Send + Sync {
    /// Charges `tokens` there (off the request path).
    fn settle(self: Box<Self>, tokens: u64);
}

/// Tokens held for one request until its real usage is known.
#[derive(Debug)]
pub struct Reservation {
    state: Arc<LimitState>,
    estimate: i64,
    minute: u64,
    /// The request counted against `rpm`.
    counted_request: bool,
    /// The same reservation in Redis, when the cluster admitted it.
    shared: Option<Box<dyn SharedReservation>>,
}

impl Reservation {
    /// The tokens reserved.
    pub fn estimate(&self) -> u64 {
        u64::try_from(self.estimate).unwrap_or(0)
    }

    /// The cluster admitted it too: settle it there as well.
    pub fn share(&mut self, hold: Box<dyn SharedReservation>) {
        self.shared = Some(hold);
    }

    /// Undoes what admitting counted here (the cluster refused the request).
    pub fn cancel(self) {
        if self.counted_request && self.state.minute.load(Ordering::Acquire) == self.minute {
            self.state
                .requests_this_minute
                .fetch_sub(1, Ordering::AcqRel);
        }
        self.settle(Some(0));
    }

    /// Replaces the estimate with what the upstream reported. `None`: the
    /// answer reported no usage (omitted, cut, unreadable), so the estimate
    /// stays charged — a budget cannot be outrun by streams that never say
    /// what they cost — and is returned, for the ledger to record as
    /// estimated (`None` when nothing was estimated).
    pub fn settle(mut self, actual_tokens: Option<u64>) -> Option<u64> {
        if let Some(shared) = self.shared.take() {
            shared.settle(actual_tokens.unwrap_or(self.estimate()));
        }
        let Some(actual) = actual_tokens else {
            return u64::try_from(self.estimate).ok().filter(|&e| e > 0);
        };
        let correction = i64::try_from(actual).unwrap_or(i64::MAX) - self.estimate;
        self.state
            .tokens_spent
            .fetch_add(correction, Ordering::AcqRel);
        if self.state.minute.load(Ordering::Acquire) == self.minute {
            self.state
                .tokens_this_minute
                .fetch_add(correction, Ordering::AcqRel);
        }
        None
    }
}

/// Every limited client's state, plus the all-time spend read from the ledger
/// at start (so a restart does not reset a budget).
#[derive(Debug, Default)]
pub struct Limits {
    clients: UsageMap<Arc<str>, Arc<LimitState>>,
    spent_before_start: UsageMap<String, u64>,
}

impl Limits {
    /// Limits starting from `spent` tokens per client (from the ledger).
    pub fn with_spent(spent: impl IntoIterator<Item = (String, u64)>) -> Limits {
        Limits {
            clients: UsageMap::default(),
            spent_before_start: spent.into_iter().collect(),
        }
    }

    fn state(&self, client: &Arc<str>) -> Arc<LimitState> {
        if let Some(state) = self.clients.get(client) {
            return state.clone();
        }
        self.clients
            .entry(client.clone())
            .or_insert_with(|| {
                let spent = self.spent_before_start.get(&**client).map_or(0, |v| *v);
                Arc::new(LimitState {
                    tokens_spent: AtomicI64::new(i64::try_from(spent).unwrap_or(i64::MAX)),
                    ..LimitState::default()
                })
            })
            .clone()
    }

    /// Admits one request of `estimate` tokens at `now` (unix seconds), or says
    /// why not. Nothing is counted for a refused request. Every admitted
    /// request gets a reservation, settled with its real usage.
    pub fn admit(
        &self,
        client: &Arc<str>,
        limits: ClientLimits,
        estimate: impl FnOnce() -> u64,
        now: u64,
    ) -> Result<Reservation, LimitError> {
        let state = self.state(client);
        if !limits.any() {
            // Spend is tracked for every client, so a budget set later counts
            // what was spent before it; the estimate is what an answer
            // without usage is charged.
            let estimate = i64::try_from(estimate()).unwrap_or(i64::MAX);
            state.tokens_spent.fetch_add(estimate, Ordering::AcqRel);
            return Ok(Reservation {
                state,
                estimate,
                minute: now / 60,
                counted_request: false,
                shared: None,
            });
        }
        let estimate = estimate();
        let minute = now / 60;
        state.roll(minute);
        let retry_after = Duration::from_secs(60 - now % 60);
        let limited = || LimitError::RateLimited {
            client: client.to_string(),
            retry_after,
        };
        if let Some(rpm) = limits.rpm {
            let n = state.requests_this_minute.fetch_add(1, Ordering::AcqRel);
            if n >= u64::from(rpm) {
                state.requests_this_minute.fetch_sub(1, Ordering::AcqRel);
                return Err(limited());
            }
        }
        let estimate = i64::try_from(estimate).unwrap_or(i64::MAX);
        let undo_request = || {
            if limits.rpm.is_some() {
                state.requests_this_minute.fetch_sub(1, Ordering::AcqRel);
            }
        };
        if let Some(tpm) = limits.tpm {
            let used = state
                .tokens_this_minute
                .fetch_add(estimate, Ordering::AcqRel);
            // A request bigger than the whole allowance still runs alone in a fresh minute.
            if used > 0 && used + estimate > i64::try_from(tpm).unwrap_or(i64::MAX) {
                state
                    .tokens_this_minute
                    .fetch_sub(estimate, Ordering::AcqRel);
                undo_request();
                return Err(limited());
            }
        }
        if let Some(budget) = limits.budget_tokens {
            let spent = state.tokens_spent.fetch_add(estimate, Ordering::AcqRel);
            if spent + estimate > i64::try_from(budget).unwrap_or(i64::MAX) {
                state.tokens_spent.fetch_sub(estimate, Ordering::AcqRel);
                if limits.tpm.is_some() {
                    state
                        .tokens_this_minute
                        .fetch_sub(estimate, Ordering::AcqRel);
                }
                undo_request();
                return Err(LimitError::BudgetExceeded {
                    client: client.to_string(),
                });
            }
        } else {
            state.tokens_spent.fetch_add(estimate, Ordering::AcqRel);
        }
        Ok(Reservation {
            state,
            estimate,
            minute,
            counted_request: limits.rpm.is_some(),
            shared: None,
        })
    }

    /// What this replica has counted for `client` now: requests and tokens in
    /// the current minute and tokens spent in all (for the status page).
    pub fn counted(&self, client: &str, now: u64) -> (u64, u64, u64) {
        let Some(state) = self.clients.get(client) else {
            return (0, 0, self.spent_before_start(client));
        };
        let this_minute = state.minute.load(Ordering::Acquire) == now / 60;
        let minute = |v: &AtomicI64| u64::try_from(v.load(Ordering::Acquire)).unwrap_or(0);
        (
            if this_minute {
                state.requests_this_minute.load(Ordering::Acquire)
            } else {
                0
            },
            if this_minute {
                minute(&state.tokens_this_minute)
            } else {
                0
            },
            minute(&state.tokens_spent),
        )
    }

    /// What the ledger said `client` had spent when this process started
    /// (seeds the shared budget the first time a replica uses it).
    pub fn spent_before_start(&self, client: &str) -> u64 {
        self.spent_before_start.get(client).map_or(0, |v| *v)
    }
}

/// Tokens a request may use, estimated before it is sent: about one token per
/// four bytes of prompt (`len`: the body's bytes), plus its completion cap
/// (`max_tokens`, `max_completion_tokens` or `max_output_tokens`, the largest
/// when a body sets several; 256 when it sets none). `fields`: the body's
/// fields as the upstream reads them ([`crate::json_skim::chat_fields`]).
pub fn estimate_tokens(fields: Option<&crate::json_skim::ChatFields<'_>>, len: u64) -> u64 {
    let cap = |value: Option<&[u8]>| value.and_then(|v| serde_json::from_slice::<u64>(v).ok());
    let completion = fields
        .and_then(|f| {
            [f.max_tokens, f.max_completion_tokens, f.max_output_tokens]
                .into_iter()
                .filter_map(cap)
                .max()
        })
        .unwrap_or(256);
    (len / 4).saturating_add(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<str> {
        Arc::from("app")
    }

    #[test]
    fn rpm_admits_n_per_minute_then_refuses_until_the_next() {
        let limits = Limits::default();
        let rpm = ClientLimits {
            rpm: Some(3),
            ..ClientLimits::default()
        };
        for _ in 0..3 {
            assert!(limits.admit(&client(), rpm, || 1, 600).is_ok());
        }
        match limits.admit(&client(), rpm, || 1, 630) {
            Err(LimitError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.admit(&client(), rpm, || 1, 660).is_ok());
    }

    #[test]
    fn budget_is_reserved_then_settled() {
        let limits = Limits::with_spent([("app".to_owned(), 900)]);
        let budget = ClientLimits {
            budget_tokens: Some(1000),
            ..ClientLimits::default()
        };
        let reservation = limits.admit(&client(), budget, || 80, 0).unwrap();
        assert!(matches!(
            limits.admit(&client(), budget, || 80, 0),
            Err(LimitError::BudgetExceeded { .. })
        ));
        reservation.settle(Some(10)); // spent 910
        assert!(limits.admit(&client(), budget, || 80, 0).is_ok()); // 990
        assert!(limits.admit(&client(), budget, || 20, 0).is_err());
    }

    #[test]
    fn estimate_uses_max_tokens() {
        // The completion part of the estimate (the prompt part is len / 4).
        let completion = |body: &[u8]| {
            let fields = crate::json_skim::chat_fields(body);
            estimate_tokens(fields.as_ref(), body.len() as u64) - body.len() as u64 / 4
        };
        assert_eq!(completion(br#"{"max_tokens":10}"#), 10);
        assert_eq!(completion(br#" {"max_tokens":10} "#), 10);
        assert_eq!(completion(br#"{"model":"m"}"#), 256);
        // Read as the upstream reads it: escaped keys, the last repeat.
        assert_eq!(completion(br#"{"max_t\u006fkens":1000}"#), 1000);
        assert_eq!(completion(br#"{"max_tokens":1,"max_tokens":2000}"#), 2000);
        // Several caps: the largest.
        assert_eq!(
            completion(br#"{"max_tokens":5,"max_completion_tokens":900}"#),
            900
        );
        assert_eq!(estimate_tokens(None, 400), 100 + 256);
    }
}
