//! The workspace a worker's tools operate in, and the guard that keeps them inside it.
//!
//! Every file a tool opens, creates, lists or replaces is reached through a handle on the root
//! directory, never through a path string: [`cap_std`] resolves each path beneath that handle
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel offers it, and by a
//! walk from directory handle to directory handle (`O_NOFOLLOW` on each component, symbolic
//! links expanded and checked by hand) where `openat2` is missing or denied by a seccomp filter.
//! Either way the check and the open are one step, so a directory swapped for a symbolic link
//! to the outside in the middle of a call can only make the call fail, never reach outside.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

use super::{io_error, tool_error};
use crate::error::{Error, Result};

/// Default cap on each of `bash`'s output streams: 1 MiB.
const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Default cap on what a tool holds of one file in memory: 16 MiB.
const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

/// How many symbolic links in the last component of a written path are followed (Linux's
/// `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The most of an ignore file (`.gitignore`, `.ignore`) that is read.
const MAX_IGNORE_FILE_BYTES: u64 = 1 << 20;

/// The directory the built-in tools work in, with the options that restrict them.
///
/// Paths given to the tools are relative to the root (an absolute path is accepted when it lies
/// inside the root). Nothing outside the root is ever read, listed, created or changed: `..`
/// climbing above the root and absolute paths elsewhere are refused up front, and symbolic
/// links are followed only while they stay inside (a link to the outside, or any absolute
/// link, is refused when the tool opens it) — also when the tree changes during the call.
///
/// Files are replaced, not rewritten in place: `write` and `edit` write a new file beside the old
/// one and rename it over it, so a hard link whose other name lies outside the workspace keeps
/// its old content there.
///
/// `bash` is off unless allowed with [`with_bash`](Self::with_bash): a workspace that runs
/// tasks received from elsewhere must opt in to running their commands.
///
/// A `Workspace` is cheap to clone and safe to share between concurrent tool calls.
///
/// # Examples
///
/// ```
/// use a3s_code_core::tools::Workspace;
/// let dir = tempfile::tempdir().unwrap();
/// let ws = Workspace::new(dir.path()).unwrap();
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
    /// A handle on the root: every file operation starts from it.
    dir: Arc<Dir>,
    allow_bash: bool,
    max_output_bytes: usize,
    max_file_bytes: u64,
}

impl Workspace {
    /// A workspace rooted at `root`, which must be an existing directory. `bash` is off, its
    /// output capped at 1 MiB per stream, and a file held whole in memory capped at 16 MiB,
    /// until changed with [`with_bash`](Self::with_bash),
    /// [`with_max_output_bytes`](Self::with_max_output_bytes) and
    /// [`with_max_file_bytes`](Self::with_max_file_bytes).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `root` does not exist, cannot be resolved or opened, or is
    /// not a directory.
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
        let dir = Dir::open_ambient_dir(&canonical, cap_std::ambient_authority()).map_err(|e| {
            Error::invalid_config(format!("workspace root {}: {e}", given.display()))
        })?;
        let alias = std::path::absolute(given)
            .ok()
            .and_then(|abs| normalize_absolute(&abs))
            .filter(|abs| *abs != canonical);
        Ok(Self {
            root: canonical,
            alias,
            dir: Arc::new(dir),
            allow_bash: false,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Allows or forbids the `bash` tool (forbidden by default).
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

    /// Caps what a tool holds of one file in memory at `n` bytes (16 MiB by default): `edit`
    /// refuses a larger file, and `read` returns at most this much content (fewer lines, with
    /// `truncated: true`) and refuses a single longer line, both with
    /// [`Error::FileTooLarge`]. `read` streams, so the file itself may be of any size.
    pub fn with_max_file_bytes(mut self, n: u64) -> Self {
        self.max_file_bytes = n;
        self
    }

    /// The cap on what a tool holds of one file in memory, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// The absolute path inside the workspace that `path` names, after the checks that need no
    /// file system access.
    ///
    /// `path` is relative to the root; an absolute path is accepted only when it lies inside
    /// the root. `""` and `"."` name the root itself. The rules, in order:
    /// 1. a NUL byte is refused;
    /// 2. an absolute path must start with the root (as canonicalized, or as given to
    ///    [`new`](Self::new)), and is then taken relative to it;
    /// 3. `.` and `..` are resolved lexically, and a path that climbs above the root at any
    ///    point is refused (even `../root-name/x` or `/path/to/root/../root/x`, which would come
    ///    back inside).
    ///
    /// Symbolic links are checked when a tool opens the path, beneath a handle on the root (see
    /// the type's docs): the tools never open the returned path by name.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidPayload`] for a NUL byte;
    /// - [`Error::PathEscapesWorkspace`] for a path outside the root.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        Ok(self.root.join(self.relative(path)?))
    }

    /// The workspace-relative path `path` names (rules 1-3 of [`resolve`](Self::resolve)): plain
    /// names only, empty for the root.
    pub(crate) fn relative(&self, path: &str) -> Result<PathBuf> {
        if path.contains('\0') {
            return Err(Error::invalid_payload(format!(
                "path {path:?} contains a NUL byte"
            )));
        }
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
                .ok_or_else(|| self.escape(path))?
        } else {
            given
        };
        let names = normalize_relative(relative).ok_or_else(|| self.escape(path))?;
        Ok(names.iter().collect())
    }

