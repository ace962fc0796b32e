//! Per-client limits: requests per minute, tokens per minute, a token
//! budget and a dollar budget, each budget per period or for the client's
//! lifetime (docs/design.md §2 `client add --rpm --tpm --budget-tokens
//! --budget-usd --budget-period`, §14).
//!
//! Tokens and micro-dollars are reserved before the request is sent (an
//! estimate from the body, priced at the model's input and output prices)
//! and settled with the upstream's real usage and cost when the response
//! ends, so concurrent requests can overspend by at most what is in flight.
//! State is atomics per client, found once per request; in-memory per
//! replica, seeded from the ledger at start ([`SpentBefore`]), and with
//! `[cluster] redis_url` also shared ([`crate::cluster::limits`]: this
//! replica's count goes on underneath, and decides alone while Redis is
//! away). Never sees a secret.
//!
//! Below it: `state` (one client's counters, the minute and the budget
//! window they belong to, and a request's [`Reservation`]) and
//! `spent_before` (the ledger's seed).

mod spent_before;
mod state;

use std::sync::Arc;
use std::time::Duration;

use super::UsageMap;

pub use self::spent_before::{SpentBefore, HISTORY};
pub use self::state::{Charge, Crossing, LimitState, Reservation, SharedReservation};
/// A client's configured limits (defined with the client's vault record).
pub use crate::vault::document::{BudgetPeriod, ClientLimits};

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
    /// A budget (tokens or dollars) is spent for this period.
    #[error("client {client} has spent its budget")]
    BudgetExceeded {
        /// Client name.
        client: String,
        /// What is left of the dollar budget (micro-dollars), when it has one.
        remaining_usd_micros: Option<u64>,
        /// Until the period starts over (`None`: a lifetime budget).
        retry_after: Option<Duration>,
        /// The first refusal of this period here: `budget_exceeded` is told.
        first: bool,
        /// The budget window that is spent (its first second; 0: lifetime).
        window: u64,
    },
}

/// What one request may cost, estimated before it is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Tokens (prompt estimate plus the completion cap).
    pub tokens: u64,
    /// Micro-dollars: the prompt estimate at the input price, the
    /// completion cap at the output price (0 for an unpriced model).
    pub micros: u64,
}

/// Every limited client's state, plus what the ledger said each had spent
/// at start (so a restart does not reset a budget).
#[derive(Debug, Default)]
pub struct Limits {
    clients: UsageMap<Arc<str>, Arc<LimitState>>,
    spent_before: SpentBefore,
}

impl Limits {
    /// Limits starting from what the ledger holds.
    pub fn with_spent(spent: SpentBefore) -> Limits {
        Limits {
            clients: UsageMap::default(),
            spent_before: spent,
        }
    }

    fn state(&self, client: &Arc<str>, window: u64) -> Arc<LimitState> {
        if let Some(state) = self.clients.get(client) {
            return state.clone();
        }
        self.clients
            .entry(client.clone())
            .or_insert_with(|| {
                let (tokens, micros) = self.spent_before.since(client, window);
                Arc::new(LimitState::seeded(window, tokens, micros))
            })
            .clone()
    }

