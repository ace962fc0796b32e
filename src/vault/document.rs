//! What the vault holds once decrypted: upstream keys, clients, and the
//! providers' management credentials.
//!
//! Plain data with serde, serialised only inside the vault cipher. Nothing here
//! does I/O or crypto; state transitions live in `keys`, client keys in `clients`.
//! Management credentials ([`AdminKey`]) are a record kind of their own, kept
//! apart from `keys` so that nothing that builds a key ring or injects a key
//! can ever pick one up.

use serde::{Deserialize, Serialize};

use crate::vault::fingerprint_mac::FingerprintMac;
use crate::vault::secret::Secret;

pub use super::client_record::{BudgetPeriod, ClientLimits, ClientRecord, OldClientKey};

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
    /// The providers' management credentials (`admin-key set`), at most one
    /// per provider. Absent from vaults written before they existed; left out
    /// of the file while empty, so a vault that never held one stays readable
    /// by a keygate that predates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_keys: Vec<AdminKey>,
}

impl Document {
    /// The upstream key `id`, if any.
    pub fn key(&self, id: &str) -> Option<&UpstreamKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The management credential stored for `provider`, if any.
    pub fn admin_key(&self, provider: &str) -> Option<&AdminKey> {
        self.admin_keys.iter().find(|k| k.provider == provider)
    }

    /// Stores `secret` as `provider`'s management credential, replacing the one
    /// stored before (there is at most one per provider). Returns the replaced
    /// record, so the caller can say what it replaced.
    pub fn set_admin_key(&mut self, provider: &str, secret: Secret, now: u64) -> Option<AdminKey> {
        let replaced = self.remove_admin_key(provider);
        self.admin_keys.push(AdminKey {
            provider: provider.to_owned(),
            fingerprint: secret.fingerprint(),
            secret,
            added: now,
            last_used: None,
        });
        replaced
    }

    /// Removes `provider`'s management credential (its secret zeroizes on
    /// drop); returns it, or `None` when there was none.
    pub fn remove_admin_key(&mut self, provider: &str) -> Option<AdminKey> {
        let at = self
            .admin_keys
            .iter()
            .position(|k| k.provider == provider)?;
        Some(self.admin_keys.remove(at))
    }
}

/// A provider's management credential: OpenAI admin key, xAI management key,
/// OpenRouter provisioning key, Anthropic admin key. It may create and delete
/// inference keys, so it is never put in a key ring, never sent on a client's
/// request, and shown only by its fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKey {
    /// Provider name from config (`openai`, `xai`, …).
    pub provider: String,
    /// The credential itself (`Debug` shows its fingerprint only).
    #[serde(with = "required_secret")]
    pub secret: Secret,
    /// Its fingerprint, for `admin-key list`.
    pub fingerprint: String,
    /// Unix seconds when it was stored.
    pub added: u64,
    /// Unix seconds of its last use against the management API.
    #[serde(default)]
    pub last_used: Option<u64>,
}

impl AdminKey {
    /// What `admin-key list --json` shows: everything but the secret.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "provider": self.provider,
            "fingerprint": self.fingerprint,
            "added": self.added,
            "last_used": self.last_used,
        })
    }
}

/// Serde glue for a secret that is always present (the vault document is
/// encrypted before it touches disk; `Secret` itself has no `Serialize`).
mod required_secret {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    use crate::vault::secret::Secret;

    pub fn serialize<S: Serializer>(value: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let raw = Zeroizing::new(String::deserialize(d)?);
        Ok(Secret::new(raw.as_str().to_owned()))
    }
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
    /// HMAC of the secret under the vault's own key
    /// ([`crate::vault::fingerprint_mac`]), kept after the secret is wiped, so
    /// a reported key can be named for ever. Filled by the vault on every
    /// write for each key that still holds its secret; absent in older
    /// vaults until then. Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_mac: Option<FingerprintMac>,
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
    /// Set when keygate created the key at the provider (`key rotate --mint`):
    /// only such keys are ever deleted there. Absent in older vaults and left
    /// out for hand-added keys, so older readers still open the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted: Option<MintRecord>,
    /// What keygate still owes the provider for this key (delete it, or
    /// disable it), and how far it got. Absent when nothing is owed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_provider: Option<ProviderCleanup>,
    /// How many shares of new clients this key takes in its provider's pool
    /// (`key set --weight`; absent: 1). Left out when unset, so older readers
    /// still open the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The most requests keygate keeps open on this key at once
    /// (`key set --max-in-flight`; absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl UpstreamKey {
    /// A key as it is added: `secret` in `state` at `now` (unix seconds),
    /// nothing verified, no grace, not minted.
    pub fn new(
        id: String,
        provider: &str,
        secret: &Secret,
        label: Option<String>,
        state: KeyState,
        now: u64,
    ) -> UpstreamKey {
        UpstreamKey {
            id,
            provider: provider.to_owned(),
            label,
            secret: Some(secret.clone()),
            fingerprint: secret.fingerprint(),
            fingerprint_mac: None,
            state,
            created: now,
            state_changed: now,
            last_verified: None,
            reason: None,
            grace_until: None,
            minted: None,
            at_provider: None,
            weight: None,
            max_in_flight: None,
        }
    }
}

