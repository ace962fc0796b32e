//! Keys keygate creates itself (docs/design.md §12): one call to the
//! provider's management API ([`create_key`]: OpenAI service accounts, xAI
//! API keys, OpenRouter provisioned keys), and the minted rotation built on
//! the rotation service's steps ([`rotate`]): mint → stage (one write that
//! also records the provider's id) → verify, patiently, since a new key takes
//! a moment to reach the provider's inference API → promote.
//!
//! The management credential goes in one `Authorization` header to the
//! management API and nowhere else; neither it nor the new key ever appears in
//! an error, which carries the provider's message scrubbed of both.

use std::time::{Duration, Instant};

use http::Method;
use serde::Deserialize;

use crate::config::Provider;
use crate::keys::ops::{self, OpError, Promotion};
use crate::keys::rotate::{self, RotateError, Step, VaultAccess};
use crate::keys::verify::{self, Check, Verdict};
use crate::net::upstream::Upstream;
use crate::providers::{Kind, ProviderError};
use crate::proxy::body::OutboundBody;
use crate::vault::document::{KeyState, MintRecord};
use crate::vault::secret::Secret;
use crate::vault::{Kek, Vault};

/// How long one management API call may take.
pub const MINT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a minted key is given to start working before it counts as refused.
pub const PROPAGATION_WAIT: Duration = Duration::from_secs(60);

/// Answers longer than this are not read.
const MAX_BODY: usize = 64 * 1024;

/// A key the provider just created.
pub struct Minted {
    /// The new inference key.
    pub secret: Secret,
    /// The provider's id for it (not a secret).
    pub provider_id: String,
}

/// Why the provider did not create a key.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No management credential in the vault.
    #[error("no management credential is stored for {0}: run `keygate admin-key set {0}` (see docs/keys.md, \"Management credentials\")")]
    NoAdminKey(String),
    /// No `[providers.NAME.admin]` table.
    #[error("[providers.{0}.admin] is not configured: add it (project for openai, team for xai; docs/vault-and-config.md) so keygate knows where to create keys")]
    NotConfigured(String),
    /// The provider's kind has no key-creating API.
    #[error("{provider} (kind {kind}) cannot create keys through an API: rotate it with a key on stdin (`keygate key rotate {provider}`)")]
    CannotMint {
        /// Provider name.
        provider: String,
        /// Its kind.
        kind: &'static str,
    },
    /// A pending key would block staging the minted one; nothing was created.
    #[error("{provider} already has a pending key {id}: finish that rotation (`keygate key promote {id}`) or revoke it before minting a new key")]
    PendingExists {
        /// Provider name.
        provider: String,
        /// The pending key.
        id: String,
    },
    /// The management API answered with an error.
    #[error("the {provider} management API refused to create a key: HTTP {status}{}: {meaning}", message.as_ref().map(|m| format!(" — the provider said: \"{m}\"")).unwrap_or_default())]
    Status {
        /// Provider name.
        provider: String,
        /// Its status.
        status: u16,
        /// The provider's message, scrubbed.
        message: Option<String>,
        /// What the status means and what to do.
        meaning: &'static str,
    },
    /// No answer in time.
    #[error("the {provider} management API at {url} did not answer within {timeout:?}; nothing was recorded in the vault, but the provider may have created the key: look for {name} in its console and delete it")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The name keygate asked for.
        name: String,
        /// The management API.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// No connection.
    #[error("cannot reach the {provider} management API at {url}: {detail}")]
    Network {
        /// Provider name.
        provider: String,
        /// The management API.
        url: String,
        /// The cause (hosts and socket errors only).
        detail: String,
    },
    /// A 2xx whose body is not the documented shape.
    #[error("the {provider} management API answered {status} without the new key where it should be ({expected}); check [providers.{provider}.admin] url, and the provider's console for a key named {name}")]
    Malformed {
        /// Provider name.
        provider: String,
        /// Its status.
        status: u16,
        /// The fields looked for.
        expected: &'static str,
        /// The name keygate asked for.
        name: String,
    },
}

