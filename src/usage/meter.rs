//! Metering: per client, provider and model — requests, errors, tokens, bytes.
//!
//! The request path only adds to atomics ([`UsageCounters`], found once per
//! request in a `DashMap`); the [`super::tap`] reads usage out of responses as they
//! stream past; the [`super::ledger`] task drains the counters to SQLite every
//! `flush_interval` and on shutdown. Labels are names and ids, never secrets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::UsageMap;

/// The longest model name usage is kept under, in bytes.
pub const MAX_MODEL_LABEL: usize = 256;

/// The name usage of `model` is kept under — in counters, `/metrics`, the
/// ledger and `keygate usage` — bounded and printable: at most
/// [`MAX_MODEL_LABEL`] bytes (cut at a character), each control character
/// (NUL, a terminal escape, a newline) shown as `?`. The client chooses the
/// model: a name of a megabyte, or one that a database or a terminal reads
/// as something else, must cost nothing and mean nothing.
pub fn model_label(model: &str) -> Arc<str> {
    let clean = |c: char| !c.is_control();
    if model.len() <= MAX_MODEL_LABEL && model.chars().all(clean) {
        return Arc::from(model);
    }
    let mut label = String::with_capacity(model.len().min(MAX_MODEL_LABEL));
    for c in model.chars() {
        let c = if clean(c) { c } else { '?' };
        if label.len() + c.len_utf8() > MAX_MODEL_LABEL {
            break;
        }
        label.push(c);
    }
    Arc::from(label)
}

/// What usage is aggregated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// Client name.
    pub client: Arc<str>,
    /// Provider name.
    pub provider: Arc<str>,
    /// Model from the request body (`-` when none).
    pub model: Arc<str>,
}

/// Live counters of one [`UsageKey`], drained by the ledger.
#[derive(Debug, Default)]
pub struct UsageCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    incomplete: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    total_tokens: AtomicU64,
    estimated: AtomicU64,
    estimated_tokens: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    cost_micros: AtomicU64,
    unpriced: AtomicU64,
}

/// A drained snapshot of [`UsageCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    /// Requests answered.
    pub requests: u64,
    /// Answers with status ≥ 400, or streams cut short.
    pub errors: u64,
    /// Streams cut short (metered with what was seen).
    pub incomplete: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Answers that reported no usage, charged by their admission estimate.
    pub estimated: u64,
    /// The tokens so charged (not in the counts above).
    pub estimated_tokens: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// What the answers cost, in micro-dollars (estimated charges included).
    pub cost_micros: u64,
    /// Answers with usage whose model has no price row.
    pub unpriced: u64,
}

impl UsageDelta {
    /// True when nothing happened.
    pub fn is_empty(&self) -> bool {
        *self == UsageDelta::default()
    }
}

/// One finished request, as the meter records it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Status ≥ 400.
    pub error: bool,
    /// The response stream ended early.
    pub incomplete: bool,
    /// Tokens the upstream reported.
    pub usage: Option<super::shapes::Usage>,
    /// Tokens charged by estimate, when the answer reported none.
    pub estimated_tokens: Option<u64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// What it cost, in micro-dollars.
    pub cost_micros: u64,
    /// It reported usage, and no price row covers its model.
    pub unpriced: bool,
}

impl UsageCounters {
    /// Adds one finished request.
    pub fn record(&self, outcome: &Outcome) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.requests, 1);
        add(&self.errors, u64::from(outcome.error || outcome.incomplete));
        add(&self.incomplete, u64::from(outcome.incomplete));
        if let Some(usage) = outcome.usage {
            add(&self.prompt_tokens, usage.prompt);
            add(&self.completion_tokens, usage.completion);
            add(&self.total_tokens, usage.total);
        }
        if let Some(tokens) = outcome.estimated_tokens {
            add(&self.estimated, 1);
            add(&self.estimated_tokens, tokens);
        }
        add(&self.request_bytes, outcome.request_bytes);
        add(&self.response_bytes, outcome.response_bytes);
        add(&self.cost_micros, outcome.cost_micros);
        add(&self.unpriced, u64::from(outcome.unpriced));
    }

    /// Takes everything counted so far, leaving zeros.
    pub fn drain(&self) -> UsageDelta {
        let take = |counter: &AtomicU64| counter.swap(0, Ordering::Relaxed);
        UsageDelta {
            requests: take(&self.requests),
            errors: take(&self.errors),
            incomplete: take(&self.incomplete),
            prompt_tokens: take(&self.prompt_tokens),
            completion_tokens: take(&self.completion_tokens),
            total_tokens: take(&self.total_tokens),
            estimated: take(&self.estimated),
            estimated_tokens: take(&self.estimated_tokens),
            request_bytes: take(&self.request_bytes),
            response_bytes: take(&self.response_bytes),
            cost_micros: take(&self.cost_micros),
            unpriced: take(&self.unpriced),
        }
    }
}

