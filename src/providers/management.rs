//! The shape of a provider's *management* API (docs/design.md §12): the
//! trait each kind with one implements in its own file — which request
//! creates an inference key and where the answer carries it, which lists the
//! keys (by the name keygate gave them, or by the hint the provider shows of
//! a key), which deletes or disables one — and the types they share.
//! Pure: it builds requests and reads answers; `keys::management` sends them.

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

impl Call {
    /// A `GET` of `path`.
    pub fn get(path: String) -> Call {
        Call {
            method: http::Method::GET,
            path,
            body: None,
        }
    }

    /// A `DELETE` of `path`.
    pub fn delete(path: String) -> Call {
        Call {
            method: http::Method::DELETE,
            path,
            body: None,
        }
    }

    /// A `POST` of `body` to `path`.
    pub fn post(path: String, body: serde_json::Value) -> Call {
        Call {
            method: http::Method::POST,
            path,
            body: Some(body),
        }
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

/// The bearer credential most management APIs take.
pub const BEARER: AuthHeaders = AuthHeaders {
    header: "authorization",
    bearer: true,
    extra: &[],
};

/// The id a kind's management API works within, set in
/// `[providers.NAME.admin]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminScope {
    /// No id needed.
    None,
    /// `project = "…"`, required; the text says why.
    Project(&'static str),
    /// `team = "…"`, required; the text says why.
    Team(&'static str),
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// The provider's id.
    pub id: String,
    /// Its name, if the provider keeps one.
    pub name: Option<String>,
    /// The redacted form the provider shows (`sk-abc...wxyz`), if any.
    pub hint: Option<String>,
    /// When it was created (unix seconds), if the provider says.
    pub created: Option<u64>,
    /// When it was last used (unix seconds), if the provider says.
    pub last_used: Option<u64>,
    /// Who owns it, in the provider's words (`user Ada`, `service account
    /// keygate-openai-…`), if it says.
    pub owner: Option<String>,
    /// The id of what owns it at the provider (OpenAI: the service account
    /// keygate created), to match it to a key keygate minted.
    pub owner_id: Option<String>,
    /// `false` when the provider says it is disabled or archived.
    pub active: Option<bool>,
}

/// An RFC 3339 time as unix seconds (the management APIs' `created_at`).
pub(crate) fn unix_seconds(text: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z').split('.').next()?)
        .or_else(|_| humantime::parse_rfc3339(text))
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Default)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Listed>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

/// What the provider reports one of its keys used in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsageReport {
    /// The provider's key id (OpenAI `key_…`, Anthropic `apikey_…`).
    pub provider_key_id: String,
    /// Model requests, where the provider counts them (OpenAI).
    pub requests: Option<u64>,
    /// Input tokens, cached and cache writes included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// One page of a per-key usage report, and where the next one starts.
#[derive(Debug, Default)]
pub struct UsagePage {
    /// One entry per key and bucket (summed by the caller).
    pub rows: Vec<KeyUsageReport>,
    /// The cursor of the next page.
    pub next: Option<String>,
}

/// A kind's management API. Listing and removal every such kind has;
/// creation only some.
pub trait ManagementKind: Send + Sync + 'static {
    /// The management API's URL when `[providers.NAME.admin] url` is not set.
    fn default_url(&self) -> Option<&'static str>;

    /// The id the API works within.
    fn scope(&self) -> AdminScope {
        AdminScope::None
    }

    /// How the management credential is presented.
    fn auth(&self) -> AuthHeaders {
        BEARER
    }

    /// What removing a key does here: `"deleted"` or `"disabled"`.
    fn removal_word(&self) -> &'static str {
        "deleted"
    }

    /// The permission a credential needs to list the inference keys, as the
    /// provider's console names it (for a 403 on a listing).
    fn list_permission(&self) -> &'static str {
        "permission to list the API keys"
    }

    /// True when the API can create an inference key.
    fn can_create(&self) -> bool {
        false
    }

    /// The call that creates an inference key named `name`, and what the
    /// answer must hold (for the error when it does not). `None`: it cannot.
    fn create(&self, api: &AdminApi, name: &str) -> Option<(Call, &'static str)> {
        let _ = (api, name);
        None
    }

    /// The new key and the provider's id for it, from a 2xx creation answer.
    fn read_created(&self, body: &[u8]) -> Option<(String, String)> {
        let _ = body;
        None
    }

