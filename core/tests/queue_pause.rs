//! Pausing a lane: nothing new is dispatched, tasks holding a slot finish, the backlog waits
//! without timing out, resuming fills the slots; Control cannot be paused.

mod common;

use std::time::Duration;

use a3s_code_core::queue::SessionLane;
use a3s_code_core::{ExternalTaskResult, SessionQueueConfig};
use serde_json::json;

fn two_slots() -> SessionQueueConfig {
    SessionQueueConfig {
        query_max_concurrency: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_paused_lane_dispatches_nothing_new_and_its_in_flight_tasks_finish() {
    let (session, _dir) = common::external_session(two_slots(), &[SessionLane::Query], 30_000);
    let first = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let held = session
        .claim_external_tasks(1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);

    session.pause_lane(SessionLane::Query).await.unwrap();
    session.pause_lane(SessionLane::Query).await.unwrap(); // idempotent
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(
            session
                .submit(SessionLane::Query, "read", json!({}))
                .await
                .unwrap(),
        );
    }
    let stats = session.queue_stats().await.per_lane[&SessionLane::Query].clone();
    assert!(stats.paused);
    assert_eq!((stats.active_count, stats.pending_count), (1, 3));
    let none = session
        .claim_external_tasks(8, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(none.is_empty(), "a paused lane hands out nothing new");

    // The task holding a slot finishes as usual.
    let ok = ExternalTaskResult::ok(json!({"n": 1}));
    session
        .complete_external_task(&held[0].task_id, ok.clone())
        .await
        .unwrap();
    assert_eq!(first.await.unwrap(), ok);
    assert!(
        session
            .claim_external_tasks(8, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "the freed slot stays free while paused"
    );

    session.resume_lane(SessionLane::Query).await.unwrap();
    session.resume_lane(SessionLane::Query).await.unwrap(); // idempotent
    let mut got = Vec::new();
    while got.len() < 3 {
        for t in session
            .claim_external_tasks(8, Duration::from_secs(1))
            .await
            .unwrap()
        {
            session
                .complete_external_task(&t.task_id, ok.clone())
                .await
                .unwrap();
            got.push(t.task_id);
        }
    }
    for h in waiting {
        assert_eq!(h.await.unwrap(), ok);
    }
    assert!(!session.queue_stats().await.per_lane[&SessionLane::Query].paused);
}

#[tokio::test]
async fn the_backlog_does_not_time_out_while_paused() {
    let (session, _dir) = common::external_session(two_slots(), &[SessionLane::Query], 200);
    session.pause_lane(SessionLane::Query).await.unwrap();
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    // Three timeouts' worth of waiting in the backlog.
    tokio::time::sleep(Duration::from_millis(600)).await;
    session.resume_lane(SessionLane::Query).await.unwrap();
    let t = session
        .claim_external_tasks(1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(t.len(), 1, "still there after the pause");
    session
        .complete_external_task(&t[0].task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    assert!(h.await.unwrap().success);
}

#[tokio::test]
async fn control_cannot_be_paused_and_a_closed_session_refuses() {
    let (session, _dir) = common::external_session(two_slots(), &[SessionLane::Query], 30_000);
    let err = session.pause_lane(SessionLane::Control).await.unwrap_err();
    assert_eq!(err.code(), "InvalidConfig");
    assert!(err.to_string().contains("Control"), "{err}");
    session.resume_lane(SessionLane::Control).await.unwrap(); // never paused: fine
    session.close().await;
    assert_eq!(
        session
            .pause_lane(SessionLane::Query)
            .await
            .unwrap_err()
            .code(),
        "ShutDown"
    );
}

/// A task that times out lands in the DLQ.
async fn dead_letter(session: &a3s_code_core::AgentSession, payload: serde_json::Value) -> String {
    let h = session
        .submit(SessionLane::Query, "read", payload)
        .await
        .unwrap();
    let id = h.task_id().to_owned();
    assert_eq!(h.await.unwrap_err().code(), "TaskTimedOut");
    id
}

#[tokio::test]
async fn a_dead_letter_is_retried_as_a_new_task_or_deleted() {
    let cfg = SessionQueueConfig {
        enable_dlq: true,
        ..two_slots()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 100);
    let first = dead_letter(&session, json!({"path": "a"})).await;
    let second = dead_letter(&session, json!({"path": "b"})).await;
    assert_eq!(session.dead_letters().await.len(), 2);

    // Retry: a new task with the same lane, command and payload; the letter leaves the DLQ.
    let retry = session.retry_dead_letter(&first).await.unwrap();
    assert_ne!(retry.task_id(), first);
    let letters = session.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].task_id, second);
    let t = session
        .claim_external_tasks(1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(t[0].task_id, retry.task_id());
    assert_eq!(
        (t[0].command_type.as_str(), &t[0].payload),
        ("read", &json!({"path": "a"}))
    );
    session
        .complete_external_task(
            &t[0].task_id,
            ExternalTaskResult::ok(json!({"content": "x"})),
        )
        .await
        .unwrap();
    assert!(retry.await.unwrap().success);

    // Delete one; unknown ids (also one already retried) are TaskNotFound.
    session.delete_dead_letter(&second).await.unwrap();
    assert!(session.dead_letters().await.is_empty());
    for id in [first.as_str(), second.as_str(), "nope"] {
        assert_eq!(
            session.delete_dead_letter(id).await.unwrap_err().code(),
            "TaskNotFound"
        );
        assert_eq!(
            session.retry_dead_letter(id).await.unwrap_err().code(),
            "TaskNotFound"
        );
    }
    session.close().await;
    assert_eq!(
        session.delete_dead_letter(&first).await.unwrap_err().code(),
        "ShutDown"
    );
}
