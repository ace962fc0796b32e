//! Delivering events to the `[[notify]]` receivers: one loop per receiver
//! claims its due deliveries from the outbox, POSTs each (the event, or a
//! Slack-compatible text), and records the answer — 2xx is delivered;
//! anything else, or no answer within `delivery_timeout`, is tried again
//! after a pause that doubles with each attempt (with jitter, at most an
//! hour) until `give_up_after` from the event. Every attempt of an event
//! sends the same body and id, so a receiver deduplicates by `id`.
//!
//! A JSON delivery with a signing key carries `X-Keygate-Timestamp` (Unix
//! seconds) and `X-Keygate-Signature: sha256=HEX(HMAC-SHA256(key,
//! timestamp + "." + body))`, as Stripe and GitHub sign their webhooks.
//!
//! The loops run beside the request path, never in it: a receiver that
//! hangs holds its own loop's claimed batch and connections, nothing else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use prometheus::{IntCounterVec, IntGauge};
use serde_json::Value;
use tokio::sync::Notify;

use super::outbox::{Claimed, Outbox, Outcome};
use crate::config::{EventsConfig, NotifyFormat, NotifyTarget};
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::Upstream;
use crate::shutdown::Shutdown;
use crate::vault::secret::Secret;

/// Deliveries one loop claims at a time (sent concurrently).
const BATCH: u32 = 16;

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// How often a loop looks for due deliveries when nothing woke it (other
/// replicas' events, retries coming due).
const POLL: Duration = Duration::from_millis(500);

/// One receiver and what its loop needs.
pub struct Receiver {
    /// The receiver.
    pub target: NotifyTarget,
    /// Its signing key (`secret_env`'s value).
    pub signing_key: Option<Secret>,
}

/// What every loop shares.
#[derive(Clone)]
pub struct Delivering {
    /// The outbox.
    pub outbox: Arc<Mutex<Outbox>>,
    /// The HTTP client.
    pub upstream: Upstream,
    /// `[events]`.
    pub settings: EventsConfig,
    /// `keygate_notify_deliveries_total{result}`.
    pub deliveries: IntCounterVec,
    /// `keygate_notify_outbox_depth`.
    pub depth: IntGauge,
    /// Rung when new events are in the outbox.
    pub wake: Arc<Notify>,
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The pause before attempt `attempts + 1`: `first` doubled per attempt so
/// far, at most an hour, then a random share of its second half (so
/// replicas and receivers coming back do not retry in step).
pub fn pause(first: Duration, attempts: u32) -> Duration {
    let full = first
        .saturating_mul(1u32 << attempts.min(20))
        .min(MAX_PAUSE);
    let mut byte = [0u8; 2];
    let _ = getrandom::getrandom(&mut byte);
    let share = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
    full.mul_f64(0.5 + share / 2.0)
}

/// The Slack-compatible text of an event: one line a person reads.
pub fn slack_text(event: &Value) -> String {
    let field = |name: &str| match event.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let kind = field("type");
    let mut details: Vec<String> = event
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !matches!(name.as_str(), "id" | "type" | "time" | "summary"))
        .map(|(name, value)| match value {
            Value::String(s) => format!("{name}: {s}"),
            other => format!("{name}: {other}"),
        })
        .collect();
    details.sort();
    let summary = field("summary");
    let headline = if summary.is_empty() {
        kind.replace('_', " ")
    } else {
        summary
    };
    format!(
        "keygate {kind}: {headline}\n{}\n{} · {}",
        details.join(" · "),
        field("time"),
        field("id")
    )
}

/// Runs one receiver's loop until `stop`.
pub async fn deliver(receiver: Receiver, shared: Delivering, mut stop: Shutdown) {
    let name: Arc<str> = Arc::from(receiver.target.name.as_str());
    let lease = shared.settings.delivery_timeout + Duration::from_secs(30);
    loop {
        let now = crate::unix_now_ms();
        let until = now + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX / 2);
        let outbox = shared.outbox.clone();
        let target = name.clone();
        let claimed = tokio::task::spawn_blocking(move || {
            let mut outbox = outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.claim(&target, now, until, BATCH)
        })
        .await;
        let claimed = match claimed {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(error)) => {
                tracing::warn!(receiver = %name, "notify: cannot read the outbox: {error}");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = stop.requested() => return,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let sends = claimed.iter().map(|claim| {
            send(
                &receiver,
                &shared.upstream,
                claim,
                shared.settings.delivery_timeout,
            )
        });
        let answers = futures_util::future::join_all(sends).await;
        let outbox = shared.outbox.clone();
        let settings = shared.settings.clone();
        let target = name.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            record(&outbox, &target, &settings, claimed, answers)
        })
        .await
        .unwrap_or_default();
        for result in outcomes {
            shared.deliveries.with_label_values(&[result]).inc();
        }
        refresh_depth(&shared).await;
    }
}

