//! The admin API under `/admin/`, with `Authorization: Bearer
//! $KEYGATE_ADMIN_TOKEN` (docs/design.md §9): the same semantics as the CLI,
//! through the same services (the rotation service, the key ops).
//!
//! On the admin listener only ([`super::probes`] routes there), so none of
//! it exists on the client listener. Never
//! returns a secret: keys are shown by id and fingerprint; the token is
//! compared in constant time. Vault writes run on the blocking pool and reload
//! the snapshot before answering, so a change is live when the call returns.

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use serde::Deserialize;

use super::probes::text;
use crate::control::key_upkeep;
use crate::control::state::{ServerVault, Shared};
use crate::keys::rotate::VaultAccess;
use crate::keys::{burn, cleanup, mint, ops, rotate};
use crate::proxy::response_body::ResponseBody;
use crate::vault::document::{Document, KeyState};
use crate::vault::secret::Secret;
use crate::vault::VaultError;

/// An admin API failure, answered as OpenAI-style JSON.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("the admin API is off: set the environment variable named by [admin] token_env (default KEYGATE_ADMIN_TOKEN) and restart")]
    Off,
    #[error("missing or wrong admin token: send Authorization: Bearer <admin token>")]
    Unauthorized,
    #[error("no such admin route")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    /// The provider's management API failed.
    #[error("{0}")]
    Provider(String),
}

impl AdminError {
    fn into_response(self) -> Response<ResponseBody> {
        let (status, code) = match self {
            AdminError::Off => (StatusCode::NOT_FOUND, "admin_api_off"),
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "invalid_admin_token"),
            AdminError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
            AdminError::Provider(_) => (StatusCode::BAD_GATEWAY, "management_api_error"),
        };
        let body = serde_json::json!({
            "error": { "message": self.to_string(), "type": "admin_error", "code": code }
        });
        text(status, "application/json", body.to_string())
    }
}

impl From<ops::OpError> for AdminError {
    fn from(error: ops::OpError) -> Self {
        match error {
            ops::OpError::UnknownKey(_) => AdminError::BadRequest(error.to_string()),
            other => AdminError::Conflict(other.to_string()),
        }
    }
}

impl From<VaultError> for AdminError {
    fn from(error: VaultError) -> Self {
        AdminError::Failed(error.to_string())
    }
}

impl From<rotate::RotateError> for AdminError {
    fn from(error: rotate::RotateError) -> Self {
        match error {
            rotate::RotateError::Op(op) => op.into(),
            rotate::RotateError::Rejected { .. }
            | rotate::RotateError::Exhausted { .. }
            | rotate::RotateError::Inconclusive { .. } => AdminError::Conflict(error.to_string()),
            other => AdminError::Failed(other.to_string()),
        }
    }
}

impl From<mint::MintRotateError> for AdminError {
    fn from(error: mint::MintRotateError) -> Self {
        match error {
            mint::MintRotateError::Mint(mint::MintError::Api { .. }) => {
                AdminError::Provider(error.to_string())
            }
            mint::MintRotateError::Mint(mint::MintError::PendingExists { .. }) => {
                AdminError::Conflict(error.to_string())
            }
            mint::MintRotateError::Mint(other) => AdminError::BadRequest(other.to_string()),
            mint::MintRotateError::Rotate(error) => error.into(),
            mint::MintRotateError::Vault(error) => error.into(),
        }
    }
}

impl From<burn::BurnError> for AdminError {
    fn from(error: burn::BurnError) -> Self {
        match error {
            burn::BurnError::Op(op) => op.into(),
            burn::BurnError::Vault(vault) => vault.into(),
            burn::BurnError::Replacement { ref source, .. } => match **source {
                mint::MintRotateError::Mint(mint::MintError::Api { .. }) => {
                    AdminError::Provider(error.to_string())
                }
                _ => AdminError::Conflict(error.to_string()),
            },
            other @ burn::BurnError::NeedsReplacement { .. } => {
                AdminError::BadRequest(other.to_string())
            }
        }
    }
}

/// Body of `POST /admin/keys/{provider}` and `…/rotate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    secret: Option<String>,
    /// `…/rotate` only: keygate creates the new key at the provider.
    #[serde(default)]
    mint: bool,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    fallback: bool,
    #[serde(default = "yes")]
    verify: bool,
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    replace: Option<String>,
}

fn yes() -> bool {
    true
}