    /// The path relative to the root, with `/` separators (`"."` for the root itself).
    ///
    /// A path outside the root is returned whole (lossily converted to UTF-8).
    pub fn display_path(&self, abs: &Path) -> String {
        match abs.strip_prefix(&self.root) {
            Ok(rel) => display_relative(rel),
            Err(_) => abs.to_string_lossy().into_owned(),
        }
    }

    fn escape(&self, path: &str) -> Error {
        Error::PathEscapesWorkspace {
            path: path.to_string(),
            root: self.root.clone(),
        }
    }

    /// `err`, from an operation on `shown` (the path as the user wrote it), as a typed error:
    /// [`Error::PathEscapesWorkspace`] when the path led outside, [`Error::ToolFailed`] else.
    pub(crate) fn fs_error(&self, tool: &str, shown: &str, err: &io::Error) -> Error {
        if is_escape_attempt(err) {
            self.escape(shown)
        } else {
            io_error(tool, shown, err)
        }
    }

    /// A path that names the workspace itself (`rel` empty) as cap-std wants it.
    fn at(rel: &Path) -> &Path {
        if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        }
    }

    /// Opens the regular file at `rel` for reading. A directory, a FIFO or a device is refused
    /// without blocking on it (the open is non-blocking and the type is checked on the handle).
    pub(crate) fn open_file(&self, tool: &str, rel: &Path, shown: &str) -> Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = self
            .dir
            .open_with(Self::at(rel), &options)
            .map_err(|e| self.fs_error(tool, shown, &e))?
            .into_std();
        let meta = file.metadata().map_err(|e| io_error(tool, shown, &e))?;
        if meta.is_dir() {
            return Err(tool_error(tool, format!("{shown}: is a directory")));
        }
        if !meta.is_file() {
            return Err(tool_error(tool, format!("{shown}: not a regular file")));
        }
        Ok(file)
    }

    /// The metadata of what `rel` names (symbolic links followed, inside the workspace only).
    pub(crate) fn metadata(
        &self,
        tool: &str,
        rel: &Path,
        shown: &str,
    ) -> Result<cap_std::fs::Metadata> {
        self.dir
            .metadata(Self::at(rel))
            .map_err(|e| self.fs_error(tool, shown, &e))
    }

    /// Opens the directory at `rel` (the root when empty).
    pub(crate) fn open_dir(&self, tool: &str, rel: &Path, shown: &str) -> Result<Dir> {
        if rel.as_os_str().is_empty() {
            return self.dir.try_clone().map_err(|e| io_error(tool, shown, &e));
        }
        self.dir.open_dir(rel).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => tool_error(tool, format!("{shown}: not a directory")),
            _ => self.fs_error(tool, shown, &e),
        })
    }

    /// Reads the whole regular file at `rel` as UTF-8 text, refusing binary data and files over
    /// [`max_file_bytes`](Self::max_file_bytes).
    pub(crate) fn read_whole(&self, tool: &str, rel: &Path, shown: &str) -> Result<String> {
        let file = self.open_file(tool, rel, shown)?;
        let limit = self.max_file_bytes;
        let too_large = || Error::FileTooLarge {
            tool: tool.to_string(),
            path: shown.to_string(),
            limit,
        };
        if file.metadata().is_ok_and(|m| m.len() > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(tool, shown, &e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        if is_binary(&bytes) {
            return Err(tool_error(tool, format!("{shown}: binary file")));
        }
        String::from_utf8(bytes)
            .map_err(|_| tool_error(tool, format!("{shown}: not valid UTF-8 text")))
    }

    /// Creates or replaces the regular file at `rel` with `content`, creating missing parent
    /// directories. Returns `false` without writing when the file already holds exactly
    /// `content`.
    ///
    /// A symbolic link as the last component is followed (inside the workspace only). The new
    /// content goes into a new file in the same directory, which is then renamed over the old
    /// name: other hard links of the old file keep the old content, and a reader never sees a
    /// half-written file. The old file's permission bits are kept.
    pub(crate) fn replace_file(
        &self,
        tool: &str,
        rel: &Path,
        shown: &str,
        content: &[u8],
    ) -> Result<bool> {
        let target = self.follow_last(tool, rel, shown)?;
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(tool_error(tool, format!("{shown}: is a directory")));
        };
        if !parent.as_os_str().is_empty()
            && let Err(e) = self.dir.create_dir_all(parent)
        {
            // An existing link to the outside reads as "exists": name the real reason.
            return Err(match self.dir.open_dir(parent) {
                Err(outside) if is_escape_attempt(&outside) => self.escape(shown),
                _ => self.fs_error(tool, shown, &e),
            });
        }
        let dir = self.open_dir(tool, parent, shown)?;
        let old = match dir.symlink_metadata(name) {
            Ok(meta) if meta.is_dir() => {
                return Err(tool_error(tool, format!("{shown}: is a directory")));
            }
            Ok(meta) if !meta.is_file() && !meta.is_symlink() => {
                return Err(tool_error(tool, format!("{shown}: not a regular file")));
            }
            Ok(meta) if meta.is_file() => Some(meta),
            _ => None,
        };
        if let Some(meta) = &old
            && meta.len() == content.len() as u64
            && same_content(&dir, name, content)
        {
            return Ok(false);
        }
        let temp = temp_name(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(0o666);
        let written = dir.open_with(&temp, &options).and_then(|mut file| {
            file.write_all(content)?;
            if let Some(meta) = &old {
                file.set_permissions(meta.permissions())?;
            }
            Ok(())
        });
        let renamed = written.and_then(|()| dir.rename(&temp, &dir, name));
        if let Err(e) = renamed {
            let _ = dir.remove_file(&temp);
            return Err(self.fs_error(tool, shown, &e));
        }
        Ok(true)
    }

    /// `rel` with symbolic links in its last component followed, as long as they stay inside
    /// (lexically; the open beneath the root checks the rest).
    fn follow_last(&self, tool: &str, rel: &Path, shown: &str) -> Result<PathBuf> {
        let mut current = rel.to_path_buf();
        for _ in 0..MAX_SYMLINK_HOPS {
            match self.dir.symlink_metadata(Self::at(&current)) {
                Ok(meta) if meta.is_symlink() => {}
                _ => return Ok(current),
            }
            let target = self
                .dir
                .read_link_contents(&current)
                .map_err(|e| self.fs_error(tool, shown, &e))?;
            if target.is_absolute() {
                return Err(self.escape(shown));
            }
            let joined = current.parent().unwrap_or(Path::new("")).join(target);
            let names = normalize_relative(&joined).ok_or_else(|| self.escape(shown))?;
            current = names.iter().collect();
        }
        Err(tool_error(
            tool,
            format!("{shown}: too many levels of symbolic links"),
        ))
    }

    /// The handle on the root, for walks.
    pub(crate) fn root_dir(&self) -> &Dir {
        &self.dir
    }

    /// Reads an ignore file in `dir` (at most 1 MiB; missing or unreadable reads as empty).
    pub(crate) fn read_small(dir: &Dir, name: &Path) -> String {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let Ok(file) = dir.open_with(name, &options) else {
            return String::new();
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return String::new();
        }
        let mut bytes = Vec::new();
        if file
            .into_std()
            .take(MAX_IGNORE_FILE_BYTES)
            .read_to_end(&mut bytes)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Whether `err` is cap-std's refusal of a path that leads outside the root (openat2's `EXDEV`,
/// or the hand walk's own check), as opposed to an error of the file system.
fn is_escape_attempt(err: &io::Error) -> bool {
    err.raw_os_error().is_none()
        && err.kind() == io::ErrorKind::PermissionDenied
        && err.to_string().contains("outside")
}

/// Whether `bytes` looks binary: a NUL byte in its first 8 KiB.
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0)
}

/// How much of the start of a file is checked for NUL bytes.
pub(crate) const BINARY_SNIFF_BYTES: usize = 8 * 1024;

/// Whether `name` in `dir` holds exactly `content` (read with the length already known equal).
fn same_content(dir: &Dir, name: &std::ffi::OsStr, content: &[u8]) -> bool {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .follow(FollowSymlinks::No);
    let Ok(file) = dir.open_with(name, &options) else {
        return false;
    };
    let mut old = Vec::with_capacity(content.len());
    file.into_std()
        .take(content.len() as u64 + 1)
        .read_to_end(&mut old)
        .is_ok()
        && old == content
}

/// A fresh name beside `name` for the file that will replace it.
fn temp_name(name: &std::ffi::OsStr) -> OsString {
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".a3s-{}.tmp", uuid::Uuid::new_v4().simple()));
    temp
}

