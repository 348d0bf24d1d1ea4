//! `a3s-code worker --metrics-addr` and `a3s-code stats`: this test process is the session (with
//! its own /metrics), an `a3s-code worker` process runs its tasks, and `a3s-code stats --json`
//! reads all three sources (session and worker endpoints, NATS).

use std::process::{Command, Stdio};
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, SessionOptions, SessionQueueConfig};
use serde_json::{Value, json};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stats(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .arg("stats")
        .args(args)
        .env("A3S_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .expect("run a3s-code stats");
    assert!(out.status.success(), "a3s-code stats failed");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reads_the_session_the_worker_and_the_broker() {
    stats_reads_all_three(false).await;
}

/// The session's tasks wait in its tenant's pool (a `'*'` worker of tenant `default` serves
/// them): `stats --nats --tenant default` shows the tenant's pool figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reads_a_pooled_sessions_tenant_figures() {
    stats_reads_all_three(true).await;
}

/// `pooled`: a pool worker (`--session-id '*' --tenant default`) serves the session, else a
/// worker attached to it (the broker figures are then the session's own consumers').
async fn stats_reads_all_three(pooled: bool) {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
    let session = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(
                SessionOptions::new()
                    .with_queue_config(SessionQueueConfig {
                        lane_handlers: [(
                            SessionLane::Query,
                            LaneHandlerConfig {
                                mode: TaskHandlerMode::External,
                                timeout_ms: 30_000,
                            },
                        )]
                        .into(),
                        ..Default::default()
                    })
                    .with_nats(NatsConfig::new(&url).with_prefix(&prefix))
                    .with_metrics_addr("127.0.0.1:0".parse().unwrap()),
            ),
        )
        .unwrap();
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let worker_addr = format!("127.0.0.1:{}", test_support::free_port());
    let _worker = Kill(
        Command::new(env!("CARGO_BIN_EXE_a3s-code"))
            .args(["worker", "--nats", &url, "--prefix", &prefix])
            .args(if pooled {
                ["--session-id", "*", "--tenant", "default"]
            } else {
                ["--session-id", session.id(), "--tenant", "default"]
            })
            .args(["--worker-id", "w-stats"])
            .args(["--lanes", "query", "--metrics-addr", &worker_addr])
            .arg("--workspace")
            .arg(dir.path())
            .env("A3S_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a3s-code worker"),
    );
    for _ in 0..5 {
        let out = session
            .tool("read", json!({ "path": "a.txt" }))
            .await
            .unwrap();
        assert!(out.success, "{:?}", out.error);
    }
    // The worker is healthy (connected); its counters catch up with the results it reported.
    let worker_url = format!("http://{worker_addr}");
    assert_eq!(
        test_support::http_get(&format!("{worker_url}/healthz"))
            .await
            .0,
        200
    );
    let session_addr = session.metrics_addr().unwrap().to_string();
    let mut view = Value::Null;
    for _ in 0..50 {
        let out = stats(&[
            "--once",
            "--json",
            "--interval-ms",
            "50",
            "--metrics",
            &session_addr,
            "--metrics",
            &worker_url,
            "--nats",
            &url,
            "--prefix",
            &prefix,
            "--session-id",
            session.id(),
            "--tenant",
            "default",
        ]);
        view = serde_json::from_str(out.trim()).unwrap();
        if view["workers"][0]["succeeded"] == 5 {
            break;
        }
    }
    let lanes = view["sessions"][0]["lanes"].as_array().unwrap();
    let query = lanes.iter().find(|l| l["lane"] == "query").unwrap();
    assert_eq!(view["sessions"][0]["session_id"], session.id());
    assert_eq!(query["completed"], 5, "{view:#}");
    assert_eq!(query["mode"], "external");
    assert!(query["p99_s"].as_f64().unwrap() > 0.0);
    assert!(query["rate_per_s"].is_number());
    let worker = &view["workers"][0];
    assert_eq!(worker["worker"], "w-stats");
    assert_eq!(worker["succeeded"], 5, "{view:#}");
    assert_eq!(worker["connected"], true);
    let broker = &view["broker"];
    assert_eq!(broker["found"], true);
    assert_eq!(broker["tenant"], "default");
    assert_eq!(broker["own_consumers"], !pooled, "{view:#}");
    assert_eq!(broker["per_lane"]["query"]["delivered_count"], 5);
    assert_eq!(broker["per_lane"]["query"]["ack_pending_count"], 0);
    assert_eq!(view["errors"].as_array().unwrap().len(), 0);

    // The text view, once.
    let text = stats(&["--once", "--interval-ms", "50", "--metrics", &session_addr]);
    assert!(
        text.contains(&format!("session {}  (open, broker ready", session.id())),
        "{text}"
    );
    assert!(text.contains("  query    external"), "{text}");

    session.close().await;
}
