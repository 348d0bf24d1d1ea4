//! End to end: this test process is the session; `a3s-code worker` processes on the same NATS
//! server run its tasks. Workers are killed, the server restarts; every task must end exactly once.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use serde_json::json;

struct WorkerProc(Child);

impl WorkerProc {
    fn spawn(
        url: &str,
        prefix: &str,
        session: &str,
        workspace: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
            .args([
                "worker",
                "--nats",
                url,
                "--prefix",
                prefix,
                "--session-id",
                session,
                "--lease-ms",
                "2000",
            ])
            .arg("--workspace")
            .arg(workspace)
            .args(extra)
            .env("A3S_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a3s-code worker");
        Self(child)
    }

    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn session(
    url: &str,
    prefix: &str,
    workspace: &std::path::Path,
    lane: SessionLane,
    timeout_ms: u64,
) -> AgentSession {
    let cfg = SessionQueueConfig {
        execute_max_concurrency: 64,
        query_max_concurrency: 64,
        max_pending: 100_000,
        enable_metrics: true,
        enable_dlq: true,
        lane_handlers: [(
            lane,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms,
            },
        )]
        .into(),
        ..Default::default()
    };
    let nats = NatsConfig::new(url)
        .with_prefix(prefix)
        .with_lease(Duration::from_secs(2));
    Agent::from_config(AgentConfig::default())
        .session(
            workspace,
            Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
        )
        .expect("session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_run_loses_and_doubles_nothing() {
    const TASKS: usize = 10_000;
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let session = session(&url, &prefix, dir.path(), SessionLane::Execute, 120_000);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let mut events = session.subscribe_events();
    let counting = tokio::spawn(async move {
        let mut completed = std::collections::HashMap::<String, u32>::new();
        while let Some(ev) = events.recv().await {
            if let a3s_code_core::queue::QueueEvent::Completed { task_id, .. } = ev {
                *completed.entry(task_id).or_default() += 1;
            }
        }
        (completed, events.lagged())
    });

    let spawn = || {
        WorkerProc::spawn(
            &url,
            &prefix,
            session.id(),
            dir.path(),
            &["--allow-bash", "--concurrency", "16"],
        )
    };
    // One worker first: while it is the only one it certainly holds running tasks.
    let mut first = spawn();

    let mut handles = Vec::new();
    for i in 0..TASKS {
        let h = session
            .submit(
                SessionLane::Execute,
                "bash",
                json!({"command": format!("sleep 0.01; echo {i}")}),
            )
            .await
            .unwrap();
        handles.push((i, h));
    }
    // Kill it once the run is under way, mid-task; two others take over.
    loop {
        let m = session.queue_metrics().await.unwrap();
        if m.total_processed >= (TASKS / 10) as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    let _others = [spawn(), spawn()];

    common::expect_own_echoes(handles).await;
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(
        (m.total_processed, m.total_failed, m.total_timed_out),
        (TASKS as u64, 0, 0)
    );
    assert!(
        m.total_retried >= 1,
        "the killed worker's tasks were delivered again: {m:?}"
    );
    session.close().await;
    let (completed, lagged) = counting.await.unwrap();
    assert_eq!(lagged, 0, "the event subscriber kept up");
    assert_eq!(completed.len(), TASKS, "every task completed");
    assert!(
        completed.values().all(|&n| n == 1),
        "no task completed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_nothing() {
    const TASKS: usize = 1_000;
    let mut server = test_support::NatsServer::start();
    let url = server.url();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "hello\n").unwrap();
    let session = session(&url, &prefix, dir.path(), SessionLane::Query, 120_000);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let _workers: Vec<WorkerProc> = (0..3)
        .map(|_| {
            WorkerProc::spawn(
                &url,
                &prefix,
                session.id(),
                dir.path(),
                &["--concurrency", "8"],
            )
        })
        .collect();

    let mut handles = Vec::new();
    for _ in 0..TASKS / 2 {
        handles.push(
            session
                .submit(SessionLane::Query, "read", json!({"path": "f.txt"}))
                .await
                .unwrap(),
        );
    }
    loop {
        if session.queue_metrics().await.unwrap().total_processed >= (TASKS / 8) as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    // Submitted while the server is down: queued in the session, published when it is back.
    for _ in TASKS / 2..TASKS {
        handles.push(
            session
                .submit(SessionLane::Query, "read", json!({"path": "f.txt"}))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();

    for h in handles {
        let out = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("no task is lost")
            .unwrap();
        assert!(out.success, "{out:?}");
        assert_eq!(out.result["content"], "hello\n");
    }
    let m = session.queue_metrics().await.unwrap();
    assert_eq!((m.total_processed, m.total_failed), (TASKS as u64, 0));
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_bash_on_a_worker() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let session = session(&url, &prefix, dir.path(), SessionLane::Execute, 120_000);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let _worker = WorkerProc::spawn(&url, &prefix, session.id(), dir.path(), &["--allow-bash"]);
    let mut events = session.subscribe_events();
    let h = session
        .submit(
            SessionLane::Execute,
            "bash",
            json!({"command": "echo $$ > pid; echo started; sleep 60"}),
        )
        .await
        .unwrap();
    // Output streams back while it runs.
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.recv().await {
            if let a3s_code_core::queue::QueueEvent::Output { chunk, .. } = ev
                && chunk.contains("started")
            {
                return;
            }
        }
    })
    .await;
    assert!(
        started.is_ok(),
        "the bash output was streamed to the session"
    );
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    h.cancel().await.unwrap();
    assert_eq!(h.await.unwrap_err().code(), "TaskCancelled");
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(gone, "the bash child {pid} was killed");
    session.close().await;
}

#[test]
fn the_spec_deployment_step_reads_session_id_and_nats_url_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .args(["worker", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("SESSION_ID") && help.contains("A3S_NATS_URL"),
        "{help}"
    );
}

/// `pool`: the workers serve every tenant's pool (`--session-id '*'`), else they attach to the
/// session. A session's lane is served either by its attached workers (sticky once one attached)
/// or by the pool, never by both: each kind routes by labels on its own.
async fn tasks_that_require_a_region_run_only_on_workers_of_that_region(pool: bool) {
    use a3s_code_core::queue::SubmitOptions;
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let session = session(&url, &prefix, dir.path(), SessionLane::Query, 60_000);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let regions = ["eu-west", "us-east"];
    let mut workspaces = Vec::new();
    let mut workers = Vec::new();
    let target = if pool {
        "*".to_owned()
    } else {
        session.id().to_owned()
    };
    for region in regions {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("region.txt"), region).unwrap();
        let label = format!("region={region}");
        workers.push(WorkerProc::spawn(
            &url,
            &prefix,
            &target,
            ws.path(),
            &["--labels", &label],
        ));
        workspaces.push(ws);
    }
    let mut handles = Vec::new();
    for i in 0..30 {
        let region = regions[i % 2];
        let opts = SubmitOptions::new().with_label("region", region);
        let h = session
            .submit_with(
                SessionLane::Query,
                "read",
                json!({"path": "region.txt"}),
                opts,
            )
            .await
            .unwrap();
        handles.push((region, h));
    }
    for (region, h) in handles {
        let out = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("routed")
            .unwrap();
        assert!(out.success, "{out:?}");
        assert_eq!(
            out.result["content"], region,
            "a {region} task ran in {region}"
        );
    }
    // A task without labels runs on any worker.
    let any = tokio::time::timeout(
        Duration::from_secs(60),
        session.tool("read", json!({"path": "region.txt"})),
    )
    .await
    .expect("an unlabelled task ran")
    .unwrap();
    assert!(regions.contains(&any.result["content"].as_str().unwrap()));
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_require_a_region_run_only_on_pool_workers_of_that_region() {
    tasks_that_require_a_region_run_only_on_workers_of_that_region(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_require_a_region_run_only_on_attached_workers_of_that_region() {
    tasks_that_require_a_region_run_only_on_workers_of_that_region(false).await;
}

/// The spec's per-session worker (`docker run -e SESSION_ID=abc123 myapp/worker`) with
/// `A3S_EXIT_WHEN_CLOSED=1` ends with its session: it drains and exits 0 once the session
/// closes; while the session is open it serves. A pool worker refuses the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_one_session_exits_when_the_session_closes() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let session = session(&url, &prefix, dir.path(), SessionLane::Query, 30_000);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_a3s-code"));
    cmd.args(["worker", "--nats", &url, "--prefix", &prefix])
        .arg("--workspace")
        .arg(dir.path())
        .env("SESSION_ID", session.id())
        .env("A3S_EXIT_WHEN_CLOSED", "1")
        .env("A3S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut worker = WorkerProc(cmd.spawn().expect("spawn a3s-code worker"));
    let out = session
        .submit(SessionLane::Query, "read", json!({"path": "a.txt"}))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(out.success, "{out:?}");
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "it serves while the session is open"
    );
    session.close().await;
    let mut status = None;
    for _ in 0..200 {
        status = worker.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the worker exited within 10 s of the session closing");
    assert!(status.success(), "{status:?}");

    let pool = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .args([
            "worker",
            "--nats",
            &url,
            "--session-id",
            "*",
            "--exit-when-closed",
        ])
        .output()
        .unwrap();
    assert!(!pool.status.success());
    let err = String::from_utf8_lossy(&pool.stderr);
    assert!(
        err.contains("--exit-when-closed needs one --session-id"),
        "{err}"
    );
}
