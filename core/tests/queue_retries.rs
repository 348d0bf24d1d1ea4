//! Retries of lost attempts with backoff, bounded by the task's timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use a3s_code_core::queue::{QueueEvent, RetryPolicy, SessionLane};
use a3s_code_core::{ExternalTask, ExternalTaskResult, SessionQueueConfig};
use serde_json::json;

#[tokio::test(start_paused = true)]
async fn abandoned_attempts_are_retried_with_exponential_backoff_then_dead_lettered() {
    let cfg = SessionQueueConfig {
        retry_policy: RetryPolicy::exponential(2, 100),
        enable_dlq: true,
        enable_metrics: true,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let mut events = session.subscribe_events();
    let h = session
        .submit(SessionLane::Query, "read", json!({"path": "x"}))
        .await
        .unwrap();

    let t1 = session.pending_external_tasks().await.remove(0);
    assert_eq!(t1.attempt, 1);
    session
        .abandon_external_task(&t1.task_id, "worker lost its disk")
        .await
        .unwrap();
    assert!(
        session.pending_external_tasks().await.is_empty(),
        "backing off"
    );
    tokio::time::advance(Duration::from_millis(99)).await;
    assert!(session.pending_external_tasks().await.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    let t2 = session
        .claim_external_tasks(1, Duration::from_millis(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((t2.task_id.as_str(), t2.attempt), (t1.task_id.as_str(), 2));

    session
        .abandon_external_task(&t2.task_id, "again")
        .await
        .unwrap();
    let t3 = session
        .claim_external_tasks(1, Duration::from_millis(250))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(t3.attempt, 3);
    session
        .abandon_external_task(&t3.task_id, "and again")
        .await
        .unwrap();

    let err = h.await.unwrap_err();
    assert_eq!(err.code(), "RetriesExhausted");
    assert!(err.to_string().contains("3 attempt(s): and again"), "{err}");
    let dead = session.dead_letters().await;
    assert_eq!((dead.len(), dead[0].attempts), (1, 3));
    let m = session.queue_metrics().await.unwrap();
    assert_eq!((m.total_retried, m.total_failed), (2, 1));

    let retries: Vec<(u32, u64)> = std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            QueueEvent::Retrying {
                next_attempt,
                delay_ms,
                ..
            } => Some((next_attempt, delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(2, 100), (3, 200)]);
}

#[tokio::test]
async fn without_a_retry_policy_a_lost_attempt_fails_the_task() {
    let cfg = SessionQueueConfig {
        retry_policy: RetryPolicy::none(),
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let t = session.pending_external_tasks().await.remove(0);
    session
        .abandon_external_task(&t.task_id, "nope")
        .await
        .unwrap();
    assert_eq!(h.await.unwrap_err().code(), "RetriesExhausted");
    assert_eq!(
        session
            .abandon_external_task(&t.task_id, "twice")
            .await
            .unwrap_err()
            .code(),
        "TaskAlreadyCompleted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_result_that_arrives_during_backoff_completes_the_task() {
    let cfg = SessionQueueConfig {
        retry_policy: RetryPolicy::fixed(3, 1_000),
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let t = session.pending_external_tasks().await.remove(0);
    session
        .abandon_external_task(&t.task_id, "lease expired")
        .await
        .unwrap();
    // The first worker was slow, not dead: its result still counts.
    session
        .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({"content": "x"})))
        .await
        .unwrap();
    assert!(h.await.unwrap().success);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        session.pending_external_tasks().await.is_empty(),
        "no retry after completion"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_never_outlive_the_timeout() {
    let cfg = SessionQueueConfig {
        retry_policy: RetryPolicy::fixed(10, 400),
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 1_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    for _ in 0..2 {
        let t = session
            .claim_external_tasks(1, Duration::from_secs(5))
            .await
            .unwrap()
            .remove(0);
        session
            .abandon_external_task(&t.task_id, "lost")
            .await
            .unwrap();
    }
    // 800 ms spent; the next retry would start at 1 200 ms, past the 1 000 ms budget.
    assert_eq!(h.await.unwrap_err().code(), "TaskTimedOut");
}

#[tokio::test]
async fn a_panicking_internal_handler_is_retried() {
    let cfg = SessionQueueConfig {
        retry_policy: RetryPolicy::fixed(2, 0),
        ..Default::default()
    };
    let (session, _dir) = common::session(cfg);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    session.register_handler("flaky", move |task: ExternalTask| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("first attempt explodes");
            }
            ExternalTaskResult::ok(json!({"attempt": task.attempt}))
        }
    });
    let out = session
        .submit(SessionLane::Execute, "flaky", json!({}))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(out.result["attempt"], 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
