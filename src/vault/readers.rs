//! Who besides keygate could read a secret file (the vault, the master key,
//! the served-generation record): the rule keygate opens them by
//! (docs/design.md §6).
//!
//! Refused: any access for others; access for a group keygate does not run
//! in; a POSIX ACL entry for another user or for a group keygate does not
//! run in. Accepted: the owner alone, and readers that are keygate itself —
//! its own groups (Kubernetes mounts a Secret file `root:fsGroup 0440` in a
//! pod whose processes run in `fsGroup`), and an ACL entry naming keygate's
//! own user (systemd hands a credential to a `DynamicUser` service as a
//! root-owned 0400 file plus `user:UID:r--`, which `stat` shows as 0440).
//! Root reads every file anyway, so an entry naming root adds no reader.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;

use crate::file_owner::in_group;

/// A file's POSIX access ACL, as the kernel stores it in this extended
/// attribute: a 4-byte version (2), then 8-byte entries `tag: u16, perm:
/// u16, id: u32`, little-endian.
const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;

/// Someone other than keygate who may read or write the file `meta`
/// describes (`file` is its open handle), said for a message; `None` when
/// no one else may.
pub(super) fn stranger(file: &File, meta: &Metadata) -> Option<String> {
    let mode = meta.mode();
    if mode & 0o007 != 0 {
        return Some("others".to_owned());
    }
    if mode & 0o070 == 0 {
        return None;
    }
    let Some(entries) = acl(file) else {
        // No ACL: the group bits are the owning group's.
        return (!in_group(meta.gid())).then(|| foreign_group(meta.gid()));
    };
    // With an ACL the group bits are its mask, which bounds every named
    // entry and the owning group.
    let mask = entries
        .iter()
        .find(|(tag, _, _)| *tag == ACL_MASK)
        .map_or(0o7, |(_, perm, _)| *perm);
    let me = crate::file_owner::my_uid();
    entries.iter().find_map(|&(tag, perm, id)| {
        if perm & mask == 0 {
            return None;
        }
        match tag {
            ACL_USER if id != me && id != 0 => Some(format!("user {id} (through an ACL entry)")),
            ACL_GROUP_OBJ if !in_group(meta.gid()) => Some(foreign_group(meta.gid())),
            ACL_GROUP if !in_group(id) => Some(format!(
                "group {id} (through an ACL entry), which keygate does not run in"
            )),
            _ => None,
        }
    })
}

fn foreign_group(gid: u32) -> String {
    format!("group {gid}, which keygate does not run in,")
}

/// The file's access ACL entries, `None` when it has none (or the file
/// system keeps none).
fn acl(file: &File) -> Option<Vec<(u16, u16, u32)>> {
    let mut buf = [0u8; 1024];
    let len = rustix::fs::fgetxattr(file, ACL_XATTR, &mut buf[..]).ok()?;
    let body = buf.get(4..len)?;
    Some(
        body.chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with_mode(dir: &tempfile::TempDir, mode: u32) -> (File, std::path::PathBuf) {
        let path = dir.path().join(format!("secret-{:x}", rand_suffix()));
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (File::open(&path).unwrap(), path)
    }

    fn rand_suffix() -> u64 {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        u64::from_le_bytes(b)
    }

    fn who(file: &File) -> Option<String> {
        stranger(file, &file.metadata().unwrap())
    }

    /// Writes an access ACL: the owner r, `entries`, the mask r, others none.
    fn set_acl(path: &std::path::Path, entries: &[(u16, u16, u32)]) -> bool {
        let mut bytes = 2u32.to_le_bytes().to_vec();
        let all = [(0x01, 4, u32::MAX)]
            .iter()
            .chain(entries)
            .chain(&[(ACL_MASK, 4, u32::MAX), (0x20, 0, u32::MAX)])
            .copied()
            .collect::<Vec<_>>();
        for (tag, perm, id) in all {
            bytes.extend_from_slice(&tag.to_le_bytes());
            bytes.extend_from_slice(&perm.to_le_bytes());
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        rustix::fs::setxattr(path, ACL_XATTR, &bytes, rustix::fs::XattrFlags::empty()).is_ok()
    }

    #[test]
    fn owner_only_and_own_group_pass_others_never() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(who(&file_with_mode(&dir, 0o600).0), None);
        // The file's group is this process's own (it created it).
        assert_eq!(who(&file_with_mode(&dir, 0o640).0), None);
        assert_eq!(who(&file_with_mode(&dir, 0o604).0).unwrap(), "others");
    }

    #[test]
    fn a_group_keygate_is_not_in_is_named() {
        if !crate::file_owner::running_as_root() {
            return; // only root can give a file to another group
        }
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = file_with_mode(&dir, 0o440);
        std::os::unix::fs::chown(&path, None, Some(4_000_000_123)).unwrap();
        let text = who(&File::open(&path).unwrap()).unwrap();
        assert!(text.contains("group 4000000123"), "{text}");
    }

    #[test]
    fn an_acl_for_keygate_itself_passes_one_for_anyone_else_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::file_owner::my_uid();
        let (_, path) = file_with_mode(&dir, 0o400);
        // systemd's credential: the owner r, `user:ME:r--`, no group.
        if !set_acl(&path, &[(ACL_USER, 4, me), (ACL_GROUP_OBJ, 0, u32::MAX)]) {
            return; // this file system keeps no ACLs
        }
        let file = File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o440);
        assert_eq!(who(&file), None);
        let (_, other) = file_with_mode(&dir, 0o400);
        set_acl(
            &other,
            &[(ACL_USER, 4, 4_000_000_124), (ACL_GROUP_OBJ, 0, u32::MAX)],
        );
        let text = who(&File::open(&other).unwrap()).unwrap();
        assert!(text.contains("user 4000000124"), "{text}");
    }
}
