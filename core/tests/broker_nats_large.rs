//! Payloads and results larger than a NATS message go through the JetStream object store, by
//! reference; over `max_object_bytes` they are refused with `PayloadTooLarge`.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

/// Settings under `prefix`. The streams (and the payloads bucket) are kept small: a server
/// reserves each stream's `max_bytes`, and a shared test server sees many prefixes.
fn config(url: &str, prefix: &str) -> NatsConfig {
    let mut cfg = NatsConfig::new(url).with_prefix(prefix);
    cfg.stream_max_bytes = 64 << 20;
    cfg
}

async fn nats_session(nats: NatsConfig) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SessionQueueConfig {
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 30_000,
            },
        )]
        .into(),
        enable_metrics: true,
        ..Default::default()
    };
    let session = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
        )
        .unwrap();
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    (session, dir)
}

/// `len` bytes of text that differ all along, so a misplaced chunk shows.
fn blob(len: usize, seed: u64) -> String {
    let mut s = String::with_capacity(len + 32);
    let mut i = seed;
    while s.len() < len {
        s.push_str(&format!("{i:x};"));
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 8;
    }
    s.truncate(len);
    s
}

/// Messages (chunks, metadata, tombstones) left in the payloads bucket.
async fn objects_left(js: &async_nats::jetstream::Context, prefix: &str) -> u64 {
    let mut stream = js
        .get_stream(format!("OBJ_{}_OBJ_default", prefix.to_uppercase()))
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_and_results_travel_by_reference_and_are_deleted_after_use() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = config(&url, &prefix);
    let (session, _dir) = nats_session(nats.clone()).await;
    let worker = WorkerClient::connect_with(nats, WorkerClientOptions::session(session.id()))
        .await
        .unwrap();
    // Watch the envelopes go by.
    let raw = async_nats::connect(&url).await.unwrap();
    let mut tasks_seen = raw.subscribe(format!("{prefix}.task.>")).await.unwrap();
    let mut results_seen = raw.subscribe(format!("{prefix}.result.>")).await.unwrap();
    raw.flush().await.unwrap();

    let big = blob(3 * MIB, 1);
    let h = session
        .submit(
            SessionLane::Query,
            "digest",
            json!({"data": big, "small": 7}),
        )
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(task.payload["small"], 7);
    assert!(
        task.payload["data"].as_str().unwrap() == big,
        "payload intact"
    );

    let envelope: Value =
        serde_json::from_slice(&tasks_seen.next().await.unwrap().payload).unwrap();
    assert_eq!(envelope["payload"], Value::Null);
    let r = &envelope["payload_ref"];
    assert_eq!(
        r["bucket"],
        format!("{}_OBJ_default", prefix.to_uppercase())
    );
    assert_eq!(
        r["name"],
        format!("{}/{}/payload", session.id(), task.task_id)
    );
    assert!(r["size"].as_u64().unwrap() > 3 * MIB as u64);

    let answer = blob(3 * MIB, 2);
    worker
        .complete_external_task(
            &task.task_id,
            ExternalTaskResult::ok(json!({"answer": answer})),
        )
        .await
        .unwrap();
    let out = h.await.unwrap();
    assert!(out.success);
    assert!(
        out.result["answer"].as_str().unwrap() == answer,
        "result intact"
    );

    let result: Value =
        serde_json::from_slice(&results_seen.next().await.unwrap().payload).unwrap();
    assert_eq!(result["result"]["result"], Value::Null);
    assert_eq!(
        result["result_ref"]["name"],
        format!("{}/{}/result/1", session.id(), task.task_id)
    );

    // Small ones still go inline.
    let h = session
        .submit(SessionLane::Query, "digest", json!({"data": "x"}))
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    worker
        .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(h.await.unwrap().result["n"], 1);
    let envelope: Value =
        serde_json::from_slice(&tasks_seen.next().await.unwrap().payload).unwrap();
    assert_eq!(envelope["payload"]["data"], "x");
    assert!(envelope.get("payload_ref").is_none());

    // The session deleted both objects (the payload when the task ended, the result once read);
    // closing waits for the broker to finish what it was told.
    session.close().await;
    let js = async_nats::jetstream::new(raw);
    assert_eq!(objects_left(&js, &prefix).await, 0);
    worker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_limit_is_refused_at_submit_and_never_published() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = config(&url, &prefix).with_max_object_bytes(2 * MIB);
    let (session, _dir) = nats_session(nats.clone()).await;
    let raw = async_nats::connect(&url).await.unwrap();
    let mut tasks_seen = raw.subscribe(format!("{prefix}.task.>")).await.unwrap();
    raw.flush().await.unwrap();

    let err = session
        .submit(
            SessionLane::Query,
            "digest",
            json!({"data": blob(3 * MIB, 3)}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PayloadTooLarge");
    match err {
        a3s_code_core::Error::PayloadTooLarge { size, limit } => {
            assert!(size > 3 * MIB && size < 3 * MIB + 64, "{size}");
            assert_eq!(limit, 2 * MIB);
        }
        other => panic!("{other:?}"),
    }
    // Under the limit (yet over a message) is fine; and the first task published is that one.
    let h = session
        .submit(
            SessionLane::Query,
            "digest",
            json!({"data": blob(MIB + 1, 4)}),
        )
        .await
        .unwrap();
    let envelope: Value =
        serde_json::from_slice(&tasks_seen.next().await.unwrap().payload).unwrap();
    assert_eq!(envelope["task_id"], h.task_id());
    assert!(envelope["payload_ref"].is_object());
    // Lanes that do not go through NATS have no limit.
    let err = session
        .submit(
            SessionLane::Execute,
            "nothing",
            json!({"data": blob(3 * MIB, 5)}),
        )
        .await
        .map(|_| ());
    assert!(err.is_ok(), "{err:?}");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_the_task_instead_of_hanging() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = config(&url, &prefix);
    let (session, _dir) = nats_session(nats.clone()).await;
    let worker = WorkerClient::connect_with(
        nats.with_max_object_bytes(2 * MIB),
        WorkerClientOptions::session(session.id()),
    )
    .await
    .unwrap();
    let h = session
        .submit(SessionLane::Query, "digest", json!({}))
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    let err = worker
        .complete_external_task(
            &task.task_id,
            ExternalTaskResult::ok(json!({"answer": blob(3 * MIB, 6)})),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PayloadTooLarge");
    let out = tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("the task ends")
        .unwrap();
    assert!(!out.success);
    assert_eq!(out.result["error_code"], "PayloadTooLarge");
    assert!(out.error.unwrap().contains("exceeds the limit"));
    // The task was reported: nothing left to complete.
    assert_eq!(
        worker
            .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({})))
            .await
            .unwrap_err()
            .code(),
        "TaskNotFound"
    );
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(m.total_failed, 1);
    session.close().await;
    worker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_missing_object_is_reported_failed_not_lost() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = config(&url, &prefix);
    let (session, _dir) = nats_session(nats.clone()).await;
    let sid = session.id().to_owned();
    let worker = WorkerClient::connect_with(nats, WorkerClientOptions::session(&sid))
        .await
        .unwrap();
    let raw = async_nats::connect(&url).await.unwrap();
    let mut results_seen = raw
        .subscribe(format!("{prefix}.result.default.*.{sid}"))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let flusher = raw.clone();
    let js = async_nats::jetstream::new(raw);
    let hub = common::hub_id(&js, &prefix).await;
    // A task whose payload object does not exist (expired, or a buggy producer).
    let envelope = json!({
        "v": 2, "tenant": "default", "hub": hub, "task_id": "0badf00d-1", "session_id": sid, "lane": "query",
        "command_type": "read", "payload": null, "timeout_ms": 30000, "remaining_ms": 30000,
        "created_at": 0, "attempt": 1, "max_attempts": 4,
        "retry": {"strategy": "none", "max_retries": 0, "initial_delay_ms": 0, "max_delay_ms": 0},
        "payload_ref": {"bucket": format!("{}_OBJ_default", prefix.to_uppercase()),
                        "name": format!("{sid}/0badf00d-1/payload"), "size": 2000000}
    });
    js.publish(
        format!("{prefix}.task.default.query._.{sid}"),
        serde_json::to_vec(&envelope).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Claim until the worker's failed result is seen, so "not handed out" is checked on the
    // claim that met the task, however long the fetch takes. A flush on `raw` after each claim
    // lets a result published during it arrive first.
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = worker
                .claim_external_tasks(1, Duration::from_secs(1))
                .await
                .unwrap();
            assert!(got.is_empty(), "not handed out: {got:?}");
            flusher.flush().await.unwrap();
            if let Some(msg) = futures_util::FutureExt::now_or_never(results_seen.next()) {
                break msg.unwrap();
            }
        }
    })
    .await
    .expect("the worker reports the task failed");
    let result: Value = serde_json::from_slice(&seen.payload).unwrap();
    assert_eq!(result["task_id"], "0badf00d-1");
    assert_eq!(result["result"]["success"], false);
    assert_eq!(result["result"]["result"]["error_code"], "InvalidPayload");
    assert!(
        result["result"]["error"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{result}"
    );
    // And it left the work queue.
    let mut tasks = js
        .get_stream(format!("{}_TASKS_default", prefix.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(tasks.info().await.unwrap().state.messages, 0);
    session.close().await;
    worker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_worker_with_the_object_store_permissions_handles_large_tasks() {
    let prefix = test_support::unique_prefix();
    let p = &prefix;
    // The worker permissions `a3s-code auth permissions --role worker --tenant default`
    // generates: the object store of its tenant included.
    use a3s_code_core::broker::permissions::{Permissions, Role};
    let session_perms = Permissions::for_role(Role::Session, p, None).unwrap();
    let worker_perms = Permissions::for_role(Role::Worker, p, Some("default")).unwrap();
    let conf = Permissions::authorization(&[
        ("session", "s1", &session_perms),
        ("worker", "w1", &worker_perms),
    ]);
    let server = test_support::NatsServer::start_with_config(&conf);
    let nats = config(&server.url(), &prefix);
    let (session, _dir) = nats_session(nats.clone().with_user_password("session", "s1")).await;
    let worker = WorkerClient::connect_with(
        nats.with_user_password("worker", "w1")
            .with_inbox_prefix(worker_perms.inbox_prefix.clone()),
        WorkerClientOptions::session(session.id()).with_tenant("default"),
    )
    .await
    .unwrap();
    let big = blob(2 * MIB, 7);
    let h = session
        .submit(SessionLane::Query, "digest", json!({"data": big}))
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    assert!(task.payload["data"].as_str().unwrap() == big);
    worker
        .complete_external_task(&task.task_id, ExternalTaskResult::ok(json!({"echo": big})))
        .await
        .unwrap();
    let out = h.await.unwrap();
    assert!(out.result["echo"].as_str().unwrap() == big);
    session.close().await;
    worker.close().await;
}
