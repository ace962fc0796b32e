//! A mock of the providers' management APIs (docs/design.md §12), with their
//! real paths and answer shapes: OpenAI's
//! `POST /v1/organization/projects/{project}/service_accounts`, xAI's
//! `POST /auth/teams/{team}/api-keys`, OpenRouter's `POST /api/v1/keys`. It
//! checks the management credential, creates a fresh key per call and makes
//! the inference [`Mock`](super::mock::Mock) accept it (optionally only after a
//! delay, like a real key propagating), or answers a scripted failure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::mock::{KeyAdder, Seen};
use super::recording::{full, Recording};

/// Which provider's management API it plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Xai,
    OpenRouter,
}

/// One key the mock created.
#[derive(Clone, Debug)]
pub struct Created {
    pub name: String,
    pub provider_id: String,
    pub secret: String,
}

#[derive(Default)]
struct Script {
    /// Answer this status (with a provider-style error body) instead of creating.
    fail: Option<u16>,
    /// How long a created key takes to be accepted by the inference mock.
    propagation: Duration,
    created: Vec<Created>,
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
        let admin = format!("Bearer {admin_secret}");
        let server = Recording::start(move |seen: Seen| {
            let (state, admin) = (state.clone(), admin.clone());
            async move { answer(api, &state, &admin, seen) }
        })
        .await;
        Management { server, script }
    }

    /// Keys created from now on are accepted by the inference mock behind `adder`.
    pub fn connect(&self, adder: KeyAdder) {
        self.script.lock().unwrap().adder = Some(adder);
    }

    /// `http://127.0.0.1:PORT`, for `[providers.NAME.admin] url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// From now on, answer `status` with the provider's error body.
    pub fn fail_with(&self, status: u16) {
        self.script.lock().unwrap().fail = Some(status);
    }

    /// Created keys are accepted by the inference mock only after `delay`.
    pub fn set_propagation(&self, delay: Duration) {
        self.script.lock().unwrap().propagation = delay;
    }

    /// Every key created so far.
    pub fn created(&self) -> Vec<Created> {
        self.script.lock().unwrap().created.clone()
    }
}

fn answer(
    api: Api,
    state: &Mutex<Script>,
    admin: &str,
    seen: Seen,
) -> hyper::Response<super::recording::Body> {
    let json = [("content-type", "application/json")];
    let error = |status: u16, message: &str| {
        let body = match api {
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
        };
        full(status, &json, body.to_string())
    };
    let path_ok = match api {
        Api::OpenAi => seen.uri == "/v1/organization/projects/proj_test/service_accounts",
        Api::Xai => seen.uri == "/auth/teams/team-test/api-keys",
        Api::OpenRouter => seen.uri == "/api/v1/keys",
    };
    if seen.method != hyper::Method::POST || !path_ok {
        return error(404, "Not found");
    }
    if seen.header("authorization").as_deref() != Some(admin) {
        return error(401, "Invalid admin key provided");
    }
    let mut script = state.lock().unwrap();
    if let Some(status) = script.fail {
        // Real APIs echo a masked credential in some errors: keygate must scrub it.
        let fragment = &admin["Bearer ".len()..];
        let message = match status {
            401 => format!("Incorrect API key provided: {}", fragment),
            403 => "You do not have permission to create service accounts".to_owned(),
            429 => "Rate limit reached for requests".to_owned(),
            _ => "The server had an error processing your request".to_owned(),
        };
        return error(status, &message);
    }
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return error(400, "name is required");
    };
    if api == Api::Xai
        && body["acls"] != serde_json::json!(["api-key:model:*", "api-key:endpoint:*"])
    {
        return error(400, "acls missing");
    }
    let n = script.created.len() + 1;
    let (secret, provider_id) = match api {
        Api::OpenAi => (
            format!("sk-svcacct-test-mint{n}-Qp4Lw8Zr2Ny6Tc0Vb3"),
            format!("svc_acct_test{n}"),
        ),
        Api::Xai => (
            format!("xai-test-mint{n}-Hk5Ds9Fa1Jq7Wm3Re6Uo"),
            format!("apikey-test-{n}"),
        ),
        Api::OpenRouter => (
            format!("sk-or-v1-test-mint{n}-Gz2Xc8Vb4Nm6Lk0Jh"),
            format!("hash{n}abcdef"),
        ),
    };
    let created = Created {
        name: name.clone(),
        provider_id: provider_id.clone(),
        secret: secret.clone(),
    };
    script.created.push(created);
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
            "redactedApiKey": "xai-…",
            "apiKey": secret,
            "apiKeyId": provider_id,
            "name": name,
            "acls": ["api-key:model:*", "api-key:endpoint:*"],
            "disabled": false
        }),
        Api::OpenRouter => serde_json::json!({
            "data": {"hash": provider_id, "name": name, "label": "sk-or-v1-…", "disabled": false, "limit": null},
            "key": secret
        }),
    };
    full(201, &json, body.to_string())
}
