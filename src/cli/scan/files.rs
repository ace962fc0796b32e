//! The files source of `keygate scan`: every file under the given paths as
//! git sees them (`.gitignore`, `.git/info/exclude`, `.ignore`; `--no-ignore`
//! reads them all), walked and read on every core by the `ignore` crate's
//! parallel walker — ripgrep's. Binary files and files over the size limit
//! are skipped and counted. Also the process environment (`--env`).

use ignore::{WalkBuilder, WalkState};
use std::path::PathBuf;

use super::found::{self, Gathered, Location, Scanned};

/// Every key in the files under `roots`.
pub fn scan(roots: &[PathBuf], no_ignore: bool, max_size: u64) -> Scanned {
    let Some((first, rest)) = roots.split_first() else {
        return Scanned::default();
    };
    let mut walk = WalkBuilder::new(first);
    for root in rest {
        walk.add(root);
    }
    walk.hidden(false)
        .git_ignore(!no_ignore)
        .git_exclude(!no_ignore)
        .ignore(!no_ignore)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git");
    let gathered = Gathered::default();
    walk.build_parallel().run(|| {
        Box::new(|entry| {
            let Ok(entry) = entry else {
                gathered.skip();
                return WalkState::Continue;
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            if entry.metadata().is_ok_and(|m| m.len() > max_size) {
                gathered.skip();
                return WalkState::Continue;
            }
            let path = entry.path();
            let Ok(content) = std::fs::read(path) else {
                gathered.skip();
                return WalkState::Continue;
            };
            let shown = path.display().to_string();
            gathered.read(&content, |line, column| Location::File {
                path: shown.clone(),
                line,
                column,
            });
            WalkState::Continue
        })
    });
    gathered.into_scanned()
}

/// Every key in this process's environment.
pub fn environment() -> Scanned {
    let mut scanned = Scanned::default();
    for (variable, value) in std::env::vars_os() {
        let (Some(variable), value) = (variable.to_str(), value.to_string_lossy()) else {
            continue;
        };
        scanned.bytes += value.len() as u64;
        scanned
            .hits
            .extend(found::in_text(&value, |_, _| Location::Env {
                variable: variable.to_owned(),
            }));
    }
    scanned
}
