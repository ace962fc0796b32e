//! What is known about each real provider, in one place (docs/design.md §11): the
//! default auth header, the request `key verify` sends, whether the API has
//! OpenAI's `stream_options`, and the one question the retry loop and `key
//! verify` both ask — *what does this answer say about the key?* — answered
//! from the status and, where a provider needs it, the error body.
//!
//! The rules follow what the providers really send (their docs, their SDKs'
//! error types, public bug reports): xAI answers a bad key with 400, OpenAI
//! reports an empty account as a 429 `insufficient_quota`, Anthropic as a 400
//! "credit balance is too low", OpenRouter as 402, and OpenRouter's 403 is a
//! moderation refusal, not a key problem. Nothing here does I/O or logs.
//!
//! Over 400 lines by design: everything known about every provider kind is
//! in this one room (the retry loop, `key verify` and the meter each ask it
//! one question), so a provider's quirks never leak into the request path.

use serde::Deserialize;

pub mod management;

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

/// What an upstream is. Set per provider (`kind = …`); defaults to the table's
/// name when that is a kind, else [`Kind::Generic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    /// api.openai.com.
    #[serde(rename = "openai")]
    OpenAi,
    /// api.x.ai.
    #[serde(rename = "xai")]
    Xai,
    /// api.anthropic.com (Messages API).
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Azure OpenAI (`api-key` header, `api-version` queries).
    #[serde(rename = "azure")]
    Azure,
    /// openrouter.ai/api.
    #[serde(rename = "openrouter")]
    OpenRouter,
    /// Any other OpenAI-compatible server (vLLM, llama.cpp, Groq, …).
    #[serde(rename = "generic")]
    Generic,
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

/// The error a provider put in its body, read from whichever shape it uses:
/// OpenAI / OpenRouter / Azure `{"error":{"message","type","code"}}`,
/// Anthropic `{"type":"error","error":{"type","message"}}`, xAI's flat
/// `{"code":"…","error":"…"}`, or plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderError {
    /// `error.code` (OpenAI's `invalid_api_key`, OpenRouter's `402`, xAI's `code`).
    pub code: Option<String>,
    /// `error.type` (OpenAI's `insufficient_quota`, Anthropic's `authentication_error`).
    pub kind: Option<String>,
    /// The human message, as the provider wrote it (may quote a masked key:
    /// callers scrub it before showing it).
    pub message: Option<String>,
}

/// The longest message kept from an error body.
const MAX_MESSAGE: usize = 400;