/// A workspace-relative path with `/` separators (`"."` for the root itself).
pub(crate) fn display_relative(rel: &Path) -> String {
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
        assert!(!ws.allows_bash());
        assert_eq!(ws.max_output_bytes(), 1 << 20);
        assert_eq!(ws.max_file_bytes(), 16 << 20);
        let ws = ws
            .with_bash(true)
            .with_max_output_bytes(10)
            .with_max_file_bytes(20);
        assert!(ws.allows_bash());
        assert_eq!(ws.max_output_bytes(), 10);
        assert_eq!(ws.max_file_bytes(), 20);
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
        assert_eq!(ws.relative("a/./b").unwrap(), Path::new("a/b"));
        assert_eq!(ws.relative(".").unwrap(), Path::new(""));
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
    fn symlinks_are_followed_inside_and_refused_outside() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let (_d, ws) = ws();
        let root = ws.root().to_path_buf();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), "inside").unwrap();
        symlink(outside.path().join("secret"), root.join("file_out")).unwrap();
        symlink(outside.path(), root.join("dir_out")).unwrap();
        symlink("real", root.join("dir_in")).unwrap();
        symlink(root.join("real"), root.join("dir_in_absolute")).unwrap();
        symlink(outside.path().join("missing"), root.join("dangling_out")).unwrap();
        symlink("real/new", root.join("dangling_in")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("../..", root.join("real/up")).unwrap();

        let read = |p: &str| ws.open_file("read", Path::new(p), p);
        for p in [
            "file_out",
            "dir_out/secret",
            "real/up/x",
            "dir_in_absolute/f",
        ] {
            let err = read(p).unwrap_err();
            assert_eq!(err.code(), "PathEscapesWorkspace", "{p}: {err}");
        }
        let err = ws
            .open_dir("ls", Path::new("dir_out"), "dir_out")
            .unwrap_err();
        assert_eq!(err.code(), "PathEscapesWorkspace");
        let mut text = String::new();
        read("dir_in/f").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "inside");
        assert_eq!(read("loop").unwrap_err().code(), "ToolFailed");

        let write = |p: &str| ws.replace_file("write", Path::new(p), p, b"w");
        for p in [
            "file_out",
            "dir_out/new/deeper",
            "dangling_out",
            "real/up/x",
        ] {
            let err = write(p).unwrap_err();
            assert_eq!(err.code(), "PathEscapesWorkspace", "{p}: {err}");
        }
        assert!(!outside.path().join("new").exists());
        assert!(!outside.path().join("missing").exists());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s"
        );
        assert!(write("dangling_in").unwrap());
        assert_eq!(std::fs::read_to_string(root.join("real/new")).unwrap(), "w");
        assert!(
            root.join("dangling_in").is_symlink(),
            "the link itself stays"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_write_replaces_the_inode_so_hard_links_outside_keep_their_content() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let outside = tempfile::tempdir().unwrap();
        let (_d, ws) = ws();
        let target = outside.path().join("target");
        std::fs::write(&target, "outside").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = ws.root().join("link");
        if std::fs::hard_link(&target, &link).is_err() {
            eprintln!("skipped: no hard links across these directories");
            return;
        }
        assert!(
            ws.replace_file("write", Path::new("link"), "link", b"new")
                .unwrap()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "outside");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        let meta = std::fs::metadata(&link).unwrap();
        assert_eq!(meta.nlink(), 1);
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "mode kept");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(ws.root()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // Unchanged content is not rewritten.
        assert!(
            !ws.replace_file("write", Path::new("link"), "link", b"new")
                .unwrap()
        );
    }

    #[test]
    fn read_whole_refuses_large_and_binary_files() {
        let (_d, ws) = ws();
        let ws = ws.with_max_file_bytes(4);
        std::fs::write(ws.root().join("small"), "abcd").unwrap();
        std::fs::write(ws.root().join("big"), "abcde").unwrap();
        std::fs::write(ws.root().join("bin"), b"a\0").unwrap();
        assert_eq!(
            ws.read_whole("edit", Path::new("small"), "small").unwrap(),
            "abcd"
        );
        let err = ws.read_whole("edit", Path::new("big"), "big").unwrap_err();
        assert_eq!(err.code(), "FileTooLarge");
        assert!(err.to_string().contains("4 bytes"), "{err}");
        let err = ws.read_whole("edit", Path::new("bin"), "bin").unwrap_err();
        assert!(err.to_string().contains("binary"), "{err}");
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
