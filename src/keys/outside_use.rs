//! Outside use (docs/design.md §16): what the provider reports each key
//! used, against what keygate sent with it. keygate knows exactly what it
//! sent (the ledger's `key_usage`); the difference is someone else holding
//! the key — a leaked copy, a laptop's `.env`, a teammate.
//!
//! The comparison is over whole hours, from `reconcile_window` ago to the
//! hour holding `now - reconcile_lag` (the providers report late: what they
//! have not reported yet only makes keygate's count the larger, never an
//! alarm). Only the provider counting *more* is outside use: by more than
//! `outside_use_min_requests` requests where it counts requests (OpenAI),
//! else by more than 2 % of keygate's tokens (Anthropic reports tokens
//! only) — so requests in flight across an edge, retries, refused attempts
//! (counted by neither side) and a replica's late flush do not read as one.
//! A key keygate cannot map to the provider's id, or a provider without a
//! per-key usage API, is `not reconcilable`, never clean.
//!
//! [`compare`] is pure; [`provider_side`] reads the provider first, then the
//! caller reads the ledger (after the flush interval) and [`finish`]es.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::config::Provider;
use crate::keys::inventory::{self, InventoryError, Reading};
use crate::net::upstream::Upstream;
use crate::providers::management::{rfc3339, KeyUsageReport};
use crate::usage::ledger::KeyUsageRow;
use crate::vault::document::Document;

/// What the comparison of one key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The provider reports no more than keygate sent.
    Clean,
    /// The provider reports more: someone else uses the key.
    OutsideUse {
        /// Requests beyond keygate's (where the provider counts them).
        requests: Option<u64>,
        /// Tokens beyond keygate's.
        tokens: u64,
    },
    /// It cannot be told, and why.
    NotReconcilable(String),
}

/// One key's comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Provider name.
    pub provider: String,
    /// keygate's key id.
    pub key_id: String,
    /// The provider's id of it, when mapped.
    pub provider_key_id: Option<String>,
    /// What keygate sent: requests, tokens.
    pub keygate: (u64, u64),
    /// What the provider reports: requests (if it counts them), tokens.
    pub provider_reports: Option<(Option<u64>, u64)>,
    /// The verdict.
    pub finding: Finding,
}

impl Comparison {
    /// The row of `key reconcile --json` and the event's fields.
    pub fn to_json(&self, window: (u64, u64)) -> Value {
        let (finding, detail) = match &self.finding {
            Finding::Clean => ("clean", Value::Null),
            Finding::OutsideUse { requests, tokens } => (
                "outside_use",
                json!({"extra_requests": requests, "extra_tokens": tokens}),
            ),
            Finding::NotReconcilable(why) => ("not_reconcilable", json!(why)),
        };
        json!({
            "provider": self.provider,
            "key_id": self.key_id,
            "provider_key_id": self.provider_key_id,
            "window_start": rfc3339(window.0 * 3600),
            "window_end": rfc3339(window.1 * 3600),
            "keygate_requests": self.keygate.0,
            "keygate_tokens": self.keygate.1,
            "provider_requests": self.provider_reports.and_then(|p| p.0),
            "provider_tokens": self.provider_reports.map(|p| p.1),
            "finding": finding,
            "detail": detail,
        })
    }
}

/// The thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// More requests than this is outside use.
    pub min_requests: u64,
}

