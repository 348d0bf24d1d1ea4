//! Network partitions between real hosts: every `a3s-code worker` runs in a network namespace of
//! its own, with its own address on a private LAN (`test_support::netns`); the nats-server
//! listens on the LAN's gateway in the root namespace, where this test process is the session.
//! A worker's cable is pulled mid-task: its lease expires and the task runs again on another
//! worker; when the cable is back, the cut-off worker's late result reaches the session, which
//! refuses and counts it (`total_rejected_completions`) and never applies it.
//!
//! Needs root (network namespaces) and iproute2; without them each test prints why it is skipped
//! and passes, unless `A3S_REQUIRE_NETNS=1`.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use serde_json::{Value, json};
use test_support::netns::{Host, Lan};
use test_support::{NatsServer, metric, try_http_get};

/// The lease of sessions and workers: the shortest allowed, so a cut-off worker's task comes
/// back quickly.
const LEASE_MS: u64 = 1_000;

/// A private LAN, or `None` (with the reason printed) where namespaces cannot be created.
/// `A3S_REQUIRE_NETNS=1` (for CI known to allow namespaces) makes that a failure instead.
fn lan_or_skip(test: &str) -> Option<Lan> {
    match Lan::create() {
        Ok(lan) => Some(lan),
        Err(why) if std::env::var("A3S_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("{test}: network namespaces are unavailable ({why}) but A3S_REQUIRE_NETNS=1")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: network namespaces are unavailable ({why})");
            None
        }
    }
}

/// An `a3s-code worker` process inside a host's namespace, with a workspace whose `who.txt`
/// holds its id. Killed on drop.
struct WorkerProc {
    child: Child,
    _workspace: tempfile::TempDir,
}

