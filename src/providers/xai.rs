//! xAI (api.x.ai). A bad key is a **400** whose flat body says so
//! (`{"code":"Client specified an invalid argument","error":"Incorrect API key
//! provided: xa***yz. …"}`), or a 401; a team out of credits or over its
//! spending limit is a 403 or 429 whose message says so; another 403 refuses
//! the key; another 429 is a rate limit.
//!
//! Management (the Management API at management-api.x.ai): keys are created
//! in a team (`apiKey`, `apiKeyId`), listed with `redactedApiKey`, deleted by
//! id.

use serde::Deserialize;

use super::management::{
    encoded, team, unix_seconds, AdminScope, Call, Listed, Listing, ManagementKind, Page,
};
use super::{ExactFormat, KeyChars, KeyFormat, KeyVerdict, ProviderError, ProviderKind};
use crate::config::AdminApi;

/// The xAI kind.
pub struct Xai;

const FORMATS: &[KeyFormat] = &[KeyFormat {
    prefix: "xai-",
    what: "key",
    min: 16,
    max: 256,
    chars: KeyChars::Token,
}];

/// xAI words an empty team this way, at the start of its message (a value
/// the client sent, quoted later — "Model not found: …" — cannot pass for it).
fn about_credit(error: &ProviderError) -> bool {
    error.message_starts_with(&["your team "]) && error.message_has(&["credits", "spending limit"])
}

/// xAI's own sentence about a bad key, at the start of its message.
fn about_the_key(error: &ProviderError) -> bool {
    error.message_starts_with(&[
        "incorrect api key",
        "invalid api key",
        "the api key",
        "api key ",
    ]) && error.message_has(&["incorrect", "invalid", "revoked", "expired", "not found"])
}

/// Keys as xAI issues them: 80 letters and digits.
const EXACT: &[ExactFormat] = &[ExactFormat::plain(
    "xai-",
    "API key",
    &[80],
    KeyChars::Alnum,
)];

impl ProviderKind for Xai {
    /// xAI answers with OpenAI's `x-ratelimit-*` headers.
    fn rate_limits(&self, headers: &http::HeaderMap) -> super::RateLimits {
        super::rate_limits::x_ratelimit(headers)
    }

    fn name(&self) -> &'static str {
        "xai"
    }

    fn display_name(&self) -> &'static str {
        "xAI"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.x.ai")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn reads_body(&self, status: u16) -> bool {
        matches!(status, 400 | 403 | 429)
    }

    fn judge_refusal(&self, status: u16, error: &ProviderError) -> KeyVerdict {
        match status {
            400 if about_the_key(error) => KeyVerdict::Rejected,
            401 => KeyVerdict::Rejected,
            403 | 429 if about_credit(error) => KeyVerdict::OutOfCredit,
            403 => KeyVerdict::Rejected,
            429 => KeyVerdict::RateLimited,
            _ => KeyVerdict::Unrelated,
        }
    }

    fn console(&self) -> &'static str {
        "console.x.ai"
    }

    fn billing(&self) -> &'static str {
        "buy credits or raise the team's spending limit at console.x.ai"
    }

    fn explain_rejection(
        &self,
        provider: &str,
        status: u16,
        _error: &ProviderError,
    ) -> Option<(String, String)> {
        (status == 400).then(|| {
            (
                "xAI answers a bad key with 400: the key is invalid or revoked".into(),
                format!("create a new key at console.x.ai, then run `keygate key rotate {provider}` with it"),
            )
        })
    }

    fn management(&self) -> Option<&'static dyn ManagementKind> {
        Some(&Xai)
    }
}

