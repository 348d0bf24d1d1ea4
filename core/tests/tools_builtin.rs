//! The built-in tools through `run_tool` and `execute_builtin`: happy paths, error paths and the
//! task-result mapping, `bash` timeouts and cancellation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a3s_code_core::queue::SessionLane;
use a3s_code_core::tools::{
    BUILTIN_TOOLS, ToolContext, Workspace, execute_builtin, execute_builtin_with, is_builtin,
    run_tool,
};
use a3s_code_core::{Error, ExternalTask, ExternalTaskResult};
use serde_json::{Value, json};

/// A workspace that allows `bash` (off by default).
fn workspace() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path()).unwrap().with_bash(true);
    (dir, ws)
}

fn put(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

async fn run(name: &str, args: Value, ws: &Workspace) -> a3s_code_core::Result<Value> {
    run_tool(name, &args, ws, &ToolContext::new()).await
}

fn task(tool: &str, payload: Value) -> ExternalTask {
    ExternalTask::new("t1", "s1", SessionLane::Execute, tool, payload, 30_000)
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Workspace>();
    assert_send_sync::<ToolContext>();
    assert!(BUILTIN_TOOLS.iter().all(|t| is_builtin(t)));
}

#[tokio::test]
async fn read_with_offset_and_limit() {
    let (dir, ws) = workspace();
    let lines: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    put(dir.path(), "src/f.txt", &lines);
    let out = run(
        "read",
        json!({"path": "src/f.txt", "offset": 3, "limit": 2, "extra": "ignored"}),
        &ws,
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({"content": "line 3\nline 4\n", "total_lines": 10, "start_line": 3, "end_line": 4, "truncated": true})
    );
    let out = run("read", json!({"path": "src/f.txt", "offset": 9}), &ws)
        .await
        .unwrap();
    assert_eq!(out["content"], "line 9\nline 10\n");
    assert_eq!(out["truncated"], false);
    let out = run("read", json!({"path": "src/f.txt"}), &ws)
        .await
        .unwrap();
    assert_eq!(out["content"], lines.as_str());
}

#[tokio::test]
async fn read_errors() {
    let (dir, ws) = workspace();
    std::fs::write(dir.path().join("bin"), b"\x7fELF\0\0\x01").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    for (args, code) in [
        (json!({"path": "missing"}), "ToolFailed"),
        (json!({"path": "bin"}), "ToolFailed"),
        (json!({"path": "d"}), "ToolFailed"),
        (json!({"path": 5}), "InvalidPayload"),
        (json!({"path": "bin", "offset": -3}), "InvalidPayload"),
        (json!({}), "InvalidPayload"),
        (json!(["path"]), "InvalidPayload"),
    ] {
        let err = run("read", args.clone(), &ws).await.unwrap_err();
        assert_eq!(err.code(), code, "{args}: {err}");
    }
    let err = run("read", json!({"path": 5}), &ws).await.unwrap_err();
    assert!(err.to_string().contains("`path`"), "{err}");
}

#[tokio::test]
async fn write_then_unchanged() {
    let (dir, ws) = workspace();
    let args = json!({"path": "new/dir/f.txt", "content": "abc"});
    assert_eq!(
        run("write", args.clone(), &ws).await.unwrap(),
        json!({"bytes_written": 3})
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new/dir/f.txt")).unwrap(),
        "abc"
    );
    assert_eq!(
        run("write", args, &ws).await.unwrap(),
        json!({"bytes_written": 3, "unchanged": true})
    );
    let err = run("write", json!({"path": "x"}), &ws).await.unwrap_err();
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
}

#[tokio::test]
async fn edit_uniqueness_and_already_applied() {
    let (dir, ws) = workspace();
    put(dir.path(), "f.rs", "fn a() {}\nfn a() {}\nfn b() {}\n");
    let err = run(
        "edit",
        json!({"path": "f.rs", "old_string": "fn a", "new_string": "fn c"}),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::ToolFailed { tool, reason } if tool == "edit" && reason.contains("2 times")),
        "{err}"
    );
    let err = run(
        "edit",
        json!({"path": "f.rs", "old_string": "fn z", "new_string": "fn y"}),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    let args = json!({"path": "f.rs", "old_string": "fn b", "new_string": "fn d"});
    assert_eq!(
        run("edit", args.clone(), &ws).await.unwrap(),
        json!({"replacements": 1})
    );
    assert_eq!(
        run("edit", args, &ws).await.unwrap(),
        json!({"replacements": 0, "already_applied": true})
    );
    let all =
        json!({"path": "f.rs", "old_string": "fn a", "new_string": "fn e", "replace_all": true});
    assert_eq!(
        run("edit", all, &ws).await.unwrap(),
        json!({"replacements": 2})
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f.rs")).unwrap(),
        "fn e() {}\nfn e() {}\nfn d() {}\n"
    );

    let err = run(
        "edit",
        json!({"path": "f.rs", "old_string": "", "new_string": "x"}),
        &ws,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "InvalidPayload");
}

#[tokio::test]
async fn grep_honours_gitignore_without_git() {
    let (dir, ws) = workspace();
    assert!(!dir.path().join(".git").exists());
    put(dir.path(), ".gitignore", "build/\n*.log\n");
    put(
        dir.path(),
        "src/lib.rs",
        "// TODO one\nfn x() {}\n// todo two\n",
    );
    put(dir.path(), "README.md", "TODO docs\n");
    put(dir.path(), "build/out.rs", "TODO generated\n");
    put(dir.path(), "debug.log", "TODO log\n");
    put(dir.path(), ".cache/c.rs", "TODO hidden\n");
    put(dir.path(), "sub/.ignore", "skip.rs\n");
    put(dir.path(), "sub/skip.rs", "TODO skipped\n");

    let out = run("grep", json!({"pattern": "TODO"}), &ws).await.unwrap();
    assert_eq!(
        out,
        json!({"matches": [
            {"path": "README.md", "line": 1, "text": "TODO docs"},
            {"path": "src/lib.rs", "line": 1, "text": "// TODO one"},
        ], "truncated": false})
    );
    let out = run(
        "grep",
        json!({"pattern": "todo", "case_insensitive": true, "glob": "**/*.rs"}),
        &ws,
    )
    .await
    .unwrap();
    let lines: Vec<u64> = out["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 3]);
    let out = run("grep", json!({"pattern": "TODO", "glob": "*.md"}), &ws)
        .await
        .unwrap();
    assert_eq!(out["matches"].as_array().unwrap().len(), 1);
    let out = run(
        "grep",
        json!({"pattern": "TODO", "path": "src", "max_results": 1}),
        &ws,
    )
    .await
    .unwrap();
    assert_eq!(out["truncated"], false);
    let out = run(
        "grep",
        json!({"pattern": "(?i)todo", "max_results": 1}),
        &ws,
    )
    .await
    .unwrap();
    assert_eq!(out["truncated"], true);
    assert_eq!(out["matches"][0]["path"], "README.md");

    for (args, code) in [
        (json!({"pattern": "(unclosed"}), "ToolFailed"),
        (json!({"pattern": "x", "glob": "{a"}), "ToolFailed"),
        (json!({"pattern": "x", "path": "nope"}), "ToolFailed"),
        (json!({"pattern": ["x"]}), "InvalidPayload"),
        (
            json!({"pattern": "x", "max_results": "5"}),
            "InvalidPayload",
        ),
    ] {
        assert_eq!(
            run("grep", args.clone(), &ws).await.unwrap_err().code(),
            code,
            "{args}"
        );
    }
}

#[tokio::test]
async fn glob_filters_and_sorts() {
    let (dir, ws) = workspace();
    put(dir.path(), ".gitignore", "target\n");
    for f in ["z.rs", "a/b.rs", "a/c.txt", "a/d/e.rs", "target/t.rs"] {
        put(dir.path(), f, "");
    }
    let out = run("glob", json!({"pattern": "**/*.rs"}), &ws)
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"paths": ["a/b.rs", "a/d/e.rs", "z.rs"], "truncated": false})
    );
    let out = run("glob", json!({"pattern": "*.rs", "path": "a"}), &ws)
        .await
        .unwrap();
    assert_eq!(out["paths"], json!(["a/b.rs", "a/d/e.rs"]));
    let out = run("glob", json!({"pattern": "a/*"}), &ws).await.unwrap();
    assert_eq!(out["paths"], json!(["a/b.rs", "a/c.txt"]));
    assert_eq!(
        run("glob", json!({"pattern": "[z"}), &ws)
            .await
            .unwrap_err()
            .code(),
        "ToolFailed"
    );
    assert_eq!(
        run("glob", json!({"pattern": "*", "path": "z.rs"}), &ws)
            .await
            .unwrap_err()
            .code(),
        "ToolFailed"
    );
}

