//! Configuration: figment layers → [`RawConfig`] (serde, unknown keys refused) → [`Config`].
//!
//! Layers, later wins: the embedded `config/keygate.toml`, the config file, then
//! `KEYGATE_SECTION__KEY` environment variables. Sources are passed in (the
//! environment as a list of pairs), so tests feed strings and never touch the
//! process environment. Config names where secrets live, never a secret.
//!
//! One error path for every unknown or malformed key: the sections' raw
//! forms ([`sections`], [`provider_tables`], read with [`values`]' parsers) are
//! checked here, in [`Config::validate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::Deserialize;

mod notify_tables;
mod provider_tables;
mod sections;
mod telemetry_table;
mod values;

pub use crate::providers::{AuthStyle, Kind};
pub use notify_tables::{EventsConfig, NotifyFormat, NotifyTarget};
pub use provider_tables::{AdminApi, Pool, Provider, Routing, UpstreamHttp};
use provider_tables::{RawProvider, RawRouting};
use sections::RawCluster;
pub use sections::{
    AdminConfig, ClientsConfig, ClusterConfig, KeysConfig, LedgerDb, MeteringConfig, OnLeakReport,
    OnOutsideUse, ServerConfig, VaultConfig,
};
pub use telemetry_table::{LogFormat, TelemetryConfig};

/// The embedded default configuration (the documented `config/keygate.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/keygate.toml");

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
    events: EventsConfig,
    #[serde(default)]
    notify: Vec<notify_tables::RawNotify>,
    #[serde(default)]
    prices: BTreeMap<String, crate::usage::prices::RawPrice>,
    #[serde(default)]
    telemetry: telemetry_table::RawTelemetry,
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
    /// `[events]`.
    pub events: EventsConfig,
    /// `[[notify]]`: where events are delivered.
    pub notify: Vec<NotifyTarget>,
    /// The embedded price table with `[prices]` on top.
    pub prices: std::sync::Arc<crate::usage::prices::PriceTable>,
    /// `[telemetry]`: OpenTelemetry traces.
    pub telemetry: TelemetryConfig,
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
        let shipped = as_shipped(&figment, raw.providers.keys());
        Config::validate(raw, source_name, &shipped)
    }

    /// Loads from a TOML string layered over the defaults (tests, examples).
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml));
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        let shipped = as_shipped(&figment, raw.providers.keys());
        Config::validate(raw, "inline TOML".to_owned(), &shipped)
    }

    /// Whether the operator set provider `name` up: its table is theirs
    /// (written or changed by the config file or the environment), it is
    /// `routing.default`, or `has_keys` — the vault holds a key of it, in any
    /// state. A provider the embedded defaults merely offer (`xai`,
    /// `anthropic`) is none of these, and `doctor` and the status page say it
    /// is not set up instead of warning that it has no key.
    pub fn is_set_up(&self, name: &str, has_keys: bool) -> bool {
        has_keys
            || name == self.routing.default
            || self.providers.get(name).is_some_and(|p| !p.as_shipped)
    }

    fn validate(
        raw: RawConfig,
        source_name: String,
        shipped: &[String],
    ) -> Result<Config, ConfigError> {
        let semantic = |message: String| ConfigError::Semantic {
            source_name: source_name.clone(),
            message,
        };
        let mut providers = BTreeMap::new();
        for (name, raw_provider) in raw.providers {
            let mut provider = provider_tables::provider(name, raw_provider).map_err(&semantic)?;
            provider.as_shipped = shipped.contains(&provider.name);
            providers.insert(provider.name.clone(), provider);
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
        let cluster = sections::cluster(raw.cluster).map_err(&semantic)?;
        let notify = notify_tables::notify_targets(raw.notify).map_err(&semantic)?;
        let telemetry = telemetry_table::telemetry(raw.telemetry).map_err(&semantic)?;
        let prices =
            crate::usage::prices::PriceTable::load(&raw.prices, &source_name).map_err(&semantic)?;
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
            events: raw.events,
            notify,
            prices: std::sync::Arc::new(prices),
            telemetry,
        })
    }
}

/// The provider tables among `names` whose every key is as the embedded
/// defaults ship it, after every layer of `merged` (the file and the
/// environment) — compared as values, so a copy of the shipped file still
/// counts as shipped.
fn as_shipped<'a>(merged: &Figment, names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let shipped = Figment::from(Toml::string(DEFAULT_TOML));
    names
        .filter(|name| {
            let path = format!("providers.{name}");
            !name.contains('.')
                && shipped
                    .find_value(&path)
                    .is_ok_and(|own| merged.find_value(&path).is_ok_and(|now| now == own))
        })
        .cloned()
        .collect()
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
    use std::time::Duration;

    #[test]
    fn embedded_defaults_load() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.server.retry_buffer, 8 * 1024 * 1024);
        assert_eq!(config.routing.default, "openai");
        assert_eq!(config.providers["xai"].prefix, "/xai");
    }

    #[test]
    fn a_provider_the_defaults_only_offer_is_not_set_up_until_the_operator_touches_it() {
        let config = Config::from_toml("").unwrap();
        assert!(config.providers["xai"].as_shipped);
        assert!(!config.is_set_up("xai", false), "offered, no key");
        assert!(config.is_set_up("xai", true), "a key in the vault");
        assert!(config.is_set_up("openai", false), "the default route");
        // A copy of the shipped file changes nothing; one key changed does.
        assert!(!Config::from_toml(DEFAULT_TOML)
            .unwrap()
            .is_set_up("xai", false));
        let changed = Config::from_toml(
            "[providers.xai]
base_url = \"http://127.0.0.1:9\"",
        )
        .unwrap();
        assert!(changed.is_set_up("xai", false));
        assert!(!changed.is_set_up("anthropic", false));
        let sources = Sources {
            env: vec![(
                "KEYGATE_PROVIDERS__ANTHROPIC__PREFIX".into(),
                "/claude".into(),
            )],
            ..Sources::default()
        };
        assert!(Config::load(&sources)
            .unwrap()
            .is_set_up("anthropic", false));
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
    fn a_request_url_is_the_same_whether_the_clients_path_is_reused_or_not() {
        let config = Config::from_toml(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/\"\n[providers.groq]\n",
        )
        .unwrap();
        for (provider, sent, path) in [
            ("openai", "/v1/chat/completions?x=1", "/v1/chat/completions"),
            ("openai", "/openai/v1/models", "/v1/models"),
            ("groq", "/v1/chat/completions?a=b&c", "/v1/chat/completions"),
        ] {
            let provider = &config.providers[provider];
            let sent: http::uri::PathAndQuery = sent.parse().unwrap();
            assert_eq!(
                provider.url_of_request(path, Some(&sent)),
                provider.url(path, sent.query()),
                "{sent}"
            );
        }
        let openai = &config.providers["openai"];
        assert_eq!(
            openai.url_of_request("/v1/models", None).unwrap(),
            "http://127.0.0.1:9/v1/models"
        );
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
