//! `keygate vault init | rekey`.

use clap::Subcommand;

use super::{read_secret_from_stdin, CliError, Context};
use crate::vault::document::Document;
use crate::vault::{Kek, MasterKey, MasterKeySources};

/// Vault commands.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create an empty vault (and a master key file if no master key is configured).
    Init,
    /// Re-wrap the vault's data key under a new master key and write the new master key file.
    Rekey {
        /// Read the new master key (base64, 32 bytes) — or, when KEYGATE_PASSPHRASE is
        /// the source, the new passphrase — from stdin instead of generating one.
        #[arg(long)]
        from_stdin: bool,
    },
}

pub(super) fn run(context: &Context, command: VaultCommand) -> Result<(), CliError> {
    match command {
        VaultCommand::Init => init(context),
        VaultCommand::Rekey { from_stdin } => rekey(context, from_stdin),
    }
}

fn init(context: &Context) -> Result<(), CliError> {
    let vault = context.vault();
    if vault.exists() {
        // After a first `serve` (which creates the vault) the Quickstart's
        // `vault init` has nothing left to do; say so instead of failing.
        let absolute =
            std::path::absolute(vault.path()).unwrap_or_else(|_| vault.path().to_owned());
        let kek = context.kek()?;
        vault.load(&kek)?;
        say!(
            "keygate: the vault {} already exists and opens with its master key: nothing to do",
            absolute.display()
        );
        return Ok(());
    }
    let (kek, created_key) = ensure_master_key(&context.master)?;
    vault.create(&kek, &Document::default())?;
    say!(
        "keygate: created an empty vault at {}",
        vault.path().display()
    );
    if created_key {
        say!(
            "keygate: created a new master key file at {} (mode 0600) — back it up: without it the vault cannot be opened",
            context.master.file.display()
        );
    }
    Ok(())
}

/// The configured master key, or a new one written to the master key file.
/// Returns whether a file was created.
pub(super) fn ensure_master_key(master: &MasterKeySources) -> Result<(Kek, bool), CliError> {
    if let Some(kek) = master.resolve()? {
        return Ok((kek, false));
    }
    let key = MasterKey::generate();
    master.write_file(&key)?;
    Ok((Kek::Raw(key), true))
}

fn rekey(context: &Context, from_stdin: bool) -> Result<(), CliError> {
    let vault = context.vault();
    let old = context.kek()?;
    if context.master.env_passphrase.is_some() {
        if !from_stdin {
            return Err(CliError::Usage(
                "the vault is keyed by KEYGATE_PASSPHRASE: pass --from-stdin and pipe the new passphrase in".to_owned(),
            ));
        }
        let passphrase = read_secret_from_stdin("new passphrase")?;
        vault.rekey(&old, &Kek::Passphrase(passphrase))?;
        say!(
            "keygate: vault {} re-keyed under the new passphrase; set KEYGATE_PASSPHRASE to it before the next start, and keep it wherever the old one was kept: from now on only the new passphrase opens the vault",
            vault.path().display()
        );
        return Ok(());
    }
    let new_key = if from_stdin {
        let text = read_secret_from_stdin("new master key (base64, 32 bytes)")?;
        MasterKey::from_base64(text.expose())?
    } else {
        MasterKey::generate()
    };
    // The new key is on disk before the vault depends on it: an interrupted
    // rekey leaves `<file>.new` holding the key the vault may already need.
    let staged = MasterKeySources {
        env_master_key: None,
        env_passphrase: None,
        file: staged_path(&context.master),
    };
    staged.replace_file(&new_key)?;
    vault.rekey(&old, &Kek::Raw(new_key))?;
    std::fs::rename(&staged.file, &context.master.file).map_err(|e| {
        CliError::Runtime(format!(
            "the vault was re-keyed, but moving {} to {} failed ({e}): move it by hand",
            staged.file.display(),
            context.master.file.display()
        ))
    })?;
    say!(
        "keygate: vault {} re-keyed; the new master key is in {} (a running `keygate serve` picks it up by itself)",
        vault.path().display(),
        context.master.file.display()
    );
    say!(
        "keygate: back up {} now: from now on only the new master key opens the vault (keep the old key's backup as long as you keep vault backups made before this rekey)",
        context.master.file.display()
    );
    if context.master.env_master_key.is_some() {
        say!(
            "keygate: KEYGATE_MASTER_KEY is set and takes precedence: replace its value with the contents of {} and restart",
            context.master.file.display()
        );
    }
    Ok(())
}

/// Where `vault rekey` stages a new master key.
pub(super) fn staged_path(master: &MasterKeySources) -> std::path::PathBuf {
    let mut name = master.file.as_os_str().to_owned();
    name.push(".new");
    name.into()
}