/// Body of `POST /admin/keys/{id}/revoke`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    force: bool,
    /// Also delete (disable) the key at the provider.
    #[serde(default)]
    at_provider: bool,
}

/// Body of `POST /admin/keys/{id}/burn`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurnBody {
    /// The replacement, when keygate cannot mint one.
    #[serde(default)]
    secret: Option<String>,
    /// Burn a current key without a replacement.
    #[serde(default)]
    force: bool,
    #[serde(default = "yes")]
    verify: bool,
}

const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Answers one `/admin/…` request.
pub async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<ResponseBody> {
    match admin_api(shared, request).await {
        Ok(value) => text(StatusCode::OK, "application/json", value.to_string()),
        Err(error) => error.into_response(),
    }
}

async fn admin_api(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<serde_json::Value, AdminError> {
    let token = shared.admin_token.as_ref().ok_or(AdminError::Off)?;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(crate::proxy::auth::bearer_token)
        .unwrap_or("");
    let matches: bool =
        subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.expose().as_bytes()).into();
    if !matches {
        return Err(AdminError::Unauthorized);
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = read_body(request).await?;
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["keys"]) => list_keys(shared),
        (Method::GET, ["clients"]) => list_clients(shared),
        (Method::GET, ["providers"]) => list_providers(shared),
        (Method::GET, ["activity"]) => Ok(shared
            .key_events
            .recent
            .to_json(crate::keys::recent::Recent::this_minute())),
        (Method::GET, ["status"]) => Ok(status(shared)),
        (Method::GET, ["usage"]) => usage(shared, &query),
        (Method::POST, ["reload"]) => {
            tokio::task::block_in_place(|| shared.reload())
                .map_err(|e| AdminError::Failed(e.to_string()))?;
            Ok(serde_json::json!({ "generation": shared.snapshot().generation }))
        }
        (Method::POST, ["keys", provider]) => add_key(shared, provider, parse(&body)?),
        (Method::POST, ["keys", provider, "rotate"]) => {
            rotate_key(shared, provider, parse(&body)?).await
        }
        (Method::POST, ["keys", id, "revoke"]) => {
            let revoke: RevokeBody = if body.is_empty() {
                RevokeBody::default()
            } else {
                parse(&body)?
            };
            revoke_key(shared, id, revoke).await
        }
        (Method::POST, ["keys", id, "burn"]) => {
            let request: BurnBody = if body.is_empty() {
                parse(b"{}")?
            } else {
                parse(&body)?
            };
            burn_key(shared, id, request).await
        }
        _ => Err(AdminError::NotFound),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<bytes::Bytes, AdminError> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_ADMIN_BODY);
    http_body_util::BodyExt::collect(limited)
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| AdminError::BadRequest("body unreadable or over 64 KiB".to_owned()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    // serde_json's message names the field (unknown, missing, of the wrong
    // type); a string value it would quote (a key pasted into the wrong
    // field) is cut out.
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => without_quoted_string(&e.to_string()),
            category => format!(
                "{category:?} error at line {} column {}",
                e.line(),
                e.column()
            ),
        };
        AdminError::BadRequest(format!("invalid JSON body: {what}"))
    })
}

/// `invalid type: string "sk-…", expected a boolean` → `invalid type: string, expected a boolean`.
fn without_quoted_string(message: &str) -> String {
    match message.split_once("string \"") {
        Some((before, rest)) => {
            let after = rest.rsplit_once('"').map_or("", |(_, after)| after);
            format!("{before}string{after}")
        }
        None => message.to_owned(),
    }
}

/// One vault write under the control lock, then a reload so it is live.
fn write<T>(
    shared: &Shared,
    change: impl FnOnce(&mut Document) -> Result<T, ops::OpError>,
) -> Result<T, AdminError> {
    tokio::task::block_in_place(|| {
        let result = {
            let control = shared.control();
            control
                .vault()
                .update(control.kek(), |doc| change(doc).map_err(AdminError::from))
        };
        shared
            .reload()
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        result
    })
}

fn key_secret(body: &KeyBody) -> Result<Secret, AdminError> {
    let text = body.secret.as_deref().ok_or_else(|| {
        AdminError::BadRequest("\"secret\" is required (or, to rotate, \"mint\": true)".to_owned())
    })?;
    ops::upstream_secret(text).map_err(|e| AdminError::BadRequest(format!("\"secret\": {e}")))
}

