//! `keygate client add | list | limits | revoke | rotate`.
//!
//! `add` and `rotate` make a key that exists nowhere else: it is written to
//! standard output alone (or in `--json`) before anything else is said, and
//! when it cannot be written there the vault change is undone, so no client
//! is left holding a key nobody has. What is said to a person goes to stderr.

use clap::{Args, Subcommand};

use super::table::{Align, Table};
use super::{format_time, stdout, CliError, Context};
use crate::vault::client_key;
use crate::vault::client_record::{dollars, BudgetPeriod};
use crate::vault::document::{ClientLimits, ClientRecord};
use crate::vault::secret::Secret;

/// `--rpm`, `--tpm`, `--budget-tokens`, `--budget-usd`, `--budget-period`:
/// a [`ClientLimits`] from the command line.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Token budget (per --budget-period; without one, ever).
    #[arg(long)]
    budget_tokens: Option<u64>,
    /// Dollar budget, priced by the price table (per --budget-period;
    /// without one, ever). `0` removes it.
    #[arg(long, value_name = "USD", value_parser = usd_arg)]
    budget_usd: Option<u64>,
    /// When both budgets start over: a duration (30s, 1h, 1d, 7d; windows
    /// aligned to the Unix epoch, so 1d starts at 00:00 UTC), 1mo (the 1st of
    /// each month, UTC) or lifetime.
    #[arg(long, value_name = "PERIOD", value_parser = BudgetPeriod::parse)]
    budget_period: Option<BudgetPeriod>,
}

/// Dollars (`50`, `12.5`, `0.25`) as micro-dollars.
fn usd_arg(text: &str) -> Result<u64, String> {
    let dollars: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("`{text}` is not an amount of dollars (e.g. 50 or 12.5)"))?;
    if !dollars.is_finite() || !(0.0..=1e9).contains(&dollars) {
        return Err(format!(
            "`{text}`: a budget is between $0 and $1,000,000,000"
        ));
    }
    Ok((dollars * 1e6).round() as u64)
}

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Issue a client key; it is printed once, only its SHA-256 is stored.
    Add {
        /// Client name (letters, digits, `-`, `_`, `.`), shown in logs and metrics.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Issue a decoy: a key that is never valid, refused exactly as an
        /// unknown key is, whose every use raises `decoy_used`. Plant it where
        /// a thief would look.
        #[arg(long, conflicts_with_all = ["rpm", "tpm", "budget_tokens"])]
        decoy: bool,
        /// Print `{"name", "key", "decoy"}` as one JSON line instead of the key alone.
        #[arg(long)]
        json: bool,
    },
    /// List clients (never their keys).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Change an existing client's limits (`0` removes a limit); live within a second.
    Limits {
        /// Client name.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Revoke a client's key; a running server refuses it within a second.
    Revoke {
        /// Client name.
        name: String,
    },
    /// A new key for the client, printed once; the old key stays valid until
    /// the grace ends (both count as the same client), then is refused.
    Rotate {
        /// Client name.
        name: String,
        /// How long the old key keeps working (default: [keys] default_grace).
        #[arg(long, value_parser = crate::cli::duration_arg)]
        grace: Option<std::time::Duration>,
        /// Print `{"name", "key", "old_key_valid_until"}` as one JSON line
        /// instead of the key alone.
        #[arg(long)]
        json: bool,
    },
}

impl From<LimitArgs> for ClientLimits {
    fn from(args: LimitArgs) -> Self {
        ClientLimits {
            rpm: args.rpm,
            tpm: args.tpm,
            budget_tokens: args.budget_tokens,
            budget_usd_micros: args.budget_usd,
            budget_period: args.budget_period,
        }
    }
}

pub(super) fn run(context: &Context, command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Add {
            name,
            limits,
            decoy,
            json,
        } => add(context, name, limits, decoy, json),
        ClientCommand::List { json } => list(context, json),
        ClientCommand::Revoke { name } => revoke(context, &name),
        ClientCommand::Rotate { name, grace, json } => rotate(context, &name, grace, json),
        ClientCommand::Limits { name, limits } => set_limits(context, &name, limits),
    }
}

