//! One trace id on both sides of a task crossing NATS, the `traceparent` header on the wire, and
//! the worker's `/metrics` and `/healthz`. Alone in its test binary: a thread-local tracing
//! subscriber must not race with other tests registering the same callsites.
#![cfg(feature = "nats")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::observe::TraceContext;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{Worker, WorkerClient, WorkerClientOptions, WorkerConfig};
use a3s_code_core::{AgentSession, ExternalTask, ExternalTaskResult, SessionOptions};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use test_support::{http_get, metric};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span seen: its name and its fields (as text).
type SpanSeen = (String, BTreeMap<String, String>);

/// Spans seen, in creation order.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<SpanSeen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The index of a span in [`Captured`], kept in the span's extensions.
struct Index(usize);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != "a3s::task" {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock();
        spans.push((attrs.metadata().name().to_owned(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(spans.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Index(i)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock()[i].1));
    }
}

impl Captured {
    fn find(&self, name: &str, task_id: &str) -> Option<BTreeMap<String, String>> {
        self.0
            .lock()
            .iter()
            .find(|(n, f)| n == name && f.get("task_id").map(String::as_str) == Some(task_id))
            .map(|(_, f)| f.clone())
    }
}

/// A session whose Query lane is External over NATS, serving `/metrics` on a free port.
async fn nats_session(url: &str, prefix: &str) -> (AgentSession, tempfile::TempDir) {
    let config = common::external_config(Default::default(), &[SessionLane::Query], 30_000);
    let metrics = SessionOptions::new().with_metrics_addr("127.0.0.1:0".parse().unwrap());
    common::nats_session(url, prefix, config, metrics).await
}

#[tokio::test]
async fn one_trace_joins_the_session_and_the_worker() {
    let captured = Captured::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let (session, _dir) = nats_session(&url, &prefix).await;

    // Watch the wire: the task message and its headers.
    let client = async_nats_client(&url).await;
    let mut wire = client.subscribe(format!("{prefix}.task.>")).await.unwrap();
    client.flush().await.unwrap();

    let remote = WorkerClient::connect_with(
        NatsConfig::new(&url).with_prefix(&prefix),
        WorkerClientOptions::session(session.id()).with_worker_id("w-trace"),
    )
    .await
    .unwrap();
    let worker = Worker::spawn(
        Arc::new(remote.clone()),
        |task: ExternalTask| async move { ExternalTaskResult::ok(json!({ "echo": task.payload })) },
        WorkerConfig::default(),
    );
    let metrics = worker
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();

    let handle = session
        .submit(SessionLane::Query, "echo", json!({ "n": 1 }))
        .await
        .unwrap();
    let task_id = handle.task_id().to_owned();
    let out = handle.await.unwrap();
    assert!(out.success);

    // On the wire: the session's context of this task.
    let expected = TraceContext::for_task(session.id(), &task_id);
    let msg = tokio::time::timeout(Duration::from_secs(5), wire.next())
        .await
        .unwrap()
        .unwrap();
    let header = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .unwrap();
    assert_eq!(header.as_str(), expected.to_string());

    // In the spans: one trace id; the worker's run span is a child of the session's task span.
    let session_span = captured
        .find("a3s.task", &task_id)
        .expect("the session's span");
    let mut worker_span = None;
    for _ in 0..500 {
        worker_span = captured.find("a3s.task.run", &task_id);
        if worker_span.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let worker_span = worker_span.expect("the worker's span");
    assert_eq!(session_span["trace_id"], expected.trace_id());
    assert_eq!(worker_span["trace_id"], session_span["trace_id"]);
    assert_eq!(worker_span["parent_span_id"], session_span["span_id"]);
    assert_ne!(worker_span["span_id"], session_span["span_id"]);
    assert_eq!(worker_span["lane"], "query");
    assert_eq!(worker_span["attempt"], "1");

    // The worker's /metrics and /healthz.
    let base = format!("http://{}", metrics.local_addr());
    let mut scrape = String::new();
    for _ in 0..500 {
        scrape = http_get(&format!("{base}/metrics")).await.1;
        let done = metric(
            &scrape,
            "a3s_worker_tasks_succeeded_total",
            &[("worker", "w-trace"), ("lane", "query")],
        );
        if done == Some(1.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let w = |name: &str| metric(&scrape, name, &[("worker", "w-trace")]);
    assert_eq!(
        metric(
            &scrape,
            "a3s_worker_tasks_succeeded_total",
            &[("lane", "query")]
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            "a3s_worker_tasks_claimed_total",
            &[("lane", "query")]
        ),
        Some(1.0)
    );
    assert_eq!(w("a3s_worker_connected"), Some(1.0));
    assert_eq!(w("a3s_worker_slots"), Some(8.0));
    assert!(w("a3s_worker_busy_slots").is_some());
    assert!(w("a3s_worker_heartbeat_age_seconds").unwrap() < 30.0);
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);

    // The session's: its broker is ready.
    let session_base = format!("http://{}", session.metrics_addr().unwrap());
    let (status, scrape) = http_get(&format!("{session_base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&scrape, "a3s_session_broker_ready", &[]), Some(1.0));
    assert_eq!(
        metric(&scrape, "a3s_tasks_completed_total", &[("lane", "query")]),
        Some(1.0)
    );
    assert_eq!(http_get(&format!("{session_base}/healthz")).await.0, 200);

    worker.shutdown().await;
    remote.close().await;
    session.close().await;
}

async fn async_nats_client(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.unwrap()
}
