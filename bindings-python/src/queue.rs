//! Lanes, handler modes, the queue configuration, statistics, metrics, dead letters and events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use a3s_code_core::queue::{
    DeadLetter, EventStream, LaneHandlerConfig, LaneMetrics, QueueEvent, QueueMetrics, QueueStats,
    RetryPolicy, RetryStrategy, SessionLane, TaskHandlerMode,
};
use a3s_code_core::{Error, SessionQueueConfig};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::CoreError;
use crate::json;
use crate::runtime::{self, ToPy};

/// Declares a Python enum mirroring a core enum, with conversions both ways.
macro_rules! mirror_enum {
    ($(#[$meta:meta])* $py:ident as $name:literal <=> $core:ident { $($variant:ident = $upper:literal),* $(,)? }) => {
        $(#[$meta])*
        #[pyclass(eq, eq_int, frozen, hash, from_py_object, name = $name, module = "a3s_code")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $py {
            $(#[pyo3(name = $upper)] $variant,)*
        }

        impl From<$py> for $core {
            fn from(v: $py) -> Self {
                match v { $($py::$variant => $core::$variant,)* }
            }
        }

        impl From<$core> for $py {
            fn from(v: $core) -> Self {
                match v { $($core::$variant => $py::$variant,)* }
            }
        }
    };
}

mirror_enum! {
    /// The four priority lanes of a session; a lower value runs first.
    PySessionLane as "SessionLane" <=> SessionLane {
        Control = "CONTROL", Query = "QUERY", Execute = "EXECUTE", Generate = "GENERATE",
    }
}

mirror_enum! {
    /// How a lane runs its tasks.
    PyTaskHandlerMode as "TaskHandlerMode" <=> TaskHandlerMode {
        Internal = "INTERNAL", External = "EXTERNAL", Hybrid = "HYBRID",
    }
}

mirror_enum! {
    /// How lost attempts are retried.
    PyRetryStrategy as "RetryStrategy" <=> RetryStrategy {
        None = "NONE", Fixed = "FIXED", Exponential = "EXPONENTIAL",
    }
}

fn lane_name(lane: SessionLane) -> String {
    format!("SessionLane.{}", lane.as_str().to_uppercase())
}

fn mode_name(mode: TaskHandlerMode) -> String {
    format!("TaskHandlerMode.{}", mode.as_str().to_uppercase())
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// How one lane handles its tasks and how long each may take.
#[pyclass(
    frozen,
    eq,
    from_py_object,
    name = "LaneHandlerConfig",
    module = "a3s_code"
)]
#[derive(Clone, PartialEq)]
pub(crate) struct PyLaneHandlerConfig {
    pub(crate) inner: LaneHandlerConfig,
}

#[pymethods]
impl PyLaneHandlerConfig {
    /// Unset arguments keep the core's `LaneHandlerConfig::default()` (see its docs).
    #[new]
    #[pyo3(signature = (*, mode = None, timeout_ms = None))]
    fn new(mode: Option<PyTaskHandlerMode>, timeout_ms: Option<u64>) -> Self {
        let mut inner = LaneHandlerConfig::default();
        if let Some(mode) = mode {
            inner.mode = mode.into();
        }
        if let Some(t) = timeout_ms {
            inner.timeout_ms = t;
        }
        Self { inner }
    }

    #[getter]
    fn mode(&self) -> PyTaskHandlerMode {
        self.inner.mode.into()
    }

    #[getter]
    fn timeout_ms(&self) -> u64 {
        self.inner.timeout_ms
    }

    fn __repr__(&self) -> String {
        format!(
            "LaneHandlerConfig(mode={}, timeout_ms={})",
            mode_name(self.inner.mode),
            self.inner.timeout_ms
        )
    }
}

impl ToPy for LaneHandlerConfig {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, PyLaneHandlerConfig { inner: self })?.into_any())
    }
}

