//! Anthropic (api.anthropic.com, the Messages API). Keys go in `x-api-key`
//! and every request names `anthropic-version`. A bad key is a 401
//! `authentication_error` or a 403 `permission_error`; an empty account is a
//! **400** "Your credit balance is too low…"; a rate limit is a 429
//! `rate_limit_error`. Its Messages API reports a stream's usage unasked and
//! refuses OpenAI's `stream_options`.
//!
//! Management (the Admin API): no key creation; keys are listed with a
//! `partial_key_hint` and disabled with `{"status":"inactive"}`.

use serde::Deserialize;

use super::management::{
    cursor, encoded, read_bucket_report, read_cursor_page, rfc3339, unix_seconds, AuthHeaders,
    Call, KeyUsageReport, Listed, Listing, ManagementKind, Page, UsagePage,
};
use super::{
    AuthStyle, ExactFormat, KeyChars, KeyFormat, KeyVerdict, ProviderError, ProviderKind,
    VerifyRequest,
};
use crate::config::AdminApi;

/// The Anthropic kind.
pub struct Anthropic;

/// The API version keygate speaks to Anthropic's own endpoints (verify,
/// management); a client's requests carry their own.
const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

const FORMATS: &[KeyFormat] = &[
    KeyFormat {
        prefix: "sk-ant-api03-",
        what: "API key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
    KeyFormat {
        prefix: "sk-ant-admin01-",
        what: "admin key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
    KeyFormat {
        prefix: "sk-ant-",
        what: "key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
];

/// Keys as Anthropic issues them: 93 characters and `AA` after the prefix.
const EXACT: &[ExactFormat] = &[
    ExactFormat {
        prefix: "sk-ant-api03-",
        what: "API key",
        lengths: &[95],
        chars: KeyChars::Token,
        marker: None,
        ends_with: Some("AA"),
    },
    ExactFormat {
        prefix: "sk-ant-admin01-",
        what: "Admin API key",
        lengths: &[95],
        chars: KeyChars::Token,
        marker: None,
        ends_with: Some("AA"),
    },
];

impl ProviderKind for Anthropic {
    /// `anthropic-ratelimit-*` headers, resets as RFC 3339 instants.
    fn rate_limits(&self, headers: &http::HeaderMap) -> super::RateLimits {
        super::rate_limits::anthropic_ratelimit(headers, std::time::SystemTime::now())
    }

    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn display_name(&self) -> &'static str {
        "Anthropic"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }

    fn default_auth(&self) -> AuthStyle {
        AuthStyle::XApiKey
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn takes_stream_usage_option(&self, _path: &str) -> bool {
        false
    }

    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/v1/models",
            headers: &[VERSION],
        }
    }

    fn reads_body(&self, status: u16) -> bool {
        matches!(status, 400 | 402)
    }

    fn judge_refusal(&self, status: u16, error: &ProviderError) -> KeyVerdict {
        match status {
            401 | 403 => KeyVerdict::Rejected,
            // Anthropic's own sentence, at the start: a 400 that quotes a
            // client's value (an unknown `anthropic-beta`) may contain the
            // same words further on.
            400 | 402
                if error.is("billing_error")
                    || error.message_starts_with(&["your credit balance is too low"]) =>
            {
                KeyVerdict::OutOfCredit
            }
            429 => KeyVerdict::RateLimited,
            _ => KeyVerdict::Unrelated,
        }
    }

    fn console(&self) -> &'static str {
        "console.anthropic.com"
    }

    fn billing(&self) -> &'static str {
        "buy credits at console.anthropic.com (Plans & Billing)"
    }

    fn explain_rejection(
        &self,
        _provider: &str,
        _status: u16,
        error: &ProviderError,
    ) -> Option<(String, String)> {
        error.is("permission_error").then(|| {
            (
                "the key is valid but not allowed to use this resource".into(),
                "check the key's workspace and permissions at console.anthropic.com".into(),
            )
        })
    }

    fn management(&self) -> Option<&'static dyn ManagementKind> {
        Some(&Anthropic)
    }
}

