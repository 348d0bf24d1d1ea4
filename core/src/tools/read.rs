//! `read {path, offset?, limit?}` → `{content, total_lines, start_line, end_line, truncated}`.
//!
//! - `offset`: 1-based number of the first line to return (default 1; 0 is taken as 1).
//! - `limit`: how many lines at most (default 2000, at least 1).
//! - `content`: those lines exactly as in the file, line terminators included, no prefixes.
//! - `total_lines`: lines in the file (a last line without a terminator counts).
//! - `start_line`/`end_line`: 1-based, inclusive; an empty file gives `start_line: 1`,
//!   `end_line: 0`.
//! - `truncated`: lines exist after `end_line`.
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): missing file, a directory or other non-regular
//! file, binary content (a NUL byte in the first 8 KiB), invalid UTF-8, an `offset` past the end.

use serde_json::{Value, json};

use super::{Args, Workspace, io_error, to_usize, tool_error};
use crate::error::Result;

/// Lines returned when `limit` is not given.
const DEFAULT_LIMIT: u64 = 2000;

/// How much of the start of a file is checked for NUL bytes.
const BINARY_SNIFF_BYTES: usize = 8 * 1024;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let (path, shown) = args.path(ws, "path", true)?;
    let offset = args.opt_count("offset", 0)?.unwrap_or(1).max(1);
    let limit = args.opt_count("limit", 1)?.unwrap_or(DEFAULT_LIMIT);
    let text = read_text(args.tool, &path, shown)?;

    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let total = lines.len();
    let first = to_usize(offset - 1);
    if first > total || (first == total && total > 0) {
        return Err(tool_error(
            args.tool,
            format!("{shown}: offset {offset} is past the end of the file ({total} lines)"),
        ));
    }
    let end = first.saturating_add(to_usize(limit)).min(total);
    let content: String = lines[first..end].concat();
    Ok(json!({
        "content": content,
        "total_lines": total,
        "start_line": first + 1,
        "end_line": end,
        "truncated": end < total,
    }))
}

/// Reads a regular file as UTF-8 text, refusing directories, special files and binary data.
pub(super) fn read_text(tool: &str, path: &std::path::Path, shown: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(tool, shown, &e))?;
    if meta.is_dir() {
        return Err(tool_error(tool, format!("{shown}: is a directory")));
    }
    if !meta.is_file() {
        return Err(tool_error(tool, format!("{shown}: not a regular file")));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(tool, shown, &e))?;
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Err(tool_error(tool, format!("{shown}: binary file")));
    }
    String::from_utf8(bytes).map_err(|_| tool_error(tool, format!("{shown}: not valid UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "read",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    fn setup() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.txt"), "a\nb\r\nc\nd").unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        (dir, ws)
    }

    #[test]
    fn whole_file() {
        let (_d, ws) = setup();
        let out = call(&ws, json!({"path": "f.txt"})).unwrap();
        assert_eq!(
            out,
            json!({"content": "a\nb\r\nc\nd", "total_lines": 4, "start_line": 1, "end_line": 4, "truncated": false})
        );
    }

    #[test]
    fn offset_and_limit() {
        let (_d, ws) = setup();
        let out = call(&ws, json!({"path": "f.txt", "offset": 2, "limit": 2})).unwrap();
        assert_eq!(out["content"], "b\r\nc\n");
        assert_eq!(
            (out["start_line"].as_u64(), out["end_line"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(out["truncated"], true);
        let out = call(&ws, json!({"path": "f.txt", "offset": 0, "limit": 1})).unwrap();
        assert_eq!(out["content"], "a\n");
        let out = call(&ws, json!({"path": "f.txt", "offset": 4, "limit": 100})).unwrap();
        assert_eq!(out["content"], "d");
        assert_eq!(out["truncated"], false);
        let err = call(&ws, json!({"path": "f.txt", "offset": 5})).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        let err = call(&ws, json!({"path": "f.txt", "offset": u64::MAX})).unwrap_err();
        assert_eq!(err.code(), "ToolFailed");
    }

    #[test]
    fn empty_file() {
        let (d, ws) = setup();
        std::fs::write(d.path().join("e"), "").unwrap();
        let out = call(&ws, json!({"path": "e"})).unwrap();
        assert_eq!(
            out,
            json!({"content": "", "total_lines": 0, "start_line": 1, "end_line": 0, "truncated": false})
        );
        assert!(call(&ws, json!({"path": "e", "offset": 2})).is_err());
    }

    #[test]
    fn bad_arguments() {
        let (_d, ws) = setup();
        for (v, key) in [
            (json!({}), "`path`"),
            (json!({"path": 5}), "`path`"),
            (json!({"path": "f.txt", "offset": -1}), "`offset`"),
            (json!({"path": "f.txt", "limit": 0}), "`limit`"),
            (json!({"path": "f.txt", "limit": "3"}), "`limit`"),
        ] {
            let err = call(&ws, v).unwrap_err();
            assert_eq!(err.code(), "InvalidPayload");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn refused_files() {
        let (d, ws) = setup();
        std::fs::write(d.path().join("bin"), b"ab\0cd").unwrap();
        std::fs::write(d.path().join("latin1"), b"caf\xe9").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        for (path, msg) in [
            ("bin", "binary"),
            ("latin1", "UTF-8"),
            ("dir", "directory"),
            ("none", "no such file"),
        ] {
            let err = call(&ws, json!({"path": path})).unwrap_err();
            assert_eq!(err.code(), "ToolFailed");
            assert!(err.to_string().contains(msg), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_not_read() {
        let (d, ws) = setup();
        let status = std::process::Command::new("mkfifo")
            .arg(d.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        let err = call(&ws, json!({"path": "fifo"})).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