    /// Admits one request at `now` (unix seconds), or says why not. Nothing
    /// is counted for a refused request. Every admitted request gets a
    /// reservation, settled with its real usage and cost.
    pub fn admit(
        &self,
        client: &Arc<str>,
        limits: ClientLimits,
        estimate: impl FnOnce() -> Estimate,
        now: u64,
    ) -> Result<Reservation, LimitError> {
        let window = limits
            .budget_period
            .map_or(0, |period| period.window_start(now));
        let state = self.state(client, window);
        state.roll_window(window);
        let estimate = estimate();
        let minute = now / 60;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (tokens, micros) = (as_i64(estimate.tokens), as_i64(estimate.micros));
        if !limits.any() {
            // Spend is tracked for every client, so a budget set later counts
            // what was spent before it; the estimate is what an answer
            // without usage is charged.
            state.spend(tokens, micros);
            return Ok(Reservation::new(state, estimate, minute, window, false));
        }
        state.roll_minute(minute);
        let retry_after = Duration::from_secs(60 - now % 60);
        let limited = || LimitError::RateLimited {
            client: client.to_string(),
            retry_after,
        };
        if let Some(rpm) = limits.rpm {
            if !state.count_request(u64::from(rpm)) {
                return Err(limited());
            }
        }
        let undo_request = || {
            if limits.rpm.is_some() {
                state.uncount_request();
            }
        };
        if let Some(tpm) = limits.tpm {
            if !state.take_minute_tokens(tokens, as_i64(tpm)) {
                undo_request();
                return Err(limited());
            }
        }
        let budgets = (
            limits.budget_tokens.map(as_i64),
            limits.budget_usd_micros.map(as_i64),
        );
        let (spent_tokens, spent_micros) = state.spend(tokens, micros);
        let over = |spent: i64, budget: Option<i64>| budget.is_some_and(|b| spent > b);
        if over(spent_tokens, budgets.0) || over(spent_micros, budgets.1) {
            state.spend(-tokens, -micros);
            if limits.tpm.is_some() {
                state.give_back_minute_tokens(tokens);
            }
            undo_request();
            let period = limits.budget_period;
            return Err(LimitError::BudgetExceeded {
                client: client.to_string(),
                remaining_usd_micros: budgets
                    .1
                    .map(|b| u64::try_from(b - (spent_micros - micros)).unwrap_or(0)),
                retry_after: period
                    .map(|p| Duration::from_secs(p.window_end(now).saturating_sub(now).max(1))),
                first: state.tell(state::TOLD_EXCEEDED),
                window,
            });
        }
        let mut reservation = Reservation::new(
            state.clone(),
            estimate,
            minute,
            window,
            limits.rpm.is_some(),
        );
        // 80 % of a budget crossed by this request: told once per window.
        let share = |spent: i64, budget: Option<i64>| {
            budget
                .filter(|b| *b > 0)
                .map(|b| spent.saturating_mul(100) / b)
        };
        let reached = share(spent_tokens, budgets.0)
            .max(share(spent_micros, budgets.1))
            .unwrap_or(0);
        if reached >= 80 && state.tell(state::TOLD_THRESHOLD) {
            reservation.crossed = Some(Crossing {
                percent: u8::try_from(reached.min(100)).unwrap_or(100),
                window,
                spent_tokens: u64::try_from(spent_tokens).unwrap_or(0),
                spent_micros: u64::try_from(spent_micros).unwrap_or(0),
            });
        }
        Ok(reservation)
    }

    /// What this replica has counted for `client` now: requests and tokens in
    /// the current minute, and tokens and micro-dollars spent in its budget
    /// window (for the status page).
    pub fn counted(&self, client: &str, now: u64) -> (u64, u64, u64, u64) {
        let Some(state) = self.clients.get(client) else {
            let (tokens, micros) = self.spent_before.since(client, 0);
            return (0, 0, tokens, micros);
        };
        state.counted(now)
    }

    /// What the ledger said `client` had spent in the window starting at
    /// `window` when this process started (seeds the shared budget the first
    /// time a replica uses it).
    pub fn spent_before(&self, client: &str, window: u64) -> (u64, u64) {
        self.spent_before.since(client, window)
    }
}

/// A request's estimate in tokens and, at `price`, in micro-dollars.
pub fn estimate(
    fields: Option<&crate::json_skim::ChatFields<'_>>,
    len: u64,
    price: Option<super::prices::Price>,
) -> Estimate {
    let (prompt, completion) = estimate_parts(fields, len);
    Estimate {
        tokens: prompt.saturating_add(completion),
        micros: price.map_or(0, |p| p.most_micros(prompt, completion)),
    }
}

/// Tokens a request may use, estimated before it is sent: about one token per
/// four bytes of prompt (`len`: the body's bytes), plus its completion cap
/// (`max_tokens`, `max_completion_tokens` or `max_output_tokens`, the largest
/// when a body sets several; 256 when it sets none). `fields`: the body's
/// fields as the upstream reads them ([`crate::json_skim::chat_fields`]).
pub fn estimate_tokens(fields: Option<&crate::json_skim::ChatFields<'_>>, len: u64) -> u64 {
    let (prompt, completion) = estimate_parts(fields, len);
    prompt.saturating_add(completion)
}