fn add(
    context: &Context,
    name: String,
    limits: LimitArgs,
    decoy: bool,
    json: bool,
) -> Result<(), CliError> {
    let limits = ClientLimits::from(limits);
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(CliError::Usage(format!(
            "client name `{name}` is not valid: use 1–64 letters, digits, `-`, `_` or `.`"
        )));
    }
    let (key, digest) = client_key::generate()
        .map_err(|e| CliError::Runtime(format!("the OS random number generator failed: {e}")))?;
    let kek = context.kek()?;
    let vault = context.vault();
    vault.update(&kek, |document| {
        if document
            .clients
            .iter()
            .any(|c| c.name == name && c.revoked.is_none())
        {
            return Err(CliError::Usage(format!(
                "client `{name}` already exists; revoke it first or pick another name"
            )));
        }
        document.clients.push(ClientRecord {
            name: name.clone(),
            key_sha256: digest.to_hex(),
            limits,
            created: crate::unix_now(),
            revoked: None,
            old_key: None,
            decoy,
        });
        Ok(())
    })?;
    let shown = if json {
        key_json(&name, &key, ("decoy", decoy.to_string()))
    } else {
        key.clone()
    };
    if let Err(error) = stdout::secret(shown.expose()) {
        let undone = vault.update(&kek, |document| {
            document
                .clients
                .retain(|c| !(c.name == name && c.key_sha256 == digest.to_hex()));
            Ok::<(), CliError>(())
        });
        return Err(lost_key(
            &error,
            &format!("client `{name}`"),
            "created",
            undone,
        ));
    }
    if decoy {
        note!("keygate: decoy `{name}` created. Its key (on standard output) is never valid; plant it where a thief would look. It is shown only this once.");
    } else {
        note!("keygate: client `{name}` created. Its key (on standard output) is shown only this once; store it now.");
    }
    Ok(())
}

/// `{"name": …, "key": …, FIELD: VALUE}` on one line, built straight into a
/// [`Secret`] so no plain copy of the key is left behind (a `kg_` key is
/// letters, digits and `_`: nothing in it needs escaping).
fn key_json(name: &str, key: &Secret, (field, value): (&str, String)) -> Secret {
    Secret::new(format!(
        "{{\"name\":{},\"key\":\"{}\",\"{field}\":{value}}}",
        serde_json::Value::from(name),
        key.expose()
    ))
}

/// The error for a new key that never reached standard output: the change
/// that made it was undone (or, if even that failed, what to do about it).
fn lost_key(
    error: &std::io::Error,
    client: &str,
    done: &str,
    undone: Result<(), CliError>,
) -> CliError {
    match undone {
        Ok(()) => CliError::Runtime(format!(
            "cannot write the new key to standard output ({error}), so nobody has it: {client} was not {done} (the change was undone). Run the command again with its output going where it can be read"
        )),
        Err(undo) => CliError::Runtime(format!(
            "cannot write the new key to standard output ({error}), and undoing the change failed ({undo}): {client} was {done} with a key nobody has; revoke or rotate it"
        )),
    }
}

fn list(context: &Context, json: bool) -> Result<(), CliError> {
    let loaded = context.vault().load(&context.kek()?)?;
    let clients = &loaded.document.clients;
    if json {
        let rows: Vec<serde_json::Value> = clients.iter().map(|c| c.summary()).collect();
        say!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("CREATED", Align::Left),
        ("STATUS", Align::Left),
        ("RPM", Align::Right),
        ("TPM", Align::Right),
        ("BUDGET", Align::Right),
        ("BUDGET USD", Align::Right),
        ("PERIOD", Align::Right),
        ("OLD KEY VALID UNTIL", Align::Left),
    ]);
    let now = crate::unix_now();
    let limit = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    for c in clients {
        let old_key = c
            .old_key
            .as_ref()
            .filter(|o| o.valid_until > now && c.revoked.is_none())
            .map_or_else(|| "-".to_owned(), |o| format_time(o.valid_until));
        let status = match (c.revoked.is_some(), c.decoy) {
            (true, _) => "revoked",
            (false, true) => "DECOY",
            (false, false) => "active",
        };
        table.row(vec![
            c.name.clone(),
            format_time(c.created),
            status.to_owned(),
            limit(c.limits.rpm.map(|v| v.to_string())),
            limit(c.limits.tpm.map(|v| v.to_string())),
            limit(c.limits.budget_tokens.map(|v| v.to_string())),
            limit(
                c.limits
                    .budget_usd_micros
                    .map(|v| format!("${}", dollars(v))),
            ),
            limit(c.limits.budget_period.map(|p| p.to_string())),
            old_key,
        ]);
    }
    for line in table.lines() {
        say!("{line}");
    }
    Ok(())
}

