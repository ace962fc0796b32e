//! Every metric name keygate exports (docs/design.md §8), declared once, on a registry
//! the process owns (two keygates in one test process never collide).
//!
//! Labels are client names, provider names, key ids and status codes: never a
//! secret.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;

mod groups;

pub use groups::EventMetrics;

/// The metrics of one keygate process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `keygate_requests_total{client,provider,status}`.
    pub requests_total: IntCounterVec,
    /// `keygate_request_duration_seconds{provider}`: client-seen time to response headers.
    pub request_duration: HistogramVec,
    /// `keygate_upstream_duration_seconds{provider}`: upstream time to response headers.
    pub upstream_duration: HistogramVec,
    /// `keygate_active_requests{provider}`: requests (and streams) in flight.
    pub active_requests: IntGaugeVec,
    /// `keygate_vault_reloads_total{result}`.
    pub vault_reloads: IntCounterVec,
    /// `keygate_upstream_key_rejections_total{provider,key_id,reason}`.
    pub key_rejections: IntCounterVec,
    /// `keygate_fallback_retries_total{provider,reason}`.
    pub fallback_retries: IntCounterVec,
    /// `keygate_key_rotations_total{provider}`.
    pub key_rotations: IntCounterVec,
    /// `keygate_key_age_seconds{provider,key_id,state}`.
    pub key_age: IntGaugeVec,
    /// `keygate_key_grace_end_timestamp_seconds{provider,key_id}`: when a
    /// `previous` key's grace ends (unix seconds), for "grace ending" alerts.
    pub key_grace_end: IntGaugeVec,
    /// `keygate_key_healthy{provider,key_id}`.
    pub key_healthy: IntGaugeVec,
    /// `keygate_tokens_total{client,provider,model,kind}`.
    pub tokens_total: IntCounterVec,
    /// `keygate_client_auth_failures_total{reason}`: client-key refusals (401) by case.
    pub client_auth_failures: IntCounterVec,
    /// `keygate_key_mints_total{provider,result}`: keys created at the provider by
    /// `serve` (auto_rotate, the admin API), `ok` or `failed`.
    pub key_mints: IntCounterVec,
    /// `keygate_provider_deletes_total{provider,result}`: keys deleted (or
    /// disabled) at the provider by `serve`, `ok` or `failed`.
    pub provider_deletes: IntCounterVec,
    /// `keygate_cluster_errors_total{op}`: Redis calls that failed or timed
    /// out (`connect`, `ping`, `reserve`, `settle`, `publish`, `subscribe`,
    /// `lease`);
    /// each one meant this replica went on alone.
    pub cluster_errors: IntCounterVec,
    /// The events room's series.
    pub events: EventMetrics,
    /// `keygate_cost_dollars_total{client,provider,model}`.
    pub cost: prometheus::CounterVec,
    /// `keygate_unpriced_requests_total{provider,model}`.
    pub unpriced: IntCounterVec,
    /// `keygate_key_headroom{provider,key_id,what}`: set when scraped.
    pub headroom: IntGaugeVec,
    /// `keygate_key_outside_requests{provider,key_id}`: requests the
    /// provider counted beyond keygate's in the last comparison.
    pub outside_requests: IntGaugeVec,
    /// `keygate_key_outside_use_total{provider,key_id}`: outside use found.
    pub outside_use: IntCounterVec,
    /// Per-provider series, resolved once (no label lookup per request).
    providers: std::sync::Arc<std::collections::HashMap<String, ProviderMetrics>>,
}

