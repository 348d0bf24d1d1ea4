//! Observability across NATS: redeliveries counted, the broker's view of a session, broker
//! readiness in `/healthz`. (The trace across NATS: observe_trace.rs.)
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::observe::{BrokerInspector, TraceContext};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions};
use serde_json::json;
use test_support::{http_get, metric};

/// A session whose Query lane is External over NATS, serving `/metrics` on a free port.
async fn nats_session(url: &str, prefix: &str) -> (AgentSession, tempfile::TempDir) {
    let config = common::external_config(Default::default(), &[SessionLane::Query], 30_000);
    let metrics = SessionOptions::new().with_metrics_addr("127.0.0.1:0".parse().unwrap());
    common::nats_session(url, prefix, config, metrics).await
}

#[tokio::test]
async fn redeliveries_are_counted_and_visible_on_the_broker() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir) = nats_session(&url, &prefix).await;
    let remote = WorkerClient::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        WorkerClientOptions::session(session.id()),
    )
    .await
    .unwrap();
    let handle = session
        .submit(SessionLane::Query, "x", json!({}))
        .await
        .unwrap();

    // The first attempt is given back: delivered again, attempt 2.
    let first = remote
        .claim_external_tasks(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first[0].attempt, 1);
    assert_eq!(
        first[0].trace_context(),
        TraceContext::for_task(session.id(), handle.task_id()),
        "the header's context"
    );

    // While it is held, the broker shows it on a worker.
    let inspector = BrokerInspector::connect(NatsConfig::new(&url).with_prefix(&prefix))
        .await
        .unwrap();
    let seen = inspector.session("default", session.id()).await.unwrap();
    assert!(seen.found && seen.own_consumers, "its worker attached");
    assert_eq!(seen.per_lane[&SessionLane::Query].ack_pending_count, 1);
    assert_eq!(seen.per_lane[&SessionLane::Query].pending_count, 0);

    remote
        .abandon_external_task(&first[0].task_id, "worker restarting")
        .await
        .unwrap();
    let second = remote
        .claim_external_tasks(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);
    remote
        .complete_external_task(&second[0].task_id, ExternalTaskResult::ok(json!({})))
        .await
        .unwrap();
    assert!(handle.await.unwrap().success);

    let text = session.metrics_text();
    let q = |name: &str| metric(&text, name, &[("lane", "query")]);
    assert_eq!(q("a3s_tasks_redelivered_total"), Some(1.0), "{text}");
    assert_eq!(q("a3s_tasks_retried_total"), Some(1.0));
    assert_eq!(q("a3s_tasks_completed_total"), Some(1.0));

    let after = inspector.session("default", session.id()).await.unwrap();
    let q = &after.per_lane[&SessionLane::Query];
    assert_eq!((q.pending_count, q.ack_pending_count), (0, 0));
    assert_eq!(q.delivered_count, 2);
    assert!(q.redelivered_count <= 1);
    remote.close().await;
    session.close().await;
    let gone = inspector.session("default", session.id()).await.unwrap();
    assert!(
        gone.found && !gone.own_consumers,
        "a closed session deletes its own consumers"
    );
}

#[tokio::test]
async fn healthz_is_503_while_the_broker_is_unreachable() {
    let port = test_support::free_port();
    let session = Agent::from_config(AgentConfig::default())
        .session(
            ".",
            Some(
                SessionOptions::new()
                    .with_nats(NatsConfig::new(format!("nats://127.0.0.1:{port}")))
                    .with_metrics_addr("127.0.0.1:0".parse().unwrap()),
            ),
        )
        .unwrap();
    let base = format!("http://{}", session.metrics_addr().unwrap());
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 503);
    let (_, scrape) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(metric(&scrape, "a3s_session_broker_ready", &[]), Some(0.0));
    assert_eq!(metric(&scrape, "a3s_session_open", &[]), Some(1.0));
    session.close().await;
}
