//! NATS: `NatsConfig` (how to reach the broker) and `RemoteSession` (the worker's side, with the
//! same methods as `AgentSession`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use a3s_code_core::broker::{NatsConfig, NatsTls};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::worker::{RemoteOptions, RemoteSession};
use pyo3::prelude::*;

use crate::error::CoreError;
use crate::queue::PySessionLane;
use crate::runtime;
use crate::session::{Outcomes, result_pair, seconds};
use crate::task::PyExternalTaskResult;

/// Where and how to reach NATS JetStream. Unset keywords keep the core's defaults.
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
        max_object_bytes = None, replicas = None, duplicate_window_ms = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
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
    ) -> PyResult<Self> {
        let mut cfg = NatsConfig::new(url);
        if let Some(p) = prefix {
            cfg = cfg.with_prefix(p);
        }
        if let Some(t) = token {
            cfg = cfg.with_token(t);
        }
        if let Some(u) = user {
            cfg = cfg.with_user_password(u, password.unwrap_or_default());
        }
        if let Some(k) = nkey {
            cfg = cfg.with_nkey(k);
        }
        if let Some(c) = credentials_file {
            cfg = cfg.with_credentials_file(c);
        }
        if tls_ca.is_some() || tls_cert.is_some() {
            cfg = cfg.with_tls(NatsTls {
                ca_file: tls_ca,
                client_cert: tls_cert,
                client_key: tls_key,
            });
        }
        if let Some(ms) = lease_ms {
            cfg = cfg.with_lease(Duration::from_millis(ms));
        }
        if let Some(n) = max_object_bytes {
            cfg = cfg.with_max_object_bytes(n);
        }
        if let Some(n) = replicas {
            cfg = cfg.with_replicas(n);
        }
        if let Some(ms) = duplicate_window_ms {
            cfg = cfg.with_duplicate_window(Duration::from_millis(ms));
        }
        cfg.validate().map_err(CoreError)?;
        Ok(Self { inner: cfg })
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

    fn __repr__(&self) -> String {
        format!(
            "NatsConfig(servers={:?}, prefix={:?})",
            self.inner.servers, self.inner.prefix
        )
    }
}

/// The worker's side of a session on another machine (same methods as `AgentSession`).
#[pyclass(frozen, name = "RemoteSession", module = "a3s_code")]
pub(crate) struct PyRemoteSession {
    inner: RemoteSession,
}

#[pymethods]
impl PyRemoteSession {
    /// `await RemoteSession.connect(url, session_id)`: a worker of `session_id` (`"*"` for every
    /// session). With `config` (a `NatsConfig`) for auth, TLS or a prefix; `lanes`, `labels` and
    /// `worker_id` narrow what it takes.
    #[staticmethod]
    #[pyo3(signature = (url, session_id, *, config = None, lanes = None, labels = None, worker_id = None))]
    fn connect<'py>(
        py: Python<'py>,
        url: &str,
        session_id: &str,
        config: Option<PyNatsConfig>,
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
            "*" => RemoteOptions::pool(),
            id => RemoteOptions::session(id),
        };
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
            let inner = RemoteSession::connect_with(cfg, opts)
                .await
                .map_err(CoreError)?;
            Ok(Connected(inner))
        })
    }

    /// This worker's id, reported with its results.
    #[getter]
    fn worker_id(&self) -> &str {
        self.inner.worker_id()
    }

    /// Claims tasks: without arguments what is waiting now; with `limit` / `wait` (seconds) at
    /// most `limit`, waiting up to `wait` for the first.
    #[pyo3(signature = (limit = None, wait = None))]
    fn pending_external_tasks<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
        wait: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let remote = self.inner.clone();
        let wait = seconds(wait.unwrap_or(0.0), "wait")?;
        runtime::awaitable(py, async move {
            let tasks = match limit {
                None if wait.is_zero() => remote.pending_external_tasks().await,
                limit => {
                    remote
                        .claim_external_tasks(
                            limit.unwrap_or(
                                a3s_code_core::worker::RemoteSession::DEFAULT_CLAIM_LIMIT,
                            ),
                            wait,
                        )
                        .await
                }
            };
            Ok(tasks.map_err(CoreError)?)
        })
    }

    /// Reports a task's result (stored durably, then the task is acknowledged).
    fn complete_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        result: &Bound<'py, PyExternalTaskResult>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let result = result.get().inner.clone();
        let remote = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(remote
                .complete_external_task(&task_id, result)
                .await
                .map_err(CoreError)?)
        })
    }

    /// Reports many `(task_id, ExternalTaskResult)` pairs; resolves to `None` or the exception of
    /// each.
    fn complete_external_tasks<'py>(
        &self,
        py: Python<'py>,
        results: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut batch = Vec::new();
        for item in results.try_iter()? {
            batch.push(result_pair(&item?)?);
        }
        let remote = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(Outcomes(
                remote
                    .complete_external_tasks(batch)
                    .await
                    .map_err(CoreError)?,
            ))
        })
    }

    /// Gives a task back without a result (delivered again after the retry delay).
    fn abandon_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        reason: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let remote = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(remote
                .abandon_external_task(&task_id, &reason)
                .await
                .map_err(CoreError)?)
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
        format!("RemoteSession(worker_id={:?})", self.inner.worker_id())
    }
}

/// A connected `RemoteSession`, converted under the GIL.
struct Connected(RemoteSession);

impl runtime::ToPy for Connected {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, PyRemoteSession { inner: self.0 })?.into_any())
    }
}
