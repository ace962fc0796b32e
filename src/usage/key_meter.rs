//! Usage per upstream key (docs/design.md §16 "Per-key usage"): what
//! keygate sent with each key — answers, input, cached input and output
//! tokens, cost — so it can be compared with what the provider reports per
//! key. Counted by the response tap beside the client's counters, drained
//! by the ledger into its `key_usage` table per key and hour.
//!
//! An attempt the provider refused (the key rejected, out of credit, rate
//! limited) is not counted: it is not the answer, and the provider bills
//! and counts no model request for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::shapes::Usage;
use super::UsageMap;

/// What per-key usage is aggregated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUsageKey {
    /// Provider name.
    pub provider: Arc<str>,
    /// keygate's key id.
    pub key_id: Arc<str>,
}

/// Live counters of one key.
#[derive(Debug, Default)]
pub struct KeyCounters {
    requests: AtomicU64,
    input_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    output_tokens: AtomicU64,
    cost_micros: AtomicU64,
}

/// A drained snapshot of [`KeyCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyDelta {
    /// Answers sent with the key.
    pub requests: u64,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Of them, read from the prompt cache.
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Micro-dollars.
    pub cost_micros: u64,
}

impl KeyCounters {
    /// One answer sent with the key, with what it reported (if anything).
    pub fn record(&self, usage: Option<&Usage>, cost_micros: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(usage) = usage {
            self.input_tokens.fetch_add(usage.prompt, Ordering::Relaxed);
            self.cached_tokens
                .fetch_add(usage.cached, Ordering::Relaxed);
            self.output_tokens
                .fetch_add(usage.completion, Ordering::Relaxed);
        }
        self.cost_micros.fetch_add(cost_micros, Ordering::Relaxed);
    }

    fn drain(&self) -> KeyDelta {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        KeyDelta {
            requests: take(&self.requests),
            input_tokens: take(&self.input_tokens),
            cached_tokens: take(&self.cached_tokens),
            output_tokens: take(&self.output_tokens),
            cost_micros: take(&self.cost_micros),
        }
    }
}

/// The process's per-key counters (one entry per key ever used: the vault
/// bounds them).
#[derive(Debug, Default)]
pub struct KeyMeter {
    keys: UsageMap<KeyUsageKey, Arc<KeyCounters>>,
}

impl KeyMeter {
    /// The counters of `key_id` at `provider`, created on first use.
    pub fn counters(&self, provider: &Arc<str>, key_id: &Arc<str>) -> Arc<KeyCounters> {
        let key = KeyUsageKey {
            provider: provider.clone(),
            key_id: key_id.clone(),
        };
        if let Some(found) = self.keys.get(&key) {
            return found.clone();
        }
        self.keys.entry(key).or_default().clone()
    }

    /// Drains every key's counters; only keys with activity are returned.
    pub fn drain(&self) -> Vec<(KeyUsageKey, KeyDelta)> {
        self.keys
            .iter()
            .filter_map(|entry| {
                let delta = entry.value().drain();
                (delta != KeyDelta::default()).then(|| (entry.key().clone(), delta))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_per_key_and_drained_once() {
        let meter = KeyMeter::default();
        let (openai, a, b): (Arc<str>, Arc<str>, Arc<str>) =
            ("openai".into(), "key_a".into(), "key_b".into());
        let usage = crate::usage::shapes::find(br#"{"usage":{"prompt_tokens":20,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":8}}}"#).usage;
        meter.counters(&openai, &a).record(usage.as_ref(), 70);
        meter.counters(&openai, &a).record(None, 0);
        meter.counters(&openai, &b).record(usage.as_ref(), 70);
        let mut drained = meter.drain();
        drained.sort_by(|x, y| x.0.key_id.cmp(&y.0.key_id));
        assert_eq!(drained.len(), 2);
        assert_eq!(
            drained[0].1,
            KeyDelta {
                requests: 2,
                input_tokens: 20,
                cached_tokens: 8,
                output_tokens: 5,
                cost_micros: 70
            }
        );
        assert!(meter.drain().is_empty());
    }
}
