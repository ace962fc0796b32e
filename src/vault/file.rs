//! The vault's and master key's files on disk: who may read them, the
//! advisory write lock, and whole-file atomic writes that keep the file's
//! owner.
//!
//! Knows nothing of keys or the format. It must never write a file in place
//! (always temp file + fsync + rename + fsync directory), never read a file
//! someone other than keygate can read ([`super::readers`]), never leave a
//! temp file behind on failure, and never hand a deployed service's file to
//! root ([`crate::file_owner`]).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::VaultError;
use crate::file_owner::{self, Owner};

/// Reads a file no one but keygate may read ([`super::readers`]). `Ok(None)`
/// when it does not exist. `what` names the file in errors ("master key file").
pub fn read_private(
    path: &Path,
    what: &'static str,
) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io("open", what, path, err)),
    };
    // fstat the handle we read from (a Kubernetes mount's symlink is already
    // followed), so the mode checked is the mode of the bytes read.
    let meta = file.metadata().map_err(|e| io("inspect", what, path, e))?;
    if let Some(reader) = super::readers::stranger(&file, &meta) {
        return Err(VaultError::InsecureMode {
            what,
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o7777,
            reader,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .map_err(|e| io("read", what, path, e))?;
    Ok(Some(bytes))
}

/// Creates the missing parent directories of `path` with mode 0700 (given,
/// when keygate runs as root, to the owner of the directory they are made in).
pub fn create_private_dirs(path: &Path) -> Result<(), VaultError> {
    let dir = parent(path);
    file_owner::create_dirs(&dir, 0o700).map_err(|e| io("create", "directory", &dir, e))
}

/// True when the file or its directory has no write bit at all — e.g. a
/// Kubernetes Secret mounted with `defaultMode: 0400`. Best effort: it looks at
/// modes only, because probing by opening for write would wake file watchers,
/// and a read-only mount is still caught when a write takes the lock.
pub fn is_read_only(path: &Path) -> bool {
    let readonly = |p: &Path| fs::metadata(p).is_ok_and(|m| m.permissions().readonly());
    readonly(path) || readonly(&parent(path))
}

/// Holds the exclusive advisory lock on `<vault>.lock` until dropped.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

/// Takes the exclusive lock on `<vault path>.lock`, blocking until any other
/// writer (thread or process) is done. The lock file is never deleted: removing
/// it would let two writers lock two different inodes.
pub fn lock(vault: &Path) -> Result<WriteLock, VaultError> {
    let (file, path) = lock_file(vault, ".lock", "vault lock file")?;
    // File::lock is stable since 1.89 (the toolchain in use); the crate's declared
    // rust-version still says 1.85.
    #[allow(clippy::incompatible_msrv)]
    file.lock()
        .map_err(|e| io("lock", "vault lock file", &path, e))?;
    Ok(WriteLock { _file: file })
}

/// The rotation lease: the exclusive lock on `<vault path>.rotation.lock`,
/// held for a whole minted rotation or burn (many writes and provider calls)
/// so two of them never run at once on one vault, across processes. Apart
/// from the write lock, so ordinary writes go on meanwhile. Waits for it.
pub fn rotation_lease(vault: &Path) -> Result<WriteLock, VaultError> {
    let (file, path) = lock_file(vault, ".rotation.lock", LEASE)?;
    #[allow(clippy::incompatible_msrv)]
    file.lock().map_err(|e| io("lock", LEASE, &path, e))?;
    Ok(WriteLock { _file: file })
}

/// [`rotation_lease`] if no one holds it, else `None`.
pub fn try_rotation_lease(vault: &Path) -> Result<Option<WriteLock>, VaultError> {
    let (file, path) = lock_file(vault, ".rotation.lock", LEASE)?;
    #[allow(clippy::incompatible_msrv)]
    match file.try_lock() {
        Ok(()) => Ok(Some(WriteLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io("lock", LEASE, &path, e)),
    }
}

const LEASE: &str = "vault rotation lock file";

fn lock_file(
    vault: &Path,
    suffix: &str,
    what: &'static str,
) -> Result<(File, PathBuf), VaultError> {
    let mut name = vault.as_os_str().to_owned();
    name.push(suffix);
    let path = PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|err| match err.kind() {
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => VaultError::ReadOnly {
                path: vault.to_owned(),
            },
            _ => io("create", what, &path, err),
        })?;
    // A lock file root made (or makes now) in the service's directory would
    // leave the service unable to take the lock: give it to the directory's owner.
    if let Some(owner) = file_owner::for_new_in(&parent(vault)) {
        owner
            .give(&file)
            .map_err(|e| io("give to the directory's owner", what, &path, e))?;
    }
    Ok((file, path))
}

/// Replaces `path` with `bytes` atomically: a temp file in the same
/// directory, fsync, rename over `path`, fsync the directory. A reader sees the
/// old file or the new one, never a mix. The new file keeps the old one's
/// owner, group and mode (owner read-write, the group's read bit if it had
/// it, nothing for others); a new file is 0600, owned as [`file_owner`]
/// says. A process that is not root cannot keep another user's file theirs:
/// that is refused (`VaultError::Owner`) before anything is written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = parent(path);
    let (owner, mode) = match fs::metadata(path) {
        Ok(meta) => {
            ensure_owner_kept(path)?;
            (Some(Owner::of(&meta)), 0o600 | (meta.mode() & 0o040))
        }
        Err(_) => (file_owner::for_new_in(&dir), 0o600),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|cause| VaultError::Random { cause })?;
    let tmp = dir.join(format!(".{name}.tmp.{}", hex::encode(suffix)));
    let result = write_new_file(&tmp, "temporary file", bytes, mode, owner).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| io("rename into place", "file", path, e))
    });
    if result.is_err() {
        // Best effort: the error that matters is the one already in hand.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

/// Refuses (`VaultError::Owner`) when a rewrite of `path` by this process
/// could not keep the file's owner: checked before a writer takes the lock,
/// so a refused command leaves no file of its own behind either.
pub fn ensure_owner_kept(path: &Path) -> Result<(), VaultError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let owner = Owner::of(&meta);
    if owner.can_be_given() {
        return Ok(());
    }
    Err(VaultError::Owner {
        path: path.to_owned(),
        uid: owner.uid,
        gid: owner.gid,
        me: file_owner::my_uid(),
    })
}

