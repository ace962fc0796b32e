//! Everything keygate knows about a provider kind (docs/design.md §11, §13):
//! each kind is one file here behind one trait, [`ProviderKind`], and the rest
//! of keygate asks a [`Kind`] — never matches on one. The questions: the auth
//! header and the key formats, the request `key verify` sends, which paths
//! take OpenAI's `stream_options`, what an answer says about the key, what a
//! refusal means in the operator's terms, and the management API (create,
//! list, delete or disable).
//!
//! The rules follow what the providers really send (their docs, their SDKs'
//! error types, public bug reports), each written down in its kind's file.
//! Nothing here does I/O or logs.
//!
//! Adding a kind: one file implementing [`ProviderKind`], one line in
//! [`KINDS`], its mock in `tests/it/support/provider_answers.rs` and its tests.

use std::fmt;

use http::{HeaderName, HeaderValue};

use crate::vault::secret::Secret;

mod anthropic;
mod azure;
mod deepseek;
mod error_body;
mod gemini;
mod generic;
mod groq;
mod key_formats;
pub mod management;
mod mistral;
mod openai;
mod openrouter;
mod rate_limits;
mod xai;

pub use error_body::ProviderError;
pub use key_formats::{lookalike, ExactFormat, KeyChars, KeyFormat};
pub use management::{AdminScope, AuthHeaders, Call, Listed, Listing, Page};
pub use rate_limits::{Allowance, RateLimits};

/// Every kind keygate knows, by the name used in config and output.
static KINDS: [&dyn ProviderKind; 10] = [
    &openai::OpenAi,
    &xai::Xai,
    &anthropic::Anthropic,
    &azure::Azure,
    &openrouter::OpenRouter,
    &generic::Generic,
    &gemini::Gemini,
    &mistral::Mistral,
    &groq::Groq,
    &deepseek::DeepSeek,
];

/// The questions the rest of keygate asks of a provider kind. Every method
/// but the identity has a default that fits an OpenAI-compatible API without
/// a management API; a kind's file overrides what differs.
pub trait ProviderKind: Send + Sync + 'static {
    /// The name used in config (`kind = …`) and output.
    fn name(&self) -> &'static str;

    /// The provider's name as a user knows it ("OpenAI").
    fn display_name(&self) -> &'static str;

    /// The upstream's URL when `base_url` is not set (`None`: it must be).
    fn default_base_url(&self) -> Option<&'static str> {
        None
    }

    /// The auth header the API expects when `auth` is not set.
    fn default_auth(&self) -> AuthStyle {
        AuthStyle::Bearer
    }

    /// The shapes of this provider's keys: used to tell a client that it sent
    /// a provider key by mistake, and by `scan`.
    fn key_formats(&self) -> &'static [KeyFormat] {
        &[]
    }

    /// True when the request to `path` (as keygate forwards it, after the
    /// provider prefix) may carry OpenAI's `stream_options.include_usage`.
    /// Other APIs report a stream's usage unasked or refuse the field.
    fn takes_stream_usage_option(&self, path: &str) -> bool {
        path.ends_with("/v1/chat/completions") || path.ends_with("/v1/completions")
    }

    /// The path under `base_url` for a client's `/v1/…` path: the same,
    /// unless the API's base already names its version.
    fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        path
    }

    /// The headers through which a request names the account it bills
    /// (organisation, project): the operator's choice, never the client's.
    fn account_headers(&self) -> [&'static str; 2] {
        ["openai-organization", "openai-project"]
    }

    /// The cheap authenticated request that tells whether a key works.
    fn verify_request(&self) -> VerifyRequest {
        VerifyRequest {
            path: "/v1/models",
            headers: &[],
        }
    }

    /// True when [`ProviderKind::judge_refusal`] needs the error body for
    /// this status (only then is it read before deciding).
    fn reads_body(&self, status: u16) -> bool {
        let _ = status;
        false
    }

    /// What a non-2xx answer says about the key (docs/design.md §11).
    /// `error`: the parsed body, when [`ProviderKind::reads_body`] asked for it.
    /// The default is the common reading of the status alone: 401 or 403 a
    /// bad key, 402 no credit, 429 a rate limit, anything else not the key's.
    fn judge_refusal(&self, status: u16, error: &ProviderError) -> KeyVerdict {
        let _ = error;
        common_reading(status)
    }

    /// Where the operator makes or checks a key.
    fn console(&self) -> &'static str {
        "the provider's dashboard"
    }

    /// Where the operator adds credit.
    fn billing(&self) -> &'static str {
        "add credit in the provider's billing settings"
    }

    /// A meaning and a fix for a rejection this kind words in its own way
    /// (`None`: the general ones apply). `provider`: the config table name.
    fn explain_rejection(
        &self,
        provider: &str,
        status: u16,
        error: &ProviderError,
    ) -> Option<(String, String)> {
        let _ = (provider, status, error);
        None
    }

    /// The management API (docs/design.md §12): `None` when keygate knows none.
    fn management(&self) -> Option<&'static dyn management::ManagementKind> {
        None
    }

    /// The exact shapes this kind's keys (and management keys) are issued
    /// in, for finding them in text (`keygate scan`; §15). Empty: none known.
    fn exact_formats(&self) -> &'static [key_formats::ExactFormat] {
        &[]
    }

    /// Whose rows of the price table (§14) price this kind's models: its own
    /// name, unless it resells another's at that one's list prices.
    fn price_list(&self) -> &'static str {
        self.name()
    }

    /// The OpenTelemetry GenAI `gen_ai.system` value for this kind (the
    /// semantic conventions' well-known names; default: the kind's name).
    fn gen_ai_system(&self) -> &'static str {
        self.name()
    }

    /// What an answer's headers say is left of the key's rate limits (§17).
    /// Default: nothing (the kind sends no such headers).
    fn rate_limits(&self, headers: &http::HeaderMap) -> RateLimits {
        let _ = headers;
        RateLimits::default()
    }
}

