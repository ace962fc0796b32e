//! The inventory (docs/design.md §15): every inference key that exists at a
//! provider, read through its management API, each with keygate's reading —
//! `managed KEY_ID (STATE)` (matched by the id keygate recorded when it
//! minted the key, or the service account that owns it, else by the
//! provider's redacted value against the vault's secrets), `orphan` (named
//! as keygate names the keys it mints, with no vault record: a crash
//! between create and record), or `unmanaged` (a key keygate does not hold).
//!
//! The reading is pure ([`read`]); [`take`] lists and reads. Output carries
//! the last four characters of the provider's redacted value at most, never
//! a secret and never a `fingerprint_mac`.

use serde_json::{json, Value};

use crate::config::Provider;
use crate::keys::management::{ManagementApi, ManagementError, Removed};
use crate::keys::mint::name_prefix;
use crate::net::upstream::Upstream;
use crate::providers::management::{hint_matches, Listed, Listing};
use crate::vault::document::{Document, KeyState};

/// keygate's reading of one key at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A key of the vault.
    Managed {
        /// Its vault id.
        key_id: String,
        /// Its state there.
        state: KeyState,
    },
    /// Named like a key keygate mints, unknown to the vault.
    Orphan,
    /// Not keygate's.
    Unmanaged,
}

impl Reading {
    /// `managed key_1c9e03aa (current)`, `orphan`, `unmanaged`.
    pub fn describe(&self) -> String {
        match self {
            Reading::Managed { key_id, state } => format!("managed {key_id} ({})", state.as_str()),
            Reading::Orphan => "orphan".to_owned(),
            Reading::Unmanaged => "unmanaged".to_owned(),
        }
    }

    /// `managed`, `orphan`, `unmanaged`.
    pub fn word(&self) -> &'static str {
        match self {
            Reading::Managed { .. } => "managed",
            Reading::Orphan => "orphan",
            Reading::Unmanaged => "unmanaged",
        }
    }
}

/// One key at the provider, read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// As the provider lists it.
    pub listed: Listed,
    /// keygate's reading.
    pub reading: Reading,
    /// Not used (or, never used, not created) for the `--unused-for` span;
    /// `None` when no span was asked or the provider does not say.
    pub idle: Option<bool>,
}

impl Entry {
    /// The row of `key inventory --json` and `GET /admin/inventory`.
    pub fn to_json(&self, provider: &str) -> Value {
        let l = &self.listed;
        let (key_id, state) = match &self.reading {
            Reading::Managed { key_id, state } => (Some(key_id.as_str()), Some(state.as_str())),
            _ => (None, None),
        };
        json!({
            "provider": provider,
            "provider_key_id": l.id,
            "name": l.name,
            "shows": l.hint.as_deref().map(last_four),
            "created": l.created,
            "last_used": l.last_used,
            "owner": l.owner,
            "active": l.active,
            "reading": self.reading.word(),
            "key_id": key_id,
            "state": state,
            "idle": self.idle,
        })
    }
}

/// `…wxyz`: the most of a redacted value keygate repeats.
pub fn last_four(hint: &str) -> String {
    let chars: Vec<char> = hint.trim().chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

/// What the vault makes of `listed`, a key at `provider`.
pub fn read(listed: &Listed, document: &Document, provider: &str) -> Reading {
    let keys = || document.keys.iter().filter(|k| k.provider == provider);
    let by_id = |id: &str| {
        keys().find(|k| {
            k.minted.as_ref().is_some_and(|m| m.provider_id == id)
                || k.at_provider
                    .as_ref()
                    .and_then(|c| c.provider_id.as_deref())
                    .is_some_and(|p| p == id)
        })
    };
    let by_hint = || {
        let hint = listed.hint.as_deref()?;
        keys().find(|k| {
            k.secret
                .as_ref()
                .is_some_and(|s| hint_matches(hint, s.expose()))
        })
    };
    let found = by_id(&listed.id)
        .or_else(|| listed.owner_id.as_deref().and_then(by_id))
        .or_else(by_hint);
    if let Some(key) = found {
        return Reading::Managed {
            key_id: key.id.clone(),
            state: key.state,
        };
    }
    let prefix = name_prefix(provider);
    let named_by_keygate = listed
        .name
        .iter()
        .chain(listed.owner.iter())
        .any(|name| name.contains(&prefix));
    if named_by_keygate {
        Reading::Orphan
    } else {
        Reading::Unmanaged
    }
}

/// Idle for `span` at `now`: last used (else created) before `now - span`.
fn idle(listed: &Listed, span: Option<u64>, now: u64) -> Option<bool> {
    let span = span?;
    let last = listed.last_used.or(listed.created)?;
    Some(last.saturating_add(span) < now)
}

/// How many keys of each reading the last inventory of a provider found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// When it was taken (unix seconds).
    pub at: u64,
    /// Keys of the vault.
    pub managed: usize,
    /// Crash leftovers.
    pub orphan: usize,
    /// Keys keygate does not hold.
    pub unmanaged: usize,
    /// Why it could not be taken, when it could not.
    pub error: Option<String>,
}

impl Counts {
    /// The counts of `entries`, taken now.
    pub fn of(entries: &[Entry]) -> Counts {
        let count = |word| entries.iter().filter(|e| e.reading.word() == word).count();
        Counts {
            at: crate::unix_now(),
            managed: count("managed"),
            orphan: count("orphan"),
            unmanaged: count("unmanaged"),
            error: None,
        }
    }
}

/// Why an inventory could not be taken (or a key in it not deleted).
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// No management credential in the vault.
    #[error("no management credential is stored for {0}: run `keygate admin-key set {0}` (and set [providers.{0}.admin])")]
    NoCredential(String),
    /// The management API failed (nothing was done).
    #[error(transparent)]
    Management(#[from] ManagementError),
}