/// The per-provider series a request touches, resolved at start.
#[derive(Clone)]
pub struct ProviderMetrics {
    /// The provider's name, shared (a label and a usage key part, never copied).
    pub name: std::sync::Arc<str>,
    /// `keygate_active_requests{provider}`.
    pub active: prometheus::IntGauge,
    /// `keygate_request_duration_seconds{provider}`.
    pub request_duration: prometheus::Histogram,
    /// `keygate_upstream_duration_seconds{provider}`.
    pub upstream_duration: prometheus::Histogram,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

impl Metrics {
    /// Registers every metric; provider series start at zero so dashboards see them.
    pub fn new(config: &Config) -> Metrics {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "keygate_requests_total",
                "Client requests answered, by status.",
            ),
            &["client", "provider", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "keygate_request_duration_seconds",
                "Time from request received to response headers sent.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        );
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "keygate_upstream_duration_seconds",
                "Time from request sent upstream to upstream response headers.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        );
        let active_requests = IntGaugeVec::new(
            Opts::new("keygate_active_requests", "Requests and streams in flight."),
            &["provider"],
        );
        let vault_reloads = IntCounterVec::new(
            Opts::new("keygate_vault_reloads_total", "Vault reloads by result."),
            &["result"],
        );
        let key_rejections = IntCounterVec::new(
            Opts::new(
                "keygate_upstream_key_rejections_total",
                "Upstream answers against a key, by key and reason (rejected, exhausted, rate_limited).",
            ),
            &["provider", "key_id", "reason"],
        );
        let fallback_retries = IntCounterVec::new(
            Opts::new(
                "keygate_fallback_retries_total",
                "Requests sent again with another key, by reason.",
            ),
            &["provider", "reason"],
        );
        let key_rotations = IntCounterVec::new(
            Opts::new("keygate_key_rotations_total", "Keys promoted to current."),
            &["provider"],
        );
        let key_age = IntGaugeVec::new(
            Opts::new(
                "keygate_key_age_seconds",
                "Age of each usable or pending key.",
            ),
            &["provider", "key_id", "state"],
        );
        let key_grace_end = IntGaugeVec::new(
            Opts::new(
                "keygate_key_grace_end_timestamp_seconds",
                "When each previous key's grace ends (unix seconds).",
            ),
            &["provider", "key_id"],
        );
        let key_healthy = IntGaugeVec::new(
            Opts::new(
                "keygate_key_healthy",
                "1 while the key is healthy, 0 while suspect or cooling.",
            ),
            &["provider", "key_id"],
        );
        let tokens_total = IntCounterVec::new(
            Opts::new(
                "keygate_tokens_total",
                "Tokens the upstream reported, by kind.",
            ),
            &["client", "provider", "model", "kind"],
        );
        let client_auth_failures = IntCounterVec::new(
            Opts::new(
                "keygate_client_auth_failures_total",
                "Requests refused for their client key (401), by reason.",
            ),
            &["reason"],
        );
        let key_mints = IntCounterVec::new(
            Opts::new(
                "keygate_key_mints_total",
                "Keys created at the provider's management API, by result.",
            ),
            &["provider", "result"],
        );
        let provider_deletes = IntCounterVec::new(
            Opts::new(
                "keygate_provider_deletes_total",
                "Keys deleted or disabled at the provider's management API, by result.",
            ),
            &["provider", "result"],
        );
        let cluster_errors = IntCounterVec::new(
            Opts::new(
                "keygate_cluster_errors_total",
                "Redis calls that failed or timed out; the replica went on alone.",
            ),
            &["op"],
        );
        // Names and label sets are constants: construction cannot fail at run time.
        #[allow(clippy::expect_used)]
        let metrics = Metrics {
            requests_total: requests_total.expect("static metric"),
            request_duration: request_duration.expect("static metric"),
            upstream_duration: upstream_duration.expect("static metric"),
            active_requests: active_requests.expect("static metric"),
            vault_reloads: vault_reloads.expect("static metric"),
            key_rejections: key_rejections.expect("static metric"),
            fallback_retries: fallback_retries.expect("static metric"),
            key_rotations: key_rotations.expect("static metric"),
            key_age: key_age.expect("static metric"),
            key_grace_end: key_grace_end.expect("static metric"),
            key_healthy: key_healthy.expect("static metric"),
            tokens_total: tokens_total.expect("static metric"),
            client_auth_failures: client_auth_failures.expect("static metric"),
            key_mints: key_mints.expect("static metric"),
            provider_deletes: provider_deletes.expect("static metric"),
            cluster_errors: cluster_errors.expect("static metric"),
            events: EventMetrics::register(&registry),
            cost: groups::cost(&registry),
            unpriced: groups::unpriced(&registry),
            outside_requests: groups::outside_requests(&registry),
            headroom: groups::headroom(&registry),
            outside_use: groups::outside_use(&registry),
            providers: Default::default(),
            registry,
        };
        for collector in [
            Box::new(metrics.requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.upstream_duration.clone()),
            Box::new(metrics.active_requests.clone()),
            Box::new(metrics.vault_reloads.clone()),
            Box::new(metrics.key_rejections.clone()),
            Box::new(metrics.fallback_retries.clone()),
            Box::new(metrics.key_rotations.clone()),
            Box::new(metrics.key_age.clone()),
            Box::new(metrics.key_grace_end.clone()),
            Box::new(metrics.key_healthy.clone()),
            Box::new(metrics.tokens_total.clone()),
            Box::new(metrics.client_auth_failures.clone()),
            Box::new(metrics.key_mints.clone()),
            Box::new(metrics.provider_deletes.clone()),
            Box::new(metrics.cluster_errors.clone()),
        ] {
            // Registering distinct names on a fresh registry cannot collide.
            let _ = metrics.registry.register(collector);
        }
        let mut metrics = metrics;
        let mut providers = std::collections::HashMap::new();
        for provider in config.providers.keys() {
            metrics.key_rotations.with_label_values(&[provider]).reset();
            if config.providers[provider].admin.is_some() {
                for result in ["ok", "failed"] {
                    metrics
                        .key_mints
                        .with_label_values(&[provider, result])
                        .reset();
                    metrics
                        .provider_deletes
                        .with_label_values(&[provider, result])
                        .reset();
                }
            }
            providers.insert(
                provider.clone(),
                ProviderMetrics {
                    name: std::sync::Arc::from(provider.as_str()),
                    active: metrics.active_requests.with_label_values(&[provider]),
                    request_duration: metrics.request_duration.with_label_values(&[provider]),
                    upstream_duration: metrics.upstream_duration.with_label_values(&[provider]),
                },
            );
        }
        metrics.providers = std::sync::Arc::new(providers);
        if config.cluster.redis_url.is_some() {
            for op in [
                "connect",
                "ping",
                "reserve",
                "settle",
                "publish",
                "subscribe",
                "lease",
            ] {
                metrics.cluster_errors.with_label_values(&[op]).reset();
            }
        }
        for result in ["ok", "error"] {
            metrics.vault_reloads.with_label_values(&[result]).reset();
        }
        for reason in crate::proxy::error::AuthFailure::REASONS {
            metrics
                .client_auth_failures
                .with_label_values(&[reason])
                .reset();
        }
        metrics
    }

