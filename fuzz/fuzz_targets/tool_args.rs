//! Every built-in tool's argument decoding, through `tools::run_tool` (what `execute_builtin`
//! calls with a task's `command_type` and `payload`).
//!
//! The input is JSON: `{"tool": "<name>", "args": <anything>}`. Each run gets a fresh temporary
//! directory holding the workspace and, beside it, an `outside/` directory that symbolic links in
//! the workspace point to. `bash` is disabled on the workspace, so its arguments are decoded and
//! checked but no command ever runs.
//!
//! Invariants: no panic; errors are typed; an unknown tool is `UnknownTool`; nothing outside the
//! workspace changes; `bash` never succeeds; results have the documented shape.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use a3s_code_core::tools::{self, ToolContext, Workspace};
use a3s_code_fuzz::assert_typed;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const TOOL_ERRORS: [&str; 3] = ["InvalidPayload", "PathEscapesWorkspace", "ToolFailed"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// Files and symbolic links of the workspace (`ws/`) and beside it (`outside/`).
fn populate(top: &Path) {
    let ws = top.join("ws");
    let outside = top.join("outside");
    std::fs::create_dir_all(ws.join("src/lib")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret\n").unwrap();
    std::fs::write(ws.join("a.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(
        ws.join("src/main.rs"),
        "fn main() {\n    println!(\"hi\");\n}\n",
    )
    .unwrap();
    std::fs::write(ws.join("src/lib/mod.rs"), "pub mod x;\r\n// TODO\n").unwrap();
    std::fs::write(ws.join("empty"), "").unwrap();
    std::fs::write(ws.join("bin"), b"ab\0cd").unwrap();
    std::fs::write(ws.join("latin1"), b"caf\xe9\n").unwrap();
    std::os::unix::fs::symlink("../outside", ws.join("link")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", ws.join("filelink")).unwrap();
    std::os::unix::fs::symlink("src", ws.join("inner")).unwrap();
    std::os::unix::fs::symlink("loop", ws.join("loop")).unwrap();
}

/// Everything under `dir` (not following links): relative path -> file content (or a marker).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(base, &path, out);
            } else if meta.is_file() {
                out.insert(rel, std::fs::read(&path).unwrap());
            } else {
                out.insert(rel, b"<other>".to_vec());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(Value::String(tool)) = input.get("tool") else {
        return;
    };
    let args = input.get("args").cloned().unwrap_or(Value::Null);

    let top = tempfile::tempdir().unwrap();
    populate(top.path());
    let ws = Workspace::new(top.path().join("ws"))
        .unwrap()
        .with_bash(false);
    let outside_before = snapshot(&top.path().join("outside"));

    // The path guard every tool goes through: whatever it accepts is inside the root.
    for key in ["path"] {
        if let Some(Value::String(p)) = args.get(key) {
            match ws.resolve(p) {
                Ok(resolved) => assert!(
                    resolved.starts_with(ws.root()),
                    "{p:?} resolved outside the workspace: {}",
                    resolved.display()
                ),
                Err(err) => assert_typed(&err, &["InvalidPayload", "PathEscapesWorkspace"]),
            }
        }
    }

    let outcome = runtime().block_on(tools::run_tool(tool, &args, &ws, &ToolContext::new()));

    match &outcome {
        Err(err) if !tools::is_builtin(tool) => assert_eq!(err.code(), "UnknownTool"),
        Err(err) => {
            assert_typed(err, &TOOL_ERRORS);
            if !args.is_object() {
                assert_eq!(err.code(), "InvalidPayload");
            }
        }
        Ok(out) => {
            assert!(tools::is_builtin(tool), "{tool:?} ran");
            assert_ne!(tool, "bash", "bash ran with bash disabled");
            check_result(tool, &args, out, &ws);
        }
    }

    assert_eq!(
        snapshot(&top.path().join("outside")),
        outside_before,
        "{tool} changed files outside the workspace"
    );
    let beside: Vec<_> = std::fs::read_dir(top.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside.len(),
        2,
        "{tool} created {beside:?} beside the workspace"
    );
});

/// The documented result shapes (`core/src/tools/mod.rs`).
fn check_result(tool: &str, args: &Value, out: &Value, ws: &Workspace) {
    let int = |key: &str| {
        out[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{tool}: `{key}` is not an integer: {out}"))
    };
    match tool {
        "read" => {
            assert!(out["content"].is_string(), "{out}");
            assert!(out["truncated"].is_boolean(), "{out}");
            let (start, end, total) = (int("start_line"), int("end_line"), int("total_lines"));
            assert!(start >= 1 && end <= total && start <= end + 1, "{out}");
        }
        "write" => {
            let content = args["content"]
                .as_str()
                .expect("write succeeded without content");
            assert_eq!(int("bytes_written"), content.len() as u64);
            let path = ws.resolve(args["path"].as_str().unwrap()).unwrap();
            assert_eq!(std::fs::read(path).unwrap(), content.as_bytes());
        }
        "edit" => {
            assert!(
                out.get("replacements").is_some_and(Value::is_u64)
                    || out.get("already_applied") == Some(&Value::Bool(true)),
                "{out}"
            );
        }
        "grep" => {
            let matches = out["matches"].as_array().expect("grep: matches");
            for m in matches {
                assert!(m["path"].is_string() && m["line"].is_u64() && m["text"].is_string());
            }
            assert!(out["truncated"].is_boolean(), "{out}");
        }
        "glob" => {
            for p in out["paths"].as_array().expect("glob: paths") {
                let p = p.as_str().expect("glob: a path");
                assert!(
                    !p.starts_with('/') && !p.split('/').any(|c| c == ".."),
                    "{p}"
                );
            }
        }
        "ls" => {
            for e in out["entries"].as_array().expect("ls: entries") {
                assert!(e["name"].is_string() && e["kind"].is_string(), "{e}");
            }
        }
        _ => unreachable!("{tool} succeeded"),
    }
}