/// True when keygate can list `provider`'s keys: a kind with a management
/// API, its `[providers.NAME.admin]` table, a stored credential.
pub fn can_take(document: &Document, provider: &Provider) -> bool {
    provider.admin.is_some()
        && provider.kind.management().is_some()
        && document.admin_key(&provider.name).is_some()
}

fn api<'a>(
    upstream: &'a Upstream,
    provider: &'a Provider,
    document: &'a Document,
) -> Result<ManagementApi<'a>, InventoryError> {
    let admin = document
        .admin_key(&provider.name)
        .ok_or_else(|| InventoryError::NoCredential(provider.name.clone()))?;
    Ok(ManagementApi::new(upstream, provider, &admin.secret)?.scrubbing(document))
}

/// Every inference key at `provider`, read against `document`;
/// `unused_for`: seconds of idleness to mark.
pub async fn take(
    upstream: &Upstream,
    provider: &Provider,
    document: &Document,
    unused_for: Option<u64>,
) -> Result<Vec<Entry>, InventoryError> {
    let now = crate::unix_now();
    let listed = api(upstream, provider, document)?
        .list(Listing::Hinted)
        .await?;
    Ok(listed
        .into_iter()
        .map(|listed| Entry {
            reading: read(&listed, document, &provider.name),
            idle: idle(&listed, unused_for, now),
            listed,
        })
        .collect())
}

/// What the provider reports each of its keys used over `[start, end)`.
pub async fn key_usage(
    upstream: &Upstream,
    provider: &Provider,
    document: &Document,
    start: u64,
    end: u64,
) -> Result<Vec<crate::providers::management::KeyUsageReport>, InventoryError> {
    Ok(api(upstream, provider, document)?
        .key_usage(start, end)
        .await?)
}

/// Deletes (Anthropic: disables) `entry` at `provider`: an orphan's whole
/// service account where the provider has one (OpenAI), else the key.
pub async fn delete(
    upstream: &Upstream,
    provider: &Provider,
    document: &Document,
    entry: &Entry,
) -> Result<Removed, InventoryError> {
    let api = api(upstream, provider, document)?;
    let removed = match (&entry.reading, &entry.listed.owner_id) {
        (Reading::Orphan, Some(owner)) => api.remove(Listing::Minted, owner).await?,
        _ => api.remove(Listing::Hinted, &entry.listed.id).await?,
    };
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::document::{MintRecord, UpstreamKey};
    use crate::vault::secret::Secret;

    fn document() -> Document {
        let mut minted = UpstreamKey::new(
            "key_minted".into(),
            "openai",
            &Secret::new("sk-test-minted-aaaaaaaaaaaaWXYZ".into()),
            None,
            KeyState::Current,
            1,
        );
        minted.minted = Some(MintRecord {
            provider_id: "svc_acct_1".into(),
            name: "keygate-openai-1-ab".into(),
        });
        let hand = UpstreamKey::new(
            "key_hand".into(),
            "openai",
            &Secret::new("sk-test-hand-bbbbbbbbbbbbbbQRST".into()),
            None,
            KeyState::Previous,
            1,
        );
        Document {
            keys: vec![minted, hand],
            ..Document::default()
        }
    }

    fn listed(id: &str, name: &str, hint: &str, owner_id: Option<&str>) -> Listed {
        Listed {
            id: id.into(),
            name: Some(name.into()),
            hint: Some(hint.into()),
            owner_id: owner_id.map(str::to_owned),
            owner: Some("service account x".into()),
            ..Listed::default()
        }
    }

    #[test]
    fn managed_by_the_minted_id_or_its_owner_else_by_the_hint_then_orphan_or_unmanaged() {
        let doc = document();
        let read = |l: &Listed| read(l, &doc, "openai").describe();
        assert_eq!(
            read(&listed(
                "key_9",
                "Secret Key",
                "sk-tes...WXYZ",
                Some("svc_acct_1")
            )),
            "managed key_minted (current)"
        );
        assert_eq!(
            read(&listed("svc_acct_1", "keygate-openai-1-ab", "", None)),
            "managed key_minted (current)"
        );
        assert_eq!(
            read(&listed("key_8", "laptop", "sk-tes...QRST", None)),
            "managed key_hand (previous)"
        );
        assert_eq!(
            read(&listed(
                "key_7",
                "keygate-openai-2-cd",
                "sk-tes...0000",
                None
            )),
            "orphan"
        );
        assert_eq!(
            read(&listed("key_6", "made by hand", "sk-tes...1111", None)),
            "unmanaged"
        );
        // Another provider's keys never match.
        assert_eq!(
            super::read(
                &listed("key_9", "x", "sk-tes...WXYZ", Some("svc_acct_1")),
                &doc,
                "xai"
            )
            .word(),
            "unmanaged"
        );
    }

    #[test]
    fn idle_by_last_use_else_creation_and_output_shows_four_characters_at_most() {
        let mut l = listed("key_1", "n", "sk-ant-api03-R2D...igAA", None);
        l.created = Some(1_000);
        assert_eq!(idle(&l, Some(500), 2_000), Some(true));
        l.last_used = Some(1_800);
        assert_eq!(idle(&l, Some(500), 2_000), Some(false));
        assert_eq!(idle(&l, None, 2_000), None);
        let entry = Entry {
            listed: l,
            reading: Reading::Unmanaged,
            idle: None,
        };
        let json = entry.to_json("anthropic");
        assert_eq!(json["shows"], "…igAA");
        assert!(!json.to_string().contains("R2D"), "{json}");
    }
}
