//! `a3s-code run` end to end, against the scripted model server (nothing leaves 127.0.0.1).

use serde_json::json;
use test_support::model_server::{ModelServer, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shows_tool_calls_then_the_answer_and_usage() {
    let server = ModelServer::start([
        Reply::tool_call("read", json!({"path": "hello.txt"})).with_text("Reading."),
        Reply::text("It says hello."),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    let config = dir.path().join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            "default_model = \"openai/m\"\nproviders {{\n  name = \"openai\"\n  api_key = \"k\"\n  base_url = \"{}\"\n}}\n",
            server.openai_base_url()
        ),
    )
    .unwrap();
    let (workspace, bin) = (dir.path().to_owned(), env!("CARGO_BIN_EXE_a3s-code"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .arg("run")
            .arg("What does hello.txt say?")
            .arg("--config")
            .arg(&config)
            .arg("--workspace")
            .arg(&workspace)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "Reading.\nIt says hello.\n");
    assert!(
        stderr.contains("→ query    read path=hello.txt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("✓ query    read path=hello.txt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 model call(s), 1 tool call(s), tokens: 20 in + 10 out = 30"),
        "{stderr}"
    );
    assert_eq!(server.requests().len(), 2);
}
