//! Tests that cannot run on this machine say so loudly: one
//! `SKIPPED <test>: <what is missing> …` line per skip, visible in a plain
//! `cargo test`, and the same lines in `target/tmp/skipped-tests.txt`.
//!
//! libtest captures what a passing test prints with `print!`/`eprint!` (it
//! swaps the macros' output, not file descriptor 2), so an `eprintln!` skip
//! note vanishes from a plain `cargo test`. [`skip`] writes through
//! `std::io::stderr()` itself, which the capture does not see: the line
//! shows between the `test … ok` lines of the run (and on the terminal under
//! `--nocapture`). The file keeps the list for after the run, or for a
//! runner that swallows stderr.
//!
//! With the test's `KEYGATE_REQUIRE_*` variable set (as `.ci/run` sets them),
//! a missing tool is a failure instead: [`skip_unless_required`] panics.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// The list of the tests the latest run that skipped any skipped:
/// `$CARGO_TARGET_TMPDIR/skipped-tests.txt` (`target/tmp/` by default).
pub fn skipped_list() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt")
}

/// Whether this process has started the list afresh yet.
static LIST_STARTED: Mutex<bool> = Mutex::new(false);

/// `test` (its libtest name, `module::function`) cannot run here because
/// `missing` is not installed. A failure when the environment variable
/// `require` is set (`.ci/run` sets every `KEYGATE_REQUIRE_*`); otherwise a
/// loud skip ([`skip`]). The caller returns (or skips its part) afterwards.
#[track_caller]
pub fn skip_unless_required(test: &str, missing: &str, require: &str) {
    assert!(
        std::env::var(require).is_err(),
        "{test}: {missing} is not installed, and {require} is set, so this is a failure, not a skip"
    );
    skip(
        test,
        &format!(
            "{missing} is not installed (install it, or set {require}=1 to make this a failure)"
        ),
    );
}

/// Says that `test` was skipped and why: a `SKIPPED {test}: {why}` line on
/// the process's real stderr (not captured by libtest) and in
/// [`skipped_list`]. The first skip of a test process starts the list afresh.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    // A leading newline: libtest may be mid-line (`test x ... `, or the dots of `-q`).
    let _ = writeln!(std::io::stderr().lock(), "\n{line}");
    let mut started = LIST_STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let path = skipped_list();
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR"))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(*started)
            .truncate(!*started)
            .open(&path)?;
        if !*started {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            writeln!(
                file,
                "# tests skipped by the test run of pid {} (started skipping at Unix time {secs})",
                std::process::id()
            )?;
        }
        writeln!(file, "{line}")
    })();
    match written {
        Ok(()) => *started = true,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "(could not list the skip in {}: {error})",
                path.display()
            );
        }
    }
}
