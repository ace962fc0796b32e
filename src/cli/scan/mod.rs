//! `keygate scan [PATH…] [--git] [--staged] [--env] [--json | --sarif]
//! [--verify] [--import PROVIDER]` (docs/design.md §15): every key in files
//! (honouring `.gitignore`), in a repository's whole history or its staged
//! changes, and in the process environment, each named against the vault —
//! `vault KEY_ID STATE`, `client NAME`, or `unknown` (with `--verify`: live,
//! dead or inconclusive at the provider). Exit 1 when a usable key was found
//! (one in use, an active client's, an unknown or live one), 0 when nothing
//! usable was, 2 on a usage error. A key is only ever printed masked
//! (`sk-…wxyz`).
//!
//! Rooms: `found` (a hit and where it is), `files` (the tree, the
//! environment), `history` (git: every ref's blobs, the index), `verify`
//! (asking the provider, importing), `report` (table, JSON, SARIF).

mod files;
mod found;
mod history;
mod report;
mod verify;

use std::path::PathBuf;

use clap::Args;

use self::found::{Hit, Scanned};
use self::verify::Liveness;
use super::{CliError, Context};
use crate::keys::held::{self, Held};

/// Scan options.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and directories to scan (default: the current directory); with
    /// `--git` or `--staged`, the repository.
    paths: Vec<PathBuf>,
    /// Scan every blob reachable from every ref of the repository (its whole
    /// history) instead of the files on disk.
    #[arg(long, conflicts_with = "staged")]
    git: bool,
    /// Scan what the next commit would add (the staged changes), for a
    /// pre-commit hook.
    #[arg(long)]
    staged: bool,
    /// Also scan this process's environment variables.
    #[arg(long)]
    env: bool,
    /// One JSON array of findings.
    #[arg(long, conflicts_with = "sarif")]
    json: bool,
    /// SARIF 2.1.0, for code-scanning upload.
    #[arg(long)]
    sarif: bool,
    /// Ask the provider whether each unknown key works (live, dead,
    /// inconclusive), at most one call per second per provider.
    #[arg(long)]
    verify: bool,
    /// Add each live unknown key of this provider's kind to the vault as a
    /// pool member (implies --verify).
    #[arg(long, value_name = "PROVIDER")]
    import: Option<String>,
    /// Scan files `.gitignore` leaves out too.
    #[arg(long)]
    no_ignore: bool,
    /// Skip files (and blobs) larger than this.
    #[arg(long, default_value = "10MiB", value_parser = size_arg)]
    max_file_size: u64,
}

fn size_arg(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|e| format!("`{text}` is not a size (e.g. 10MiB): {e}"))
}

/// One key found, read.
#[derive(Debug)]
pub struct Finding {
    hit: Hit,
    masked: String,
    /// What the vault says it is; `None`: unknown.
    reading: Option<Held>,
    /// What the provider said (`--verify`).
    liveness: Option<Liveness>,
    /// Its new key id (`--import`).
    imported: Option<String>,
}

impl Finding {
    fn reading(&self) -> String {
        match (&self.reading, &self.imported, self.liveness) {
            (Some(held), _, _) => held.describe(),
            (None, Some(id), _) => format!("unknown (live): imported as {id}"),
            (None, None, Some(liveness)) => format!("unknown ({})", liveness.as_str()),
            (None, None, None) => "unknown".to_owned(),
        }
    }

    fn usable(&self) -> bool {
        match &self.reading {
            Some(held) => held.is_usable(),
            None => self.liveness != Some(Liveness::Dead),
        }
    }
}

pub(super) fn run(context: &Context, args: ScanArgs) -> Result<(), CliError> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        return Err(CliError::Usage(format!(
            "{} does not exist",
            missing.display()
        )));
    }
    if let Some(provider) = &args.import {
        context.provider(provider)?;
    }
    let mut scanned = Scanned::default();
    for path in &paths {
        if args.git {
            scanned.merge(history::history(path, args.max_file_size)?);
        } else if args.staged {
            scanned.merge(history::staged(path, args.max_file_size)?);
        }
    }
    if !args.git && !args.staged {
        scanned.merge(files::scan(&paths, args.no_ignore, args.max_file_size));
    }
    if args.env {
        scanned.merge(files::environment());
    }
    scanned.hits.sort_by(|a, b| a.location.cmp(&b.location));
    let mut findings = name(context, scanned.hits);
    if args.verify || args.import.is_some() {
        verify::run(context, &mut findings, args.import.as_deref())?;
    }
    if args.sarif {
        report::sarif(&findings);
    } else if args.json {
        report::json(&findings);
    } else {
        report::table(&findings, scanned.skipped);
    }
    let usable = findings.iter().filter(|f| f.usable()).count();
    if usable > 0 {
        return Err(CliError::Runtime(format!(
            "{usable} usable key(s) found: take them out of the files (and out of use: `keygate key burn KEY_ID`, `keygate client revoke NAME`)"
        )));
    }
    Ok(())
}

/// Each hit named against the vault; without a vault every one reads `unknown`.
fn name(context: &Context, hits: Vec<Hit>) -> Vec<Finding> {
    let vault = context
        .kek()
        .ok()
        .and_then(|kek| context.vault().load(&kek).ok());
    if vault.is_none() {
        eprintln!(
            "keygate: the vault cannot be opened: findings cannot be named and read as unknown"
        );
    }
    hits.into_iter()
        .map(|hit| Finding {
            reading: vault.as_ref().and_then(|loaded| {
                held::by_key(&loaded.document, &loaded.fingerprint_key, hit.key.expose())
                    .map(|(held, _)| held)
            }),
            // Masked as everywhere else: `sk-…wxyz`.
            masked: hit.key.fingerprint(),
            liveness: None,
            imported: None,
            hit,
        })
        .collect()
}
