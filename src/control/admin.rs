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
use crate::control::state::Shared;
use crate::keys::{ops, rotate};
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

/// Body of `POST /admin/keys/{provider}` and `…/rotate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    secret: String,
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
            write(shared, |doc| {
                ops::revoke(
                    doc,
                    id,
                    Some("revoked via admin API".to_owned()),
                    revoke.force,
                    crate::unix_now(),
                )
            })?;
            Ok(serde_json::json!({ "revoked": id }))
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
    // serde_json's message names the field, never echoes a value.
    serde_json::from_slice(body).map_err(|e| {
        AdminError::BadRequest(format!(
            "invalid JSON body at line {} column {} ({:?})",
            e.line(),
            e.column(),
            e.classify()
        ))
    })
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
    ops::upstream_secret(&body.secret)
        .map_err(|e| AdminError::BadRequest(format!("\"secret\": {e}")))
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
    let secret = key_secret(&body)?;
    let grace = match &body.grace {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| AdminError::BadRequest(format!("\"grace\": {e}")))?,
        None => shared.config.keys.default_grace,
    };
    let grace_until = crate::unix_now().saturating_add(grace.as_secs());
    let rotation = rotate::Rotation {
        provider: &shared.config.providers[provider],
        secret: &secret,
        label: body.label.clone(),
        replace: body.replace.as_deref(),
        verify_with: body.verify.then_some(&shared.upstream),
        grace_until,
    };
    let result = rotate::run(&ServerVault(shared), rotation, |_| {}).await;
    // Whatever step it stopped at, serve what the vault now says.
    let _ = tokio::task::block_in_place(|| shared.reload());
    let promotion = result?;
    Ok(serde_json::json!({
        "promoted": promotion.promoted,
        "previous": promotion.demoted,
        "retired": promotion.retired,
        "grace_until": grace_until,
    }))
}

/// The server's vault, reached through its single writer's lock, one write
/// at a time (never held across an await).
struct ServerVault<'a>(&'a Shared);

impl rotate::VaultAccess for ServerVault<'_> {
    fn with<R>(&self, write: impl FnOnce(&crate::vault::Vault, &crate::vault::Kek) -> R) -> R {
        tokio::task::block_in_place(|| {
            let control = self.0.control();
            write(control.vault(), control.kek())
        })
    }
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
                summary
            })
            .collect(),
    ))
}

fn list_clients(shared: &Shared) -> Result<serde_json::Value, AdminError> {
    let document = load_document(shared)?;
    Ok(serde_json::Value::Array(
        document.clients.iter().map(|c| c.summary()).collect(),
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
        let ledger = crate::usage::ledger::Ledger::open(&shared.config.metering.db)?;
        ledger.totals(
            client.as_deref(),
            crate::unix_now().saturating_sub(since.as_secs()),
        )
    })
    .map_err(|e| AdminError::Failed(e.to_string()))?;
    serde_json::to_value(rows).map_err(|e| AdminError::Failed(e.to_string()))
}