/// What an answer's usage is counted in and priced by, resolved once per
/// usage key: token and cost series in Prometheus, and the model's price.
#[derive(Clone)]
pub struct TokenMetrics {
    /// `keygate_tokens_total{…,kind="prompt"}`.
    pub prompt: prometheus::IntCounter,
    /// `keygate_tokens_total{…,kind="completion"}`.
    pub completion: prometheus::IntCounter,
    /// The model's price (`None`: no row prices it).
    pub price: Option<super::prices::Price>,
    /// `keygate_cost_dollars_total{client,provider,model}`.
    pub cost: prometheus::Counter,
    /// `keygate_unpriced_requests_total{provider,model}`.
    pub unpriced: prometheus::IntCounter,
}

impl TokenMetrics {
    /// Series on no registry, for benchmarks and tests of the tap.
    // Static names: construction cannot fail.
    #[allow(clippy::expect_used)]
    pub fn detached(price: Option<super::prices::Price>) -> TokenMetrics {
        let counter = |name: &str| prometheus::IntCounter::new(name, name).expect("static metric");
        TokenMetrics {
            prompt: counter("prompt"),
            completion: counter("completion"),
            price,
            cost: prometheus::Counter::new("cost", "cost").expect("static metric"),
            unpriced: counter("unpriced"),
        }
    }
}

/// The Prometheus series of one usage key.
#[derive(Clone)]
pub struct UsageMetrics {
    /// `keygate_tokens_total{client,provider,model,kind}`.
    pub tokens: TokenMetrics,
    /// `keygate_requests_total{client,provider,status="200"}`, the common answer.
    pub answered_ok: prometheus::IntCounter,
}

/// Everything a request touches for its usage key, found with one lookup:
/// the ledger's counters and the metric series (no label lookups per request).
#[derive(Clone)]
pub struct UsageSeries {
    /// Drained by the ledger.
    pub counters: Arc<UsageCounters>,
    /// Its Prometheus series.
    pub metrics: UsageMetrics,
}

/// How many usage keys (client × provider × model) the meter tracks before
/// new models are counted as [`OTHER_MODEL`]: the model comes from the request
/// body, so without a bound one client sending random model names would grow
/// memory, the ledger and the `/metrics` page without end
/// (`[metering] max_series`).
pub const MAX_USAGE_KEYS: usize = 10_000;

/// How many usage keys one client gets before its new models are counted as
/// [`OTHER_MODEL`] (`[metering] max_series_per_client`): so one client's
/// made-up model names fill its own `(other)`, not the whole
/// [`MAX_USAGE_KEYS`], and another client's real model keeps its name.
pub const MAX_USAGE_KEYS_PER_CLIENT: usize = 100;

/// The model label of usage past [`MAX_USAGE_KEYS`].
pub const OTHER_MODEL: &str = "(other)";

/// The process's usage counters.
pub struct Meter {
    series: UsageMap<UsageKey, UsageSeries>,
    /// How many keys of `series` each client has (only touched when a key
    /// is created, never on the hot path).
    per_client: UsageMap<Arc<str>, usize>,
    max_keys: usize,
    max_keys_per_client: usize,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::with_max_keys(MAX_USAGE_KEYS, MAX_USAGE_KEYS_PER_CLIENT)
    }
}

impl Meter {
    /// A meter that tracks at most `max_keys` usage keys, and at most
    /// `max_keys_per_client` of one client (then [`OTHER_MODEL`]).
    pub fn with_max_keys(max_keys: usize, max_keys_per_client: usize) -> Self {
        Meter {
            series: UsageMap::default(),
            per_client: UsageMap::default(),
            max_keys,
            max_keys_per_client,
        }
    }

