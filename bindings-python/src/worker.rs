//! Workers: `execute_builtin` for hand-written Python worker loops, and the core's ready-made
//! `Worker` running the built-in tools.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use a3s_code_core::Error;
use a3s_code_core::tools::{Workspace, execute_builtin as core_execute_builtin};
use a3s_code_core::worker::{Worker, WorkerConfig, WorkerStats, builtin_handler};
use pyo3::prelude::*;

use crate::error::CoreError;
use crate::runtime::{self, ToPy};
use crate::session::PyAgentSession;
use crate::task::PyExternalTask;

/// `await execute_builtin(task, workspace, *, allow_bash=False)`: runs a task's built-in tool
/// (`task.command_type` with `task.payload`) confined to the `workspace` directory, and resolves
/// to an `ExternalTaskResult`. It never raises for a tool error: a failure is `success=False`
/// with `result["error_code"]` (`PathEscapesWorkspace`, `ToolFailed`, `TaskTimedOut`, ...).
/// `bash` runs only with `allow_bash=True`: tasks come from elsewhere, so commands are opt-in.
/// Raises `InvalidConfigError` when `workspace` is not a directory.
#[pyfunction]
#[pyo3(signature = (task, workspace, *, allow_bash = false))]
pub(crate) fn execute_builtin<'py>(
    py: Python<'py>,
    task: &Bound<'py, PyExternalTask>,
    workspace: PathBuf,
    allow_bash: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let task = task.get().inner.clone();
    let workspace = Workspace::new(workspace)
        .map_err(CoreError)?
        .with_bash(allow_bash);
    runtime::awaitable(py, async move {
        Ok(core_execute_builtin(&task, &workspace).await)
    })
}

/// Counters of a running worker.
#[pyclass(frozen, get_all, name = "WorkerStats", module = "a3s_code")]
pub(crate) struct PyWorkerStats {
    claimed: u64,
    succeeded: u64,
    failed: u64,
    skipped_expired: u64,
    rejected: u64,
    busy: u64,
}

#[pymethods]
impl PyWorkerStats {
    fn __repr__(&self) -> String {
        format!(
            "WorkerStats(claimed={}, succeeded={}, failed={}, skipped_expired={}, rejected={}, busy={})",
            self.claimed,
            self.succeeded,
            self.failed,
            self.skipped_expired,
            self.rejected,
            self.busy
        )
    }
}

impl ToPy for WorkerStats {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let stats = PyWorkerStats {
            claimed: self.claimed,
            succeeded: self.succeeded,
            failed: self.failed,
            skipped_expired: self.skipped_expired,
            rejected: self.rejected,
            busy: self.busy,
        };
        Ok(Bound::new(py, stats)?.into_any())
    }
}

/// The core's worker loop running the built-in tools on the session's External lanes, in the
/// background: long polling, a concurrency bound, batched completions, graceful shutdown.
#[pyclass(frozen, name = "Worker", module = "a3s_code")]
pub(crate) struct PyWorker {
    inner: Arc<Mutex<Option<Worker>>>,
}

#[pymethods]
impl PyWorker {
    /// Starts the loop; unset options keep the core's `WorkerConfig::default()` (see its docs).
    /// `bash` tasks fail unless `allow_bash=True`.
    #[new]
    #[pyo3(signature = (session, workspace, *, concurrency = None, poll_wait = None, allow_bash = false))]
    fn new(
        session: &Bound<'_, PyAgentSession>,
        workspace: PathBuf,
        concurrency: Option<usize>,
        poll_wait: Option<f64>,
        allow_bash: bool,
    ) -> PyResult<Self> {
        let workspace = Workspace::new(workspace)
            .map_err(CoreError)?
            .with_bash(allow_bash);
        let mut config = WorkerConfig::default();
        if let Some(n) = concurrency {
            config.concurrency = n;
        }
        if let Some(wait) = poll_wait {
            config.poll_wait = crate::session::seconds(wait, "poll_wait")?;
        }
        let source = Arc::new(session.get().inner.clone());
        let worker = runtime::enter(|| Worker::spawn(source, builtin_handler(workspace), config))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Some(worker))),
        })
    }

    /// The worker's counters now (raises `ShutDownError` after `shutdown()`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let guard = self.inner.lock().map_err(|_| CoreError(Error::ShutDown))?;
        let worker = guard.as_ref().ok_or(CoreError(Error::ShutDown))?;
        worker.stats().to_py(py)
    }

    /// Stops claiming, waits for running tasks to be reported, resolves to the final counters.
    fn shutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let worker = self.inner.lock().ok().and_then(|mut w| w.take());
        let worker = worker.ok_or(CoreError(Error::ShutDown))?;
        runtime::awaitable(py, async move { Ok(worker.shutdown().await) })
    }
}