fn known_provider(shared: &Shared, provider: &str) -> Result<(), AdminError> {
    if shared.config.providers.contains_key(provider) {
        Ok(())
    } else {
        Err(AdminError::BadRequest(format!(
            "unknown provider `{provider}`"
        )))
    }
}

fn add_key(
    shared: &Shared,
    provider: &str,
    body: KeyBody,
) -> Result<serde_json::Value, AdminError> {
    known_provider(shared, provider)?;
    let secret = key_secret(&body)?;
    let state = if body.fallback {
        KeyState::Previous
    } else {
        KeyState::Current
    };
    let id = ops::new_key_id().map_err(|e| AdminError::Failed(e.to_string()))?;
    let id = write(shared, |doc| {
        let key = ops::NewKey {
            id,
            provider,
            secret: &secret,
            label: body.label.clone(),
            state,
        };
        ops::add_now(doc, key)
    })?;
    Ok(
        serde_json::json!({ "id": id, "provider": provider, "state": state.as_str(), "fingerprint": secret.fingerprint() }),
    )
}

async fn rotate_key(
    shared: &Shared,
    provider: &str,
    body: KeyBody,
) -> Result<serde_json::Value, AdminError> {
    known_provider(shared, provider)?;
    let grace = match &body.grace {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| AdminError::BadRequest(format!("\"grace\": {e}")))?,
        None => shared.config.keys.default_grace,
    };
    let grace_until = crate::unix_now().saturating_add(grace.as_secs());
    let upstream_provider = &shared.config.providers[provider];
    let result = if body.mint {
        if body.secret.is_some() {
            return Err(AdminError::BadRequest(
                "\"mint\": true creates the key at the provider: leave out \"secret\"".to_owned(),
            ));
        }
        let _lease = rotation_lease(shared)?;
        let rotation = mint::MintRotation {
            provider: upstream_provider,
            label: body.label.clone(),
            replace: body.replace.as_deref(),
            verify: body.verify,
            grace_until,
            propagation_wait: mint::PROPAGATION_WAIT,
            call_timeout: crate::keys::management::CALL_TIMEOUT,
        };
        let result = key_upkeep::mint_logged(shared, rotation).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        shared
            .metrics
            .key_mints
            .with_label_values(&[provider, outcome])
            .inc();
        result.map_err(AdminError::from)
    } else {
        let secret = key_secret(&body)?;
        let rotation = rotate::Rotation {
            provider: upstream_provider,
            secret: &secret,
            label: body.label.clone(),
            replace: body.replace.as_deref(),
            verify_with: body.verify.then_some(&shared.upstream),
            grace_until,
        };
        rotate::run(&ServerVault(shared), rotation, |_| {})
            .await
            .map_err(AdminError::from)
    };
    // Whatever step it stopped at, serve what the vault now says.
    let _ = tokio::task::block_in_place(|| shared.reload());
    let promotion = result?;
    let minted = load_document(shared)?
        .keys
        .iter()
        .find(|k| k.id == promotion.promoted)
        .and_then(|k| k.minted.clone());
    Ok(serde_json::json!({
        "promoted": promotion.promoted,
        "previous": promotion.demoted,
        "retired": promotion.retired,
        "grace_until": grace_until,
        "minted": minted.map(|m| serde_json::json!({"provider_id": m.provider_id, "name": m.name})),
    }))
}

/// The vault's rotation lease, or 409 while another rotation holds it.
fn rotation_lease(shared: &Shared) -> Result<crate::vault::WriteLock, AdminError> {
    ServerVault(shared)
        .with(|v, _| v.try_rotation_lease())?
        .ok_or_else(|| {
            AdminError::Conflict(
                "another rotation or burn of this vault is running; try again when it is done"
                    .to_owned(),
            )
        })
}

async fn revoke_key(
    shared: &Shared,
    id: &str,
    body: RevokeBody,
) -> Result<serde_json::Value, AdminError> {
    if body.at_provider {
        let document = load_document(shared)?;
        let key = document.key(id).ok_or_else(|| {
            AdminError::BadRequest(ops::OpError::UnknownKey(id.to_owned()).to_string())
        })?;
        let provider = &shared.config.providers[&key.provider];
        if !burn::can_clean_up(&document, provider) {
            return Err(AdminError::BadRequest(format!(
                "\"at_provider\": keygate cannot reach {0}'s management API (it needs [providers.{0}.admin] and `keygate admin-key set {0}`); nothing was changed",
                provider.name
            )));
        }
    }
    write(shared, |doc| {
        if body.at_provider {
            ops::owe_at_provider(doc, id)?;
        }
        ops::revoke(
            doc,
            id,
            Some("revoked via admin API".to_owned()),
            body.force,
            crate::unix_now(),
        )
    })?;
    let at_provider = settle_at_provider(shared, id).await?;
    Ok(serde_json::json!({ "revoked": id, "at_provider": at_provider }))
}