impl ManagementKind for Xai {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://management-api.x.ai")
    }

    fn scope(&self) -> AdminScope {
        AdminScope::Team(
            "xAI's Management API creates API keys in a team; set it to the team's id (in the xAI console)",
        )
    }

    fn can_create(&self) -> bool {
        true
    }

    fn create(&self, api: &AdminApi, name: &str) -> Option<(Call, &'static str)> {
        Some((
            Call::post(
                format!("/auth/teams/{}/api-keys", team(api)),
                serde_json::json!({
                    "name": name,
                    "acls": ["api-key:model:*", "api-key:endpoint:*"],
                }),
            ),
            "apiKey and apiKeyId",
        ))
    }

    fn read_created(&self, body: &[u8]) -> Option<(String, String)> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            api_key: String,
            api_key_id: String,
        }
        let a: Created = serde_json::from_slice(body).ok()?;
        (!a.api_key_id.is_empty()).then_some((a.api_key, a.api_key_id))
    }

    fn list(&self, api: &AdminApi, _listing: Listing, _after: Option<&str>) -> Option<Call> {
        Some(Call::get(format!("/auth/teams/{}/api-keys", team(api))))
    }

    fn read_list(&self, _listing: Listing, body: &[u8], _offset: usize) -> Option<Page> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Item {
            api_key_id: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            redacted_api_key: Option<String>,
            #[serde(default)]
            create_time: Option<String>,
            #[serde(default)]
            api_key_disabled: Option<bool>,
            #[serde(default)]
            api_key_blocked: Option<bool>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct List {
            api_keys: Vec<Item>,
        }
        let l: List = serde_json::from_slice(body).ok()?;
        Some(Page {
            next: None,
            entries: l
                .api_keys
                .into_iter()
                .map(|i| Listed {
                    id: i.api_key_id,
                    name: i.name,
                    hint: i.redacted_api_key,
                    created: i.create_time.as_deref().and_then(unix_seconds),
                    active: match (i.api_key_disabled, i.api_key_blocked) {
                        (None, None) => None,
                        (disabled, blocked) => {
                            Some(!disabled.unwrap_or(false) && !blocked.unwrap_or(false))
                        }
                    },
                    ..Listed::default()
                })
                .collect(),
        })
    }

    fn remove(&self, _api: &AdminApi, _listing: Listing, id: &str) -> Option<Call> {
        Some(Call::delete(format!("/auth/api-keys/{}", encoded(id))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::management::tests::api;

    fn judge(status: u16, body: &str) -> KeyVerdict {
        super::super::Kind::named("xai")
            .unwrap()
            .judge(status, &ProviderError::parse(body.as_bytes()))
    }

    #[test]
    fn a_bad_key_an_empty_team_and_a_rate_limit_are_told_apart() {
        use KeyVerdict::*;
        let bad = r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***yz. You can obtain an API key from https://console.x.ai."}"#;
        let credits = r#"{"code":"Client specified an invalid argument","error":"Your team 0000 has either used all available credits or reached its monthly spending limit. To continue making API requests, please purchase more credits or raise your spending limit."}"#;
        let bad_request =
            r#"{"code":"Client specified an invalid argument","error":"Model not found: grok-9"}"#;
        assert_eq!(judge(400, bad), Rejected);
        assert_eq!(judge(400, bad_request), Unrelated);
        assert_eq!(judge(403, credits), OutOfCredit);
        assert_eq!(judge(429, credits), OutOfCredit);
        assert_eq!(judge(429, "{}"), RateLimited);
        assert_eq!(judge(403, "{}"), Rejected);
        // A model name the client chose, quoted back, says nothing of the key.
        let quoted = r#"{"code":"Client specified an invalid argument","error":"Model not found: incorrect api key invalid"}"#;
        assert_eq!(judge(400, quoted), Unrelated);
        let quoted_credit = r#"{"code":"Some resource has been exhausted","error":"Too many requests for model credits-and-spending-limit. Please retry later."}"#;
        assert_eq!(judge(429, quoted_credit), RateLimited);
    }

    #[test]
    fn management_calls_and_answers() {
        let created = br#"{"apiKey":"xai-0123456789abcdef","apiKeyId":"k-1","name":"n"}"#;
        assert_eq!(Xai.read_created(created).unwrap().1, "k-1");
        let listed = br#"{"apiKeys":[{"redactedApiKey":"xai-...b7xY","name":"keygate-xai-1","apiKeyId":"k1","acls":[]}]}"#;
        let page = Xai.read_list(Listing::Minted, listed, 0).unwrap();
        assert_eq!(page.entries[0].name.as_deref(), Some("keygate-xai-1"));
        let call = Xai.remove(&api(), Listing::Minted, "k/1").unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (http::Method::DELETE, "/auth/api-keys/k%2F1")
        );
    }
}
