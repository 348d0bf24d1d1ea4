//! Strict priority across lanes, FIFO within a lane, concurrency limits never exceeded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use a3s_code_core::queue::SessionLane;
use a3s_code_core::{ExternalTask, ExternalTaskResult, SessionQueueConfig};
use serde_json::json;
use tokio::sync::watch;

#[tokio::test]
async fn claims_take_the_highest_priority_lane_first() {
    let (session, _dir) =
        common::external_session(SessionQueueConfig::default(), &SessionLane::ALL, 60_000);
    // Submitted lowest priority first.
    let mut handles = Vec::new();
    for lane in [
        SessionLane::Generate,
        SessionLane::Execute,
        SessionLane::Query,
        SessionLane::Control,
    ] {
        handles.push(
            session
                .submit(lane, "noop", json!({"lane": lane.as_str()}))
                .await
                .unwrap(),
        );
    }
    let mut order = Vec::new();
    loop {
        let tasks = session
            .claim_external_tasks(1, Duration::ZERO)
            .await
            .unwrap();
        let Some(task) = tasks.into_iter().next() else {
            break;
        };
        order.push(task.lane);
        session
            .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({})))
            .await
            .unwrap();
    }
    assert_eq!(order, SessionLane::ALL);
    for h in handles {
        assert!(h.await.unwrap().success);
    }
}

#[tokio::test]
async fn a_lane_is_fifo_and_its_limit_holds_back_the_rest() {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 2,
        ..Default::default()
    };
    let (session, _dir) = common::external_session(cfg, &[SessionLane::Query], 60_000);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            session
                .submit(SessionLane::Query, "read", json!({"i": i}))
                .await
                .unwrap()
                .task_id()
                .to_owned(),
        );
    }
    let stats = session.queue_stats().await;
    assert_eq!(
        (
            stats.active_count,
            stats.external_count,
            stats.pending_count
        ),
        (2, 2, 4)
    );

    let mut seen = Vec::new();
    while seen.len() < 6 {
        // Never more than the limit claimable at once, in submission order.
        let batch = session.pending_external_tasks().await;
        assert!(
            batch.len() <= 2,
            "{} claimable with a limit of 2",
            batch.len()
        );
        for task in batch {
            seen.push(task.payload["i"].as_i64().unwrap());
            session
                .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({})))
                .await
                .unwrap();
        }
    }
    assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
    let stats = session.queue_stats().await;
    assert_eq!((stats.active_count, stats.pending_count), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_concurrency_reaches_but_never_exceeds_each_lane_limit() {
    let cfg = SessionQueueConfig {
        control_max_concurrency: 2,
        query_max_concurrency: 4,
        execute_max_concurrency: 3,
        generate_max_concurrency: 1,
        ..Default::default()
    };
    let (session, _dir) = common::session(cfg.clone());
    let running: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let peak: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    // Per lane: set once as many handlers as the limit run at the same time. Until then each
    // handler waits, so the limit is reached whatever the machine's speed (no sleep to overlap
    // them); a lane that could not reach its limit would hang, not pass.
    let reached: Arc<[watch::Sender<bool>; 4]> =
        Arc::new(std::array::from_fn(|_| watch::channel(false).0));
    let mut limits = [0; 4];
    for lane in SessionLane::ALL {
        limits[lane as usize] = cfg.max_concurrency(lane);
    }
    let (r, p, full) = (running.clone(), peak.clone(), reached.clone());
    session.register_handler("work", move |task: ExternalTask| {
        let (r, p, full) = (r.clone(), p.clone(), full.clone());
        async move {
            let i = task.lane as usize;
            let now = r[i].fetch_add(1, Ordering::SeqCst) + 1;
            p[i].fetch_max(now, Ordering::SeqCst);
            if now == limits[i] {
                full[i].send_replace(true);
            }
            let mut full_rx = full[i].subscribe();
            let _ = full_rx.wait_for(|full| *full).await;
            r[i].fetch_sub(1, Ordering::SeqCst);
            ExternalTaskResult::ok(json!({}))
        }
    });
    let mut handles = Vec::new();
    for _ in 0..20 {
        for lane in SessionLane::ALL {
            handles.push(session.submit(lane, "work", json!({})).await.unwrap());
        }
    }
    for h in handles {
        assert!(h.await.unwrap().success);
    }
    for lane in SessionLane::ALL {
        assert_eq!(
            peak[lane as usize].load(Ordering::SeqCst),
            cfg.max_concurrency(lane),
            "{lane}"
        );
    }
}
