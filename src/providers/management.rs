//! What is known about each provider's *management* API (docs/design.md §12),
//! in one place: which request creates an inference key and where the answer
//! carries it, which lists the keys (by the name keygate gave them, or by the
//! hint the provider shows of a key), and which deletes or disables one.
//! Pure: it builds requests and reads answers; `keys::management` sends them.
//!
//! The shapes are the providers' documented ones: OpenAI's Admin API
//! (project service accounts, whose creation answers the key in
//! `api_key.value`; project API keys listed with `redacted_value`), xAI's
//! Management API (`apiKey`/`apiKeyId`, `redactedApiKey`), OpenRouter's
//! provisioning API (`key`, `data.hash`, `label`) and Anthropic's Admin API
//! (no creation; keys listed with `partial_key_hint`, disabled with
//! `{"status":"inactive"}`).

use serde::Deserialize;

use super::Kind;
use crate::config::AdminApi;

/// One call to a management API: method, path under the API's URL, JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `GET`, `POST` or `DELETE`.
    pub method: http::Method,
    /// Path and query under `[providers.NAME.admin] url`.
    pub path: String,
    /// The JSON body, if any.
    pub body: Option<serde_json::Value>,
}

/// How the management credential is presented, per kind.
pub fn auth_headers(kind: Kind) -> AuthHeaders {
    match kind {
        Kind::Anthropic => AuthHeaders {
            header: "x-api-key",
            bearer: false,
            extra: &[("anthropic-version", "2023-06-01")],
        },
        _ => AuthHeaders {
            header: "authorization",
            bearer: true,
            extra: &[],
        },
    }
}

/// The header carrying the management credential and what goes with it.
pub struct AuthHeaders {
    /// Header name.
    pub header: &'static str,
    /// `Bearer ` before the credential.
    pub bearer: bool,
    /// Other headers the API requires.
    pub extra: &'static [(&'static str, &'static str)],
}

/// True for kinds whose management API can create an inference key.
pub fn can_create(kind: Kind) -> bool {
    matches!(kind, Kind::OpenAi | Kind::Xai | Kind::OpenRouter)
}

/// True for kinds keygate can delete or disable a key at.
pub fn can_remove(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::OpenAi | Kind::Xai | Kind::OpenRouter | Kind::Anthropic
    )
}

/// What removing a key does at this kind: `"deleted"` or `"disabled"`.
pub fn removal_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Anthropic => "disabled",
        _ => "deleted",
    }
}

fn project(api: &AdminApi) -> &str {
    api.project.as_deref().unwrap_or_default()
}

fn team(api: &AdminApi) -> &str {
    api.team.as_deref().unwrap_or_default()
}

/// The call that creates an inference key named `name`, and what the answer
/// must hold (for the error when it does not). `None`: the kind cannot.
pub fn create(kind: Kind, api: &AdminApi, name: &str) -> Option<(Call, &'static str)> {
    let (path, body, expected) = match kind {
        Kind::OpenAi => (
            format!(
                "/v1/organization/projects/{}/service_accounts",
                project(api)
            ),
            serde_json::json!({ "name": name }),
            "api_key.value and id",
        ),
        Kind::Xai => (
            format!("/auth/teams/{}/api-keys", team(api)),
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
        Kind::Anthropic | Kind::Azure | Kind::Generic => return None,
    };
    Some((
        Call {
            method: http::Method::POST,
            path,
            body: Some(body),
        },
        expected,
    ))
}

/// The new key and the provider's id for it, from a 2xx creation answer.
pub fn read_created(kind: Kind, body: &[u8]) -> Option<(String, String)> {
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
    let (secret, id) = match kind {
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
    (!id.is_empty()).then_some((secret, id))
}

/// Which of a provider's keys a listing is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// What keygate creates, with the names it gave (OpenAI: the project's
    /// service accounts), to find orphans of a crashed rotation.
    Minted,
    /// Every inference key with the hint the provider shows of it (OpenAI:
    /// the project's API keys), to find a key keygate did not create.
    Hinted,
}

/// One key (or service account) in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The provider's id.
    pub id: String,
    /// Its name, if the provider keeps one.
    pub name: Option<String>,
    /// The redacted form the provider shows (`sk-abc...wxyz`), if any.
    pub hint: Option<String>,
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Default)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Listed>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

