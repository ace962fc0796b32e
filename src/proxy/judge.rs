//! What an upstream answer says about the key that was sent, asked of the
//! provider's kind once per attempt, before any byte reaches the client —
//! and the bookkeeping that follows from it: the key's health, the
//! rejection and fallback metrics, one log line per transition (key ids,
//! never a secret). The conductor only decides what to do next.

use std::time::Duration;

use http::StatusCode;

use crate::config::Provider;
use crate::control::recent::Recent;
use crate::control::state::Shared;
use crate::keys::health::Refusal;
use crate::keys::{health, KeyRing, Pick};
use crate::providers::{KeyVerdict, ProviderError};
use crate::proxy::error_answer;

/// Asks the provider's kind what an upstream answer says about the key that
/// was sent, and does the bookkeeping that follows: the key's health, the
/// metrics and one log line per transition (key ids only, never a secret).
/// The conductor decides only what to do next: send again, or answer.
pub fn judge_answer(
    shared: &Shared,
    provider: &Provider,
    ring: &KeyRing,
    pick: &Pick<'_>,
    status: StatusCode,
    error: Option<&error_answer::ErrorAnswer>,
    another_key_left: bool,
) -> KeyVerdict {
    let kind = provider.kind;
    let body = error.and_then(error_answer::ErrorAnswer::bytes);
    let read_to_judge = kind.reads_body(status.as_u16());
    let provider_error = body
        .filter(|_| read_to_judge)
        .map(ProviderError::parse)
        .unwrap_or_default();
    let verdict = kind.judge(status.as_u16(), &provider_error);
    let key = pick.key;
    let metrics = &shared.metrics;
    let labels = [provider.name.as_str(), &*key.id];
    let now = health::now_ms();
    let next = if another_key_left {
        ", retrying with the next key"
    } else {
        ""
    };
    match verdict {
        KeyVerdict::Accepted | KeyVerdict::Unrelated => {
            if pick.probe {
                if verdict == KeyVerdict::Accepted && key.health.record_success() {
                    metrics.key_healthy.with_label_values(&labels).set(1);
                    tracing::info!(provider = %provider.name, key_id = %key.id, "key {} accepted again: healthy", key.id);
                } else {
                    key.health.end_probe();
                }
            }
            return verdict;
        }
        KeyVerdict::Rejected => {
            let (cooldown, was_healthy) =
                key.health
                    .record_rejection(shared.config.keys.suspect_cooldown, now, pick.probe);
            metrics.key_healthy.with_label_values(&labels).set(0);
            if let (Some(cluster), true) = (&shared.cluster, was_healthy || pick.probe) {
                cluster.announce(crate::cluster::key_health::News {
                    from: String::new(),
                    key_id: key.id.to_string(),
                    exhausted: false,
                    cooldown_ms: cooldown.as_millis() as u64,
                });
            }
            tracing::warn!(
                provider = %provider.name,
                key_id = %key.id,
                status = status.as_u16(),
                probe = pick.probe,
                first_failure = was_healthy,
                cooldown_s = cooldown.as_secs(),
                "UPSTREAM REJECTED KEY {} of provider {} ({}); it is suspect for {:?}{}",
                key.id,
                provider.name,
                status,
                cooldown,
                next
            );
        }
        KeyVerdict::OutOfCredit => {
            let rest = shared.config.keys.exhausted_cooldown;
            let first = key.health.record_exhausted(rest, now, pick.probe);
            metrics.key_healthy.with_label_values(&labels).set(0);
            if let (Some(cluster), true) = (&shared.cluster, first || pick.probe) {
                cluster.announce(crate::cluster::key_health::News {
                    from: String::new(),
                    key_id: key.id.to_string(),
                    exhausted: true,
                    cooldown_ms: rest.as_millis() as u64,
                });
            }
            tracing::warn!(
                provider = %provider.name,
                key_id = %key.id,
                status = status.as_u16(),
                probe = pick.probe,
                first_failure = first,
                rest_s = rest.as_secs(),
                "KEY {} of provider {} IS OUT OF CREDIT ({}): the account behind it must be topped up; it rests for {:?}{}",
                key.id,
                provider.name,
                status,
                rest,
                next
            );
        }
        KeyVerdict::RateLimited => {
            if pick.probe {
                key.health.end_probe();
            }
            if another_key_left {
                let headers = error.map(|e| &e.parts.headers);
                let cooling = headers.map_or(Duration::from_secs(1), retry_after);
                key.health.record_rate_limited(cooling, now);
                tracing::info!(
                    provider = %provider.name,
                    key_id = %key.id,
                    cooling_s = cooling.as_secs(),
                    "upstream rate-limited key {}; cooling it and trying the next key",
                    key.id
                );
            }
        }
    }
    metrics
        .key_rejections
        .with_label_values(&[provider.name.as_str(), &*key.id, verdict.reason()])
        .inc();
    key.health.record_refusal(Refusal {
        at: crate::unix_now(),
        status: status.as_u16(),
        reason: verdict.reason(),
        // The body was read either way; parsed here only on a refusal.
        code: if read_to_judge {
            shown_code(ring, &provider_error)
        } else {
            shown_code(ring, &body.map(ProviderError::parse).unwrap_or_default())
        },
    });
    let recent = shared.recent.provider(&provider.name);
    let minute = Recent::this_minute();
    if let Some(recent) = recent {
        recent.refusals.count(minute);
    }
    if another_key_left {
        if let Some(recent) = recent {
            recent.fallbacks.count(minute);
        }
        let reason = match verdict {
            KeyVerdict::OutOfCredit => "402",
            KeyVerdict::RateLimited => "429",
            _ => "401",
        };
        metrics
            .fallback_retries
            .with_label_values(&[&provider.name, reason])
            .inc();
    }
    verdict
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
fn retry_after(headers: &http::HeaderMap) -> Duration {
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
