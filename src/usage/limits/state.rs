//! One client's live counters — the minute's requests and tokens, and the
//! tokens and micro-dollars spent in the current budget window — and one
//! request's [`Reservation`] against them, settled when its answer ends.
//! Atomics only: the request path never takes a lock here.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::Estimate;

/// `budget_threshold` was told this window.
pub(super) const TOLD_THRESHOLD: u8 = 1;
/// `budget_exceeded` was told this window.
pub(super) const TOLD_EXCEEDED: u8 = 2;

/// Live counters of one client.
#[derive(Debug, Default)]
pub struct LimitState {
    minute: AtomicU64,
    requests_this_minute: AtomicU64,
    tokens_this_minute: AtomicI64,
    /// The budget window the spend below belongs to (its first second; 0:
    /// the client's lifetime).
    window: AtomicU64,
    tokens_spent: AtomicI64,
    micros_spent: AtomicI64,
    /// Which budget events were told this window.
    told: AtomicU8,
}

impl LimitState {
    /// A client first seen in `window`, which had already spent this much.
    pub(super) fn seeded(window: u64, tokens: u64, micros: u64) -> LimitState {
        LimitState {
            window: AtomicU64::new(window),
            tokens_spent: AtomicI64::new(i64::try_from(tokens).unwrap_or(i64::MAX)),
            micros_spent: AtomicI64::new(i64::try_from(micros).unwrap_or(i64::MAX)),
            ..LimitState::default()
        }
    }

    /// A new window starts spend at zero (one thread wins the switch).
    pub(super) fn roll_window(&self, window: u64) {
        let seen = self.window.load(Ordering::Acquire);
        if seen != window
            && self
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.tokens_spent.store(0, Ordering::Release);
            self.micros_spent.store(0, Ordering::Release);
            self.told.store(0, Ordering::Release);
        }
    }

    pub(super) fn roll_minute(&self, minute: u64) {
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

    /// Adds to the window's spend; returns the spend after.
    pub(super) fn spend(&self, tokens: i64, micros: i64) -> (i64, i64) {
        (
            self.tokens_spent.fetch_add(tokens, Ordering::AcqRel) + tokens,
            self.micros_spent.fetch_add(micros, Ordering::AcqRel) + micros,
        )
    }

    /// Counts a request against `rpm`; false (nothing counted) when full.
    pub(super) fn count_request(&self, rpm: u64) -> bool {
        let n = self.requests_this_minute.fetch_add(1, Ordering::AcqRel);
        if n >= rpm {
            self.uncount_request();
            return false;
        }
        true
    }

    pub(super) fn uncount_request(&self) {
        self.requests_this_minute.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes `tokens` of this minute's `tpm`; false (nothing taken) when
    /// they do not fit. A request bigger than the whole allowance still runs
    /// alone in a fresh minute.
    pub(super) fn take_minute_tokens(&self, tokens: i64, tpm: i64) -> bool {
        let used = self.tokens_this_minute.fetch_add(tokens, Ordering::AcqRel);
        if used > 0 && used + tokens > tpm {
            self.give_back_minute_tokens(tokens);
            return false;
        }
        true
    }

    pub(super) fn give_back_minute_tokens(&self, tokens: i64) {
        self.tokens_this_minute.fetch_sub(tokens, Ordering::AcqRel);
    }

    /// True the first time `event` is told this window.
    pub(super) fn tell(&self, event: u8) -> bool {
        self.told.fetch_or(event, Ordering::AcqRel) & event == 0
    }

    /// (requests and tokens this minute, tokens and micro-dollars this window).
    pub(super) fn counted(&self, now: u64) -> (u64, u64, u64, u64) {
        let this_minute = self.minute.load(Ordering::Acquire) == now / 60;
        let read = |v: &AtomicI64| u64::try_from(v.load(Ordering::Acquire)).unwrap_or(0);
        (
            if this_minute {
                self.requests_this_minute.load(Ordering::Acquire)
            } else {
                0
            },
            if this_minute {
                read(&self.tokens_this_minute)
            } else {
                0
            },
            read(&self.tokens_spent),
            read(&self.micros_spent),
        )
    }
}

/// What an answer is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Tokens.
    pub tokens: u64,
    /// Micro-dollars.
    pub micros: u64,
}

