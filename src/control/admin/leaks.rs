//! `POST /admin/leaks`: a secret scanner's alert about a key, handled
//! (docs/design.md §16). The report names the key (`{"key": …}`) or its
//! SHA-256 (`{"sha256": …}`); keygate finds it among every upstream key it
//! ever held (by `fingerprint_mac`) and every client key it issued (by
//! SHA-256), and with `[keys] on_leak_report = "burn"` burns an upstream key
//! in use — exactly as `POST /admin/keys/{id}/burn` — or revokes a client.
//!
//! Judging (which key, what to do) is [`find`] and [`Plan::of`], pure; this
//! room then acts through the burn and revoke paths and raises
//! `key_leak_reported`. The answer and the event name the key by id or
//! client name, never the key.

use serde::Deserialize;
use zeroize::Zeroizing;

use super::key_actions::burn_key;
use super::{write, AdminError, BurnBody};
use crate::config::OnLeakReport;
use crate::control::state::Shared;
use crate::events::EventType;
use crate::keys::held::{self, Held};
use crate::keys::ops;
use crate::vault::client_key::ClientKeyDigest;
use crate::vault::document::{Document, KeyState};
use crate::vault::fingerprint_mac::FingerprintKey;

/// Body of `POST /admin/leaks`: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeakBody {
    /// The leaked key itself, as the scanner found it.
    #[serde(default)]
    key: Option<Zeroizing<String>>,
    /// Hex SHA-256 of the leaked key (client keys only: keygate keeps
    /// nothing an upstream key's hash could be matched against).
    #[serde(default)]
    sha256: Option<String>,
}

/// What was reported, checked.
enum Report {
    Key(Zeroizing<String>),
    Sha256(ClientKeyDigest),
}

impl LeakBody {
    fn report(self) -> Result<Report, AdminError> {
        match (self.key, self.sha256) {
            (Some(key), None) if !key.trim().is_empty() => {
                Ok(Report::Key(Zeroizing::new(key.trim().to_owned())))
            }
            (None, Some(hex)) => ClientKeyDigest::from_hex(&hex.trim().to_ascii_lowercase())
                .map(Report::Sha256)
                .ok_or_else(|| {
                    AdminError::BadRequest(
                        "\"sha256\" must be 64 hexadecimal digits (the SHA-256 of the key)"
                            .to_owned(),
                    )
                }),
            _ => Err(AdminError::BadRequest(
                "send exactly one of \"key\" (the leaked key) or \"sha256\" (its hex SHA-256)"
                    .to_owned(),
            )),
        }
    }
}

/// The held key `report` names, and how it was matched (`fingerprint_mac`
/// or `sha256`).
fn find(
    document: &Document,
    fingerprints: &FingerprintKey,
    report: &Report,
) -> Option<(Held, &'static str)> {
    match report {
        Report::Key(key) => held::by_key(document, fingerprints, key),
        Report::Sha256(digest) => held::by_client_digest(document, digest).map(|h| (h, "sha256")),
    }
}

/// What to do with a matched key.
#[derive(Debug, PartialEq)]
enum Plan {
    Burn,
    Revoke,
    /// Out of use already (or a decoy, whose key is never valid: revoking
    /// it would only disarm the trap).
    Nothing,
    Alert,
}

impl Plan {
    fn of(held: &Held, mode: OnLeakReport) -> Plan {
        let in_use = match held {
            Held::Upstream { state, .. } => !matches!(
                state,
                KeyState::Retired | KeyState::Rejected | KeyState::Revoked
            ),
            Held::Client { revoked, decoy, .. } => !revoked && !decoy,
        };
        match (in_use, mode, held) {
            (false, _, _) => Plan::Nothing,
            (true, OnLeakReport::Alert, _) => Plan::Alert,
            (true, OnLeakReport::Burn, Held::Upstream { .. }) => Plan::Burn,
            (true, OnLeakReport::Burn, Held::Client { .. }) => Plan::Revoke,
        }
    }
}

/// Handles one report: 200 with what was done, 404 `not_a_held_key`.
pub(super) async fn report(
    shared: &Shared,
    body: LeakBody,
) -> Result<serde_json::Value, AdminError> {
    let report = body.report()?;
    let found = tokio::task::block_in_place(|| {
        let control = shared.control();
        let loaded = control.vault().load(control.kek())?;
        Ok::<_, AdminError>(find(&loaded.document, &loaded.fingerprint_key, &report))
    })?;
    drop(report);
    let (held, matched_by) = found.ok_or(AdminError::NotHeld)?;
    let plan = Plan::of(&held, shared.config.keys.on_leak_report);
    let (mut answer, state) = match &held {
        Held::Upstream {
            id,
            provider,
            state,
        } => (
            serde_json::json!({"key_id": id, "provider": provider}),
            state.as_str(),
        ),
        Held::Client {
            name,
            revoked,
            decoy,
        } => (
            serde_json::json!({"client": name, "provider": null}),
            match (revoked, decoy) {
                (true, _) => "revoked",
                (false, true) => "decoy",
                (false, false) => "active",
            },
        ),
    };
    let done = act(shared, &held, &plan).await;
    let action = match (&plan, &done) {
        (Plan::Burn, Ok(_)) => "burned",
        (Plan::Revoke, Ok(_)) => "revoked",
        (Plan::Nothing, _) => "none",
        (Plan::Alert, _) => "alerted",
        (Plan::Burn | Plan::Revoke, Err(_)) => "failed",
    };
    let mut fields = answer.clone();
    fields["state"] = state.into();
    fields["action"] = action.into();
    fields["matched_by"] = matched_by.into();
    if let Some(map) = fields.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    shared.events.raise(EventType::KeyLeakReported, fields);
    let detail = done?;
    answer["state"] = state.into();
    answer["action"] = action.into();
    answer["matched_by"] = matched_by.into();
    answer["message"] = message(&held, &plan, state).into();
    if let Some(detail) = detail {
        answer["burn"] = detail;
    }
    Ok(answer)
}

