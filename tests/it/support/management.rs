//! A mock of the providers' management APIs (docs/design.md §12), with their
//! real paths and answer shapes:
//! - OpenAI's Admin API: `POST|GET /v1/organization/projects/{project}/service_accounts`,
//!   `DELETE …/service_accounts/{id}`, `GET …/api_keys` (`redacted_value`),
//!   `DELETE …/api_keys/{id}`; lists as `{"object":"list","data":…,"has_more"}`.
//! - xAI's Management API: `POST|GET /auth/teams/{team}/api-keys`
//!   (`apiKeys`, `redactedApiKey`), `DELETE /auth/api-keys/{apiKeyId}`.
//! - OpenRouter's provisioning API: `POST|GET /api/v1/keys` (`data`, `label`),
//!   `DELETE /api/v1/keys/{hash}`.
//! - Anthropic's Admin API (`x-api-key`, `anthropic-version`): `GET
//!   /v1/organizations/api_keys` (`partial_key_hint`), `POST
//!   /v1/organizations/api_keys/{id}` `{"status":"inactive"}`; no creation.
//!
//! It checks the management credential, creates a fresh key per call and
//! makes the inference [`Mock`](super::mock::Mock) accept it (optionally only
//! after a delay, like a real key propagating) and refuse it once deleted or
//! disabled; keys made "in the console" can be seeded; failures are scripted
//! per kind of call, with each provider's error body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::toml_string;
use super::mock::{KeyAdder, Seen};
use super::recording::{full, Recording};
use super::Keygate;

/// An OpenAI admin key and an xAI management key (obviously fake).
pub const OPENAI_ADMIN: &str = "sk-admin-test-Mt4Rw8Ky2Lp6Qz0Xc3Vb7Nd1";
pub const XAI_ADMIN: &str = "xai-mgmt-test-Fj5Gh9Tk3Wq7Ls1Pz4Xn8Cd2";
/// An OpenRouter provisioning key (obviously fake).
pub const OPENROUTER_ADMIN: &str = "sk-or-v1-prov-test-Wd3Ks7Hb1Nz5Qy9Jt2Ue6";

/// `[providers.NAME.admin]` pointing at a management mock playing `api`.
pub fn admin_table(provider: &str, api: Api, url: &str) -> String {
    let id = match api {
        Api::OpenAi => "project = \"proj_test\"\n",
        Api::Xai => "team = \"team-test\"\n",
        Api::OpenRouter | Api::Anthropic => "",
    };
    format!(
        "[providers.{provider}.admin]\n{id}url = {}\n",
        toml_string(url)
    )
}

/// `printf ADMIN | keygate admin-key set PROVIDER` (secret registered).
pub fn set_admin(kg: &Keygate, provider: &str, admin: &str) {
    kg.register_secret(admin);
    kg.run_with(&["admin-key", "set", provider], Some(admin), &[])
        .assert_ok("admin-key set");
}

/// A keygate (no server) with [`OPENAI_KEY`] whose openai provider mints at
/// `management` (an OpenAI management mock); created keys are accepted by
/// the returned inference mock.
pub async fn minting_keygate(management: &Management) -> (Keygate, super::Mock) {
    let inference = super::Mock::start(&[super::OPENAI_KEY], super::mock::AuthStyle::Bearer).await;
    let builder = super::KeygateBuilder::new()
        .provider("openai", &inference.url(), "bearer")
        .extra(&admin_table("openai", Api::OpenAi, &management.url()));
    let kg = Keygate::new(&builder);
    kg.vault_init();
    kg.add_key("openai", super::OPENAI_KEY);
    management.connect(inference.key_adder());
    set_admin(&kg, "openai", OPENAI_ADMIN);
    (kg, inference)
}

/// Which provider's management API it plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Xai,
    OpenRouter,
    Anthropic,
}

