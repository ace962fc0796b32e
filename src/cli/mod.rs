//! The command line (docs/design.md §2): parse, load config, dispatch to one room
//! (file, or folder: `key`) per command group. The only code that prints to stdout.
//!
//! Every error becomes a [`CliError`], whose exit code (2 usage/config, 1
//! runtime) and message are chosen here; messages never contain a secret.
//! Output goes through [`say!`] and [`note!`] ([`stdout`]), which never panic.

#![deny(clippy::print_stdout, clippy::print_stderr)]

/// `println!` for the CLI: a line on standard output that never panics
/// (a closed pipe drops it; see [`stdout`]).
macro_rules! say {
    () => {
        $crate::cli::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::stdout::line(format_args!($($arg)*))
    };
}

/// `eprintln!` for the CLI: a line on standard error that never panics.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::stdout::note_line(format_args!($($arg)*))
    };
}

mod admin_key;
mod client;
mod doctor;
mod events;
mod key;
mod prices;
mod scan;
mod serve;
mod start_checks;
mod stdin;
pub(crate) mod stdout;
mod table;
mod usage;
mod vault;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Sources};
use crate::net::upstream::Upstream;
use crate::vault::secret::Secret;
use crate::vault::{Kek, MasterKeySources, ServedRecord, Vault, VaultError};
pub(crate) use stdin::read_secret_from_stdin;

/// keygate: an authenticating reverse proxy for LLM APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: config/keygate.toml when present, else the embedded defaults).
    #[arg(long, global = true, env = "KEYGATE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (client listener + admin listener).
    Serve {
        /// Serve this vault generation even though a newer one was served
        /// before (after restoring an older vault on purpose); recorded.
        #[arg(long, value_name = "N")]
        accept_vault_generation: Option<u64>,
    },
    /// Create or re-key the encrypted vault.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// Manage upstream API keys (secrets are read from stdin).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Issue, list and revoke client keys.
    #[command(subcommand)]
    Client(client::ClientCommand),
    /// Per-client, per-model usage totals from the ledger.
    Usage(usage::UsageArgs),
    /// Find every key in files (honouring .gitignore) and the environment,
    /// each named against the vault: vault KEY_ID STATE, client NAME, or
    /// unknown. Exit 1 when a usable key was found.
    Scan(scan::ScanArgs),
    /// The price table in effect (embedded rows and `[prices]`), per
    /// million tokens, with where each row came from.
    Prices(prices::PricesArgs),
    /// What keygate raised (rotations, burns, refusals, decoys, leak
    /// reports…), newest first, with where each delivery to `[[notify]]` stands.
    Events(events::EventsArgs),
    /// Store, list and remove the providers' management credentials (stdin),
    /// kept apart from the inference keys and never sent on a request.
    #[command(subcommand)]
    AdminKey(admin_key::AdminKeyCommand),
    /// One line per check, each failing one with its fix: config, master key and
    /// vault, every provider's keys verified live, rotation and grace, listeners,
    /// admin token, management credentials, Redis and PostgreSQL. Exit 0 when
    /// nothing failed.
    Doctor {
        /// One JSON array of checks instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (`keygate completions bash > /etc/bash_completion.d/keygate`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// A failed command: what went wrong and which exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Config file missing or invalid (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command was used wrongly (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Vault could not be read or written (exit 1).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Anything else at run time (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl From<crate::net::upstream::UpstreamError> for CliError {
    /// A CA file the config names but that holds no certificate is a config
    /// error (exit 2, naming the key); a TLS setup failure is not.
    fn from(error: crate::net::upstream::UpstreamError) -> CliError {
        use crate::net::upstream::UpstreamError;
        match error {
            UpstreamError::CaFile { .. } => CliError::Usage(error.to_string()),
            UpstreamError::Tls(_) => CliError::Runtime(error.to_string()),
        }
    }
}

impl CliError {
    /// 2 for usage and config errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Vault(_) | CliError::Runtime(_) => 1,
        }
    }
}

/// Everything a command needs from its surroundings.
pub struct Context {
    /// Validated configuration.
    pub config: Config,
    /// Where the master key may come from.
    pub master: MasterKeySources,
}

impl Context {
    /// The vault named by the config.
    pub fn vault(&self) -> Vault {
        Vault::new(&self.config.vault.path).with_served_record(ServedRecord::beside_both(
            &self.config.metering.db.local_state(),
            &self.config.vault.path,
        ))
    }