/// How keygate created a key at the provider, kept so it can find and delete it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRecord {
    /// The provider's id for it (OpenAI service account id, xAI `apiKeyId`,
    /// OpenRouter `data.hash`); not a secret.
    pub provider_id: String,
    /// The name keygate gave it there (`keygate-openai-1767312000`).
    pub name: String,
}

/// A key keygate must delete (or, at Anthropic, disable) at the provider:
/// a minted key once it is retired, rejected or revoked, or any key burnt or
/// revoked with `--at-provider`. Kept after it is done, for `key list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderCleanup {
    /// The provider's id of the key, when known (minted keys); else it is
    /// found by the key's hint, and the secret is kept until then.
    #[serde(default)]
    pub provider_id: Option<String>,
    /// Unix seconds when the provider confirmed it.
    #[serde(default)]
    pub done: Option<u64>,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure, scrubbed (never a secret).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl ProviderCleanup {
    /// True until the provider confirmed it.
    pub fn pending(&self) -> bool {
        self.done.is_none()
    }
}

impl UpstreamKey {
    /// `retired`, or `retired (delete pending)` while keygate still owes the
    /// provider a delete, for `key list`.
    pub fn state_shown(&self) -> String {
        match &self.at_provider {
            Some(c) if c.pending() => format!("{} (delete pending)", self.state.as_str()),
            _ => self.state.as_str().to_owned(),
        }
    }

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
            "weight": self.weight.unwrap_or(1),
            "max_in_flight": self.max_in_flight,
            "minted": self.minted.as_ref().map(|m| serde_json::json!({
                "provider_id": m.provider_id,
                "name": m.name,
            })),
            "at_provider": self.at_provider.as_ref().map(|c| serde_json::json!({
                "pending": c.pending(),
                "provider_id": c.provider_id,
                "done": c.done,
                "attempts": c.attempts,
                "last_error": c.last_error,
            })),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn budget_periods_parse_and_align() {
        use crate::vault::client_record::BudgetPeriod as P;
        assert_eq!(P::parse("1mo"), Ok(P::Month));
        assert_eq!(P::parse("7d"), Ok(P::Seconds(7 * 86_400)));
        assert_eq!(P::parse("lifetime"), Ok(P::Seconds(0)));
        assert!(
            P::parse("1.5s").is_err() && P::parse("soon").is_err() && P::parse("3651d").is_err()
        );
        // 2026-12-06T05:00:07Z.
        let now = 1_796_533_207;
        assert_eq!(P::Seconds(5).window_start(now), now - 2);
        assert_eq!(P::Seconds(5).window_end(now), now + 3);
        assert_eq!(P::Seconds(86_400).window_start(now), 1_796_515_200); // 00:00 UTC
        assert_eq!(P::Month.window_start(now), 1_796_083_200); // the 1st
        assert_eq!(P::Month.window_end(now), 1_798_761_600);
        for text in ["30s", "1h", "1d", "7d", "1mo", "90m"] {
            assert_eq!(
                P::parse(text).unwrap().to_string(),
                if text == "90m" { "90m" } else { text }
            );
        }
    }