/// The common reading of a refusal by its status alone: 401 or 403 a bad
/// key, 402 no credit, 429 a rate limit, anything else not the key's.
pub(crate) fn common_reading(status: u16) -> KeyVerdict {
    match status {
        401 | 403 => KeyVerdict::Rejected,
        402 => KeyVerdict::OutOfCredit,
        429 => KeyVerdict::RateLimited,
        _ => KeyVerdict::Unrelated,
    }
}

/// A provider kind: a cheap copy of a reference to its file's answers.
#[derive(Clone, Copy)]
pub struct Kind(&'static dyn ProviderKind);

impl Kind {
    /// The kind a name stands for, if it is one.
    pub fn named(name: &str) -> Option<Kind> {
        KINDS.iter().find(|k| k.name() == name).map(|k| Kind(*k))
    }

    /// The kind of an OpenAI-compatible server keygate knows nothing else of.
    pub fn generic() -> Kind {
        Kind(&generic::Generic)
    }

    /// Every kind.
    pub fn all() -> impl Iterator<Item = Kind> {
        KINDS.iter().map(|k| Kind(*k))
    }

    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// What an upstream answer says about the key.
    pub fn judge(self, status: u16, error: &ProviderError) -> KeyVerdict {
        if (200..300).contains(&status) {
            return KeyVerdict::Accepted;
        }
        self.0.judge_refusal(status, error)
    }

    /// The exact shapes of this kind's keys (`keygate scan`).
    pub fn exact_formats(self) -> &'static [key_formats::ExactFormat] {
        self.0.exact_formats()
    }

    /// The display name (`OpenAI`, `xAI`).
    pub fn display_name(self) -> &'static str {
        self.0.display_name()
    }

    /// The price table's rows for this kind's models (`KIND/MODEL`).
    pub fn price_list(self) -> &'static str {
        self.0.price_list()
    }

    /// The management API, when the kind has one keygate knows.
    pub fn management(self) -> Option<&'static dyn management::ManagementKind> {
        self.0.management()
    }

    /// True when keygate can create an inference key at this kind.
    pub fn can_create(self) -> bool {
        self.management().is_some_and(|m| m.can_create())
    }

    /// True when keygate can delete or disable a key at this kind.
    pub fn can_remove(self) -> bool {
        self.management().is_some()
    }

    /// What a refusal means and what to do, in the operator's terms, for
    /// `key verify` and rotation messages. `provider` is the config table name.
    pub fn explain(
        self,
        provider: &str,
        status: u16,
        verdict: KeyVerdict,
        error: &ProviderError,
    ) -> Explanation {
        let (meaning, fix) = self.meaning(provider, status, verdict, error);
        Explanation { meaning, fix }
    }

    fn meaning(
        self,
        provider: &str,
        status: u16,
        verdict: KeyVerdict,
        error: &ProviderError,
    ) -> (String, String) {
        let console = self.0.console();
        let rotate = format!("then run `keygate key rotate {provider}` with it");
        match verdict {
            KeyVerdict::Accepted => ("the upstream accepted the key".into(), String::new()),
            KeyVerdict::Rejected => {
                if let Some(kind_says) = self.0.explain_rejection(provider, status, error) {
                    return kind_says;
                }
                if status == 403 {
                    return (
                        "the key is refused for this resource: a restricted key, the wrong project or organisation, or a region the provider does not serve".into(),
                        format!("check the key's permissions at {console}, or create an unrestricted key, {rotate}"),
                    );
                }
                (
                    "the key is invalid, revoked or mistyped".into(),
                    format!("create a new key at {console}, {rotate}"),
                )
            }
            KeyVerdict::OutOfCredit => (
                "the account behind the key is out of credit or over its spending limit; the key itself is valid".into(),
                format!(
                    "{}; meanwhile keygate rests this key and serves with the others",
                    self.0.billing()
                ),
            ),
            KeyVerdict::RateLimited => (
                "rate limited: this says nothing certain about the key".into(),
                "retry in a minute; check the account's rate limits if it persists".into(),
            ),
            KeyVerdict::Unrelated => match status {
                300..=399 => (
                    format!("{status}: the upstream redirected (keygate never follows redirects)"),
                    format!("check [providers.{provider}] base_url"),
                ),
                500..=599 => (
                    format!("{status}: the upstream had a server error"),
                    "retry later".into(),
                ),
                _ => (
                    format!("{status}: an unexpected answer to the verify request"),
                    format!(
                        "check [providers.{provider}] base_url and kind (now {})",
                        self.as_str()
                    ),
                ),
            },
        }
    }
}

