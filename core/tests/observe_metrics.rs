//! `/metrics` and `/healthz` of a session: the counters, gauges and histograms say what was done.

use std::time::Duration;

use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, SubmitOptions, TaskHandlerMode};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, Error, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use serde_json::json;
use test_support::{http_get, metric};

fn session(cfg: SessionQueueConfig) -> (AgentSession, String) {
    let session = Agent::from_config(AgentConfig::default())
        .session(
            ".",
            Some(
                SessionOptions::new()
                    .with_queue_config(cfg)
                    .with_metrics_addr("127.0.0.1:0".parse().unwrap()),
            ),
        )
        .unwrap();
    let base = format!("http://{}", session.metrics_addr().unwrap());
    (session, base)
}

fn external(lane: SessionLane, concurrency: usize) -> SessionQueueConfig {
    let mut cfg = SessionQueueConfig {
        lane_handlers: [(
            lane,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 30_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    match lane {
        SessionLane::Query => cfg.query_max_concurrency = concurrency,
        SessionLane::Execute => cfg.execute_max_concurrency = concurrency,
        _ => unreachable!(),
    }
    cfg
}

#[tokio::test]
async fn the_counters_match_the_work_done() {
    // enable_metrics is left off: serving metrics turns it on.
    let (session, base) = session(external(SessionLane::Query, 4));
    assert!(session.queue_config().enable_metrics);

    // A worker that completes "ok" tasks, fails "bad" ones and never answers "stall" ones.
    let worker = session.clone();
    let worker = tokio::spawn(async move {
        while let Ok(tasks) = worker.claim_external_tasks(8, Duration::from_secs(5)).await {
            for task in tasks {
                let result = match task.command_type.as_str() {
                    "ok" => ExternalTaskResult::ok(json!({})),
                    "bad" => ExternalTaskResult::err("no"),
                    _ => continue,
                };
                worker
                    .complete_external_task(&task.task_id, result)
                    .await
                    .unwrap();
            }
        }
    });
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(
            session
                .submit(SessionLane::Query, "ok", json!({ "i": i }))
                .await
                .unwrap(),
        );
    }
    handles.push(
        session
            .submit(SessionLane::Query, "bad", json!({}))
            .await
            .unwrap(),
    );
    for _ in 0..2 {
        let short = SubmitOptions::new().with_timeout_ms(50);
        handles.push(
            session
                .submit_with(SessionLane::Query, "stall", json!({}), short)
                .await
                .unwrap(),
        );
    }
    let (mut ok, mut failed, mut timed_out) = (0, 0, 0);
    for h in handles {
        match h.await {
            Ok(r) if r.success => ok += 1,
            Ok(_) => failed += 1,
            Err(Error::TaskTimedOut { .. }) => timed_out += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, failed, timed_out), (10, 1, 2));

    let (status, scrape) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let sid = session.id().to_owned();
    let q = |name: &str| metric(&scrape, name, &[("session", &sid), ("lane", "query")]);
    assert_eq!(q("a3s_tasks_completed_total"), Some(10.0), "{scrape}");
    assert_eq!(q("a3s_tasks_failed_total"), Some(1.0));
    assert_eq!(q("a3s_tasks_timed_out_total"), Some(2.0));
    assert_eq!(q("a3s_tasks_retried_total"), Some(0.0));
    assert_eq!(q("a3s_tasks_dead_lettered_total"), Some(0.0));
    assert_eq!(q("a3s_lane_pending_tasks"), Some(0.0));
    assert_eq!(q("a3s_lane_in_flight_tasks"), Some(0.0));
    assert_eq!(q("a3s_lane_capacity_tasks"), Some(4.0));
    // Latency and run time are recorded for results (11), queue wait for every dispatch (13).
    assert_eq!(q("a3s_task_latency_seconds_count"), Some(11.0));
    assert_eq!(q("a3s_task_run_seconds_count"), Some(11.0));
    assert_eq!(q("a3s_task_queue_wait_seconds_count"), Some(13.0));
    let inf = [("session", sid.as_str()), ("lane", "query"), ("le", "+Inf")];
    assert_eq!(
        metric(&scrape, "a3s_task_latency_seconds_bucket", &inf),
        Some(11.0)
    );
    assert!(q("a3s_task_latency_seconds_sum").unwrap() > 0.0);
    assert!(
        metric(
            &scrape,
            "a3s_task_latency_quantile_seconds",
            &[("lane", "query"), ("quantile", "0.99")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        metric(
            &scrape,
            "a3s_lane_info",
            &[("lane", "query"), ("mode", "external")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&scrape, "a3s_session_open", &[("session", &sid)]),
        Some(1.0)
    );
    // No broker: no broker gauge.
    assert_eq!(metric(&scrape, "a3s_session_broker_ready", &[]), None);
    // The scrape follows the Prometheus conventions.
    assert!(scrape.contains("# TYPE a3s_tasks_completed_total counter"));
    assert!(scrape.contains("# TYPE a3s_task_latency_seconds histogram"));
    assert_eq!(
        scrape,
        session.metrics_text().replace("\r", ""),
        "same text in process"
    );

    session.close().await;
    worker.await.unwrap();
}

#[tokio::test]
async fn a_stuck_lane_shows_its_backlog() {
    let (session, base) = session(external(SessionLane::Execute, 1));
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(
            session
                .submit(SessionLane::Execute, "bash", json!({}))
                .await
                .unwrap(),
        );
    }
    // Nobody claims: one task holds the only slot, two wait.
    let (_, scrape) = http_get(&format!("{base}/metrics")).await;
    let e = |name: &str| metric(&scrape, name, &[("lane", "execute")]);
    assert_eq!(e("a3s_lane_pending_tasks"), Some(2.0), "{scrape}");
    assert_eq!(e("a3s_lane_in_flight_tasks"), Some(1.0));
    assert_eq!(e("a3s_lane_external_tasks"), Some(1.0));
    assert_eq!(e("a3s_lane_capacity_tasks"), Some(1.0));
    let age = e("a3s_lane_oldest_pending_age_seconds").unwrap();
    assert!((0.0..30.0).contains(&age), "{age}");
    assert_eq!(e("a3s_task_queue_wait_seconds_count"), Some(1.0));
    assert_eq!(e("a3s_tasks_completed_total"), Some(0.0));
    session.close().await;
}

#[tokio::test]
async fn worker_slots_needed_rise_with_backlog_and_in_flight_and_fall_to_zero() {
    let (session, base) = session(external(SessionLane::Execute, 2));
    let needed = |scrape: &str, labels: &str| {
        metric(
            scrape,
            "a3s_lane_worker_slots_needed",
            &[("lane", "execute"), ("labels", labels)],
        )
    };
    let (_, idle) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(needed(&idle, ""), Some(0.0), "{idle}");
    // Labelled with the session's tenant, so a tenant's pool can scale on its own demand.
    assert_eq!(
        metric(
            &idle,
            "a3s_lane_worker_slots_needed",
            &[("lane", "execute"), ("tenant", "default")]
        ),
        Some(0.0)
    );
    // Internal lanes need no workers: no series for them.
    assert_eq!(
        metric(&idle, "a3s_lane_worker_slots_needed", &[("lane", "query")]),
        None
    );

    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(
            session
                .submit(SessionLane::Execute, "bash", json!({}))
                .await
                .unwrap(),
        );
    }
    let eu = SubmitOptions::new().with_label("region", "eu");
    handles.push(
        session
            .submit_with(SessionLane::Execute, "bash", json!({}), eu)
            .await
            .unwrap(),
    );
    // 2 slots in flight (out at workers) and 2 waiting: all four need a worker.
    let (_, busy) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(needed(&busy, ""), Some(3.0), "{busy}");
    assert_eq!(needed(&busy, "region=eu"), Some(1.0), "{busy}");

    // A worker takes and finishes everything: back to zero.
    let mut done = 0;
    while done < 4 {
        for t in session
            .claim_external_tasks(8, Duration::from_secs(5))
            .await
            .unwrap()
        {
            session
                .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({})))
                .await
                .unwrap();
            done += 1;
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let (_, after) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(needed(&after, ""), Some(0.0), "{after}");
    assert_eq!(
        needed(&after, "region=eu"),
        None,
        "an empty label set leaves: {after}"
    );
    session.close().await;
}

#[tokio::test(start_paused = true)]
async fn the_backlog_age_grows_while_the_lane_is_stuck() {
    let session = Agent::from_config(AgentConfig::default())
        .session(
            ".",
            Some(SessionOptions::new().with_queue_config(external(SessionLane::Execute, 1))),
        )
        .unwrap();
    let _a = session
        .submit(SessionLane::Execute, "x", json!({}))
        .await
        .unwrap();
    let _b = session
        .submit(SessionLane::Execute, "x", json!({}))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    let text = session.metrics_text();
    let age = metric(
        &text,
        "a3s_lane_oldest_pending_age_seconds",
        &[("lane", "execute")],
    );
    assert_eq!(age, Some(2.5), "{text}");
    // Without enable_metrics (and no endpoint) there are gauges but no counters.
    assert_eq!(metric(&text, "a3s_tasks_completed_total", &[]), None);
    session.close().await;
}

#[tokio::test]
async fn healthz_follows_the_session() {
    let (session, base) = session(SessionQueueConfig::default());
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);
    assert!(session.is_healthy().await);
    session.close().await;
    let (status, body) = http_get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.trim()), (503, "unavailable"));
    let (_, scrape) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(metric(&scrape, "a3s_session_open", &[]), Some(0.0));
    assert_eq!(http_get(&format!("{base}/nothing")).await.0, 404);

    // The endpoint stops with the last handle.
    let addr = session.metrics_addr().unwrap();
    drop(session);
    let mut stopped = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            stopped = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(stopped, "the metrics endpoint outlived its session");
}

#[tokio::test]
async fn a_busy_address_fails_the_open() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Agent::from_config(AgentConfig::default())
        .session(
            ".",
            Some(SessionOptions::new().with_metrics_addr(taken.local_addr().unwrap())),
        )
        .unwrap_err();
    assert_eq!(err.code(), "Io");
}

#[tokio::test]
async fn a_draining_worker_is_healthy_but_not_ready() {
    use a3s_code_core::tools::Workspace;
    use a3s_code_core::worker::{Worker, WorkerConfig, builtin_handler};
    let (session, _) = session(external(SessionLane::Query, 2));
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::spawn(
        std::sync::Arc::new(session.clone()),
        builtin_handler(Workspace::new(dir.path()).unwrap()),
        WorkerConfig::default(),
    );
    let server = worker
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (status, body) = http_get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.trim()), (200, "ready serving"));
    worker.initiate_shutdown();
    let (status, body) = http_get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.trim()), (503, "not ready draining"));
    let (status, body) = http_get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.trim()), (200, "ok draining"));
    worker.shutdown().await;
    session.close().await;
}
