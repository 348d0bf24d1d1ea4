//! `glob {pattern, path?}` → `{paths, truncated}`.
//!
//! Lists the files under `path` (a directory, default the root) that match `pattern`, as
//! sorted, workspace-relative, `/`-separated paths, at most 1000 (`truncated` says whether more
//! matched).
//!
//! The walk honours `.gitignore` (even outside a git repository), `.ignore` and
//! `.git/info/exclude` files, including those of parent directories inside the workspace, skips
//! hidden files and directories unless the pattern itself names one (it starts with `.` or
//! contains `/.`), and does not follow symbolic links (nor list them). It goes from directory
//! handle to directory handle, so a tree changing during the walk never leads it outside the
//! workspace.
//!
//! The matching rule, shared with `grep`'s `glob` argument: a file matches when the pattern
//! matches its workspace-relative path or its path relative to `path`, or, for a pattern
//! without `/`, its file name. `*` and `?` do not cross `/`, `**` does, and `{a,b}` and `[ab]`
//! work as usual. So `*.rs` finds Rust files at any depth, `src/*.rs` only those directly in
//! `src`, and `src/**/*.rs` those anywhere below it.
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): an invalid pattern, a missing `path`, or a
//! `path` that is not a directory.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};
use serde_json::{Value, json};

use super::walk::walk_files;
use super::workspace::display_relative;
use super::{Args, Workspace, tool_error};
use crate::error::Result;

/// The most paths one call returns.
const MAX_PATHS: usize = 1000;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let pattern = args.string("pattern")?;
    let (dir, shown) = args.path(ws, "path", false)?;
    let filter = GlobFilter::new(args.tool, pattern)?;
    let mut paths: Vec<String> = walk_files(ws, args.tool, &dir, shown, filter.wants_hidden())?
        .into_iter()
        .filter(|file| filter.is_match(&dir, file))
        .map(|file| display_relative(&file))
        .collect();
    paths.sort();
    let truncated = paths.len() > MAX_PATHS;
    paths.truncate(MAX_PATHS);
    Ok(json!({"paths": paths, "truncated": truncated}))
}

/// A compiled glob with the matching rule described in the module docs.
pub(super) struct GlobFilter {
    matcher: GlobMatcher,
    by_name: bool,
    hidden: bool,
}

impl GlobFilter {
    /// Compiles `pattern`.
    ///
    /// # Errors
    ///
    /// [`Error::ToolFailed`](crate::Error::ToolFailed) for an invalid pattern.
    pub(super) fn new(tool: &str, pattern: &str) -> Result<Self> {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| tool_error(tool, format!("invalid glob {pattern:?}: {}", e.kind())))?;
        Ok(Self {
            matcher: glob.compile_matcher(),
            by_name: !pattern.contains('/'),
            hidden: pattern.starts_with('.') || pattern.contains("/."),
        })
    }

    /// Whether the pattern names hidden files, so the walk must include them.
    pub(super) fn wants_hidden(&self) -> bool {
        self.hidden
    }

    /// Whether `file`, found by walking `base` (both workspace-relative), matches.
    pub(super) fn is_match(&self, base: &Path, file: &Path) -> bool {
        let in_base = file.strip_prefix(base).unwrap_or(file);
        self.matcher.is_match(file)
            || self.matcher.is_match(in_base)
            || (self.by_name
                && file
                    .file_name()
                    .is_some_and(|name| self.matcher.is_match(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "glob",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    fn setup() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "a.rs",
            "src/b.rs",
            "src/deep/c.rs",
            "src/d.txt",
            "target/x.rs",
            ".hidden/h.rs",
            ".env",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        let ws = Workspace::new(root).unwrap();
        (dir, ws)
    }

    fn paths(v: Value) -> Vec<String> {
        serde_json::from_value(v["paths"].clone()).unwrap()
    }

    #[test]
    fn matching_rule() {
        let (_d, ws) = setup();
        assert_eq!(
            paths(call(&ws, json!({"pattern": "*.rs"})).unwrap()),
            ["a.rs", "src/b.rs", "src/deep/c.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": "**/*.rs"})).unwrap()),
            ["a.rs", "src/b.rs", "src/deep/c.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": "src/*.rs"})).unwrap()),
            ["src/b.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": "src/**"})).unwrap()),
            ["src/b.rs", "src/d.txt", "src/deep/c.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": "deep/*.rs", "path": "src"})).unwrap()),
            ["src/deep/c.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": "*.{txt,md}"})).unwrap()),
            ["src/d.txt"]
        );
    }

    #[test]
    fn hidden_only_when_named() {
        let (_d, ws) = setup();
        assert_eq!(
            paths(call(&ws, json!({"pattern": ".hidden/*"})).unwrap()),
            [".hidden/h.rs"]
        );
        assert_eq!(
            paths(call(&ws, json!({"pattern": ".env"})).unwrap()),
            [".env"]
        );
        assert!(paths(call(&ws, json!({"pattern": "target/*"})).unwrap()).is_empty());
    }

    #[test]
    fn truncates_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(MAX_PATHS + 5) {
            std::fs::write(dir.path().join(format!("f{i:05}")), "").unwrap();
        }
        let ws = Workspace::new(dir.path()).unwrap();
        let out = call(&ws, json!({"pattern": "f*"})).unwrap();
        assert_eq!(out["truncated"], true);
        let got = paths(out);
        assert_eq!(got.len(), MAX_PATHS);
        assert_eq!(got[0], "f00000");
    }

    #[test]
    fn errors() {
        let (_d, ws) = setup();
        assert_eq!(
            call(&ws, json!({"pattern": "a[", "path": "."}))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        assert!(
            call(&ws, json!({"pattern": "*", "path": "a.rs"}))
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        assert_eq!(
            call(&ws, json!({"pattern": "*", "path": "nope"}))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        assert_eq!(call(&ws, json!({})).unwrap_err().code(), "InvalidPayload");
        assert_eq!(
            call(&ws, json!({"pattern": "*", "path": false}))
                .unwrap_err()
                .code(),
            "InvalidPayload"
        );
    }
}
