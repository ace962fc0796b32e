//! Configuration: figment layers → [`RawConfig`] (serde, unknown keys refused) → [`Config`].
//!
//! Layers, later wins: the embedded `config/keygate.toml`, the config file, then
//! `KEYGATE_SECTION__KEY` environment variables. Sources are passed in (the
//! environment as a list of pairs), so tests feed strings and never touch the
//! process environment. Config names where secrets live, never a secret.
//!
//! Over 400 lines: every section's raw form, defaults and validation, in one
//! place so that an unknown or malformed key has one error path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

use crate::providers::AdminScope;
pub use crate::providers::{AuthStyle, Kind};

/// The embedded default configuration (the documented `config/keygate.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/keygate.toml");

/// Where the configuration came from and why it is unusable. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` / `KEYGATE_CONFIG` does not exist.
    #[error("config file {0} not found: pass --config PATH to an existing file, or omit it to use the defaults")]
    NotFound(PathBuf),
    /// Parse or type error reported by figment (names the key and the source).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value parsed but makes no sense.
    #[error("invalid configuration in {source_name}: {message}")]
    Semantic {
        /// Which file (or "defaults").
        source_name: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"10m\", \"24h\""
        ))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A secret in the config (`cluster.redis_url`): read as text, kept as a
/// [`Secret`](crate::vault::secret::Secret) so `Debug` never shows it.
fn secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::vault::secret::Secret>, D::Error> {
    Ok(Some(crate::vault::secret::Secret::new(
        String::deserialize(d)?,
    )))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write bytes or e.g. \"8MiB\""
                ))
            }),
    }
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(PathBuf::from))
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// PEM certificate chain for inbound TLS.
    #[serde(default, deserialize_with = "opt_path")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for inbound TLS.
    #[serde(default, deserialize_with = "opt_path")]
    pub tls_key: Option<PathBuf>,
    /// Larger request bodies get 413.
    #[serde(deserialize_with = "size")]
    pub max_request_body: u64,
    /// Bodies up to this size are kept in memory so a 401 can be retried.
    #[serde(deserialize_with = "size")]
    pub retry_buffer: u64,
    /// Deadline for a client's request headers.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Longest pause allowed inside a request body.
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// The whole request body must arrive within this.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Concurrent client connections; the surplus is refused.
    pub max_connections: usize,
    /// PEM certificates trusted for upstream TLS besides the built-in roots
    /// (a private CA in front of a self-hosted model server).
    #[serde(default, deserialize_with = "opt_path")]
    pub upstream_ca_file: Option<PathBuf>,
    /// TCP connect timeout to an upstream.
    #[serde(deserialize_with = "duration")]
    pub upstream_connect_timeout: Duration,
    /// No response headers from the upstream by then: 504.
    #[serde(deserialize_with = "duration")]
    pub upstream_first_byte_timeout: Duration,
    /// No upstream bytes for this long mid-stream: the stream is cut.
    #[serde(deserialize_with = "duration")]
    pub stream_idle_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Leave core dumps and same-user ptrace possible (debugging only: a core
    /// file would hold every upstream key in plaintext).
    pub allow_core_dumps: bool,
}

/// `[vault]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The vault file.
    pub path: PathBuf,
    /// The master key file (used when no master key env var is set).
    pub master_key_file: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Name of the environment variable holding the admin token.
    pub token_env: String,
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Keys older than this are due for rotation.
    #[serde(deserialize_with = "duration")]
    pub rotate_after: Duration,
    /// First cooldown of a rejected key.
    #[serde(deserialize_with = "duration")]
    pub suspect_cooldown: Duration,
    /// How long a key whose account is out of credit rests before a probe.
    #[serde(deserialize_with = "duration")]
    pub exhausted_cooldown: Duration,
    /// Default grace of `previous` after a rotation.
    #[serde(deserialize_with = "duration")]
    pub default_grace: Duration,
    /// `serve` mints and rotates keys older than `rotate_after` (docs/design.md §12).
    pub auto_rotate: bool,
}

/// `[clients]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Requests without a client key run as client `anonymous`.
    pub allow_anonymous: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Option<Kind>,
    base_url: Option<String>,
    auth: Option<AuthStyle>,
    prefix: Option<String>,
    organization: Option<String>,
    project: Option<String>,
    #[serde(default)]
    allow_client_org_headers: bool,
    http: Option<UpstreamHttp>,
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

/// `[providers.NAME.admin]`: the non-secret half of management access (the
/// credential itself lives in the vault, `keygate admin-key set`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
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
    /// `[providers.NAME.admin]`, when configured.
    pub admin: Option<AdminApi>,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    default: String,
    #[serde(default)]
    models: BTreeMap<String, String>,
}