/// Compares, for each of keygate's keys at a provider, what it sent with
/// what the provider reports (`mapped`: keygate key id → provider key id).
pub fn compare(
    provider: &str,
    key_ids: &[String],
    keygate: &[KeyUsageRow],
    reports: &[KeyUsageReport],
    mapped: &HashMap<String, String>,
    thresholds: Thresholds,
) -> Vec<Comparison> {
    key_ids
        .iter()
        .map(|key_id| {
            let sent = keygate
                .iter()
                .find(|r| r.provider == provider && r.key_id == *key_id)
                .map_or((0, 0), |r| (r.requests, r.input_tokens + r.output_tokens));
            let Some(provider_key_id) = mapped.get(key_id) else {
                return Comparison {
                    provider: provider.to_owned(),
                    key_id: key_id.clone(),
                    provider_key_id: None,
                    keygate: sent,
                    provider_reports: None,
                    finding: Finding::NotReconcilable(
                        "keygate cannot match it to a key the provider lists (its secret is gone and keygate did not mint it)".to_owned(),
                    ),
                };
            };
            let report = reports
                .iter()
                .find(|r| r.provider_key_id == *provider_key_id);
            let (requests, tokens) = report.map_or((Some(0), 0), |r| {
                (r.requests, r.input_tokens + r.output_tokens)
            });
            let extra_tokens = tokens.saturating_sub(sent.1);
            let finding = match requests {
                Some(requests) if requests > sent.0 + thresholds.min_requests => Finding::OutsideUse {
                    requests: Some(requests - sent.0),
                    tokens: extra_tokens,
                },
                Some(_) => Finding::Clean,
                // Tokens only: more than 2 % above keygate's count.
                None if extra_tokens * 50 > sent.1.max(1) => Finding::OutsideUse {
                    requests: None,
                    tokens: extra_tokens,
                },
                None => Finding::Clean,
            };
            Comparison {
                provider: provider.to_owned(),
                key_id: key_id.clone(),
                provider_key_id: Some(provider_key_id.clone()),
                keygate: sent,
                provider_reports: Some((requests, tokens)),
                finding,
            }
        })
        .collect()
}

/// The whole hours compared at `now`: from `window` ago to the hour holding
/// `now - lag` (included).
pub fn hours(now: u64, window: u64, lag: u64) -> (u64, u64) {
    let start = now.saturating_sub(window) / 3600;
    let end = now.saturating_sub(lag) / 3600 + 1;
    (start, end.max(start + 1))
}

/// Why a reconciliation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The keys could not be listed or the usage not read.
    #[error(transparent)]
    Provider(#[from] InventoryError),
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] crate::usage::ledger::LedgerError),
}

/// What the provider says, read before keygate's own counts: whatever the
/// provider counted was sent before the ledger is read, so a flush that is
/// late (here, or in another replica) cannot make keygate's count the
/// smaller.
pub struct ProviderSide {
    provider: String,
    /// `None`: the provider cannot be checked, and why.
    reports: Result<(HashMap<String, String>, Vec<KeyUsageReport>), String>,
}

/// Reads `provider`'s per-key usage over `[start_hour, end_hour)` and maps
/// its key ids to keygate's (through the inventory).
pub async fn provider_side(
    upstream: &Upstream,
    provider: &Provider,
    document: &Document,
    (start_hour, end_hour): (u64, u64),
) -> Result<ProviderSide, ReconcileError> {
    let has_usage_api = provider.kind.management().is_some_and(|m| {
        provider
            .admin
            .as_ref()
            .is_some_and(|a| m.key_usage(a, 0, 3600, None).is_some())
    });
    if !has_usage_api || !inventory::can_take(document, provider) {
        let why = if has_usage_api {
            format!(
                "no management credential for {0}: `keygate admin-key set {0}`",
                provider.name
            )
        } else {
            format!(
                "{} (kind {}) has no per-key usage API keygate knows",
                provider.name,
                provider.kind.as_str()
            )
        };
        return Ok(ProviderSide {
            provider: provider.name.clone(),
            reports: Err(why),
        });
    }
    let entries = inventory::take(upstream, provider, document, None).await?;
    let mapped: HashMap<String, String> = entries
        .iter()
        .filter_map(|e| match &e.reading {
            Reading::Managed { key_id, .. } => Some((key_id.clone(), e.listed.id.clone())),
            _ => None,
        })
        .collect();
    let reports = inventory::key_usage(
        upstream,
        provider,
        document,
        start_hour * 3600,
        end_hour * 3600,
    )
    .await?;
    Ok(ProviderSide {
        provider: provider.name.clone(),
        reports: Ok((mapped, reports)),
    })
}

