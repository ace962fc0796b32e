//! A key's headroom (docs/design.md §17): what the provider's last answer
//! said is left of its rate limits — requests and tokens, each until its
//! reset — and how many requests keygate has open on it. Read on every pick,
//! written on every answer: atomics only.
//!
//! Between two answers keygate counts down what it sends (a request, its
//! token estimate), so concurrent picks do not all see the same room; the
//! next answer puts the provider's own count back. A count is known only
//! until its reset: after that the key has room again as far as keygate
//! knows.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::providers::{Allowance, RateLimits};

/// Not known (never said, or past its reset).
const UNKNOWN: u64 = u64::MAX;

/// One limit: what is left and until when (ms on [`super::health::now_ms`]'s clock).
#[derive(Debug)]
struct Limit {
    left: AtomicU64,
    reset_ms: AtomicU64,
    /// The provider itself said 0 in the current window (not only keygate's
    /// counting down).
    said_zero: AtomicBool,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            left: AtomicU64::new(UNKNOWN),
            reset_ms: AtomicU64::new(0),
            said_zero: AtomicBool::new(false),
        }
    }
}

impl Limit {
    fn left(&self, now: u64) -> Option<u64> {
        let left = self.left.load(Ordering::Relaxed);
        (left != UNKNOWN && now < self.reset_ms.load(Ordering::Relaxed)).then_some(left)
    }

    /// Stores what an answer said; true when the provider says 0 and had
    /// not said so in this window yet.
    fn observe(&self, allowance: Allowance, now: u64) -> bool {
        // A count without a reset is taken to hold for a minute, the
        // common window.
        let resets_in = allowance.resets_in.unwrap_or(Duration::from_secs(60));
        let window_over = now >= self.reset_ms.load(Ordering::Relaxed);
        let said_before = self
            .said_zero
            .swap(allowance.remaining == 0, Ordering::Relaxed);
        self.reset_ms.store(
            now.saturating_add(u64::try_from(resets_in.as_millis()).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
        self.left
            .store(allowance.remaining.min(UNKNOWN - 1), Ordering::Relaxed);
        allowance.remaining == 0 && (!said_before || window_over)
    }

    fn take(&self, amount: u64) {
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != UNKNOWN).then(|| left.saturating_sub(amount))
            });
    }

    fn zero_until(&self, until_ms: u64) {
        self.left.store(0, Ordering::Relaxed);
        self.reset_ms.store(until_ms, Ordering::Relaxed);
    }
}

/// A key's headroom.
#[derive(Debug, Default)]
pub struct Headroom {
    requests: Limit,
    tokens: Limit,
    in_flight: AtomicU32,
}

impl Headroom {
    /// Requests left, if known.
    pub fn requests(&self, now: u64) -> Option<u64> {
        self.requests.left(now)
    }

    /// Tokens left, if known.
    pub fn tokens(&self, now: u64) -> Option<u64> {
        self.tokens.left(now)
    }

    /// Requests keygate has open on the key.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True when what is known left covers one more request of `tokens`.
    pub fn covers(&self, tokens: u64, now: u64) -> bool {
        self.requests(now).is_none_or(|left| left > 0)
            && self.tokens(now).is_none_or(|left| left >= tokens.max(1))
    }

    /// When a count known to be 0 starts over (ms), if one is.
    pub fn exhausted_until(&self, now: u64) -> Option<u64> {
        [&self.requests, &self.tokens]
            .into_iter()
            .filter(|limit| limit.left(now) == Some(0))
            .map(|limit| limit.reset_ms.load(Ordering::Relaxed))
            .max()
    }

    /// Larger is more room: tokens left first, then requests (unknown is
    /// as much as can be).
    pub fn room(&self, now: u64) -> (u64, u64) {
        (
            self.tokens(now).unwrap_or(UNKNOWN),
            self.requests(now).unwrap_or(UNKNOWN),
        )
    }

    /// Counts down a request of `tokens` about to be sent.
    pub fn take(&self, tokens: u64) {
        self.requests.take(1);
        self.tokens.take(tokens);
    }

    /// Stores an answer's counts; `Some(how long)` when this took the key
    /// to 0 (worth telling the other replicas).
    pub fn observe(&self, limits: &RateLimits, now: u64) -> Option<Duration> {
        let mut reached_zero = false;
        if let Some(requests) = limits.requests {
            reached_zero |= self.requests.observe(requests, now);
        }
        if let Some(tokens) = limits.tokens {
            reached_zero |= self.tokens.observe(tokens, now);
        }
        if !reached_zero {
            return None;
        }
        self.exhausted_until(now)
            .map(|until| Duration::from_millis(until.saturating_sub(now)))
    }

    /// Another replica found the key at 0 for `rest`.
    pub fn exhausted_for(&self, rest: Duration, now: u64) {
        let until = now.saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX));
        self.requests.zero_until(until);
    }

    /// Opens one request on the key unless `max` are open already.
    pub fn try_enter(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok()
    }
}

/// One open request on a key with a `max_in_flight`; closed when dropped
/// (the response's end, or the attempt given up).
#[derive(Debug)]
pub struct InFlight(pub(super) Arc<super::health::KeyHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.headroom.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(requests: u64, tokens: u64, reset_s: u64) -> RateLimits {
        let reset = Some(Duration::from_secs(reset_s));
        RateLimits {
            requests: Some(Allowance {
                remaining: requests,
                resets_in: reset,
            }),
            tokens: Some(Allowance {
                remaining: tokens,
                resets_in: reset,
            }),
        }
    }

    #[test]
    fn counts_hold_until_their_reset_and_are_counted_down_between_answers() {
        let room = Headroom::default();
        assert!(room.covers(1_000_000, 0), "nothing known: room");
        assert_eq!(room.observe(&said(2, 500, 10), 1_000), None);
        assert!(room.covers(500, 1_000));
        assert!(!room.covers(501, 1_000));
        room.take(100);
        assert_eq!(
            (room.requests(1_000), room.tokens(1_000)),
            (Some(1), Some(400))
        );
        room.take(100);
        assert!(!room.covers(1, 1_000), "no request left");
        assert_eq!(room.exhausted_until(1_000), Some(11_000));
        assert!(room.covers(1, 11_000), "past the reset: room again");
        assert_eq!(
            room.observe(&said(0, 500, 5), 2_000),
            Some(Duration::from_secs(5)),
            "reaching 0 is news"
        );
        assert_eq!(room.observe(&said(0, 500, 5), 2_001), None, "once");
    }

    #[test]
    fn in_flight_is_bounded() {
        let health = Arc::new(super::super::health::KeyHealth::default());
        assert!(health.headroom.try_enter(2));
        let first = InFlight(health.clone());
        assert!(health.headroom.try_enter(2));
        let second = InFlight(health.clone());
        assert!(!health.headroom.try_enter(2));
        drop(first);
        assert!(health.headroom.try_enter(2));
        drop(second);
        assert_eq!(health.headroom.in_flight(), 1);
    }
}
