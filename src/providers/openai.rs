//! OpenAI (api.openai.com). A bad key is a 401 whatever its `code`
//! (`invalid_api_key`, `account_deactivated`, `mismatched_organization`,
//! `mismatched_project`, …) or a 403; an empty account is a **429** whose code
//! or type is `insufficient_quota`; any other 429 is a rate limit.
//!
//! Management (the Admin API): a project's service account is created with
//! its key in `api_key.value`; the project's API keys are listed with a
//! `redacted_value`, paged with `after` / `has_more` / `last_id`.

use serde::Deserialize;

use super::management::{
    cursor, encoded, project, read_bucket_report, read_cursor_page, AdminScope, Call,
    KeyUsageReport, Listed, Listing, ManagementKind, Page, UsagePage,
};
use super::{ExactFormat, KeyChars, KeyFormat, KeyVerdict, ProviderError, ProviderKind};
use crate::config::AdminApi;

/// The OpenAI kind.
pub struct OpenAi;

const FORMATS: &[KeyFormat] = &[
    KeyFormat {
        prefix: "sk-proj-",
        what: "project key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
    KeyFormat {
        prefix: "sk-svcacct-",
        what: "service account key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
    KeyFormat {
        prefix: "sk-admin-",
        what: "admin key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
    KeyFormat {
        prefix: "sk-",
        what: "key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
];

/// Keys as OpenAI issues them (the shapes secret scanners use): a project,
/// service-account or admin key's body is 58 or 74 characters, the marker
/// `T3BlbkFJ`, 58 or 74 more; a legacy key's 20 letters and digits, the
/// marker, 20 more.
const EXACT: &[ExactFormat] = &[
    ExactFormat {
        prefix: "sk-proj-",
        what: "project key",
        lengths: &[124, 140, 156],
        chars: KeyChars::Token,
        marker: Some(("T3BlbkFJ", &[58, 74])),
        ends_with: None,
    },
    ExactFormat {
        prefix: "sk-svcacct-",
        what: "service account key",
        lengths: &[124, 140, 156],
        chars: KeyChars::Token,
        marker: Some(("T3BlbkFJ", &[58, 74])),
        ends_with: None,
    },
    ExactFormat {
        prefix: "sk-admin-",
        what: "admin key",
        lengths: &[124, 140, 156],
        chars: KeyChars::Token,
        marker: Some(("T3BlbkFJ", &[58, 74])),
        ends_with: None,
    },
    ExactFormat {
        prefix: "sk-",
        what: "legacy key",
        lengths: &[48],
        chars: KeyChars::Alnum,
        marker: Some(("T3BlbkFJ", &[20])),
        ends_with: None,
    },
];

impl ProviderKind for OpenAi {
    /// OpenAI's `x-ratelimit-*` headers on every answer.
    fn rate_limits(&self, headers: &http::HeaderMap) -> super::RateLimits {
        super::rate_limits::x_ratelimit(headers)
    }

    fn name(&self) -> &'static str {
        "openai"
    }

    fn display_name(&self) -> &'static str {
        "OpenAI"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.openai.com")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn reads_body(&self, status: u16) -> bool {
        matches!(status, 403 | 429)
    }

    fn judge_refusal(&self, status: u16, error: &ProviderError) -> KeyVerdict {
        match status {
            // "Project `proj_…` does not have access to model `…`": which
            // model the client asked for is the client's problem.
            403 if error.is("model_not_found") => KeyVerdict::Unrelated,
            401 | 403 => KeyVerdict::Rejected,
            429 if error.is("insufficient_quota") => KeyVerdict::OutOfCredit,
            429 => KeyVerdict::RateLimited,
            _ => KeyVerdict::Unrelated,
        }
    }

    fn console(&self) -> &'static str {
        "platform.openai.com/api-keys"
    }

    fn billing(&self) -> &'static str {
        "add credit or raise the budget at platform.openai.com/settings/organization/billing"
    }

    fn explain_rejection(
        &self,
        provider: &str,
        _status: u16,
        error: &ProviderError,
    ) -> Option<(String, String)> {
        let code = error.code.as_deref().or(error.kind.as_deref())?;
        Some(match code {
            "account_deactivated" => (
                "the OpenAI account behind the key is deactivated".into(),
                "use a key of an active account (or contact OpenAI support)".into(),
            ),
            "mismatched_organization" => (
                "the key belongs to another organisation than the OpenAI-Organization header names".into(),
                format!("set [providers.{provider}] organization to the key's organisation (or remove it), or use a key of that organisation"),
            ),
            "mismatched_project" => (
                "the key belongs to another project than the OpenAI-Project header names".into(),
                format!("set [providers.{provider}] project to the key's project (or remove it), or use a key of that project"),
            ),
            "no_organization" => (
                "the key's user is not a member of any organisation".into(),
                "join or create an organisation on platform.openai.com, then create a key there".into(),
            ),
            _ => return None,
        })
    }

    fn management(&self) -> Option<&'static dyn ManagementKind> {
        Some(&OpenAi)
    }
}