    /// The series of `key`, created on first use (`metrics` resolves them).
    /// A known key is one read of the map; only a new one looks further.
    pub fn series(
        &self,
        mut key: UsageKey,
        metrics: impl FnOnce(&UsageKey) -> UsageMetrics,
    ) -> UsageSeries {
        if let Some(existing) = self.series.get(&key) {
            return existing.clone();
        }
        let clients_keys = self.per_client.get(&key.client).map_or(0, |n| *n);
        if self.series.len() >= self.max_keys || clients_keys >= self.max_keys_per_client {
            key.model = Arc::from(OTHER_MODEL);
            if let Some(existing) = self.series.get(&key) {
                return existing.clone();
            }
        }
        let metrics = metrics(&key);
        let client = key.client.clone();
        match self.series.entry(key) {
            dashmap::mapref::entry::Entry::Occupied(known) => known.get().clone(),
            dashmap::mapref::entry::Entry::Vacant(new) => {
                // Counted while the new key's shard is held, so two requests
                // racing to create the same key count it once. (Racing
                // creators of different keys may pass the cap by the number
                // of requests in flight: a bound, not an exact count.)
                *self.per_client.entry(client).or_insert(0) += 1;
                new.insert(UsageSeries {
                    counters: Arc::default(),
                    metrics,
                })
                .clone()
            }
        }
    }

    /// Drains every key's counters; only keys with activity are returned.
    pub fn drain(&self) -> Vec<(UsageKey, UsageDelta)> {
        self.series
            .iter()
            .filter_map(|entry| {
                let delta = entry.value().counters.drain();
                (!delta.is_empty()).then(|| (entry.key().clone(), delta))
            })
            .collect()
    }
}

