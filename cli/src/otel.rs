//! `--features otel`: task traces exported with OTLP over HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4318`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::Registry;

/// Flushes and stops the exporter when dropped.
pub(crate) struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The OpenTelemetry layer (task spans, target `a3s::task`), or `None` without an endpoint.
pub(crate) fn init() -> Option<(BoxedLayer, Guard)> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(err) => {
            eprintln!("OpenTelemetry exporter disabled: {err}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("a3s-code")
                .build(),
        )
        .build();
    // The session exports each task's root span through the global provider.
    opentelemetry::global::set_tracer_provider(provider.clone());
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("a3s-code"))
        .with_filter(tracing_subscriber::EnvFilter::new("a3s::task=debug"))
        .boxed();
    Some((layer, Guard(provider)))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
    use a3s_code_core::worker::{Worker, WorkerConfig};
    use a3s_code_core::{
        Agent, AgentConfig, ExternalTask, ExternalTaskResult, SessionOptions, SessionQueueConfig,
    };
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Capture {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_worker_span_is_a_child_of_the_session_span() {
        let spans = Capture::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

        let session = Agent::from_config(AgentConfig::default())
            .session(
                ".",
                Some(
                    SessionOptions::new().with_queue_config(SessionQueueConfig {
                        lane_handlers: [(
                            SessionLane::Query,
                            LaneHandlerConfig {
                                mode: TaskHandlerMode::External,
                                timeout_ms: 30_000,
                            },
                        )]
                        .into(),
                        ..Default::default()
                    }),
                ),
            )
            .unwrap();
        let worker = Worker::spawn(
            Arc::new(session.clone()),
            |_task: ExternalTask| async { ExternalTaskResult::ok(serde_json::json!({})) },
            WorkerConfig {
                poll_wait: Duration::from_millis(50),
                ..Default::default()
            },
        );
        let out = session
            .submit(SessionLane::Query, "x", serde_json::json!({}))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(out.success);
        worker.shutdown().await;
        session.close().await;
        let _ = provider.force_flush();

        let spans = spans.0.lock().unwrap();
        let task = spans
            .iter()
            .find(|s| s.name == "a3s.task")
            .expect("task span");
        let run = spans
            .iter()
            .find(|s| s.name == "a3s.task.run")
            .expect("run span");
        assert_eq!(run.span_context.trace_id(), task.span_context.trace_id());
        assert_eq!(run.parent_span_id, task.span_context.span_id());
    }
}