/// One key the mock holds (created by keygate, or seeded as made by hand).
#[derive(Clone, Debug)]
pub struct Created {
    pub name: String,
    pub provider_id: String,
    pub secret: String,
    /// Deleted (Anthropic: set inactive).
    pub deleted: bool,
    /// Made through the creation call (not seeded).
    pub minted: bool,
}

/// Which calls a scripted failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calls {
    All,
    Creates,
    Lists,
    Deletes,
    /// A listing's pages after the first (`after=` in the query).
    LaterPages,
    /// The per-key usage report.
    Usage,
}

#[derive(Default)]
struct Script {
    /// OpenAI's API keys are listed this many to a page (default: all).
    page_size: Option<usize>,
    /// Answer this status (with a provider-style error body) to these calls.
    fail: Option<(Calls, u16)>,
    /// A failure's message quotes this (a still-live key, as a provider
    /// that names the key it could not delete would).
    quote: Option<String>,
    /// Answer these calls only after this long.
    hang: Option<(Calls, Duration)>,
    /// How long a created key takes to be accepted by the inference mock.
    propagation: Duration,
    keys: Vec<Created>,
    /// The inference mock that accepts created keys ([`Management::connect`]).
    adder: Option<KeyAdder>,
}

/// A running management API mock.
pub struct Management {
    pub server: Recording,
    script: Arc<Mutex<Script>>,
}

impl Management {
    /// Plays `api` for `admin_secret` (project `proj_test`, team `team-test`).
    pub async fn start(api: Api, admin_secret: &str) -> Management {
        let script = Arc::new(Mutex::new(Script::default()));
        let state = script.clone();
        let admin = admin_secret.to_owned();
        let server = Recording::start(move |seen: Seen| {
            let (state, admin) = (state.clone(), admin.clone());
            async move {
                // The provider acts at once; only its answer is slow (so a
                // client that gives up still leaves the key created).
                let hang = state
                    .lock()
                    .unwrap()
                    .hang
                    .filter(|(calls, _)| hits(*calls, &seen));
                let response = answer(api, &state, &admin, seen);
                if let Some((_, delay)) = hang {
                    tokio::time::sleep(delay).await;
                }
                response
            }
        })
        .await;
        Management { server, script }
    }

    /// Keys created from now on are accepted by the inference mock behind
    /// `adder`, and refused once deleted.
    pub fn connect(&self, adder: KeyAdder) {
        self.script.lock().unwrap().adder = Some(adder);
    }

    /// `http://127.0.0.1:PORT`, for `[providers.NAME.admin] url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// From now on, answer every call `status` with the provider's error body.
    pub fn fail_with(&self, status: u16) {
        self.fail(Calls::All, status);
    }

    /// From now on, answer `calls` with `status`.
    pub fn fail(&self, calls: Calls, status: u16) {
        self.script.lock().unwrap().fail = Some((calls, status));
    }

    /// From now on, scripted failures quote `text` in their message.
    pub fn quote_in_failures(&self, text: &str) {
        self.script.lock().unwrap().quote = Some(text.to_owned());
    }

    /// Answer normally again.
    pub fn heal(&self) {
        let mut script = self.script.lock().unwrap();
        script.fail = None;
        script.quote = None;
        script.hang = None;
    }

    /// From now on, answer `calls` only after `delay`.
    pub fn hang(&self, calls: Calls, delay: Duration) {
        self.script.lock().unwrap().hang = Some((calls, delay));
    }

    /// OpenAI's project API keys are listed `n` to a page (`has_more`,
    /// `last_id`, `after=`), as the real API pages them.
    pub fn page_size(&self, n: usize) {
        self.script.lock().unwrap().page_size = Some(n);
    }

    /// Created keys are accepted by the inference mock only after `delay`.
    pub fn set_propagation(&self, delay: Duration) {
        self.script.lock().unwrap().propagation = delay;
    }

    /// A key made by hand in the provider's console: listed with its hint.
    pub fn seed(&self, name: &str, provider_id: &str, secret: &str) {
        self.script.lock().unwrap().keys.push(Created {
            name: name.to_owned(),
            provider_id: provider_id.to_owned(),
            secret: secret.to_owned(),
            deleted: false,
            minted: false,
        });
    }