/// Removes temp files that writers of `path` left behind when they were
/// killed mid-write (each is an encrypted copy of the vault). Call only while
/// holding the lock: any temp file that exists then belongs to a dead writer.
pub fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = fs::read_dir(parent(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates `path` (never overwriting) with mode 0600 and `bytes`, creating
/// missing parent directories with mode 0700, and makes it durable.
pub fn write_new(path: &Path, what: &'static str, bytes: &[u8]) -> Result<(), VaultError> {
    create_private_dirs(path)?;
    let owner = file_owner::for_new_in(&parent(path));
    write_new_file(path, what, bytes, 0o600, owner)?;
    sync_dir(&parent(path))
}

/// Creates `path` with `bytes`, `mode` and (when given) `owner`, durably.
fn write_new_file(
    path: &Path,
    what: &'static str,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), VaultError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| match err.kind() {
            ErrorKind::AlreadyExists => VaultError::AlreadyExists {
                what,
                path: path.to_owned(),
            },
            _ => io("create", what, path, err),
        })?;
    let written = (|| {
        if let Some(owner) = owner {
            owner.give(&file)?;
        }
        // The umask may have taken bits off; put them back.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(err) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io("write", what, path, err));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", "directory", dir, e))
}

/// The directory holding `path`; `.` for a bare file name.
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn io(action: &'static str, what: &'static str, path: &Path, source: std::io::Error) -> VaultError {
    VaultError::Io {
        action,
        what,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_privately_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(mode(&path), 0o600, "others lose their bits");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"again").unwrap();
        assert_eq!(mode(&path), 0o640, "a group's read bit is kept");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn files_root_writes_in_a_service_directory_stay_the_services() {
        if !file_owner::running_as_root() {
            return; // only root gives files away
        }
        let dir = tempfile::tempdir().unwrap();
        let service = Owner {
            uid: 10001,
            gid: 10002,
        };
        std::os::unix::fs::chown(dir.path(), Some(service.uid), Some(service.gid)).unwrap();
        let owner = |p: &Path| Owner::of(&fs::metadata(p).unwrap());
        // A new file, a lock file, a rewrite, and new directories.
        let vault = dir.path().join("keygate.vault");
        write_atomic(&vault, b"first").unwrap();
        assert_eq!(owner(&vault), service);
        drop(lock(&vault).unwrap());
        assert_eq!(owner(&dir.path().join("keygate.vault.lock")), service);
        std::os::unix::fs::chown(&vault, Some(10003), Some(10004)).unwrap();
        write_atomic(&vault, b"second").unwrap();
        assert_eq!(
            owner(&vault),
            Owner {
                uid: 10003,
                gid: 10004
            }
        );
        assert_eq!(fs::read(&vault).unwrap(), b"second");
        let nested = dir.path().join("a/b/master.key");
        write_new(&nested, "master key file", b"k").unwrap();
        assert_eq!(owner(&nested), service);
        assert_eq!(owner(&dir.path().join("a")), service);
    }

    #[test]
    fn failed_atomic_write_leaves_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the temp is written.
        let target = dir.path().join("d");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("d")]);
    }

    #[test]
    fn read_private_refuses_group_readable_and_reports_missing_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(read_private(&path, "vault file").unwrap().is_none());
        write_new(&path, "vault file", b"abc").unwrap();
        assert_eq!(
            read_private(&path, "vault file")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"abc"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        let err = read_private(&path, "vault file").unwrap_err().to_string();
        assert!(
            err.contains("0604") && err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        assert!(err.contains("defaultMode: 0400"), "{err}");
    }

    #[test]
    fn read_only_is_seen_from_file_or_directory_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new(&path, "vault file", b"abc").unwrap();
        assert!(!is_read_only(&path));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(is_read_only(&path));
    }
}
