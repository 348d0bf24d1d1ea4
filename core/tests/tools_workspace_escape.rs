//! Every path-taking tool refuses paths that leave the workspace, symbolic links included, and
//! accepts absolute paths inside it.

use std::path::Path;

use a3s_code_core::Error;
use a3s_code_core::tools::{ToolContext, Workspace, run_tool};
use serde_json::{Value, json};

struct Fixture {
    _parent: tempfile::TempDir,
    root: std::path::PathBuf,
    sibling: std::path::PathBuf,
    ws: Workspace,
}

/// `parent/ws` is the workspace, `parent/sibling` a directory next to it holding `secret.txt`.
fn fixture() -> Fixture {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("ws");
    let sibling = parent.path().join("sibling");
    std::fs::create_dir_all(root.join("inside")).unwrap();
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("secret.txt"), "secret needle\n").unwrap();
    std::fs::write(root.join("inside/ok.txt"), "fine needle\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(sibling.join("secret.txt"), root.join("file_link")).unwrap();
        std::os::unix::fs::symlink(&sibling, root.join("dir_link")).unwrap();
    }
    let ws = Workspace::new(&root).unwrap();
    Fixture {
        _parent: parent,
        root,
        sibling,
        ws,
    }
}

/// The arguments for each path-taking tool with `path` in the path slot.
fn calls(path: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("read", json!({"path": path})),
        ("write", json!({"path": path, "content": "pwned"})),
        (
            "edit",
            json!({"path": path, "old_string": "secret", "new_string": "pwned"}),
        ),
        ("grep", json!({"pattern": "needle", "path": path})),
        ("glob", json!({"pattern": "*", "path": path})),
        ("ls", json!({"path": path})),
    ]
}

async fn assert_refused(f: &Fixture, path: &str) {
    for (tool, args) in calls(path) {
        let res = run_tool(tool, &args, &f.ws, &ToolContext::new()).await;
        match res {
            Err(Error::PathEscapesWorkspace { path: given, root }) => {
                assert_eq!(given, path, "{tool}");
                assert_eq!(root, f.ws.root(), "{tool}");
            }
            other => panic!("{tool} {path:?}: expected PathEscapesWorkspace, got {other:?}"),
        }
    }
    assert_untouched(&f.sibling);
}

fn assert_untouched(sibling: &Path) {
    assert_eq!(
        std::fs::read_to_string(sibling.join("secret.txt")).unwrap(),
        "secret needle\n"
    );
    let names: Vec<_> = std::fs::read_dir(sibling)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret.txt"]);
}

#[tokio::test]
async fn parent_traversal_is_refused() {
    let f = fixture();
    assert_refused(&f, "../x").await;
    assert_refused(&f, "a/../../x").await;
    assert_refused(&f, "..").await;
    assert_refused(&f, "inside/../../sibling/secret.txt").await;
    assert_refused(&f, "../ws/inside/ok.txt").await;
}

#[tokio::test]
async fn absolute_paths_outside_are_refused() {
    let f = fixture();
    assert_refused(&f, "/etc/passwd").await;
    assert_refused(&f, "/").await;
    assert_refused(&f, f.sibling.to_str().unwrap()).await;
    assert_refused(&f, f.sibling.join("secret.txt").to_str().unwrap()).await;
    assert_refused(&f, &format!("{}/../sibling/secret.txt", f.root.display())).await;
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_pointing_out_are_refused() {
    let f = fixture();
    assert_refused(&f, "file_link").await;
    assert_refused(&f, "dir_link").await;
    assert_refused(&f, "dir_link/secret.txt").await;
    // Writing through a directory link, to a file or a new subdirectory, is refused too.
    assert_refused(&f, "dir_link/new.txt").await;
    assert_refused(&f, "dir_link/sub/new.txt").await;
}

#[cfg(unix)]
#[tokio::test]
async fn links_inside_do_not_leak_out_of_walks() {
    // A directory walk does not follow links, so grep and glob over the root never see the secret.
    let f = fixture();
    let ctx = ToolContext::new();
    let out = run_tool("grep", &json!({"pattern": "needle"}), &f.ws, &ctx)
        .await
        .unwrap();
    assert_eq!(
        out["matches"],
        json!([{"path": "inside/ok.txt", "line": 1, "text": "fine needle"}])
    );
    let out = run_tool("glob", &json!({"pattern": "**"}), &f.ws, &ctx)
        .await
        .unwrap();
    assert_eq!(out["paths"], json!(["inside/ok.txt"]));
}

#[tokio::test]
async fn absolute_paths_inside_are_accepted() {
    let f = fixture();
    let ctx = ToolContext::new();
    let file = f.root.join("inside/ok.txt");
    let file = file.to_str().unwrap();
    let dir = f.root.join("inside");
    let dir = dir.to_str().unwrap();

    let out = run_tool("read", &json!({"path": file}), &f.ws, &ctx)
        .await
        .unwrap();
    assert_eq!(out["content"], "fine needle\n");
    let out = run_tool(
        "grep",
        &json!({"pattern": "needle", "path": dir}),
        &f.ws,
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(out["matches"][0]["path"], "inside/ok.txt");
    let out = run_tool(
        "glob",
        &json!({"pattern": "*.txt", "path": dir}),
        &f.ws,
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(out["paths"], json!(["inside/ok.txt"]));
    let out = run_tool(
        "ls",
        &json!({"path": f.root.to_str().unwrap()}),
        &f.ws,
        &ctx,
    )
    .await
    .unwrap();
    assert!(
        out["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "inside")
    );
    let out = run_tool(
        "edit",
        &json!({"path": file, "old_string": "fine", "new_string": "good"}),
        &f.ws,
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(out["replacements"], 1);
    let new = f.root.join("inside/new/made.txt");
    let out = run_tool(
        "write",
        &json!({"path": new.to_str().unwrap(), "content": "x"}),
        &f.ws,
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(out["bytes_written"], 1);
    assert_eq!(std::fs::read_to_string(new).unwrap(), "x");
    assert_untouched(&f.sibling);
}