    /// Every key created through the API so far (deleted or not).
    pub fn created(&self) -> Vec<Created> {
        let script = self.script.lock().unwrap();
        script.keys.iter().filter(|k| k.minted).cloned().collect()
    }

    /// Every key the provider still holds (created or seeded, not deleted).
    pub fn live(&self) -> Vec<Created> {
        let script = self.script.lock().unwrap();
        script.keys.iter().filter(|k| !k.deleted).cloned().collect()
    }

    /// True once `provider_id` was deleted (disabled).
    pub fn is_deleted(&self, provider_id: &str) -> bool {
        let script = self.script.lock().unwrap();
        script
            .keys
            .iter()
            .any(|k| k.provider_id == provider_id && k.deleted)
    }

    /// The delete (disable) calls seen so far.
    pub fn removals(&self) -> Vec<Seen> {
        self.server
            .requests()
            .into_iter()
            .filter(is_removal)
            .collect()
    }
}

fn is_removal(seen: &Seen) -> bool {
    seen.method == hyper::Method::DELETE
        || (seen.method == hyper::Method::POST
            && seen.uri.starts_with("/v1/organizations/api_keys/"))
}

fn hits(calls: Calls, seen: &Seen) -> bool {
    match calls {
        Calls::All => true,
        Calls::Creates => seen.method == hyper::Method::POST && !is_removal(seen),
        Calls::Lists => seen.method == hyper::Method::GET,
        Calls::Deletes => is_removal(seen),
        Calls::LaterPages => seen.method == hyper::Method::GET && seen.uri.contains("after="),
        Calls::Usage => seen.uri.contains("/usage"),
    }
}

/// The redacted form each provider shows of a key.
fn hint(api: Api, secret: &str) -> String {
    let (start, end) = match api {
        // "sk-abc...wxyz" style; OpenRouter's label "sk-or-v1-0e6...1c96".
        Api::OpenAi => (&secret[..6], &secret[secret.len() - 4..]),
        Api::Xai => (&secret[..4], &secret[secret.len() - 4..]),
        Api::OpenRouter => (&secret[..12], &secret[secret.len() - 4..]),
        // "sk-ant-api03-R2D...igAA".
        Api::Anthropic => (&secret[..16], &secret[secret.len() - 4..]),
    };
    format!("{start}...{end}")
}

