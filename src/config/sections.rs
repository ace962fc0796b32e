//! The plain sections of the config: `[server]`, `[vault]`, `[admin]`,
//! `[keys]`, `[clients]`, `[metering]` (and where its ledger lives) and
//! `[cluster]`, each as serde reads it with its defaults from the embedded
//! file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{duration, ledger_db, opt_path, optional_duration, secret, size};

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
    /// Log lines as text (default) or one JSON object per line.
    #[serde(default)]
    pub log_format: super::LogFormat,
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
    /// Host names (besides IP literals and `localhost`) the admin listener
    /// answers to: a page of another site that rebinds its own name to
    /// keygate's address must not read `/metrics` or `/readyz`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
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
    /// What `POST /admin/leaks` does with a reported key keygate holds.
    pub on_leak_report: OnLeakReport,
    /// How often `serve` takes the inventory of every provider it can list
    /// (docs/design.md §15); 0 turns it off.
    #[serde(deserialize_with = "duration")]
    pub inventory_interval: Duration,
    /// How often `serve` compares each key's usage at the provider with
    /// keygate's (docs/design.md §16); 0 turns it off.
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
    /// How far back the comparison looks.
    #[serde(deserialize_with = "duration")]
    pub reconcile_window: Duration,
    /// How late the providers report: the most recent span left out.
    #[serde(deserialize_with = "duration")]
    pub reconcile_lag: Duration,
    /// More requests than this at the provider than keygate sent is outside use.
    pub outside_use_min_requests: u64,
    /// What outside use of a key does: raise the event, or also burn the key.
    pub on_outside_use: OnOutsideUse,
}

/// `[keys] on_outside_use` (docs/design.md §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutsideUse {
    /// Raise `key_outside_use` only.
    Alert,
    /// Also burn the key, as `key burn` does.
    Burn,
}

/// `[keys] on_leak_report` (docs/design.md §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeakReport {
    /// Burn a reported upstream key in use; revoke a reported client.
    Burn,
    /// Change nothing; raise the event only.
    Alert,
}

/// `[clients]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Requests without a client key run as client `anonymous`.
    pub allow_anonymous: bool,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
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

/// The management API a kind has by default (docs/design.md §12).
/// Checks `[cluster]`: a `redis://` or `rediss://` URL (named in errors by
/// host only, never with its password).
pub(super) fn cluster(raw: RawCluster) -> Result<ClusterConfig, String> {
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