fn meaning(status: u16) -> &'static str {
    match status {
        401 => "the management credential is invalid or revoked; store a working one with `keygate admin-key set`",
        403 => "the management credential may not create keys here; give it write access to API keys (and check the project / team id)",
        404 => "no such project / team, or the URL is wrong; check [providers.NAME.admin]",
        429 => "rate limited by the management API; try again in a minute",
        500..=599 => "the provider's management API failed; try again later",
        _ => "the request was not accepted",
    }
}

/// Creates one inference key named `name` at `provider`'s management API, as
/// the holder of `admin`.
pub async fn create_key(
    upstream: &Upstream,
    provider: &Provider,
    admin: &Secret,
    name: &str,
    timeout: Duration,
) -> Result<Minted, MintError> {
    let api = provider
        .admin
        .as_ref()
        .ok_or_else(|| MintError::NotConfigured(provider.name.clone()))?;
    let (path, body, expected) = match provider.kind {
        Kind::OpenAi => (
            format!(
                "/v1/organization/projects/{}/service_accounts",
                api.project.as_deref().unwrap_or_default()
            ),
            serde_json::json!({ "name": name }),
            "api_key.value and id",
        ),
        Kind::Xai => (
            format!(
                "/auth/teams/{}/api-keys",
                api.team.as_deref().unwrap_or_default()
            ),
            serde_json::json!({
                "name": name,
                "acls": ["api-key:model:*", "api-key:endpoint:*"],
            }),
            "apiKey and apiKeyId",
        ),
        Kind::OpenRouter => (
            "/api/v1/keys".to_owned(),
            serde_json::json!({ "name": name }),
            "key and data.hash",
        ),
        Kind::Anthropic | Kind::Azure | Kind::Generic => {
            return Err(MintError::CannotMint {
                provider: provider.name.clone(),
                kind: provider.kind.as_str(),
            })
        }
    };
    let url = api.url();
    let network = |detail: String| MintError::Network {
        provider: provider.name.clone(),
        url: url.clone(),
        detail,
    };
    let uri: http::Uri = format!("{url}{path}")
        .parse()
        .map_err(|_| network("the management URL does not form a valid URI".to_owned()))?;
    let mut bearer = http::HeaderValue::from_str(&format!("Bearer {}", admin.expose()))
        .map_err(|_| MintError::NoAdminKey(provider.name.clone()))?;
    bearer.set_sensitive(true);
    let mut request = http::Request::new(OutboundBody::Full(Some(body.to_string().into())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, bearer);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let answer = tokio::time::timeout(timeout, async {
        let response = upstream.send(request).await?;
        let status = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        let body = http_body_util::BodyExt::collect(limited)
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, crate::net::upstream::SendError>((status, body))
    })
    .await;
    let (status, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return Err(network(error.detail())),
        Err(_) => {
            return Err(MintError::Timeout {
                provider: provider.name.clone(),
                name: name.to_owned(),
                url,
                timeout,
            })
        }
    };
    if !(200..300).contains(&status) {
        let error = ProviderError::parse(&body);
        let message = error
            .message
            .or(error.code)
            .map(|m| crate::keys::ring::mask_secret(provider, admin, m));
        return Err(MintError::Status {
            provider: provider.name.clone(),
            status,
            message,
            meaning: meaning(status),
        });
    }
    read_minted(provider.kind, &body).ok_or_else(|| MintError::Malformed {
        provider: provider.name.clone(),
        status,
        expected,
        name: name.to_owned(),
    })
}

/// The new key and its id, from a 2xx answer in the kind's documented shape.
fn read_minted(kind: Kind, body: &[u8]) -> Option<Minted> {
    #[derive(Deserialize)]
    struct OpenAiKey {
        value: String,
    }
    #[derive(Deserialize)]
    struct OpenAi {
        id: String,
        api_key: OpenAiKey,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Xai {
        api_key: String,
        api_key_id: String,
    }
    #[derive(Deserialize)]
    struct OpenRouterData {
        hash: String,
    }
    #[derive(Deserialize)]
    struct OpenRouter {
        key: String,
        data: OpenRouterData,
    }
    let (secret, provider_id) = match kind {
        Kind::OpenAi => {
            let a: OpenAi = serde_json::from_slice(body).ok()?;
            (a.api_key.value, a.id)
        }
        Kind::Xai => {
            let a: Xai = serde_json::from_slice(body).ok()?;
            (a.api_key, a.api_key_id)
        }
        Kind::OpenRouter => {
            let a: OpenRouter = serde_json::from_slice(body).ok()?;
            (a.key, a.data.hash)
        }
        Kind::Anthropic | Kind::Azure | Kind::Generic => return None,
    };
    let secret = ops::upstream_secret(&secret).ok()?;
    (!provider_id.is_empty()).then_some(Minted {
        secret,
        provider_id,
    })
}

/// One minted rotation, as asked for.
pub struct MintRotation<'a> {
    /// The provider whose key rotates.
    pub provider: &'a Provider,
    /// A label for humans.
    pub label: Option<String>,
    /// The current key it replaces (pools: required).
    pub replace: Option<&'a str>,
    /// Verify before promoting (`false`: `--no-verify`).
    pub verify: bool,
    /// When the demoted key's grace ends (unix seconds).
    pub grace_until: u64,
    /// How long the new key may take to start working ([`PROPAGATION_WAIT`]).
    pub propagation_wait: Duration,
}

/// What a minted rotation reports as it goes, beyond the rotation's own steps.
pub enum MintStep<'a> {
    /// The provider created the key.
    Created {
        /// The name keygate gave it.
        name: &'a str,
        /// The provider's id.
        provider_id: &'a str,
    },
    /// A rotation step.
    Rotation(Step<'a>),
    /// The key did not work yet; trying again after `after`.
    Waiting {
        /// The last answer.
        check: &'a Check,
        /// The pause before the next try.
        after: Duration,
    },
}

/// Why a minted rotation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MintRotateError {
    /// Nothing was created.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The key was created at the provider, then the rotation stopped.
    #[error("{0}")]
    Rotate(#[from] RotateError),
    /// The vault could not be read before minting.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// Mints a key at the provider and rotates to it: stage (recording the
/// provider's id and name), verify with backoff for up to the propagation
/// wait, promote. A key the provider created but that never worked is left
/// `rejected` (secret wiped) with its provider id recorded.
pub async fn rotate(
    vault: &impl VaultAccess,
    upstream: &Upstream,
    rotation: MintRotation<'_>,
    mut report: impl FnMut(MintStep<'_>),
) -> Result<Promotion, MintRotateError> {
    let provider = rotation.provider;
    let name = format!("keygate-{}-{}", provider.name, crate::unix_now());
    let admin = vault.with(|v, k| preflight(v, k, provider))?;
    let minted = create_key(upstream, provider, &admin, &name, MINT_TIMEOUT).await?;
    report(MintStep::Created {
        name: &name,
        provider_id: &minted.provider_id,
    });
    let record = MintRecord {
        provider_id: minted.provider_id.clone(),
        name,
    };
    let pending =
        vault.with(|v, k| stage(v, k, provider, &minted.secret, rotation.label, record))?;
    report(MintStep::Rotation(Step::Staged { id: &pending }));
    if rotation.verify {
        let check = verify_patiently(
            upstream,
            provider,
            &minted.secret,
            rotation.propagation_wait,
            &mut report,
        )
        .await;
        report(MintStep::Rotation(Step::Checked {
            id: &pending,
            check: &check,
        }));
        vault.with(|v, k| rotate::settle_verdict(v, k, &pending, check))?;
    } else {
        report(MintStep::Rotation(Step::Unverified));
    }
    Ok(vault.with(|v, k| {
        rotate::promote(
            v,
            k,
            &pending,
            rotation.replace,
            rotation.verify,
            rotation.grace_until,
        )
    })?)
}

/// Before anything is created: the admin table, the credential, and no
/// pending key that would make the minted one impossible to stage.
fn preflight(vault: &Vault, kek: &Kek, provider: &Provider) -> Result<Secret, MintRotateError> {
    if !matches!(provider.kind, Kind::OpenAi | Kind::Xai | Kind::OpenRouter) {
        return Err(MintError::CannotMint {
            provider: provider.name.clone(),
            kind: provider.kind.as_str(),
        }
        .into());
    }
    if provider.admin.is_none() {
        return Err(MintError::NotConfigured(provider.name.clone()).into());
    }
    let document = vault.load(kek)?.document;
    if let Some(pending) = document
        .keys
        .iter()
        .find(|k| k.provider == provider.name && k.state == KeyState::Pending)
    {
        return Err(MintError::PendingExists {
            provider: provider.name.clone(),
            id: pending.id.clone(),
        }
        .into());
    }
    document
        .admin_key(&provider.name)
        .map(|a| a.secret.clone())
        .ok_or_else(|| MintError::NoAdminKey(provider.name.clone()).into())
}

/// Stage in one write: the minted key as pending with its provider record,
/// and the management credential's last use.
fn stage(
    vault: &Vault,
    kek: &Kek,
    provider: &Provider,
    secret: &Secret,
    label: Option<String>,
    record: MintRecord,
) -> Result<String, RotateError> {
    rotate::stage_with(vault, kek, &provider.name, secret, label, |doc, id, now| {
        let staged = doc
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| OpError::UnknownKey(id.to_owned()))?;
        staged.minted = Some(record);
        if let Some(admin) = doc
            .admin_keys
            .iter_mut()
            .find(|a| a.provider == provider.name)
        {
            admin.last_used = Some(now);
        }
        Ok(())
    })
}

/// Verifies until the key works or `patience` is spent: a refused or
/// inconclusive answer is retried with doubling pauses (a new key can take a
/// while to reach the inference API). Out of credit is final at once.
async fn verify_patiently(
    upstream: &Upstream,
    provider: &Provider,
    secret: &Secret,
    patience: Duration,
    report: &mut impl FnMut(MintStep<'_>),
) -> Check {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    loop {
        let check = verify::verify(upstream, provider, secret, rotate::VERIFY_TIMEOUT).await;
        let retry = matches!(check.verdict, Verdict::Rejected | Verdict::Inconclusive);
        let left = deadline.saturating_duration_since(Instant::now());
        if !retry || left.is_zero() {
            return check;
        }
        let after = pause.min(left);
        report(MintStep::Waiting {
            check: &check,
            after,
        });
        tokio::time::sleep(after).await;
        pause = (pause * 2).min(Duration::from_secs(8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_answer_shape_is_read() {
        let openai = br#"{"object":"organization.project.service_account","id":"svc_acct_abc","name":"n","role":"member","created_at":1,"api_key":{"object":"organization.project.service_account.api_key","value":"sk-svcacct-0123456789abcdef","name":"Secret Key","created_at":1,"id":"key_abc"}}"#;
        let m = read_minted(Kind::OpenAi, openai).unwrap();
        assert_eq!(m.provider_id, "svc_acct_abc");
        assert_eq!(m.secret.expose(), "sk-svcacct-0123456789abcdef");
        let xai = br#"{"apiKey":"xai-0123456789abcdef","apiKeyId":"k-1","name":"n"}"#;
        assert_eq!(read_minted(Kind::Xai, xai).unwrap().provider_id, "k-1");
        let or = br#"{"data":{"hash":"h1","name":"n"},"key":"sk-or-v1-0123456789abcdef"}"#;
        assert_eq!(read_minted(Kind::OpenRouter, or).unwrap().provider_id, "h1");
        assert!(read_minted(Kind::OpenAi, b"{\"id\":\"x\"}").is_none());
        assert!(read_minted(Kind::OpenRouter, br#"{"key":"a b","data":{"hash":"h"}}"#).is_none());
    }
}