/// The call that lists one page (`after`: a previous [`Page::next`]).
/// `None`: the kind has no such listing.
pub fn list(kind: Kind, api: &AdminApi, listing: Listing, after: Option<&str>) -> Option<Call> {
    let cursor = |name: &str| {
        after
            .map(|a| {
                format!(
                    "&{name}={}",
                    form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default()
    };
    let path = match (kind, listing) {
        (Kind::OpenAi, Listing::Minted) => format!(
            "/v1/organization/projects/{}/service_accounts?limit=100{}",
            project(api),
            cursor("after")
        ),
        (Kind::OpenAi, Listing::Hinted) => format!(
            "/v1/organization/projects/{}/api_keys?limit=100{}",
            project(api),
            cursor("after")
        ),
        (Kind::Xai, _) => format!("/auth/teams/{}/api-keys", team(api)),
        (Kind::OpenRouter, _) => match after {
            Some(offset) => format!("/api/v1/keys?offset={offset}"),
            None => "/api/v1/keys".to_owned(),
        },
        (Kind::Anthropic, Listing::Hinted) => {
            format!(
                "/v1/organizations/api_keys?limit=100&status=active{}",
                cursor("after_id")
            )
        }
        _ => return None,
    };
    Some(Call {
        method: http::Method::GET,
        path,
        body: None,
    })
}

/// Reads one page of a listing answer.
pub fn read_list(kind: Kind, listing: Listing, body: &[u8], offset: usize) -> Option<Page> {
    #[derive(Deserialize)]
    struct OpenAiItem {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        redacted_value: Option<String>,
    }
    #[derive(Deserialize)]
    struct OpenAiList {
        data: Vec<OpenAiItem>,
        #[serde(default)]
        has_more: bool,
        #[serde(default)]
        last_id: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct XaiItem {
        api_key_id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        redacted_api_key: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct XaiList {
        api_keys: Vec<XaiItem>,
    }
    #[derive(Deserialize)]
    struct OpenRouterItem {
        hash: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        label: Option<String>,
    }
    #[derive(Deserialize)]
    struct OpenRouterList {
        data: Vec<OpenRouterItem>,
    }
    #[derive(Deserialize)]
    struct AnthropicItem {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        partial_key_hint: Option<String>,
    }
    #[derive(Deserialize)]
    struct AnthropicList {
        data: Vec<AnthropicItem>,
        #[serde(default)]
        has_more: bool,
        #[serde(default)]
        last_id: Option<String>,
    }
    let page = match kind {
        Kind::OpenAi => {
            let l: OpenAiList = serde_json::from_slice(body).ok()?;
            Page {
                next: l.last_id.filter(|_| l.has_more),
                entries: l
                    .data
                    .into_iter()
                    .map(|i| Listed {
                        id: i.id,
                        name: i.name,
                        hint: i.redacted_value.filter(|_| listing == Listing::Hinted),
                    })
                    .collect(),
            }
        }
        Kind::Xai => {
            let l: XaiList = serde_json::from_slice(body).ok()?;
            Page {
                next: None,
                entries: l
                    .api_keys
                    .into_iter()
                    .map(|i| Listed {
                        id: i.api_key_id,
                        name: i.name,
                        hint: i.redacted_api_key,
                    })
                    .collect(),
            }
        }
        Kind::OpenRouter => {
            let l: OpenRouterList = serde_json::from_slice(body).ok()?;
            // Pages by offset; a full page of 100 may have more behind it.
            let next = (l.data.len() >= 100).then(|| (offset + l.data.len()).to_string());
            Page {
                next,
                entries: l
                    .data
                    .into_iter()
                    .map(|i| Listed {
                        id: i.hash,
                        name: i.name,
                        hint: i.label,
                    })
                    .collect(),
            }
        }
        Kind::Anthropic => {
            let l: AnthropicList = serde_json::from_slice(body).ok()?;
            Page {
                next: l.last_id.filter(|_| l.has_more),
                entries: l
                    .data
                    .into_iter()
                    .map(|i| Listed {
                        id: i.id,
                        name: i.name,
                        hint: i.partial_key_hint,
                    })
                    .collect(),
            }
        }
        Kind::Azure | Kind::Generic => return None,
    };
    Some(page)
}

/// The call that deletes (or, at Anthropic, disables) the key `id` found in
/// `listing`. `None`: the kind cannot.
pub fn remove(kind: Kind, api: &AdminApi, listing: Listing, id: &str) -> Option<Call> {
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let (method, path, body) = match (kind, listing) {
        (Kind::OpenAi, Listing::Minted) => (
            http::Method::DELETE,
            format!(
                "/v1/organization/projects/{}/service_accounts/{id}",
                project(api)
            ),
            None,
        ),
        (Kind::OpenAi, Listing::Hinted) => (
            http::Method::DELETE,
            format!("/v1/organization/projects/{}/api_keys/{id}", project(api)),
            None,
        ),
        (Kind::Xai, _) => (http::Method::DELETE, format!("/auth/api-keys/{id}"), None),
        (Kind::OpenRouter, _) => (http::Method::DELETE, format!("/api/v1/keys/{id}"), None),
        (Kind::Anthropic, _) => (
            http::Method::POST,
            format!("/v1/organizations/api_keys/{id}"),
            Some(serde_json::json!({ "status": "inactive" })),
        ),
        _ => return None,
    };
    Some(Call { method, path, body })
}

/// True when the provider's redacted form `hint` (`sk-ant-api03-R2D...igAA`,
/// `sk-or-v1-0e6...1c96`, `xai-…b7xY`, `sk-proj-****abcd`) can only be `secret`'s:
/// the shown start and end match and at least four trailing characters are
/// shown (a shared prefix alone proves nothing).
pub fn hint_matches(hint: &str, secret: &str) -> bool {
    let hint = hint.trim();
    let Some((start, end)) = split_hint(hint) else {
        return false;
    };
    end.len() >= 4
        && secret.len() > start.len() + end.len()
        && secret.starts_with(start)
        && secret.ends_with(end)
}

/// A hint's shown start and end, around `...`, `…` or a run of `*`.
fn split_hint(hint: &str) -> Option<(&str, &str)> {
    for gap in ["...", "\u{2026}"] {
        if let Some((start, end)) = hint.split_once(gap) {
            return Some((start.trim_end_matches('*'), end.trim_start_matches('*')));
        }
    }
    let first = hint.find('*')?;
    let last = hint.rfind('*')?;
    Some((&hint[..first], &hint[last + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_creation_answer_is_read() {
        let openai = br#"{"object":"organization.project.service_account","id":"svc_acct_abc","name":"n","role":"member","created_at":1,"api_key":{"object":"organization.project.service_account.api_key","value":"sk-svcacct-0123456789abcdef","name":"Secret Key","created_at":1,"id":"key_abc"}}"#;
        assert_eq!(
            read_created(Kind::OpenAi, openai),
            Some(("sk-svcacct-0123456789abcdef".into(), "svc_acct_abc".into()))
        );
        let xai = br#"{"apiKey":"xai-0123456789abcdef","apiKeyId":"k-1","name":"n"}"#;
        assert_eq!(read_created(Kind::Xai, xai).unwrap().1, "k-1");
        let or = br#"{"data":{"hash":"h1","name":"n"},"key":"sk-or-v1-0123456789abcdef"}"#;
        assert_eq!(read_created(Kind::OpenRouter, or).unwrap().1, "h1");
        assert!(read_created(Kind::OpenAi, b"{\"id\":\"x\"}").is_none());
        assert!(read_created(Kind::Anthropic, b"{}").is_none());
    }

    #[test]
    fn listings_page_and_carry_hints() {
        let openai = br#"{"object":"list","data":[{"object":"organization.project.api_key","redacted_value":"sk-abc...wxyz","name":"k","created_at":1,"id":"key_abc"}],"first_id":"key_abc","last_id":"key_abc","has_more":true}"#;
        let page = read_list(Kind::OpenAi, Listing::Hinted, openai, 0).unwrap();
        assert_eq!(page.next.as_deref(), Some("key_abc"));
        assert_eq!(page.entries[0].hint.as_deref(), Some("sk-abc...wxyz"));
        let anthropic = br#"{"data":[{"id":"apikey_01","type":"api_key","name":"Dev","partial_key_hint":"sk-ant-api03-R2D...igAA","status":"active"}],"has_more":false,"first_id":"apikey_01","last_id":"apikey_01"}"#;
        let page = read_list(Kind::Anthropic, Listing::Hinted, anthropic, 0).unwrap();
        assert!(page.next.is_none());
        assert_eq!(page.entries[0].id, "apikey_01");
        let xai = br#"{"apiKeys":[{"redactedApiKey":"xai-...b7xY","name":"keygate-xai-1","apiKeyId":"k1","acls":[]}]}"#;
        let page = read_list(Kind::Xai, Listing::Minted, xai, 0).unwrap();
        assert_eq!(page.entries[0].name.as_deref(), Some("keygate-xai-1"));
        let call = list(Kind::OpenAi, &api(), Listing::Minted, Some("svc 1")).unwrap();
        assert_eq!(
            call.path,
            "/v1/organization/projects/proj_x/service_accounts?limit=100&after=svc+1"
        );
    }

    #[test]
    fn removal_per_kind() {
        let call = remove(Kind::Anthropic, &api(), Listing::Hinted, "apikey_01").unwrap();
        assert_eq!(call.method, http::Method::POST);
        assert_eq!(call.body, Some(serde_json::json!({"status": "inactive"})));
        let call = remove(Kind::Xai, &api(), Listing::Minted, "k/1").unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (http::Method::DELETE, "/auth/api-keys/k%2F1")
        );
        assert!(remove(Kind::Generic, &api(), Listing::Minted, "x").is_none());
    }

    #[test]
    fn hints_match_only_their_key() {
        let secret = "sk-ant-api03-R2Dxxxxxxxxxxxxxxxxxxxxxxxxxxxx-igAA";
        assert!(hint_matches("sk-ant-api03-R2D...igAA", secret));
        assert!(hint_matches("sk-ant-api03-R2D\u{2026}igAA", secret));
        assert!(!hint_matches("sk-ant-api03-R2D...igAB", secret));
        assert!(
            !hint_matches("sk-ant-api03-...", secret),
            "a shared prefix alone is not a match"
        );
        assert!(hint_matches("sk-proj-****igAA", "sk-proj-0123456789igAA"));
        assert!(!hint_matches("no gap here", secret));
    }

    fn api() -> AdminApi {
        AdminApi {
            origin: "http://127.0.0.1:1".parse().unwrap(),
            base_path: String::new(),
            project: Some("proj_x".into()),
            team: Some("team_x".into()),
        }
    }
}
