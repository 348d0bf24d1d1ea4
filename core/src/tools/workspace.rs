//! The workspace a worker's tools operate in, and the path guard that keeps them inside it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Default cap on each of `bash`'s output streams: 1 MiB.
const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// How many symbolic links [`Workspace::resolve`] follows before giving up (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The directory the built-in tools work in, with the options that restrict them.
///
/// Every path a tool receives goes through [`Workspace::resolve`], which refuses anything that
/// would land outside the root: `..` climbing above it, absolute paths elsewhere, and symbolic
/// links (to files or directories) that point outside.
///
/// A `Workspace` is cheap to clone and safe to share between concurrent tool calls.
///
/// # Examples
///
/// ```
/// use a3s_code_core::tools::Workspace;
/// let dir = tempfile::tempdir().unwrap();
/// let ws = Workspace::new(dir.path()).unwrap().with_bash(false);
/// assert!(!ws.allows_bash());
/// let file = ws.resolve("src/main.rs").unwrap();
/// assert_eq!(ws.display_path(&file), "src/main.rs");
/// assert!(ws.resolve("../elsewhere").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The canonical root.
    root: PathBuf,
    /// The root as given (absolute, lexically normalised) when it differs from `root`, so that
    /// absolute paths spelled with it (`/tmp/x` when `/tmp` is a symlink) are still accepted.
    alias: Option<PathBuf>,
    allow_bash: bool,
    max_output_bytes: usize,
}

impl Workspace {
    /// A workspace rooted at `root`, which must be an existing directory. `bash` is allowed and
    /// its output capped at 1 MiB per stream until changed with [`with_bash`](Self::with_bash) and
    /// [`with_max_output_bytes`](Self::with_max_output_bytes).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `root` does not exist, cannot be resolved, or is not a
    /// directory.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let given = root.as_ref();
        let canonical = std::fs::canonicalize(given).map_err(|e| {
            Error::invalid_config(format!("workspace root {}: {e}", given.display()))
        })?;
        if !canonical.is_dir() {
            return Err(Error::invalid_config(format!(
                "workspace root {} is not a directory",
                given.display()
            )));
        }
        let alias = std::path::absolute(given)
            .ok()
            .and_then(|abs| normalize_absolute(&abs))
            .filter(|abs| *abs != canonical);
        Ok(Self {
            root: canonical,
            alias,
            allow_bash: true,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Allows or forbids the `bash` tool (allowed by default).
    pub fn with_bash(mut self, allowed: bool) -> Self {
        self.allow_bash = allowed;
        self
    }

    /// Whether the `bash` tool may run.
    pub fn allows_bash(&self) -> bool {
        self.allow_bash
    }

    /// Caps each of `bash`'s output streams (stdout, stderr) at `n` bytes (1 MiB by default).
    /// Output past the cap is read and discarded, and the result says `truncated: true`.
    pub fn with_max_output_bytes(mut self, n: usize) -> Self {
        self.max_output_bytes = n;
        self
    }

    /// The cap on each of `bash`'s output streams, in bytes.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// Resolves a user-supplied path to an absolute path inside the workspace.
    ///
    /// `path` is relative to the root; an absolute path is accepted only when it lies inside
    /// the root. `""` and `"."` name the root itself. The path need not exist (so `write` can
    /// create it), but every part of it that does exist has its symbolic links resolved, and the
    /// result must stay inside the canonical root. The returned path therefore contains no
    /// symbolic links in its existing part.
    ///
    /// The rules, in order:
    /// 1. a NUL byte is refused;
    /// 2. an absolute path must start with the root (as canonicalized, or as given to
    ///    [`new`](Self::new)), and is then taken relative to it;
    /// 3. `.` and `..` are resolved lexically, and a path that climbs above the root at any
    ///    point is refused (even `../root-name/x` or `/path/to/root/../root/x`, which would come
    ///    back inside);
    /// 4. the existing part is resolved component by component, following symbolic links
    ///    (dangling ones too), and the final path must be inside the canonical root.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidPayload`] for a NUL byte, or a chain of more than 40 symbolic links;
    /// - [`Error::PathEscapesWorkspace`] for a path outside the root.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        if path.contains('\0') {
            return Err(Error::invalid_payload(format!(
                "path {path:?} contains a NUL byte"
            )));
        }
        let escape = || Error::PathEscapesWorkspace {
            path: path.to_string(),
            root: self.root.clone(),
        };
        let given = Path::new(path);
        let relative = if given.is_absolute() {
            given
                .strip_prefix(&self.root)
                .ok()
                .or_else(|| {
                    self.alias
                        .as_deref()
                        .and_then(|alias| given.strip_prefix(alias).ok())
                })
                .ok_or_else(escape)?
        } else {
            given
        };
        let relative = normalize_relative(relative).ok_or_else(escape)?;
        let resolved = self.follow(path, relative)?;
        if resolved.starts_with(&self.root) {
            Ok(resolved)
        } else {
            Err(escape())
        }
    }

