//! Runs keygate the way a deploy file runs it, without a container runtime:
//! as the file's uid, gid and supplementary groups (`setpriv`), in a mount
//! namespace of its own (`unshare`) whose root is read-only when the file
//! says so, with the file's writable volumes bind-mounted read-write and its
//! secret volumes read-only. The network is the test's (mocks on
//! 127.0.0.1 stay reachable). Needs root, `setpriv` and `unshare`
//! (util-linux): [`Jail::available`] skips loudly without them, and fails
//! under `KEYGATE_REQUIRE_DEPLOY_TEST=1` (`.ci/run` sets it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How one deployment runs keygate.
#[derive(Debug, Clone)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (Kubernetes' `fsGroup`); none for Docker and systemd.
    pub groups: Vec<u32>,
    /// `--read-only`, `readOnlyRootFilesystem`, `ProtectSystem=strict`.
    pub read_only_root: bool,
    /// Volumes the process may write (bind-mounted read-write).
    pub writable: Vec<PathBuf>,
    /// Volumes mounted read-only (Secret volumes, credentials).
    pub read_only: Vec<PathBuf>,
    /// The working directory (`WORKDIR`, `WorkingDirectory=`).
    pub workdir: PathBuf,
}

impl Jail {
    /// True when this machine can run a jail; otherwise says `test` was
    /// skipped, or panics when `KEYGATE_REQUIRE_DEPLOY_TEST` is set.
    pub fn available(test: &str) -> bool {
        let missing = if !rustix::process::geteuid().is_root() {
            Some("root (to change uid and mount volumes)")
        } else if !works(Command::new("setpriv").arg("--version")) {
            Some("setpriv (util-linux)")
        } else if !works(Command::new("unshare").args(["--mount", "true"])) {
            Some("unshare --mount (util-linux, and the right to make a mount namespace)")
        } else {
            None
        };
        let Some(missing) = missing else {
            return true;
        };
        assert!(
            std::env::var("KEYGATE_REQUIRE_DEPLOY_TEST").is_err(),
            "{test}: needs {missing}, and KEYGATE_REQUIRE_DEPLOY_TEST is set, so this is a failure, not a skip"
        );
        super::skips::skip(
            test,
            &format!(
                "needs {missing} (or set KEYGATE_REQUIRE_DEPLOY_TEST=1 to make this a failure)"
            ),
        );
        false
    }

    /// `inner` (a keygate command line with its environment), run inside the jail.
    pub fn wrap(&self, inner: &Command) -> Command {
        let q = |p: &Path| format!("'{}'", p.display());
        let mut script = String::from("set -e\nmount --make-rprivate /\n");
        for dir in &self.writable {
            script.push_str(&format!("mount --bind {0} {0}\n", q(dir)));
        }
        for dir in &self.read_only {
            script.push_str(&format!(
                "mount --bind {0} {0}\nmount -o remount,bind,ro {0}\n",
                q(dir)
            ));
        }
        if self.read_only_root {
            script.push_str("mount -o remount,bind,ro /\n");
        }
        let groups = if self.groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            let list: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            format!("--groups={}", list.join(","))
        };
        script.push_str(&format!(
            "exec setpriv --reuid={} --regid={} {groups} --no-new-privs -- \"$0\" \"$@\"\n",
            self.uid, self.gid
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--", "sh", "-c", &script])
            .arg(inner.get_program())
            .args(inner.get_args())
            .env_clear()
            .current_dir(&self.workdir);
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd
    }
}

fn works(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `path`'s owner, group and permission bits, as `(uid, gid, mode)`.
pub fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta =
        std::fs::metadata(path).unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// Gives `path` to `uid:gid` with `mode` (as the deployment would have it).
pub fn set_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every file and directory under `dir` (itself included) whose owner is
/// not `uid:gid`, as `path uid:gid` lines.
pub fn not_owned_by(dir: &Path, uid: u32, gid: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        let meta = std::fs::symlink_metadata(&at).unwrap();
        if (meta.uid(), meta.gid()) != (uid, gid) {
            wrong.push(format!("{} {}:{}", at.display(), meta.uid(), meta.gid()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&at).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    wrong
}
