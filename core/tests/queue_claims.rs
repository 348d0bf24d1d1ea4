//! Claim semantics: every task goes to exactly one poller, results complete exactly once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use a3s_code_core::queue::SessionLane;
use a3s_code_core::{ExternalTaskResult, SessionQueueConfig};
use std::sync::Mutex;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_pollers_never_get_the_same_task() {
    const TASKS: usize = 5_000;
    let cfg = SessionQueueConfig {
        query_max_concurrency: 64,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let claimed = Arc::new(Mutex::new(Vec::new()));

    let mut pollers = Vec::new();
    for worker in 0..8 {
        let (session, claimed) = (session.clone(), claimed.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                // Mix the plain poll and the long poll.
                let tasks = if worker % 2 == 0 {
                    session.pending_external_tasks().await
                } else {
                    match session
                        .claim_external_tasks(7, Duration::from_millis(20))
                        .await
                    {
                        Ok(t) => t,
                        Err(_) => return,
                    }
                };
                if tasks.is_empty() {
                    if session.is_closed() {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let mut results = Vec::new();
                for task in tasks {
                    claimed.lock().unwrap().push(task.task_id.clone());
                    results.push((
                        task.task_id.clone(),
                        ExternalTaskResult::ok(json!({"by": worker})),
                    ));
                }
                for r in session.complete_external_tasks(results).await {
                    r.expect("a claimed task completes once");
                }
            }
        }));
    }

    let mut handles = Vec::new();
    for i in 0..TASKS {
        handles.push(
            session
                .submit(SessionLane::Query, "read", json!({"i": i}))
                .await
                .unwrap(),
        );
    }
    let mut ids = HashSet::new();
    for h in handles {
        let id = h.task_id().to_owned();
        assert!(h.await.unwrap().success);
        ids.insert(id);
    }
    session.close().await;
    for p in pollers {
        p.await.unwrap();
    }
    let claimed = claimed.lock().unwrap();
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), TASKS, "every task claimed exactly once");
    assert_eq!(unique, ids);
}

#[tokio::test(start_paused = true)]
async fn long_poll_wakes_when_a_task_arrives() {
    let (session, _dir) =
        common::external_session(SessionQueueConfig::default(), &[SessionLane::Query], 60_000);
    let poller = {
        let session = session.clone();
        tokio::spawn(async move {
            session
                .claim_external_tasks(10, Duration::from_secs(30))
                .await
        })
    };
    // With the clock paused, a sleep returns only once every task is idle: the poller is
    // parked in its long poll, not merely not started (a yield could leave it unpolled, and a
    // claim that ran after the submit would pass without testing the wake-up).
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!poller.is_finished(), "the poller is waiting");
    let t0 = tokio::time::Instant::now();
    let handle = session
        .submit(SessionLane::Query, "read", json!({"path": "a"}))
        .await
        .unwrap();
    let tasks = tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .expect("woken, not timed out")
        .unwrap()
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, handle.task_id());
    assert_eq!(tasks[0].payload, json!({"path": "a"}));
    assert_eq!(tasks[0].session_id, session.id());
    assert_eq!(tasks[0].attempt, 1);
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "woken by the submit, not by a timer"
    );
}

#[tokio::test(start_paused = true)]
async fn long_poll_returns_empty_after_wait() {
    let (session, _dir) =
        common::external_session(SessionQueueConfig::default(), &[SessionLane::Query], 60_000);
    let t0 = tokio::time::Instant::now();
    let tasks = session
        .claim_external_tasks(10, Duration::from_millis(250))
        .await
        .unwrap();
    assert!(tasks.is_empty());
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
}

#[tokio::test]
async fn completions_are_checked() {
    let (session, _dir) = common::external_session(
        SessionQueueConfig {
            enable_metrics: true,
            ..Default::default()
        },
        &[SessionLane::Query],
        60_000,
    );
    let (other, _dir2) =
        common::external_session(SessionQueueConfig::default(), &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let task = session.pending_external_tasks().await.remove(0);

    let ok = ExternalTaskResult::ok(json!({"content": "x"}));
    assert_eq!(
        session
            .complete_external_task("nope", ok.clone())
            .await
            .unwrap_err()
            .code(),
        "TaskNotFound"
    );
    assert_eq!(
        other
            .complete_external_task(&task.task_id, ok.clone())
            .await
            .unwrap_err()
            .code(),
        "TaskNotFound"
    );
    session
        .complete_external_task(&task.task_id, ok.clone())
        .await
        .unwrap();
    let second = ExternalTaskResult::err("late duplicate");
    assert_eq!(
        session
            .complete_external_task(&task.task_id, second)
            .await
            .unwrap_err()
            .code(),
        "TaskAlreadyCompleted"
    );
    assert_eq!(h.await.unwrap(), ok, "the first result wins");
    assert_eq!(
        session
            .queue_metrics()
            .await
            .unwrap()
            .total_rejected_completions,
        1
    );
}

#[tokio::test]
async fn calls_after_close_answer_shut_down() {
    let (session, _dir) =
        common::external_session(SessionQueueConfig::default(), &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let task = session.pending_external_tasks().await.remove(0);
    session.close().await;
    assert_eq!(h.await.unwrap_err().code(), "ShutDown");
    let ok = ExternalTaskResult::ok(json!({}));
    let code = |r: a3s_code_core::Result<()>| r.unwrap_err().code();
    assert_eq!(
        code(
            session
                .complete_external_task(&task.task_id, ok.clone())
                .await
        ),
        "ShutDown"
    );
    assert_eq!(
        code(
            session
                .complete_external_task("not-an-id", ok.clone())
                .await
        ),
        "ShutDown"
    );
    let batch = session
        .complete_external_tasks(vec![(task.task_id.clone(), ok)])
        .await;
    assert_eq!(
        batch.into_iter().map(code).collect::<Vec<_>>(),
        ["ShutDown"]
    );
    assert_eq!(
        code(session.abandon_external_task(&task.task_id, "lost").await),
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
}

#[tokio::test]
async fn a_failed_result_is_returned_as_is_and_not_retried() {
    let cfg = SessionQueueConfig {
        retry_policy: a3s_code_core::queue::RetryPolicy::fixed(3, 0),
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    let task = session.pending_external_tasks().await.remove(0);
    let failed = ExternalTaskResult::err("no such file");
    session
        .complete_external_task(&task.task_id, failed.clone())
        .await
        .unwrap();
    assert_eq!(h.await.unwrap(), failed);
    assert!(session.pending_external_tasks().await.is_empty());
}

#[tokio::test]
async fn backlog_is_bounded() {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 1,
        max_pending: 2,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    for _ in 0..3 {
        session
            .submit(SessionLane::Query, "read", json!({}))
            .await
            .unwrap(); // 1 active + 2 pending
    }
    let err = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "QueueFull");
    assert!(err.to_string().contains("query"), "{err}");
    // Other lanes are unaffected.
    session
        .submit(SessionLane::Execute, "custom", json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn payloads_must_be_objects_and_tools_must_exist() {
    let (session, _dir) = common::session(SessionQueueConfig::default());
    let err = session
        .submit(SessionLane::Query, "read", json!("README.md"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidPayload");
    assert_eq!(
        session
            .tool("teleport", json!({}))
            .await
            .unwrap_err()
            .code(),
        "UnknownTool"
    );
}
