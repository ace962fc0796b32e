//! Secrets from standard input, the only way one enters the CLI: piped in (read
//! to the end), or pasted by a person at a terminal — then the terminal's echo
//! is off while it is typed, so the key never shows on the screen, in a
//! scrollback or a screen recording, and one line (Enter) ends it.
//!
//! The echo is turned back on however the read ends (rustix's termios; a
//! process killed meanwhile leaves it off, as `stty echo` or `reset` fixes).

use std::io::{BufRead, IsTerminal};

use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use zeroize::Zeroizing;

use super::CliError;
use crate::vault::secret::Secret;

/// Reads a secret from stdin, telling a human at a terminal what to do.
pub(crate) fn read_secret_from_stdin(what: &str) -> Result<Secret, CliError> {
    let stdin = std::io::stdin();
    let read = if stdin.is_terminal() {
        read_typed(&stdin, what)
    } else {
        Secret::read_from(stdin.lock())
    };
    let secret =
        read.map_err(|e| CliError::Runtime(format!("cannot read the {what} from stdin: {e}")))?;
    if secret.is_blank() {
        return Err(CliError::Usage(format!(
            "no {what} on stdin: pipe it in, e.g. `printf '%s' \"$KEY\" | keygate …`"
        )));
    }
    Ok(secret)
}

/// One line typed (or pasted) at the terminal, not echoed.
fn read_typed(stdin: &std::io::Stdin, what: &str) -> std::io::Result<Secret> {
    let quiet = Quiet::start(stdin);
    match &quiet {
        Ok(_) => note!("Paste the {what} and press Enter (it is not shown):"),
        // Not a terminal termios knows after all: say so rather than show a key.
        Err(error) => note!(
            "Paste the {what} and press Enter (the terminal's echo could not be turned off ({error}): it will be shown):"
        ),
    }
    let mut line = Zeroizing::new(Vec::new());
    stdin.lock().read_until(b'\n', &mut line)?;
    drop(quiet);
    Secret::read_from(&line[..])
}

/// The terminal with its echo off (the newline still shows, so the prompt
/// moves on); the settings it had come back on drop.
struct Quiet<'a> {
    stdin: &'a std::io::Stdin,
    before: Termios,
}

impl<'a> Quiet<'a> {
    fn start(stdin: &'a std::io::Stdin) -> std::io::Result<Quiet<'a>> {
        let before = termios::tcgetattr(stdin)?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(stdin, OptionalActions::Now, &quiet)?;
        Ok(Quiet { stdin, before })
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.stdin, OptionalActions::Now, &self.before);
    }
}
