//! `SessionOptions`, `AgentSession` and `TaskHandle`.

use std::sync::Arc;
use std::time::Duration;

use a3s_code_core::{AgentSession, ExternalTaskResult, SessionOptions, TaskHandle};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::claim;
use crate::error::CoreError;
use crate::json;
use crate::queue::{PyEventStream, PyLaneHandlerConfig, PySessionLane, PySessionQueueConfig};
use crate::runtime::{self, ToPy};
use crate::task::PyExternalTaskResult;

/// Options of a new session; unset ones keep the core's defaults.
#[pyclass(frozen, from_py_object, name = "SessionOptions", module = "a3s_code")]
#[derive(Clone)]
pub(crate) struct PySessionOptions {
    pub(crate) inner: SessionOptions,
}

#[pymethods]
impl PySessionOptions {
    #[new]
    #[pyo3(signature = (queue_config = None, *, session_id = None, allow_bash = None, nats = None,
        metrics_addr = None, tenant = None, tenant_weight = None, tenant_max_in_flight = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        queue_config: Option<PySessionQueueConfig>,
        session_id: Option<String>,
        allow_bash: Option<bool>,
        nats: Option<crate::remote::PyNatsConfig>,
        metrics_addr: Option<String>,
        tenant: Option<String>,
        tenant_weight: Option<f64>,
        tenant_max_in_flight: Option<usize>,
    ) -> PyResult<Self> {
        let metrics_addr = metrics_addr
            .map(|a| {
                a.parse::<std::net::SocketAddr>()
                    .map_err(|e| PyValueError::new_err(format!("metrics_addr {a:?}: {e}")))
            })
            .transpose()?;
        let inner = SessionOptions {
            queue_config: queue_config.map(|c| c.inner),
            session_id,
            allow_bash,
            nats: nats.map(|n| n.inner),
            metrics_addr,
            tenant: None,
        }
        .with_tenant_parts(tenant, tenant_weight, tenant_max_in_flight)
        .map_err(CoreError)?;
        Ok(Self { inner })
    }

    /// The tenant's name (`None` when no tenant option was given: the default tenant).
    #[getter]
    fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_ref().map(|t| t.name())
    }

    /// The tenant's weight (`None` when no tenant option was given).
    #[getter]
    fn tenant_weight(&self) -> Option<f64> {
        self.inner.tenant.as_ref().map(|t| t.weight())
    }

    #[getter]
    fn tenant_max_in_flight(&self) -> Option<usize> {
        self.inner.tenant.as_ref().and_then(|t| t.max_in_flight())
    }

    #[getter]
    fn queue_config(&self) -> Option<PySessionQueueConfig> {
        self.inner
            .queue_config
            .clone()
            .map(|inner| PySessionQueueConfig { inner })
    }

    #[getter]
    fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    #[getter]
    fn allow_bash(&self) -> Option<bool> {
        self.inner.allow_bash
    }
}

/// A session: a lane queue and a workspace. Every method is safe to call concurrently.
#[pyclass(frozen, name = "AgentSession", module = "a3s_code")]
pub(crate) struct PyAgentSession {
    pub(crate) inner: AgentSession,
}

/// A number of seconds (a float) as a `Duration`; `what` names the argument in errors.
pub(crate) fn seconds(secs: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a number of seconds >= 0, got {secs}"
        ))
    })
}

#[pymethods]
impl PyAgentSession {
    /// The session id, which remote workers use to find its tasks.
    #[getter]
    fn id(&self) -> &str {
        self.inner.id()
    }

    /// The workspace root every built-in tool of this session is confined to.
    #[getter]
    fn workspace(&self) -> String {
        self.inner.workspace().root().display().to_string()
    }

    /// Sets how a lane handles the tasks it dispatches from now on (sync, as in the spec).
    ///
    /// Raises `InvalidConfigError` for a zero timeout, `ShutDownError` after `close()`.
    fn set_lane_handler(
        &self,
        py: Python<'_>,
        lane: PySessionLane,
        config: PyLaneHandlerConfig,
    ) -> PyResult<()> {
        let fut = self.inner.set_lane_handler(lane.into(), config.inner);
        Ok(runtime::block_on(py, fut)?.map_err(CoreError)?)
    }

    /// The current handler of a lane.
    fn lane_handler(&self, lane: PySessionLane) -> PyLaneHandlerConfig {
        PyLaneHandlerConfig {
            inner: self.inner.lane_handler(lane.into()),
        }
    }

    /// `await pending_external_tasks()` claims every claimable task; with `limit` and/or
    /// `wait_ms` it claims at most `limit`, waiting up to `wait_ms` for the first one (a long
    /// poll). Defaults: the core's `ClaimOptions` and `TaskSource::default_claim_limit`. `wait`
    /// (seconds) is deprecated. Raises `ShutDownError` once the session is closed.
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

