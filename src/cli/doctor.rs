//! `keygate doctor [--json]` (docs/design.md §2): one line per check, each
//! failing one with its fix — the config and where it came from, the master
//! key and the vault (present, modes, the key opens the vault), every
//! provider's keys verified live, keys due for rotation and graces about to
//! end, the listeners free, the admin token, management credentials where
//! `auto_rotate` needs them, Redis and PostgreSQL reachable when configured.
//! Exit 0 only when nothing failed (warnings pass). Never prints a secret.

use std::time::Duration;

use super::upstream_runtime;
use super::{CliError, Context};
use crate::config::LedgerDb;
use crate::keys::verify;
use crate::vault::document::{Document, KeyState};

/// One check's result.
struct Line {
    check: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Default)]
struct Report(Vec<Line>);

impl Report {
    fn add(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.0.push(Line {
            check: check.to_owned(),
            status,
            detail,
            fix,
        });
    }
}

pub(super) fn run(
    context: &Context,
    env: &[(String, String)],
    admin_token_set: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut report = Report::default();
    config_checks(context, env, admin_token_set, &mut report);
    if let Some(document) = vault_checks(context, &mut report) {
        key_checks(context, &document, &mut report)?;
        if context.config.keys.auto_rotate {
            for provider in context.config.providers.values() {
                if provider.admin.is_some() && document.admin_key(&provider.name).is_none() {
                    report.add(
                        "auto_rotate",
                        Status::Fail,
                        format!(
                            "{} has [providers.{0}.admin] but no management credential",
                            provider.name
                        ),
                        Some(format!(
                            "printf '%s' \"$ADMIN_KEY\" | keygate admin-key set {}",
                            provider.name
                        )),
                    );
                }
            }
        }
    }
    if let Some(document) = context
        .kek()
        .ok()
        .and_then(|kek| context.vault().load(&kek).ok())
        .map(|l| l.document)
    {
        inventory_checks(context, &document, &mut report)?;
    }
    shared_store_checks(context, &mut report)?;
    let failed = report.0.iter().filter(|l| l.status == Status::Fail).count();
    if json {
        let rows: Vec<serde_json::Value> = report
            .0
            .iter()
            .map(|l| {
                serde_json::json!({
                    "check": l.check,
                    "status": l.status.word().to_ascii_lowercase(),
                    "detail": l.detail,
                    "fix": l.fix,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(rows));
    } else {
        for line in &report.0 {
            let fix = line
                .fix
                .as_ref()
                .map(|f| format!(" — fix: {f}"))
                .unwrap_or_default();
            say!(
                "{:<5} {:<14} {}{fix}",
                line.status.word(),
                line.check,
                line.detail
            );
        }
    }
    if failed > 0 {
        return Err(CliError::Runtime(format!("{failed} check(s) failed")));
    }
    Ok(())
}

fn config_checks(
    context: &Context,
    env: &[(String, String)],
    admin_token_set: bool,
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
    if admin_token_set {
        report.add(
            "admin token",
            Status::Ok,
            format!("{} is set: the admin API is on", config.admin.token_env),
            None,
        );
    } else {
        report.add(
            "admin token",
            Status::Warn,
            format!(
                "{} is not set: the admin API is off",
                config.admin.token_env
            ),
            Some(format!(
                "export {}=$(openssl rand -hex 32) before `keygate serve`",
                config.admin.token_env
            )),
        );
    }
}

fn vault_checks(context: &Context, report: &mut Report) -> Option<Document> {
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
        "found, mode 0600 or stricter".to_owned(),
        None,
    );
    match context.vault().load(&kek) {
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

fn key_checks(context: &Context, document: &Document, report: &mut Report) -> Result<(), CliError> {
    let (runtime, upstream) = upstream_runtime(context)?;
    let now = crate::unix_now();
    let rotate_after = context.config.keys.rotate_after.as_secs();
    for provider in context.config.providers.values() {
        let usable: Vec<_> = document
            .keys
            .iter()
            .filter(|k| k.provider == provider.name && k.state.is_usable() && k.secret.is_some())
            .filter(|k| !(k.state == KeyState::Previous && k.grace_until.is_some_and(|t| t <= now)))
            .collect();
        let default = provider.name == context.config.routing.default;
        if usable.is_empty() {
            report.add(
                "keys",
                if default { Status::Fail } else { Status::Warn },
                format!(
                    "{} has no usable key{}",
                    provider.name,
                    if default {
                        " (it is the default provider)"
                    } else {
                        ""
                    }
                ),
                Some(format!(
                    "printf '%s' \"$KEY\" | keygate key add {}",
                    provider.name
                )),
            );
            continue;
        }
        let mut working = 0;
        for key in &usable {
            let Some(secret) = key.secret.as_ref() else {
                continue;
            };
            let check = runtime.block_on(verify::verify(
                &upstream,
                provider,
                secret,
                Duration::from_secs(10),
            ));
            if check.is_ok() {
                working += 1;
            } else {
                report.add(
                    "keys",
                    Status::Warn,
                    format!("{} {}: {}", provider.name, key.id, check.describe()),
                    None,
                );
            }
            if key.due_for_rotation(now, rotate_after) {
                report.add(
                    "rotation",
                    Status::Warn,
                    format!(
                        "{} {} is older than [keys] rotate_after",
                        provider.name, key.id
                    ),
                    Some(format!("keygate key rotate {}", provider.name)),
                );
            }
            if let Some(until) = key.grace_until.filter(|t| t.saturating_sub(now) < 86_400) {
                report.add(
                    "grace",
                    Status::Warn,
                    format!(
                        "{} {}'s grace ends in {} s",
                        provider.name,
                        key.id,
                        until.saturating_sub(now)
                    ),
                    None,
                );
            }
        }
        let status = if working > 0 {
            Status::Ok
        } else if default {
            Status::Fail
        } else {
            Status::Warn
        };
        report.add(
            "keys",
            status,
            format!(
                "{}: {working} of {} usable keys verified working",
                provider.name,
                usable.len()
            ),
            (working == 0).then(|| format!("keygate key verify {}", provider.name)),
        );
    }
    Ok(())
}

/// Orphans (keys keygate created but never recorded) and unmanaged keys at
/// each provider keygate can list: warnings, with the command that clears them.
fn inventory_checks(
    context: &Context,
    document: &Document,
    report: &mut Report,
) -> Result<(), CliError> {
    use crate::keys::inventory;
    let listable: Vec<_> = context
        .config
        .providers
        .values()
        .filter(|p| inventory::can_take(document, p))
        .collect();
    if listable.is_empty() {
        return Ok(());
    }
    let (runtime, upstream) = crate::cli::upstream_runtime(context)?;
    for provider in listable {
        let name = &provider.name;
        match runtime.block_on(inventory::take(&upstream, provider, document, None)) {
            Ok(entries) => {
                let counts = inventory::Counts::of(&entries);
                let status = if counts.orphan > 0 || counts.unmanaged > 0 {
                    Status::Warn
                } else {
                    Status::Ok
                };
                report.add(
                    "inventory",
                    status,
                    format!(
                        "{name}: {} keys at the provider, {} managed, {} orphan, {} unmanaged",
                        entries.len(),
                        counts.managed,
                        counts.orphan,
                        counts.unmanaged
                    ),
                    (status == Status::Warn).then(|| {
                        format!("keygate key inventory {name}, then --delete PROVIDER_KEY_ID what is not needed")
                    }),
                );
            }
            Err(error) => report.add("inventory", Status::Warn, format!("{name}: {error}"), None),
        }
    }
    Ok(())
}

fn shared_store_checks(context: &Context, report: &mut Report) -> Result<(), CliError> {
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
