//! The highest vault generation a `keygate serve` has ever served, kept in a
//! small file beside the usage ledger, so that a restart cannot be made to
//! serve an older copy of the vault (a restored backup would bring back
//! revoked client keys and retired upstream keys), and the CLI refuses to
//! write on top of such a copy.
//!
//! It lives beside the ledger, so that a vault directory restored from a
//! backup does not carry an older record with it; and a copy lives beside the
//! vault too (where the vault's directory is writable), so that moving
//! `[metering] db`, or starting from another directory, does not forget it.
//! The higher of the two counts. Each file is written like the vault (mode
//! 0600, temp file, fsync, rename, fsync of the directory) and holds one
//! decimal number. It never holds a secret.

use std::path::{Path, PathBuf};

use super::{file, VaultError};

/// The record's file name, in the ledger's directory.
const FILE_NAME: &str = "served-vault-generation";

/// Where the highest served generation is kept.
#[derive(Debug, Clone)]
pub struct ServedRecord {
    path: PathBuf,
    /// The copy beside the vault, when there is one.
    mirror: Option<PathBuf>,
}

impl ServedRecord {
    /// The record beside the ledger at `ledger` (`data/usage.sqlite` →
    /// `data/served-vault-generation`).
    pub fn beside(ledger: &Path) -> ServedRecord {
        ServedRecord {
            path: ledger.with_file_name(FILE_NAME),
            mirror: None,
        }
    }

    /// The record beside the ledger, and its copy beside the vault at
    /// `vault` (`data/keygate.vault` → `data/keygate.vault.served-generation`).
    pub fn beside_both(ledger: &Path, vault: &Path) -> ServedRecord {
        let mut mirror = vault.as_os_str().to_owned();
        mirror.push(".served-generation");
        let mirror = PathBuf::from(mirror);
        let path = ledger.with_file_name(FILE_NAME);
        ServedRecord {
            mirror: (mirror != path).then_some(mirror),
            path,
        }
    }

    /// The record's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest generation recorded in either place; 0 when nothing was
    /// ever served.
    pub fn highest(&self) -> Result<u64, VaultError> {
        let mirrored = match &self.mirror {
            Some(mirror) => read(mirror)?,
            None => 0,
        };
        Ok(read(&self.path)?.max(mirrored))
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
        file::write_atomic(&self.path, format!("{generation}\n").as_bytes())?;
        if let Some(mirror) = &self.mirror {
            // A vault mounted read-only (a Kubernetes Secret, a config map)
            // or in a directory the service may not write has no room for
            // the copy: the record beside the ledger stands.
            match file::write_atomic(mirror, format!("{generation}\n").as_bytes()) {
                Ok(()) | Err(VaultError::ReadOnly { .. }) => {}
                Err(VaultError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::ReadOnlyFilesystem
                            | std::io::ErrorKind::PermissionDenied
                    ) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The generation in the record at `path`; 0 when there is none.
fn read(path: &Path) -> Result<u64, VaultError> {
    let Some(bytes) = file::read_private(path, "served-generation record")? else {
        return Ok(0);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| VaultError::Corrupted {
            path: path.to_owned(),
            detail: "the served-generation record is not a number (delete it only if you know the vault file is the newest)".to_owned(),
        })
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

    #[test]
    fn the_copy_beside_the_vault_survives_a_moved_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault").join("keygate.vault");
        std::fs::create_dir_all(vault.parent().unwrap()).unwrap();
        let first = ServedRecord::beside_both(&dir.path().join("a").join("usage.sqlite"), &vault);
        first.record(41).unwrap();
        // `[metering] db` moved: the record beside the old ledger is not read.
        let moved = ServedRecord::beside_both(&dir.path().join("b").join("usage.sqlite"), &vault);
        assert_eq!(moved.highest().unwrap(), 41);
        // An older vault directory restored: its copy is lower, the ledger's wins.
        let copy = dir.path().join("vault/keygate.vault.served-generation");
        std::fs::write(&copy, "3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(first.highest().unwrap(), 41);
    }
}