impl std::ops::Deref for Kind {
    type Target = dyn ProviderKind;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for Kind {}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Kind, D::Error> {
        let name = String::deserialize(deserializer)?;
        Kind::named(&name).ok_or_else(|| {
            let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
            serde::de::Error::custom(format!(
                "unknown kind `{name}`, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// How a provider expects its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI, xAI, most compatibles).
    Bearer,
    /// `x-api-key: <key>` (Anthropic style).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
}

impl AuthStyle {
    /// The non-standard headers any style carries a key in (besides
    /// `Authorization`): a client's are never forwarded.
    pub const KEY_HEADERS: [&'static str; 2] = ["x-api-key", "api-key"];

    /// The header that carries `secret` in this style, marked sensitive.
    pub fn header(self, secret: &Secret) -> Option<(HeaderName, HeaderValue)> {
        let (name, mut value) = match self {
            AuthStyle::Bearer => (
                http::header::AUTHORIZATION,
                HeaderValue::try_from(format!("Bearer {}", secret.expose())).ok()?,
            ),
            AuthStyle::XApiKey => (
                HeaderName::from_static("x-api-key"),
                HeaderValue::try_from(secret.expose()).ok()?,
            ),
            AuthStyle::ApiKey => (
                HeaderName::from_static("api-key"),
                HeaderValue::try_from(secret.expose()).ok()?,
            ),
        };
        value.set_sensitive(true);
        Some((name, value))
    }
}

/// What an upstream answer says about the key that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// 2xx: the key works.
    Accepted,
    /// The key is invalid, revoked, or not allowed: try the next key.
    Rejected,
    /// The account behind the key is out of credit or over its spending limit:
    /// rest the key for `exhausted_cooldown`, try the next key.
    OutOfCredit,
    /// Rate limited: cool the key briefly, try the next key if there is one.
    RateLimited,
    /// Nothing about the key (a bad request, a 5xx, a moderation refusal…).
    Unrelated,
}

impl KeyVerdict {
    /// The `reason` label of `keygate_upstream_key_rejections_total`.
    pub fn reason(self) -> &'static str {
        match self {
            KeyVerdict::Rejected => "rejected",
            KeyVerdict::OutOfCredit => "exhausted",
            KeyVerdict::RateLimited => "rate_limited",
            KeyVerdict::Accepted | KeyVerdict::Unrelated => "-",
        }
    }
}

/// The request `key verify` sends with each key.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest {
    /// Path and query under the provider's `base_url`.
    pub path: &'static str,
    /// Extra headers the API requires.
    pub headers: &'static [(&'static str, &'static str)],
}

/// What an answer means, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What the answer means.
    pub meaning: String,
    /// What to do (empty when nothing is needed).
    pub fix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Kind {
        Kind::named(name).unwrap()
    }

    #[test]
    fn every_kind_is_found_by_its_name_and_names_are_unique() {
        for k in Kind::all() {
            assert_eq!(Kind::named(k.as_str()), Some(k));
        }
        let mut names: Vec<&str> = Kind::all().map(Kind::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        assert!(Kind::named("nope").is_none());
        let err = serde_json::from_str::<Kind>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("gemini"), "{err}");
    }

    #[test]
    fn two_hundreds_are_accepted_by_every_kind() {
        for k in Kind::all() {
            assert_eq!(
                k.judge(204, &ProviderError::default()),
                KeyVerdict::Accepted
            );
        }
    }

    #[test]
    fn provider_keys_are_told_apart_by_their_formats() {
        let rest = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4";
        for (key, provider) in [
            (format!("sk-ant-api03-{rest}"), "Anthropic"),
            (format!("sk-or-v1-{}", "0a".repeat(32)), "OpenRouter"),
            (format!("sk-proj-{rest}"), "OpenAI"),
            (format!("sk-svcacct-{rest}"), "OpenAI"),
            (format!("sk-{rest}"), "OpenAI"),
            (format!("xai-{rest}"), "xAI"),
            (format!("gsk_{rest}"), "Groq"),
            (format!("AIza{}", "B".repeat(35)), "Google Gemini"),
            (format!("sk-{}", "0f".repeat(16)), "DeepSeek"),
        ] {
            assert_eq!(lookalike(&key), Some(provider), "{key}");
        }
        assert_eq!(lookalike("sk-xxx"), None, "a placeholder is no key");
        assert_eq!(lookalike("hello"), None);
    }

    #[test]
    fn explanations_name_the_fix() {
        let e = |name: &str, status: u16, body: &str| {
            let error = ProviderError::parse(body.as_bytes());
            let k = kind(name);
            k.explain("p", status, k.judge(status, &error), &error)
        };
        let project = e(
            "openai",
            401,
            r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"mismatched_project"}}"#,
        );
        assert!(project.meaning.contains("another project"), "{project:?}");
        assert!(project.fix.contains("[providers.p] project"), "{project:?}");
        let xai = e(
            "xai",
            400,
            r#"{"code":"x","error":"Incorrect API key provided: xa***yz."}"#,
        );
        assert!(xai.meaning.contains("400"), "{xai:?}");
        assert!(
            xai.fix.contains("console.x.ai") && xai.fix.contains("keygate key rotate p"),
            "{xai:?}"
        );
        let deepseek = e(
            "deepseek",
            402,
            r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
        );
        assert!(
            deepseek.fix.contains("platform.deepseek.com"),
            "{deepseek:?}"
        );
    }
}