/// A core config from the keywords that were given, as a JSON object through the core's serde
/// (`#[serde(default)]`): unset keywords keep the core's `Default`, which is their one home.
macro_rules! from_given {
    ($ty:ty; $($field:ident),* $(,)?) => {{
        let mut given = serde_json::Map::new();
        $(if let Some(v) = $field {
            given.insert(stringify!($field).to_owned(), serde_json::to_value(v).map_err(config_error)?);
        })*
        serde_json::from_value::<$ty>(serde_json::Value::Object(given)).map_err(config_error)
    }};
}

fn config_error(e: serde_json::Error) -> PyErr {
    CoreError(Error::InvalidConfig {
        reason: e.to_string(),
    })
    .into()
}

/// Retries of lost attempts (worker crash, expired lease, panicking handler).
#[pyclass(frozen, eq, from_py_object, name = "RetryPolicy", module = "a3s_code")]
#[derive(Clone, PartialEq)]
pub(crate) struct PyRetryPolicy {
    inner: RetryPolicy,
}

#[pymethods]
impl PyRetryPolicy {
    /// Every field of the core's `RetryPolicy` as a keyword; unset ones keep the core's
    /// `RetryPolicy::default()` (see its docs for the values).
    #[new]
    #[pyo3(signature = (*, strategy = None, max_retries = None, initial_delay_ms = None, max_delay_ms = None))]
    fn new(
        strategy: Option<PyRetryStrategy>,
        max_retries: Option<u32>,
        initial_delay_ms: Option<u64>,
        max_delay_ms: Option<u64>,
    ) -> PyResult<Self> {
        let strategy = strategy.map(RetryStrategy::from);
        let inner =
            from_given!(RetryPolicy; strategy, max_retries, initial_delay_ms, max_delay_ms)?;
        Ok(Self { inner })
    }

    #[getter]
    fn strategy(&self) -> PyRetryStrategy {
        self.inner.strategy.into()
    }

    #[getter]
    fn max_retries(&self) -> u32 {
        self.inner.max_retries
    }

    #[getter]
    fn initial_delay_ms(&self) -> u64 {
        self.inner.initial_delay_ms
    }

    #[getter]
    fn max_delay_ms(&self) -> u64 {
        self.inner.max_delay_ms
    }

    /// How many attempts a task gets in all.
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }

    /// The wait before retry number `retry` (1-based).
    fn delay_before_retry(&self, retry: u32) -> Duration {
        self.inner.delay_before_retry(retry)
    }

    fn __repr__(&self) -> String {
        let p = &self.inner;
        format!(
            "RetryPolicy(strategy=RetryStrategy.{}, max_retries={}, initial_delay_ms={}, max_delay_ms={})",
            format!("{:?}", p.strategy).to_uppercase(),
            p.max_retries,
            p.initial_delay_ms,
            p.max_delay_ms
        )
    }
}

/// The queue configuration of a session.
#[pyclass(
    frozen,
    eq,
    from_py_object,
    name = "SessionQueueConfig",
    module = "a3s_code"
)]
#[derive(Clone, PartialEq)]
pub(crate) struct PySessionQueueConfig {
    pub(crate) inner: SessionQueueConfig,
}