    /// The call that lists one page (`after`: a previous [`Page::next`]).
    /// `None`: no such listing.
    fn list(&self, api: &AdminApi, listing: Listing, after: Option<&str>) -> Option<Call>;

    /// Reads one page of a listing answer (`offset`: entries read before it).
    fn read_list(&self, listing: Listing, body: &[u8], offset: usize) -> Option<Page>;

    /// The call that deletes (or disables) the key `id` found in `listing`.
    fn remove(&self, api: &AdminApi, listing: Listing, id: &str) -> Option<Call>;

    /// The call that reports usage per key over `[start, end)` (unix
    /// seconds, whole hours) in hourly buckets (`page`: a previous
    /// [`UsagePage::next`]). `None`: the provider has no per-key usage API.
    fn key_usage(&self, api: &AdminApi, start: u64, end: u64, page: Option<&str>) -> Option<Call> {
        let _ = (api, start, end, page);
        None
    }

    /// Reads one page of a per-key usage report.
    fn read_key_usage(&self, body: &[u8]) -> Option<UsagePage> {
        let _ = body;
        None
    }
}

/// Reads a usage report paged with `has_more` / `next_page`, whose `data`
/// are time buckets of `results` (as OpenAI's and Anthropic's admin APIs
/// answer), each result read as `R` and turned into a row by `row` (`None`:
/// a result without a key id).
pub(crate) fn read_bucket_report<R: serde::de::DeserializeOwned>(
    body: &[u8],
    row: impl Fn(R) -> Option<KeyUsageReport>,
) -> Option<UsagePage> {
    #[derive(serde::Deserialize)]
    struct Bucket<R> {
        #[serde(default = "Vec::new")]
        results: Vec<R>,
    }
    #[derive(serde::Deserialize)]
    struct Report<R> {
        data: Vec<Bucket<R>>,
        #[serde(default)]
        has_more: bool,
        #[serde(default)]
        next_page: Option<String>,
    }
    let report: Report<R> = serde_json::from_slice(body).ok()?;
    Some(UsagePage {
        next: report.next_page.filter(|_| report.has_more),
        rows: report
            .data
            .into_iter()
            .flat_map(|b| b.results)
            .filter_map(row)
            .collect(),
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` of unix seconds (the Anthropic reports' bounds).
pub(crate) fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Reads a listing paged by cursor, as OpenAI's and Anthropic's admin APIs
/// answer: `{"data": [...], "has_more": bool, "last_id": "…"}`, each item
/// read as `T` and turned into a [`Listed`] by `entry`.
pub(crate) fn read_cursor_page<T: serde::de::DeserializeOwned>(
    body: &[u8],
    entry: impl Fn(T) -> Listed,
) -> Option<Page> {
    #[derive(serde::Deserialize)]
    struct List<T> {
        data: Vec<T>,
        #[serde(default)]
        has_more: bool,
        #[serde(default)]
        last_id: Option<String>,
    }
    let list: List<T> = serde_json::from_slice(body).ok()?;
    Some(Page {
        next: list.last_id.filter(|_| list.has_more),
        entries: list.data.into_iter().map(entry).collect(),
    })
}

/// `&NAME=VALUE` for a listing's cursor, percent-encoded; empty without one.
pub(crate) fn cursor(name: &str, after: Option<&str>) -> String {
    after
        .map(|a| format!("&{name}={}", encoded(a)))
        .unwrap_or_default()
}

/// `text` percent-encoded for a path segment or query value.
pub(crate) fn encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The `project` of `[providers.NAME.admin]` (checked present by the config).
pub(crate) fn project(api: &AdminApi) -> &str {
    api.project.as_deref().unwrap_or_default()
}

/// The `team` of `[providers.NAME.admin]` (checked present by the config).
pub(crate) fn team(api: &AdminApi) -> &str {
    api.team.as_deref().unwrap_or_default()
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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn api() -> AdminApi {
        AdminApi {
            origin: "http://127.0.0.1:1".parse().unwrap(),
            base_path: String::new(),
            project: Some("proj_x".into()),
            team: Some("team_x".into()),
        }
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

    #[test]
    fn kinds_without_a_management_api_say_so() {
        let generic = crate::providers::Kind::generic();
        assert!(generic.management().is_none());
        assert!(!generic.can_remove() && !generic.can_create());
    }
}
