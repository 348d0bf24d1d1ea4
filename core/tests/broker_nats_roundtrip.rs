//! A session publishing to NATS JetStream and a RemoteSession worker, in one process.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::worker::{RemoteOptions, RemoteSession};
use a3s_code_core::{AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig};
use serde_json::json;

async fn nats_session(
    url: &str,
    prefix: &str,
    cfg: SessionQueueConfig,
) -> (AgentSession, tempfile::TempDir) {
    common::nats_session(url, prefix, cfg, SessionOptions::new()).await
}

fn external(lanes: &[SessionLane], timeout_ms: u64) -> SessionQueueConfig {
    SessionQueueConfig {
        lane_handlers: lanes
            .iter()
            .map(|&l| {
                (
                    l,
                    LaneHandlerConfig {
                        mode: TaskHandlerMode::External,
                        timeout_ms,
                    },
                )
            })
            .collect(),
        enable_metrics: true,
        enable_dlq: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_completes_tasks_exactly_once() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir) =
        nats_session(&url, &prefix, external(&[SessionLane::Query], 30_000)).await;
    let worker = RemoteSession::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        RemoteOptions::session(session.id()),
    )
    .await
    .unwrap();

    let mut handles = Vec::new();
    for i in 0..50 {
        handles.push(
            session
                .submit(SessionLane::Query, "read", json!({"i": i}))
                .await
                .unwrap(),
        );
    }
    let mut done = 0;
    while done < 50 {
        let tasks = worker
            .claim_external_tasks(16, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!tasks.is_empty(), "tasks arrive");
        for t in tasks {
            assert_eq!(t.session_id, session.id());
            assert_eq!(t.attempt, 1);
            let i = t.payload["i"].as_i64().unwrap();
            worker
                .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({"i": i * 2})))
                .await
                .unwrap();
            done += 1;
        }
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().result["i"], (i * 2) as i64);
    }
    let m = session.queue_metrics().await.unwrap();
    assert_eq!((m.total_processed, m.total_failed), (50, 0));
    assert!(worker.pending_external_tasks().await.unwrap().is_empty());
    session.close().await;
    worker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_withdraw_the_task_and_late_results_are_ignored() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir) = nats_session(&url, &prefix, external(&[SessionLane::Query], 1_000)).await;
    let worker = RemoteSession::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        RemoteOptions::session(session.id()),
    )
    .await
    .unwrap();
    let mut cancels = worker.cancellations();
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(h.await.unwrap_err().code(), "TaskTimedOut");
    // The session pushes a cancel for it.
    let cancelled = tokio::time::timeout(Duration::from_secs(5), cancels.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled, task.task_id);
    // The worker no longer holds it: its late result goes nowhere.
    assert_eq!(
        worker
            .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({})))
            .await
            .unwrap_err()
            .code(),
        "TaskNotFound"
    );
    let dead = session.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "TaskTimedOut");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_given_back_is_delivered_again_with_the_next_attempt() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let cfg = SessionQueueConfig {
        retry_policy: a3s_code_core::queue::RetryPolicy::fixed(2, 50),
        ..external(&[SessionLane::Execute], 30_000)
    };
    let (session, _dir) = nats_session(&url, &prefix, cfg).await;
    let worker = RemoteSession::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        RemoteOptions::session(session.id()),
    )
    .await
    .unwrap();
    let h = session
        .submit(SessionLane::Execute, "custom", json!({}))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let t = worker
            .claim_external_tasks(1, Duration::from_secs(5))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(t.attempt, attempt);
        worker
            .abandon_external_task(&t.task_id, "flaky")
            .await
            .unwrap();
    }
    let err = h.await.unwrap_err();
    assert_eq!(err.code(), "RetriesExhausted");
    assert!(err.to_string().contains("flaky"), "{err}");
    session.close().await;
}
