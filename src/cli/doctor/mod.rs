//! `keygate doctor [--json]` (docs/design.md §2): one line per check, each
//! failing one with its fix. [`setup`]: the config and where it came from,
//! the listeners, the admin token, the master key and the vault, and every
//! other check `serve` makes before it serves (`cli::start_checks`, the same
//! functions), Redis and PostgreSQL when configured. [`keys`]: every
//! provider's keys verified live, keys due for rotation and graces about to
//! end, management credentials where `auto_rotate` needs them, the keys at
//! each provider. Exit 0 only when nothing failed (warnings pass). Never
//! prints a secret.

mod keys;
mod setup;

use super::{CliError, Context};
use crate::vault::secret::Secret;

/// One check's result.
struct Line {
    check: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Default)]
struct Report(Vec<Line>);

impl Report {
    fn add(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.0.push(Line {
            check: check.to_owned(),
            status,
            detail,
            fix,
        });
    }
}

pub(super) fn run(
    context: &Context,
    env: &[(String, String)],
    admin_token: Option<Secret>,
    json: bool,
) -> Result<(), CliError> {
    let mut report = Report::default();
    setup::config_checks(context, env, admin_token, &mut report);
    if let Some(document) = setup::vault_checks(context, &mut report) {
        keys::key_checks(context, &document, &mut report)?;
        keys::auto_rotate_checks(context, &document, &mut report);
        keys::inventory_checks(context, &document, &mut report)?;
    }
    setup::shared_store_checks(context, &mut report)?;
    let failed = report.0.iter().filter(|l| l.status == Status::Fail).count();
    if json {
        let rows: Vec<serde_json::Value> = report
            .0
            .iter()
            .map(|l| {
                serde_json::json!({
                    "check": l.check,
                    "status": l.status.word().to_ascii_lowercase(),
                    "detail": l.detail,
                    "fix": l.fix,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(rows));
    } else {
        for line in &report.0 {
            let fix = line
                .fix
                .as_ref()
                .map(|f| format!(" — fix: {f}"))
                .unwrap_or_default();
            say!(
                "{:<5} {:<14} {}{fix}",
                line.status.word(),
                line.check,
                line.detail
            );
        }
    }
    if failed > 0 {
        return Err(CliError::Runtime(format!("{failed} check(s) failed")));
    }
    Ok(())
}
