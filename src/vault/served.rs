//! The highest vault generation a `keygate serve` has ever served, kept in a
//! small file beside the usage ledger, so that a restart cannot be made to
//! serve an older copy of the vault (a restored backup would bring back
//! revoked client keys and retired upstream keys), and the CLI refuses to
//! write on top of such a copy.
//!
//! It lives beside the ledger, not the vault: a vault mounted read-only, or a
//! vault directory restored from a backup, must not carry an older record with
//! it. The file is written like the vault (mode 0600, temp file, fsync, rename,
//! fsync of the directory) and holds one decimal number. It never holds a secret.

use std::path::{Path, PathBuf};

use super::{file, VaultError};

/// The record's file name, in the ledger's directory.
const FILE_NAME: &str = "served-vault-generation";

/// Where the highest served generation is kept.
#[derive(Debug, Clone)]
pub struct ServedRecord {
    path: PathBuf,
}

impl ServedRecord {
    /// The record beside the ledger at `ledger` (`data/usage.sqlite` →
    /// `data/served-vault-generation`).
    pub fn beside(ledger: &Path) -> ServedRecord {
        ServedRecord {
            path: ledger.with_file_name(FILE_NAME),
        }
    }

    /// The record's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest generation recorded; 0 when nothing was ever served here.
    pub fn highest(&self) -> Result<u64, VaultError> {
        let Some(bytes) = file::read_private(&self.path, "served-generation record")? else {
            return Ok(0);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| VaultError::Corrupted {
                path: self.path.clone(),
                detail: "the served-generation record is not a number (delete it only if you know the vault file is the newest)".to_owned(),
            })
    }

    /// Raises the record to `generation` (never lowers it).
    pub fn record(&self, generation: u64) -> Result<(), VaultError> {
        if generation <= self.highest()? {
            return Ok(());
        }
        self.write(generation)
    }

    /// Sets the record to `generation` even when lower: the operator chose to
    /// serve an older vault (`serve --accept-vault-generation`).
    pub fn accept(&self, generation: u64) -> Result<(), VaultError> {
        self.write(generation)
    }

    fn write(&self, generation: u64) -> Result<(), VaultError> {
        file::create_private_dirs(&self.path)?;
        file::write_atomic(&self.path, format!("{generation}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_only_rises_unless_a_lower_one_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let record = ServedRecord::beside(&dir.path().join("usage.sqlite"));
        assert_eq!(record.highest().unwrap(), 0);
        record.record(7).unwrap();
        record.record(3).unwrap();
        assert_eq!(record.highest().unwrap(), 7);
        record.accept(3).unwrap();
        assert_eq!(record.highest().unwrap(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(record.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(record.path(), "junk").unwrap();
        std::fs::set_permissions(record.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(record.highest().is_err());
    }
}
