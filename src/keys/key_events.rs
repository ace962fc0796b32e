//! The key-events sink: what follows from a verdict on a key — its runtime
//! health, the rejection and fallback metrics, the status page's last hour,
//! the news other replicas need, and one log line per transition (key ids,
//! never a secret). The proxy judges an answer (a pure reading, asked of the
//! provider's kind); this room records it. Other replicas' news lands here too.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use prometheus::{IntCounterVec, IntGaugeVec};

use super::health::{self, Refusal};
use super::recent::Recent;
use super::{KeyRing, Pick, RingKey, Rings};
use crate::events::EventType;
use crate::providers::{KeyVerdict, ProviderError};
use serde_json::json;

/// Where a replica tells the others that a key was put aside (the cluster's
/// Redis news, when there is a cluster).
pub trait KeyNews: Send + Sync {
    /// `key_id` was rejected (`exhausted`: out of credit) and rests `cooldown`.
    fn announce(&self, key_id: &str, exhausted: bool, cooldown: Duration);

    /// `key_id` is at its rate limit at the provider for `rest` (§17).
    fn announce_limit(&self, key_id: &str, rest: Duration);
}

/// The handles a verdict is recorded through.
pub struct KeyEvents {
    /// `key_rejected`, `key_exhausted`, `key_recovered` go here.
    pub events: crate::events::Events,
    /// `keygate_key_healthy{provider,key_id}`.
    pub key_healthy: IntGaugeVec,
    /// `keygate_upstream_key_rejections_total{provider,key_id,reason}`.
    pub key_rejections: IntCounterVec,
    /// `keygate_fallback_retries_total{provider,reason}`.
    pub fallback_retries: IntCounterVec,
    /// Refusals and fallbacks per provider over the last hour.
    pub recent: Recent,
    /// Other replicas, when keygate runs several.
    pub news: Option<Arc<dyn KeyNews>>,
    /// How long a rejected key is suspect.
    pub suspect_cooldown: Duration,
    /// How long a key out of credit rests.
    pub exhausted_cooldown: Duration,
}

/// One judged answer to one attempt.
pub struct Verdict<'a> {
    /// The provider's config name.
    pub provider: &'a str,
    /// What the answer says about the key.
    pub verdict: KeyVerdict,
    /// The upstream status.
    pub status: u16,
    /// The error the provider wrote, as read to judge (`None`: not read).
    pub error: Option<&'a ProviderError>,
    /// The error answer's headers, when it was one.
    pub headers: Option<&'a HeaderMap>,
    /// The error answer's body, when it was one and could be read.
    pub body: Option<&'a [u8]>,
    /// Another key will be tried.
    pub another_key_left: bool,
}

