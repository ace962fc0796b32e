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

mod key_actions;
mod leaks;
mod views;

use key_actions::{add_key, burn_key, revoke_key, rotate_key};
use views::{list_clients, list_keys, list_providers, status, usage};

use crate::control::state::Shared;
use crate::keys::{burn, mint, ops, rotate};
use crate::proxy::response_body::ResponseBody;
use crate::vault::document::Document;
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
    /// A leak report of a key keygate does not hold.
    #[error("keygate holds no such key (never an upstream key in its vault, nor a client key it issued); nothing was changed")]
    NotHeld,
    #[error("{0}")]
    BadRequest(String),
    /// Another rotation holds the lease, or the vault's state forbids the
    /// change (a rotation half done, the last usable key).
    #[error("{0}")]
    Conflict(String),
    /// The new key of a rotation, refused by the provider when verified
    /// (`key_rejected`) or valid but out of credit (`key_exhausted`).
    #[error("{1}")]
    NewKey(&'static str, String),
    /// Verifying the new key said nothing certain (the provider rate
    /// limited, failing or unreachable): it stays pending.
    #[error("{0}")]
    Unverified(String),
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
            AdminError::NotHeld => (StatusCode::NOT_FOUND, "not_a_held_key"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::NewKey(code, _) => (StatusCode::UNPROCESSABLE_ENTITY, code),
            AdminError::Unverified(_) => (StatusCode::BAD_GATEWAY, "verification_inconclusive"),
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
            // What the request named or sent is wrong (the CLI's usage errors).
            ops::OpError::UnknownKey(_)
            | ops::OpError::MalformedSecret
            | ops::OpError::NotCurrent(_)
            | ops::OpError::AmbiguousReplace { .. } => AdminError::BadRequest(error.to_string()),
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
            other => verdict(&other, other.to_string())
                .unwrap_or_else(|| AdminError::Failed(other.to_string())),
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
                mint::MintRotateError::Rotate(ref rotate) => verdict(rotate, error.to_string())
                    .unwrap_or_else(|| AdminError::Conflict(error.to_string())),
                _ => AdminError::Conflict(error.to_string()),
            },
            other @ burn::BurnError::NeedsReplacement { .. } => {
                AdminError::BadRequest(other.to_string())
            }
        }
    }
}

/// What the provider said of a new key when it was verified, as the answer
/// it means (`message` is the whole error's); `None` for any other failure.
fn verdict(error: &rotate::RotateError, message: String) -> Option<AdminError> {
    match error {
        rotate::RotateError::Rejected { .. } => Some(AdminError::NewKey("key_rejected", message)),
        rotate::RotateError::Exhausted { .. } => Some(AdminError::NewKey("key_exhausted", message)),
        rotate::RotateError::Inconclusive { .. } => Some(AdminError::Unverified(message)),
        _ => None,
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

/// Burns `id` exactly as `POST /admin/keys/{id}/burn` does with an empty
/// body (a minted replacement, verified) — for the checks that act on
/// their own (outside use). `Err`: why not, in words.
pub(crate) async fn burn_as_admin(shared: &Shared, id: &str) -> Result<serde_json::Value, String> {
    let body = BurnBody {
        secret: None,
        force: false,
        verify: true,
    };
    key_actions::burn_key(shared, id, body)
        .await
        .map_err(|e| e.to_string())
}

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
        // A wrong token costs its sender a quarter second: guessing, one
        // connection after another, gets nowhere.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        return Err(AdminError::Unauthorized);
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = read_body(request).await?;
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["keys"]) => list_keys(shared),
        (Method::GET, ["clients"]) => list_clients(shared, &query),
        (Method::GET, ["providers"]) => list_providers(shared),
        (Method::GET, ["activity"]) => Ok(shared
            .key_events
            .recent
            .to_json(crate::keys::recent::Recent::this_minute())),
        (Method::GET, ["status"]) => Ok(status(shared)),
        (Method::GET, ["usage"]) => usage(shared, &query),
        (Method::GET, ["events"]) => views::events(shared, &query).await,
        (Method::GET, ["inventory"]) => views::inventory(shared, &query).await,
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
        (Method::POST, ["leaks"]) => leaks::report(shared, parse(&body)?).await,
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

/// The vault's document as it is now (blocking; not for the request path).
fn load_document(shared: &Shared) -> Result<Document, AdminError> {
    tokio::task::block_in_place(|| {
        let control = shared.control();
        Ok(control.vault().load(control.kek())?.document)
    })
}

/// A whole answer of `status` with `body` of `content_type`.
pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
