//! `ExternalTask` and `ExternalTaskResult`.

use a3s_code_core::{ExternalTask, ExternalTaskResult};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::json;
use crate::queue::PySessionLane;
use crate::runtime::ToPy;

/// A unit of work handed to a worker: one tool call or custom command.
#[pyclass(frozen, name = "ExternalTask", module = "a3s_code")]
pub(crate) struct PyExternalTask {
    pub(crate) inner: ExternalTask,
}

#[pymethods]
impl PyExternalTask {
    /// A task whose deadline is `timeout_ms` from now, first attempt (for workers that build
    /// their own tasks, e.g. to run `execute_builtin`).
    #[new]
    fn new(
        task_id: String,
        session_id: String,
        lane: PySessionLane,
        command_type: String,
        payload: &Bound<'_, PyAny>,
        timeout_ms: u64,
    ) -> PyResult<Self> {
        let payload = json::to_value(payload, "payload")?;
        let inner = ExternalTask::new(
            task_id,
            session_id,
            lane.into(),
            command_type,
            payload,
            timeout_ms,
        );
        Ok(Self { inner })
    }

    #[getter]
    fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    #[getter]
    fn session_id(&self) -> &str {
        &self.inner.session_id
    }

    #[getter]
    fn lane(&self) -> PySessionLane {
        self.inner.lane.into()
    }

    #[getter]
    fn command_type(&self) -> &str {
        &self.inner.command_type
    }

    /// The arguments, as a new dict on every access.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json::to_py(py, &self.inner.payload)
    }

    #[getter]
    fn timeout_ms(&self) -> u64 {
        self.inner.timeout_ms
    }

    #[getter]
    fn created_at(&self) -> u64 {
        self.inner.created_at
    }

    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the task's deadline has passed: a worker should not start it.
    fn is_timed_out(&self) -> bool {
        self.inner.is_timed_out()
    }

    /// Milliseconds left before the deadline (0 once it has passed).
    fn remaining_ms(&self) -> u64 {
        self.inner.remaining_ms()
    }

    fn __repr__(&self) -> String {
        let t = &self.inner;
        format!(
            "ExternalTask(task_id={:?}, session_id={:?}, lane=SessionLane.{}, command_type={:?}, payload={}, timeout_ms={}, created_at={}, attempt={})",
            t.task_id,
            t.session_id,
            t.lane.as_str().to_uppercase(),
            t.command_type,
            t.payload,
            t.timeout_ms,
            t.created_at,
            t.attempt
        )
    }
}

/// What a worker reports for a task.
#[pyclass(frozen, eq, name = "ExternalTaskResult", module = "a3s_code")]
#[derive(PartialEq)]
pub(crate) struct PyExternalTaskResult {
    pub(crate) inner: ExternalTaskResult,
}

#[pymethods]
impl PyExternalTaskResult {
    /// `result` is any JSON value (usually a dict); omitted, it is `None` as on the wire.
    #[new]
    #[pyo3(signature = (success, result = None, error = None))]
    fn new(
        success: bool,
        result: Option<&Bound<'_, PyAny>>,
        error: Option<String>,
    ) -> PyResult<Self> {
        let result = match result {
            Some(r) => json::to_value(r, "result")?,
            None => serde_json::Value::Null,
        };
        Ok(Self {
            inner: ExternalTaskResult {
                success,
                result,
                error,
            },
        })
    }

    #[getter]
    fn success(&self) -> bool {
        self.inner.success
    }

    /// The output, as a new object on every access.
    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json::to_py(py, &self.inner.result)
    }

    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }

    fn __repr__(&self) -> String {
        let r = &self.inner;
        format!(
            "ExternalTaskResult(success={}, result={}, error={})",
            if r.success { "True" } else { "False" },
            r.result,
            r.error
                .as_ref()
                .map_or_else(|| "None".to_owned(), |e| format!("{e:?}"))
        )
    }
}

impl ToPy for ExternalTaskResult {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, PyExternalTaskResult { inner: self })?.into_any())
    }
}

impl ToPy for Vec<ExternalTask> {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let list = PyList::empty(py);
        for inner in self {
            list.append(Bound::new(py, PyExternalTask { inner })?)?;
        }
        Ok(list.into_any())
    }
}

/// `()` resolves to `None`.
impl ToPy for () {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(py.None().into_bound(py))
    }
}

impl ToPy for String {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(PyString::new(py, &self).into_any())
    }
}
