//! Hybrid lanes, events, alerts, cancel and close.

mod common;

use std::time::Duration;

use a3s_code_core::queue::{
    AlertKind, LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode,
};
use a3s_code_core::{ExternalTask, ExternalTaskResult, SessionQueueConfig};
use serde_json::json;

#[tokio::test]
async fn hybrid_runs_internally_and_emits_started_completed_failed() {
    let (session, _dir) = common::session(SessionQueueConfig::default());
    session
        .set_lane_handler(
            SessionLane::Execute,
            LaneHandlerConfig {
                mode: TaskHandlerMode::Hybrid,
                timeout_ms: 60_000,
            },
        )
        .await
        .unwrap();
    session.register_handler("check", |task: ExternalTask| async move {
        match task.payload["ok"].as_bool() {
            Some(true) => ExternalTaskResult::ok(json!({"checked": true})),
            _ => ExternalTaskResult::err("check failed"),
        }
    });
    let mut events = session.subscribe_events();
    let ok = session
        .submit(SessionLane::Execute, "check", json!({"ok": true}))
        .await
        .unwrap();
    let ok_id = ok.task_id().to_owned();
    assert_eq!(ok.await.unwrap().result, json!({"checked": true}));
    let bad = session
        .submit(SessionLane::Execute, "check", json!({"ok": false}))
        .await
        .unwrap();
    let bad_id = bad.task_id().to_owned();
    assert!(!bad.await.unwrap().success);
    assert!(
        session.pending_external_tasks().await.is_empty(),
        "hybrid tasks are not handed out"
    );

    let mut seen = Vec::new();
    while let Some(ev) = events.try_recv() {
        match ev {
            QueueEvent::Started {
                task_id,
                mode,
                attempt,
                ..
            } => {
                assert_eq!((mode, attempt), (TaskHandlerMode::Hybrid, 1));
                seen.push(("started", task_id));
            }
            QueueEvent::Completed {
                task_id,
                command_type,
                ..
            } => {
                assert_eq!(command_type, "check");
                seen.push(("completed", task_id));
            }
            QueueEvent::Failed {
                task_id,
                code,
                error,
                ..
            } => {
                assert_eq!(
                    (code.as_str(), error.as_str()),
                    ("ToolFailed", "check failed")
                );
                seen.push(("failed", task_id));
            }
            QueueEvent::Submitted { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("started", ok_id.clone()),
            ("completed", ok_id),
            ("started", bad_id.clone()),
            ("failed", bad_id)
        ]
    );
}

#[tokio::test]
async fn queue_depth_alert_fires_once_per_crossing() {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 1,
        enable_alerts: true,
        queue_depth_alert_threshold: 3,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let mut events = session.subscribe_events();
    for _ in 0..6 {
        session
            .submit(SessionLane::Query, "read", json!({}))
            .await
            .unwrap();
    }
    let alerts: Vec<_> = std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            QueueEvent::Alert {
                kind,
                lane,
                value,
                threshold,
            } => Some((kind, lane, value, threshold)),
            _ => None,
        })
        .collect();
    assert_eq!(alerts, [(AlertKind::QueueDepth, SessionLane::Query, 3, 3)]);
}

#[tokio::test]
async fn cancel_a_queued_a_claimed_and_a_running_task() {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 1,
        enable_metrics: true,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let claimed = session
        .submit(SessionLane::Query, "read", json!({"n": 1}))
        .await
        .unwrap();
    let queued = session
        .submit(SessionLane::Query, "read", json!({"n": 2}))
        .await
        .unwrap();
    let third = session
        .submit(SessionLane::Query, "read", json!({"n": 3}))
        .await
        .unwrap();
    let task = session.pending_external_tasks().await.remove(0);

    queued.cancel().await.unwrap();
    assert_eq!(queued.await.unwrap_err().code(), "TaskCancelled");
    session.cancel(&task.task_id).await.unwrap();
    assert_eq!(claimed.await.unwrap_err().code(), "TaskCancelled");
    let late = session
        .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({})))
        .await;
    assert_eq!(late.unwrap_err().code(), "TaskCancelled");
    assert_eq!(
        session.cancel(&task.task_id).await.unwrap_err().code(),
        "TaskCancelled"
    );

    // The freed slot went to the third task, not the cancelled second one.
    let next = session.pending_external_tasks().await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload["n"], 3);
    session
        .complete_external_task(&next[0].task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    assert!(third.await.unwrap().success);
    let m = session.queue_metrics().await.unwrap();
    assert_eq!((m.total_cancelled, m.total_processed), (2, 1));

    // A running internal bash task: the child is killed.
    let (internal, _dir2) = common::session(SessionQueueConfig::default());
    let h = internal
        .submit(SessionLane::Execute, "custom-hang", json!({}))
        .await
        .unwrap();
    h.cancel().await.unwrap();
    assert_eq!(h.await.unwrap_err().code(), "TaskCancelled");
}

#[tokio::test(start_paused = true)]
async fn close_fails_everything_and_stops_workers() {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 1,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let mut events = session.subscribe_events();
    let active = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let queued = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let waiter = {
        let s = session.clone();
        tokio::spawn(async move { s.claim_external_tasks(1, Duration::from_secs(60)).await })
    };
    let _ = session.pending_external_tasks().await; // claims `active`, so the waiter waits
    // With the clock paused, a sleep returns only once every task is idle: the waiter is
    // parked in its long poll when the session closes (a yield could leave it unpolled).
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!waiter.is_finished(), "the waiter is waiting");
    session.close().await;
    assert_eq!(active.await.unwrap_err().code(), "ShutDown");
    assert_eq!(queued.await.unwrap_err().code(), "ShutDown");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err()
            .code(),
        "ShutDown"
    );
    assert_eq!(
        session
            .submit(SessionLane::Query, "read", json!({}))
            .await
            .unwrap_err()
            .code(),
        "ShutDown"
    );
    while events.try_recv().is_some() {}
    assert!(events.recv().await.is_none(), "the event stream ends");
    session.close().await; // idempotent
}

#[tokio::test]
async fn dropping_the_last_session_handle_closes_it() {
    let (session, _dir) =
        common::external_session(SessionQueueConfig::default(), &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    drop(session);
    assert_eq!(h.await.unwrap_err().code(), "ShutDown");
}
