//! `write {path, content}` → `{bytes_written}` (+ `"unchanged": true`).
//!
//! Creates or replaces the file with `content`, creating missing parent directories (inside
//! the workspace only: the path is checked again once they exist). `bytes_written` is the length
//! of `content` in bytes. When the file already holds exactly `content`, nothing is written and
//! the result also says `"unchanged": true`, so a redelivered task is recognisable.
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): the path is a directory or another non-regular
//! file, or the file system refuses.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Args, Workspace, io_error, tool_error};
use crate::error::Result;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let raw = args.string("path")?;
    let content = args.string("content")?;
    let path = ws.resolve(raw)?;
    if path == ws.root() {
        return Err(tool_error(args.tool, format!("{raw}: is a directory")));
    }
    let path = prepare(args.tool, ws, raw, &path)?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(tool_error(args.tool, format!("{raw}: is a directory")));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(tool_error(args.tool, format!("{raw}: not a regular file")));
        }
        Ok(meta)
            if meta.len() == content.len() as u64
                && std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) =>
        {
            return Ok(json!({"bytes_written": content.len(), "unchanged": true}));
        }
        _ => {}
    }
    std::fs::write(&path, content).map_err(|e| io_error(args.tool, raw, &e))?;
    Ok(json!({"bytes_written": content.len()}))
}

/// Creates the parent directories of `path` and resolves `raw` again, so a directory swapped for
/// a symbolic link meanwhile cannot redirect the write. Returns the path to write.
pub(super) fn prepare(tool: &str, ws: &Workspace, raw: &str, path: &Path) -> Result<PathBuf> {
    if let Some(parent) = path.parent().filter(|p| !p.exists()) {
        std::fs::create_dir_all(parent).map_err(|e| io_error(tool, raw, &e))?;
    }
    ws.resolve(raw)
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
