//! NATS: `NatsConfig` (how to reach the broker) and `WorkerClient` (the worker's side of a
//! session on another machine, with the same worker methods as `AgentSession`; `RemoteSession`
//! is its deprecated old name).

use std::collections::BTreeMap;
use std::path::PathBuf;

use a3s_code_core::broker::{NatsConfig, NatsOptions};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use pyo3::prelude::*;

use crate::claim;
use crate::error::CoreError;
use crate::queue::PySessionLane;
use crate::runtime;
use crate::task::PyExternalTaskResult;

/// Where and how to reach NATS JetStream: the core's `NatsOptions` as keywords (its
/// `into_config` checks them); unset keywords keep the core's `NatsConfig::new` defaults.
#[pyclass(frozen, from_py_object, name = "NatsConfig", module = "a3s_code")]
#[derive(Clone)]
pub(crate) struct PyNatsConfig {
    pub(crate) inner: NatsConfig,
}

#[pymethods]
impl PyNatsConfig {
    #[new]
    #[pyo3(signature = (url, *, prefix = None, token = None, user = None, password = None, nkey = None,
        credentials_file = None, tls_ca = None, tls_cert = None, tls_key = None, lease_ms = None,
        max_object_bytes = None, replicas = None, duplicate_window_ms = None, inbox_prefix = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: String,
        prefix: Option<String>,
        token: Option<String>,
        user: Option<String>,
        password: Option<String>,
        nkey: Option<String>,
        credentials_file: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        lease_ms: Option<u64>,
        max_object_bytes: Option<usize>,
        replicas: Option<usize>,
        duplicate_window_ms: Option<u64>,
        inbox_prefix: Option<String>,
    ) -> PyResult<Self> {
        // No `..Default::default()`: a field added to the core fails to compile here.
        let options = NatsOptions {
            url,
            prefix,
            token,
            user,
            password,
            nkey,
            credentials_file,
            tls_ca,
            tls_cert,
            tls_key,
            lease_ms,
            max_object_bytes,
            replicas,
            duplicate_window_ms,
            inbox_prefix,
        };
        Ok(Self {
            inner: options.into_config().map_err(CoreError)?,
        })
    }

    #[getter]
    fn servers(&self) -> Vec<String> {
        self.inner.servers.clone()
    }

    #[getter]
    fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    #[getter]
    fn max_object_bytes(&self) -> usize {
        self.inner.max_object_bytes
    }

    #[getter]
    fn replicas(&self) -> usize {
        self.inner.replicas
    }

    #[getter]
    fn duplicate_window_ms(&self) -> u64 {
        self.inner.duplicate_window.as_millis() as u64
    }

    #[getter]
    fn inbox_prefix(&self) -> &str {
        &self.inner.inbox_prefix
    }

    fn __repr__(&self) -> String {
        format!(
            "NatsConfig(servers={:?}, prefix={:?})",
            self.inner.servers, self.inner.prefix
        )
    }
}

/// The worker's side of a session on another machine, over NATS (same worker methods as
/// `AgentSession`). `RemoteSession` is its deprecated old name.
#[pyclass(frozen, name = "WorkerClient", module = "a3s_code")]
pub(crate) struct PyWorkerClient {
    inner: WorkerClient,
}

#[pymethods]
impl PyWorkerClient {
    /// `await WorkerClient.connect(url, session_id)`: a worker of `session_id` (`"*"` for every
    /// session). With `config` (a `NatsConfig`) for auth, TLS or a prefix; `tenant` confines a
    /// `"*"` worker to that tenant's sessions (without it, it serves every tenant); `lanes`,
    /// `labels` and `worker_id` narrow what it takes.
    #[staticmethod]
    #[pyo3(signature = (url, session_id, *, config = None, tenant = None, lanes = None, labels = None, worker_id = None))]
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        py: Python<'py>,
        url: &str,
        session_id: &str,
        config: Option<PyNatsConfig>,
        tenant: Option<String>,
        lanes: Option<Vec<PySessionLane>>,
        labels: Option<BTreeMap<String, String>>,
        worker_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cfg = match config {
            Some(c) => NatsConfig {
                servers: NatsConfig::new(url).servers,
                ..c.inner
            },
            None => NatsConfig::new(url),
        };
        let mut opts = match session_id {
            "*" => WorkerClientOptions::pool(),
            id => WorkerClientOptions::session(id),
        };
        if let Some(t) = tenant {
            opts = opts.with_tenant(t);
        }
        if let Some(lanes) = lanes {
            opts = opts.with_lanes(lanes.into_iter().map(SessionLane::from));
        }
        for (k, v) in labels.unwrap_or_default() {
            opts = opts.with_label(k, v);
        }
        if let Some(id) = worker_id {
            opts = opts.with_worker_id(id);
        }
        runtime::awaitable(py, async move {
            let inner = WorkerClient::connect_with(cfg, opts)
                .await
                .map_err(CoreError)?;
            Ok(Connected(inner))
        })
    }

    /// `"waiting"` (no work exists for it yet), `"serving"` or `"draining"`.
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    /// This worker's id, reported with its results.
    #[getter]
    fn worker_id(&self) -> &str {
        self.inner.worker_id()
    }

    /// Claims tasks: without arguments what is waiting now; with `limit` / `wait_ms` at most
    /// `limit`, waiting up to `wait_ms` for the first. Defaults: the core's `ClaimOptions` and
    /// `WorkerClient::DEFAULT_CLAIM_LIMIT`. `wait` (seconds) is deprecated.
    #[pyo3(signature = (limit = None, wait = None, *, wait_ms = None))]
    fn pending_external_tasks<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
        wait: Option<f64>,
        wait_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::pending(py, &self.inner, limit, wait_ms, wait)
    }

    /// Reports a task's result (stored durably, then the task is acknowledged).
    fn complete_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        result: &Bound<'py, PyExternalTaskResult>,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::complete_one(py, &self.inner, task_id, result)
    }

    /// Reports many `(task_id, ExternalTaskResult)` pairs; resolves to `None` or the exception of
    /// each.
    fn complete_external_tasks<'py>(
        &self,
        py: Python<'py>,
        results: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::complete_many(py, &self.inner, results)
    }

    /// Gives a task back without a result (delivered again after the retry delay).
    fn abandon_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        reason: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::abandon(py, &self.inner, task_id, reason)
    }

    /// Whether the session this worker serves said it closed (always `False` for a pool
    /// worker).
    #[getter]
    fn is_session_closed(&self) -> bool {
        self.inner.is_session_closed()
    }

    /// Resolves once the session this worker serves says it closed (never for a pool worker; a
    /// session whose process died says nothing).
    fn session_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let remote = self.inner.clone();
        runtime::awaitable(py, async move {
            remote.session_closed().await;
            Ok(())
        })
    }

    /// Gives back every claimed task and disconnects.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let remote = self.inner.clone();
        runtime::awaitable(py, async move {
            remote.close().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("WorkerClient(worker_id={:?})", self.inner.worker_id())
    }
}

/// A connected `WorkerClient`, converted under the GIL.
struct Connected(WorkerClient);

impl runtime::ToPy for Connected {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, PyWorkerClient { inner: self.0 })?.into_any())
    }
}
