//! keygate — an authenticating reverse proxy for LLM APIs.
//!
//! ```text
//! client ──► server ──► auth ──► route ──► body ──► keys (pick) ──► forward ──► upstream
//!  (SDK)     (hyper     (kg_ key  (prefix   (limit,  (ArcSwap ring)   (headers)    (h1 pool,
//!            h1/h2,     → client) or model) retry                                  driven inline,
//!            TLS)                           buffer)                                rustls)
//!      ◄── response streamed back unbuffered (401: retry with the next key first) ◄──┘
//! ```
//!
//! The request path is conducted top to bottom by [`proxy`]; it only *reads* the
//! [`state::Snapshot`] that the control plane ([`reload`]) publishes whole.
//!
//! Map of the rooms:
//! - [`config`]: figment layers (embedded defaults → file → `KEYGATE_*`) → typed [`config::Config`]
//! - [`secret`]: the secret type (zeroized, fingerprint-only `Debug`)
//! - [`core_dumps`]: no core file and no same-user ptrace of a process holding keys
//! - [`vault`]: the encrypted file (format, crypto, atomic writes, master key sources)
//! - [`clients`]: `kg_…` client keys: generate, parse, digest
//! - [`keys`]: upstream key rings built from the vault, and key selection
//! - [`server`]: listeners, connections, TLS, timeouts, graceful drain
//! - [`head_guard`]: refuses bare LF in HTTP/1 request heads before hyper parses them
//! - [`providers`]: what is known about each provider kind: auth default, verify request,
//!   and what an upstream answer says about the key (rejected / out of credit / rate limited)
//! - [`proxy`]: the conductor of one request
//! - [`auth`], [`route`], [`body`], [`forward`]: the stages it calls in order
//! - [`content_coding`]: gzip / deflate / br / zstd bodies decoded as they stream, with a size limit
//! - [`json_skim`]: a few top-level fields of a JSON body, without parsing the rest
//! - [`upstream`]: HTTP/1.1 keep-alive pool per origin, connections driven by the request's task
//! - [`error`]: `ProxyError`, the one place a failure becomes an HTTP answer
//! - [`limits`]: per-client rpm / tpm / token budget (reserve, then settle)
//! - [`meter`]: per-client usage (SSE/JSON tap, counters, SQLite ledger)
//! - [`metrics`]: every metric name, on a registry the process owns
//! - [`log_format`]: the stock log line's text, formatted without `core::fmt` where it can be
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`
//! - [`state`], [`reload`]: the shared snapshot and its single writer
//! - [`shutdown`]: the stop signal every task is handed
//! - [`cli`]: the commands; the only code that prints to stdout

pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clients;
pub mod config;
pub mod content_coding;
pub mod core_dumps;
pub mod error;
pub mod forward;
pub mod head_guard;
pub mod json_skim;
pub mod keys;
pub mod limits;
pub mod log_format;
pub mod meter;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod upstream;
pub mod vault;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
