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