/// Carries out `plan` for `held` (the burn's own answer, for a burn).
async fn act(
    shared: &Shared,
    held: &Held,
    plan: &Plan,
) -> Result<Option<serde_json::Value>, AdminError> {
    match (plan, held) {
        (Plan::Burn, Held::Upstream { id, .. }) => {
            let request = BurnBody {
                secret: None,
                force: false,
                verify: true,
            };
            burn_key(shared, id, request).await.map(Some)
        }
        (Plan::Revoke, Held::Client { name, .. }) => {
            write(shared, |document| {
                // Revoked meanwhile by someone else: that is done too.
                let active = document
                    .clients
                    .iter_mut()
                    .find(|c| c.name == *name && c.revoked.is_none());
                if let Some(client) = active {
                    client.revoke(crate::unix_now());
                }
                Ok::<_, ops::OpError>(())
            })?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// One sentence for the operator.
fn message(held: &Held, plan: &Plan, state: &str) -> String {
    let what = match held {
        Held::Upstream { id, provider, .. } => format!("{provider} key {id}"),
        Held::Client { name, .. } => format!("client {name}"),
    };
    match plan {
        Plan::Burn => format!("{what} was {state}: burnt (replacement live first)"),
        Plan::Revoke => format!("{what} was {state}: revoked"),
        Plan::Nothing => format!("nothing to do: {what} is {state}"),
        Plan::Alert => {
            format!("{what} is {state}: nothing changed ([keys] on_leak_report = \"alert\")")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::vault::client_key;
    use crate::vault::document::{ClientRecord, UpstreamKey};
    use crate::vault::secret::Secret;

    fn fingerprints() -> FingerprintKey {
        // Any vault's key will do: the same one fills and matches.
        FingerprintKey::derive(&[3; 32]).unwrap()
    }

    fn document(key: &FingerprintKey, upstream: &str, client: &str) -> Document {
        let mut document = Document::default();
        let mut held = UpstreamKey::new(
            "key_1".to_owned(),
            "openai",
            &Secret::new(upstream.to_owned()),
            None,
            KeyState::Current,
            1,
        );
        held.fingerprint_mac = Some(key.mac(upstream));
        held.secret = None;
        held.state = KeyState::Retired;
        document.keys.push(held);
        document.clients.push(ClientRecord {
            name: "app".to_owned(),
            key_sha256: client_key::digest(client).to_hex(),
            limits: Default::default(),
            created: 1,
            revoked: None,
            old_key: None,
            decoy: false,
        });
        document
    }

    #[test]
    fn a_report_names_an_upstream_key_by_mac_and_a_client_by_digest() {
        let key = fingerprints();
        let (client, digest) = client_key::generate().unwrap();
        let upstream = "sk-test-leaked-000000000000000000000001";
        let doc = document(&key, upstream, client.expose());
        let by_key = |text: &str| find(&doc, &key, &Report::Key(Zeroizing::new(text.to_owned())));
        let (held, by) = by_key(upstream).unwrap();
        assert_eq!(by, "fingerprint_mac");
        assert_eq!(Plan::of(&held, OnLeakReport::Burn), Plan::Nothing);
        let (held, by) = by_key(client.expose()).unwrap();
        assert_eq!(by, "sha256");
        assert_eq!(Plan::of(&held, OnLeakReport::Burn), Plan::Revoke);
        assert_eq!(Plan::of(&held, OnLeakReport::Alert), Plan::Alert);
        let (held, _) = find(&doc, &key, &Report::Sha256(digest)).unwrap();
        assert!(matches!(held, Held::Client { ref name, .. } if name == "app"));
        assert!(by_key("sk-test-never-held-0000000000000000000").is_none());
        // An upstream key's SHA-256 matches nothing: keygate keeps none.
        let upstream_digest = client_key::digest(upstream);
        assert!(find(&doc, &key, &Report::Sha256(upstream_digest)).is_none());
    }

    #[test]
    fn keys_in_use_are_burnt_and_a_decoy_is_left_armed() {
        let upstream = |state| Held::Upstream {
            id: "key_1".to_owned(),
            provider: "openai".to_owned(),
            state,
        };
        for state in [KeyState::Pending, KeyState::Current, KeyState::Previous] {
            assert_eq!(Plan::of(&upstream(state), OnLeakReport::Burn), Plan::Burn);
        }
        let decoy = Held::Client {
            name: "wiki".to_owned(),
            revoked: false,
            decoy: true,
        };
        assert_eq!(Plan::of(&decoy, OnLeakReport::Burn), Plan::Nothing);
    }

    #[test]
    fn a_body_says_exactly_one_thing() {
        let body = |json: &str| serde_json::from_str::<LeakBody>(json).unwrap().report();
        assert!(body(r#"{"key": "sk-test-x"}"#).is_ok());
        assert!(body(&format!(r#"{{"sha256": "{}"}}"#, "AB".repeat(32))).is_ok());
        for bad in [
            "{}",
            r#"{"key": " "}"#,
            r#"{"sha256": "abc"}"#,
            r#"{"key": "sk-test-x", "sha256": "00"}"#,
        ] {
            assert!(body(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<LeakBody>(r#"{"secret": "x"}"#).is_err());
    }
}