async fn burn_key(
    shared: &Shared,
    id: &str,
    body: BurnBody,
) -> Result<serde_json::Value, AdminError> {
    let started = std::time::Instant::now();
    let document = load_document(shared)?;
    let key = document.key(id).ok_or_else(|| {
        AdminError::BadRequest(ops::OpError::UnknownKey(id.to_owned()).to_string())
    })?;
    let provider = &shared.config.providers[&key.provider];
    let given = body
        .secret
        .as_deref()
        .map(ops::upstream_secret)
        .transpose()
        .map_err(|e| AdminError::BadRequest(format!("\"secret\": {e}")))?;
    let mintable = burn::can_mint(&document, provider);
    let needs = burn::needs_replacement(&document, id)?;
    let replacement = match (&given, needs && !body.force, mintable) {
        (_, false, _) => burn::Replacement::Without,
        (Some(secret), true, _) => burn::Replacement::Given(secret),
        (None, true, true) => burn::Replacement::Mint {
            propagation_wait: mint::PROPAGATION_WAIT,
            call_timeout: crate::keys::management::CALL_TIMEOUT,
        },
        (None, true, false) => {
            return Err(burn::BurnError::NeedsReplacement {
                id: id.to_owned(),
                provider: provider.name.clone(),
            }
            .into())
        }
    };
    let minting = matches!(replacement, burn::Replacement::Mint { .. });
    let at_provider = burn::can_clean_up(&document, provider);
    let _lease = rotation_lease(shared)?;
    let request = burn::Burn {
        key_id: id,
        provider,
        replacement,
        verify: body.verify,
        at_provider,
    };
    let result = burn::burn(&ServerVault(shared), &shared.upstream, request, |_| {}).await;
    if minting {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        shared
            .metrics
            .key_mints
            .with_label_values(&[&provider.name, outcome])
            .inc();
    }
    // The burnt key is out of the served ring before this answers.
    let _ = tokio::task::block_in_place(|| shared.reload());
    let burned = result?;
    let out_of_use_ms = started.elapsed().as_millis() as u64;
    let provider_half = settle_at_provider(shared, id).await?;
    Ok(serde_json::json!({
        "burnt": burned.burnt.burnt,
        "replacement": burned.burnt.replacement,
        "replacement_kind": burned.replacement_kind,
        "at_provider": provider_half,
        "took_ms": {
            "replacement": burned.replacement_took.as_millis() as u64,
            "write": burned.write_took.as_millis() as u64,
            "out_of_use": out_of_use_ms,
            "total": started.elapsed().as_millis() as u64,
        },
    }))
}

/// Settles what `id` owes its provider, if anything: `{"result": "deleted"}`
/// or `{"result": "failed", "error": …}` (retried by the key upkeep), or null.
async fn settle_at_provider(shared: &Shared, id: &str) -> Result<serde_json::Value, AdminError> {
    let owed = cleanup::owed(&load_document(shared)?);
    if !owed.iter().any(|o| o == id) {
        return Ok(serde_json::Value::Null);
    }
    let settled =
        cleanup::settle(&ServerVault(shared), &shared.upstream, &shared.config, id).await?;
    let _ = tokio::task::block_in_place(|| shared.reload());
    let (result, error) = match &settled.outcome {
        Ok(word) => (*word, None),
        Err(error) => ("failed", Some(error.clone())),
    };
    shared
        .metrics
        .provider_deletes
        .with_label_values(&[
            settled.provider.as_str(),
            if error.is_none() { "ok" } else { "failed" },
        ])
        .inc();
    Ok(serde_json::json!({
        "result": result,
        "error": error,
        "took_ms": settled.took.as_millis() as u64,
    }))
}

fn load_document(shared: &Shared) -> Result<Document, AdminError> {
    tokio::task::block_in_place(|| {
        let control = shared.control();
        Ok(control.vault().load(control.kek())?.document)
    })
}

