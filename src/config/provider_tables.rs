//! `[providers.NAME]` and `[routing]`: each provider table as written and
//! checked — its kind (which gives the auth header and the default URL),
//! upstream URL, path prefix, account headers and management API — and the
//! routes by path and model.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::providers::AdminScope;
use crate::providers::{AuthStyle, Kind};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    kind: Option<Kind>,
    base_url: Option<String>,
    auth: Option<AuthStyle>,
    prefix: Option<String>,
    organization: Option<String>,
    project: Option<String>,
    #[serde(default)]
    allow_client_org_headers: bool,
    http: Option<UpstreamHttp>,
    pool: Option<Pool>,
    admin: Option<RawAdmin>,
}

/// `[providers.NAME] http`: the HTTP version spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamHttp {
    /// Over TLS, HTTP/2 when the server offers it by ALPN, else HTTP/1.1;
    /// over plain `http://`, HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    H1,
    /// HTTP/2 only: ALPN `h2` over TLS, prior knowledge (h2c) over `http://`.
    H2,
}

/// `[providers.NAME] pool`: how a provider's current keys share the load
/// (docs/design.md §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The client's own key while the provider says it has room for the
    /// request, else the key with the most room; a key at 0 waits for its reset.
    #[default]
    Headroom,
    /// The client's own key while it is healthy.
    Sticky,
}

/// `[providers.NAME.admin]`: the non-secret half of management access (the
/// credential itself lives in the vault, `keygate admin-key set`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    project: Option<String>,
    team: Option<String>,
    url: Option<String>,
}

/// Where and as whom keygate manages a provider's keys (docs/design.md §12).
/// Holds ids and a URL only, never a credential.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// The management API's `scheme://authority`.
    pub origin: http::uri::Uri,
    /// Path it lives under (`""` or e.g. `/api`), no trailing slash.
    pub base_path: String,
    /// OpenAI: the project whose service accounts keygate manages.
    pub project: Option<String>,
    /// xAI: the team whose API keys keygate manages.
    pub team: Option<String>,
}

impl AdminApi {
    /// The management API's URL as configured (origin and base path).
    pub fn url(&self) -> String {
        let origin = self.origin.to_string();
        format!("{}{}", origin.trim_end_matches('/'), self.base_path)
    }
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Table name (`openai`).
    pub name: String,
    /// `scheme://authority`, no trailing slash.
    pub origin: http::uri::Uri,
    /// Path the upstream lives under (`""` or e.g. `/openai`), no trailing slash.
    pub base_path: String,
    /// What the upstream is (sets the defaults below and how its answers are read).
    pub kind: Kind,
    /// Header style for the key.
    pub auth: AuthStyle,
    /// Client path prefix (`/openai`), no trailing slash.
    pub prefix: String,
    /// Sent as `OpenAI-Organization` (the operator's choice, never the client's).
    pub organization: Option<http::HeaderValue>,
    /// Sent as `OpenAI-Project`.
    pub project: Option<http::HeaderValue>,
    /// Pass the client's own `OpenAI-Organization` / `OpenAI-Project` through.
    pub allow_client_org_headers: bool,
    /// HTTP version to the upstream.
    pub http: UpstreamHttp,
    /// How its keys share the load.
    pub pool: Pool,
    /// `[providers.NAME.admin]`, when configured.
    pub admin: Option<AdminApi>,
    /// The table is the embedded defaults' own, which neither the config
    /// file nor the environment changed: a provider keygate offers, not
    /// necessarily one the operator uses ([`super::Config::is_set_up`]).
    pub as_shipped: bool,
}

impl Provider {
    /// The upstream URI: the provider's fixed origin and base path, then
    /// `path` (the client's `/v1/…` path, or keygate's own) and `query`.
    /// Nothing a client sends picks the host.
    pub fn url(&self, path: &str, query: Option<&str>) -> Option<http::Uri> {
        let mut path_and_query = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        let origin = self.origin.clone().into_parts();
        http::Uri::builder()
            .scheme(origin.scheme?)
            .authority(origin.authority?)
            .path_and_query(path_and_query)
            .build()
            .ok()
    }

    /// [`Provider::url`] for a client's request with its path and query as
    /// hyper parsed them: when the upstream takes that path as it is (no
    /// base path, no rewrite), they are reused rather than copied and
    /// parsed again (every request goes through here).
    pub fn url_of_request(
        &self,
        path: &str,
        client: Option<&http::uri::PathAndQuery>,
    ) -> Option<http::Uri> {
        match client {
            Some(sent) if self.base_path.is_empty() && sent.path() == path => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(self.origin.scheme()?.clone());
                parts.authority = Some(self.origin.authority()?.clone());
                parts.path_and_query = Some(sent.clone());
                http::Uri::from_parts(parts).ok()
            }
            _ => self.url(path, client.and_then(|sent| sent.query())),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub(super) default: String,
    #[serde(default)]
    pub(super) models: BTreeMap<String, String>,
}

/// `[routing]`, checked against the providers.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Provider for plain `/v1/…`.
    pub default: String,
    /// `(model prefix, provider)`, longest prefix first.
    pub models: Vec<(String, String)>,
}