impl ProviderError {
    /// Reads the provider's error out of a (decoded) body; empty when it has none.
    pub fn parse(body: &[u8]) -> ProviderError {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Str(String),
            Num(i64),
        }
        impl Text {
            fn into_string(self) -> String {
                match self {
                    Text::Str(s) => s,
                    Text::Num(n) => n.to_string(),
                }
            }
        }
        #[derive(Deserialize)]
        struct Nested {
            code: Option<Text>,
            #[serde(rename = "type")]
            kind: Option<String>,
            message: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum ErrorField {
            Nested(Nested),
            Flat(String),
        }
        #[derive(Deserialize)]
        struct Envelope {
            error: Option<ErrorField>,
            code: Option<Text>,
            message: Option<String>,
        }
        let clip = |s: String| -> String {
            let s = s.trim();
            match s.char_indices().nth(MAX_MESSAGE) {
                Some((at, _)) => format!("{}…", &s[..at]),
                None => s.to_owned(),
            }
        };
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope {
                error: Some(ErrorField::Nested(e)),
                ..
            }) => ProviderError {
                code: e.code.map(Text::into_string),
                kind: e.kind,
                message: e.message.map(clip),
            },
            Ok(Envelope {
                error: Some(ErrorField::Flat(message)),
                code,
                ..
            }) => ProviderError {
                code: code.map(Text::into_string),
                kind: None,
                message: Some(clip(message)),
            },
            Ok(Envelope {
                error: None,
                code,
                message,
            }) => ProviderError {
                code: code.map(Text::into_string),
                kind: None,
                message: message.map(clip),
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                ProviderError {
                    message: (!text.trim().is_empty()).then(|| clip(text.into_owned())),
                    ..ProviderError::default()
                }
            }
        }
    }

    fn is(&self, value: &str) -> bool {
        self.code.as_deref() == Some(value) || self.kind.as_deref() == Some(value)
    }

    fn message_has(&self, needles: &[&str]) -> bool {
        let Some(message) = &self.message else {
            return false;
        };
        let lower = message.to_ascii_lowercase();
        needles.iter().any(|n| lower.contains(n))
    }

    /// xAI and others word an empty account this way.
    fn about_credit(&self) -> bool {
        self.message_has(&[
            "credits",
            "spending limit",
            "credit balance",
            "insufficient_quota",
            "exceeded your current quota",
        ])
    }

    fn about_the_key(&self) -> bool {
        self.message_has(&["api key", "api-key", "x-api-key"])
            && self.message_has(&["incorrect", "invalid", "revoked", "expired"])
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

impl Kind {
    /// The kind a provider table's name stands for, if it is one.
    pub fn named(name: &str) -> Option<Kind> {
        Some(match name {
            "openai" => Kind::OpenAi,
            "xai" => Kind::Xai,
            "anthropic" => Kind::Anthropic,
            "azure" => Kind::Azure,
            "openrouter" => Kind::OpenRouter,
            "generic" => Kind::Generic,
            _ => return None,
        })
    }

    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Xai => "xai",
            Kind::Anthropic => "anthropic",
            Kind::Azure => "azure",
            Kind::OpenRouter => "openrouter",
            Kind::Generic => "generic",
        }
    }

    /// The auth header the API expects when `auth` is not set.
    pub fn default_auth(self) -> AuthStyle {
        match self {
            Kind::Anthropic => AuthStyle::XApiKey,
            Kind::Azure => AuthStyle::ApiKey,
            _ => AuthStyle::Bearer,
        }
    }

    /// True when the API has OpenAI's `stream_options.include_usage` on its
    /// Chat Completions endpoints (Anthropic's refuses unknown fields).
    pub fn has_stream_usage_option(self) -> bool {
        !matches!(self, Kind::Anthropic)
    }

    /// The cheap authenticated request that tells whether a key works.
    /// OpenRouter's `/v1/models` needs no key at all, so it asks the
    /// current-key endpoint instead.
    pub fn verify_request(self) -> VerifyRequest {
        match self {
            Kind::Anthropic => VerifyRequest {
                path: "/v1/models",
                headers: &[("anthropic-version", "2023-06-01")],
            },
            Kind::OpenRouter => VerifyRequest {
                path: "/v1/key",
                headers: &[],
            },
            Kind::Azure => VerifyRequest {
                path: "/models?api-version=2024-10-21",
                headers: &[],
            },
            Kind::OpenAi | Kind::Xai | Kind::Generic => VerifyRequest {
                path: "/v1/models",
                headers: &[],
            },
        }
    }

    /// True when [`Kind::judge`] needs the error body for this status (only
    /// then is it read before deciding).
    pub fn reads_body(self, status: u16) -> bool {
        match self {
            Kind::OpenAi => status == 429,
            Kind::Xai => matches!(status, 400 | 403 | 429),
            Kind::Anthropic => status == 400,
            Kind::Azure | Kind::OpenRouter | Kind::Generic => false,
        }
    }

    /// What an upstream answer says about the key (docs/design.md §11's table).
    /// `error`: the parsed body, when [`Kind::reads_body`] asked for it.
    pub fn judge(self, status: u16, error: &ProviderError) -> KeyVerdict {
        use KeyVerdict::*;
        if (200..300).contains(&status) {
            return Accepted;
        }
        match (self, status) {
            (Kind::OpenAi, 401 | 403) => Rejected,
            (Kind::OpenAi, 429) if error.is("insufficient_quota") => OutOfCredit,
            (Kind::OpenAi, 429) => RateLimited,

            (Kind::Xai, 400) if error.about_the_key() => Rejected,
            (Kind::Xai, 401) => Rejected,
            (Kind::Xai, 403 | 429) if error.about_credit() => OutOfCredit,
            (Kind::Xai, 403) => Rejected,
            (Kind::Xai, 429) => RateLimited,

            (Kind::Anthropic, 401 | 403) => Rejected,
            (Kind::Anthropic, 400) if error.message_has(&["credit balance"]) => OutOfCredit,
            (Kind::Anthropic, 429) => RateLimited,

            (Kind::OpenRouter, 401) => Rejected,
            (Kind::OpenRouter, 402) => OutOfCredit,
            (Kind::OpenRouter, 429) => RateLimited,

            (Kind::Azure, 401 | 403) => Rejected,
            (Kind::Azure, 429) => RateLimited,

            (Kind::Generic, 401 | 403) => Rejected,
            (Kind::Generic, 402) => OutOfCredit,
            (Kind::Generic, 429) => RateLimited,
            _ => Unrelated,
        }
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
        let rotate = format!("then run `keygate key rotate {provider}` with it");
        let console = match self {
            Kind::OpenAi => "platform.openai.com/api-keys",
            Kind::Xai => "console.x.ai",
            Kind::Anthropic => "console.anthropic.com",
            Kind::OpenRouter => "openrouter.ai/settings/keys",
            Kind::Azure => "the Azure portal (Keys and Endpoint)",
            Kind::Generic => "the provider's dashboard",
        };
        let code = error.code.as_deref().or(error.kind.as_deref());
        let (meaning, fix): (String, String) = match (verdict, code) {
            (KeyVerdict::Accepted, _) => (
                "the upstream accepted the key".into(),
                String::new(),
            ),
            (KeyVerdict::Rejected, Some("account_deactivated")) => (
                "the OpenAI account behind the key is deactivated".into(),
                "use a key of an active account (or contact OpenAI support)".into(),
            ),
            (KeyVerdict::Rejected, Some("mismatched_organization")) => (
                "the key belongs to another organisation than the OpenAI-Organization header names".into(),
                format!("set [providers.{provider}] organization to the key's organisation (or remove it), or use a key of that organisation"),
            ),
            (KeyVerdict::Rejected, Some("mismatched_project")) => (
                "the key belongs to another project than the OpenAI-Project header names".into(),
                format!("set [providers.{provider}] project to the key's project (or remove it), or use a key of that project"),
            ),
            (KeyVerdict::Rejected, Some("no_organization")) => (
                "the key's user is not a member of any organisation".into(),
                "join or create an organisation on platform.openai.com, then create a key there".into(),
            ),
            (KeyVerdict::Rejected, _) if self == Kind::Xai && status == 400 => (
                "xAI answers a bad key with 400: the key is invalid or revoked".into(),
                format!("create a new key at {console}, {rotate}"),
            ),
            (KeyVerdict::Rejected, Some("permission_error")) => (
                "the key is valid but not allowed to use this resource".into(),
                format!("check the key's workspace and permissions at {console}"),
            ),
            (KeyVerdict::Rejected, _) if status == 403 => (
                "the key is refused for this resource: a restricted key, the wrong project or organisation, or a region the provider does not serve".into(),
                format!("check the key's permissions at {console}, or create an unrestricted key, {rotate}"),
            ),
            (KeyVerdict::Rejected, _) => (
                "the key is invalid, revoked or mistyped".into(),
                format!("create a new key at {console}, {rotate}"),
            ),
            (KeyVerdict::OutOfCredit, _) => {
                let billing = match self {
                    Kind::OpenAi => "add credit or raise the budget at platform.openai.com/settings/organization/billing",
                    Kind::Xai => "buy credits or raise the team's spending limit at console.x.ai",
                    Kind::Anthropic => "buy credits at console.anthropic.com (Plans & Billing)",
                    Kind::OpenRouter => "add credits at openrouter.ai/settings/credits, or raise this key's limit",
                    _ => "add credit in the provider's billing settings",
                };
                (
                    "the account behind the key is out of credit or over its spending limit; the key itself is valid".into(),
                    format!("{billing}; meanwhile keygate rests this key and serves with the others"),
                )
            }
            (KeyVerdict::RateLimited, _) => (
                "rate limited: this says nothing certain about the key".into(),
                "retry in a minute; check the account's rate limits if it persists".into(),
            ),
            (KeyVerdict::Unrelated, _) => match status {
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
                    format!("check [providers.{provider}] base_url and kind (now {})", self.as_str()),
                ),
            },
        };
        Explanation { meaning, fix }
    }
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

    fn judge(kind: Kind, status: u16, body: &str) -> KeyVerdict {
        kind.judge(status, &ProviderError::parse(body.as_bytes()))
    }

    #[test]
    fn error_shapes_are_read() {
        let openai = ProviderError::parse(br#"{"error":{"message":"Incorrect API key provided: sk-ab***wxyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#);
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(openai.kind.as_deref(), Some("invalid_request_error"));
        let xai = ProviderError::parse(br#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***yz. You can obtain an API key from https://console.x.ai."}"#);
        assert_eq!(
            xai.code.as_deref(),
            Some("Client specified an invalid argument")
        );
        assert!(xai.message.unwrap().starts_with("Incorrect API key"));
        let anthropic = ProviderError::parse(br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_1"}"#);
        assert_eq!(anthropic.kind.as_deref(), Some("authentication_error"));
        let openrouter = ProviderError::parse(
            br#"{"error":{"message":"Insufficient credits.","code":402,"metadata":{}}}"#,
        );
        assert_eq!(openrouter.code.as_deref(), Some("402"));
        let text = ProviderError::parse(b"Bad Gateway");
        assert_eq!(text.message.as_deref(), Some("Bad Gateway"));
        assert_eq!(ProviderError::parse(b""), ProviderError::default());
        let long = ProviderError::parse("x".repeat(5000).as_bytes());
        assert!(long.message.unwrap().chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn each_kind_tells_a_bad_key_from_an_empty_account_from_a_rate_limit() {
        use KeyVerdict::*;
        let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(judge(Kind::OpenAi, 401, ""), Rejected);
        assert_eq!(judge(Kind::OpenAi, 429, quota), OutOfCredit);
        assert_eq!(judge(Kind::OpenAi, 429, rate), RateLimited);
        assert_eq!(judge(Kind::OpenAi, 400, quota), Unrelated);

        let bad = r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***yz. You can obtain an API key from https://console.x.ai."}"#;
        let credits = r#"{"code":"Client specified an invalid argument","error":"Your team 0000 has either used all available credits or reached its monthly spending limit. To continue making API requests, please purchase more credits or raise your spending limit."}"#;
        let bad_request =
            r#"{"code":"Client specified an invalid argument","error":"Model not found: grok-9"}"#;
        assert_eq!(judge(Kind::Xai, 400, bad), Rejected);
        assert_eq!(judge(Kind::Xai, 400, bad_request), Unrelated);
        assert_eq!(judge(Kind::Xai, 403, credits), OutOfCredit);
        assert_eq!(judge(Kind::Xai, 429, credits), OutOfCredit);
        assert_eq!(judge(Kind::Xai, 429, "{}"), RateLimited);
        assert_eq!(judge(Kind::Xai, 403, "{}"), Rejected);

        let low = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
        let extra = r#"{"type":"error","error":{"type":"invalid_request_error","message":"stream_options: Extra inputs are not permitted"}}"#;
        assert_eq!(judge(Kind::Anthropic, 400, low), OutOfCredit);
        assert_eq!(judge(Kind::Anthropic, 400, extra), Unrelated);
        assert_eq!(judge(Kind::Anthropic, 401, ""), Rejected);
        assert_eq!(judge(Kind::Anthropic, 429, ""), RateLimited);

        assert_eq!(judge(Kind::OpenRouter, 402, ""), OutOfCredit);
        assert_eq!(
            judge(Kind::OpenRouter, 403, ""),
            Unrelated,
            "moderation refusal"
        );
        assert_eq!(judge(Kind::Generic, 402, ""), OutOfCredit);
        assert_eq!(judge(Kind::Azure, 402, ""), Unrelated);
        assert_eq!(judge(Kind::Generic, 500, ""), Unrelated);
        assert_eq!(judge(Kind::Generic, 204, ""), Accepted);
    }

    #[test]
    fn explanations_name_the_fix() {
        let e = |kind: Kind, status: u16, body: &str| {
            let error = ProviderError::parse(body.as_bytes());
            kind.explain("p", status, kind.judge(status, &error), &error)
        };
        let project = e(
            Kind::OpenAi,
            401,
            r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"mismatched_project"}}"#,
        );
        assert!(project.meaning.contains("another project"), "{project:?}");
        assert!(project.fix.contains("[providers.p] project"), "{project:?}");
        let xai = e(
            Kind::Xai,
            400,
            r#"{"code":"x","error":"Incorrect API key provided: xa***yz."}"#,
        );
        assert!(xai.meaning.contains("400"), "{xai:?}");
        assert!(
            xai.fix.contains("console.x.ai") && xai.fix.contains("keygate key rotate p"),
            "{xai:?}"
        );
    }
}
