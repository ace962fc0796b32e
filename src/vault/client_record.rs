//! A client as the vault keeps it: its name, the SHA-256 of its `kg_` key,
//! its limits (the one definition of them), its dates and, during a
//! rotation, its previous key — and the file's inline form of all that.

use serde::{Deserialize, Serialize};

/// A client's limits: the one definition the vault record, the snapshot,
/// admission (here and across the cluster), the CLI, the admin API and the
/// status page all use. Stored in the client's record under these names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Tokens per budget period (ever, without a period).
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    /// Micro-dollars per budget period (ever, without a period).
    #[serde(default)]
    pub budget_usd_micros: Option<u64>,
    /// The period both budgets start over at; `None`: the client's lifetime.
    #[serde(default)]
    pub budget_period: Option<BudgetPeriod>,
}

/// When a budget starts over: windows aligned to the Unix epoch (so `1d`
/// starts at 00:00 UTC), or calendar months in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BudgetPeriod {
    /// A window of this many seconds (`0` in a change: no period any more).
    Seconds(u64),
    /// A calendar month, from the 1st at 00:00 UTC.
    Month,
}

impl BudgetPeriod {
    /// The period `text` names: a duration of whole seconds (`30s`, `1h`,
    /// `1d`, `7d`, at most ten years), `1mo`, or `lifetime` / `0` (none).
    pub fn parse(text: &str) -> Result<BudgetPeriod, String> {
        let text = text.trim();
        match text {
            "1mo" | "month" => return Ok(BudgetPeriod::Month),
            "0" | "lifetime" => return Ok(BudgetPeriod::Seconds(0)),
            _ => {}
        }
        let duration = humantime::parse_duration(text).map_err(|_| {
            format!("`{text}` is not a budget period: write a duration (30s, 1h, 1d, 7d), 1mo (a calendar month) or lifetime")
        })?;
        if duration.subsec_nanos() != 0
            || duration.as_secs() == 0
            || duration.as_secs() > 3650 * 86_400
        {
            return Err(format!(
                "`{text}`: a budget period is whole seconds, from 1s to 3650d"
            ));
        }
        Ok(BudgetPeriod::Seconds(duration.as_secs()))
    }

    /// The first second of the window holding `now` (Unix seconds).
    pub fn window_start(self, now: u64) -> u64 {
        match self {
            BudgetPeriod::Seconds(0) => 0,
            BudgetPeriod::Seconds(length) => now - now % length,
            BudgetPeriod::Month => crate::calendar::month_start(now),
        }
    }

    /// The first second of the next window.
    pub fn window_end(self, now: u64) -> u64 {
        match self {
            BudgetPeriod::Seconds(0) => u64::MAX,
            BudgetPeriod::Seconds(length) => self.window_start(now).saturating_add(length),
            BudgetPeriod::Month => crate::calendar::next_month_start(now),
        }
    }
}

impl std::fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetPeriod::Month => f.write_str("1mo"),
            BudgetPeriod::Seconds(0) => f.write_str("lifetime"),
            BudgetPeriod::Seconds(s) if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            BudgetPeriod::Seconds(s) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            BudgetPeriod::Seconds(s) if s % 60 == 0 => write!(f, "{}m", s / 60),
            BudgetPeriod::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

impl TryFrom<String> for BudgetPeriod {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        BudgetPeriod::parse(&text)
    }
}

impl From<BudgetPeriod> for String {
    fn from(period: BudgetPeriod) -> String {
        period.to_string()
    }
}

impl ClientLimits {
    /// True when any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.budget_tokens.is_some()
            || self.budget_usd_micros.is_some()
    }

    /// These limits with each one `change` sets put in their place (`0`
    /// removes that limit, a period of `0` the period); the others kept.
    pub fn changed_by(self, change: ClientLimits) -> ClientLimits {
        let set = |now: Option<u64>, new: Option<u64>| match new {
            Some(0) => None,
            Some(n) => Some(n),
            None => now,
        };
        ClientLimits {
            rpm: match change.rpm {
                Some(0) => None,
                Some(n) => Some(n),
                None => self.rpm,
            },
            tpm: set(self.tpm, change.tpm),
            budget_tokens: set(self.budget_tokens, change.budget_tokens),
            budget_usd_micros: set(self.budget_usd_micros, change.budget_usd_micros),
            budget_period: match change.budget_period {
                Some(BudgetPeriod::Seconds(0)) => None,
                Some(period) => Some(period),
                None => self.budget_period,
            },
        }
    }

    /// `rpm 60, tpm unlimited, budget 10000 tokens, $50.00 per 1mo`, for the operator.
    pub fn describe(&self) -> String {
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        let mut text = format!(
            "rpm {}, tpm {}, budget {}",
            show(self.rpm.map(u64::from)),
            show(self.tpm),
            show(self.budget_tokens)
        );
        if let Some(micros) = self.budget_usd_micros {
            text.push_str(&format!(" tokens, ${}", dollars(micros)));
        }
        if let Some(period) = self.budget_period {
            text.push_str(&format!(" per {period}"));
        }
        text
    }
}