fn list_keys(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    let now = crate::unix_now();
    let rotate_after = shared.config.keys.rotate_after.as_secs();
    let snapshot = shared.snapshot();
    let now_ms = crate::keys::health::now_ms();
    Ok(serde_json::Value::Array(
        document
            .keys
            .iter()
            .map(|k| {
                let health = snapshot
                    .rings
                    .get(&k.provider)
                    .and_then(|r| r.keys().iter().find(|rk| *rk.id == *k.id))
                    .map(|rk| &rk.health);
                let mut summary = k.summary(now, rotate_after);
                summary["healthy"] =
                    serde_json::json!(health.map(|h| h.healthy_gauge(now_ms) == 1));
                summary["health"] = serde_json::json!(health.map(|h| h.state_name(now_ms)));
                summary["last_refusal"] =
                    serde_json::json!(health.and_then(|h| h.last_refusal()).as_deref());
                summary
            })
            .collect(),
    ))
}

fn list_clients(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    let now = crate::unix_now();
    Ok(serde_json::Value::Array(
        document
            .clients
            .iter()
            .map(|c| {
                let mut summary = c.summary();
                // This replica's counts, against the limits (the status page's "how close").
                let (requests, tokens, spent) = shared.limits.counted(&c.name, now);
                summary["counted"] = serde_json::json!({
                    "requests_this_minute": requests,
                    "tokens_this_minute": tokens,
                    "tokens_spent": spent,
                });
                summary
            })
            .collect(),
    ))
}

/// `GET /admin/status`: the vault generation served, how the last reload
/// went, and the cluster's state when Redis is configured.
fn status(shared: &Shared) -> serde_json::Value {
    let last_reload = tokio::task::block_in_place(|| shared.control().last_reload().cloned());
    let cluster = shared.cluster.as_ref().map(|c| {
        serde_json::json!({
            "redis": c.endpoint(),
            "shared": c.is_up(),
            "key_health_subscribed": c.is_subscribed(),
        })
    });
    serde_json::json!({
        "vault_generation": shared.snapshot().generation,
        "last_reload": last_reload,
        "cluster": cluster,
    })
}

/// A rotation under way at `provider`: a key waiting to be verified
/// (`pending`), else an old key serving as the fallback until its grace ends.
fn rotation_in_flight(document: &Document, provider: &str, now: u64) -> serde_json::Value {
    let keys = || document.keys.iter().filter(|k| k.provider == provider);
    if let Some(pending) = keys().find(|k| k.state == KeyState::Pending) {
        return serde_json::json!({ "stage": "pending", "key_id": pending.id });
    }
    keys()
        .find(|k| k.state == KeyState::Previous && k.grace_until.is_some_and(|t| t > now))
        .map_or(serde_json::Value::Null, |previous| {
            serde_json::json!({
                "stage": "grace",
                "key_id": previous.id,
                "grace_until": previous.grace_until,
            })
        })
}

/// `GET /admin/providers`: each provider's kind, usable keys, whether
/// keygate can manage its keys (admin table, management credential stored),
/// and the rotation in flight.
fn list_providers(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    let snapshot = shared.snapshot();
    let now = crate::unix_now();
    Ok(serde_json::Value::Array(
        shared
            .config
            .providers
            .values()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "kind": p.kind.as_str(),
                    "default": p.name == shared.config.routing.default,
                    "usable_keys": snapshot.rings.get(&p.name).map_or(0, |r| r.len()),
                    "admin_configured": p.admin.is_some(),
                    "management_credential": document.admin_key(&p.name).is_some(),
                    "rotation": rotation_in_flight(&document, &p.name, now),
                })
            })
            .collect(),
    ))
}

/// `GET /admin/usage?client=NAME&since=7d`: the same totals as `keygate usage --json`.
fn usage(shared: &Shared, query: &str) -> Result<serde_json::Value, AdminError> {
    let mut client = None;
    let mut since = std::time::Duration::from_secs(7 * 86_400);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "client" => client = Some(value.into_owned()),
            "since" => {
                since = humantime::parse_duration(&value)
                    .map_err(|e| AdminError::BadRequest(format!("since: {e}")))?
            }
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter `{name}`"
                )))
            }
        }
    }
    let rows = tokio::task::block_in_place(|| {
        let mut ledger = crate::usage::ledger::Ledger::open(&shared.config.metering.db)?;
        ledger.totals(
            client.as_deref(),
            crate::unix_now().saturating_sub(since.as_secs()),
        )
    })
    .map_err(|e| AdminError::Failed(e.to_string()))?;
    serde_json::to_value(rows).map_err(|e| AdminError::Failed(e.to_string()))
}