/// Records each answer; returns each delivery's result word for the metric.
fn record(
    outbox: &Mutex<Outbox>,
    target: &str,
    settings: &EventsConfig,
    claimed: Vec<Claimed>,
    answers: Vec<Result<(), String>>,
) -> Vec<&'static str> {
    let mut outbox = outbox.lock().unwrap_or_else(|p| p.into_inner());
    let now = crate::unix_now_ms();
    let give_up_at = |claim: &Claimed| {
        claim.time_ms + u64::try_from(settings.give_up_after.as_millis()).unwrap_or(u64::MAX / 2)
    };
    let mut results = Vec::with_capacity(claimed.len());
    for (claim, answer) in claimed.iter().zip(answers) {
        let (outcome, result) = match &answer {
            Ok(()) => (Outcome::Delivered, "delivered"),
            Err(error) => {
                let next = now
                    + u64::try_from(pause(settings.first_retry, claim.attempts).as_millis())
                        .unwrap_or(u64::MAX / 4);
                if next >= give_up_at(claim) {
                    tracing::warn!(receiver = %target, event_id = %claim.event_id, attempts = claim.attempts + 1, "notify: event {} given up for {target} after {} attempts: {error}", claim.event_id, claim.attempts + 1);
                    (Outcome::GiveUp { error }, "given_up")
                } else {
                    tracing::info!(receiver = %target, event_id = %claim.event_id, attempts = claim.attempts + 1, "notify: {target} did not take event {} ({error}); retrying", claim.event_id);
                    (
                        Outcome::Retry {
                            next_at_ms: next,
                            error,
                        },
                        "failed",
                    )
                }
            }
        };
        if let Err(error) = outbox.record(&claim.event_id, target, outcome, now) {
            // The claim runs out and the delivery is tried again: at least once.
            tracing::warn!(receiver = %target, "notify: cannot record a delivery: {error}");
        }
        results.push(result);
    }
    results
}

/// Sets the depth gauge from the outbox.
pub async fn refresh_depth(shared: &Delivering) {
    let outbox = shared.outbox.clone();
    let depth = tokio::task::spawn_blocking(move || {
        outbox.lock().unwrap_or_else(|p| p.into_inner()).depth()
    })
    .await;
    if let Ok(Ok(depth)) = depth {
        shared.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

/// One attempt: `Ok` on a 2xx, else what went wrong (a status, or the
/// connection's error — never the URL, which may carry a token).
async fn send(
    receiver: &Receiver,
    upstream: &Upstream,
    claim: &Claimed,
    timeout: Duration,
) -> Result<(), String> {
    let target = &receiver.target;
    let body: Bytes = match target.format {
        NotifyFormat::Json => Bytes::from(claim.body.clone()),
        NotifyFormat::Slack => {
            let event: Value = serde_json::from_str(&claim.body).unwrap_or(Value::Null);
            Bytes::from(serde_json::json!({ "text": slack_text(&event) }).to_string())
        }
    };
    let uri: http::Uri = target
        .url
        .expose()
        .parse()
        .map_err(|_| "the receiver URL is not a valid URI".to_owned())?;
    let mut request = http::Request::new(OutboundBody::Full(Some(body.clone())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("keygate/", env!("CARGO_PKG_VERSION"))),
    );
    if let Ok(id) = http::HeaderValue::from_str(&claim.event_id) {
        headers.insert("x-keygate-event-id", id);
    }
    if let (NotifyFormat::Json, Some(key)) = (target.format, &receiver.signing_key) {
        let timestamp = crate::unix_now();
        let signed = signature(key.expose().as_bytes(), timestamp, &body);
        headers.insert("x-keygate-timestamp", http::HeaderValue::from(timestamp));
        if let Ok(value) = http::HeaderValue::from_str(&signed) {
            headers.insert("x-keygate-signature", value);
        }
    }
    match upstream.exchange(request, 4096, timeout).await {
        Some(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
        Some(Ok((status, _))) => Err(format!("{} answered {status}", target.host)),
        Some(Err(error)) => Err(format!("{}: {}", target.host, error.detail())),
        None => Err(format!("{} did not answer within {timeout:?}", target.host)),
    }
}

/// Prunes the outbox every hour until `stop`.
pub async fn prune(shared: Delivering, targets: Vec<String>, mut stop: Shutdown) {
    loop {
        let outbox = shared.outbox.clone();
        let (keep, max) = (shared.settings.keep, shared.settings.max_stored);
        let targets = targets.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let now = crate::unix_now_ms();
            let before = now.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
            outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .prune(&targets, before, max, now)
        })
        .await;
        match pruned {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(deleted)) => {
                tracing::info!(deleted, "events outbox: deleted {deleted} old events")
            }
            Ok(Err(error)) => tracing::warn!("events outbox: prune failed: {error}"),
        }
        refresh_depth(&shared).await;
        tokio::select! {
            _ = stop.requested() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"Jefe", b"1700000000.{}", hashlib.sha256).hexdigest()
        let signed = signature(b"Jefe", 1_700_000_000, b"{}");
        assert_eq!(
            signed,
            "sha256=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
        assert_ne!(signed, signature(b"Jefe", 1_700_000_001, b"{}"));
        assert_ne!(signed, signature(b"Jeff", 1_700_000_000, b"{}"));
    }

    #[test]
    fn pauses_double_with_jitter_and_stop_at_an_hour() {
        let first = Duration::from_secs(1);
        for attempts in 0..6 {
            let full = Duration::from_secs(1 << attempts);
            let p = pause(first, attempts);
            assert!(p >= full / 2 && p <= full, "{attempts}: {p:?}");
        }
        assert!(pause(first, 40) <= MAX_PAUSE);
        assert!(pause(first, 40) >= MAX_PAUSE / 2);
    }

    #[test]
    fn slack_text_names_the_type_and_fields_and_ends_with_the_id() {
        let event = serde_json::json!({"id": "evt_1", "type": "key_burned", "time": "2026-12-06T00:00:00.000Z",
            "provider": "openai", "key_id": "key_9"});
        let text = slack_text(&event);
        assert!(
            text.starts_with("keygate key_burned: key burned\n"),
            "{text}"
        );
        assert!(text.contains("key_id: key_9 · provider: openai"), "{text}");
        assert!(text.ends_with("evt_1"), "{text}");
    }
}
