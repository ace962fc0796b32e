//! OpenRouter (openrouter.ai/api). A bad key is a 401 (`"User not found."`);
//! no credit is a **402**; a 429 a rate limit; a 403 is a moderation refusal
//! of the request, not a key problem. Its `/v1/models` needs no key, so
//! `key verify` asks the current-key endpoint.
//!
//! Management (the provisioning API): keys are created with `key` and
//! `data.hash`, listed by `label` (their hint), paged by offset, deleted by
//! hash.

use serde::Deserialize;

use super::management::{encoded, unix_seconds, Call, Listed, Listing, ManagementKind, Page};
use super::{
    ExactFormat, KeyChars, KeyFormat, KeyVerdict, ProviderError, ProviderKind, VerifyRequest,
};
use crate::config::AdminApi;

/// The OpenRouter kind.
pub struct OpenRouter;

const FORMATS: &[KeyFormat] = &[
    KeyFormat {
        prefix: "sk-or-v1-",
        what: "key",
        min: 64,
        max: 64,
        chars: KeyChars::Hex,
    },
    KeyFormat {
        prefix: "sk-or-",
        what: "key",
        min: 16,
        max: 256,
        chars: KeyChars::Token,
    },
];

/// A full page of the key listing; a shorter one is the last.
const PAGE: usize = 100;

/// Keys as OpenRouter issues them: 64 hex digits.
const EXACT: &[ExactFormat] = &[ExactFormat::plain(
    "sk-or-v1-",
    "API key",
    &[64],
    KeyChars::Hex,
)];

impl ProviderKind for OpenRouter {
    fn name(&self) -> &'static str {
        "openrouter"
    }

    fn display_name(&self) -> &'static str {
        "OpenRouter"
    }

    fn default_base_url(&self) -> Option<&'static str> {
        Some("https://openrouter.ai/api")
    }

    fn key_formats(&self) -> &'static [KeyFormat] {
        FORMATS
    }

    fn exact_formats(&self) -> &'static [ExactFormat] {
        EXACT
    }

    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/v1/key",
            headers: &[],
        }
    }

    fn judge_refusal(&self, status: u16, _error: &ProviderError) -> KeyVerdict {
        match status {
            401 => KeyVerdict::Rejected,
            402 => KeyVerdict::OutOfCredit,
            429 => KeyVerdict::RateLimited,
            _ => KeyVerdict::Unrelated,
        }
    }

    fn console(&self) -> &'static str {
        "openrouter.ai/settings/keys"
    }

    fn billing(&self) -> &'static str {
        "add credits at openrouter.ai/settings/credits, or raise this key's limit"
    }

    fn management(&self) -> Option<&'static dyn ManagementKind> {
        Some(&OpenRouter)
    }
}

impl ManagementKind for OpenRouter {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://openrouter.ai")
    }

    fn can_create(&self) -> bool {
        true
    }

    fn create(&self, _api: &AdminApi, name: &str) -> Option<(Call, &'static str)> {
        Some((
            Call::post(
                "/api/v1/keys".to_owned(),
                serde_json::json!({ "name": name }),
            ),
            "key and data.hash",
        ))
    }

    fn read_created(&self, body: &[u8]) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct Data {
            hash: String,
        }
        #[derive(Deserialize)]
        struct Created {
            key: String,
            data: Data,
        }
        let a: Created = serde_json::from_slice(body).ok()?;
        (!a.data.hash.is_empty()).then_some((a.key, a.data.hash))
    }

    fn list(&self, _api: &AdminApi, _listing: Listing, after: Option<&str>) -> Option<Call> {
        Some(Call::get(match after {
            Some(offset) => format!("/api/v1/keys?offset={}", encoded(offset)),
            None => "/api/v1/keys".to_owned(),
        }))
    }

    fn read_list(&self, _listing: Listing, body: &[u8], offset: usize) -> Option<Page> {
        #[derive(Deserialize)]
        struct Item {
            hash: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            label: Option<String>,
            #[serde(default)]
            created_at: Option<String>,
            #[serde(default)]
            disabled: Option<bool>,
        }
        #[derive(Deserialize)]
        struct List {
            data: Vec<Item>,
        }
        let l: List = serde_json::from_slice(body).ok()?;
        let next = (l.data.len() >= PAGE).then(|| (offset + l.data.len()).to_string());
        Some(Page {
            next,
            entries: l
                .data
                .into_iter()
                .map(|i| Listed {
                    id: i.hash,
                    name: i.name,
                    hint: i.label,
                    created: i.created_at.as_deref().and_then(unix_seconds),
                    active: i.disabled.map(|d| !d),
                    ..Listed::default()
                })
                .collect(),
        })
    }

    fn remove(&self, _api: &AdminApi, _listing: Listing, id: &str) -> Option<Call> {
        Some(Call::delete(format!("/api/v1/keys/{}", encoded(id))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_is_a_moderation_refusal_not_a_key_problem() {
        let e = ProviderError::default();
        assert_eq!(OpenRouter.judge_refusal(402, &e), KeyVerdict::OutOfCredit);
        assert_eq!(OpenRouter.judge_refusal(403, &e), KeyVerdict::Unrelated);
        assert_eq!(OpenRouter.judge_refusal(401, &e), KeyVerdict::Rejected);
    }

    #[test]
    fn creation_is_read_and_listing_pages_by_offset() {
        let created = br#"{"data":{"hash":"h1","name":"n"},"key":"sk-or-v1-0123456789abcdef"}"#;
        assert_eq!(OpenRouter.read_created(created).unwrap().1, "h1");
        let items: Vec<String> = (0..PAGE)
            .map(|i| format!(r#"{{"hash":"h{i}","label":"sk-or-v1-0e6...{i:04}"}}"#))
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, items.join(","));
        let page = OpenRouter
            .read_list(Listing::Hinted, body.as_bytes(), 100)
            .unwrap();
        assert_eq!(page.next.as_deref(), Some("200"));
    }
}
