//! `ls {path?}` → `{entries: [{name, kind, size}]}`.
//!
//! Lists a directory (default the root), every entry included (hidden and ignored ones too),
//! sorted by name. `kind` is `"file"`, `"dir"`, `"symlink"` (not followed) or `"other"`; `size`
//! is the length in bytes of a file or of a symbolic link's target text, 0 otherwise.
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): a missing path, or one that is not a directory.

use serde_json::{Value, json};

use super::{Args, Workspace, io_error};
use crate::error::Result;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let (rel, shown) = args.path(ws, "path", false)?;
    let dir = ws.open_dir(args.tool, &rel, shown)?;
    let mut entries: Vec<(String, &'static str, u64)> = Vec::new();
    for entry in dir.entries().map_err(|e| io_error(args.tool, shown, &e))? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        // The entry's own metadata: a symbolic link is not followed.
        let (kind, size) = match entry.metadata() {
            Ok(m) if m.file_type().is_symlink() => ("symlink", m.len()),
            Ok(m) if m.is_dir() => ("dir", 0),
            Ok(m) if m.is_file() => ("file", m.len()),
            _ => ("other", 0),
        };
        entries.push((name, kind, size));
    }
    entries.sort();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(name, kind, size)| json!({"name": name, "kind": kind, "size": size}))
        .collect();
    Ok(json!({"entries": entries}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "ls",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    #[test]
    fn lists_sorted_with_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "hello").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join(".h"), "").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("b.txt", dir.path().join("c")).unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        let out = call(&ws, json!({})).unwrap();
        let mut expected = vec![
            json!({"name": ".h", "kind": "file", "size": 0}),
            json!({"name": "a", "kind": "dir", "size": 0}),
            json!({"name": "b.txt", "kind": "file", "size": 5}),
        ];
        if cfg!(unix) {
            expected.push(json!({"name": "c", "kind": "symlink", "size": 5}));
        }
        assert_eq!(out, json!({"entries": expected}));
        assert_eq!(
            call(&ws, json!({"path": "a"})).unwrap(),
            json!({"entries": []})
        );
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        assert!(
            call(&ws, json!({"path": "f"}))
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        assert_eq!(
            call(&ws, json!({"path": "nope"})).unwrap_err().code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"path": 5})).unwrap_err().code(),
            "InvalidPayload"
        );
    }
}