/// `[routing]`, checked against the providers.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Provider for plain `/v1/…`.
    pub default: String,
    /// `(model prefix, provider)`, longest prefix first.
    pub models: Vec<(String, String)>,
}

/// Where the usage ledger lives (`[metering] db`).
#[derive(Debug, Clone)]
pub enum LedgerDb {
    /// A SQLite file (per replica).
    Sqlite(PathBuf),
    /// One PostgreSQL database for every replica; the URL may carry a
    /// password, so it is a secret, named by host only.
    Postgres {
        /// `postgres://USER:PASSWORD@HOST:PORT/DB`.
        url: crate::vault::secret::Secret,
        /// `postgres://HOST:PORT/DB`, for messages.
        endpoint: String,
    },
}

impl LedgerDb {
    /// Where this replica's own small files go (the served vault generation,
    /// the key-health report): beside a SQLite ledger, else under `data/`.
    pub fn local_state(&self) -> PathBuf {
        match self {
            LedgerDb::Sqlite(path) => path.clone(),
            LedgerDb::Postgres { .. } => PathBuf::from("data/usage.postgres"),
        }
    }
}

impl std::fmt::Display for LedgerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerDb::Sqlite(path) => write!(f, "{}", path.display()),
            LedgerDb::Postgres { endpoint, .. } => f.write_str(endpoint),
        }
    }
}

fn ledger_db<'de, D: Deserializer<'de>>(d: D) -> Result<LedgerDb, D::Error> {
    let text = String::deserialize(d)?;
    let Some(rest) = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
    else {
        return Ok(LedgerDb::Sqlite(PathBuf::from(text)));
    };
    // What follows the last `@` is the host; what precedes it is a credential.
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('?').next().unwrap_or_default();
    if host.is_empty() || host.starts_with('/') {
        return Err(serde::de::Error::custom(
            "metering.db: a postgres:// URL needs a host (postgres://USER:PASSWORD@HOST:PORT/DB)",
        ));
    }
    Ok(LedgerDb::Postgres {
        endpoint: format!("postgres://{host}"),
        url: crate::vault::secret::Secret::new(text),
    })
}

/// `[metering]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringConfig {
    /// The usage ledger: a SQLite file, or a PostgreSQL URL.
    #[serde(deserialize_with = "ledger_db")]
    pub db: LedgerDb,
    /// How often counters are flushed to the ledger.
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// Ask Chat Completions / Completions streams (of kinds that have
    /// `stream_options`) for their final usage chunk.
    pub stream_usage: bool,
    /// Usage series (client × provider × model) in all; past it, new
    /// models are counted as `(other)`.
    pub max_series: usize,
    /// Usage series of one client; past it, that client's new models are
    /// counted as its `(other)`.
    pub max_series_per_client: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: ServerConfig,
    vault: VaultConfig,
    admin: AdminConfig,
    keys: KeysConfig,
    clients: ClientsConfig,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    routing: RawRouting,
    metering: MeteringConfig,
    #[serde(default)]
    cluster: RawCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default, deserialize_with = "secret")]
    redis_url: Option<crate::vault::secret::Secret>,
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
}

/// `[cluster]`: what replicas share (docs/design.md §10).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis_url`, kept as a secret (it may carry a password); `None`:
    /// everything stays per replica.
    pub redis_url: Option<crate::vault::secret::Secret>,
    /// Where it points, for messages: `host:port/db`, never the password.
    pub redis_endpoint: String,
    /// How long one Redis call may take before the replica goes on alone.
    pub timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Human name of the file it came from (for messages).
    pub source_name: String,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[vault]`.
    pub vault: VaultConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[keys]`.
    pub keys: KeysConfig,
    /// `[clients]`.
    pub clients: ClientsConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, Provider>,
    /// `[routing]`.
    pub routing: Routing,
    /// `[metering]`.
    pub metering: MeteringConfig,
    /// `[cluster]`.
    pub cluster: ClusterConfig,
}

/// Where to read configuration from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Explicit file (`--config` or `KEYGATE_CONFIG`): must exist.
    pub explicit_file: Option<PathBuf>,
    /// Fallback file used only when present (`config/keygate.toml`).
    pub default_file: Option<PathBuf>,
    /// Environment pairs; only `KEYGATE_*__*` ones are config overrides.
    pub env: Vec<(String, String)>,
}

