//! `keygate scan [PATH…] [--env] [--json] [--no-ignore] [--max-file-size
//! 10MiB]`: every key in files (honouring `.gitignore`) and the process
//! environment, each named against the vault — `vault KEY_ID STATE`,
//! `client NAME`, or `unknown`. Exit 1 when a usable key was found (one in
//! use, an active client's, or an unknown one), 0 when nothing usable was,
//! 2 on a usage error. Prints a key only masked, as everywhere else (`sk-…wxyz`).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, Context};
use crate::keys::detect::{self, Found};
use crate::keys::held::{self, Held};
use crate::vault::document::Document;
use crate::vault::fingerprint_mac::FingerprintKey;

/// Scan options.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and directories to scan (default: the current directory).
    paths: Vec<PathBuf>,
    /// Also scan this process's environment variables.
    #[arg(long)]
    env: bool,
    /// One JSON array of findings.
    #[arg(long)]
    json: bool,
    /// Scan files `.gitignore` leaves out too.
    #[arg(long)]
    no_ignore: bool,
    /// Skip files larger than this.
    #[arg(long, default_value = "10MiB", value_parser = size_arg)]
    max_file_size: u64,
}

fn size_arg(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|e| format!("`{text}` is not a size (e.g. 10MiB): {e}"))
}

/// One key found, read.
struct Finding {
    location: String,
    found: Found,
    masked: String,
    reading: Option<Held>,
}

impl Finding {
    fn reading(&self) -> String {
        self.reading
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), Held::describe)
    }

    fn usable(&self) -> bool {
        self.reading.as_ref().is_none_or(Held::is_usable)
    }
}

pub(super) fn run(context: &Context, args: ScanArgs) -> Result<(), CliError> {
    // Naming needs the vault; without it every finding reads `unknown`.
    let vault = context
        .kek()
        .ok()
        .and_then(|kek| context.vault().load(&kek).ok())
        .map(|l| (l.document, l.fingerprint_key));
    if vault.is_none() {
        eprintln!(
            "keygate: the vault cannot be opened: findings cannot be named and read as unknown"
        );
    }
    let name = |key: &str| {
        vault
            .as_ref()
            .and_then(|(document, fingerprints): &(Document, FingerprintKey)| {
                held::by_key(document, fingerprints, key).map(|(held, _)| held)
            })
    };
    let mut findings = Vec::new();
    let mut read = |location: &dyn Fn(usize) -> String, text: &str| {
        for found in detect::find(text) {
            let key = &text[found.start..found.end];
            findings.push(Finding {
                location: location(found.start),
                // Masked as everywhere else: `sk-…wxyz`.
                masked: crate::vault::secret::Secret::new(key.to_owned()).fingerprint(),
                reading: name(key),
                found,
            });
        }
    };
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut skipped = 0usize;
    for root in &paths {
        if !root.exists() {
            return Err(CliError::Usage(format!(
                "{} does not exist",
                root.display()
            )));
        }
        let walk = ignore::WalkBuilder::new(root)
            .hidden(false)
            .git_ignore(!args.no_ignore)
            .git_exclude(!args.no_ignore)
            .ignore(!args.no_ignore)
            .require_git(false)
            .filter_entry(|e| e.file_name() != ".git")
            .build();
        for entry in walk.flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            match read_text(path, args.max_file_size) {
                Some(text) => read(&|at| line_column(path, &text, at), &text),
                None => skipped += 1,
            }
        }
    }
    if args.env {
        for (variable, value) in std::env::vars() {
            read(&|_| format!("env:{variable}"), &value);
        }
    }
    report(&findings, args.json, skipped);
    if findings.iter().any(Finding::usable) {
        return Err(CliError::Runtime(format!(
            "{} usable key(s) found: take them out of the files (and out of use: `keygate key burn KEY_ID`, `keygate client revoke NAME`)",
            findings.iter().filter(|f| f.usable()).count()
        )));
    }
    Ok(())
}

/// The file's text, or `None` for a binary, an oversized or unreadable file.
fn read_text(path: &Path, max: u64) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > max {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `path:line:column` of byte `at` in `text` (1-based).
fn line_column(path: &Path, text: &str, at: usize) -> String {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |n| at - n - 1) + 1;
    format!("{}:{line}:{column}", path.display())
}

fn report(findings: &[Finding], json: bool, skipped: usize) {
    if json {
        let rows: Vec<_> = findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "location": f.location,
                    "provider": f.found.provider,
                    "kind": f.found.kind,
                    "what": f.found.what,
                    "key": f.masked,
                    "reading": f.reading(),
                    "usable": f.usable(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    if findings.is_empty() {
        println!("(no key found)");
    }
    for f in findings {
        println!(
            "{:<48} {:<24} {:<22} {}",
            f.location,
            format!("{} {}", f.found.provider, f.found.what),
            f.masked,
            f.reading()
        );
    }
    if skipped > 0 {
        println!("({skipped} binary, oversized or unreadable file(s) skipped)");
    }
}