/// An upstream or management URL → (`scheme://authority/`, base path without a
/// trailing slash), or why it is not one (`example` shows a good one).
pub(super) fn parse_url(text: &str, example: &str) -> Result<(http::Uri, String), String> {
    let not_a_url = || format!("is not a URL; write e.g. \"{example}\"");
    let uri: http::Uri = text.parse().map_err(|_| not_a_url())?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!("needs a scheme and host, e.g. \"{example}\""));
    };
    if scheme != &http::uri::Scheme::HTTP && scheme != &http::uri::Scheme::HTTPS {
        return Err("must be http:// or https://".to_owned());
    }
    let origin = http::Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| not_a_url())?;
    Ok((origin, uri.path().trim_end_matches('/').to_owned()))
}

/// Validates `[providers.NAME.admin]`: a usable URL (given, or the kind's
/// default), and the id the kind's management API needs — and only that one,
/// so a `team` written under OpenAI is caught rather than silently ignored.
pub(super) fn admin_api(name: &str, kind: Kind, raw: RawAdmin) -> Result<AdminApi, String> {
    let table = format!("providers.{name}.admin");
    let management = kind.management();
    let default = management.and_then(|m| m.default_url());
    let url = match (raw.url, default) {
        (Some(url), _) => url,
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(format!(
                "{table}.url is missing: keygate knows no management API for kind {}; set url, or remove the table",
                kind.as_str()
            ))
        }
    };
    let example = default.unwrap_or("https://api.openai.com");
    let (origin, base_path) =
        parse_url(&url, example).map_err(|why| format!("{table}.url `{url}` {why}"))?;
    let id = |field: &str, value: Option<String>| -> Result<Option<String>, String> {
        let Some(value) = value else { return Ok(None) };
        let value = value.trim().to_owned();
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "{table}.{field} `{value}` is not an id: write it as the provider's console shows it"
            ));
        }
        Ok(Some(value))
    };
    let project = id("project", raw.project)?;
    let team = id("team", raw.team)?;
    let scope = management.map_or(AdminScope::None, |m| m.scope());
    let used_by = |wanted: fn(AdminScope) -> bool| -> String {
        let kinds: Vec<&str> = Kind::all()
            .filter(|k| k.management().is_some_and(|m| wanted(m.scope())))
            .map(Kind::as_str)
            .collect();
        kinds.join(", ")
    };
    if project.is_some() && !matches!(scope, AdminScope::Project(_)) {
        return Err(format!(
            "{table}.project is only used by kind {} (the project whose service accounts keygate manages); remove it",
            used_by(|s| matches!(s, AdminScope::Project(_)))
        ));
    }
    if team.is_some() && !matches!(scope, AdminScope::Team(_)) {
        return Err(format!(
            "{table}.team is only used by kind {} (the team whose API keys keygate manages); remove it",
            used_by(|s| matches!(s, AdminScope::Team(_)))
        ));
    }
    match scope {
        AdminScope::Project(why) if project.is_none() => {
            return Err(format!("{table}.project is missing: {why}"))
        }
        AdminScope::Team(why) if team.is_none() => {
            return Err(format!("{table}.team is missing: {why}"))
        }
        _ => {}
    }
    Ok(AdminApi {
        origin,
        base_path,
        project,
        team,
    })
}

/// One `[providers.NAME]` table, checked: its kind (named, or the table's
/// name when that is a kind, else generic), URL, prefix, headers and
/// management API.
pub(super) fn provider(name: String, p: RawProvider) -> Result<Provider, String> {
    let kind = p
        .kind
        .or_else(|| Kind::named(&name))
        .unwrap_or_else(Kind::generic);
    let base_url = p
        .base_url
        .or_else(|| kind.default_base_url().map(str::to_owned))
        .ok_or_else(|| {
            format!(
                "providers.{name}.base_url is missing: every provider of kind {} needs the upstream's URL, e.g. \"https://api.openai.com\"",
                kind.as_str()
            )
        })?;
    let (origin, base_path) = parse_url(&base_url, "https://api.openai.com")
        .map_err(|why| format!("providers.{name}.base_url `{base_url}` {why}"))?;
    let prefix = p.prefix.unwrap_or_else(|| format!("/{name}"));
    let prefix = prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix == "/v1" {
        return Err(format!(
            "providers.{name}.prefix `{prefix}` must start with `/`, be non-empty and not be `/v1`"
        ));
    }
    let header = |field: &str, value: Option<String>| {
        value
            .map(|v| {
                http::HeaderValue::try_from(v.trim())
                    .map_err(|_| format!("providers.{name}.{field} is not a valid header value"))
            })
            .transpose()
    };
    let organization = header("organization", p.organization)?;
    let project = header("project", p.project)?;
    let admin = p.admin.map(|raw| admin_api(&name, kind, raw)).transpose()?;
    Ok(Provider {
        auth: p.auth.unwrap_or(kind.default_auth()),
        kind,
        name,
        origin,
        base_path,
        prefix,
        organization,
        project,
        allow_client_org_headers: p.allow_client_org_headers,
        http: p.http.unwrap_or_default(),
        pool: p.pool.unwrap_or_default(),
        admin,
        as_shipped: false,
    })
}
