//! A session publishing to NATS JetStream and a WorkerClient worker, in one process.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig};
use serde_json::json;

async fn nats_session(
    url: &str,
    prefix: &str,
    cfg: SessionQueueConfig,
) -> (AgentSession, tempfile::TempDir) {
    common::nats_session(url, prefix, cfg, SessionOptions::new()).await
}

/// A session with `cfg` on NATS under `prefix`, and a worker of it.
async fn session_and_worker(
    url: &str,
    prefix: &str,
    cfg: SessionQueueConfig,
) -> (AgentSession, tempfile::TempDir, WorkerClient) {
    let (session, dir) = nats_session(url, prefix, cfg).await;
    let worker = WorkerClient::connect_with(
        NatsConfig::new(url).with_prefix(prefix),
        WorkerClientOptions::session(session.id()),
    )
    .await
    .unwrap();
    (session, dir, worker)
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
    let (session, _dir, worker) =
        session_and_worker(&url, &prefix, external(&[SessionLane::Query], 30_000)).await;

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
    let (session, _dir, worker) =
        session_and_worker(&url, &prefix, external(&[SessionLane::Query], 1_000)).await;
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
    let (session, _dir, worker) = session_and_worker(&url, &prefix, cfg).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reported_together_travel_in_one_message_and_each_completes_its_task() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let cfg = SessionQueueConfig {
        query_max_concurrency: 32,
        ..external(&[SessionLane::Query], 30_000)
    };
    let (session, _dir, worker) = session_and_worker(&url, &prefix, cfg).await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let results_stream = format!("{}_RESULTS", prefix.to_uppercase().replace('-', "_"));
    let stored = || async {
        js.get_stream(&results_stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence
    };

    let mut handles = Vec::new();
    for i in 0..20 {
        let h = session
            .submit(SessionLane::Query, "read", json!({"i": i}))
            .await
            .unwrap();
        handles.push(h);
    }
    let mut tasks = Vec::new();
    while tasks.len() < 20 {
        let got = worker
            .claim_external_tasks(20 - tasks.len(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!got.is_empty(), "tasks arrive");
        tasks.extend(got);
    }
    let before = stored().await;
    // One unknown id among them: refused alone, in its place; the others go out together.
    let mut results: Vec<(String, ExternalTaskResult)> = tasks
        .iter()
        .map(|t| {
            let i = t.payload["i"].as_i64().unwrap();
            (
                t.task_id.clone(),
                ExternalTaskResult::ok(json!({"i": i * 3})),
            )
        })
        .collect();
    results.insert(
        5,
        ("no-such-task".into(), ExternalTaskResult::ok(json!(null))),
    );
    let outcomes = worker.complete_external_tasks(results).await.unwrap();
    assert_eq!(outcomes.len(), 21);
    for (k, outcome) in outcomes.iter().enumerate() {
        match k {
            5 => assert_eq!(outcome.as_ref().unwrap_err().code(), "TaskNotFound"),
            _ => assert!(outcome.is_ok(), "{k}: {outcome:?}"),
        }
    }
    assert_eq!(stored().await - before, 1, "twenty results, one message");
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().result["i"], (i * 3) as i64);
    }
    let m = session.queue_metrics().await.unwrap();
    assert_eq!((m.total_processed, m.total_rejected_completions), (20, 0));
    // Reported again (a caller retrying after a lost answer): nothing held, nothing applied.
    let again = worker
        .complete_external_tasks(
            tasks
                .iter()
                .map(|t| (t.task_id.clone(), ExternalTaskResult::ok(json!(0)))),
        )
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|o| o.as_ref().unwrap_err().code() == "TaskNotFound")
    );
    session.close().await;
    worker.close().await;
}

/// A worker with one source keeps pull requests open for its free slots only: a task delivered
/// while a claim is looking (its request's credit spent, the task not yet ready) is not asked
/// for again. A second request would outlive the claim, and, when the worker vanishes, take the
/// task's next delivery with it (the conformance kit saw attempt 3 where 2 was due).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asks_once_for_one_free_slot() {
    use futures_util::StreamExt;
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir) =
        nats_session(&url, &prefix, external(&[SessionLane::Query], 30_000)).await;
    let names = a3s_code_core::broker::wire::Names::new(&prefix).unwrap();
    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        names.tasks_stream(a3s_code_core::broker::wire::DEFAULT_TENANT),
        names.session_consumer(
            session.id(),
            SessionLane::Query,
            a3s_code_core::broker::wire::ANY_ROUTE
        )
    );
    // Every pull request the workers send, as the server receives it.
    let spy = async_nats::connect(&url).await.unwrap();
    let mut requests = spy.subscribe(next).await.unwrap();
    spy.flush().await.unwrap();
    const CLAIMS: u64 = 40;
    for i in 0..CLAIMS {
        // Like the conformance kit: the task is stored before a new worker attaches and asks.
        let h = session
            .submit(SessionLane::Query, "read", json!({ "i": i }))
            .await
            .unwrap();
        let worker = WorkerClient::connect_with(
            NatsConfig::new(&url).with_prefix(&prefix),
            WorkerClientOptions::session(session.id()).with_lanes([SessionLane::Query]),
        )
        .await
        .unwrap();
        serve_one(&worker, h).await;
        worker.close().await;
    }
    // A second request follows the first within a millisecond or two; give stragglers time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut asked = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), requests.next()).await {
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        asked += body["batch"].as_u64().unwrap();
    }
    assert_eq!(
        asked, CLAIMS,
        "tasks asked for by {CLAIMS} claims of one task"
    );
    session.close().await;
}

/// A closing session tells its workers (`SessionClosed` on the cancel subject): a worker of
/// that session hears it, a pool worker is not concerned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_one_session_hears_it_close() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir, worker) =
        session_and_worker(&url, &prefix, external(&[SessionLane::Query], 30_000)).await;
    let pool = WorkerClient::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        WorkerClientOptions::pool(),
    )
    .await
    .unwrap();
    // A task served: the worker is attached (it listens to the session's tenant from then on).
    let h = session
        .submit(SessionLane::Query, "read", json!({}))
        .await
        .unwrap();
    serve_one(&worker, h).await;
    assert!(!worker.is_session_closed());
    session.close().await;
    tokio::time::timeout(Duration::from_secs(10), worker.session_closed())
        .await
        .expect("the worker heard its session close");
    assert!(worker.is_session_closed());
    assert!(
        !pool.is_session_closed(),
        "a pool worker serves no one session"
    );
    worker.close().await;
    pool.close().await;
}

/// `worker` claims the one task waiting, completes it, and `handle` sees it done.
async fn serve_one(worker: &WorkerClient, handle: a3s_code_core::TaskHandle) {
    let t = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(t.task_id, handle.task_id());
    worker
        .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    handle.await.unwrap();
}
