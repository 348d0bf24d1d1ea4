//! Timeouts: the task fails, frees its slot, is dead-lettered, and late results are refused.

mod common;

use std::time::Duration;

use a3s_code_core::queue::{LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode};
use a3s_code_core::{ExternalTask, ExternalTaskResult, SessionQueueConfig};
use serde_json::json;

fn cfg() -> SessionQueueConfig {
    SessionQueueConfig {
        query_max_concurrency: 1,
        enable_dlq: true,
        enable_metrics: true,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_claimed_task_times_out_into_the_dlq_and_its_late_result_is_refused() {
    let (session, _dir) = common::external_session(cfg(), &[SessionLane::Query], 1_000);
    let first = session
        .submit(SessionLane::Query, "read", json!({"path": "slow"}))
        .await
        .unwrap();
    let second = session
        .submit(SessionLane::Query, "read", json!({"path": "next"}))
        .await
        .unwrap();
    let task = session.pending_external_tasks().await.remove(0);
    assert_eq!(task.remaining_ms(), 1_000);

    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(!task.is_timed_out());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(task.is_timed_out());

    let err = first.await.unwrap_err();
    assert_eq!(err.code(), "TaskTimedOut");
    assert!(err.to_string().contains("1000 ms"), "{err}");

    // The slot went to the next task; no stale entry is left.
    let next = session.pending_external_tasks().await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload["path"], "next");
    let stats = session.queue_stats().await;
    assert_eq!(
        (
            stats.active_count,
            stats.external_count,
            stats.pending_count
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.per_lane[&SessionLane::Query].claimed_count, 1);

    // The late result changes nothing.
    let late = session
        .complete_external_task(
            &task.task_id,
            ExternalTaskResult::ok(json!({"content": "late"})),
        )
        .await;
    assert_eq!(late.unwrap_err().code(), "TaskTimedOut");

    let dead = session.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, task.task_id);
    assert_eq!(dead[0].error_code, "TaskTimedOut");
    assert_eq!(dead[0].payload, json!({"path": "slow"}));

    session
        .complete_external_task(&next[0].task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    assert!(second.await.unwrap().success);
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(
        (
            m.total_processed,
            m.total_timed_out,
            m.total_rejected_completions,
            m.dlq_depth
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(m.success_rate, 0.5);
}

#[tokio::test(start_paused = true)]
async fn an_unclaimed_task_times_out_and_is_never_handed_out() {
    let (session, _dir) = common::external_session(cfg(), &[SessionLane::Query], 500);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(h.await.unwrap_err().code(), "TaskTimedOut");
    assert!(session.pending_external_tasks().await.is_empty());
    assert_eq!(session.queue_stats().await.active_count, 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_starts_when_the_task_gets_a_slot() {
    let (session, _dir) = common::external_session(cfg(), &[SessionLane::Query], 1_000);
    let a = session
        .submit(SessionLane::Query, "read", json!({"n": 1}))
        .await
        .unwrap();
    let b = session
        .submit(SessionLane::Query, "read", json!({"n": 2}))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(800)).await;
    let ta = session.pending_external_tasks().await.remove(0);
    session
        .complete_external_task(&ta.task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    a.await.unwrap();
    tokio::time::advance(Duration::from_millis(800)).await; // 1.6 s after submit, 0.8 s after its slot
    let tb = session.pending_external_tasks().await.remove(0);
    assert_eq!(tb.remaining_ms(), 200);
    session
        .complete_external_task(&tb.task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    assert!(b.await.unwrap().success);
}

#[tokio::test(start_paused = true)]
async fn an_internal_handler_is_aborted_at_its_deadline() {
    let (session, _dir) = common::session(SessionQueueConfig {
        enable_dlq: true,
        ..Default::default()
    });
    session
        .set_lane_handler(
            SessionLane::Execute,
            LaneHandlerConfig {
                mode: TaskHandlerMode::Internal,
                timeout_ms: 100,
            },
        )
        .await
        .unwrap();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = std::sync::Mutex::new(Some(dropped_tx));
    session.register_handler("hang", move |_task: ExternalTask| {
        let guard = DropSignal(dropped_tx.lock().unwrap().take());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            unreachable!()
        }
    });
    let h = session
        .submit(SessionLane::Execute, "hang", json!({}))
        .await
        .unwrap();
    assert_eq!(h.await.unwrap_err().code(), "TaskTimedOut");
    tokio::time::timeout(Duration::from_secs(1), dropped_rx)
        .await
        .expect("handler future dropped")
        .unwrap();
    assert_eq!(session.dead_letters().await.len(), 1);
}

struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn events_report_the_timeout_and_the_dead_letter() {
    let (session, _dir) = common::external_session(cfg(), &[SessionLane::Query], 100);
    let mut events = session.subscribe_events();
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let id = h.task_id().to_owned();
    assert!(h.await.is_err());
    let mut kinds = Vec::new();
    while let Some(ev) = events.try_recv() {
        assert_eq!(ev.task_id(), Some(id.as_str()));
        kinds.push(match ev {
            QueueEvent::Submitted { .. } => "submitted",
            QueueEvent::Started { .. } => "started",
            QueueEvent::Failed { code, .. } => {
                assert_eq!(code, "TaskTimedOut");
                "failed"
            }
            QueueEvent::DeadLettered { .. } => "dead_lettered",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["submitted", "started", "failed", "dead_lettered"]);
}

#[tokio::test]
async fn set_lane_handler_validates() {
    let (session, _dir) = common::session(SessionQueueConfig::default());
    let err = session
        .set_lane_handler(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 0,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidConfig");
    assert_eq!(
        session.lane_handler(SessionLane::Query),
        LaneHandlerConfig::default()
    );
}

#[test]
fn invalid_configs_are_refused_at_session_creation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = a3s_code_core::Agent::from_config(Default::default());
    let bad = SessionQueueConfig {
        execute_max_concurrency: 0,
        ..Default::default()
    };
    let err = agent
        .session(
            dir.path(),
            Some(a3s_code_core::SessionOptions::new().with_queue_config(bad)),
        )
        .unwrap_err();
    assert_eq!(err.code(), "InvalidConfig");
    assert!(err.to_string().contains("execute_max_concurrency"));
}
