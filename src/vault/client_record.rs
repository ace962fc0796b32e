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
    /// Total tokens, ever.
    #[serde(default)]
    pub budget_tokens: Option<u64>,
}

impl ClientLimits {
    /// True when any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.budget_tokens.is_some()
    }

    /// These limits with each one `change` sets put in their place (`0`
    /// removes that limit); the others kept.
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
        }
    }

    /// `rpm 60, tpm unlimited, budget 10000`, for the operator.
    pub fn describe(&self) -> String {
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        format!(
            "rpm {}, tpm {}, budget {}",
            show(self.rpm.map(u64::from)),
            show(self.tpm),
            show(self.budget_tokens)
        )
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
        let mut summary = serde_json::json!({
            "name": self.name,
            "created": self.created,
            "revoked": self.revoked,
            "old_key_valid_until": self.old_key.as_ref().map(|o| o.valid_until),
            "decoy": self.decoy,
        });
        if let (Some(fields), Ok(serde_json::Value::Object(limits))) =
            (summary.as_object_mut(), serde_json::to_value(self.limits))
        {
            fields.extend(limits);
        }
        summary
    }
}