    /// Refreshes the key gauges for newly built key rings and counts the
    /// rotations they bring (a key current now that was not before; `old` is
    /// `None` on the first load, which rotates nothing).
    pub fn observe_keys(
        &self,
        config: &Config,
        document: &crate::vault::document::Document,
        old: Option<&crate::keys::Rings>,
        new: &crate::keys::Rings,
        now: u64,
    ) {
        use crate::vault::document::KeyState;
        self.key_age.reset();
        self.key_grace_end.reset();
        for key in &document.keys {
            if let (KeyState::Previous, Some(until)) = (key.state, key.grace_until) {
                self.key_grace_end
                    .with_label_values(&[&key.provider, &key.id])
                    .set(i64::try_from(until).unwrap_or(i64::MAX));
            }
            if key.state.is_usable() || key.state == KeyState::Pending {
                let age = now.saturating_sub(key.created);
                self.key_age
                    .with_label_values(&[&key.provider, &key.id, key.state.as_str()])
                    .set(i64::try_from(age).unwrap_or(i64::MAX));
            }
        }
        // Every usable key keygate can check for outside use starts at 0,
        // so dashboards and alerts see the series before anything is found.
        for key in document.keys.iter().filter(|k| k.state.is_usable()) {
            let checkable = config.providers.get(&key.provider).is_some_and(|p| {
                p.admin
                    .as_ref()
                    .zip(p.kind.management())
                    .is_some_and(|(api, m)| m.key_usage(api, 0, 3600, None).is_some())
            });
            if checkable {
                self.outside_use
                    .with_label_values(&[&key.provider, &key.id])
                    .inc_by(0);
            }
        }
        self.key_healthy.reset();
        let now_ms = crate::keys::health::now_ms();
        for provider in config.providers.keys() {
            let Some(ring) = new.get(provider) else {
                continue;
            };
            let before = old.and_then(|old| old.get(provider));
            for key in ring.keys() {
                self.key_healthy
                    .with_label_values(&[provider.as_str(), &*key.id])
                    .set(key.health.healthy_gauge(now_ms));
                let was_current = before.is_some_and(|r| {
                    r.keys()
                        .iter()
                        .any(|k| k.id == key.id && k.state == KeyState::Current)
                });
                if old.is_some() && key.state == KeyState::Current && !was_current {
                    self.key_rotations.with_label_values(&[provider]).inc();
                }
            }
        }
    }

