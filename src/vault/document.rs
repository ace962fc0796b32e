//! What the vault holds once decrypted: upstream keys and clients.
//!
//! Plain data with serde, serialised only inside the vault cipher. Nothing here
//! does I/O or crypto; state transitions live in `keys`, client keys in `clients`.

use serde::{Deserialize, Serialize};

use crate::vault::secret::Secret;

/// The decrypted vault document.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Every upstream key ever added, in any state (wiped secrets stay as records).
    #[serde(default)]
    pub keys: Vec<UpstreamKey>,
    /// Every client ever issued, revoked ones included.
    #[serde(default)]
    pub clients: Vec<ClientRecord>,
}

/// Lifecycle state of an upstream key (docs/design.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Added by a rotation, not yet verified.
    Pending,
    /// In service (several = a pool).
    Current,
    /// The fallback after a rotation, until its grace period ends.
    Previous,
    /// Grace over; secret wiped.
    Retired,
    /// The upstream refused it on verification; secret wiped.
    Rejected,
    /// Revoked by an operator.
    Revoked,
}

impl KeyState {
    /// Lower-case name, as shown by `key list`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Current => "current",
            KeyState::Previous => "previous",
            KeyState::Retired => "retired",
            KeyState::Rejected => "rejected",
            KeyState::Revoked => "revoked",
        }
    }

    /// True for the states a request may use.
    pub fn is_usable(self) -> bool {
        matches!(self, KeyState::Current | KeyState::Previous)
    }
}

/// One upstream API key and its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamKey {
    /// Stable id such as `key_3f9a1c20`; safe to log.
    pub id: String,
    /// Provider name from config (`openai`, `xai`, …).
    pub provider: String,
    /// Operator's label.
    #[serde(default)]
    pub label: Option<String>,
    /// The key itself; `None` once wiped (retired, rejected).
    #[serde(with = "crate::vault::secret::vault_field", default)]
    pub secret: Option<Secret>,
    /// Fingerprint kept after the secret is wiped, for `key list`.
    pub fingerprint: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last state change.
    pub state_changed: u64,
    /// Unix seconds of the last successful verification.
    #[serde(default)]
    pub last_verified: Option<u64>,
    /// Why it was rejected or revoked.
    #[serde(default)]
    pub reason: Option<String>,
    /// For a `previous` key: unix seconds when its grace ends and it retires.
    #[serde(default)]
    pub grace_until: Option<u64>,
}

impl UpstreamKey {
    /// True for a usable key older than `rotate_after` seconds.
    pub fn due_for_rotation(&self, now: u64, rotate_after: u64) -> bool {
        self.state.is_usable() && now.saturating_sub(self.created) > rotate_after
    }

    /// What `key list --json` and `GET /admin/keys` show: everything but the secret.
    pub fn summary(&self, now: u64, rotate_after: u64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "provider": self.provider,
            "label": self.label,
            "state": self.state.as_str(),
            "fingerprint": self.fingerprint,
            "created": self.created,
            "age_seconds": now.saturating_sub(self.created),
            "state_changed": self.state_changed,
            "last_verified": self.last_verified,
            "grace_until": self.grace_until,
            "reason": self.reason,
            "due_for_rotation": self.due_for_rotation(now, rotate_after),
        })
    }
}

/// One issued client key (only its SHA-256 is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRecord {
    /// Unique client name; appears in logs and metrics.
    pub name: String,
    /// Hex SHA-256 of the full `kg_…` key.
    pub key_sha256: String,
    /// Requests per minute, when limited.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute, when limited.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Total token budget, when limited.
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of revocation.
    #[serde(default)]
    pub revoked: Option<u64>,
}

impl ClientRecord {
    /// What `client list --json` and `GET /admin/clients` show (never the key hash).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "created": self.created,
            "revoked": self.revoked,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_tokens": self.budget_tokens,
        })
    }
}