impl WorkerProc {
    fn spawn(
        host: &Host,
        url: &str,
        prefix: &str,
        session: &str,
        id: &str,
        extra: &[&str],
    ) -> Self {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("who.txt"), id).unwrap();
        let lease = LEASE_MS.to_string();
        let child = host
            .command(env!("CARGO_BIN_EXE_a3s-code"))
            .args(["worker", "--nats", url, "--prefix", prefix])
            .args(["--session-id", session, "--worker-id", id])
            .args(["--lanes", "execute", "--allow-bash", "--lease-ms", &lease])
            .arg("--workspace")
            .arg(workspace.path())
            .args(extra)
            .env("A3S_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a3s-code worker in a namespace");
        Self {
            child,
            _workspace: workspace,
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn session(url: &str, workspace: &std::path::Path, prefix: &str) -> AgentSession {
    let cfg = SessionQueueConfig {
        execute_max_concurrency: 64,
        max_pending: 100_000,
        enable_metrics: true,
        lane_handlers: [(
            SessionLane::Execute,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 120_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    let nats = NatsConfig::new(url)
        .with_prefix(prefix)
        .with_lease(Duration::from_millis(LEASE_MS));
    Agent::from_config(AgentConfig::default())
        .session(
            workspace,
            Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
        )
        .expect("session")
}

/// Polls `check` every 20 ms until it gives `Some`; panics with `what` after `timeout`.
async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET url`, `None` when it does not answer (yet), or not within 2 s.
async fn get(url: &str) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), try_http_get(url)).await {
        Ok(Ok((200, body))) => Some(body),
        _ => None,
    }
}

/// The server's client id of the worker `id`'s connection (from the monitoring port's `/connz`).
async fn connection_of(monitor: u16, id: &str) -> Option<u64> {
    let body = get(&format!("http://127.0.0.1:{monitor}/connz")).await?;
    let connz: Value = serde_json::from_str(&body).expect("/connz is JSON");
    let name = format!("a3s-code worker {id}");
    connz["connections"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name.as_str())
        .and_then(|c| c["cid"].as_u64())
}

fn rejected(session: &AgentSession) -> f64 {
    metric(
        &session.metrics_text(),
        "a3s_completions_rejected_total",
        &[],
    )
    .unwrap_or(0.0)
}

fn execute_metric(session: &AgentSession, name: &str) -> f64 {
    metric(&session.metrics_text(), name, &[("lane", "execute")]).unwrap_or(0.0)
}

/// Worker 1 claims a task and is cut off while it runs; worker 2 gets it when the lease expires
/// and completes it; then worker 1's link comes back and its result arrives late.
///
/// `server_drops_it`: the server pings every second and closes worker 1's connection while it is
/// cut off, so the late result comes through a reconnection (published again); otherwise the
/// connection survives and the result was waiting in the worker's TCP send buffer.
async fn a_late_result_is_refused(test: &str, server_drops_it: bool) {
    let Some(lan) = lan_or_skip(test) else { return };
    let monitor = test_support::free_port();
    let mut config = format!("http: \"127.0.0.1:{monitor}\"\n");
    if server_drops_it {
        config.push_str("ping_interval: \"1s\"\nping_max: 2\n");
    }
    let server = NatsServer::start_on(lan.gateway(), &config);
    let url = server.url();
    let (host1, host2) = (lan.host("w1"), lan.host("w2"));
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let session = session(&url, dir.path(), &prefix);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let mut events = session.subscribe_events();

    // Only worker 1 runs at first, one task at a time: it claims the task and holds no other
    // pull request.
    let one = ["--concurrency", "1"];
    let _w1 = WorkerProc::spawn(&host1, &url, &prefix, session.id(), "w1", &one);
    let handle = session
        .submit(
            SessionLane::Execute,
            "bash",
            json!({"command": "echo started $(cat who.txt); sleep 2; cat who.txt"}),
        )
        .await
        .unwrap();
    let task_id = handle.task_id().to_owned();
    let running = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = events.recv().await {
            if let QueueEvent::Output { chunk, .. } = ev
                && chunk.contains("started w1")
            {
                return;
            }
        }
    })
    .await;
    assert!(running.is_ok(), "worker 1 started the task");
    let before = connection_of(monitor, "w1").await.expect("w1 is connected");

    // Cut it off mid-task. Its lease expires; worker 2 gets attempt 2 and completes it.
    host1.link_down();
    let _w2 = WorkerProc::spawn(&host2, &url, &prefix, session.id(), "w2", &one);
    let out = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the task came back and completed")
        .unwrap();
    assert!(out.success, "{out:?}");
    assert_eq!(
        out.result["stdout"], "started w2\nw2",
        "worker 2's result was applied"
    );
    assert_eq!(
        execute_metric(&session, "a3s_tasks_redelivered_total"),
        1.0,
        "the applied result came from attempt 2"
    );
    assert_eq!(rejected(&session), 0.0);
    if server_drops_it {
        eventually(
            "the server dropped the cut-off worker",
            Duration::from_secs(20),
            async || connection_of(monitor, "w1").await.is_none().then_some(()),
        )
        .await;
    }

    // The cable is back: worker 1's result arrives late and is refused, and counted.
    host1.link_up();
    eventually(
        "the late result was refused",
        Duration::from_secs(40),
        async || (rejected(&session) >= 1.0).then_some(()),
    )
    .await;
    let after = connection_of(monitor, "w1").await.expect("w1 is connected");
    if server_drops_it {
        assert_ne!(before, after, "worker 1 reconnected");
    } else {
        assert_eq!(before, after, "worker 1 kept its connection");
    }
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(
        (
            m.total_processed,
            m.total_failed,
            m.total_rejected_completions
        ),
        (1, 0, 1),
        "{m:?}"
    );
    assert_eq!(rejected(&session), 1.0);
    assert_eq!(execute_metric(&session, "a3s_tasks_completed_total"), 1.0);

    session.close().await;
    let mut completed = 0;
    while let Some(ev) = events.recv().await {
        if let QueueEvent::Completed { task_id: t, .. } = ev {
            assert_eq!(t, task_id);
            completed += 1;
        }
    }
    assert_eq!(completed, 1, "completed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_workers_late_result_is_refused_and_counted() {
    a_late_result_is_refused(
        "a_cut_off_workers_late_result_is_refused_and_counted",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_sent_again_after_a_reconnection_is_refused_and_counted() {
    a_late_result_is_refused(
        "a_late_result_sent_again_after_a_reconnection_is_refused_and_counted",
        true,
    )
    .await;
}

/// A worker's counter for the execute lane, from its `/metrics`.
fn worker_metric(scrape: &str, id: &str, name: &str) -> u64 {
    metric(scrape, name, &[("worker", id), ("lane", "execute")]).unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_through_a_cut_and_restored_worker_each_complete_once() {
    const TASKS: usize = 2_000;
    let Some(lan) = lan_or_skip("many_tasks_through_a_cut_and_restored_worker_each_complete_once")
    else {
        return;
    };
    let server = NatsServer::start_on(lan.gateway(), "");
    let url = server.url();
    let ids = ["w1", "w2", "w3"];
    let hosts: Vec<Host> = ids.iter().map(|id| lan.host(id)).collect();
    let prefix = test_support::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let session = session(&url, dir.path(), &prefix);
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let mut events = session.subscribe_events();
    let counting = tokio::spawn(async move {
        let mut completed = std::collections::HashMap::<String, u32>::new();
        while let Some(ev) = events.recv().await {
            if let QueueEvent::Completed { task_id, .. } = ev {
                *completed.entry(task_id).or_default() += 1;
            }
        }
        (completed, events.lagged())
    });
    // Each namespace has its own ports: every worker serves /metrics on 9465 of its address.
    let metrics_url = |h: &Host| format!("http://{}:9465/metrics", h.addr());
    let _workers: Vec<WorkerProc> = hosts
        .iter()
        .zip(ids)
        .map(|(h, id)| {
            let addr = format!("{}:9465", h.addr());
            let extra = ["--concurrency", "8", "--metrics-addr", &addr];
            WorkerProc::spawn(h, &url, &prefix, session.id(), id, &extra)
        })
        .collect();

    let mut handles = Vec::new();
    for i in 0..TASKS {
        let command = format!("sleep 0.05; echo {i}");
        let h = session
            .submit(SessionLane::Execute, "bash", json!({"command": command}))
            .await
            .unwrap();
        handles.push((i, h));
    }
    // Cut worker 1 off once the run is under way, while it runs tasks.
    let (cut, restored) = (&hosts[0], metrics_url(&hosts[0]));
    eventually(
        "worker 1 is busy mid-run",
        Duration::from_secs(60),
        async || {
            let processed = session.queue_metrics().await?.total_processed;
            let scrape = get(&restored).await?;
            let busy = metric(&scrape, "a3s_worker_busy_slots", &[("worker", "w1")])?;
            (processed >= (TASKS / 10) as u64 && busy >= 4.0).then_some(())
        },
    )
    .await;
    cut.link_down();
    // Its leases expire, its tasks complete elsewhere; then its link comes back.
    eventually(
        "a task of the cut-off worker completed elsewhere",
        Duration::from_secs(30),
        async || (execute_metric(&session, "a3s_tasks_redelivered_total") >= 1.0).then_some(()),
    )
    .await;
    cut.link_up();

    common::expect_own_echoes(handles).await;
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(
        (m.total_processed, m.total_failed, m.total_timed_out),
        (TASKS as u64, 0, 0),
        "{m:?}"
    );

    // Every result a worker reported reached the session once: applied (one per task), or
    // refused and counted. Wait for worker 1's late results to get there.
    let (reported, refused) = eventually(
        "every worker's reports were applied or refused",
        Duration::from_secs(40),
        async || {
            let mut reported = 0;
            for (h, id) in hosts.iter().zip(ids) {
                let scrape = get(&metrics_url(h)).await?;
                let w = |name| worker_metric(&scrape, id, name);
                let settled = w("a3s_worker_tasks_claimed_total")
                    == w("a3s_worker_tasks_succeeded_total")
                        + w("a3s_worker_tasks_failed_total")
                        + w("a3s_worker_results_rejected_total")
                        + w("a3s_worker_tasks_expired_total");
                if !settled {
                    return None;
                }
                reported += w("a3s_worker_tasks_succeeded_total");
            }
            let refused = session.queue_metrics().await?.total_rejected_completions;
            (reported == TASKS as u64 + refused).then_some((reported, refused))
        },
    )
    .await;
    assert!(
        refused >= 1,
        "the cut-off worker's late results were refused: {reported} reported"
    );
    assert_eq!(rejected(&session), refused as f64);

    session.close().await;
    let (completed, lagged) = counting.await.unwrap();
    assert_eq!(lagged, 0, "the event subscriber kept up");
    assert_eq!(completed.len(), TASKS, "every task completed");
    assert!(
        completed.values().all(|&n| n == 1),
        "no task completed twice"
    );
}
