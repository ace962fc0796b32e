//! Verification: one authenticated request per key — the cheap endpoint the
//! provider's kind names ([`crate::providers::ProviderKind::verify_request`]) — and the
//! answer, status *and* error body, explained in the operator's terms: a
//! verdict, the provider's own code and message (scrubbed of key fragments),
//! what it means and what to do. Redirects are never followed.
//!
//! The verdict comes from the same rule the retry loop uses
//! ([`crate::providers::Kind::judge`]), so `key verify`, rotation and the proxy
//! never disagree about a key. Never prints or logs the key.

use std::time::Duration;

use http::Method;

use crate::config::Provider;
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::Upstream;
use crate::providers::{KeyVerdict, ProviderError};
use crate::vault::secret::Secret;

/// What the upstream said about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key works.
    Ok,
    /// The key is invalid, revoked or not allowed.
    Rejected,
    /// The key is valid but its account is out of credit.
    Exhausted,
    /// The answer says nothing certain about the key (rate limit, 5xx, network).
    Inconclusive,
}

impl Verdict {
    /// The name in `key verify`'s output and `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Rejected => "rejected",
            Verdict::Exhausted => "exhausted",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One key checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The verdict.
    pub verdict: Verdict,
    /// The upstream's status (`None`: no answer).
    pub status: Option<u16>,
    /// The provider's own error code (or type), if its body had one.
    pub provider_code: Option<String>,
    /// The provider's message, with every key fragment masked.
    pub provider_message: Option<String>,
    /// What the answer means.
    pub explanation: String,
    /// What to do about it (empty when nothing is needed).
    pub fix: String,
}

impl Check {
    /// True when the key works.
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }

    /// One line for humans: verdict, status, the provider's words, meaning, fix.
    pub fn describe(&self) -> String {
        let mut line = self.verdict.as_str().to_owned();
        if let Some(status) = self.status {
            line.push_str(&format!(" ({status}"));
            if let Some(code) = &self.provider_code {
                line.push_str(&format!(" {code}"));
            }
            line.push(')');
        }
        line.push_str(": ");
        line.push_str(&self.explanation);
        if let Some(message) = &self.provider_message {
            line.push_str(&format!(" — the provider said: \"{message}\""));
        }
        if !self.fix.is_empty() {
            line.push_str(&format!(" — fix: {}", self.fix));
        }
        line
    }

    /// The `--json` row (docs/design.md §11).
    pub fn to_json(&self, id: &str, provider: &str, label: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "provider": provider,
            "label": label,
            "verdict": self.verdict.as_str(),
            "status": self.status,
            "provider_code": self.provider_code,
            "provider_message": self.provider_message,
            "explanation": self.explanation,
            "fix": self.fix,
        })
    }

    fn inconclusive(explanation: String, fix: String) -> Check {
        Check {
            verdict: Verdict::Inconclusive,
            status: None,
            provider_code: None,
            provider_message: None,
            explanation,
            fix,
        }
    }
}

/// Explains an upstream answer to the verify request for `secret`.
pub fn judge(provider: &Provider, secret: &Secret, status: u16, body: &[u8]) -> Check {
    let error = ProviderError::parse(body);
    let key_verdict = provider.kind.judge(status, &error);
    let explained = provider
        .kind
        .explain(&provider.name, status, key_verdict, &error);
    let verdict = match key_verdict {
        KeyVerdict::Accepted => Verdict::Ok,
        KeyVerdict::Rejected => Verdict::Rejected,
        KeyVerdict::OutOfCredit => Verdict::Exhausted,
        KeyVerdict::RateLimited | KeyVerdict::Unrelated => Verdict::Inconclusive,
    };
    let scrub = |text: String| crate::keys::ring::mask_secret(provider, secret, text);
    Check {
        verdict,
        status: Some(status),
        provider_code: error.code.or(error.kind).map(scrub),
        provider_message: error.message.filter(|_| verdict != Verdict::Ok).map(scrub),
        explanation: explained.meaning,
        fix: explained.fix,
    }
}

/// Error bodies longer than this are not read for the explanation.
const MAX_BODY: usize = 64 * 1024;

/// Checks `secret` against `provider`.
pub async fn verify(
    upstream: &Upstream,
    provider: &Provider,
    secret: &Secret,
    timeout: Duration,
) -> Check {
    let Some((name, value)) = provider.auth.header(secret) else {
        return Check {
            verdict: Verdict::Rejected,
            status: None,
            provider_code: None,
            provider_message: None,
            explanation: "the key contains characters that cannot be sent in an HTTP header"
                .to_owned(),
            fix: "check the key was pasted whole, without spaces or line breaks".to_owned(),
        };
    };
    let request = provider.kind.verify_request();
    let (path, query) = match request.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path, None),
    };
    let Some(uri) = provider.url(path, query) else {
        return Check::inconclusive(
            "the provider's base_url does not form a valid URL".to_owned(),
            format!("check [providers.{}] base_url", provider.name),
        );
    };
    let mut outbound = http::Request::new(OutboundBody::Full(None));
    *outbound.method_mut() = Method::GET;
    *outbound.uri_mut() = uri;
    outbound.headers_mut().insert(name, value);
    for (name, value) in request.headers {
        outbound
            .headers_mut()
            .insert(*name, http::HeaderValue::from_static(value));
    }
    let answer = upstream.exchange(outbound, MAX_BODY, timeout).await;
    match answer {
        Some(Ok((status, body))) => judge(provider, secret, status, &body),
        Some(Err(error)) => Check::inconclusive(
            format!(
                "network error, upstream unreachable at {}: {}",
                provider.origin,
                error.detail()
            ),
            format!(
                "check connectivity and [providers.{}] base_url",
                provider.name
            ),
        ),
        None => Check::inconclusive(
            format!(
                "timeout: {} did not answer within {timeout:?}",
                provider.origin
            ),
            format!(
                "check connectivity and [providers.{}] base_url",
                provider.name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_message_is_scrubbed_and_the_fix_named() {
        let config = Config::from_toml("").unwrap();
        let secret = Secret::new("xai-0123456789abcdefghijklmnopqrstuvwxyz".to_owned());
        let body = br#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xai-0123456789abcdefghijklmnopqrstuvwxyz."}"#;
        let check = judge(&config.providers["xai"], &secret, 400, body);
        assert_eq!(check.verdict, Verdict::Rejected);
        let line = check.describe();
        assert!(!line.contains("0123456789abcdef"), "{line}");
        assert!(
            line.contains("console.x.ai") && line.contains("keygate key rotate xai"),
            "{line}"
        );
        let ok = judge(&config.providers["xai"], &secret, 200, b"{}");
        assert!(ok.is_ok());
        assert_eq!(ok.provider_message, None);
    }
}
