//! `grep {pattern, path?, glob?, case_insensitive?, max_results?}` → `{matches: [{path, line,
//! text}], truncated}`.
//!
//! Searches files line by line for the regular expression `pattern` (Rust `regex` syntax; a
//! match never spans lines, and a pattern that needs a literal `\n` is refused).
//!
//! - `path`: a file or a directory (default the root). A directory is walked like `glob` does:
//!   `.gitignore`, `.ignore` and `.git/info/exclude` honoured (even outside a git repository),
//!   hidden entries skipped, symbolic links not followed. A file named explicitly is always
//!   searched.
//! - `glob`: only files matching it, by the rule of the `glob` tool (the workspace-relative path,
//!   the path relative to `path`, or the file name for a pattern without `/`).
//! - `case_insensitive`: default `false`.
//! - `max_results`: default 200; `truncated` says whether more lines matched.
//!
//! Binary files (a NUL byte) are skipped; invalid UTF-8 is replaced. Each match gives the
//! workspace-relative `path` (with `/`), the 1-based `line` and its `text` without the line
//! terminator, cut to 500 characters. Matches are ordered by path, then line.
//!
//! Errors ([`Error::ToolFailed`](crate::Error::ToolFailed)): an invalid regex or glob, a missing `path`, a
//! `path` that is neither a directory nor a regular file.

use std::path::PathBuf;

use grep_regex::RegexMatcherBuilder;
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkMatch};
use serde_json::{Value, json};

use super::glob::GlobFilter;
use super::walk::walk_files;
use super::workspace::display_relative;
use super::{Args, Workspace, to_usize, tool_error};
use crate::error::Result;

/// Matches returned when `max_results` is not given.
const DEFAULT_MAX_RESULTS: u64 = 200;

/// The longest `text` of a match, in characters.
const MAX_TEXT_CHARS: usize = 500;

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let pattern = args.string("pattern")?;
    let (target, shown) = args.path(ws, "path", false)?;
    let glob = args
        .opt_string("glob")?
        .map(|g| GlobFilter::new(args.tool, g))
        .transpose()?;
    let case_insensitive = args.flag("case_insensitive")?;
    let max_results = to_usize(
        args.opt_count("max_results", 1)?
            .unwrap_or(DEFAULT_MAX_RESULTS),
    );

    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(case_insensitive)
        .line_terminator(Some(b'\n'))
        .build(pattern)
        .map_err(|e| tool_error(args.tool, format!("invalid regex {pattern:?}: {e}")))?;
    let is_dir = ws.metadata(args.tool, &target, shown)?.is_dir();
    let mut files: Vec<(String, PathBuf)> = if is_dir {
        let hidden = glob.as_ref().is_some_and(GlobFilter::wants_hidden);
        walk_files(ws, args.tool, &target, shown, hidden)?
            .into_iter()
            .filter(|file| glob.as_ref().is_none_or(|g| g.is_match(&target, file)))
            .map(|file| (display_relative(&file), file))
            .collect()
    } else {
        // Opened again below, checked there to be a regular file.
        vec![(display_relative(&target), target.clone())]
    };
    files.sort();

    let mut searcher = SearcherBuilder::new()
        .line_number(true)
        .binary_detection(BinaryDetection::quit(0))
        .build();
    let mut matches = Vec::new();
    let mut truncated = false;
    for (display, file) in files {
        // A file named explicitly must be readable; a file found by the walk that cannot be
        // opened (gone, swapped, unreadable) is skipped.
        let opened = ws.open_file(args.tool, &file, &display);
        let opened = if is_dir { opened.ok() } else { Some(opened?) };
        let Some(opened) = opened else { continue };
        // One more than asked for, to know whether there were more.
        let room = max_results.saturating_sub(matches.len()).saturating_add(1);
        let mut sink = Collect {
            hits: Vec::new(),
            binary: false,
            room,
        };
        if searcher.search_file(&matcher, &opened, &mut sink).is_err() || sink.binary {
            continue; // unreadable or binary: skipped
        }
        for (line, text) in sink.hits {
            if matches.len() == max_results {
                truncated = true;
                break;
            }
            matches.push(json!({"path": display, "line": line, "text": text}));
        }
        if truncated {
            break;
        }
    }
    Ok(json!({"matches": matches, "truncated": truncated}))
}

/// Collects one file's matching lines, noting binary data.
struct Collect {
    hits: Vec<(u64, String)>,
    binary: bool,
    room: usize,
}

impl Sink for Collect {
    type Error = std::io::Error;