fn error_body(api: Api, status: u16, message: &str) -> serde_json::Value {
    match api {
        // OpenAI's error object, as its API and SDK error types carry it.
        Api::OpenAi => {
            serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
        }
        // xAI answers flat, its `code` the gRPC status's description
        // (as its inference API does: "Client specified an invalid argument").
        Api::Xai => {
            let code = match status {
                400 => "Client specified an invalid argument",
                401 => "The request does not have valid authentication credentials",
                403 => "The caller does not have permission to execute the specified operation",
                404 => "Some requested entity was not found",
                429 => "Some resource has been exhausted",
                _ => "Internal error",
            };
            serde_json::json!({"code": code, "error": message})
        }
        Api::OpenRouter => serde_json::json!({"error": {"code": status, "message": message}}),
        Api::Anthropic => {
            let kind = match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                500 => "api_error",
                _ => "invalid_request_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
}

/// The path of the call without its query.
fn path_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

fn answer(
    api: Api,
    state: &Mutex<Script>,
    admin: &str,
    seen: Seen,
) -> hyper::Response<super::recording::Body> {
    let json = [("content-type", "application/json")];
    let error = |status: u16, message: &str| {
        full(status, &json, error_body(api, status, message).to_string())
    };
    let authorized = match api {
        Api::Anthropic => {
            seen.header("x-api-key").as_deref() == Some(admin)
                && seen.header("anthropic-version").is_some()
        }
        _ => seen.header("authorization") == Some(format!("Bearer {admin}")),
    };
    if !authorized {
        return error(401, "Invalid admin key provided");
    }
    let mut script = state.lock().unwrap();
    if let Some((calls, status)) = script.fail {
        if hits(calls, &seen) {
            // Real APIs echo a masked credential in some errors: keygate must scrub it.
            let message = match status {
                401 => format!("Incorrect API key provided: {admin}"),
                403 => "You do not have permission to manage API keys".to_owned(),
                429 => "Rate limit reached for requests".to_owned(),
                _ => "The server had an error processing your request".to_owned(),
            };
            let message = match &script.quote {
                Some(quoted) => format!("{message} (key {quoted})"),
                None => message,
            };
            return error(status, &message);
        }
    }
    let path = path_of(&seen.uri).to_owned();
    let method = seen.method.clone();
    let live = |script: &Script| -> Vec<Created> {
        script.keys.iter().filter(|k| !k.deleted).cloned().collect()
    };
    let (collection, item_prefix) = match api {
        Api::OpenAi => (
            "/v1/organization/projects/proj_test/service_accounts",
            "/v1/organization/projects/proj_test/service_accounts/",
        ),
        Api::Xai => ("/auth/teams/team-test/api-keys", "/auth/api-keys/"),
        Api::OpenRouter => ("/api/v1/keys", "/api/v1/keys/"),
        Api::Anthropic => ("/v1/organizations/api_keys", "/v1/organizations/api_keys/"),
    };
    let openai_keys = "/v1/organization/projects/proj_test/api_keys";
    // OpenAI's completions usage per API key: one bucket for the window,
    // what the inference mock served with each key (keygate's traffic and
    // anyone else's alike), as the provider attributes it.
    if api == Api::OpenAi
        && method == hyper::Method::GET
        && path == "/v1/organization/usage/completions"
    {
        if !seen.uri.contains("group_by=api_key_id") {
            return error(400, "expected group_by=api_key_id in this test");
        }
        let query = |name: &str| {
            seen.uri
                .split(&format!("{name}="))
                .nth(1)
                .and_then(|v| v.split('&').next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        // All of the mock's traffic happened just now: a window that ends
        // before now reports none of it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let adder = script
            .adder
            .clone()
            .filter(|_| query("end_time").is_some_and(|end| end > now));
        let results: Vec<serde_json::Value> =
            script
                .keys
                .iter()
                .filter_map(|k| {
                    let (requests, input, output) = adder.as_ref()?.served(&k.secret);
                    let id = if k.minted {
                        format!("key_{}", k.provider_id)
                    } else {
                        k.provider_id.clone()
                    };
                    (requests > 0).then(|| serde_json::json!({
                    "object": "organization.usage.completions.result",
                    "input_tokens": input, "output_tokens": output, "input_cached_tokens": 0,
                    "input_audio_tokens": 0, "output_audio_tokens": 0,
                    "num_model_requests": requests, "project_id": null, "user_id": null,
                    "api_key_id": id, "model": null, "batch": null
                }))
                })
                .collect();
        let body = serde_json::json!({
            "object": "page",
            "data": [{"object": "bucket", "start_time": query("start_time"), "end_time": query("end_time"), "results": results}],
            "has_more": false,
            "next_page": null
        });
        return full(200, &json, body.to_string());
    }
    // Listing.
    if method == hyper::Method::GET
        && (path == collection || (api == Api::OpenAi && path == openai_keys))
    {
        let keys = live(&script);
        let body = match api {
            Api::OpenAi if path == collection => serde_json::json!({
                "object": "list",
                "data": keys.iter().filter(|k| k.minted).map(|k| serde_json::json!({
                    "object": "organization.project.service_account",
                    "id": k.provider_id, "name": k.name, "role": "member", "created_at": 1_711_471_533
                })).collect::<Vec<_>>(),
                "first_id": keys.first().map(|k| k.provider_id.clone()),
                "last_id": keys.last().map(|k| k.provider_id.clone()),
                "has_more": false
            }),
            Api::OpenAi => {
                // Every project API key: those of users (made in the console)
                // and those of service accounts (what keygate mints), paged.
                let rows: Vec<serde_json::Value> = keys.iter().map(|k| {
                    let (id, name, owner) = if k.minted {
                        (format!("key_{}", k.provider_id), "Secret Key".to_owned(), serde_json::json!({"type": "service_account", "service_account": {"object": "organization.project.service_account", "id": k.provider_id, "name": k.name, "role": "member", "created_at": 1_711_471_533}}))
                    } else {
                        (k.provider_id.clone(), k.name.clone(), serde_json::json!({"type": "user", "user": {"object": "organization.project.user", "id": "user_abc", "name": "First Last", "email": "user@example.com", "role": "owner", "added_at": 1_711_471_533}}))
                    };
                    serde_json::json!({
                        "object": "organization.project.api_key",
                        "redacted_value": hint(api, &k.secret), "name": name,
                        "created_at": 1_711_471_533, "last_used_at": 1_711_471_534,
                        "id": id, "owner": owner
                    })
                }).collect();
                let after = seen
                    .uri
                    .split("after=")
                    .nth(1)
                    .map(|a| a.split('&').next().unwrap_or(a).to_owned());
                let start = after.map_or(0, |a| {
                    rows.iter()
                        .position(|r| r["id"] == a.as_str())
                        .map_or(rows.len(), |i| i + 1)
                });
                let size = script.page_size.unwrap_or(usize::MAX);
                let page: Vec<serde_json::Value> =
                    rows.iter().skip(start).take(size).cloned().collect();
                let has_more = start + page.len() < rows.len();
                serde_json::json!({
                    "object": "list",
                    "data": page,
                    "first_id": page.first().map(|r| r["id"].clone()),
                    "last_id": page.last().map(|r| r["id"].clone()),
                    "has_more": has_more
                })
            }
            Api::Xai => serde_json::json!({
                "apiKeys": keys.iter().map(|k| serde_json::json!({
                    "redactedApiKey": hint(api, &k.secret), "userId": "user-1", "name": k.name,
                    "createTime": "2026-01-01T00:00:00Z", "modifyTime": "2026-01-01T00:00:00Z",
                    "modifiedBy": "user-1", "teamId": "team-test",
                    "acls": ["api-key:model:*", "api-key:endpoint:*"], "apiKeyId": k.provider_id,
                    "teamBlocked": false, "apiKeyBlocked": false, "apiKeyDisabled": false
                })).collect::<Vec<_>>()
            }),
            Api::OpenRouter => serde_json::json!({
                "data": keys.iter().map(|k| serde_json::json!({
                    "hash": k.provider_id, "name": k.name, "label": hint(api, &k.secret),
                    "disabled": false, "limit": null, "usage": 0,
                    "created_at": "2026-01-01T00:00:00Z", "updated_at": null
                })).collect::<Vec<_>>()
            }),
            Api::Anthropic => {
                if !seen.uri.contains("status=active") {
                    return error(400, "expected status=active in this test");
                }
                serde_json::json!({
                    "data": keys.iter().map(|k| serde_json::json!({
                        "id": k.provider_id, "type": "api_key", "name": k.name,
                        "workspace_id": null, "created_at": "2026-01-01T00:00:00Z",
                        "created_by": {"id": "user_01", "type": "user"},
                        "partial_key_hint": hint(api, &k.secret), "status": "active"
                    })).collect::<Vec<_>>(),
                    "has_more": false, "first_id": null, "last_id": null
                })
            }
        };
        return full(200, &json, body.to_string());
    }
    // Deleting (Anthropic: disabling).
    let removal_target = if api == Api::OpenAi && path.starts_with(&format!("{openai_keys}/")) {
        Some((&path[openai_keys.len() + 1..], false))
    } else {
        path.strip_prefix(item_prefix).map(|id| (id, true))
    };
    if let Some((id, minted_resource)) = removal_target {
        let is_removal = match api {
            Api::Anthropic => {
                method == hyper::Method::POST
                    && serde_json::from_slice::<serde_json::Value>(&seen.body).ok()
                        == Some(serde_json::json!({"status": "inactive"}))
            }
            _ => method == hyper::Method::DELETE,
        };
        if !is_removal {
            return error(400, "unexpected call");
        }
        let adder = script.adder.clone();
        let Some(key) = script.keys.iter_mut().find(|k| {
            k.provider_id == id
                && !k.deleted
                // OpenAI: a service account is deleted under service_accounts,
                // a person's key under api_keys.
                && (api != Api::OpenAi || k.minted == minted_resource)
        }) else {
            return error(404, &format!("No such key: {id}"));
        };
        key.deleted = true;
        if let Some(adder) = adder {
            adder.remove(&key.secret);
        }
        let body = match api {
            Api::OpenAi if minted_resource => {
                serde_json::json!({"object": "organization.project.service_account.deleted", "id": id, "deleted": true})
            }
            Api::OpenAi => {
                serde_json::json!({"object": "organization.project.api_key.deleted", "id": id, "deleted": true})
            }
            Api::Xai => serde_json::json!({}),
            Api::OpenRouter => serde_json::json!({"deleted": true}),
            Api::Anthropic => {
                serde_json::json!({"id": id, "type": "api_key", "name": key.name, "partial_key_hint": hint(api, &key.secret), "status": "inactive"})
            }
        };
        return full(200, &json, body.to_string());
    }
    if method != hyper::Method::POST || path != collection || api == Api::Anthropic {
        return error(404, "Not found");
    }
    // Creating.
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return error(400, "name is required");
    };
    if api == Api::Xai
        && body["acls"] != serde_json::json!(["api-key:model:*", "api-key:endpoint:*"])
    {
        return error(400, "acls missing");
    }
    let n = script.keys.len() + 1;
    let (secret, provider_id) = match api {
        Api::OpenAi => (
            format!("sk-svcacct-test-Qp4Lw8Zr2Ny6Tc0Vb3-mint{n:02}"),
            format!("svc_acct_test{n}"),
        ),
        Api::Xai => (
            format!("xai-test-Hk5Ds9Fa1Jq7Wm3Re6Uo-mint{n:02}"),
            format!("apikey-test-{n}"),
        ),
        Api::OpenRouter | Api::Anthropic => (
            format!("sk-or-v1-test-Gz2Xc8Vb4Nm6Lk0Jh-mint{n:02}"),
            format!("hash{n}abcdef"),
        ),
    };
    script.keys.push(Created {
        name: name.clone(),
        provider_id: provider_id.clone(),
        secret: secret.clone(),
        deleted: false,
        minted: true,
    });
    let delay = script.propagation;
    if let Some(adder) = script.adder.clone() {
        let secret = secret.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            adder.add(&secret);
        });
    }
    drop(script);
    let body = match api {
        Api::OpenAi => serde_json::json!({
            "object": "organization.project.service_account",
            "id": provider_id,
            "name": name,
            "role": "member",
            "created_at": 1_711_471_533,
            "api_key": {
                "object": "organization.project.service_account.api_key",
                "value": secret,
                "name": "Secret Key",
                "created_at": 1_711_471_533,
                "id": "key_abc"
            }
        }),
        Api::Xai => serde_json::json!({
            "redactedApiKey": hint(api, &secret),
            "apiKey": secret,
            "apiKeyId": provider_id,
            "name": name,
            "acls": ["api-key:model:*", "api-key:endpoint:*"],
            "disabled": false
        }),
        Api::OpenRouter | Api::Anthropic => serde_json::json!({
            "data": {"hash": provider_id, "name": name, "label": hint(api, &secret), "disabled": false, "limit": null},
            "key": secret
        }),
    };
    full(201, &json, body.to_string())
}
