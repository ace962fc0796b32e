//! Runtime health of one upstream key, per process, in memory (docs/design.md §5):
//!
//! ```text
//! healthy ──key rejected──► suspect (cooldown · 2^n, capped 1 h) ──► probe (single-flight) ──2xx──► healthy
//!    │                                                                         └─rejected──► suspect (n+1)
//!    ├──out of credit──► exhausted (exhausted_cooldown) ──► probe (single-flight) ──2xx──► healthy
//!    │                                                             └─out of credit──► exhausted again
//!    └── Retry-After elapsed ◄── cooling ◄── rate limited (only when the ring has another key)
//! ```
//!
//! What counts as rejected, out of credit or rate limited is the provider
//! kind's call ([`crate::providers::Kind::judge`]), not this room's.
//!
//! Atomics only: read on every request, written on the rare transition. Reset
//! when a key's secret changes (a new `KeyHealth` is made for it).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use std::time::{Duration, Instant};

/// The longest a key is ever put aside for one refusal (a doubled suspect
/// cooldown, or news from another replica).
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// Milliseconds since this process first asked (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What a request may do with a key right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Use it.
    Healthy,
    /// Rejected recently; skip it unless nothing else is left.
    Suspect,
    /// Its account is out of credit; skip it unless nothing else is left.
    Exhausted,
    /// Rejected, and its cooldown is over: one request may probe it.
    ProbeDue,
    /// Rate limited; skip it until `Retry-After` passes.
    Cooling,
}

/// Health of one key.
#[derive(Debug, Default)]
pub struct KeyHealth {
    failures: AtomicU32,
    suspect_until_ms: AtomicU64,
    cooling_until_ms: AtomicU64,
    last_failed_ms: AtomicU64,
    probing: AtomicBool,
    /// The last failure was "out of credit", not a rejection.
    exhausted: AtomicBool,
    /// What the provider said the last time it refused this key (status page).
    last_refusal: ArcSwapOption<Refusal>,
    /// What the provider says is left of the key's rate limits (§17).
    pub headroom: super::headroom::Headroom,
}

/// The provider's last "no" to a key: when, the HTTP status, keygate's
/// reading of it, and the provider's own error code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Unix seconds.
    pub at: u64,
    /// The upstream's HTTP status.
    pub status: u16,
    /// keygate's reading: `rejected`, `exhausted` or `rate_limited`.
    pub reason: &'static str,
    /// The provider's `error.code` (else `error.type`), when it is a short
    /// identifier; anything else is dropped rather than shown.
    pub code: Option<String>,
}

/// The longest provider error code kept.
const MAX_CODE: usize = 64;

impl Refusal {
    /// Keeps `code` only when it reads as an identifier (`invalid_api_key`,
    /// `authentication_error`, xAI's `Client specified an invalid argument`):
    /// it is shown on the status page, so nothing that could carry a key.
    pub fn code_shown(code: Option<&str>) -> Option<String> {
        let code = code?.trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | ':');
        (!code.is_empty() && code.len() <= MAX_CODE && code.chars().all(plain))
            .then(|| code.to_owned())
    }
}

impl KeyHealth {
    /// Current availability.
    pub fn availability(&self, now: u64) -> Availability {
        if self.failures.load(Ordering::Relaxed) > 0 {
            if now < self.suspect_until_ms.load(Ordering::Relaxed) {
                if self.exhausted.load(Ordering::Relaxed) {
                    return Availability::Exhausted;
                }
                return Availability::Suspect;
            }
            return Availability::ProbeDue;
        }
        if now < self.cooling_until_ms.load(Ordering::Relaxed) {
            return Availability::Cooling;
        }
        Availability::Healthy
    }

