//! Bad messages on the broker: garbage, unknown versions, forged and oversized envelopes on the
//! task and result subjects are dropped with a logged reason; the session and the worker go on,
//! and nothing is applied that should not be.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{ExternalTaskResult, SessionOptions};
use serde_json::json;

/// A well-formed read task envelope with `head`'s fields (version, ids) on top.
fn task(head: serde_json::Value) -> Vec<u8> {
    let mut env = json!({
        "lane": "query", "command_type": "read", "payload": {"path": "x"},
        "timeout_ms": 120000, "created_at": 0, "attempt": 1, "remaining_ms": 119500,
        "max_attempts": 1,
        "retry": {"strategy": "none", "max_retries": 0, "initial_delay_ms": 0, "max_delay_ms": 0},
        "delivery": "at_least_once"
    });
    for (k, v) in head.as_object().expect("an object") {
        env[k] = v.clone();
    }
    serde_json::to_vec(&env).unwrap()
}

/// What a hostile or broken peer might publish, each with what it is.
fn garbage(session_id: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("not JSON", b"\x00\xff not json at all".to_vec()),
        ("JSON but not an object", b"[1,2,3]".to_vec()),
        ("no version", b"{\"kind\":\"task\"}".to_vec()),
        (
            "unknown version",
            serde_json::to_vec(&json!({"v": 3, "kind": "task", "task_id": "x"})).unwrap(),
        ),
        (
            "wrong field types",
            serde_json::to_vec(&json!({"v": 2, "kind": "task", "task_id": 7, "lane": []})).unwrap(),
        ),
        (
            "a version-1 task (protocol v1 and v2 never meet: refused with its reason)",
            task(json!({"v": 1, "task_id": "1a2b3c4d-6", "session_id": session_id})),
        ),
        (
            "a result for a task that does not exist",
            serde_json::to_vec(&json!({
                "v": 2, "kind": "result", "task_id": "nope-1", "session_id": session_id,
                "attempt": 1, "worker_id": "w",
                "result": {"success": true, "result": {"forged": true}, "error": null}
            }))
            .unwrap(),
        ),
        (
            "nearly the server's max payload of garbage",
            vec![b'{'; 1_000_000],
        ),
        (
            "a well-formed task of another session (its results would go elsewhere)",
            task(json!({
                "v": 2, "tenant": "default", "hub": "h1", "task_id": "1a2b3c4d-7",
                "session_id": "someone-else"
            })),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_task_and_result_subjects_is_dropped_and_work_goes_on() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let cfg = common::external_config(Default::default(), &[SessionLane::Query], 30_000);
    let (session, _dir) = common::nats_session(&url, &prefix, cfg, SessionOptions::new()).await;
    let worker = WorkerClient::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        WorkerClientOptions::session(session.id()),
    )
    .await
    .unwrap();

    // A real task first, claimed and held by the worker, so a forged result has a live target.
    let held = session
        .submit(SessionLane::Query, "read", json!({"i": -1}))
        .await
        .unwrap();
    let claimed = worker
        .claim_external_tasks(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let held_id = claimed[0].task_id.clone();

    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let sid = session.id().to_owned();
    let mut bad = garbage(&sid);
    bad.push((
        "a result for a live task from a session that is not its own",
        serde_json::to_vec(&json!({
            "v": 2, "kind": "result", "task_id": held_id, "session_id": "someone-else",
            "attempt": 1, "worker_id": "w",
            "result": {"success": true, "result": {"forged": true}, "error": null}
        }))
        .unwrap(),
    ));
    let hub = common::hub_id(&js, &prefix).await;
    for subject in [
        format!("{prefix}.task.default.query._.{sid}"),
        format!("{prefix}.result.default.{hub}.{sid}"),
    ] {
        for (what, body) in &bad {
            let ack = js
                .publish(subject.clone(), body.clone().into())
                .await
                .unwrap_or_else(|e| panic!("publishing {what}: {e}"));
            ack.await
                .unwrap_or_else(|e| panic!("storing {what} on {subject}: {e}"));
        }
    }

    // The worker keeps serving: the real tasks come through, the garbage never reaches the caller.
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(
            session
                .submit(SessionLane::Query, "read", json!({"i": i}))
                .await
                .unwrap(),
        );
    }
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while done < 20 {
        assert!(tokio::time::Instant::now() < deadline, "{done} of 20 done");
        for t in worker
            .claim_external_tasks(16, Duration::from_secs(1))
            .await
            .unwrap()
        {
            let i = t.payload["i"].as_i64().expect("a real task, not garbage");
            worker
                .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({"i": i})))
                .await
                .unwrap();
            done += 1;
        }
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().result["i"], i as i64);
    }
    // The forged result for the held task was not applied: the real one is.
    worker
        .complete_external_task(&held_id, ExternalTaskResult::ok(json!({"real": true})))
        .await
        .unwrap();
    let out = held.await.unwrap();
    assert_eq!(out.result, json!({"real": true}));

    // Nothing is left behind on the work queues: bad messages were removed, not redelivered.
    let upper = prefix.to_uppercase();
    for stream in [format!("{upper}_TASKS_default"), format!("{upper}_RESULTS")] {
        let mut left = u64::MAX;
        for _ in 0..50 {
            let mut s = js.get_stream(&stream).await.unwrap();
            left = s.info().await.unwrap().state.messages;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "{stream} still holds {left} message(s)");
    }
    session.close().await;
    worker.close().await;
}