impl KeyEvents {
    /// Records what `verdict` means for the key `pick` chose from `ring`.
    pub fn record(&self, ring: &KeyRing, pick: &Pick<'_>, verdict: &Verdict<'_>) {
        let key = pick.key;
        let provider = verdict.provider;
        let labels = [provider, &*key.id];
        let now = health::now_ms();
        let status = verdict.status;
        let next = if verdict.another_key_left {
            ", retrying with the next key"
        } else {
            ""
        };
        match verdict.verdict {
            KeyVerdict::Accepted | KeyVerdict::Unrelated => {
                if pick.probe {
                    if verdict.verdict == KeyVerdict::Accepted && key.health.record_success() {
                        self.key_healthy.with_label_values(&labels).set(1);
                        tracing::info!(provider = %provider, key_id = %key.id, "key {} accepted again: healthy", key.id);
                        self.events.raise(
                            EventType::KeyRecovered,
                            json!({"provider": provider, "key_id": &*key.id}),
                        );
                    } else {
                        key.health.end_probe();
                    }
                }
                return;
            }
            KeyVerdict::Rejected => {
                let (cooldown, was_healthy) =
                    key.health
                        .record_rejection(self.suspect_cooldown, now, pick.probe);
                self.key_healthy.with_label_values(&labels).set(0);
                if let (Some(news), true) = (&self.news, was_healthy || pick.probe) {
                    news.announce(&key.id, false, cooldown);
                }
                if was_healthy {
                    self.events.raise(
                        EventType::KeyRejected,
                        json!({"provider": provider, "key_id": &*key.id, "status": status,
                               "cooldown_s": cooldown.as_secs(), "another_key_left": verdict.another_key_left}),
                    );
                }
                tracing::warn!(
                    provider = %provider,
                    key_id = %key.id,
                    status,
                    probe = pick.probe,
                    first_failure = was_healthy,
                    cooldown_s = cooldown.as_secs(),
                    "UPSTREAM REJECTED KEY {} of provider {} ({}); it is suspect for {:?}{}",
                    key.id,
                    provider,
                    status,
                    cooldown,
                    next
                );
            }
            KeyVerdict::OutOfCredit => {
                let rest = self.exhausted_cooldown;
                let first = key.health.record_exhausted(rest, now, pick.probe);
                self.key_healthy.with_label_values(&labels).set(0);
                if let (Some(news), true) = (&self.news, first || pick.probe) {
                    news.announce(&key.id, true, rest);
                }
                if first {
                    self.events.raise(
                        EventType::KeyExhausted,
                        json!({"provider": provider, "key_id": &*key.id, "status": status,
                               "rest_s": rest.as_secs(), "another_key_left": verdict.another_key_left}),
                    );
                }
                tracing::warn!(
                    provider = %provider,
                    key_id = %key.id,
                    status,
                    probe = pick.probe,
                    first_failure = first,
                    rest_s = rest.as_secs(),
                    "KEY {} of provider {} IS OUT OF CREDIT ({}): the account behind it must be topped up; it rests for {:?}{}",
                    key.id,
                    provider,
                    status,
                    rest,
                    next
                );
            }
            KeyVerdict::RateLimited => {
                if pick.probe {
                    key.health.end_probe();
                }
                if verdict.another_key_left {
                    let cooling = verdict.headers.map_or(Duration::from_secs(1), retry_after);
                    key.health.record_rate_limited(cooling, now);
                    tracing::info!(
                        provider = %provider,
                        key_id = %key.id,
                        cooling_s = cooling.as_secs(),
                        "upstream rate-limited key {}; cooling it and trying the next key",
                        key.id
                    );
                }
            }
        }
        self.record_refusal(ring, pick, verdict);
    }

    /// The counts and the key's last refusal, for any verdict that is one.
    fn record_refusal(&self, ring: &KeyRing, pick: &Pick<'_>, verdict: &Verdict<'_>) {
        let key = pick.key;
        let provider = verdict.provider;
        self.key_rejections
            .with_label_values(&[provider, &*key.id, verdict.verdict.reason()])
            .inc();
        // The body was read either way; parsed here only when the judge did not.
        let code = match verdict.error {
            Some(error) => shown_code(ring, error),
            None => shown_code(
                ring,
                &verdict.body.map(ProviderError::parse).unwrap_or_default(),
            ),
        };
        key.health.record_refusal(Refusal {
            at: crate::unix_now(),
            status: verdict.status,
            reason: verdict.verdict.reason(),
            code,
        });
        let recent = self.recent.provider(provider);
        let minute = Recent::this_minute();
        if let Some(recent) = recent {
            recent.refusals.count(minute);
        }
        if verdict.another_key_left {
            if let Some(recent) = recent {
                recent.fallbacks.count(minute);
            }
            let reason = match verdict.verdict {
                KeyVerdict::OutOfCredit => "402",
                KeyVerdict::RateLimited => "429",
                _ => "401",
            };
            self.fallback_retries
                .with_label_values(&[provider, reason])
                .inc();
        }
    }

    /// Another replica put `key_id` aside: mark it so here too — for no
    /// longer than this replica would itself (news comes from Redis, which
    /// anyone with its password can write: a cooldown of years would put a
    /// good key aside for ever).
    /// What an answer's headers say is left of `key`'s rate limits (§17),
    /// kept in its headroom; the key reaching 0 is told to the other
    /// replicas, so none of them sends it a request before its reset either.
    pub fn observe_headroom(
        &self,
        provider: &crate::config::Provider,
        key: &RingKey,
        headers: &HeaderMap,
    ) {
        let limits = provider.kind.rate_limits(headers);
        if limits.requests.is_none() && limits.tokens.is_none() {
            return;
        }
        let Some(rest) = key.health.headroom.observe(&limits, health::now_ms()) else {
            return;
        };
        if let Some(news) = &self.news {
            news.announce_limit(&key.id, rest);
        }
        tracing::info!(
            provider = %provider.name,
            key_id = %key.id,
            rest_ms = u64::try_from(rest.as_millis()).unwrap_or(u64::MAX),
            "key {} of {} is at its rate limit at the provider: no request goes to it for {rest:?}",
            key.id,
            provider.name
        );
    }