    /// True when this caller won the right to probe (single-flight).
    pub fn try_begin_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Ends a probe that was neither accepted nor rejected (network error, 5xx).
    pub fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// The upstream accepted the key. Returns true when it was suspect before.
    pub fn record_success(&self) -> bool {
        let was_suspect = self.failures.swap(0, Ordering::AcqRel) > 0;
        self.exhausted.store(false, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        was_suspect
    }

    /// The upstream rejected the key. A healthy key becomes suspect for
    /// `base`; a failed *probe* doubles the cooldown (capped at an hour). Other
    /// rejections of an already-suspect key — requests that were in flight when
    /// it was marked, or that used it as a last resort — change nothing but the
    /// time of the last failure, so one burst of 401s counts once. Returns the
    /// cooldown in force and whether the key was healthy before.
    pub fn record_rejection(&self, base: Duration, now: u64, probe: bool) -> (Duration, bool) {
        self.exhausted.store(false, Ordering::Relaxed);
        self.last_failed_ms.store(now, Ordering::Relaxed);
        let first = self
            .failures
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        let failures = if first {
            1
        } else if probe {
            self.failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            let until = self.suspect_until_ms.load(Ordering::Relaxed);
            return (Duration::from_millis(until.saturating_sub(now)), false);
        };
        let factor = 1u32 << (failures - 1).min(16);
        let cooldown = base.saturating_mul(factor).min(MAX_COOLDOWN);
        self.suspect_until_ms
            .store(now + cooldown.as_millis() as u64, Ordering::Relaxed);
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        (cooldown, first)
    }

    /// The account behind the key is out of credit: it rests for `cooldown`
    /// (no doubling: credit comes back when someone pays, not with time), then
    /// one request probes it. Returns whether the key was usable before.
    pub fn record_exhausted(&self, cooldown: Duration, now: u64, probe: bool) -> bool {
        self.last_failed_ms.store(now, Ordering::Relaxed);
        let first = self.failures.fetch_add(1, Ordering::AcqRel) == 0;
        let was_exhausted = self.exhausted.swap(true, Ordering::AcqRel);
        // A burst of in-flight answers counts once; a failed probe rests it again.
        if first || probe || !was_exhausted {
            self.suspect_until_ms
                .store(now + cooldown.as_millis() as u64, Ordering::Relaxed);
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        first
    }

    /// The state's name for `key list`, `/admin/keys` and logs.
    pub fn state_name(&self, now: u64) -> &'static str {
        match self.availability(now) {
            Availability::Healthy => "healthy",
            Availability::Suspect => "suspect",
            Availability::Exhausted => "exhausted",
            Availability::ProbeDue if self.exhausted.load(Ordering::Relaxed) => "exhausted",
            Availability::ProbeDue => "suspect",
            Availability::Cooling => "cooling",
        }
    }

    /// The upstream said 429: cool the key for `retry_after`.
    pub fn record_rate_limited(&self, retry_after: Duration, now: u64) {
        self.cooling_until_ms
            .store(now + retry_after.as_millis() as u64, Ordering::Relaxed);
        self.last_failed_ms.store(now, Ordering::Relaxed);
    }

    /// Remembers what the provider said when it refused this key (the rare
    /// path: one small allocation per refusal).
    pub fn record_refusal(&self, refusal: Refusal) {
        self.last_refusal.store(Some(Arc::new(refusal)));
    }

    /// The provider's last refusal of this key, if any.
    pub fn last_refusal(&self) -> Option<Arc<Refusal>> {
        self.last_refusal.load_full()
    }

    /// When it last failed (ms, process clock); 0 if never.
    pub fn last_failed(&self) -> u64 {
        self.last_failed_ms.load(Ordering::Relaxed)
    }

    /// 1 when healthy, 0 otherwise (for `keygate_key_healthy`).
    pub fn healthy_gauge(&self, now: u64) -> i64 {
        i64::from(self.availability(now) == Availability::Healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identifier_like_codes_are_kept() {
        assert_eq!(
            Refusal::code_shown(Some("invalid_api_key")).as_deref(),
            Some("invalid_api_key")
        );
        assert_eq!(
            Refusal::code_shown(Some("Client specified an invalid argument")).as_deref(),
            Some("Client specified an invalid argument")
        );
        assert_eq!(Refusal::code_shown(Some("sk-ab/cd+ef==")), None);
        assert_eq!(Refusal::code_shown(Some(&"a".repeat(65))), None);
        assert_eq!(Refusal::code_shown(Some("  ")), None);
        assert_eq!(Refusal::code_shown(None), None);
    }

    #[test]
    fn rejection_backs_off_then_allows_one_probe() {
        let health = KeyHealth::default();
        let base = Duration::from_millis(100);
        assert_eq!(health.availability(0), Availability::Healthy);
        let (cooldown, was_healthy) = health.record_rejection(base, 1_000, false);
        // In-flight requests that also got 401 do not stretch the cooldown.
        assert_eq!(
            health.record_rejection(base, 1_001, false),
            (base - Duration::from_millis(1), false)
        );
        assert!(was_healthy);
        assert_eq!(cooldown, base);
        assert_eq!(health.availability(1_050), Availability::Suspect);
        assert_eq!(health.availability(1_100), Availability::ProbeDue);
        assert!(health.try_begin_probe());
        assert!(!health.try_begin_probe(), "single flight");
        let (cooldown, was_healthy) = health.record_rejection(base, 1_100, true);
        assert!(!was_healthy);
        assert_eq!(cooldown, base * 2);
        assert!(health.try_begin_probe());
        assert!(health.record_success());
        assert_eq!(health.availability(1_101), Availability::Healthy);
    }

    #[test]
    fn an_empty_account_rests_then_is_probed_once() {
        let health = KeyHealth::default();
        let rest = Duration::from_millis(900);
        assert!(health.record_exhausted(rest, 1_000, false));
        // Answers that were in flight do not stretch the rest.
        assert!(!health.record_exhausted(rest, 1_500, false));
        assert_eq!(health.availability(1_899), Availability::Exhausted);
        assert_eq!(health.state_name(1_899), "exhausted");
        assert_eq!(health.availability(1_900), Availability::ProbeDue);
        assert!(health.try_begin_probe());
        assert!(!health.try_begin_probe(), "single flight");
        health.record_exhausted(rest, 1_900, true);
        assert_eq!(health.availability(2_799), Availability::Exhausted);
        assert_eq!(health.availability(2_800), Availability::ProbeDue);
        assert!(health.try_begin_probe());
        assert!(health.record_success());
        assert_eq!(health.state_name(2_801), "healthy");
        // A later rejection is a rejection, not exhaustion.
        health.record_rejection(rest, 3_000, false);
        assert_eq!(health.state_name(3_001), "suspect");
    }

    #[test]
    fn cooldown_is_capped_at_an_hour() {
        let health = KeyHealth::default();
        for _ in 0..40 {
            health.record_rejection(Duration::from_secs(60), 0, true);
        }
        assert_eq!(
            health.record_rejection(Duration::from_secs(60), 0, true).0,
            MAX_COOLDOWN
        );
    }
}
