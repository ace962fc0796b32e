//! Black-box integration tests of the `keygate` binary: every test starts real
//! keygate processes (`vault init`, `key add`, `client add`, `serve`, ...) in a
//! private tempdir, points them at a scriptable mock upstream, and asserts what a
//! user would see: status codes, bodies, what the upstream received, exit codes,
//! stderr. `support/` holds the harness; each other module is one behaviour area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod admin_api;
mod auth;
mod compression;
mod config_errors;
mod failing_upstreams;
mod fallback;
mod health;
mod hostile_clients;
mod lifecycle;
mod limits;
mod metering;
mod process_hardening;
mod providers;
mod providers_usage;
mod proxy;
mod reload;
mod rotation;
mod routing;
mod secrets;
mod streaming;
mod vault_cli;