    /// The path relative to the root, with `/` separators (`"."` for the root itself).
    ///
    /// A path outside the root is returned whole (lossily converted to UTF-8).
    pub fn display_path(&self, abs: &Path) -> String {
        match abs.strip_prefix(&self.root) {
            Ok(rel) => {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.is_empty() {
                    ".".to_string()
                } else {
                    parts.join("/")
                }
            }
            Err(_) => abs.to_string_lossy().into_owned(),
        }
    }

    /// Walks `relative` (plain names only) from the canonical root, expanding every symbolic link
    /// met on an existing component, like `realpath` but tolerating a missing tail.
    fn follow(&self, given: &str, relative: Vec<OsString>) -> Result<PathBuf> {
        let mut pending: VecDeque<OsString> = relative.into();
        let mut current = self.root.clone();
        let mut hops = 0u32;
        // Once a component is missing, nothing below it exists: no more lookups.
        let mut missing = false;
        while let Some(part) = pending.pop_front() {
            match Path::new(&part).components().next() {
                None | Some(Component::CurDir) => {}
                Some(Component::ParentDir) => {
                    current.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {
                    current = PathBuf::from(&part);
                }
                Some(Component::Normal(name)) => {
                    let next = current.join(name);
                    if !missing {
                        match std::fs::symlink_metadata(&next) {
                            Ok(meta) if meta.file_type().is_symlink() => {
                                hops += 1;
                                if hops > MAX_SYMLINK_HOPS {
                                    return Err(Error::invalid_payload(format!(
                                        "path {given:?}: too many levels of symbolic links"
                                    )));
                                }
                                let target = std::fs::read_link(&next).map_err(|e| {
                                    Error::invalid_payload(format!("path {given:?}: {e}"))
                                })?;
                                // Expand the link in place: its components come next, resolved
                                // relative to `current` (or from `/` when absolute).
                                for comp in target.components().rev() {
                                    pending.push_front(comp.as_os_str().to_os_string());
                                }
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = true,
                            // Unreadable (permissions): whatever uses the path will fail there.
                            Err(_) => missing = true,
                        }
                    }
                    current = next;
                }
            }
        }
        Ok(current)
    }
}

/// Normalises an absolute path lexically (`.` dropped, `..` pops); `None` if it is not absolute.
fn normalize_absolute(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Prefix(_) | Component::RootDir => out.push(comp.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out.is_absolute().then_some(out)
}

/// Normalises a relative path lexically into plain names; `None` if it climbs above its start.
fn normalize_relative(path: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(name) => out.push(name.to_os_string()),
            Component::Prefix(_) | Component::RootDir => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        (dir, ws)
    }

    fn is_escape(r: Result<PathBuf>) -> bool {
        matches!(r, Err(Error::PathEscapesWorkspace { .. }))
    }

    #[test]
    fn defaults() {
        let (_d, ws) = ws();
        assert!(ws.allows_bash());
        assert_eq!(ws.max_output_bytes(), 1 << 20);
        let ws = ws.with_bash(false).with_max_output_bytes(10);
        assert!(!ws.allows_bash());
        assert_eq!(ws.max_output_bytes(), 10);
    }

    #[test]
    fn missing_or_file_root_is_invalid_config() {
        let (dir, _ws) = ws();
        let err = Workspace::new(dir.path().join("nope")).unwrap_err();
        assert_eq!(err.code(), "InvalidConfig");
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = Workspace::new(dir.path().join("f")).unwrap_err();
        assert_eq!(err.code(), "InvalidConfig");
        assert!(err.to_string().contains("not a directory"));
    }

    #[test]
    fn relative_paths_resolve_inside() {
        let (_d, ws) = ws();
        assert_eq!(ws.resolve("").unwrap(), ws.root());
        assert_eq!(ws.resolve(".").unwrap(), ws.root());
        assert_eq!(ws.resolve("./a/./b/../c").unwrap(), ws.root().join("a/c"));
        assert_eq!(ws.resolve("a/..").unwrap(), ws.root());
        assert_eq!(ws.display_path(&ws.resolve("x/y.txt").unwrap()), "x/y.txt");
        assert_eq!(ws.display_path(ws.root()), ".");
    }

    #[test]
    fn climbing_out_is_refused() {
        let (_d, ws) = ws();
        assert!(is_escape(ws.resolve("..")));
        assert!(is_escape(ws.resolve("../x")));
        assert!(is_escape(ws.resolve("a/../../x")));
        let name = ws.root().file_name().unwrap().to_str().unwrap().to_string();
        assert!(is_escape(ws.resolve(&format!("../{name}/x"))));
    }

    #[test]
    fn absolute_paths() {
        let (_d, ws) = ws();
        assert!(is_escape(ws.resolve("/etc/passwd")));
        assert!(is_escape(ws.resolve("/")));
        let inside = ws.root().join("sub/f.txt");
        assert_eq!(ws.resolve(inside.to_str().unwrap()).unwrap(), inside);
        assert_eq!(ws.resolve(ws.root().to_str().unwrap()).unwrap(), ws.root());
        let sneaky = format!("{}/../x", ws.root().display());
        assert!(is_escape(ws.resolve(&sneaky)));
        let name = ws.root().file_name().unwrap().to_str().unwrap();
        let back_in = format!("{}/../{name}/x", ws.root().display());
        assert!(is_escape(ws.resolve(&back_in)));
        let dotted = format!("{}/./a/../b", ws.root().display());
        assert_eq!(ws.resolve(&dotted).unwrap(), ws.root().join("b"));
    }

    #[test]
    fn nul_byte_is_invalid_payload() {
        let (_d, ws) = ws();
        assert_eq!(ws.resolve("a\0b").unwrap_err().code(), "InvalidPayload");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_and_checked() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let (_d, ws) = ws();
        let root = ws.root().to_path_buf();
        std::fs::create_dir(root.join("real")).unwrap();
        symlink(outside.path().join("secret"), root.join("file_out")).unwrap();
        symlink(outside.path(), root.join("dir_out")).unwrap();
        symlink("real", root.join("dir_in")).unwrap();
        symlink(outside.path().join("missing"), root.join("dangling_out")).unwrap();
        symlink("real/new", root.join("dangling_in")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("../..", root.join("real/up")).unwrap();

        assert!(is_escape(ws.resolve("file_out")));
        assert!(is_escape(ws.resolve("dir_out")));
        assert!(is_escape(ws.resolve("dir_out/secret")));
        assert!(is_escape(ws.resolve("dir_out/new/deeper")));
        assert!(is_escape(ws.resolve("dangling_out")));
        assert!(is_escape(ws.resolve("real/up")));
        assert!(is_escape(ws.resolve("real/up/x")));
        assert_eq!(ws.resolve("dir_in/f").unwrap(), root.join("real/f"));
        assert_eq!(ws.resolve("dangling_in").unwrap(), root.join("real/new"));
        assert_eq!(ws.resolve("loop").unwrap_err().code(), "InvalidPayload");
    }

    #[test]
    fn normalizers() {
        assert_eq!(normalize_relative(Path::new("a/../..")), None);
        assert_eq!(normalize_relative(Path::new("/a")), None);
        assert_eq!(normalize_relative(Path::new("a/./b")).unwrap().len(), 2);
        assert_eq!(
            normalize_absolute(Path::new("/a/../../b")).unwrap(),
            PathBuf::from("/b")
        );
        assert_eq!(normalize_absolute(Path::new("a")), None);
    }
}
