//! The native module `a3s_code._native`: Python bindings of `a3s-code-core`.
//!
//! The bindings are thin: each method converts its arguments, calls the core once and maps the
//! result or error. Modules mirror the core's (`agent`, `session`, `queue`, `task`, `worker`);
//! `runtime` is the one place where async crosses into Python, `error` the one error mapping,
//! `json` the `dict` ↔ `serde_json::Value` conversion.

mod admin;
mod agent;
mod claim;
mod error;
mod json;
mod queue;
mod remote;
mod runtime;
mod session;
mod task;
mod worker;

use pyo3::prelude::*;

#[pymodule]
mod _native {
    #[pymodule_export]
    use crate::admin::PyAdminClient;
    #[pymodule_export]
    use crate::agent::PyAgent;
    #[pymodule_export]
    use crate::queue::{
        PyDeadLetter, PyEventStream, PyLaneHandlerConfig, PyLaneMetrics, PyLaneStats,
        PyQueueMetrics, PyQueueStats, PyRetryPolicy, PyRetryStrategy, PySessionLane,
        PySessionQueueConfig, PyTaskHandlerMode,
    };
    #[pymodule_export]
    use crate::remote::{PyNatsConfig, PyWorkerClient};
    #[pymodule_export]
    use crate::session::{PyAgentSession, PyAgentStream, PySessionOptions, PyTaskHandle};
    #[pymodule_export]
    use crate::task::{PyExternalTask, PyExternalTaskResult};
    #[pymodule_export]
    use crate::worker::{PyWorker, PyWorkerStats, execute_builtin};

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::runtime::register_hooks(m)?;
        crate::error::register(m)
    }
}