    /// Reports the result of an external task; the first completion of a live task wins.
    fn complete_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        result: &Bound<'py, PyExternalTaskResult>,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::complete_one(py, &self.inner, task_id, result)
    }

    /// Reports many `(task_id, ExternalTaskResult)` pairs in one call. Resolves to a list with
    /// one entry per pair, in order: `None` when accepted, else the exception (not raised).
    fn complete_external_tasks<'py>(
        &self,
        py: Python<'py>,
        results: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::complete_many(py, &self.inner, results)
    }

    /// Gives a claimed task back without a result; the retry policy decides what follows.
    fn abandon_external_task<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
        reason: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        claim::abandon(py, &self.inner, task_id, reason)
    }

    /// What is in the queue now.
    fn queue_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move { Ok(session.queue_stats().await) })
    }

    /// Counters and latency percentiles, or `None` unless `enable_metrics` is set.
    fn queue_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move { Ok(session.queue_metrics().await) })
    }

    /// The dead-letter queue's content, oldest first (empty unless `enable_dlq` is set).
    fn dead_letters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move { Ok(session.dead_letters().await) })
    }

    /// A page of the session's tasks in one state (`"pending"`, `"in_flight"` or
    /// `"finished"`): `{"tasks": [...], "next": cursor}` (no `next` on the last page). Pass
    /// `cursor` to continue, `search` to keep ids starting with it. Raises `InvalidConfigError`
    /// for an unknown state, a bad cursor or a limit outside 1..1000.
    #[pyo3(signature = (state, cursor=None, limit=50, search=None))]
    fn tasks<'py>(
        &self,
        py: Python<'py>,
        state: String,
        cursor: Option<String>,
        limit: usize,
        search: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state: a3s_code_core::admin::TaskState = state.parse().map_err(CoreError)?;
        let query = a3s_code_core::admin::TaskQuery {
            state,
            cursor,
            limit,
            search,
        };
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            let page = session.tasks(&query).await.map_err(CoreError)?;
            Ok(Json(serde_json::to_value(page).map_err(json_error)?))
        })
    }

    /// Runs a built-in tool through its lane and waits for its result (`success` False included).
    fn tool<'py>(
        &self,
        py: Python<'py>,
        name: String,
        args: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = json::to_value(args, "args")?;
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(session.tool(&name, args).await.map_err(CoreError)?)
        })
    }

    /// Queues a task in `lane` and resolves to its `TaskHandle` at once.
    fn submit<'py>(
        &self,
        py: Python<'py>,
        lane: PySessionLane,
        command_type: String,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = json::to_value(payload, "payload")?;
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            let handle = session
                .submit(lane.into(), command_type, payload)
                .await
                .map_err(CoreError)?;
            Ok(NewHandle(handle, session))
        })
    }

    /// Submits a dead letter's task again as a new task (a new id; the same lane, command and
    /// payload), takes the letter out of the DLQ, and resolves to the new task's `TaskHandle`.
    /// Raises `TaskNotFoundError` (no dead letter has this id), `QueueFullError` (the letter
    /// stays) or `ShutDownError`.
    fn retry_dead_letter<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            let handle = session
                .retry_dead_letter(&task_id)
                .await
                .map_err(CoreError)?;
            Ok(NewHandle(handle, session))
        })
    }

    /// Deletes one dead letter. Raises `TaskNotFoundError` (no dead letter has this id) or
    /// `ShutDownError`.
    fn delete_dead_letter<'py>(
        &self,
        py: Python<'py>,
        task_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(session
                .delete_dead_letter(&task_id)
                .await
                .map_err(CoreError)?)
        })
    }

    /// Pauses a lane: nothing new is dispatched from it; tasks holding a slot finish, the
    /// backlog waits (without timing out). Idempotent. Raises `InvalidConfigError` for the
    /// Control lane.
    fn pause_lane<'py>(&self, py: Python<'py>, lane: PySessionLane) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(session.pause_lane(lane.into()).await.map_err(CoreError)?)
        })
    }

    /// Resumes a paused lane: its free slots fill from the backlog at once. Idempotent.
    fn resume_lane<'py>(
        &self,
        py: Python<'py>,
        lane: PySessionLane,
    ) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(session.resume_lane(lane.into()).await.map_err(CoreError)?)
        })
    }

    /// Cancels a queued or running task; its submitter gets `TaskCancelledError`.
    fn cancel<'py>(&self, py: Python<'py>, task_id: String) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(session.cancel(&task_id).await.map_err(CoreError)?)
        })
    }

    /// Runs the agent loop on `prompt` (model from agent.hcl, tool calls through the lanes) and
    /// resolves to a dict: `text`, `tool_calls`, `usage`, `model_call_count`, `stop_reason`.
    fn send<'py>(&self, py: Python<'py>, prompt: String) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            let response = session.send(&prompt).await.map_err(CoreError)?;
            Ok(Json(serde_json::to_value(response).map_err(json_error)?))
        })
    }

    /// Runs the agent loop on `prompt` as an async iterator of event dicts (`text_delta`,
    /// `tool_call_started`, `tool_call_finished`, `queue`); `await stream.finish()` gives what
    /// `send` would.
    fn stream(&self, py: Python<'_>, prompt: String) -> PyResult<PyAgentStream> {
        let session = self.inner.clone();
        let stream = py.detach(|| {
            let rt = runtime::runtime()?;
            let _guard = rt.enter();
            Ok::<_, PyErr>(session.stream(&prompt))
        })?;
        Ok(PyAgentStream {
            inner: Arc::new(tokio::sync::Mutex::new(Some(stream))),
        })
    }

    /// The conversation so far, as a list of message dicts (`role`: user, assistant, tool).
    fn history(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let history = serde_json::to_value(self.inner.history()).map_err(json_error)?;
        Ok(json::to_py(py, &history)?.unbind())
    }

    /// Waits until the session's broker (NATS) is connected and set up; returns at once without
    /// one. Raises `BrokerUnavailableError` after `timeout` seconds.
    #[pyo3(signature = (timeout = 10.0))]
    fn broker_ready<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        let timeout = seconds(timeout, "timeout")?;
        runtime::awaitable(py, async move {
            Ok(session.broker_ready(timeout).await.map_err(CoreError)?)
        })
    }

    /// An async iterator over the queue's events from now on (dicts tagged by `type`).
    fn events(&self) -> PyEventStream {
        PyEventStream::new(self.inner.subscribe_events())
    }

    /// Whether `close()` was called.
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the session: queued and running tasks fail with `ShutDownError`, waiting workers
    /// return. Idempotent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        runtime::awaitable(py, async move {
            session.close().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("AgentSession(id={:?})", self.inner.id())
    }
}