    /// Where this command's events go: the outbox beside the ledger, where
    /// the server delivers them.
    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::to(std::sync::Arc::new(crate::events::direct::DirectSink::new(
            &self.config.metering.db,
            &self.config.notify,
        )))
    }

    /// The master key, or an error saying how to provide one.
    pub fn kek(&self) -> Result<Kek, CliError> {
        let absolute =
            |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        self.master.resolve()?.ok_or_else(|| {
            let key_file = absolute(&self.master.file);
            let vault = absolute(&self.config.vault.path);
            if vault.exists() {
                // `vault init` cannot help: only the key it was made with opens it.
                CliError::Runtime(format!(
                    "the vault {} exists but its master key file {} is missing and neither \
                     KEYGATE_MASTER_KEY nor KEYGATE_PASSPHRASE is set: restore the master key \
                     file from its backup (or set the variable it came from). A new master key \
                     cannot open this vault",
                    vault.display(),
                    key_file.display()
                ))
            } else {
                CliError::Runtime(format!(
                    "no vault and no master key yet ({} and {} do not exist): run `keygate vault init` first",
                    vault.display(),
                    key_file.display()
                ))
            }
        })
    }

    /// Checks that `provider` is configured.
    pub fn provider(&self, provider: &str) -> Result<&crate::config::Provider, CliError> {
        if let Some(found) = self.config.providers.get(provider) {
            return Ok(found);
        }
        Err(CliError::Usage(format!(
            "unknown provider `{provider}`: configured providers are {} (add a [providers.{provider}] table to the config)",
            self.config.providers.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// Parses `args`, runs the command. `env` is the process environment, passed in
/// so that nothing below reads it directly.
pub fn run(cli: Cli, env: Vec<(String, String)>) -> Result<(), CliError> {
    // Needs no config, vault or key: works before anything is set up.
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Into memory first: the generator panics when its writer fails.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "keygate", &mut script);
        stdout::bytes(&script);
        return stdout::finish();
    }
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Secret::new(v.clone()))
            .filter(|s| !s.is_blank())
    };
    let sources = Sources {
        explicit_file: cli.config.clone(),
        default_file: Some(crate::config::default_path().to_path_buf()),
        env: env.clone(),
    };
    let config = Config::load(&sources)?;
    let master = MasterKeySources {
        env_master_key: lookup("KEYGATE_MASTER_KEY"),
        env_passphrase: lookup("KEYGATE_PASSPHRASE"),
        file: config.vault.master_key_file.clone(),
    };
    init_logging(&env, config.server.log_format);
    if !config.server.allow_core_dumps {
        crate::control::core_dumps::forbid().map_err(|e| CliError::Runtime(e.to_string()))?;
    }
    let admin_token = lookup(&config.admin.token_env);
    let token_env = config.admin.token_env.clone();
    let context = Context { config, master };
    let done = match cli.command {
        Command::Serve {
            accept_vault_generation,
        } => serve::run(
            context,
            start_checks::admin_token(admin_token, &token_env)?,
            accept_vault_generation,
            &env,
        ),
        Command::Vault(command) => vault::run(&context, command),
        Command::Key(command) => key::run(&context, command),
        Command::Client(command) => client::run(&context, command),
        Command::Usage(args) => usage::run(&context, args),
        Command::Events(args) => events::run(&context, args),
        Command::Prices(args) => prices::run(&context, args),
        Command::Scan(args) => scan::run(&context, args),
        Command::AdminKey(command) => admin_key::run(&context, command),
        Command::Completions { .. } => Ok(()),
        Command::Doctor { json } => doctor::run(&context, &env, admin_token, json),
    };
    done.and_then(|()| stdout::finish())
}

/// A small runtime and upstream client for the commands that call the upstream.
pub(crate) fn upstream_runtime(
    context: &Context,
) -> Result<(tokio::runtime::Runtime, Upstream), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    let upstream = {
        let _guard = runtime.enter();
        Upstream::new(&context.config)?
    };
    Ok((runtime, upstream))
}

/// `2026-11-24 10:00` in UTC, for tables.
pub(crate) fn format_time(unix: u64) -> String {
    // A stored value past what a calendar prints (year 9999) is shown as
    // that last second, never a panic.
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.min(LAST_PRINTABLE));
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.replace('T', " ")
        .trim_end_matches('Z')
        .get(..16)
        .unwrap_or(&text)
        .to_owned()
}

/// 9999-12-31 23:59:59 UTC, the last second RFC 3339 can write.
const LAST_PRINTABLE: u64 = 253_402_300_799;

/// The longest duration a command takes (`--grace`, `--since`, …): ten years.
/// Longer ones are refused where they are parsed, so no stored time can
/// overflow a clock or a printer later.
pub(crate) const MAX_DURATION: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 86_400);

/// A command-line duration (`24h`, `7d`), at most [`MAX_DURATION`].
pub(crate) fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!(
            "{text} is longer than the maximum, 3650d (ten years)"
        ));
    }
    Ok(duration)
}

/// `3d`, `5h`, `12m` since `unix`.
pub(crate) fn format_age(unix: u64) -> String {
    let secs = crate::unix_now().saturating_sub(unix);
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or
/// one JSON object per line (`[server] log_format`).
fn init_logging(env: &[(String, String)], format: crate::config::LogFormat) {
    let directives = env
        .iter()
        .find(|(k, _)| k == "RUST_LOG")
        .map_or("info", |(_, v)| v.as_str());
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = match format {
        crate::config::LogFormat::Text => crate::control::log_format::builder()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        crate::config::LogFormat::Json => crate::control::log_format::json_builder()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_where_they_are_parsed() {
        assert_eq!(
            duration_arg("24h").unwrap(),
            std::time::Duration::from_secs(86_400)
        );
        let err = duration_arg("99999999999d").unwrap_err();
        assert!(err.contains("3650d"), "{err}");
        assert!(duration_arg("soon").is_err());
    }

    #[test]
    fn no_stored_time_can_make_a_printer_panic() {
        assert_eq!(format_time(u64::MAX), "9999-12-31 23:59");
        assert_eq!(format_time(0), "1970-01-01 00:00");
    }
}
