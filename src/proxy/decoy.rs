//! What is recorded when a decoy key (`client add --decoy`) is presented:
//! the event `decoy_used`, `keygate_decoy_uses_total{client}` and one warning
//! line. The client was already answered exactly as an unknown key is; this
//! is the operator's half, called once by the conductor.
//!
//! The fields are what the presenter sent about themselves (their address,
//! user agent and path), so each is cut to a bounded length and has its
//! control characters replaced before it reaches a log line or an event.
//! Never records the key, nor the query string (it may carry anything).

use std::sync::Arc;

use crate::control::state::Shared;
use crate::events::EventType;
use crate::net::listeners::PeerAddr;

/// The longest user agent and path kept, in characters.
const MAX_FIELD_CHARS: usize = 256;

/// What a decoy's presenter told about themselves, made safe to keep.
#[derive(Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The decoy's name.
    pub client: Arc<str>,
    /// The TCP peer (`-` when unknown).
    pub remote_addr: String,
    /// `User-Agent`, cut and cleaned (`-` when absent).
    pub user_agent: String,
    /// The path only (no query string), cut and cleaned.
    pub path: String,
}

impl Sighting {
    /// The sighting of `client` in the request whose head is `parts`.
    pub fn of(client: Arc<str>, parts: &http::request::Parts) -> Sighting {
        let remote_addr = parts
            .extensions
            .get::<PeerAddr>()
            .map_or_else(|| "-".to_owned(), |peer| peer.0.to_string());
        let user_agent = parts.headers.get(http::header::USER_AGENT).map_or_else(
            || "-".to_owned(),
            |v| clean(&String::from_utf8_lossy(v.as_bytes())),
        );
        Sighting {
            client,
            remote_addr,
            user_agent,
            path: clean(parts.uri.path()),
        }
    }
}

/// Raises `decoy_used`, counts it and logs it: once per request that
/// presented a decoy.
pub fn record(shared: &Shared, sighting: &Sighting) {
    shared
        .metrics
        .events
        .decoy_uses
        .with_label_values(&[&sighting.client])
        .inc();
    tracing::warn!(
        client = %sighting.client,
        remote_addr = %sighting.remote_addr,
        user_agent = %sighting.user_agent,
        path = %sighting.path,
        "decoy client key presented: whoever sent it holds a key planted as a trap"
    );
    shared.events.raise(
        EventType::DecoyUsed,
        serde_json::json!({
            "client": &*sighting.client,
            "remote_addr": sighting.remote_addr,
            "user_agent": sighting.user_agent,
            "path": sighting.path,
        }),
    );
}

/// `text` cut to [`MAX_FIELD_CHARS`] characters, each control character
/// replaced by `?`.
fn clean(text: &str) -> String {
    text.chars()
        .take(MAX_FIELD_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, agent: Option<&[u8]>, peer: Option<&str>) -> http::request::Parts {
        let mut request = http::Request::builder().uri(uri);
        if let Some(agent) = agent {
            request = request.header(
                http::header::USER_AGENT,
                http::HeaderValue::from_bytes(agent).unwrap(),
            );
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        if let Some(peer) = peer {
            parts.extensions.insert(PeerAddr(peer.parse().unwrap()));
        }
        parts
    }

    #[test]
    fn the_path_loses_its_query_and_the_fields_are_cut_and_cleaned() {
        let long = "a".repeat(1000);
        let agent = format!("curl/8\t{long}");
        let uri = format!("/v1/chat/completions/{long}?api_key=kg_secret");
        let seen = Sighting::of(
            Arc::from("wiki"),
            &parts(&uri, Some(agent.as_bytes()), Some("203.0.113.9:5123")),
        );
        assert_eq!(seen.remote_addr, "203.0.113.9:5123");
        assert!(
            seen.user_agent.starts_with("curl/8?aaa"),
            "{}",
            seen.user_agent
        );
        assert_eq!(seen.user_agent.chars().count(), MAX_FIELD_CHARS);
        assert!(seen.path.starts_with("/v1/chat/completions/aaa"));
        assert_eq!(seen.path.chars().count(), MAX_FIELD_CHARS);
        assert!(!seen.path.contains('?') && !seen.path.contains("kg_secret"));
    }

    #[test]
    fn missing_fields_read_as_a_dash() {
        let seen = Sighting::of(Arc::from("ci"), &parts("/v1/models", None, None));
        assert_eq!(
            seen,
            Sighting {
                client: Arc::from("ci"),
                remote_addr: "-".to_owned(),
                user_agent: "-".to_owned(),
                path: "/v1/models".to_owned(),
            }
        );
    }

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(clean("a\r\nb\u{7f}c\u{1b}[31m"), "a??b?c?[31m");
    }
}