#[pymethods]
impl PySessionQueueConfig {
    /// Every field of the core's `SessionQueueConfig` (its `FIELDS`) as a keyword; unset ones
    /// keep the core's `SessionQueueConfig::default()` (see its docs for the values).
    #[new]
    #[pyo3(signature = (
        *,
        control_max_concurrency = None,
        query_max_concurrency = None,
        execute_max_concurrency = None,
        generate_max_concurrency = None,
        max_pending = None,
        enable_metrics = None,
        enable_dlq = None,
        dlq_max_size = None,
        enable_alerts = None,
        queue_depth_alert_threshold = None,
        latency_alert_threshold_ms = None,
        default_timeout_ms = None,
        retry_policy = None,
        lane_handlers = None,
        finished_history = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        control_max_concurrency: Option<usize>,
        query_max_concurrency: Option<usize>,
        execute_max_concurrency: Option<usize>,
        generate_max_concurrency: Option<usize>,
        max_pending: Option<usize>,
        enable_metrics: Option<bool>,
        enable_dlq: Option<bool>,
        dlq_max_size: Option<usize>,
        enable_alerts: Option<bool>,
        queue_depth_alert_threshold: Option<usize>,
        latency_alert_threshold_ms: Option<u64>,
        default_timeout_ms: Option<u64>,
        retry_policy: Option<PyRetryPolicy>,
        lane_handlers: Option<&Bound<'_, PyDict>>,
        finished_history: Option<usize>,
    ) -> PyResult<Self> {
        let retry_policy = retry_policy.map(|p| p.inner);
        let lane_handlers = lane_handlers.map(lane_handler_map).transpose()?;
        let inner = from_given!(SessionQueueConfig; control_max_concurrency, query_max_concurrency,
            execute_max_concurrency, generate_max_concurrency, max_pending, enable_metrics,
            enable_dlq, dlq_max_size, enable_alerts, queue_depth_alert_threshold,
            latency_alert_threshold_ms, default_timeout_ms, retry_policy, lane_handlers,
            finished_history)?;
        Ok(Self { inner })
    }

    #[getter]
    fn control_max_concurrency(&self) -> usize {
        self.inner.control_max_concurrency
    }
    #[getter]
    fn query_max_concurrency(&self) -> usize {
        self.inner.query_max_concurrency
    }
    #[getter]
    fn execute_max_concurrency(&self) -> usize {
        self.inner.execute_max_concurrency
    }
    #[getter]
    fn generate_max_concurrency(&self) -> usize {
        self.inner.generate_max_concurrency
    }
    #[getter]
    fn max_pending(&self) -> usize {
        self.inner.max_pending
    }
    #[getter]
    fn finished_history(&self) -> usize {
        self.inner.finished_history
    }
    #[getter]
    fn enable_metrics(&self) -> bool {
        self.inner.enable_metrics
    }
    #[getter]
    fn enable_dlq(&self) -> bool {
        self.inner.enable_dlq
    }
    #[getter]
    fn dlq_max_size(&self) -> usize {
        self.inner.dlq_max_size
    }
    #[getter]
    fn enable_alerts(&self) -> bool {
        self.inner.enable_alerts
    }
    #[getter]
    fn queue_depth_alert_threshold(&self) -> usize {
        self.inner.queue_depth_alert_threshold
    }
    #[getter]
    fn latency_alert_threshold_ms(&self) -> u64 {
        self.inner.latency_alert_threshold_ms
    }
    #[getter]
    fn default_timeout_ms(&self) -> u64 {
        self.inner.default_timeout_ms
    }
    #[getter]
    fn retry_policy(&self) -> PyRetryPolicy {
        PyRetryPolicy {
            inner: self.inner.retry_policy,
        }
    }
    /// A new dict `{SessionLane: LaneHandlerConfig}` on every access.
    #[getter]
    fn lane_handlers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (lane, cfg) in &self.inner.lane_handlers {
            dict.set_item(
                PySessionLane::from(*lane),
                PyLaneHandlerConfig { inner: *cfg },
            )?;
        }
        Ok(dict)
    }

    /// Checks every value as sessions do at creation.
    ///
    /// Raises `InvalidConfigError` naming the first bad field.
    fn validate(&self) -> PyResult<()> {
        self.inner
            .validate()
            .map_err(|e| crate::error::CoreError(e).into())
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        let handlers: Vec<String> = c
            .lane_handlers
            .iter()
            .map(|(lane, h)| {
                format!(
                    "{}: LaneHandlerConfig(mode={}, timeout_ms={})",
                    lane_name(*lane),
                    mode_name(h.mode),
                    h.timeout_ms
                )
            })
            .collect();
        format!(
            "SessionQueueConfig(control_max_concurrency={}, query_max_concurrency={}, execute_max_concurrency={}, generate_max_concurrency={}, max_pending={}, enable_metrics={}, enable_dlq={}, dlq_max_size={}, enable_alerts={}, queue_depth_alert_threshold={}, latency_alert_threshold_ms={}, default_timeout_ms={}, retry_policy={}, lane_handlers={{{}}}, finished_history={})",
            c.control_max_concurrency,
            c.query_max_concurrency,
            c.execute_max_concurrency,
            c.generate_max_concurrency,
            c.max_pending,
            py_bool(c.enable_metrics),
            py_bool(c.enable_dlq),
            c.dlq_max_size,
            py_bool(c.enable_alerts),
            c.queue_depth_alert_threshold,
            c.latency_alert_threshold_ms,
            c.default_timeout_ms,
            PyRetryPolicy {
                inner: c.retry_policy
            }
            .__repr__(),
            handlers.join(", "),
            c.finished_history
        )
    }
}