impl Config {
    /// Loads and validates configuration from `sources`.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        let mut source_name = "the embedded defaults".to_owned();
        let file = match (&sources.explicit_file, &sources.default_file) {
            (Some(path), _) if !path.is_file() => return Err(ConfigError::NotFound(path.clone())),
            (Some(path), _) => Some(path.as_path()),
            (None, Some(path)) if path.is_file() => Some(path.as_path()),
            _ => None,
        };
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
            source_name = path.display().to_string();
        }
        figment = figment.merge(env_overrides(&sources.env)?);
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        Config::validate(raw, source_name)
    }

    /// Loads from a TOML string layered over the defaults (tests, examples).
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        Config::validate(raw, "inline TOML".to_owned())
    }

    fn validate(raw: RawConfig, source_name: String) -> Result<Config, ConfigError> {
        let semantic = |message: String| ConfigError::Semantic {
            source_name: source_name.clone(),
            message,
        };
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            let kind = p
                .kind
                .or_else(|| Kind::named(&name))
                .unwrap_or_else(Kind::generic);
            let base_url = p
                .base_url
                .or_else(|| kind.default_base_url().map(str::to_owned))
                .ok_or_else(|| {
                    semantic(format!(
                        "providers.{name}.base_url is missing: every provider of kind {} needs the upstream's URL, e.g. \"https://api.openai.com\"",
                        kind.as_str()
                    ))
                })?;
            let (origin, base_path) = parse_url(&base_url, "https://api.openai.com")
                .map_err(|why| semantic(format!("providers.{name}.base_url `{base_url}` {why}")))?;
            let prefix = p.prefix.unwrap_or_else(|| format!("/{name}"));
            let prefix = prefix.trim_end_matches('/').to_owned();
            if !prefix.starts_with('/') || prefix.len() < 2 || prefix == "/v1" {
                return Err(semantic(format!(
                    "providers.{name}.prefix `{prefix}` must start with `/`, be non-empty and not be `/v1`"
                )));
            }
            let header = |field: &str, value: Option<String>| {
                value
                    .map(|v| {
                        http::HeaderValue::try_from(v.trim()).map_err(|_| {
                            semantic(format!(
                                "providers.{name}.{field} is not a valid header value"
                            ))
                        })
                    })
                    .transpose()
            };
            let organization = header("organization", p.organization)?;
            let project = header("project", p.project)?;
            let admin = p
                .admin
                .map(|raw| admin_api(&name, kind, raw))
                .transpose()
                .map_err(semantic)?;
            providers.insert(
                name.clone(),
                Provider {
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
                    admin,
                },
            );
        }
        if !providers.contains_key(&raw.routing.default) {
            return Err(semantic(format!(
                "routing.default names provider `{}`, which is not configured (configured: {})",
                raw.routing.default,
                providers.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut models = Vec::new();
        for (prefix, provider) in raw.routing.models {
            if !providers.contains_key(&provider) {
                return Err(semantic(format!(
                    "routing.models maps `{prefix}` to provider `{provider}`, which is not configured"
                )));
            }
            models.push((prefix, provider));
        }
        models.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));

        if raw.server.max_connections == 0 {
            return Err(semantic(
                "server.max_connections must be at least 1".to_owned(),
            ));
        }
        if raw.server.tls_cert.is_some() != raw.server.tls_key.is_some() {
            return Err(semantic(
                "server.tls_cert and server.tls_key must be set together".to_owned(),
            ));
        }
        // A retry buffer larger than the largest body could never fill: clamp
        // it, so lowering max_request_body alone just works.
        let cluster = cluster(raw.cluster).map_err(semantic)?;
        let mut server = raw.server;
        server.retry_buffer = server.retry_buffer.min(server.max_request_body);
        Ok(Config {
            source_name,
            server,
            vault: raw.vault,
            admin: raw.admin,
            keys: raw.keys,
            clients: raw.clients,
            providers,
            routing: Routing {
                default: raw.routing.default,
                models,
            },
            metering: raw.metering,
            cluster,
        })
    }
}

