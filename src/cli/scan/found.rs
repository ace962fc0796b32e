//! What the scan's sources hand back: a key found in some text, where it is
//! (`path:line:column`, `COMMIT:path:line`, `env:NAME`) and the key itself,
//! held as a [`Secret`] (never printed whole; masked as everywhere else).
//! Shared by the file, environment and git sources, which run on every core.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::keys::detect::{self, Found};
use crate::vault::secret::Secret;

/// Where a key was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// A file on disk, or a staged file (its path in the repository).
    File {
        /// Its path.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters of the line's bytes).
        column: usize,
    },
    /// A blob of the history, at the commit, path and line that introduced it.
    Commit {
        /// The commit's full hex id.
        commit: String,
        /// The path the blob had there.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        variable: String,
    },
}

impl Location {
    /// `path:line:column`, `COMMIT12:path:line` or `env:NAME`.
    pub fn display(&self) -> String {
        match self {
            Location::File { path, line, column } => format!("{path}:{line}:{column}"),
            Location::Commit {
                commit, path, line, ..
            } => format!("{}:{path}:{line}", &commit[..commit.len().min(12)]),
            Location::Env { variable } => format!("env:{variable}"),
        }
    }

    /// The path, line and column of a file or blob location.
    pub fn in_file(&self) -> Option<(&str, usize, usize)> {
        match self {
            Location::File { path, line, column }
            | Location::Commit {
                path, line, column, ..
            } => Some((path, *line, *column)),
            Location::Env { .. } => None,
        }
    }

    /// The commit of a history location.
    pub fn commit(&self) -> Option<&str> {
        match self {
            Location::Commit { commit, .. } => Some(commit),
            _ => None,
        }
    }
}

/// One key in some text.
#[derive(Debug)]
pub struct Hit {
    /// Where.
    pub location: Location,
    /// What the detector says it is.
    pub found: Found,
    /// The key.
    pub key: Secret,
}

/// What a source read.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The keys found.
    pub hits: Vec<Hit>,
    /// Files or blobs not read: binary, over the size limit, unreadable.
    pub skipped: usize,
    /// Bytes read.
    pub bytes: u64,
}

impl Scanned {
    /// Both sources' findings together.
    pub fn merge(&mut self, other: Scanned) {
        self.hits.extend(other.hits);
        self.skipped += other.skipped;
        self.bytes += other.bytes;
    }
}

/// What the threads of a source gather: findings, skips and bytes read.
#[derive(Default)]
pub struct Gathered {
    hits: Mutex<Vec<Hit>>,
    skipped: AtomicUsize,
    bytes: AtomicU64,
}

impl Gathered {
    /// Scans one file's or blob's bytes.
    pub fn read(&self, bytes: &[u8], place: impl Fn(usize, usize) -> Location) {
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        match in_bytes(bytes, place) {
            None => self.skip(),
            // A poisoned lock only means another thread panicked; its
            // findings so far are still findings.
            Some(found) if !found.is_empty() => self
                .hits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(found),
            Some(_) => {}
        }
    }

    /// One file or blob not read.
    pub fn skip(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything gathered.
    pub fn into_scanned(self) -> Scanned {
        Scanned {
            hits: self
                .hits
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
            skipped: self.skipped.into_inner(),
            bytes: self.bytes.into_inner(),
        }
    }
}

/// Every key in `text`, placed by `place(line, column)`.
pub fn in_text(text: &str, place: impl Fn(usize, usize) -> Location) -> Vec<Hit> {
    detect::find(text)
        .into_iter()
        .map(|found| {
            let (line, column) = line_column(text, found.start);
            Hit {
                location: place(line, column),
                key: Secret::new(text[found.start..found.end].to_owned()),
                found,
            }
        })
        .collect()
}

/// Every key in `bytes` (a file or a blob), or `None` when they look binary
/// (a NUL in the first 8 KiB, as git decides).
fn in_bytes(bytes: &[u8], place: impl Fn(usize, usize) -> Location) -> Option<Vec<Hit>> {
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return None;
    }
    Some(in_text(&String::from_utf8_lossy(bytes), place))
}

/// The 1-based line and column of byte `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at];
    let line = memchr::memchr_iter(b'\n', before).count() + 1;
    let column = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(at, |n| at - n - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("ab\ncd\nef", 7), (3, 2));
        assert_eq!(line_column("ab\n", 3), (2, 1));
    }
}