#[tokio::test]
async fn ls_lists_and_refuses_files() {
    let (dir, ws) = workspace();
    put(dir.path(), "b/x", "12345");
    put(dir.path(), "a.txt", "hi");
    let out = run("ls", json!({}), &ws).await.unwrap();
    assert_eq!(
        out,
        json!({"entries": [
            {"name": "a.txt", "kind": "file", "size": 2},
            {"name": "b", "kind": "dir", "size": 0},
        ]})
    );
    let out = run("ls", json!({"path": "b"}), &ws).await.unwrap();
    assert_eq!(
        out["entries"][0],
        json!({"name": "x", "kind": "file", "size": 5})
    );
    let err = run("ls", json!({"path": "a.txt"}), &ws).await.unwrap_err();
    assert!(
        matches!(&err, Error::ToolFailed { reason, .. } if reason.contains("not a directory")),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_tool() {
    let (_dir, ws) = workspace();
    let err = run("rm", json!({}), &ws).await.unwrap_err();
    assert!(matches!(&err, Error::UnknownTool { name } if name == "rm"));
}

#[tokio::test]
async fn execute_builtin_maps_results_and_errors() {
    let (dir, ws) = workspace();
    put(dir.path(), "f.txt", "hello\n");

    let ok = execute_builtin(&task("read", json!({"path": "f.txt"})), &ws).await;
    assert!(ok.success && ok.error.is_none());
    assert_eq!(ok.result["content"], "hello\n");

    for (tool, payload, code) in [
        ("read", json!({"path": "nope"}), "ToolFailed"),
        ("read", json!({"path": "../x"}), "PathEscapesWorkspace"),
        ("read", json!("f.txt"), "InvalidPayload"),
        ("deploy", json!({}), "UnknownTool"),
    ] {
        let res = execute_builtin(&task(tool, payload), &ws).await;
        assert!(!res.success, "{tool}");
        assert_eq!(res.result, json!({"error_code": code}));
        assert!(res.error.as_deref().is_some_and(|e| !e.is_empty()));
    }

    // Tasks from elsewhere run no commands unless the workspace allows bash.
    let default = Workspace::new(dir.path()).unwrap();
    let res = execute_builtin(&task("bash", json!({"command": "touch ran"})), &default).await;
    assert!(!res.success);
    assert_eq!(res.result, json!({"error_code": "ToolFailed"}));
    assert!(res.error.unwrap().contains("bash is disabled"));
    assert!(!dir.path().join("ran").exists());

    let res = execute_builtin(&task("bash", json!({"command": "echo hi"})), &ws).await;
    assert_eq!(
        res,
        ExternalTaskResult::ok(
            json!({"stdout": "hi\n", "stderr": "", "exit_code": 0, "timed_out": false, "truncated": false})
        )
    );
    let res = execute_builtin(
        &task("bash", json!({"command": "echo bad >&2; exit 2"})),
        &ws,
    )
    .await;
    assert!(!res.success);
    assert_eq!(res.result["exit_code"], 2);
    assert_eq!(res.result["stderr"], "bad\n");
    assert!(res.error.unwrap().contains("code 2"));

    let res = execute_builtin(
        &task("bash", json!({"command": "true"})),
        &ws.clone().with_bash(false),
    )
    .await;
    assert!(!res.success);
    assert_eq!(res.result["error_code"], "ToolFailed");
    assert!(res.error.unwrap().contains("--allow-bash"));

    let expired = ExternalTask::new(
        "t2",
        "s1",
        SessionLane::Execute,
        "bash",
        json!({"command": "touch ran"}),
        0,
    );
    let res = execute_builtin(&expired, &ws).await;
    assert!(!res.success);
    assert_eq!(
        res.error.as_deref(),
        Some("task timed out before execution")
    );
    assert!(!dir.path().join("ran").exists());
}

#[tokio::test]
async fn bash_exit_codes_and_output_cap() {
    let (_dir, ws) = workspace();
    for code in [0, 1, 42, 255] {
        let out = run("bash", json!({"command": format!("exit {code}")}), &ws)
            .await
            .unwrap();
        assert_eq!(out["exit_code"], code);
    }
    let ws = ws.with_max_output_bytes(1000);
    let out = run(
        "bash",
        json!({"command": "i=0; while [ $i -lt 5000 ]; do echo 0123456789; i=$((i+1)); done"}),
        &ws,
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(out["truncated"], true);
    assert_eq!(out["exit_code"], 0);
}

#[tokio::test]
async fn bash_streams_to_the_sink() {
    let (_dir, ws) = workspace();
    let chunks: Arc<Mutex<String>> = Arc::default();
    let seen = Arc::clone(&chunks);
    let ctx = ToolContext::new().with_output(Arc::new(move |stream: &str, chunk: &str| {
        seen.lock().unwrap().push_str(&format!("{stream}:{chunk}"));
    }));
    let res = execute_builtin_with(&task("bash", json!({"command": "echo one"})), &ws, &ctx).await;
    assert!(res.success);
    assert_eq!(*chunks.lock().unwrap(), "stdout:one\n");
}

#[tokio::test]
async fn bash_timeout_kills_quickly() {
    let (_dir, ws) = workspace();
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        run(
            "bash",
            json!({"command": "echo started; sleep 30", "timeout_ms": 300}),
            &ws,
        ),
    )
    .await
    .expect("bash must return long before sleep 30 ends")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["exit_code"], Value::Null);
    assert_eq!(out["stdout"], "started\n");

    // The task deadline applies too.
    let short = ExternalTask::new(
        "t3",
        "s1",
        SessionLane::Execute,
        "bash",
        json!({"command": "sleep 30"}),
        300,
    );
    let res = tokio::time::timeout(Duration::from_secs(10), execute_builtin(&short, &ws))
        .await
        .unwrap();
    assert!(!res.success);
    assert_eq!(res.result["timed_out"], true);
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test]
async fn dropping_bash_kills_the_process_group() {
    let (dir, ws) = workspace();
    // The background `sleep` is a grandchild: only a process-group kill reaches it.
    let command = "sleep 30 & echo $! > bg.pid; echo $$ > sh.pid; wait";
    let handle = tokio::spawn({
        let ws = ws.clone();
        async move { run("bash", json!({"command": command}), &ws).await }
    });
    let read_pid = |name: &str| -> Option<i32> {
        std::fs::read_to_string(dir.path().join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut pids = None;
    for _ in 0..500 {
        if let (Some(bg), Some(sh)) = (read_pid("bg.pid"), read_pid("sh.pid")) {
            pids = Some((bg, sh));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (bg, sh) = pids.expect("the command wrote its pids");
    assert!(!process_gone(bg) && !process_gone(sh));

    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());

    let mut gone = false;
    for _ in 0..250 {
        if process_gone(bg) && process_gone(sh) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone,
        "processes {bg} and {sh} survived the cancelled bash call"
    );
}

#[tokio::test]
async fn garbage_arguments_never_panic() {
    let (dir, ws) = workspace();
    put(dir.path(), "f.txt", "some text\n");
    let values = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("\u{0}"),
        json!(".."),
        json!("/"),
        json!("["),
        json!("("),
        json!("f.txt"),
        json!("\u{10FFFF}\u{FEFF}"),
        json!([]),
        json!({"nested": 1}),
    ];
    let keys = [
        "path",
        "content",
        "offset",
        "limit",
        "old_string",
        "new_string",
        "replace_all",
        "pattern",
        "glob",
        "case_insensitive",
        "max_results",
        "command",
        "timeout_ms",
    ];
    let ctx =
        ToolContext::new().with_deadline(tokio::time::Instant::now() + Duration::from_secs(20));
    for tool in BUILTIN_TOOLS {
        for key in keys {
            for value in &values {
                let mut args = json!({"path": "f.txt", "pattern": "x", "command": "true", "content": "c",
                    "old_string": "some", "new_string": "some"});
                args[key] = value.clone();
                // Any outcome is fine; the call must return.
                let _ = run_tool(tool, &args, &ws, &ctx).await;
            }
        }
        for args in values.iter() {
            let err = run_tool(tool, args, &ws, &ctx).await;
            if !args.is_object() {
                assert_eq!(err.unwrap_err().code(), "InvalidPayload");
            }
        }
    }
}
