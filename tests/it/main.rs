//! Black-box integration tests of the `keygate` binary: every test starts real
//! keygate processes (`vault init`, `key add`, `client add`, `serve`, ...) in a
//! private tempdir, points them at a scriptable mock upstream, and asserts what a
//! user would see: status codes, bodies, what the upstream received, exit codes,
//! stderr. `support/` holds the harness (its `mod.rs` has the map); each other
//! module is one behaviour area and imports only from `support`, never from
//! another behaviour module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod admin_api;
mod admin_keys;
mod auth;
mod auto_rotate;
mod budgets;
mod burn;
mod cluster;
mod compression;
mod config_errors;
mod decoys;
mod deploy_files;
mod events;
mod failing_upstreams;
mod fallback;
mod first_hour;
mod health;
mod hostile_clients;
mod inventory;
mod leaks;
mod lifecycle;
mod limits;
mod metering;
mod mint;
mod mint_crash;
mod money;
mod outside_use;
mod postgres_ledger;
mod process_hardening;
mod provider_deletes;
mod providers;
mod providers_usage;
mod proxy;
mod reload;
mod rotation;
mod routing;
mod scan;
mod scan_git;
mod sdk;
mod secrets;
mod skim_bypass;
mod status_page;
mod streaming;
mod tls;
mod upstream_h2;
mod vault_cli;
