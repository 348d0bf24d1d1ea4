//! `read {path, offset?, limit?}` → `{content, total_lines, start_line, end_line, truncated}`.
//!
//! - `offset`: 1-based number of the first line to return (default 1; 0 is taken as 1).
//! - `limit`: how many lines at most (default 2000, at least 1).
//! - `content`: those lines exactly as in the file, line terminators included, no prefixes.
//! - `total_lines`: lines in the whole file (a last line without a terminator counts).
//! - `start_line`/`end_line`: 1-based, inclusive; an empty file gives `start_line: 1`,
//!   `end_line: 0`.
//! - `truncated`: lines exist after `end_line`.
//!
//! The file is streamed: memory does not grow with its size. The lines before `offset` and after
//! the returned ones are only counted (so `total_lines` costs one pass over the file), and the
//! UTF-8 check applies to the returned lines only. The returned content holds at most the
//! workspace's [`max_file_bytes`](super::Workspace::max_file_bytes) (16 MiB by default): when
//! the lines asked for would exceed it, fewer are returned, with `truncated: true`.
//!
//! A hard link is a name inside the workspace like any other: its content is read whatever other
//! names the file has (see [`Workspace`](super::Workspace) for why writes cannot reach those).
//!
//! Errors: [`Error::ToolFailed`](crate::Error::ToolFailed) for a missing file, a directory or
//! other non-regular file, binary content (a NUL byte in the first 8 KiB), returned lines that
//! are not valid UTF-8, or an `offset` past the end;
//! [`Error::FileTooLarge`](crate::Error::FileTooLarge) when the first line asked for is itself
//! longer than `max_file_bytes`.

use std::io::{BufRead, BufReader, Read};

use serde_json::{Value, json};

use super::workspace::{BINARY_SNIFF_BYTES, is_binary};
use super::{Args, Workspace, io_error, tool_error};
use crate::error::{Error, Result};

/// Lines returned when `limit` is not given.
const DEFAULT_LIMIT: u64 = 2000;

/// The read buffer.
const BUFFER_BYTES: usize = 64 * 1024;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let (rel, shown) = args.path(ws, "path", true)?;
    let offset = args.opt_count("offset", 0)?.unwrap_or(1).max(1);
    let limit = args.opt_count("limit", 1)?.unwrap_or(DEFAULT_LIMIT);
    let file = ws.open_file(args.tool, &rel, shown)?;
    let io = |e: std::io::Error| io_error(args.tool, shown, &e);

    let mut head = Vec::with_capacity(BINARY_SNIFF_BYTES);
    (&file)
        .take(BINARY_SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    if is_binary(&head) {
        return Err(tool_error(args.tool, format!("{shown}: binary file")));
    }
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, std::io::Cursor::new(head).chain(file));

    let first = offset - 1; // 0-based index of the first line to return
    let max_content = ws.max_file_bytes();
    let mut content: Vec<u8> = Vec::new();
    let mut total: u64 = 0; // lines seen so far
    let mut end: u64 = 0; // lines returned end here (exclusive, 0-based)
    let mut full = false; // the content cap stopped the window early
    loop {
        let in_window = !full && total >= first && total - first < limit;
        let ended = if in_window {
            let before = content.len();
            let more = next_line(&mut reader, Some(&mut content), max_content).map_err(io)?;
            match more {
                Line::Ended => true,
                Line::Read => {
                    end = total + 1;
                    false
                }
                Line::TooLong => {
                    content.truncate(before);
                    if before == 0 {
                        return Err(Error::FileTooLarge {
                            tool: args.tool.to_string(),
                            path: shown.to_string(),
                            limit: max_content,
                        });
                    }
                    full = true;
                    // The rest of this line is only counted.
                    next_line(&mut reader, None, 0).map_err(io)?;
                    false
                }
            }
        } else {
            matches!(next_line(&mut reader, None, 0).map_err(io)?, Line::Ended)
        };
        if ended {
            break;
        }
        total += 1;
    }
    if first > total || (first == total && total > 0) {
        return Err(tool_error(
            args.tool,
            format!("{shown}: offset {offset} is past the end of the file ({total} lines)"),
        ));
    }
    let end = end.max(first);
    let content = String::from_utf8(content)
        .map_err(|_| tool_error(args.tool, format!("{shown}: not valid UTF-8 text")))?;
    Ok(json!({
        "content": content,
        "total_lines": total,
        "start_line": first + 1,
        "end_line": end,
        "truncated": end < total,
    }))
}

/// What [`next_line`] found.
enum Line {
    /// A line (with its terminator, or the last one without).
    Read,
    /// The end of the file: no byte left.
    Ended,
    /// The line would take `keep` past its cap; what was appended stays (the caller drops it).
    TooLong,
}

/// Reads one line from `reader`, appending it to `keep` (while `keep` stays within `cap` bytes)
/// or only skipping over it when `keep` is `None`. Memory is the reader's buffer plus `keep`.
fn next_line<R: BufRead>(
    reader: &mut R,
    mut keep: Option<&mut Vec<u8>>,
    cap: u64,
) -> std::io::Result<Line> {
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(if any { Line::Read } else { Line::Ended });
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let used = chunk.len();
        if let Some(keep) = keep.as_deref_mut() {
            if (keep.len() + used) as u64 > cap {
                return Ok(Line::TooLong);
            }
            keep.extend_from_slice(chunk);
        }
        reader.consume(used);
        if done {
            return Ok(Line::Read);
        }
    }
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

    #[test]
    fn content_is_capped_by_max_file_bytes() {
        let (d, ws) = setup();
        std::fs::write(d.path().join("g"), "aaaa\nbbbb\ncccc\n").unwrap();
        let ws = ws.with_max_file_bytes(10);
        let out = call(&ws, json!({"path": "g"})).unwrap();
        assert_eq!(
            out,
            json!({"content": "aaaa\nbbbb\n", "total_lines": 3, "start_line": 1, "end_line": 2, "truncated": true})
        );
        let out = call(&ws, json!({"path": "g", "offset": 3})).unwrap();
        assert_eq!(out["content"], "cccc\n");
        let ws = ws.with_max_file_bytes(3);
        let err = call(&ws, json!({"path": "g", "offset": 2})).unwrap_err();
        assert_eq!(err.code(), "FileTooLarge");
    }

    #[test]
    fn only_the_returned_lines_must_be_utf8() {
        let (d, ws) = setup();
        std::fs::write(d.path().join("mixed"), b"ok\ncaf\xe9\n").unwrap();
        let out = call(&ws, json!({"path": "mixed", "limit": 1})).unwrap();
        assert_eq!(out["content"], "ok\n");
        assert_eq!(out["total_lines"], 2);
        let err = call(&ws, json!({"path": "mixed"})).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
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
