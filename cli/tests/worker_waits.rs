//! Workers deployed before their sessions (the usual order on Kubernetes or systemd) wait for
//! work instead of exiting: `/healthz` stays 200 and says `waiting`, the worker serves as soon as
//! tasks exist, and it never exits for lack of them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use serde_json::json;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(
    url: &str,
    prefix: &str,
    session: &str,
    metrics: u16,
    workspace: &std::path::Path,
    extra: &[&str],
) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .arg("worker")
        .arg("--workspace")
        .arg(workspace)
        .args(["--nats", url, "--prefix", prefix, "--session-id", session])
        .args([
            "--lanes",
            "query",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
        ])
        .args(extra)
        .env("A3S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("a3s-code worker starts");
    Worker(child)
}

fn session(
    url: &str,
    prefix: &str,
    id: &str,
    tenant: Option<&str>,
) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "hello\n").unwrap();
    let cfg = SessionQueueConfig {
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 60_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    let mut opts = SessionOptions::new()
        .with_queue_config(cfg)
        .with_nats(NatsConfig::new(url).with_prefix(prefix))
        .with_session_id(id);
    if let Some(t) = tenant {
        opts = opts.with_tenant(t, 1.0).unwrap();
    }
    let s = Agent::from_config(AgentConfig::default())
        .session(dir.path(), Some(opts))
        .unwrap();
    (s, dir)
}

/// `/healthz` until it answers (the worker is starting), with its status and body.
async fn healthz(port: u16) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..300 {
        if let Ok(r) = test_support::try_http_get(&url).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker's /healthz never answered")
}

/// Waits until `/healthz` says `state` (bounded).
async fn healthz_says(port: u16, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = healthz(port).await;
        assert_eq!(code, 200, "{body}");
        if body.contains(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {body:?}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_session_workers_started_before_any_session_wait_then_serve() {
    // A fresh server: no stream of this prefix exists, not even from another test.
    let server = test_support::NatsServer::start();
    let url = server.url();
    let prefix = test_support::unique_prefix();
    let (pool_port, own_port) = (test_support::free_port(), test_support::free_port());
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("f.txt"), "hello\n").unwrap();
    let mut pool = worker(
        &url,
        &prefix,
        "*",
        pool_port,
        workspace.path(),
        &["--tenant", "acme"],
    );
    let sid = "waiting-session-1";
    let mut own = worker(&url, &prefix, sid, own_port, workspace.path(), &[]);

    // Both wait, healthy, and say so.
    healthz_says(pool_port, "waiting").await;
    healthz_says(own_port, "waiting").await;
    let (_, scrape) =
        test_support::http_get(&format!("http://127.0.0.1:{pool_port}/metrics")).await;
    assert_eq!(
        test_support::metric(&scrape, "a3s_worker_state", &[("state", "waiting")]),
        Some(1.0),
        "{scrape}"
    );

    // A session of the pool worker's tenant: served.
    let (acme, _d1) = session(&url, &prefix, "acme-session-1", Some("acme"));
    acme.broker_ready(Duration::from_secs(10)).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        acme.tool("read", json!({"path": "f.txt"})),
    )
    .await
    .expect("the pool worker took the task")
    .unwrap();
    assert!(out.success, "{out:?}");
    healthz_says(pool_port, "serving").await;

    // The session the other worker was started for: it attaches and serves it.
    let (mine, _d2) = session(&url, &prefix, sid, None);
    mine.broker_ready(Duration::from_secs(10)).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        mine.tool("read", json!({"path": "f.txt"})),
    )
    .await
    .expect("the session's worker took the task")
    .unwrap();
    assert!(out.success, "{out:?}");
    healthz_says(own_port, "serving").await;

    // Neither exited while waiting.
    assert!(pool.0.try_wait().unwrap().is_none());
    assert!(own.0.try_wait().unwrap().is_none());
    acme.close().await;
    mine.close().await;
}