    /// The series of `provider` (every configured provider has them).
    pub fn provider(&self, provider: &str) -> ProviderMetrics {
        match self.providers.get(provider) {
            Some(series) => series.clone(),
            None => ProviderMetrics {
                name: std::sync::Arc::from(provider),
                active: self.active_requests.with_label_values(&[provider]),
                request_duration: self.request_duration.with_label_values(&[provider]),
                upstream_duration: self.upstream_duration.with_label_values(&[provider]),
            },
        }
    }

    /// The series of one usage key: `keygate_tokens_total` by kind,
    /// its cost, and `keygate_requests_total{status="200"}`, resolved once
    /// per key, with the model's `price`.
    pub fn usage_series(
        &self,
        key: &crate::usage::meter::UsageKey,
        price: Option<crate::usage::prices::Price>,
    ) -> crate::usage::meter::UsageMetrics {
        let (client, provider, model) = (&*key.client, &*key.provider, &*key.model);
        crate::usage::meter::UsageMetrics {
            tokens: crate::usage::meter::TokenMetrics {
                price,
                cost: self.cost.with_label_values(&[client, provider, model]),
                unpriced: self.unpriced.with_label_values(&[provider, model]),
                prompt: self
                    .tokens_total
                    .with_label_values(&[client, provider, model, "prompt"]),
                completion: self.tokens_total.with_label_values(&[
                    client,
                    provider,
                    model,
                    "completion",
                ]),
            },
            answered_ok: self
                .requests_total
                .with_label_values(&[client, provider, "200"]),
        }
    }

    /// Each key's headroom as the provider last said it (§17), read from
    /// the rings when scraped rather than written on every answer.
    pub fn observe_headroom(&self, rings: &crate::keys::Rings, now_ms: u64) {
        self.headroom.reset();
        for (provider, ring) in rings {
            for key in ring.keys() {
                let room = &key.health.headroom;
                for (what, left) in [
                    ("requests", room.requests(now_ms)),
                    ("tokens", room.tokens(now_ms)),
                ] {
                    if let Some(left) = left {
                        self.headroom
                            .with_label_values(&[provider.as_str(), &key.id, what])
                            .set(i64::try_from(left).unwrap_or(i64::MAX));
                    }
                }
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counts one request in `keygate_active_requests` from creation to drop, so a
/// request is counted until its response stream ends or the client leaves.
pub struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
