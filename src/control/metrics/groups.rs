//! The series added after the first release, each registered where it is
//! made (`registered`): the events room's, and those of money and outside
//! use. Their names are in docs/design.md §8 with the others.

use prometheus::{CounterVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// `metric` (built from constants: it cannot fail at run time), registered.
#[allow(clippy::expect_used)]
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("static metric");
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

/// `keygate_cost_dollars_total{client,provider,model}`.
pub(super) fn cost(registry: &Registry) -> CounterVec {
    let opts = Opts::new(
        "keygate_cost_dollars_total",
        "What answers cost in US dollars, by the price table (docs/design.md §14).",
    );
    registered(
        registry,
        CounterVec::new(opts, &["client", "provider", "model"]),
    )
}

/// `keygate_unpriced_requests_total{provider,model}`.
pub(super) fn unpriced(registry: &Registry) -> IntCounterVec {
    let opts = Opts::new(
        "keygate_unpriced_requests_total",
        "Answers with usage whose model no price row covers (cost 0).",
    );
    registered(registry, IntCounterVec::new(opts, &["provider", "model"]))
}

/// `keygate_key_outside_requests{provider,key_id}`.
pub(super) fn outside_requests(registry: &Registry) -> IntGaugeVec {
    let opts = Opts::new(
        "keygate_key_outside_requests",
        "Requests the provider counted for a key beyond what keygate sent, in the last comparison (docs/design.md §16).",
    );
    registered(registry, IntGaugeVec::new(opts, &["provider", "key_id"]))
}

/// `keygate_key_headroom{provider,key_id,what}`.
pub(super) fn headroom(registry: &Registry) -> IntGaugeVec {
    let opts = Opts::new(
        "keygate_key_headroom",
        "What the provider last said is left of a key's rate limit in its window, what=\"requests\"|\"tokens\"; absent when it said nothing (docs/design.md §17).",
    );
    registered(
        registry,
        IntGaugeVec::new(opts, &["provider", "key_id", "what"]),
    )
}

/// `keygate_key_outside_use_total{provider,key_id}`.
pub(super) fn outside_use(registry: &Registry) -> IntCounterVec {
    let opts = Opts::new(
        "keygate_key_outside_use_total",
        "Outside use of a key found: the provider reports more than keygate sent.",
    );
    registered(registry, IntCounterVec::new(opts, &["provider", "key_id"]))
}

/// The events room's series (docs/events.md).
#[derive(Clone)]
pub struct EventMetrics {
    /// `keygate_events_total{type}`: events raised by this process.
    pub raised: IntCounterVec,
    /// `keygate_events_dropped_total`: events lost because the outbox could
    /// not be written for longer than the queue holds.
    pub dropped: IntCounter,
    /// `keygate_notify_deliveries_total{result}`: `delivered`, `failed`
    /// (to be tried again), `given_up`.
    pub deliveries: IntCounterVec,
    /// `keygate_notify_outbox_depth`: deliveries pending in the outbox.
    pub outbox_depth: IntGauge,
    /// `keygate_decoy_uses_total{client}`: requests that presented a decoy key.
    pub decoy_uses: IntCounterVec,
}

impl EventMetrics {
    pub(super) fn register(registry: &Registry) -> EventMetrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let deliveries = counter_vec(
            "keygate_notify_deliveries_total",
            "Event deliveries to [[notify]] receivers, by result (delivered, failed and to be retried, given_up).",
            &["result"],
        );
        for result in ["delivered", "failed", "given_up"] {
            deliveries.with_label_values(&[result]).reset();
        }
        EventMetrics {
            raised: counter_vec(
                "keygate_events_total",
                "Events raised by this process, by type.",
                &["type"],
            ),
            dropped: registered(
                registry,
                IntCounter::new(
                    "keygate_events_dropped_total",
                    "Events lost because the outbox could not be written for longer than the queue holds.",
                ),
            ),
            deliveries,
            outbox_depth: registered(
                registry,
                IntGauge::new(
                    "keygate_notify_outbox_depth",
                    "Event deliveries pending in the outbox (every receiver).",
                ),
            ),
            decoy_uses: counter_vec(
                "keygate_decoy_uses_total",
                "Requests that presented a decoy client key, by decoy.",
                &["client"],
            ),
        }
    }
}