    fn matched(&mut self, _searcher: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, Self::Error> {
        let bytes = mat.bytes();
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes);
        let text: String = if text.chars().count() > MAX_TEXT_CHARS {
            text.chars().take(MAX_TEXT_CHARS).collect()
        } else {
            text.into_owned()
        };
        self.hits.push((mat.line_number().unwrap_or(0), text));
        Ok(self.hits.len() < self.room)
    }

    fn binary_data(&mut self, _searcher: &Searcher, _offset: u64) -> Result<bool, Self::Error> {
        self.binary = true;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "grep",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    fn setup() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files: [(&str, &[u8]); 7] = [
            ("b.rs", b"fn main() {}\nlet Needle = 1;\r\n"),
            ("a/z.rs", b"needle\nneedle again\n"),
            ("a/y.txt", b"a needle in text\n"),
            ("bin.dat", b"needle\0binary"),
            ("ignored/n.rs", b"needle\n"),
            (".hidden/n.rs", b"needle\n"),
            (".gitignore", b"ignored/\n"),
        ];
        for (f, content) in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let ws = Workspace::new(root).unwrap();
        (dir, ws)
    }

    fn hits(v: &Value) -> Vec<(String, u64)> {
        v["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["path"].as_str().unwrap().to_string(),
                    m["line"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn finds_in_order_skipping_ignored_hidden_and_binary() {
        let (_d, ws) = setup();
        let out = call(&ws, json!({"pattern": "needle"})).unwrap();
        assert_eq!(
            hits(&out),
            [
                ("a/y.txt".into(), 1),
                ("a/z.rs".into(), 1),
                ("a/z.rs".into(), 2)
            ]
        );
        assert_eq!(out["matches"][1]["text"], "needle");
        assert_eq!(out["truncated"], false);
    }

    #[test]
    fn options() {
        let (_d, ws) = setup();
        let out = call(
            &ws,
            json!({"pattern": "needle", "case_insensitive": true, "glob": "*.rs"}),
        )
        .unwrap();
        assert_eq!(
            hits(&out),
            [
                ("a/z.rs".into(), 1),
                ("a/z.rs".into(), 2),
                ("b.rs".into(), 2)
            ]
        );
        assert_eq!(out["matches"][2]["text"], "let Needle = 1;");
        let out = call(
            &ws,
            json!({"pattern": "needle", "path": "a", "max_results": 2}),
        )
        .unwrap();
        assert_eq!(hits(&out).len(), 2);
        assert_eq!(out["truncated"], true);
        let out = call(
            &ws,
            json!({"pattern": "needle", "path": "a/z.rs", "max_results": 2}),
        )
        .unwrap();
        assert_eq!(out["truncated"], false);
        let out = call(&ws, json!({"pattern": "needle", "path": "ignored/n.rs"})).unwrap();
        assert_eq!(hits(&out), [("ignored/n.rs".into(), 1)]);
        let out = call(&ws, json!({"pattern": "needle", "glob": ".hidden/*"})).unwrap();
        assert_eq!(hits(&out), [(".hidden/n.rs".into(), 1)]);
    }

    #[test]
    fn long_lines_are_cut() {
        let (d, ws) = setup();
        std::fs::write(d.path().join("long.txt"), format!("{}\n", "é".repeat(2000))).unwrap();
        let out = call(&ws, json!({"pattern": "é", "path": "long.txt"})).unwrap();
        assert_eq!(
            out["matches"][0]["text"].as_str().unwrap().chars().count(),
            MAX_TEXT_CHARS
        );
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
        let err = call(&ws, json!({"pattern": "x", "path": "fifo"})).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A walk skips it.
        assert_eq!(
            call(&ws, json!({"pattern": "needle"})).unwrap()["matches"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn errors() {
        let (_d, ws) = setup();
        assert_eq!(
            call(&ws, json!({"pattern": "("})).unwrap_err().code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"pattern": "a\\nb"})).unwrap_err().code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"pattern": "x", "glob": "[" }))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"pattern": "x", "path": "missing"}))
                .unwrap_err()
                .code(),
            "ToolFailed"
        );
        assert_eq!(
            call(&ws, json!({"pattern": 1})).unwrap_err().code(),
            "InvalidPayload"
        );
        assert_eq!(
            call(&ws, json!({"pattern": "x", "max_results": 0}))
                .unwrap_err()
                .code(),
            "InvalidPayload"
        );
        assert_eq!(
            call(&ws, json!({"pattern": "x", "case_insensitive": 1}))
                .unwrap_err()
                .code(),
            "InvalidPayload"
        );
    }
}
