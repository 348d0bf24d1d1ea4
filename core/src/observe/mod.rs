//! Observability: Prometheus metrics, `/metrics`, `/healthz` and `/readyz` endpoints, and task
//! tracing.
//!
//! - A session opened with [`SessionOptions::with_metrics_addr`](crate::SessionOptions::with_metrics_addr)
//!   serves `/metrics` (its lanes and counters) and `/healthz` (200 while it is open and its
//!   broker, if any, is ready; 503 otherwise). [`AgentSession::metrics_text`](crate::AgentSession::metrics_text)
//!   gives the same text for your own endpoint.
//! - A [`Worker`](crate::worker::Worker) serves its own with
//!   [`Worker::serve_metrics`](crate::worker::Worker::serve_metrics) (`a3s-code worker
//!   --metrics-addr`): tasks run, busy slots, heartbeat age, broker connection.
//! - Tasks carry a W3C trace context across NATS ([`TraceContext`], module [`trace`]), and
//!   their life is a set of `tracing` spans (target `a3s::task`).
//!
//! Gauges are read from the scheduler's own state at scrape time, so serving metrics adds no
//! work per task. The metric names are listed in `docs/ARCHITECTURE.md` ("Metrics").

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::future::BoxFuture;

use crate::error::{Error, Result};

pub(crate) mod prometheus;
pub use crate::trace;

#[cfg(feature = "nats")]
mod broker_stats;
#[cfg(feature = "nats")]
pub use broker_stats::{BrokerInspector, BrokerLaneStats, BrokerSessionStats};

pub use prometheus::{CONTENT_TYPE, WorkerStats};
pub use trace::TraceContext;

/// What a [`MetricsServer`] serves.
///
/// Implemented by the session and the worker; implement it to serve something else (or both
/// at once) on one address.
pub trait Exporter: Send + Sync + 'static {
    /// The metrics in the Prometheus text format (0.0.4).
    fn render(&self) -> String;
    /// Whether `/healthz` answers 200 (else 503).
    fn healthy(&self) -> BoxFuture<'_, bool>;
    /// What `/healthz` says besides its status (a worker: `waiting`, `serving` or `draining`).
    fn health_detail(&self) -> Option<String> {
        None
    }
    /// Whether `/readyz` answers 200 (else 503): healthy and willing to take work (a worker
    /// that drains is healthy but not ready). Default: as `/healthz`.
    fn ready(&self) -> BoxFuture<'_, bool> {
        self.healthy()
    }
}

/// A small HTTP server for `GET /metrics` and `GET /healthz`. It stops when dropped.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use a3s_code_core::observe::{Exporter, MetricsServer};
/// use futures_util::future::BoxFuture;
///
/// struct Up;
/// impl Exporter for Up {
///     fn render(&self) -> String { "# TYPE up gauge\nup 1\n".into() }
///     fn healthy(&self) -> BoxFuture<'_, bool> { Box::pin(async { true }) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> a3s_code_core::Result<()> {
/// let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(Up))?;
/// println!("scrape http://{}/metrics", server.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `exporter` on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the address cannot be bound, [`Error::InvalidConfig`] outside a
    /// tokio runtime.
    pub fn start(addr: SocketAddr, exporter: Arc<dyn Exporter>) -> Result<Self> {
        Ok(Bound::bind(addr)?.serve(exporter))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bound listener, not yet serving: binding can fail, serving cannot.
pub(crate) struct Bound {
    listener: std::net::TcpListener,
    runtime: tokio::runtime::Handle,
}

impl Bound {
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_config("a metrics endpoint must be started inside a tokio runtime")
        })?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, runtime })
    }

    pub(crate) fn serve(self, exporter: Arc<dyn Exporter>) -> MetricsServer {
        let local_addr = self
            .listener
            .local_addr()
            .expect("a bound socket has an address");
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(exporter);
        let listener = self.listener;
        let task = self.runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint could not start");
                    return;
                }
            };
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "metrics endpoint stopped");
            }
        });
        tracing::debug!(%local_addr, "serving /metrics and /healthz");
        MetricsServer {
            local_addr,
            task: task.abort_handle(),
        }
    }
}

async fn metrics(State(exporter): State<Arc<dyn Exporter>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], exporter.render())
}

async fn readyz(State(exporter): State<Arc<dyn Exporter>>) -> impl IntoResponse {
    let detail = exporter
        .health_detail()
        .map_or_else(String::new, |d| format!(" {d}"));
    if exporter.ready().await {
        (StatusCode::OK, format!("ready{detail}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready{detail}\n"),
        )
    }
}

async fn healthz(State(exporter): State<Arc<dyn Exporter>>) -> impl IntoResponse {
    let detail = exporter
        .health_detail()
        .map_or_else(String::new, |d| format!(" {d}"));
    if exporter.healthy().await {
        (StatusCode::OK, format!("ok{detail}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unavailable{detail}\n"),
        )
    }
}