/// With `stream_usage = true`: a streaming request body (`"stream": true`)
/// that does not already ask for usage, rewritten to ask for it
/// (`stream_options.include_usage = true`). `None` when nothing changes.
/// `fields`: the body's fields from [`crate::json_skim::chat_fields`], read
/// as the upstream reads them (repeated keys: the last wins; escaped keys
/// decoded), which settle most bodies (most streams already ask, most bodies
/// are no stream).
///
/// The rewrite keeps the client's bytes, on the skim's fast path and on
/// serde's slow path alike: the option is spliced in, and everything else
/// (field order, spacing, escapes, leading whitespace) goes up as the client
/// wrote it. Duplicate keys are read as serde_json reads them, and the last
/// one is the one changed.
pub fn ask_for_usage(
    body: &[u8],
    fields: &crate::json_skim::ChatFields<'_>,
) -> Option<bytes::Bytes> {
    use crate::json_skim::members;

    let streams = fields
        .stream
        .and_then(|v| serde_json::from_slice::<bool>(v).ok())
        == Some(true);
    // A repeated `include_usage` fails this typed read; `members` below
    // then finds the last one.
    let already_asks = fields
        .stream_options
        .and_then(|v| serde_json::from_slice::<StreamOptions>(v).ok())
        .is_some_and(|options| options.include_usage == Some(true));
    if !streams || already_asks {
        return None;
    }
    // Only well-formed JSON is rewritten (and `members` may then skip values
    // unchecked); a broken body goes up as sent, for the upstream to refuse.
    if !fields.checked {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    }
    let top = members(body, fields.open, [b"stream", b"stream_options"])?;
    let [stream, options] = top.values;
    if serde_json::from_slice::<bool>(&body[stream?]).ok() != Some(true) {
        return None;
    }
    let splice = |at: std::ops::Range<usize>, text: &[u8]| {
        let mut out = Vec::with_capacity(body.len() + text.len());
        out.extend_from_slice(&body[..at.start]);
        out.extend_from_slice(text);
        out.extend_from_slice(&body[at.end..]);
        Some(bytes::Bytes::from(out))
    };
    let Some(options) = options else {
        let end = top.last_value_end?;
        return splice(end..end, br#","stream_options":{"include_usage":true}"#);
    };
    // `null` is how a client says "no options" (OpenAI reads it as absent,
    // and then sends no usage): it becomes the options keygate needs.
    if body[options.clone()] == *b"null" {
        return splice(options, br#"{"include_usage":true}"#);
    }
    // Other options that are not an object are left alone, for the upstream to judge.
    let inner = members(body, options.start, [b"include_usage"])?;
    let [include_usage] = inner.values;
    match include_usage {
        Some(value) if serde_json::from_slice::<bool>(&body[value.clone()]).ok() == Some(true) => {
            None
        }
        Some(value) => splice(value, b"true"),
        None => match inner.last_value_end {
            Some(end) => splice(end..end, br#","include_usage":true"#),
            None => splice(
                options.start + 1..options.start + 1,
                br#""include_usage":true"#,
            ),
        },
    }
}

/// The part of `stream_options` [`ask_for_usage`] reads.
#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ask_for_usage as the conductor calls it: skim first.
    fn ask_for_usage(body: &[u8]) -> Option<bytes::Bytes> {
        let fields = crate::json_skim::chat_fields(body)?;
        let through_skim = super::ask_for_usage(body, &fields);
        // Without the skim, serde's slow path alone must agree.
        let parsed = crate::json_skim::parsed_fields(body);
        assert_eq!(
            through_skim,
            parsed.and_then(|fields| super::ask_for_usage(body, &fields))
        );
        through_skim
    }

    #[test]
    fn only_streams_without_include_usage_are_rewritten() {
        // Plain bodies are settled by the skim, not handed on.
        assert!(crate::json_skim::skim(br#"{"model":"m","stream":true}"#).is_some());
        let rewritten = ask_for_usage(br#"{"model":"m","stream":true}"#).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert!(
            ask_for_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none()
        );
        assert!(ask_for_usage(br#"{"stream":false}"#).is_none());
        assert!(ask_for_usage(b"not json").is_none());
    }

    #[test]
    fn what_the_skim_cannot_settle_goes_to_the_full_parse() {
        let asks = |body: &[u8]| {
            let rewritten = ask_for_usage(body)?;
            let json: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
            Some(json["stream_options"]["include_usage"] == true)
        };
        // Duplicate keys: the skim leaves them to the full parse; the last one wins.
        assert_eq!(asks(br#"{"stream":false,"stream":true}"#), Some(true));
        assert_eq!(asks(br#"{"stream":true,"stream":false}"#), None);
        // include_usage false or absent, other options kept.
        assert_eq!(
            asks(br#"{"stream":true,"stream_options":{"include_usage":false}}"#),
            Some(true)
        );
        let kept =
            ask_for_usage(br#"{"stream":true,"stream_options":{"x":1},"model":"m"}"#).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(json["stream_options"]["x"], 1);
        assert_eq!(json["model"], "m");
        // `null` options are no options (OpenAI reads them so): asked for.
        assert_eq!(
            asks(br#"{"stream":true,"stream_options":null}"#),
            Some(true)
        );
        assert_eq!(
            asks(br#"{"stream":true,"stream_options" : null ,"model":"m"}"#),
            Some(true)
        );
        // Other options that are not an object are left alone.
        assert_eq!(asks(br#"{"stream":true,"stream_options":[]}"#), None);
        assert_eq!(asks(br#"{"stream":"true"}"#), None);
    }

    /// The rewrite is the client's body with only the option added: every
    /// other byte (order, spacing, escapes, unicode) as the client sent it.
    #[test]
    fn the_rewrite_splices_the_option_into_the_clients_bytes() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"model":"m","stream":true}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            // Whitespace and newlines kept; the option goes after the last member.
            (
                "{\n  \"stream\" : true ,\n  \"model\": \"m\"\n}\n",
                "{\n  \"stream\" : true ,\n  \"model\": \"m\",\"stream_options\":{\"include_usage\":true}\n}\n",
            ),
            // Nested objects, arrays, escapes and unicode are not touched (nor reordered).
            (
                r#"{"z":1,"messages":[{"role":"user","content":"h\u00e9 \"}\" 日本語 🎉","stream":false}],"stream":true,"a":{"b":[{}]}}"#,
                r#"{"z":1,"messages":[{"role":"user","content":"h\u00e9 \"}\" 日本語 🎉","stream":false}],"stream":true,"a":{"b":[{}]},"stream_options":{"include_usage":true}}"#,
            ),
            // Existing options with other fields: include_usage added inside.
            (
                r#"{"stream":true,"stream_options":{"x":1, "y" : [2]},"model":"m"}"#,
                r#"{"stream":true,"stream_options":{"x":1, "y" : [2],"include_usage":true},"model":"m"}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{ }}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true }}"#,
            ),
            // include_usage false or null: only that value changes.
            (
                r#"{"stream_options":{"include_usage": false ,"x":1},"stream":true}"#,
                r#"{"stream_options":{"include_usage": true ,"x":1},"stream":true}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":null}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            // Duplicate keys: the last one decides and is the one changed.
            (
                r#"{"stream":false,"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#,
                r#"{"stream":false,"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":null}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            ),
            // Whitespace around the object (the skim judges it) is kept.
            (
                " {\"model\":\"m\",\"stream\":true}\n",
                " {\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
            ),
            // An escaped key (the slow path) is the same key.
            (
                r#"{"model":"m","str\u0065am":true}"#,
                r#"{"model":"m","str\u0065am":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_\u006fptions":{"x":1}}"#,
                r#"{"stream":true,"stream_\u006fptions":{"x":1,"include_usage":true}}"#,
            ),
        ];
        for (sent, want) in cases {
            let got =
                ask_for_usage(sent.as_bytes()).unwrap_or_else(|| panic!("not rewritten: {sent}"));
            assert_eq!(std::str::from_utf8(&got).unwrap(), *want, "from {sent}");
            // And what goes up parses to what the client sent plus the option.
            let mut sent_json: serde_json::Value = serde_json::from_str(sent).unwrap();
            let got_json: serde_json::Value = serde_json::from_slice(&got).unwrap();
            let options = sent_json
                .as_object_mut()
                .unwrap()
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            options["include_usage"] = true.into();
            assert_eq!(got_json, sent_json, "from {sent}");
        }
        // Nothing to change, or not JSON: nothing rewritten.
        for sent in [
            r#"{"stream":true,"stream":false}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":[1]}"#,
            r#"{"stream":true,"x":}"#,
            r#"{"stream":true} x"#,
        ] {
            assert!(ask_for_usage(sent.as_bytes()).is_none(), "{sent}");
        }
    }

    #[test]
    fn model_labels_are_bounded_and_printable() {
        assert_eq!(&*model_label("gpt-4o"), "gpt-4o");
        assert_eq!(&*model_label("gpt\u{0}x"), "gpt?x");
        assert_eq!(&*model_label("a\u{1b}[31mred\n"), "a?[31mred?");
        let long = "é".repeat(1000);
        let label = model_label(&long);
        assert!(label.len() <= MAX_MODEL_LABEL && label.chars().all(|c| c == 'é'));
    }

    fn test_metrics(_: &UsageKey) -> UsageMetrics {
        UsageMetrics {
            tokens: TokenMetrics::detached(None),
            answered_ok: prometheus::IntCounter::new("r", "r").unwrap(),
        }
    }

    #[test]
    fn models_past_the_key_limit_are_counted_as_other() {
        let meter = Meter::with_max_keys(3, 100);
        let key = |model: &str| UsageKey {
            client: "a".into(),
            provider: "p".into(),
            model: model.into(),
        };
        for n in 0..50 {
            meter
                .series(key(&format!("random-{n}")), test_metrics)
                .counters
                .record(&Outcome::default());
        }
        // Known keys keep their own counters.
        meter
            .series(key("random-1"), test_metrics)
            .counters
            .record(&Outcome::default());
        let mut drained = meter.drain();
        drained.sort_by_key(|(k, _)| k.model.to_string());
        let models: Vec<(String, u64)> = drained
            .iter()
            .map(|(k, d)| (k.model.to_string(), d.requests))
            .collect();
        assert_eq!(
            models,
            [
                ("(other)".to_string(), 47),
                ("random-0".to_string(), 1),
                ("random-1".to_string(), 2),
                ("random-2".to_string(), 1)
            ]
        );
    }

    #[test]
    fn one_clients_made_up_models_fill_only_its_own_other() {
        let meter = Meter::with_max_keys(10, 3);
        let key = |client: &str, model: &str| UsageKey {
            client: client.into(),
            provider: "p".into(),
            model: model.into(),
        };
        let model_of = |client: &str, model: &str| {
            let series = meter.series(key(client, model), test_metrics);
            series.counters.record(&Outcome::default());
            meter
                .series
                .iter()
                .find(|e| Arc::ptr_eq(&e.value().counters, &series.counters))
                .map(|e| e.key().model.to_string())
                .unwrap()
        };
        for n in 0..50 {
            model_of("junk", &format!("made-up-{n}"));
        }
        assert_eq!(model_of("junk", "made-up-51"), OTHER_MODEL);
        assert_eq!(model_of("junk", "made-up-1"), "made-up-1");
        assert_eq!(model_of("app", "gpt-4o"), "gpt-4o");
        assert_eq!(model_of("app", "gpt-4o-mini"), "gpt-4o-mini");
        // junk: 3 models + (other); app: 2.
        assert_eq!(meter.series.len(), 6);
    }

    #[test]
    fn counters_drain_to_zero() {
        let meter = Meter::default();
        let key = UsageKey {
            client: "a".into(),
            provider: "p".into(),
            model: "m".into(),
        };
        meter
            .series(key.clone(), test_metrics)
            .counters
            .record(&Outcome {
                usage: Some(crate::usage::shapes::Usage::new(1, 2, 3)),
                ..Outcome::default()
            });
        let drained = meter.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].1.total_tokens, 3);
        assert!(meter.drain().is_empty());
    }
}