/// [`estimate_tokens`] in its two parts: (prompt, completion cap).
pub fn estimate_parts(fields: Option<&crate::json_skim::ChatFields<'_>>, len: u64) -> (u64, u64) {
    let cap = |value: Option<&[u8]>| value.and_then(|v| serde_json::from_slice::<u64>(v).ok());
    let completion = fields
        .and_then(|f| {
            [f.max_tokens, f.max_completion_tokens, f.max_output_tokens]
                .into_iter()
                .filter_map(cap)
                .max()
        })
        .unwrap_or(256);
    (len / 4, completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<str> {
        Arc::from("app")
    }

    fn tokens(n: u64) -> Estimate {
        Estimate {
            tokens: n,
            micros: 0,
        }
    }

    #[test]
    fn rpm_admits_n_per_minute_then_refuses_until_the_next() {
        let limits = Limits::default();
        let rpm = ClientLimits {
            rpm: Some(3),
            ..ClientLimits::default()
        };
        for _ in 0..3 {
            assert!(limits.admit(&client(), rpm, || tokens(1), 600).is_ok());
        }
        match limits.admit(&client(), rpm, || tokens(1), 630) {
            Err(LimitError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.admit(&client(), rpm, || tokens(1), 660).is_ok());
    }

    #[test]
    fn budget_is_reserved_then_settled() {
        let limits = Limits::with_spent(SpentBefore::tokens([("app".to_owned(), 900)]));
        let budget = ClientLimits {
            budget_tokens: Some(1000),
            ..ClientLimits::default()
        };
        let reservation = limits.admit(&client(), budget, || tokens(80), 0).unwrap();
        assert!(matches!(
            limits.admit(&client(), budget, || tokens(80), 0),
            Err(LimitError::BudgetExceeded {
                retry_after: None,
                remaining_usd_micros: None,
                ..
            })
        ));
        reservation.settle(Some(Charge {
            tokens: 10,
            micros: 0,
        })); // spent 910
        assert!(limits.admit(&client(), budget, || tokens(80), 0).is_ok()); // 990
        assert!(limits.admit(&client(), budget, || tokens(20), 0).is_err());
    }

    #[test]
    fn a_dollar_budget_per_period_refuses_then_starts_over_at_the_boundary() {
        let limits = Limits::default();
        let budget = ClientLimits {
            budget_usd_micros: Some(1_000),
            budget_period: Some(BudgetPeriod::Seconds(5)),
            ..ClientLimits::default()
        };
        let cost = |micros| move || Estimate { tokens: 1, micros };
        // Window [100, 105): 600 reserved, settled at 700; 400 more do not fit.
        let first = limits.admit(&client(), budget, cost(600), 100).unwrap();
        assert_eq!(first.crossed, None, "60 % is under the threshold");
        first.settle(Some(Charge {
            tokens: 1,
            micros: 700,
        }));
        match limits.admit(&client(), budget, cost(400), 103) {
            Err(LimitError::BudgetExceeded {
                remaining_usd_micros,
                retry_after,
                first,
                window,
                ..
            }) => {
                assert_eq!(remaining_usd_micros, Some(300));
                assert_eq!(retry_after, Some(Duration::from_secs(2)));
                assert!(first);
                assert_eq!(window, 100);
            }
            other => panic!("{other:?}"),
        }
        // The second refusal of the window is not told again.
        assert!(matches!(
            limits.admit(&client(), budget, cost(400), 104),
            Err(LimitError::BudgetExceeded { first: false, .. })
        ));
        // 200 more fit, and take the client past 80 %: told once.
        let near = limits.admit(&client(), budget, cost(200), 104).unwrap();
        assert_eq!(
            near.crossed.map(|c| (c.percent, c.spent_micros)),
            Some((90, 900))
        );
        let again = limits.admit(&client(), budget, cost(50), 104).unwrap();
        assert_eq!(again.crossed, None);
        // The next window starts at zero; a late settle of the last one's
        // reservation does not leak into it.
        let fresh = limits.admit(&client(), budget, cost(900), 105).unwrap();
        near.settle(Some(Charge {
            tokens: 1,
            micros: 0,
        }));
        assert_eq!(limits.counted("app", 105).3, 900);
        drop(fresh);
    }

    #[test]
    fn a_period_window_is_seeded_from_the_ledger_and_a_lifetime_from_its_totals() {
        use crate::usage::ledger::ClientSpend;
        let spend = |hour, micros, last_s| ClientSpend {
            client: "app".to_owned(),
            hour,
            tokens: 1,
            micros,
            last_ms: last_s * 1000,
        };
        let now = 1_796_533_207; // 2026-12-06T05:00:07Z
        let limits = Limits::with_spent(SpentBefore::new(
            vec![spend(0, 5_000, 0)],
            vec![
                spend(now / 3600 - 30, 2_000, now - 30 * 3600),
                spend(now / 3600, 600, now - 5),
            ],
        ));
        let daily = ClientLimits {
            budget_usd_micros: Some(1_000),
            budget_period: Some(BudgetPeriod::Seconds(86_400)),
            ..ClientLimits::default()
        };
        // Today: 600 spent before the restart; 500 more do not fit.
        assert!(limits
            .admit(
                &client(),
                daily,
                || Estimate {
                    tokens: 1,
                    micros: 500
                },
                now
            )
            .is_err());
        assert!(limits
            .admit(
                &client(),
                daily,
                || Estimate {
                    tokens: 1,
                    micros: 400
                },
                now
            )
            .is_ok());
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
