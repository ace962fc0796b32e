//! The git sources of `keygate scan`, read through gitoxide (`gix`):
//! `--git`, every blob reachable from every ref — each read once, at the
//! commit, path and line that introduced it — and `--staged`, the blobs in
//! the index that differ from `HEAD` (what the next commit would add, for a
//! pre-commit hook).
//!
//! History is walked oldest first; a tree or blob already seen is not
//! entered again, so the first sight of a blob is the commit that
//! introduced it and each object is read once however many commits share
//! it. The blobs are then read and scanned on every core.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use gix::hash::ObjectId;
use gix::hashtable::HashSet;

use super::found::{Gathered, Location, Scanned};
use crate::cli::CliError;

/// A blob to read, and where it was first seen.
struct Blob {
    id: ObjectId,
    /// Index into the commits, `None` for a staged blob.
    commit: Option<usize>,
    path: String,
}

fn git_error(path: &Path, what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(format!(
        "cannot read the git repository at {}: {what}: {e}",
        path.display()
    ))
}

fn open(path: &Path) -> Result<gix::Repository, CliError> {
    let mut repo = gix::discover(path).map_err(|e| {
        CliError::Usage(format!(
            "{} is not in a git repository: {e}",
            path.display()
        ))
    })?;
    // Commits and trees are read once each; a cache would only hold memory.
    repo.object_cache_size(0);
    Ok(repo)
}

/// Every key in every blob reachable from every ref of the repository at `path`.
pub fn history(path: &Path, max_size: u64) -> Result<Scanned, CliError> {
    let repo = open(path)?;
    let mut tips = Vec::new();
    let references = repo
        .references()
        .map_err(|e| git_error(path, "references", e))?;
    for reference in references
        .all()
        .map_err(|e| git_error(path, "references", e))?
        .flatten()
    {
        let mut reference = reference;
        // A ref that does not end at a commit (a tag of a tree or blob) has
        // no history to walk.
        if let Ok(id) = reference.peel_to_id() {
            if repo
                .find_header(id)
                .is_ok_and(|h| h.kind() == gix::object::Kind::Commit)
            {
                tips.push(id.detach());
            }
        }
    }
    if let Ok(head) = repo.head_id() {
        tips.push(head.detach());
    }
    if tips.is_empty() {
        return Ok(Scanned::default());
    }
    let mut commits: Vec<ObjectId> = repo
        .rev_walk(tips)
        .sorting(gix::revision::walk::Sorting::TopoOrder)
        .all()
        .map_err(|e| git_error(path, "history", e))?
        .map(|info| info.map(|i| i.id))
        .collect::<Result<_, _>>()
        .map_err(|e| git_error(path, "history", e))?;
    // Children come before parents: reversed, the first sight is the oldest.
    commits.reverse();
    let mut seen = HashSet::default();
    let mut blobs = Vec::new();
    for (index, commit) in commits.iter().enumerate() {
        let tree = repo
            .find_commit(*commit)
            .and_then(|c| c.tree_id().map(gix::Id::detach))
            .map_err(|e| git_error(path, "a commit", e))?;
        let mut found = Vec::new();
        trees(&repo, tree, &mut seen, &mut |id, path| {
            found.push(Blob {
                id,
                commit: Some(index),
                path,
            })
        })
        .map_err(|e| git_error(path, "a tree", e))?;
        blobs.extend(found);
    }
    let commits: Vec<String> = commits.iter().map(ToString::to_string).collect();
    Ok(read_blobs(repo, &blobs, &commits, max_size))
}

/// Every key in the staged changes of the repository at `path`: each index
/// entry whose blob is not the one `HEAD` has at that path.
pub fn staged(path: &Path, max_size: u64) -> Result<Scanned, CliError> {
    let repo = open(path)?;
    let index = repo
        .index_or_empty()
        .map_err(|e| git_error(path, "the index", e))?;
    let mut in_head: HashMap<String, ObjectId> = HashMap::new();
    if let Ok(tree) = repo.head_tree_id() {
        trees(
            &repo,
            tree.detach(),
            &mut HashSet::default(),
            &mut |id, path| {
                in_head.insert(path, id);
            },
        )
        .map_err(|e| git_error(path, "HEAD", e))?;
    }
    let blobs: Vec<Blob> = index
        .entries()
        .iter()
        .filter(|e| {
            e.mode == gix::index::entry::Mode::FILE
                || e.mode == gix::index::entry::Mode::FILE_EXECUTABLE
        })
        .filter_map(|e| {
            let path = e.path(&index).to_string();
            (in_head.get(&path) != Some(&e.id)).then_some(Blob {
                id: e.id,
                commit: None,
                path,
            })
        })
        .collect();
    Ok(read_blobs(repo, &blobs, &[], max_size))
}

/// Calls `blob(id, path)` for each blob under `tree` not yet in `seen`,
/// entering no tree already in `seen`.
fn trees(
    repo: &gix::Repository,
    tree: ObjectId,
    seen: &mut HashSet<ObjectId>,
    blob: &mut dyn FnMut(ObjectId, String),
) -> Result<(), gix::Error> {
    let mut stack = vec![(tree, String::new())];
    while let Some((id, prefix)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let tree = repo.find_tree(id)?;
        // A tree that does not decode is corrupt; its blobs cannot be named.
        let Ok(decoded) = tree.decode() else {
            continue;
        };
        for entry in &decoded.entries {
            let path = if prefix.is_empty() {
                entry.filename.to_string()
            } else {
                format!("{prefix}/{}", entry.filename)
            };
            let id = entry.oid.to_owned();
            if entry.mode.is_tree() {
                stack.push((id, path));
            } else if entry.mode.is_blob() && seen.insert(id) {
                blob(id, path);
            }
        }
    }
    Ok(())
}

/// Reads and scans `blobs` on every core.
fn read_blobs(repo: gix::Repository, blobs: &[Blob], commits: &[String], max: u64) -> Scanned {
    let shared = repo.into_sync();
    let next = AtomicUsize::new(0);
    let gathered = Gathered::default();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let repo = shared.to_thread_local();
                while let Some(blob) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let readable = repo.find_header(blob.id).is_ok_and(|h| h.size() <= max);
                    let object = readable.then(|| repo.find_object(blob.id).ok()).flatten();
                    let Some(object) = object else {
                        gathered.skip();
                        continue;
                    };
                    gathered.read(&object.data, |line, column| match blob.commit {
                        Some(commit) => Location::Commit {
                            commit: commits[commit].clone(),
                            path: blob.path.clone(),
                            line,
                            column,
                        },
                        None => Location::File {
                            path: blob.path.clone(),
                            line,
                            column,
                        },
                    });
                }
            });
        }
    });
    gathered.into_scanned()
}
