//! Who owns the files keygate writes, and which groups keygate runs in.
//!
//! A deployed keygate runs as a service user (systemd's `DynamicUser`, uid
//! 10001 in the image) while an operator often runs the CLI as root against
//! the same data directory. A file that command replaced or created would be
//! root's, and the service could no longer open it: a failed reload, a new
//! client refused, a restart that fails. So, in one place (docs/operations.md
//! "Deployments"):
//! - a file keygate rewrites keeps its owner and group (the writer gives
//!   the new copy the old one's [`Owner`]);
//! - a file or directory keygate creates while running as root takes the
//!   owner and group of the directory it is created in ([`for_new_in`]);
//! - a process that is not root cannot give a file away, so a rewrite that
//!   would change a file's owner is refused by the caller, naming the owner.
//!
//! Nothing here reads or logs file contents.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner of the file `meta` describes.
    pub fn of(meta: &fs::Metadata) -> Owner {
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    /// True when this process may give a file it created to this owner:
    /// root may give any; anyone else only to itself and a group it is in.
    pub fn can_be_given(self) -> bool {
        let me = rustix::process::geteuid().as_raw();
        me == 0 || (self.uid == me && in_group(self.gid))
    }

    /// Gives `file` to this owner when it is not already its.
    pub fn give(self, file: &File) -> io::Result<()> {
        if Owner::of(&file.metadata()?) == self {
            return Ok(());
        }
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
    }
}

/// True when keygate runs as root (the one case where it gives files away).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The owner a file keygate creates in `dir` should get: the directory's,
/// when keygate runs as root and the directory is not root's. `None`: the
/// file keeps the creating process's owner, as the OS gives it.
pub fn for_new_in(dir: &Path) -> Option<Owner> {
    if !running_as_root() {
        return None;
    }
    let owner = Owner::of(&fs::metadata(dir).ok()?);
    (owner != Owner { uid: 0, gid: 0 }).then_some(owner)
}

/// Gives `path`, just created by this process, to the owner of its
/// directory ([`for_new_in`]). For files another library creates (the
/// ledger's SQLite file).
pub fn adopt_new(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match for_new_in(&dir) {
        Some(owner) => owner.give(&File::open(path)?),
        None => Ok(()),
    }
}

/// Creates `dir` and its missing parents (each with `mode`, less the umask),
/// giving the new ones to the owner of the nearest directory that existed,
/// when keygate runs as root ([`for_new_in`]).
pub fn create_dirs(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && fs::metadata(at).is_err() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    let existing = if at.as_os_str().is_empty() {
        Path::new(".")
    } else {
        at
    };
    if let Some(owner) = for_new_in(existing) {
        for created in missing.iter().rev() {
            owner.give(&File::open(created)?)?;
        }
    }
    Ok(())
}

/// True when this process runs in group `gid`: its effective group or one
/// of its supplementary groups (Kubernetes' `fsGroup` is one).
pub fn in_group(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups()
            .map(|groups| groups.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false)
}

/// This process's effective uid, for messages.
pub fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_in_its_own_group_and_not_in_a_made_up_one() {
        assert!(in_group(rustix::process::getegid().as_raw()));
        assert!(!in_group(4_000_000_123));
    }

    #[test]
    fn created_directories_take_the_owner_of_the_one_they_are_made_in() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        fs::create_dir(&base).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(&base, Some(10001), Some(10002)).unwrap();
        }
        create_dirs(&base.join("a/b"), 0o700).unwrap();
        let made = fs::metadata(base.join("a/b")).unwrap();
        assert_eq!(Owner::of(&made), Owner::of(&fs::metadata(&base).unwrap()));
        assert_eq!(
            Owner::of(&fs::metadata(base.join("a")).unwrap()),
            Owner::of(&made)
        );
    }
}
