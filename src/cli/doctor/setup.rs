//! The setup around the keys: the config and where it came from, the
//! listeners, the admin token, `[[notify]]` signing keys and the TLS files,
//! the master key and the vault (not older than one already served) — each
//! through the function `serve` calls before it serves — and Redis and
//! PostgreSQL when configured.

use std::time::Duration;

use super::{Report, Status};
use crate::cli::{start_checks, upstream_runtime, CliError, Context};
use crate::config::LedgerDb;
use crate::vault::document::Document;
use crate::vault::secret::Secret;

pub(super) fn config_checks(
    context: &Context,
    env: &[(String, String)],
    admin_token: Option<Secret>,
    report: &mut Report,
) {
    let config = &context.config;
    let overrides: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("KEYGATE_") && k.contains("__"))
        .collect();
    let from_env = if overrides.is_empty() {
        String::new()
    } else {
        format!("; overridden by {}", overrides.join(", "))
    };
    report.add(
        "config",
        Status::Ok,
        format!(
            "valid: the embedded defaults, then {}{from_env}",
            config.source_name
        ),
        None,
    );
    for (what, addr) in [
        ("client listen", config.server.listen),
        ("admin listen", config.server.admin_listen),
    ] {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => report.add("listeners", Status::Ok, format!("{what} {addr} is free"), None),
            Err(error) => report.add(
                "listeners",
                Status::Warn,
                format!("{what} {addr} cannot be bound ({error}); a keygate may already be running there"),
                Some("stop the other process, or change [server] listen / admin_listen".to_owned()),
            ),
        }
    }
    let token_env = &config.admin.token_env;
    match admin_token.map(|token| start_checks::admin_token(Some(token), token_env)) {
        Some(Ok(_)) => report.add(
            "admin token",
            Status::Ok,
            format!("{token_env} is set: the admin API is on"),
            None,
        ),
        Some(Err(error)) => report.add("admin token", Status::Fail, error.to_string(), None),
        None => report.add(
            "admin token",
            Status::Warn,
            format!("{token_env} is not set: the admin API is off"),
            Some(format!(
                "export {token_env}=$(openssl rand -hex 32) before `keygate serve`"
            )),
        ),
    }
    if !config.notify.is_empty() {
        match start_checks::notify_receivers(config, env) {
            Ok(receivers) => report.add(
                "notify",
                Status::Ok,
                format!(
                    "{} receiver(s); every secret_env named is set",
                    receivers.len()
                ),
                None,
            ),
            Err(error) => report.add("notify", Status::Fail, error.to_string(), None),
        }
    }
    if config.server.tls_cert.is_some() {
        match start_checks::tls(config) {
            Ok(()) => report.add(
                "tls",
                Status::Ok,
                "the certificate and its key load".to_owned(),
                None,
            ),
            Err(error) => report.add("tls", Status::Fail, error.to_string(), None),
        }
    }
}

pub(super) fn vault_checks(context: &Context, report: &mut Report) -> Option<Document> {
    let kek = match context.kek() {
        Ok(kek) => kek,
        Err(error) => {
            report.add("master key", Status::Fail, error.to_string(), None);
            return None;
        }
    };
    report.add(
        "master key",
        Status::Ok,
        "found, readable by keygate alone (its user, or its own group)".to_owned(),
        None,
    );
    match start_checks::vault(context, &kek) {
        Ok(loaded) => {
            report.add(
                "vault",
                Status::Ok,
                format!(
                    "{} opens with the master key (generation {}{})",
                    context.config.vault.path.display(),
                    loaded.generation,
                    if loaded.read_only { ", read-only" } else { "" }
                ),
                None,
            );
            Some(loaded.document)
        }
        Err(error) => {
            report.add("vault", Status::Fail, error.to_string(), None);
            None
        }
    }
}

pub(super) fn shared_store_checks(context: &Context, report: &mut Report) -> Result<(), CliError> {
    let cluster = &context.config.cluster;
    if let Some(url) = &cluster.redis_url {
        let (runtime, _) = upstream_runtime(context)?;
        let answer = runtime.block_on(async {
            let client = redis::Client::open(url.expose()).ok()?;
            let ping = async {
                let mut connection = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .ok()
            };
            tokio::time::timeout(Duration::from_secs(3), ping)
                .await
                .ok()
                .flatten()
        });
        match answer {
            Some(_) => report.add(
                "redis",
                Status::Ok,
                format!("{} answers", cluster.redis_endpoint),
                None,
            ),
            None => report.add(
                "redis",
                Status::Fail,
                format!(
                    "{} does not answer (or refuses the password)",
                    cluster.redis_endpoint
                ),
                Some(
                    "check [cluster] redis_url; without Redis each replica limits on its own"
                        .to_owned(),
                ),
            ),
        }
    }
    if let LedgerDb::Postgres { endpoint, .. } = &context.config.metering.db {
        match crate::usage::ledger::Ledger::open(&context.config.metering.db) {
            Ok(_) => report.add(
                "postgres",
                Status::Ok,
                format!("{endpoint} accepts the ledger"),
                None,
            ),
            Err(error) => report.add("postgres", Status::Fail, error.to_string(), None),
        }
    }
    Ok(())
}
