//! What a ledger query answers with, from either backend: one
//! [`UsageRow`] per client, provider and model.

/// Totals of one client, provider and model over a period.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UsageRow {
    /// Client name.
    pub client: String,
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Errors (status ≥ 400 or cut short).
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens, as the upstream reported them.
    pub total_tokens: u64,
    /// Answers that reported no usage and were charged by estimate.
    pub estimated_requests: u64,
    /// Tokens charged by estimate (not in the counts above; a budget counts both).
    pub estimated_tokens: u64,
    /// What the answers cost, in micro-dollars (estimated charges included).
    pub cost_micros: u64,
    /// The same in US dollars (from `cost_micros`).
    pub cost_usd: f64,
    /// Answers whose model no price row covers (cost 0).
    pub unpriced_requests: u64,
}

impl UsageRow {
    /// Sets the cost, in micro-dollars and in dollars.
    pub fn with_cost(mut self, micros: u64) -> UsageRow {
        self.cost_micros = micros;
        self.cost_usd = micros as f64 / 1e6;
        self
    }
}

/// What one client spent: in all (`hour` 0), or in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpend {
    /// Client name.
    pub client: String,
    /// The hour (unix seconds / 3600), or 0 for all time.
    pub hour: u64,
    /// Tokens, reported and estimated.
    pub tokens: u64,
    /// Micro-dollars.
    pub micros: u64,
    /// When the last of it was written (ms since the epoch; 0: before the
    /// ledger kept it).
    pub last_ms: u64,
}

/// What keygate sent with one upstream key over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsageRow {
    /// Provider name.
    pub provider: String,
    /// keygate's key id.
    pub key_id: String,
    /// Answers sent with it.
    pub requests: u64,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Of them, cached.
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Micro-dollars.
    pub cost_micros: u64,
}