/// `{SessionLane: LaneHandlerConfig}` as the core's map.
fn lane_handler_map(
    handlers: &Bound<'_, PyDict>,
) -> PyResult<HashMap<SessionLane, LaneHandlerConfig>> {
    let mut map = HashMap::new();
    for (lane, cfg) in handlers.iter() {
        let (Ok(lane), Ok(cfg)) = (
            lane.extract::<PySessionLane>(),
            cfg.extract::<PyLaneHandlerConfig>(),
        ) else {
            return Err(PyTypeError::new_err(
                "lane_handlers must map SessionLane to LaneHandlerConfig",
            ));
        };
        map.insert(lane.into(), cfg.inner);
    }
    Ok(map)
}

/// Declares a frozen Python record class with read-only attributes and a repr.
macro_rules! record {
    ($(#[$meta:meta])* $py:ident as $name:literal { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[pyclass(frozen, get_all, name = $name, module = "a3s_code")]
        pub(crate) struct $py {
            $($field: $ty,)*
        }

        #[pymethods]
        impl $py {
            fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
                let me = slf.get();
                let py = slf.py();
                let fields: Vec<String> = vec![$(
                    format!("{}={}", stringify!($field), me.$field.repr_of(py)?),
                )*];
                Ok(format!("{}({})", $name, fields.join(", ")))
            }
        }
    };
}

/// A field's Python repr.
trait ReprOf {
    fn repr_of(&self, py: Python<'_>) -> PyResult<String>;
}

macro_rules! repr_of_clone {
    ($($t:ty),*) => {$(
        impl ReprOf for $t {
            fn repr_of(&self, py: Python<'_>) -> PyResult<String> {
                Ok(self.clone().into_bound_py_any(py)?.repr()?.to_string())
            }
        }
    )*};
}
repr_of_clone!(
    bool,
    usize,
    u64,
    u32,
    f64,
    String,
    Duration,
    PySessionLane,
    PyTaskHandlerMode
);

impl<T> ReprOf for Py<T> {
    fn repr_of(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.bind(py).as_any().repr()?.to_string())
    }
}

record! {
    /// What is in the queue right now.
    PyQueueStats as "QueueStats" {
        pending_count: usize,
        active_count: usize,
        external_count: usize,
        per_lane: Py<PyDict>,
    }
}

record! {
    /// What is in one lane right now.
    PyLaneStats as "LaneStats" {
        pending_count: usize,
        active_count: usize,
        external_count: usize,
        claimed_count: usize,
        max_concurrency: usize,
        mode: PyTaskHandlerMode,
        timeout_ms: u64,
        oldest_pending_ms: u64,
        paused: bool,
    }
}

record! {
    /// Counters and latency percentiles since the session started (`enable_metrics`).
    PyQueueMetrics as "QueueMetrics" {
        total_processed: u64,
        total_failed: u64,
        total_timed_out: u64,
        total_cancelled: u64,
        total_retried: u64,
        total_dead_lettered: u64,
        total_rejected_completions: u64,
        success_rate: f64,
        avg_latency: Duration,
        p50_latency: Duration,
        p95_latency: Duration,
        p99_latency: Duration,
        dlq_depth: usize,
        per_lane: Py<PyDict>,
    }
}

record! {
    /// Counters and latency percentiles of one lane.
    PyLaneMetrics as "LaneMetrics" {
        total_processed: u64,
        total_failed: u64,
        total_timed_out: u64,
        total_retried: u64,
        success_rate: f64,
        avg_latency: Duration,
        p50_latency: Duration,
        p95_latency: Duration,
        p99_latency: Duration,
    }
}

record! {
    /// A task that timed out, ran out of retries or was otherwise failed by the queue.
    PyDeadLetter as "DeadLetter" {
        task_id: String,
        lane: PySessionLane,
        command_type: String,
        payload: Py<PyAny>,
        error_code: String,
        error: String,
        attempts: u32,
        dead_lettered_at: u64,
    }
}

