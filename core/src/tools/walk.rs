//! The directory walk of `glob` and `grep`: from directory handle to directory handle beneath
//! the workspace, never by path, so a directory swapped for a symbolic link during the walk is
//! skipped instead of followed.
//!
//! The rules (the same as before the walk moved to handles, except that ignore files are read
//! from the workspace only, never from its parent directories):
//! - `.gitignore` and `.ignore` files of every directory from the workspace root down are
//!   honoured (even outside a git repository), and `.git/info/exclude` of the root; in one
//!   directory `.ignore` overrides `.gitignore`, which overrides `.git/info/exclude`, and a
//!   deeper directory's rules override a shallower one's;
//! - hidden entries (names starting with `.`) are skipped unless asked for;
//! - symbolic links are neither followed nor returned; other non-regular files are skipped;
//! - unreadable directories are skipped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::Workspace;
use crate::error::Result;

/// The workspace-relative paths of the regular files below the directory `start`
/// (workspace-relative), in no particular order.
pub(super) fn walk_files(
    ws: &Workspace,
    tool: &str,
    start: &Path,
    shown: &str,
    hidden: bool,
) -> Result<Vec<PathBuf>> {
    let start_dir = ws.open_dir(tool, start, shown)?;
    // The rules of the directories above `start`, root first.
    let root = ws.root_dir();
    let mut rules = None;
    let mut above = PathBuf::new();
    for name in start.iter() {
        let dir = if above.as_os_str().is_empty() {
            root.try_clone().ok()
        } else {
            root.open_dir(&above).ok()
        };
        if let Some(dir) = dir {
            rules = load_rules(&dir, &above, rules);
        }
        above.push(name);
    }

    let mut walk = Walk {
        hidden,
        files: Vec::new(),
        pending: Vec::new(),
    };
    walk.visit(start_dir, start.to_path_buf(), rules);
    while let Some(next) = walk.pending.pop() {
        if let Ok(dir) = next.parent.open_dir_nofollow(&next.name) {
            walk.visit(dir, next.rel, next.rules);
        }
    }
    Ok(walk.files)
}

/// A directory's ignore rules, chained to those of the directories above it.
struct Rules {
    matcher: Gitignore,
    above: Option<Rc<Rules>>,
}

/// Whether the innermost rule that matches `rel` ignores it.
fn is_ignored(rules: Option<&Rc<Rules>>, rel: &Path, is_dir: bool) -> bool {
    let mut current = rules;
    while let Some(r) = current {
        match r.matcher.matched(rel, is_dir) {
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
            Match::None => current = r.above.as_ref(),
        }
    }
    false
}

/// The rules of `dir` (at workspace-relative `rel`) on top of `above`.
fn load_rules(dir: &Dir, rel: &Path, above: Option<Rc<Rules>>) -> Option<Rc<Rules>> {
    let mut sources = Vec::new();
    if rel.as_os_str().is_empty() {
        sources.push(Workspace::read_small(dir, Path::new(".git/info/exclude")));
    }
    for name in [".gitignore", ".ignore"] {
        sources.push(Workspace::read_small(dir, Path::new(name)));
    }
    if sources.iter().all(String::is_empty) {
        return above;
    }
    let mut builder = GitignoreBuilder::new(rel);
    for line in sources.iter().flat_map(|s| s.lines()) {
        // A malformed line is skipped, as git does.
        let _ = builder.add_line(None, line);
    }
    match builder.build() {
        Ok(matcher) if !matcher.is_empty() => Some(Rc::new(Rules { matcher, above })),
        _ => above,
    }
}

/// A directory found but not yet opened (opened when its turn comes, so the open handles are
/// those of one path from the start down, not of every directory seen).
struct Pending {
    parent: Rc<Dir>,
    name: OsString,
    rel: PathBuf,
    rules: Option<Rc<Rules>>,
}

struct Walk {
    hidden: bool,
    files: Vec<PathBuf>,
    pending: Vec<Pending>,
}

impl Walk {
    fn visit(&mut self, dir: Dir, rel: PathBuf, above: Option<Rc<Rules>>) {
        let rules = load_rules(&dir, &rel, above);
        let Ok(entries) = dir.entries() else { return };
        let dir = Rc::new(dir);
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !self.hidden && name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let child = rel.join(&name);
            if kind.is_dir() {
                if !is_ignored(rules.as_ref(), &child, true) {
                    self.pending.push(Pending {
                        parent: Rc::clone(&dir),
                        name,
                        rel: child,
                        rules: rules.clone(),
                    });
                }
            } else if kind.is_file() && !is_ignored(rules.as_ref(), &child, false) {
                self.files.push(child);
            }
        }
    }
}