/// Compares every key of the provider that is in use or carried traffic,
/// given what it reported and what keygate sent (`keygate`, the ledger read
/// after the provider).
pub fn finish(
    side: &ProviderSide,
    document: &Document,
    keygate: &[KeyUsageRow],
    thresholds: Thresholds,
) -> Vec<Comparison> {
    let provider = side.provider.as_str();
    let mut key_ids: Vec<String> = document
        .keys
        .iter()
        .filter(|k| k.provider == provider)
        .filter(|k| {
            k.state.is_usable()
                || keygate
                    .iter()
                    .any(|r| r.key_id == k.id && r.provider == provider)
        })
        .map(|k| k.id.clone())
        .collect();
    key_ids.sort();
    match &side.reports {
        Ok((mapped, reports)) => compare(provider, &key_ids, keygate, reports, mapped, thresholds),
        Err(why) => key_ids
            .into_iter()
            .map(|key_id| Comparison {
                provider: provider.to_owned(),
                keygate: keygate
                    .iter()
                    .find(|r| r.key_id == key_id && r.provider == provider)
                    .map_or((0, 0), |r| (r.requests, r.input_tokens + r.output_tokens)),
                key_id,
                provider_key_id: None,
                provider_reports: None,
                finding: Finding::NotReconcilable(why.clone()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(key_id: &str, requests: u64, tokens: u64) -> KeyUsageRow {
        KeyUsageRow {
            provider: "openai".into(),
            key_id: key_id.into(),
            requests,
            input_tokens: tokens,
            ..KeyUsageRow::default()
        }
    }

    fn report(id: &str, requests: Option<u64>, tokens: u64) -> KeyUsageReport {
        KeyUsageReport {
            provider_key_id: id.into(),
            requests,
            input_tokens: tokens,
            output_tokens: 0,
        }
    }

    #[test]
    fn only_the_provider_counting_more_than_the_tolerance_is_outside_use() {
        let keys = [
            "a".to_owned(),
            "b".to_owned(),
            "c".to_owned(),
            "d".to_owned(),
        ];
        let mapped = HashMap::from([
            ("a".to_owned(), "key_a".to_owned()),
            ("b".to_owned(), "key_b".to_owned()),
            ("c".to_owned(), "key_c".to_owned()),
        ]);
        let keygate = [
            sent("a", 100, 1000),
            sent("b", 100, 1000),
            sent("c", 100, 1000),
        ];
        let reports = [
            report("key_a", Some(104), 1040), // in flight at the edge: within 5
            report("key_b", Some(120), 1200), // 20 more: outside use
            report("key_c", Some(90), 900),   // the provider is behind: never an alarm
        ];
        let found = compare(
            "openai",
            &keys,
            &keygate,
            &reports,
            &mapped,
            Thresholds { min_requests: 5 },
        );
        assert_eq!(found[0].finding, Finding::Clean);
        assert_eq!(
            found[1].finding,
            Finding::OutsideUse {
                requests: Some(20),
                tokens: 200
            }
        );
        assert_eq!(found[2].finding, Finding::Clean);
        assert!(matches!(found[3].finding, Finding::NotReconcilable(_)));
    }

    #[test]
    fn tokens_only_use_two_percent_and_hours_close_late() {
        let keys = ["a".to_owned(), "b".to_owned()];
        let mapped = HashMap::from([
            ("a".to_owned(), "k_a".to_owned()),
            ("b".to_owned(), "k_b".to_owned()),
        ]);
        let keygate = [sent("a", 10, 10_000), sent("b", 10, 10_000)];
        let reports = [report("k_a", None, 10_150), report("k_b", None, 10_300)];
        let found = compare(
            "openai",
            &keys,
            &keygate,
            &reports,
            &mapped,
            Thresholds { min_requests: 5 },
        );
        assert_eq!(found[0].finding, Finding::Clean);
        assert_eq!(
            found[1].finding,
            Finding::OutsideUse {
                requests: None,
                tokens: 300
            }
        );
        // 2026-12-06T05:55Z, a day back, ten minutes late: 05:00 to 06:00 included.
        assert_eq!(
            hours(1_796_536_500, 86_400, 600),
            (1_796_536_500 / 3600 - 24, 1_796_536_500 / 3600 + 1)
        );
    }
}