    /// Another replica found `key_id` at its rate limit for `rest` (at most
    /// an hour: news comes from Redis, which anyone with its password can write).
    pub fn apply_limit_news(&self, rings: &Rings, key_id: &str, rest: Duration) {
        let rest = rest.min(health::MAX_COOLDOWN);
        let now = health::now_ms();
        for ring in rings.values() {
            if let Some(key) = ring.keys().iter().find(|k| *k.id == *key_id) {
                key.health.headroom.exhausted_for(rest, now);
            }
        }
    }

    pub fn apply_news(&self, rings: &Rings, key_id: &str, exhausted: bool, cooldown: Duration) {
        let now = health::now_ms();
        let cooldown = cooldown.min(if exhausted {
            self.exhausted_cooldown
        } else {
            health::MAX_COOLDOWN
        });
        for (provider, ring) in rings {
            let Some(key) = ring.keys().iter().find(|k| *k.id == *key_id) else {
                continue;
            };
            if exhausted {
                key.health.record_exhausted(cooldown, now, false);
            } else {
                key.health.record_rejection(cooldown, now, false);
            }
            self.key_healthy
                .with_label_values(&[provider.as_str(), &key.id])
                .set(0);
            tracing::warn!(
                provider = %provider,
                key_id = %key.id,
                "key {} of {provider} was {} at another replica; skipped here for {cooldown:?}, then probed",
                key.id,
                if exhausted { "out of credit" } else { "rejected" }
            );
        }
    }
}

/// The provider's error code as the status page may show it: an identifier,
/// and nothing in it that echoes a key of this ring.
fn shown_code(ring: &KeyRing, error: &ProviderError) -> Option<String> {
    let code = Refusal::code_shown(error.code.as_deref().or(error.kind.as_deref()))?;
    let mut bytes = code.into_bytes();
    if ring.mask_echoes(&mut bytes) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// How long a rate-limited key cools: `Retry-After` (seconds), else
/// `retry-after-ms`, else OpenAI's `x-ratelimit-reset-requests` duration
/// (`"1s"`, `"6m0s"`); default 1 s, at most an hour.
fn retry_after(headers: &HeaderMap) -> Duration {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let cooling = text("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            text("retry-after-ms")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        })
        .or_else(|| {
            text("x-ratelimit-reset-requests").and_then(|v| humantime::parse_duration(v).ok())
        })
        .unwrap_or(Duration::from_secs(1));
    cooling.clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::vault::document::{Document, KeyState, UpstreamKey};
    use crate::vault::secret::Secret;

    fn events() -> KeyEvents {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("h", "h"), &["provider", "key_id"]);
        let counter = |name: &str, labels: &[&str]| {
            IntCounterVec::new(prometheus::Opts::new(name, name), labels).unwrap()
        };
        KeyEvents {
            events: crate::events::Events::none(),
            key_healthy: gauge.unwrap(),
            key_rejections: counter("r", &["provider", "key_id", "reason"]),
            fallback_retries: counter("f", &["provider", "reason"]),
            recent: Recent::new([&"openai".to_owned()]),
            news: None,
            suspect_cooldown: Duration::from_secs(60),
            exhausted_cooldown: Duration::from_secs(900),
        }
    }

    #[test]
    fn news_from_redis_cannot_put_a_key_aside_for_longer_than_this_replica_would() {
        let config = Config::from_toml("").unwrap();
        let secret = Secret::new("sk-test-news-000000000000".to_owned());
        let document = Document {
            keys: vec![UpstreamKey::new(
                "k1".into(),
                "openai",
                &secret,
                None,
                KeyState::Current,
                0,
            )],
            ..Document::default()
        };
        let ring = Arc::new(KeyRing::build(
            &config.providers["openai"],
            &document,
            0,
            None,
        ));
        let rings: Rings = [("openai".to_owned(), ring.clone())].into_iter().collect();
        let events = events();
        let poisoned = Duration::from_millis(1_000_000_000_000_000);
        for exhausted in [true, false] {
            events.apply_news(&rings, "k1", exhausted, poisoned);
            let cap = if exhausted {
                events.exhausted_cooldown
            } else {
                health::MAX_COOLDOWN
            };
            let later = health::now_ms() + cap.as_millis() as u64 + 1_000;
            let pick = ring
                .pick(
                    &crate::keys::Want {
                        sticky: 0,
                        tokens: 0,
                    },
                    0,
                    later,
                )
                .expect("a key");
            assert_eq!(&*pick.key.id, "k1");
            assert!(pick.probe, "probed once the capped cooldown is over");
            pick.key.health.end_probe();
        }
    }
}