/// An upstream or management URL → (`scheme://authority/`, base path without a
/// trailing slash), or why it is not one (`example` shows a good one).
fn parse_url(text: &str, example: &str) -> Result<(http::Uri, String), String> {
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

/// The management API a kind has by default (docs/design.md §12).
/// Checks `[cluster]`: a `redis://` or `rediss://` URL (named in errors by
/// host only, never with its password).
fn cluster(raw: RawCluster) -> Result<ClusterConfig, String> {
    let timeout = raw.timeout.unwrap_or(Duration::from_millis(100));
    let Some(url) = raw.redis_url else {
        return Ok(ClusterConfig {
            redis_url: None,
            redis_endpoint: String::new(),
            timeout,
        });
    };
    let text = url.expose();
    let (scheme, rest) = text
        .split_once("://")
        .ok_or("cluster.redis_url is not a URL (redis://HOST:PORT/DB or rediss://…)")?;
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "cluster.redis_url must start with redis:// or rediss://, not {scheme}://"
        ));
    }
    // What follows the last `@` is the host; what precedes it is a credential.
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if host.is_empty() || host.starts_with('/') {
        return Err("cluster.redis_url has no host".to_owned());
    }
    Ok(ClusterConfig {
        redis_endpoint: format!("{scheme}://{host}"),
        redis_url: Some(url),
        timeout,
    })
}

/// Validates `[providers.NAME.admin]`: a usable URL (given, or the kind's
/// default), and the id the kind's management API needs — and only that one,
/// so a `team` written under OpenAI is caught rather than silently ignored.
fn admin_api(name: &str, kind: Kind, raw: RawAdmin) -> Result<AdminApi, String> {
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

/// `KEYGATE_SERVER__LISTEN=…` → `server.listen`. Only names with `__` are config
/// keys: `KEYGATE_MASTER_KEY`, `KEYGATE_PASSPHRASE`, `KEYGATE_CONFIG` are not.
/// Values are parsed as TOML values when they parse, else taken as strings.
fn env_overrides(env: &[(String, String)]) -> Result<Serialized<serde_json::Value>, ConfigError> {
    let mut root = serde_json::Map::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("KEYGATE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let parsed = toml_value(value);
        let mut node = &mut root;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                node.insert(part.clone(), parsed.clone());
            } else {
                let entry = node
                    .entry(part.clone())
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                match entry {
                    serde_json::Value::Object(map) => node = map,
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "environment variable {name} nests under a key that is not a table"
                        )))
                    }
                }
            }
        }
    }
    Ok(Serialized::defaults(serde_json::Value::Object(root)))
}

fn toml_value(text: &str) -> serde_json::Value {
    match text.parse::<i64>() {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => match text {
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            _ => serde_json::Value::String(text.to_owned()),
        },
    }
}