/// A budget's 80 % crossed by an admitted request (told once per window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// The larger share of the two budgets now spent, in percent.
    pub percent: u8,
    /// The window (its first second; 0: lifetime).
    pub window: u64,
    /// Tokens spent in it, this request's reservation included.
    pub spent_tokens: u64,
    /// Micro-dollars spent in it, likewise.
    pub spent_micros: u64,
}

/// The part of a reservation held somewhere else (the cluster's Redis),
/// settled with the same real charge when the answer ends.
pub trait SharedReservation: std::fmt::Debug + Send + Sync {
    /// Charges this there (off the request path).
    fn settle(self: Box<Self>, charge: Charge);
}

/// What one request holds until its real usage is known.
#[derive(Debug)]
pub struct Reservation {
    state: Arc<LimitState>,
    estimate: Estimate,
    minute: u64,
    window: u64,
    /// The request counted against `rpm`.
    counted_request: bool,
    /// The same reservation in Redis, when the cluster admitted it.
    shared: Option<Box<dyn SharedReservation>>,
    /// This request took a budget past 80 %.
    pub crossed: Option<Crossing>,
}

impl Reservation {
    pub(super) fn new(
        state: Arc<LimitState>,
        estimate: Estimate,
        minute: u64,
        window: u64,
        counted_request: bool,
    ) -> Reservation {
        Reservation {
            state,
            estimate,
            minute,
            window,
            counted_request,
            shared: None,
            crossed: None,
        }
    }

    /// The tokens reserved.
    pub fn estimate(&self) -> u64 {
        self.estimate.tokens
    }

    /// What was reserved, tokens and micro-dollars.
    pub fn reserved(&self) -> Estimate {
        self.estimate
    }

    /// The budget window it counts in (its first second; 0: lifetime).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The cluster admitted it too: settle it there as well.
    pub fn share(&mut self, hold: Box<dyn SharedReservation>) {
        self.shared = Some(hold);
    }

    /// Undoes what admitting counted here (the cluster refused the request).
    pub fn cancel(self) {
        if self.counted_request && self.state.minute.load(Ordering::Acquire) == self.minute {
            self.state.uncount_request();
        }
        self.settle(Some(Charge {
            tokens: 0,
            micros: 0,
        }));
    }

    /// Replaces the estimate with what the answer cost. `None`: the answer
    /// reported no usage (omitted, cut, unreadable), so the estimate stays
    /// charged — a budget cannot be outrun by streams that never say what
    /// they cost — and its tokens are returned, for the ledger to record as
    /// estimated (`None` when nothing was estimated).
    pub fn settle(mut self, charge: Option<Charge>) -> Option<u64> {
        if let Some(shared) = self.shared.take() {
            shared.settle(charge.unwrap_or(Charge {
                tokens: self.estimate.tokens,
                micros: self.estimate.micros,
            }));
        }
        let Some(charge) = charge else {
            return Some(self.estimate.tokens).filter(|&e| e > 0);
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let tokens = as_i64(charge.tokens) - as_i64(self.estimate.tokens);
        let micros = as_i64(charge.micros) - as_i64(self.estimate.micros);
        // A window that turned since admission started from zero: the
        // correction belongs to the one gone.
        if self.state.window.load(Ordering::Acquire) == self.window {
            self.state.spend(tokens, micros);
        }
        if self.state.minute.load(Ordering::Acquire) == self.minute {
            self.state
                .tokens_this_minute
                .fetch_add(tokens, Ordering::AcqRel);
        }
        None
    }
}
