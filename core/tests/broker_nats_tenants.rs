//! Tenants: a tenant's cap bounds its tasks in flight across its sessions and workers; sessions
//! of one tenant that declare different weights or caps: the latest wins, with a warning.
#![cfg(feature = "nats")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use futures_util::StreamExt;
use serde_json::json;
use tracing_subscriber::layer::{Context, SubscriberExt};

fn session(nats: &NatsConfig, opts: SessionOptions) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SessionQueueConfig {
        query_max_concurrency: 16,
        ..Default::default()
    };
    let cfg = common::external_config(cfg, &[SessionLane::Query], 60_000);
    let s = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(opts.with_queue_config(cfg).with_nats(nats.clone())),
        )
        .unwrap();
    (s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_cap_bounds_its_tasks_in_flight_across_its_sessions() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = NatsConfig::new(&url).with_prefix(&prefix);
    let opts = || {
        SessionOptions::new()
            .with_tenant("capped", 1.0)
            .unwrap()
            .with_tenant_max_in_flight(3)
            .unwrap()
    };
    let (s1, _d1) = session(&nats, opts());
    let (s2, _d2) = session(&nats, opts());
    s1.broker_ready(Duration::from_secs(10)).await.unwrap();
    s2.broker_ready(Duration::from_secs(10)).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..5 {
        for s in [&s1, &s2] {
            handles.push(
                s.submit(SessionLane::Query, "x", json!({"i": i}))
                    .await
                    .unwrap(),
            );
        }
    }
    let worker = WorkerClient::connect_with(
        nats.clone(),
        WorkerClientOptions::pool()
            .with_tenant("capped")
            .with_lanes([SessionLane::Query]),
    )
    .await
    .unwrap();
    // Ten tasks wait, the worker has room for ten: the broker hands out three.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} claimed",
            held.len()
        );
        held.extend(
            worker
                .claim_external_tasks(10 - held.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    let more = worker
        .claim_external_tasks(7, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(more.is_empty(), "the cap holds: {} more", more.len());
    assert_eq!(held.len(), 3);
    // Each completion lets one more through, until all ten are done.
    let mut done = 0;
    while done < 10 {
        let t = held.pop().expect("a held task");
        worker
            .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({})))
            .await
            .unwrap();
        done += 1;
        if done < 10 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while held.len() + done < 10 && held.len() < 3 {
                assert!(tokio::time::Instant::now() < deadline);
                let got = worker
                    .claim_external_tasks(10, Duration::from_millis(500))
                    .await
                    .unwrap();
                assert!(held.len() + got.len() <= 3, "never more than 3 in flight");
                held.extend(got);
            }
        }
    }
    for h in handles {
        assert!(h.await.unwrap().success);
    }
    worker.close().await;
    s1.close().await;
    s2.close().await;
}

/// Records the message of every WARN event.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sessions_of_one_tenant_that_disagree_the_latest_wins_with_a_warning() {
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = NatsConfig::new(&url).with_prefix(&prefix);
    let raw = async_nats::connect(&url).await.unwrap();
    let mut bells = raw.subscribe(format!("{prefix}.ready.acme")).await.unwrap();
    raw.flush().await.unwrap();

    let (first, _d1) = session(
        &nats,
        SessionOptions::new().with_tenant("acme", 1.0).unwrap(),
    );
    first.broker_ready(Duration::from_secs(10)).await.unwrap();
    let (second, _d2) = session(
        &nats,
        SessionOptions::new().with_tenant("acme", 3.0).unwrap(),
    );
    second.broker_ready(Duration::from_secs(10)).await.unwrap();
    assert!(
        warnings
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("the latest wins")),
        "{:?}",
        warnings.0.lock().unwrap()
    );
    // Workers hear the latest weight in the tenant's doorbells, whichever session rings.
    let _h = first
        .submit(SessionLane::Query, "x", json!({}))
        .await
        .unwrap();
    let bell = tokio::time::timeout(Duration::from_secs(10), bells.next())
        .await
        .unwrap()
        .unwrap();
    let bell: serde_json::Value = serde_json::from_slice(&bell.payload).unwrap();
    assert_eq!(bell["weight"], 3.0, "{bell}");
    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_server_deleted_for_inactivity_is_created_again() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let mut nats = NatsConfig::new(&url).with_prefix(&prefix);
    nats.inactive_threshold = Duration::from_secs(1);
    let (s, _dir) = session(&nats, SessionOptions::new());
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let first = s
        .submit(SessionLane::Query, "read", json!({"n": 1}))
        .await
        .unwrap();
    // Nobody pulls: the server deletes the tenant's pool consumer after a second.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = js
        .get_stream(format!("{}_TASKS_default", prefix.to_uppercase()))
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if stream.info().await.unwrap().state.consumer_count == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the server never deleted the idle consumer");
    // The next publish finds the consumer old and creates it again: both tasks are served.
    let second = s
        .submit(SessionLane::Query, "read", json!({"n": 2}))
        .await
        .unwrap();
    let worker = WorkerClient::connect_with(nats.clone(), WorkerClientOptions::pool())
        .await
        .unwrap();
    let mut done = 0;
    while done < 2 {
        let tasks = worker
            .claim_external_tasks(2, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!tasks.is_empty(), "no task reached the worker");
        for t in tasks {
            worker
                .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({})))
                .await
                .unwrap();
            done += 1;
        }
    }
    assert!(first.await.unwrap().success);
    assert!(second.await.unwrap().success);
    s.close().await;
}
