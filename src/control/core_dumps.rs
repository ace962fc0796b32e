//! Keeps upstream keys out of core dumps and away from same-user debuggers:
//! at start, the process makes itself non-dumpable (`PR_SET_DUMPABLE` 0,
//! which also refuses `ptrace` attach and `/proc/PID/mem` reads by other
//! processes of the same user) and sets `RLIMIT_CORE` to 0, as ssh-agent and
//! Vault do. `[server] allow_core_dumps = true` leaves both alone, for
//! debugging a crash.
//!
//! What it does not do: keep key pages out of swap (use no swap or encrypted
//! swap), or protect against root.

use rustix::process::{self, DumpableBehavior, Resource, Rlimit};

/// Why the process could not be hardened.
#[derive(Debug, thiserror::Error)]
pub enum CoreDumpError {
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}; set [server] allow_core_dumps = true to run without this protection")]
    Dumpable(std::io::Error),
    /// `setrlimit(RLIMIT_CORE, 0)` failed.
    #[error("cannot disable core files (setrlimit RLIMIT_CORE): {0}; set [server] allow_core_dumps = true to run without this protection")]
    Limit(std::io::Error),
}

/// Makes this process non-dumpable and its core file size 0.
pub fn forbid() -> Result<(), CoreDumpError> {
    process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| CoreDumpError::Limit(e.into()))?;
    process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| CoreDumpError::Dumpable(e.into()))?;
    Ok(())
}