/// The active client `name` (a decoy too), for a revoke.
fn active_client<'a>(
    document: &'a mut crate::vault::document::Document,
    name: &str,
) -> Result<&'a mut ClientRecord, CliError> {
    document
        .clients
        .iter_mut()
        .find(|c| c.name == name && c.revoked.is_none())
        .ok_or_else(|| {
            CliError::Runtime(format!(
                "no active client named `{name}` (see `keygate client list`)"
            ))
        })
}

/// The active real client `name`, for a change a decoy has no use for (a
/// decoy's key is never valid: it has no limits and nothing to rotate).
fn real_client<'a>(
    document: &'a mut crate::vault::document::Document,
    name: &str,
) -> Result<&'a mut ClientRecord, CliError> {
    let client = active_client(document, name)?;
    if client.decoy {
        return Err(CliError::Usage(format!(
            "client `{name}` is a decoy: its key is never valid, so it has no limits and nothing to rotate (revoke it, or add a new decoy)"
        )));
    }
    Ok(client)
}

fn revoke(context: &Context, name: &str) -> Result<(), CliError> {
    let kek = context.kek()?;
    context.vault().update(&kek, |document| {
        let client = active_client(document, name)?;
        client.revoke(crate::unix_now());
        Ok::<(), CliError>(())
    })?;
    say!("keygate: client `{name}` revoked; a running server refuses its key within a second");
    Ok(())
}

fn rotate(
    context: &Context,
    name: &str,
    grace: Option<std::time::Duration>,
    json: bool,
) -> Result<(), CliError> {
    let grace = grace.unwrap_or(context.config.keys.default_grace);
    let (key, digest) = client_key::generate()
        .map_err(|e| CliError::Runtime(format!("the OS random number generator failed: {e}")))?;
    let kek = context.kek()?;
    let vault = context.vault();
    let valid_until = crate::unix_now().saturating_add(grace.as_secs());
    let before = vault.update(&kek, |document| {
        let client = real_client(document, name)?;
        let before = (client.key_sha256.clone(), client.old_key.clone());
        // A key still in an earlier grace is refused from now on: two keys at most.
        client.old_key = Some(crate::vault::document::OldClientKey {
            key_sha256: std::mem::replace(&mut client.key_sha256, digest.to_hex()),
            valid_until,
        });
        Ok::<_, CliError>(before)
    })?;
    let shown = if json {
        key_json(name, &key, ("old_key_valid_until", valid_until.to_string()))
    } else {
        key.clone()
    };
    if let Err(error) = stdout::secret(shown.expose()) {
        let (old_key_sha256, old_key) = before;
        let undone = vault.update(&kek, |document| {
            // Only this rotation's own key is taken back.
            if let Some(client) = document
                .clients
                .iter_mut()
                .find(|c| c.name == name && c.key_sha256 == digest.to_hex())
            {
                client.key_sha256 = old_key_sha256;
                client.old_key = old_key;
            }
            Ok::<(), CliError>(())
        });
        return Err(lost_key(
            &error,
            &format!("client `{name}`"),
            "rotated",
            undone,
        ));
    }
    note!(
        "keygate: client `{name}` has a new key (on standard output), shown only this once; store it now. Its old key keeps working until {} UTC ({grace:?}), then is refused",
        format_time(valid_until)
    );
    Ok(())
}

fn set_limits(context: &Context, name: &str, limits: LimitArgs) -> Result<(), CliError> {
    let change = ClientLimits::from(limits);
    if change == ClientLimits::default() {
        return Err(CliError::Usage(
            "say which limit to change: --rpm, --tpm, --budget-tokens, --budget-usd and/or --budget-period (0 removes one)"
                .to_owned(),
        ));
    }
    let kek = context.kek()?;
    let record = context.vault().update(&kek, |document| {
        let client = real_client(document, name)?;
        client.limits = client.limits.changed_by(change);
        Ok::<_, CliError>(client.clone())
    })?;
    say!(
        "keygate: client `{name}`: {} (live within a second)",
        record.limits.describe()
    );
    Ok(())
}