/// The receiving end of a submitted task: `await handle.result()`, `await handle.cancel()`.
#[pyclass(frozen, name = "TaskHandle", module = "a3s_code")]
pub(crate) struct PyTaskHandle {
    task_id: String,
    session: AgentSession,
    state: Arc<tokio::sync::Mutex<HandleState>>,
}

/// The handle until its outcome is known, then the outcome (so `result()` can be awaited again):
/// the result, or the error's code and message.
enum HandleState {
    Waiting(TaskHandle),
    Done(Result<ExternalTaskResult, (&'static str, String)>),
}

struct NewHandle(TaskHandle, AgentSession);

impl ToPy for NewHandle {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let handle = PyTaskHandle {
            task_id: self.0.task_id().to_owned(),
            session: self.1,
            state: Arc::new(tokio::sync::Mutex::new(HandleState::Waiting(self.0))),
        };
        Ok(Bound::new(py, handle)?.into_any())
    }
}

#[pymethods]
impl PyTaskHandle {
    #[getter]
    fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Waits for the outcome: an `ExternalTaskResult` (`success` False included), or raises
    /// `TaskTimedOutError`, `TaskCancelledError`, `RetriesExhaustedError`, `ShutDownError`.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        runtime::awaitable(py, async move {
            let mut state = state.lock().await;
            let outcome = match &mut *state {
                HandleState::Waiting(handle) => {
                    let outcome = handle.await.map_err(|e| (e.code(), e.to_string()));
                    *state = HandleState::Done(outcome.clone());
                    outcome
                }
                HandleState::Done(outcome) => outcome.clone(),
            };
            outcome.map_err(|(code, message)| crate::error::exception(code, message))
        })
    }

    /// Cancels the task; `result()` then raises `TaskCancelledError`.
    fn cancel<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.session.clone();
        let task_id = self.task_id.clone();
        runtime::awaitable(py, async move {
            Ok(session.cancel(&task_id).await.map_err(CoreError)?)
        })
    }

    fn __repr__(&self) -> String {
        format!("TaskHandle(task_id={:?})", self.task_id)
    }
}

/// A JSON value produced on the runtime, converted to Python objects under the GIL.
pub(crate) struct Json(pub(crate) serde_json::Value);

impl ToPy for Json {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        json::to_py(py, &self.0)
    }
}

/// The next agent event, or the end of the stream.
struct NextAgentEvent(Option<serde_json::Value>);

impl ToPy for NextAgentEvent {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let event = self
            .0
            .ok_or_else(|| pyo3::exceptions::PyStopAsyncIteration::new_err(()))?;
        json::to_py(py, &event)
    }
}

fn json_error(e: serde_json::Error) -> PyErr {
    PyTypeError::new_err(format!("cannot convert the agent's output: {e}"))
}

/// `session.stream(prompt)`: the agent loop's events as they happen.
#[pyclass(frozen, name = "AgentStream", module = "a3s_code")]
pub(crate) struct PyAgentStream {
    inner: Arc<tokio::sync::Mutex<Option<a3s_code_core::agent::run::AgentStream>>>,
}

#[pymethods]
impl PyAgentStream {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        runtime::awaitable(py, async move {
            let mut guard = inner.lock().await;
            let event = match guard.as_mut() {
                Some(stream) => stream.recv().await,
                None => None,
            };
            Ok(NextAgentEvent(
                event
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(json_error)?,
            ))
        })
    }

    /// Waits for the loop to end and resolves to what `send` would have.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        runtime::awaitable(py, async move {
            let stream = inner.lock().await.take().ok_or_else(|| {
                PyErr::new::<pyo3::exceptions::PyRuntimeError, _>("finish() was already called")
            })?;
            let response = stream.finish().await.map_err(CoreError)?;
            Ok(Json(serde_json::to_value(response).map_err(json_error)?))
        })
    }
}