impl ToPy for QueueStats {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let per_lane = PyDict::new(py);
        for (lane, s) in self.per_lane {
            let s = PyLaneStats {
                pending_count: s.pending_count,
                active_count: s.active_count,
                external_count: s.external_count,
                claimed_count: s.claimed_count,
                max_concurrency: s.max_concurrency,
                mode: s.mode.into(),
                timeout_ms: s.timeout_ms,
                oldest_pending_ms: s.oldest_pending_ms,
                paused: s.paused,
            };
            per_lane.set_item(PySessionLane::from(lane), s)?;
        }
        let stats = PyQueueStats {
            pending_count: self.pending_count,
            active_count: self.active_count,
            external_count: self.external_count,
            per_lane: per_lane.unbind(),
        };
        Ok(Bound::new(py, stats)?.into_any())
    }
}

fn lane_metrics(m: LaneMetrics) -> PyLaneMetrics {
    PyLaneMetrics {
        total_processed: m.total_processed,
        total_failed: m.total_failed,
        total_timed_out: m.total_timed_out,
        total_retried: m.total_retried,
        success_rate: m.success_rate,
        avg_latency: m.avg_latency,
        p50_latency: m.p50_latency,
        p95_latency: m.p95_latency,
        p99_latency: m.p99_latency,
    }
}

impl ToPy for Option<QueueMetrics> {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let Some(m) = self else {
            return Ok(py.None().into_bound(py));
        };
        let per_lane = PyDict::new(py);
        for (lane, l) in m.per_lane {
            per_lane.set_item(PySessionLane::from(lane), lane_metrics(l))?;
        }
        let metrics = PyQueueMetrics {
            total_processed: m.total_processed,
            total_failed: m.total_failed,
            total_timed_out: m.total_timed_out,
            total_cancelled: m.total_cancelled,
            total_retried: m.total_retried,
            total_dead_lettered: m.total_dead_lettered,
            total_rejected_completions: m.total_rejected_completions,
            success_rate: m.success_rate,
            avg_latency: m.avg_latency,
            p50_latency: m.p50_latency,
            p95_latency: m.p95_latency,
            p99_latency: m.p99_latency,
            dlq_depth: m.dlq_depth,
            per_lane: per_lane.unbind(),
        };
        Ok(Bound::new(py, metrics)?.into_any())
    }
}

impl ToPy for Vec<DeadLetter> {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let list = PyList::empty(py);
        for d in self {
            let letter = PyDeadLetter {
                payload: json::to_py(py, &d.payload)?.unbind(),
                task_id: d.task_id,
                lane: d.lane.into(),
                command_type: d.command_type,
                error_code: d.error_code,
                error: d.error,
                attempts: d.attempts,
                dead_lettered_at: d.dead_lettered_at,
            };
            list.append(letter)?;
        }
        Ok(list.into_any())
    }
}

/// The next event, or the end of the stream.
struct NextEvent(Option<QueueEvent>);

impl ToPy for NextEvent {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let event = self.0.ok_or_else(|| PyStopAsyncIteration::new_err(()))?;
        let value = serde_json::to_value(&event)
            .map_err(|e| PyTypeError::new_err(format!("cannot convert the event: {e}")))?;
        json::to_py(py, &value)
    }
}

/// An async iterator over a session's queue events, each a dict whose `type` names the event
/// (`submitted`, `started`, `completed`, `failed`, `retrying`, `dead_lettered`, `alert`,
/// `output`). It ends once the session is closed and every event was read.
#[pyclass(frozen, name = "EventStream", module = "a3s_code")]
pub(crate) struct PyEventStream {
    inner: Arc<tokio::sync::Mutex<EventStream>>,
}

impl PyEventStream {
    pub(crate) fn new(stream: EventStream) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(stream)),
        }
    }
}

#[pymethods]
impl PyEventStream {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        runtime::awaitable(
            py,
            async move { Ok(NextEvent(inner.lock().await.recv().await)) },
        )
    }
}