/// Micro-dollars as `12.345678`, trailing zeros after the cents cut.
pub fn dollars(micros: u64) -> String {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let trimmed = text.trim_end_matches('0');
    match trimmed.len() - trimmed.find('.').unwrap_or(0) {
        1 => format!("{trimmed}00"),
        2 => format!("{trimmed}0"),
        _ => trimmed.to_owned(),
    }
}

/// One issued client key (only its SHA-256 is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "StoredClient", into = "StoredClient")]
pub struct ClientRecord {
    /// Unique client name; appears in logs and metrics.
    pub name: String,
    /// Hex SHA-256 of the full `kg_…` key.
    pub key_sha256: String,
    /// Its limits (none: unlimited).
    pub limits: ClientLimits,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of revocation.
    pub revoked: Option<u64>,
    /// After `client rotate`: the previous key, valid until its grace ends.
    pub old_key: Option<OldClientKey>,
    /// A decoy (`client add --decoy`): its key is never valid; presenting it
    /// is refused as an unknown key would be, and raises `decoy_used`.
    pub decoy: bool,
}

/// A client record as the vault file holds it: the limits inline, unknown
/// fields refused, `old_key` absent unless set (so older readers still open
/// the file).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredClient {
    name: String,
    key_sha256: String,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget_usd_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget_period: Option<BudgetPeriod>,
    created: u64,
    #[serde(default)]
    revoked: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old_key: Option<OldClientKey>,
    /// Absent (not a decoy) in vaults written before decoys, and left out for
    /// real clients so older readers still open the file.
    #[serde(default, skip_serializing_if = "is_false")]
    decoy: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl From<StoredClient> for ClientRecord {
    fn from(s: StoredClient) -> Self {
        ClientRecord {
            name: s.name,
            key_sha256: s.key_sha256,
            limits: ClientLimits {
                rpm: s.rpm,
                tpm: s.tpm,
                budget_tokens: s.budget_tokens,
                budget_usd_micros: s.budget_usd_micros,
                budget_period: s.budget_period,
            },
            created: s.created,
            revoked: s.revoked,
            old_key: s.old_key,
            decoy: s.decoy,
        }
    }
}

impl From<ClientRecord> for StoredClient {
    fn from(c: ClientRecord) -> Self {
        StoredClient {
            name: c.name,
            key_sha256: c.key_sha256,
            rpm: c.limits.rpm,
            tpm: c.limits.tpm,
            budget_tokens: c.limits.budget_tokens,
            budget_usd_micros: c.limits.budget_usd_micros,
            budget_period: c.limits.budget_period,
            created: c.created,
            revoked: c.revoked,
            old_key: c.old_key,
            decoy: c.decoy,
        }
    }
}

/// A client's previous key during a `client rotate` grace period.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldClientKey {
    /// Hex SHA-256 of the old `kg_…` key.
    pub key_sha256: String,
    /// Unix seconds; from then on the old key is refused as revoked.
    pub valid_until: u64,
}

impl ClientRecord {
    /// Revokes the client from `now` (unix seconds): its key, and a rotated
    /// client's old key, are refused as revoked from the next snapshot on.
    pub fn revoke(&mut self, now: u64) {
        self.revoked = Some(now);
    }

    /// What `client list --json` and `GET /admin/clients` show (never the key hash).
    pub fn summary(&self) -> serde_json::Value {
        summary(
            &self.name,
            self.created,
            self.revoked,
            self.old_key.as_ref().map(|o| o.valid_until),
            self.decoy,
            &self.limits,
        )
    }
}

/// A client's row in `client list --json` and `GET /admin/clients`: the one
/// definition of its fields, whether read from the vault or from the
/// server's snapshot.
pub fn summary(
    name: &str,
    created: u64,
    revoked: Option<u64>,
    old_key_valid_until: Option<u64>,
    decoy: bool,
    limits: &ClientLimits,
) -> serde_json::Value {
    let mut summary = serde_json::json!({
        "name": name,
        "created": created,
        "revoked": revoked,
        "old_key_valid_until": old_key_valid_until,
        "decoy": decoy,
    });
    let budget_usd = limits.budget_usd_micros.map(|m| m as f64 / 1e6);
    if let (Some(fields), Ok(serde_json::Value::Object(limits))) =
        (summary.as_object_mut(), serde_json::to_value(limits))
    {
        fields.extend(limits);
        fields.insert("budget_usd".to_owned(), serde_json::json!(budget_usd));
    }
    summary
}