impl ManagementKind for Anthropic {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }

    fn auth(&self) -> AuthHeaders {
        AuthHeaders {
            header: "x-api-key",
            bearer: false,
            extra: &[VERSION],
        }
    }

    fn removal_word(&self) -> &'static str {
        "disabled"
    }

    fn list(&self, _api: &AdminApi, listing: Listing, after: Option<&str>) -> Option<Call> {
        // Keygate mints nothing here, so only hinted listings exist.
        (listing == Listing::Hinted).then(|| {
            Call::get(format!(
                "/v1/organizations/api_keys?limit=100&status=active{}",
                cursor("after_id", after)
            ))
        })
    }

    fn read_list(&self, _listing: Listing, body: &[u8], _offset: usize) -> Option<Page> {
        // `{"id": "apikey_…", "name", "partial_key_hint": "sk-ant-api03-R2D...igAA",
        // "created_at": "2024-10-30T23:58:27.427722Z", "created_by": {"id",
        // "type"}, "status": "active"|"inactive"|"archived", "workspace_id"}`
        // — no last use.
        #[derive(Deserialize)]
        struct Creator {
            #[serde(default)]
            id: Option<String>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
        }
        #[derive(Deserialize)]
        struct Item {
            id: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            partial_key_hint: Option<String>,
            #[serde(default)]
            created_at: Option<String>,
            #[serde(default)]
            created_by: Option<Creator>,
            #[serde(default)]
            status: Option<String>,
        }
        read_cursor_page(body, |i: Item| Listed {
            id: i.id,
            name: i.name,
            hint: i.partial_key_hint,
            created: i.created_at.as_deref().and_then(unix_seconds),
            owner: i.created_by.map(|c| {
                format!(
                    "created by {} {}",
                    c.kind.as_deref().unwrap_or("user"),
                    c.id.as_deref().unwrap_or("?")
                )
            }),
            active: i.status.map(|s| s == "active"),
            ..Listed::default()
        })
    }

    fn list_permission(&self) -> &'static str {
        "an Admin API key (sk-ant-admin…, made by an organization admin in the Console → Settings → Admin keys)"
    }

    fn key_usage(&self, _api: &AdminApi, start: u64, end: u64, page: Option<&str>) -> Option<Call> {
        // The Messages usage report grouped by API key, hourly buckets (at
        // most 168 to a page); tokens only, no request count.
        Some(Call::get(format!(
            "/v1/organizations/usage_report/messages?starting_at={}&ending_at={}&bucket_width=1h&group_by[]=api_key_id&limit=168{}",
            encoded(&rfc3339(start)),
            encoded(&rfc3339(end)),
            cursor("page", page)
        )))
    }

    fn read_key_usage(&self, body: &[u8]) -> Option<UsagePage> {
        // `{"data":[{"starting_at","ending_at","results":[{"uncached_input_tokens",
        // "cache_creation":{"ephemeral_1h_input_tokens","ephemeral_5m_input_tokens"},
        // "cache_read_input_tokens","output_tokens","api_key_id",…}]}],
        // "has_more","next_page"}`.
        #[derive(Deserialize, Default)]
        struct Creation {
            #[serde(default)]
            ephemeral_1h_input_tokens: u64,
            #[serde(default)]
            ephemeral_5m_input_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Result {
            #[serde(default)]
            api_key_id: Option<String>,
            #[serde(default)]
            uncached_input_tokens: u64,
            #[serde(default)]
            cache_creation: Option<Creation>,
            #[serde(default)]
            cache_read_input_tokens: u64,
            #[serde(default)]
            output_tokens: u64,
        }
        read_bucket_report(body, |r: Result| {
            let written = r.cache_creation.unwrap_or_default();
            Some(KeyUsageReport {
                provider_key_id: r.api_key_id?,
                requests: None,
                input_tokens: r.uncached_input_tokens
                    + r.cache_read_input_tokens
                    + written.ephemeral_1h_input_tokens
                    + written.ephemeral_5m_input_tokens,
                output_tokens: r.output_tokens,
            })
        })
    }

    fn remove(&self, _api: &AdminApi, _listing: Listing, id: &str) -> Option<Call> {
        Some(Call::post(
            format!("/v1/organizations/api_keys/{}", encoded(id)),
            serde_json::json!({ "status": "inactive" }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::management::tests::api;

    #[test]
    fn the_usage_report_sums_every_input_kind_per_key_and_counts_no_requests() {
        // The Admin API's usage report, grouped by API key, as documented.
        let body = br#"{"data":[{"starting_at":"2026-12-06T05:00:00Z","ending_at":"2026-12-06T06:00:00Z","results":[{"uncached_input_tokens":1500,"cache_creation":{"ephemeral_1h_input_tokens":1000,"ephemeral_5m_input_tokens":500},"cache_read_input_tokens":200,"output_tokens":500,"server_tool_use":{"web_search_requests":10},"api_key_id":"apikey_01Rj2N8SVvo6BePZj99NhmiT","workspace_id":"wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ","model":"claude-sonnet-4-20250514","service_tier":"standard","context_window":"0-200k"},{"uncached_input_tokens":5,"output_tokens":1,"api_key_id":null}]}],"has_more":true,"next_page":"page_MjAyNS0wNS0xNFQwMDowMDowMFo="}"#;
        let page = Anthropic.read_key_usage(body).unwrap();
        assert_eq!(
            page.next.as_deref(),
            Some("page_MjAyNS0wNS0xNFQwMDowMDowMFo=")
        );
        assert_eq!(
            page.rows.len(),
            1,
            "a result without a key id is not a key's"
        );
        assert_eq!(
            page.rows[0].provider_key_id,
            "apikey_01Rj2N8SVvo6BePZj99NhmiT"
        );
        assert_eq!(
            (
                page.rows[0].requests,
                page.rows[0].input_tokens,
                page.rows[0].output_tokens
            ),
            (None, 3200, 500)
        );
        let call = Anthropic
            .key_usage(&api(), 1_796_533_200, 1_796_536_800, None)
            .unwrap();
        assert!(call.path.starts_with("/v1/organizations/usage_report/messages?starting_at=2026-12-06T05%3A00%3A00Z&ending_at=2026-12-06T06%3A00%3A00Z&bucket_width=1h&group_by[]=api_key_id"), "{}", call.path);
    }

    fn judge(status: u16, body: &str) -> KeyVerdict {
        super::super::Kind::named("anthropic")
            .unwrap()
            .judge(status, &ProviderError::parse(body.as_bytes()))
    }

    #[test]
    fn a_bad_key_an_empty_account_and_a_rate_limit_are_told_apart() {
        let low = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
        let extra = r#"{"type":"error","error":{"type":"invalid_request_error","message":"stream_options: Extra inputs are not permitted"}}"#;
        assert_eq!(judge(400, low), KeyVerdict::OutOfCredit);
        assert_eq!(judge(400, extra), KeyVerdict::Unrelated);
        // A client's own value quoted back is not the provider's verdict.
        let beta = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Unexpected value(s) `your credit balance is too low` for the `anthropic-beta` header. Please consult our documentation at docs.anthropic.com or try again without the header."}}"#;
        assert_eq!(judge(400, beta), KeyVerdict::Unrelated);
        assert_eq!(judge(401, ""), KeyVerdict::Rejected);
        assert_eq!(judge(429, ""), KeyVerdict::RateLimited);
    }

    #[test]
    fn keys_are_listed_by_hint_and_disabled() {
        let listed = br#"{"data":[{"id":"apikey_01","type":"api_key","name":"Dev","partial_key_hint":"sk-ant-api03-R2D...igAA","status":"active"}],"has_more":false,"first_id":"apikey_01","last_id":"apikey_01"}"#;
        let page = Anthropic.read_list(Listing::Hinted, listed, 0).unwrap();
        assert!(page.next.is_none());
        assert_eq!(page.entries[0].id, "apikey_01");
        let call = Anthropic
            .remove(&api(), Listing::Hinted, "apikey_01")
            .unwrap();
        assert_eq!(call.method, http::Method::POST);
        assert_eq!(call.body, Some(serde_json::json!({"status": "inactive"})));
        assert!(!Anthropic.can_create());
        assert!(Anthropic.read_created(b"{}").is_none());
    }
}
