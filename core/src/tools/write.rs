//! `write {path, content}` → `{bytes_written}` (+ `"unchanged": true`).
//!
//! Creates or replaces the file with `content`, creating missing parent directories (inside
//! the workspace only). `bytes_written` is the length of `content` in bytes. When the file
//! already holds exactly `content`, nothing is written and the result also says
//! `"unchanged": true`, so a redelivered task is recognisable.
//!
//! The file is replaced by a new one renamed over it (see
//! [`Workspace`](super::Workspace)): a hard link elsewhere keeps the old content, and readers
//! see the old or the new file, never a half-written one. A symbolic link as the last component
//! is followed inside the workspace (the link stays, its target is replaced).
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): the path is a directory or another non-regular
//! file, or the file system refuses.

use serde_json::{Value, json};

use super::{Args, Workspace};
use crate::error::Result;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let (rel, shown) = args.path(ws, "path", true)?;
    let content = args.string("content")?;
    if ws.replace_file(args.tool, &rel, shown, content.as_bytes())? {
        Ok(json!({"bytes_written": content.len()}))
    } else {
        Ok(json!({"bytes_written": content.len(), "unchanged": true}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "write",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    #[test]
    fn creates_parents_and_detects_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        let out = call(&ws, json!({"path": "a/b/c.txt", "content": "héllo"})).unwrap();
        assert_eq!(out, json!({"bytes_written": 6}));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b/c.txt")).unwrap(),
            "héllo"
        );
        let out = call(&ws, json!({"path": "a/b/c.txt", "content": "héllo"})).unwrap();
        assert_eq!(out, json!({"bytes_written": 6, "unchanged": true}));
        let out = call(&ws, json!({"path": "a/b/c.txt", "content": "hallo!"})).unwrap();
        assert_eq!(out, json!({"bytes_written": 6}));
        let out = call(&ws, json!({"path": "a/b/c.txt", "content": ""})).unwrap();
        assert_eq!(out, json!({"bytes_written": 0}));
        assert_eq!(std::fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"");
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        assert!(
            call(&ws, json!({"path": "d", "content": "x"}))
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        assert_eq!(
            call(&ws, json!({"path": "", "content": "x"}))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"path": "f/g", "content": "x"}))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        let err = call(&ws, json!({"path": "n"})).unwrap_err();
        assert!(err.to_string().contains("`content`"), "{err}");
        let err = call(&ws, json!({"path": "n", "content": ["x"]})).unwrap_err();
        assert_eq!(err.code(), "InvalidPayload");
        assert_eq!(
            call(&ws, json!({"path": "../n", "content": "x"}))
                .unwrap_err()
                .code(),
            "PathEscapesWorkspace"
        );
    }
}