    #[test]
    fn a_client_record_keeps_its_limits_inline_as_the_file_always_had_them() {
        let stored =
            r#"{"name":"app","key_sha256":"ab","rpm":60,"budget_tokens":1000,"created":1}"#;
        let record: ClientRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(
            record.limits,
            ClientLimits {
                rpm: Some(60),
                budget_tokens: Some(1000),
                ..ClientLimits::default()
            }
        );
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(written["rpm"], 60);
        assert_eq!(written["budget_tokens"], 1000);
        assert!(written.get("limits").is_none() && written.get("old_key").is_none());
        assert!(serde_json::from_str::<ClientRecord>(
            r#"{"name":"a","key_sha256":"b","created":1,"x":1}"#
        )
        .is_err());
        assert_eq!(record.summary()["rpm"], 60);
        let changed = record.limits.changed_by(ClientLimits {
            rpm: Some(0),
            tpm: Some(5),
            ..ClientLimits::default()
        });
        assert_eq!(changed.describe(), "rpm unlimited, tpm 5, budget 1000");
        // A dollar budget per calendar month, kept under its own names.
        let monthly = changed.changed_by(ClientLimits {
            budget_usd_micros: Some(50_000_000),
            budget_period: Some(BudgetPeriod::Month),
            ..ClientLimits::default()
        });
        assert_eq!(
            monthly.describe(),
            "rpm unlimited, tpm 5, budget 1000 tokens, $50.00 per 1mo"
        );
        let mut record = record;
        record.limits = monthly;
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(
            (
                written["budget_usd_micros"].as_u64(),
                written["budget_period"].as_str()
            ),
            (Some(50_000_000), Some("1mo"))
        );
        let read: ClientRecord = serde_json::from_value(written).unwrap();
        assert_eq!(read.limits, monthly);
        // A period of 0 removes the period.
        let lifetime = monthly.changed_by(ClientLimits {
            budget_period: Some(BudgetPeriod::Seconds(0)),
            ..ClientLimits::default()
        });
        assert_eq!(lifetime.budget_period, None);
    }

    const ADMIN: &str = "sk-admin-test-Qw3Er5Ty7Ui9Op1As2Df4Gh";

    #[test]
    fn a_document_written_before_admin_keys_still_parses() {
        // The shape a vault had before management credentials existed.
        let old = r#"{"keys":[],"clients":[]}"#;
        let document: Document = serde_json::from_str(old).unwrap();
        assert!(document.admin_keys.is_empty());
    }

    #[test]
    fn no_admin_keys_leaves_the_field_out_so_older_readers_still_open_it() {
        let text = serde_json::to_string(&Document::default()).unwrap();
        assert!(!text.contains("admin_keys"), "{text}");
    }

    #[test]
    fn admin_keys_round_trip_and_set_replaces() {
        let mut document = Document::default();
        assert!(document
            .set_admin_key("openai", Secret::new(ADMIN.to_owned()), 10)
            .is_none());
        let replaced = document
            .set_admin_key("openai", Secret::new(format!("{ADMIN}2")), 20)
            .unwrap();
        assert_eq!(replaced.added, 10);
        assert_eq!(document.admin_keys.len(), 1);
        let text = serde_json::to_string(&document).unwrap();
        let back: Document = serde_json::from_str(&text).unwrap();
        let key = back.admin_key("openai").unwrap();
        assert_eq!(key.secret.expose(), format!("{ADMIN}2"));
        assert_eq!(key.added, 20);
        assert!(back.admin_key("xai").is_none());
        assert!(document.remove_admin_key("openai").is_some());
        assert!(document.remove_admin_key("openai").is_none());
    }

    #[test]
    fn a_key_written_before_minting_parses_and_hand_added_keys_stay_that_shape() {
        let old = r#"{"keys":[{"id":"key_1","provider":"openai","label":null,"secret":null,"fingerprint":"sk-…abcd","state":"retired","created":1,"state_changed":2}],"clients":[]}"#;
        let mut document: Document = serde_json::from_str(old).unwrap();
        assert!(document.keys[0].minted.is_none());
        assert!(!serde_json::to_string(&document).unwrap().contains("minted"));
        document.keys[0].minted = Some(MintRecord {
            provider_id: "svc_acct_1".to_owned(),
            name: "keygate-openai-1".to_owned(),
        });
        let text = serde_json::to_string(&document).unwrap();
        let back: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(back.keys[0].minted, document.keys[0].minted);
        assert_eq!(
            back.keys[0].summary(3, 10)["minted"]["provider_id"],
            "svc_acct_1"
        );
    }

    #[test]
    fn debug_and_summary_never_show_the_admin_secret() {
        let mut document = Document::default();
        document.set_admin_key("openai", Secret::new(ADMIN.to_owned()), 1);
        let debug = format!("{document:?}");
        let summary = document.admin_keys[0].summary().to_string();
        for text in [&debug, &summary] {
            assert!(!text.contains("Qw3Er5Ty"), "{text}");
            assert!(text.contains("sk-…f4Gh"), "{text}");
        }
    }
}
