//! Upstream keys: the ring a request picks from, their runtime health, and
//! their lifecycle in the vault — states and transitions ([`ops`]), the
//! rotation service shared by the CLI and the admin API ([`rotate`]), keys
//! keygate creates at the provider ([`mint`]) through its management API
//! ([`management`]), the leak response ([`burn`]), what keygate still owes a
//! provider for keys out of use ([`cleanup`]), verification against the
//! provider ([`verify`]), and the spans of rotations and management calls
//! ([`trace`]).

pub mod burn;
pub mod cleanup;
pub mod detect;
pub mod headroom;
pub mod health;
pub mod health_report;
pub mod held;
pub mod inventory;
pub mod key_events;
pub mod management;
pub mod mint;
pub mod ops;
pub mod outside_use;
pub mod pool;
pub mod recent;
pub mod ring;
pub mod rotate;
pub mod trace;
pub mod verify;

pub use pool::{NoPick, Want};
pub use ring::{KeyRing, Pick, RingKey, Rings, ECHO_WINDOW};

/// Crash injection for the tests of resumability (debug builds only): when
/// `KEYGATE_TEST_CRASH_AT` names `step`, the process kills itself with
/// SIGKILL there, as `kill -9` would. Release builds have no such hook.
pub(crate) fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("KEYGATE_TEST_CRASH_AT").is_ok_and(|s| s == step) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}
