//! The CLI's two output streams, written so that neither can panic: `println!`
//! panics when standard output is a pipe whose reader has gone (`keygate key
//! list | head -1`), so every command writes through [`say!`] and [`note!`]
//! instead (the lint `clippy::print_stdout` holds the rest of `cli/` to it).
//!
//! A closed standard output ends what is worth printing, not the command: a
//! rotation half printed still finishes, and the command exits as it would
//! have, quietly. Any other failure to write (a full disk behind `>`) is kept
//! and reported once the command is done ([`finish`], exit 1). A secret is the
//! exception: [`secret`] says whether it reached standard output, so the
//! command that made it can undo it when it did not.

use std::io::{ErrorKind, Write};
use std::sync::Mutex;

use super::CliError;

/// The first failure to write to standard output other than a closed pipe.
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// One line on standard output (what [`say!`] calls). Never panics.
pub(crate) fn line(text: std::fmt::Arguments<'_>) {
    let written = {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").and_then(|()| stdout.flush())
    };
    if let Err(error) = written {
        remember(&error);
    }
}

/// One line on standard error (what [`note!`] calls): a closed or failing
/// standard error has nowhere left to be reported, so it is ignored.
pub(crate) fn note_line(text: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Writes `text` (a secret the command just made, with its newline) to
/// standard output and flushes it. `Err` when it did not get there, e.g. the
/// reader of the pipe had gone: the secret is then lost, and the caller
/// undoes what made it.
pub(crate) fn secret(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
}

/// Text written as a whole (a completion script), like [`line`].
pub(crate) fn bytes(text: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(text).and_then(|()| stdout.flush()) {
        remember(&error);
    }
}

fn remember(error: &std::io::Error) {
    if error.kind() == ErrorKind::BrokenPipe {
        return;
    }
    let mut failed = FAILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    failed.get_or_insert_with(|| error.to_string());
}

/// After a command: an error when some of its output could not be written
/// for another reason than a reader that went away.
pub(crate) fn finish() -> Result<(), CliError> {
    let failed = FAILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    match failed {
        Some(error) => Err(CliError::Runtime(format!(
            "cannot write to standard output ({error}): what the command printed is incomplete"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_quiet_and_any_other_failure_is_reported() {
        remember(&std::io::Error::from(ErrorKind::BrokenPipe));
        assert!(finish().is_ok());
        remember(&std::io::Error::from(ErrorKind::StorageFull));
        let error = finish().unwrap_err().to_string();
        assert!(error.contains("cannot write to standard output"), "{error}");
        assert!(finish().is_ok(), "reported once");
    }
}
