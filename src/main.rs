//! The `keygate` binary: a doorway. Parses arguments, hands them to
//! [`keygate::cli::run`], prints the error once and maps it to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match keygate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match keygate::cli::run(cli, std::env::vars().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not `eprintln!`: it panics when standard error is closed.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "keygate: error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
