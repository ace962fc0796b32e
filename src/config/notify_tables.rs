//! `[events]` (how long events are kept and deliveries tried) and the
//! `[[notify]]` receivers, as serde reads them and as they are checked: a
//! receiver's URL may itself be a secret (a Slack webhook's path is), so it
//! is kept as one and named by its host; the signing key is read from the
//! environment variable `secret_env` names, when `serve` starts.

use std::time::Duration;

use serde::Deserialize;

use super::values::duration;
use crate::events::EventType;
use crate::vault::secret::Secret;

/// `[events]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// A delivery not made this long after its event is given up.
    #[serde(deserialize_with = "duration")]
    pub give_up_after: Duration,
    /// The pause before the first retry; it doubles each attempt (with
    /// jitter), up to an hour.
    #[serde(deserialize_with = "duration")]
    pub first_retry: Duration,
    /// How long one delivery may take.
    #[serde(deserialize_with = "duration")]
    pub delivery_timeout: Duration,
    /// Events whose deliveries are over are deleted after this long.
    #[serde(deserialize_with = "duration")]
    pub keep: Duration,
    /// At most this many events are kept (the oldest go first).
    pub max_stored: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[serde(default)]
    name: Option<String>,
    url: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    secret_env: Option<String>,
}

/// How a delivery's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The event itself, signed when `secret_env` is set.
    Json,
    /// A Slack-compatible `{"text": …}`.
    Slack,
}

/// One `[[notify]]` receiver.
#[derive(Debug, Clone)]
pub struct NotifyTarget {
    /// Its name in the outbox, the CLI and metrics: `name`, else the URL's
    /// host and a short digest of the URL.
    pub name: String,
    /// Where deliveries are POSTed (a secret: it may carry a token).
    pub url: Secret,
    /// The URL's host, for messages.
    pub host: String,
    /// How the body is written.
    pub format: NotifyFormat,
    /// The types it wants; `None`: every type.
    pub events: Option<Vec<EventType>>,
    /// The environment variable holding the signing key.
    pub secret_env: Option<String>,
}

impl NotifyTarget {
    /// Whether this receiver wants events of `kind`.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.as_ref().is_none_or(|list| list.contains(&kind))
    }
}

/// Checks the `[[notify]]` tables: an http(s) URL with a host, a known
/// format, known event types, unique names.
pub(super) fn notify_targets(raw: Vec<RawNotify>) -> Result<Vec<NotifyTarget>, String> {
    let mut targets: Vec<NotifyTarget> = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let at = format!("notify[{index}]");
        let uri: http::Uri = raw
            .url
            .parse()
            .map_err(|_| format!("{at}.url is not a URL (write https://host/path)"))?;
        let host = match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => host.to_owned(),
            _ => {
                return Err(format!(
                    "{at}.url must be an http:// or https:// URL with a host"
                ))
            }
        };
        let format = match raw.format.as_deref() {
            None | Some("json") => NotifyFormat::Json,
            Some("slack") => NotifyFormat::Slack,
            Some(other) => {
                return Err(format!("{at}.format `{other}` is not one of: json, slack"));
            }
        };
        let events = match raw.events {
            None => None,
            Some(list) if list.iter().any(|e| e == "*") => None,
            Some(list) => Some(
                list.iter()
                    .map(|name| {
                        EventType::named(name).ok_or_else(|| {
                            format!(
                                "{at}.events: `{name}` is not an event type (known: *, {})",
                                EventType::ALL.map(EventType::as_str).join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if let Some(env) = raw.secret_env.as_deref() {
            if env.is_empty() || env.contains('=') {
                return Err(format!("{at}.secret_env must name an environment variable"));
            }
        }
        let name = match raw.name {
            Some(name) if !name.trim().is_empty() && name.len() <= 64 => name,
            Some(_) => return Err(format!("{at}.name must be 1 to 64 characters")),
            None => {
                let digest = <sha2::Sha256 as sha2::Digest>::digest(raw.url.as_bytes());
                format!("{host}#{}", hex::encode(&digest[..4]))
            }
        };
        if targets.iter().any(|t| t.name == name) {
            return Err(format!(
                "{at}: two [[notify]] receivers are named `{name}`; give each its own `name`"
            ));
        }
        targets.push(NotifyTarget {
            name,
            url: Secret::new(raw.url),
            host,
            format,
            events,
            secret_env: raw.secret_env,
        });
    }
    Ok(targets)
}