impl ManagementKind for OpenAi {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://api.openai.com")
    }

    fn scope(&self) -> AdminScope {
        AdminScope::Project("OpenAI's Admin API creates keygate's keys as service accounts of a project; set it to the project's id (proj_…, in the project's settings); the Default project cannot hold service accounts")
    }

    fn can_create(&self) -> bool {
        true
    }

    fn list_permission(&self) -> &'static str {
        "an Admin API key (organization settings → Admin keys) with read access to the project's API keys"
    }

    fn create(&self, api: &AdminApi, name: &str) -> Option<(Call, &'static str)> {
        Some((
            Call::post(
                format!(
                    "/v1/organization/projects/{}/service_accounts",
                    project(api)
                ),
                serde_json::json!({ "name": name }),
            ),
            "api_key.value and id",
        ))
    }

    fn read_created(&self, body: &[u8]) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct Key {
            value: String,
        }
        #[derive(Deserialize)]
        struct Created {
            id: String,
            api_key: Key,
        }
        let a: Created = serde_json::from_slice(body).ok()?;
        (!a.id.is_empty()).then_some((a.api_key.value, a.id))
    }

    fn list(&self, api: &AdminApi, listing: Listing, after: Option<&str>) -> Option<Call> {
        let what = match listing {
            Listing::Minted => "service_accounts",
            Listing::Hinted => "api_keys",
        };
        Some(Call::get(format!(
            "/v1/organization/projects/{}/{what}?limit=100{}",
            project(api),
            cursor("after", after)
        )))
    }

    fn read_list(&self, listing: Listing, body: &[u8], _offset: usize) -> Option<Page> {
        // A project API key: `{"id": "key_…", "name", "redacted_value":
        // "sk-abc...wxyz", "created_at": 1711471533, "last_used_at": …|null,
        // "owner": {"type": "user"|"service_account", "user": {"id","name"}
        // | "service_account": {"id", "name"}}}`; a service account has no
        // `redacted_value`.
        #[derive(Deserialize)]
        struct Who {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            email: Option<String>,
        }
        #[derive(Deserialize)]
        struct Owner {
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            user: Option<Who>,
            #[serde(default)]
            service_account: Option<Who>,
        }
        #[derive(Deserialize)]
        struct Item {
            id: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            redacted_value: Option<String>,
            #[serde(default)]
            created_at: Option<u64>,
            #[serde(default)]
            last_used_at: Option<u64>,
            #[serde(default)]
            owner: Option<Owner>,
        }
        read_cursor_page(body, |i: Item| {
            let owner = i.owner.as_ref();
            let who = owner.and_then(|o| o.user.as_ref().or(o.service_account.as_ref()));
            Listed {
                id: i.id,
                name: i.name,
                hint: i.redacted_value.filter(|_| listing == Listing::Hinted),
                created: i.created_at,
                last_used: i.last_used_at,
                owner: owner.map(|o| {
                    let kind = o.kind.as_deref().unwrap_or("owner").replace('_', " ");
                    let name = who.and_then(|w| w.name.clone().or(w.email.clone()));
                    name.map_or_else(|| kind.clone(), |n| format!("{kind} {n}"))
                }),
                owner_id: owner
                    .and_then(|o| o.service_account.as_ref())
                    .and_then(|w| w.id.clone()),
                active: None,
            }
        })
    }

    fn key_usage(&self, _api: &AdminApi, start: u64, end: u64, page: Option<&str>) -> Option<Call> {
        // The organization's completions usage, grouped by API key; 1-hour
        // buckets take at most 168 to a page.
        Some(Call::get(format!(
            "/v1/organization/usage/completions?start_time={start}&end_time={end}&bucket_width=1h&group_by=api_key_id&limit=168{}",
            cursor("page", page)
        )))
    }

    fn read_key_usage(&self, body: &[u8]) -> Option<UsagePage> {
        // `{"object":"page","data":[{"object":"bucket","start_time","end_time",
        // "results":[{"object":"organization.usage.completions.result",
        // "input_tokens","output_tokens","input_cached_tokens",
        // "num_model_requests","api_key_id",…}]}],"has_more","next_page"}`.
        #[derive(Deserialize)]
        struct Result {
            #[serde(default)]
            api_key_id: Option<String>,
            #[serde(default)]
            input_tokens: u64,
            #[serde(default)]
            output_tokens: u64,
            #[serde(default)]
            num_model_requests: u64,
        }
        read_bucket_report(body, |r: Result| {
            Some(KeyUsageReport {
                provider_key_id: r.api_key_id?,
                requests: Some(r.num_model_requests),
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
            })
        })
    }

    fn remove(&self, api: &AdminApi, listing: Listing, id: &str) -> Option<Call> {
        let what = match listing {
            Listing::Minted => "service_accounts",
            Listing::Hinted => "api_keys",
        };
        Some(Call::delete(format!(
            "/v1/organization/projects/{}/{what}/{}",
            project(api),
            encoded(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::management::tests::api;

    fn judge(status: u16, body: &str) -> KeyVerdict {
        super::super::Kind::named("openai")
            .unwrap()
            .judge(status, &ProviderError::parse(body.as_bytes()))
    }

    #[test]
    fn a_bad_key_an_empty_account_and_a_rate_limit_are_told_apart() {
        let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(judge(401, ""), KeyVerdict::Rejected);
        assert_eq!(judge(429, quota), KeyVerdict::OutOfCredit);
        assert_eq!(judge(429, rate), KeyVerdict::RateLimited);
        assert_eq!(judge(400, quota), KeyVerdict::Unrelated);
        let no_access = r#"{"error":{"message":"Project `proj_abc` does not have access to model `o1`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
        assert_eq!(judge(403, no_access), KeyVerdict::Unrelated);
        assert_eq!(judge(403, "{}"), KeyVerdict::Rejected);
    }

    #[test]
    fn only_chat_and_completions_take_the_stream_usage_option() {
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/openai/v1/chat/completions",
        ] {
            assert!(OpenAi.takes_stream_usage_option(path), "{path}");
        }
        for path in [
            "/v1/messages",
            "/v1/responses",
            "/v1/embeddings",
            "/v1/chat/completions/chatcmpl-1",
            "/v1/models",
        ] {
            assert!(!OpenAi.takes_stream_usage_option(path), "{path}");
        }
    }

    #[test]
    fn management_calls_and_answers() {
        let created = br#"{"object":"organization.project.service_account","id":"svc_acct_abc","name":"n","role":"member","created_at":1,"api_key":{"object":"organization.project.service_account.api_key","value":"sk-svcacct-0123456789abcdef","name":"Secret Key","created_at":1,"id":"key_abc"}}"#;
        assert_eq!(
            OpenAi.read_created(created),
            Some(("sk-svcacct-0123456789abcdef".into(), "svc_acct_abc".into()))
        );
        assert!(OpenAi.read_created(b"{\"id\":\"x\"}").is_none());
        let listed = br#"{"object":"list","data":[{"object":"organization.project.api_key","redacted_value":"sk-abc...wxyz","name":"k","created_at":1,"id":"key_abc"}],"first_id":"key_abc","last_id":"key_abc","has_more":true}"#;
        let page = OpenAi.read_list(Listing::Hinted, listed, 0).unwrap();
        assert_eq!(page.next.as_deref(), Some("key_abc"));
        assert_eq!(page.entries[0].hint.as_deref(), Some("sk-abc...wxyz"));
        let call = OpenAi.list(&api(), Listing::Minted, Some("svc 1")).unwrap();
        assert_eq!(
            call.path,
            "/v1/organization/projects/proj_x/service_accounts?limit=100&after=svc+1"
        );
        let call = OpenAi.remove(&api(), Listing::Hinted, "key_1").unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (
                http::Method::DELETE,
                "/v1/organization/projects/proj_x/api_keys/key_1"
            )
        );
    }
}
