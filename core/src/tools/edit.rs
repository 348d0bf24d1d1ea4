//! `edit {path, old_string, new_string, replace_all?}` → `{replacements}`.
//!
//! Replaces `old_string` with `new_string` in a UTF-8 text file. Without `replace_all`,
//! `old_string` must occur exactly once; with it, every (non-overlapping) occurrence is
//! replaced. When `old_string` is absent but `new_string` is present, the edit is taken as
//! already applied (a redelivered task) and the result is `{replacements: 0, already_applied:
//! true}` without touching the file. The same holds when `new_string` contains `old_string`
//! and every occurrence of `old_string` in the file sits inside an occurrence of `new_string`
//! at that same place (editing `x = 1` into `x = 10` twice must not give `x = 100`).
//!
//! The whole file is read into memory, so a file over the workspace's
//! [`max_file_bytes`](super::Workspace::max_file_bytes) (16 MiB by default) is refused. The
//! result replaces the file the way `write` does (a new file renamed over the old one).
//!
//! Errors: an empty `old_string` is [`Error::InvalidPayload`](crate::Error::InvalidPayload);
//! `old_string` not found or found several times, a missing, non-regular, binary or non-UTF-8
//! file are [`Error::ToolFailed`](crate::Error::ToolFailed); a file over `max_file_bytes` is
//! [`Error::FileTooLarge`](crate::Error::FileTooLarge).

use serde_json::{Value, json};

use super::{Args, Workspace, tool_error};
use crate::error::{Error, Result};

pub(super) fn run(args: &Args<'_>, ws: &Workspace) -> Result<Value> {
    let (rel, shown) = args.path(ws, "path", true)?;
    let old = args.string("old_string")?;
    let new = args.string("new_string")?;
    let replace_all = args.flag("replace_all")?;
    if old.is_empty() {
        return Err(Error::invalid_payload(
            "edit: `old_string` must not be empty",
        ));
    }
    let text = ws.read_whole(args.tool, &rel, shown)?;
    let count = text.matches(old).count();
    if count == 0 {
        if !new.is_empty() && text.contains(new) {
            return Ok(json!({"replacements": 0, "already_applied": true}));
        }
        return Err(tool_error(
            args.tool,
            format!("{shown}: old_string not found"),
        ));
    }
    if covered_by_new(&text, old, new) {
        return Ok(json!({"replacements": 0, "already_applied": true}));
    }
    if count > 1 && !replace_all {
        return Err(tool_error(
            args.tool,
            format!(
                "{shown}: old_string found {count} times; add context to make it unique or set replace_all"
            ),
        ));
    }
    let updated = if replace_all {
        text.replace(old, new)
    } else {
        text.replacen(old, new, 1)
    };
    if updated != text {
        ws.replace_file(args.tool, &rel, shown, updated.as_bytes())?;
    }
    Ok(json!({"replacements": count}))
}

/// Whether every occurrence of `old` in `text` lies within an occurrence of `new` (which
/// contains `old`) at the offset where `old` appears in `new`: the edit was already made.
fn covered_by_new(text: &str, old: &str, new: &str) -> bool {
    let offsets: Vec<usize> = new
        .char_indices()
        .map(|(k, _)| k)
        .filter(|&k| new.get(k..).is_some_and(|s| s.starts_with(old)))
        .collect();
    if offsets.is_empty() {
        return false;
    }
    // Every (possibly overlapping) occurrence of `new`.
    let mut new_starts = std::collections::HashSet::new();
    let mut from = 0;
    while let Some(found) = text.get(from..).and_then(|rest| rest.find(new)) {
        let start = from + found;
        new_starts.insert(start);
        from = start
            + text
                .get(start..)
                .and_then(|s| s.chars().next())
                .map_or(1, char::len_utf8);
    }
    !new_starts.is_empty()
        && text.match_indices(old).all(|(pos, _)| {
            offsets.iter().any(|&k| {
                pos.checked_sub(k)
                    .is_some_and(|start| new_starts.contains(&start))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ws: &Workspace, v: Value) -> Result<Value> {
        run(
            &Args {
                tool: "edit",
                map: v.as_object().unwrap(),
            },
            ws,
        )
    }

    fn setup(content: &str) -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), content).unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        (dir, ws)
    }

    fn file(d: &tempfile::TempDir) -> String {
        std::fs::read_to_string(d.path().join("f")).unwrap()
    }

    #[test]
    fn unique_replacement_then_already_applied() {
        let (d, ws) = setup("let x = 1;\nlet y = 2;\n");
        let args = json!({"path": "f", "old_string": "x = 1", "new_string": "x = 10"});
        assert_eq!(call(&ws, args.clone()).unwrap(), json!({"replacements": 1}));
        assert_eq!(file(&d), "let x = 10;\nlet y = 2;\n");
        assert_eq!(
            call(&ws, args).unwrap(),
            json!({"replacements": 0, "already_applied": true})
        );
        assert_eq!(file(&d), "let x = 10;\nlet y = 2;\n");
    }

    #[test]
    fn containing_edits_are_idempotent() {
        let (d, ws) = setup("a\nfoo\nb\n");
        let args = json!({"path": "f", "old_string": "foo\n", "new_string": "foo\nbar\n"});
        assert_eq!(call(&ws, args.clone()).unwrap(), json!({"replacements": 1}));
        assert_eq!(
            call(&ws, args).unwrap(),
            json!({"replacements": 0, "already_applied": true})
        );
        assert_eq!(file(&d), "a\nfoo\nbar\nb\n");
        // An occurrence of old_string outside new_string is still replaced.
        let (d, ws) = setup("ab a");
        let args = json!({"path": "f", "old_string": "a", "new_string": "ab", "replace_all": true});
        assert_eq!(call(&ws, args).unwrap(), json!({"replacements": 2}));
        assert_eq!(file(&d), "abb ab");
        assert!(covered_by_new("xx = 10", "x = 1", "x = 10"));
        assert!(!covered_by_new("x = 1", "x = 1", "x = 10"));
        assert!(!covered_by_new("x", "x", "y"));
    }

    #[test]
    fn non_unique_and_replace_all() {
        let (d, ws) = setup("aa aa aa");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "aa", "new_string": "b"}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "ToolFailed");
        assert!(err.to_string().contains("found 3 times"), "{err}");
        let out = call(
            &ws,
            json!({"path": "f", "old_string": "aa", "new_string": "b", "replace_all": true}),
        );
        assert_eq!(out.unwrap(), json!({"replacements": 3}));
        assert_eq!(file(&d), "b b b");
    }

    #[test]
    fn not_found_and_bad_arguments() {
        let (_d, ws) = setup("hello");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "zz", "new_string": "yy"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "zz", "new_string": ""}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "ToolFailed");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "", "new_string": "x"}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "InvalidPayload");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "h", "new_string": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`new_string`"), "{err}");
        let err = call(
            &ws,
            json!({"path": "f", "old_string": "h", "new_string": "j", "replace_all": "yes"}),
        );
        assert!(err.unwrap_err().to_string().contains("`replace_all`"));
        let err = call(
            &ws,
            json!({"path": "g", "old_string": "h", "new_string": "j"}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "ToolFailed");
    }
}