/// figment's errors, each named by where the value came from: the key in
/// its file (`server.listne in keygate.toml`), or the environment variable
/// that set it (`KEYGATE_SERVER__LISTN`), never figment's own labels.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("serde_json"));
            let place = if from_env {
                let name: Vec<String> = e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
                format!("environment variable KEYGATE_{}", name.join("__"))
            } else {
                match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                    Some(figment::Source::File(path)) => format!("`{key}` in {}", path.display()),
                    _ if key.is_empty() => "the configuration".to_owned(),
                    _ => format!("`{key}`"),
                }
            };
            format!("{place}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The default config path when none is given.
pub fn default_path() -> &'static Path {
    Path::new("config/keygate.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.server.retry_buffer, 8 * 1024 * 1024);
        assert_eq!(config.routing.default, "openai");
        assert_eq!(config.providers["xai"].prefix, "/xai");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[server]\nlisen = \"1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = Config::from_toml("[server]\nheader_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("header_timeout"), "{err}");
    }

    #[test]
    fn provider_without_base_url_is_named() {
        let err = Config::from_toml("[providers.vllm]\nauth = \"bearer\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.vllm.base_url"), "{err}");
    }

    #[test]
    fn a_kind_with_a_known_url_needs_no_base_url() {
        let config =
            Config::from_toml("[providers.groq]\n[providers.gem]\nkind = \"gemini\"").unwrap();
        let groq = &config.providers["groq"];
        assert_eq!(groq.kind.as_str(), "groq");
        assert_eq!(groq.origin, "https://api.groq.com");
        assert_eq!(groq.base_path, "/openai");
        let gemini = &config.providers["gem"];
        assert_eq!(gemini.base_path, "/v1beta/openai");
        assert_eq!(gemini.prefix, "/gem");
    }

    #[test]
    fn routing_default_must_exist() {
        let err = Config::from_toml("[routing]\ndefault = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn env_overrides_nest_and_skip_secrets() {
        let sources = Sources {
            env: vec![
                ("KEYGATE_SERVER__LISTEN".into(), "0.0.0.0:9000".into()),
                ("KEYGATE_SERVER__MAX_CONNECTIONS".into(), "7".into()),
                ("KEYGATE_MASTER_KEY".into(), "not-a-config-key".into()),
            ],
            ..Sources::default()
        };
        let config = Config::load(&sources).unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.server.max_connections, 7);
    }

    #[test]
    fn retry_buffer_is_clamped_to_max_request_body() {
        let config = Config::from_toml("[server]\nmax_request_body = \"1KiB\"").unwrap();
        assert_eq!(config.server.retry_buffer, 1024);
    }

    #[test]
    fn base_url_path_is_kept() {
        let config = Config::from_toml(
            "[providers.azure]\nbase_url = \"https://x.example.com/openai/\"\nauth = \"api-key\"",
        )
        .unwrap();
        let azure = &config.providers["azure"];
        assert_eq!(azure.base_path, "/openai");
        assert_eq!(azure.prefix, "/azure");
        assert_eq!(azure.auth, AuthStyle::ApiKey);
    }

    #[test]
    fn cluster_url_is_checked_and_never_shown_with_its_password() {
        let config = Config::from_toml(
            "[cluster]\nredis_url = \"redis://:s3cret-pw@10.0.0.5:6380/2\"\ntimeout = \"50ms\"",
        )
        .unwrap();
        assert_eq!(config.cluster.redis_endpoint, "redis://10.0.0.5:6380/2");
        assert_eq!(config.cluster.timeout, Duration::from_millis(50));
        assert!(!format!("{config:?}").contains("s3cret-pw"));
        assert!(Config::from_toml("").unwrap().cluster.redis_url.is_none());
        for (text, expected) in [
            (
                "redis_url = \"http://x:1\"",
                "must start with redis:// or rediss://",
            ),
            ("redis_url = \"nonsense\"", "is not a URL"),
            ("redis_url = \"redis://:pw@\"", "has no host"),
        ] {
            let error = Config::from_toml(&format!("[cluster]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("pw@"), "{error}");
        }
    }

    #[test]
    fn admin_table_defaults_its_url_per_kind() {
        let config = Config::from_toml(
            "[providers.openai.admin]\nproject = \"proj_abc\"\n\
             [providers.xai.admin]\nteam = \"team-1\"\n\
             [providers.anthropic.admin]\n\
             [providers.openrouter]\nbase_url = \"https://openrouter.ai/api\"\n\
             [providers.openrouter.admin]\n",
        )
        .unwrap();
        let admin = |name: &str| config.providers[name].admin.clone().unwrap();
        assert_eq!(admin("openai").url(), "https://api.openai.com");
        assert_eq!(admin("openai").project.as_deref(), Some("proj_abc"));
        assert_eq!(admin("xai").url(), "https://management-api.x.ai");
        assert_eq!(admin("xai").team.as_deref(), Some("team-1"));
        assert_eq!(admin("anthropic").url(), "https://api.anthropic.com");
        assert_eq!(admin("openrouter").url(), "https://openrouter.ai");
        let plain = Config::from_toml("").unwrap();
        assert!(plain.providers["openai"].admin.is_none());
    }

    #[test]
    fn admin_url_is_kept_with_its_path() {
        let config = Config::from_toml(
            "[providers.xai.admin]\nteam = \"t\"\nurl = \"http://127.0.0.1:9000/mgmt/\"",
        )
        .unwrap();
        let admin = config.providers["xai"].admin.clone().unwrap();
        assert_eq!(admin.url(), "http://127.0.0.1:9000/mgmt");
        assert_eq!(admin.base_path, "/mgmt");
    }

    #[test]
    fn bad_admin_tables_are_named() {
        let cases = [
            (
                "[providers.openai.admin]\nproject = \"p\"\nurl = \"not a url\"",
                "providers.openai.admin.url `not a url` is not a URL",
            ),
            (
                "[providers.openai.admin]\nproject = \"p\"\nurl = \"ftp://x.example\"",
                "must be http:// or https://",
            ),
            (
                "[providers.openai.admin]\nproject = \"p\"\nurl = \"/v1\"",
                "needs a scheme and host",
            ),
            (
                "[providers.openai.admin]\n",
                "providers.openai.admin.project is missing",
            ),
            (
                "[providers.xai.admin]\n",
                "providers.xai.admin.team is missing",
            ),
            (
                "[providers.openai.admin]\nproject = \"p\"\nteam = \"t\"",
                "providers.openai.admin.team is only used by kind xai",
            ),
            (
                "[providers.vllm]\nbase_url = \"http://127.0.0.1:1\"\n[providers.vllm.admin]\n",
                "providers.vllm.admin.url is missing",
            ),
            (
                "[providers.openai.admin]\nproject = \"p\"\ntoken = \"x\"",
                "token",
            ),
        ];
        for (toml, expected) in cases {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }
}
