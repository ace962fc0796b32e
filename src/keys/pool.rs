//! Which key of a provider's ring an attempt uses (docs/design.md §5, §17):
//! the pool's scheduling.
//!
//! - **Headroom** (`pool = "headroom"`, the default): the client's own key
//!   while the provider's last word says it has room for the request (a
//!   request left, and tokens for its estimate), else the healthy key with
//!   the most room. Keeps each client on one key (provider-side prompt
//!   caches) until that key would answer 429.
//! - Then, in both modes, the first healthy untried key in the client's
//!   order (a suspect key whose cooldown is over gets one single-flight
//!   probe), then the least recently failed untried key anyway — the
//!   upstream is the authority on a 401.
//! - Never a key with `max_in_flight` requests open, and with headroom never
//!   a key the provider said is at 0 until its reset: when only such keys
//!   are left the request is not sent ([`NoPick::AtCapacity`]).
//! - **Sticky** (`pool = "sticky"`): the pool as before headroom — the
//!   client's own key while it is healthy; a key at its limit is learnt of
//!   from the provider's 429 (then cooled, and the request sent again with
//!   another key).
//!
//! A client's own key: its sticky number spread over the current keys by
//! their `weight` (new clients share the pool in proportion).

use std::time::Duration;

use super::headroom::InFlight;
use super::health::Availability;
use super::ring::{KeyRing, Pick, RingKey};
use crate::config::Pool;

/// What the request asks of the pool.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// The client's sticky number.
    pub sticky: u64,
    /// The request's token estimate (prompt and completion allowance).
    pub tokens: u64,
}

/// Why no key was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// Every key was tried.
    AllTried,
    /// The keys left are at their rate limit or their `max_in_flight`; the
    /// first has room again after this.
    AtCapacity(Duration),
}

/// The current keys' shares of new clients, by weight.
#[derive(Debug, Default)]
pub(super) struct Shares {
    /// Running totals of the weights; empty when every weight is 1.
    cumulative: Vec<u64>,
}

impl Shares {
    pub(super) fn new(weights: &[u32]) -> Shares {
        if weights.iter().all(|w| *w == 1) {
            return Shares::default();
        }
        let mut total = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        Shares { cumulative }
    }

    /// The client's own key among `pool` current keys.
    fn own(&self, sticky: u64, pool: usize) -> usize {
        match self.cumulative.last() {
            Some(&total) if total > 0 => {
                let point = sticky % total;
                self.cumulative.partition_point(|c| *c <= point)
            }
            _ => (sticky % pool.max(1) as u64) as usize,
        }
    }
}

/// Picks the key for the next attempt.
pub(super) fn pick<'a>(
    ring: &'a KeyRing,
    want: &Want,
    tried: u64,
    now: u64,
) -> Result<Pick<'a>, NoPick> {
    let keys = ring.keys();
    let current = ring.current_count();
    let untried = |i: &usize| tried & (1u64 << i) == 0;
    let own = ring.shares().own(want.sticky, current);
    let pool = current.max(1);
    let order = || {
        (0..current)
            .map(move |n| (own + n) % pool)
            .chain(current..keys.len())
            .filter(untried)
    };
    // `sticky` keeps the pool as it was before headroom: a key learns it is
    // at its limit from a 429.
    let by_headroom = ring.pool() == Pool::Headroom;
    let at_zero = |key: &RingKey| by_headroom && key.health.headroom.exhausted_until(now).is_some();
    let healthy = |key: &RingKey| key.health.availability(now) == Availability::Healthy;
    if by_headroom && current > 0 {
        let covers = |key: &RingKey| healthy(key) && key.health.headroom.covers(want.tokens, now);
        if untried(&own) && covers(&keys[own]) {
            if let Some(pick) = enter(keys, own, want, false) {
                return Ok(pick);
            }
        }
        let mut roomiest: Vec<usize> = (0..current)
            .filter(untried)
            .filter(|i| covers(&keys[*i]))
            .collect();
        roomiest.sort_by_key(|i| std::cmp::Reverse(keys[*i].health.headroom.room(now)));
        if let Some(pick) = roomiest
            .into_iter()
            .find_map(|i| enter(keys, i, want, false))
        {
            return Ok(pick);
        }
    }
    for index in order() {
        let key = &keys[index];
        if at_zero(key) {
            continue;
        }
        match key.health.availability(now) {
            Availability::Healthy => {
                if let Some(pick) = enter(keys, index, want, false) {
                    return Ok(pick);
                }
            }
            Availability::ProbeDue if key.health.try_begin_probe() => {
                match enter(keys, index, want, true) {
                    Some(pick) => return Ok(pick),
                    None => key.health.end_probe(),
                }
            }
            _ => {}
        }
    }
    let mut anyway: Vec<usize> = order().filter(|i| !at_zero(&keys[*i])).collect();
    anyway.sort_by_key(|i| keys[*i].health.last_failed());
    if let Some(pick) = anyway.into_iter().find_map(|i| enter(keys, i, want, false)) {
        return Ok(pick);
    }
    if order().next().is_none() {
        return Err(NoPick::AllTried);
    }
    // Only keys at 0 or full are left: the first reset, or a second for a
    // slot to free up.
    let reset = order()
        .filter_map(|i| keys[i].health.headroom.exhausted_until(now))
        .min()
        .map_or(Duration::from_secs(1), |at| {
            Duration::from_millis(at.saturating_sub(now))
        });
    Err(NoPick::AtCapacity(reset))
}

/// Takes key `index` for the attempt: opens a request on it (unless it has
/// `max_in_flight` open) and counts the request down from its headroom.
fn enter<'a>(keys: &'a [RingKey], index: usize, want: &Want, probe: bool) -> Option<Pick<'a>> {
    let key = &keys[index];
    let in_flight = match key.max_in_flight {
        Some(max) if !key.health.headroom.try_enter(max) => return None,
        Some(_) => Some(InFlight(key.health.clone())),
        None => None,
    };
    key.health.headroom.take(want.tokens);
    Some(Pick {
        index,
        key,
        probe,
        in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_share_new_clients_in_proportion() {
        let shares = Shares::new(&[3, 1]);
        let mut counts = [0; 2];
        for sticky in 0..400 {
            counts[shares.own(sticky, 2)] += 1;
        }
        assert_eq!(counts, [300, 100]);
        let even = Shares::new(&[1, 1, 1]);
        assert_eq!((even.own(4, 3), even.own(5, 3)), (1, 2));
    }
}
