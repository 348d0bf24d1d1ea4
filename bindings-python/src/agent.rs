//! `Agent`: the configuration loaded from `agent.hcl`, from which sessions are opened.

use a3s_code_core::Agent;
use pyo3::prelude::*;

use crate::error::CoreError;
use crate::runtime;
use crate::session::{PyAgentSession, PySessionOptions};

/// An agent: its configuration (`agent.hcl`), from which sessions are opened.
#[pyclass(frozen, name = "Agent", module = "a3s_code")]
pub(crate) struct PyAgent {
    inner: Agent,
}

#[pymethods]
impl PyAgent {
    /// Loads `agent.hcl` (sync, as in the spec). Raises `ConfigFileError` naming the file and
    /// line for a missing file, a syntax error or an invalid setting.
    #[staticmethod]
    fn create(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = runtime::block_on(py, Agent::new(path))?.map_err(CoreError)?;
        Ok(Self { inner })
    }

    /// Opens a session on `workspace` (every built-in tool is confined to it). Raises
    /// `InvalidConfigError` for an invalid queue configuration, session id or workspace.
    #[pyo3(signature = (workspace, options = None))]
    fn session(
        &self,
        workspace: std::path::PathBuf,
        options: Option<PySessionOptions>,
    ) -> PyResult<PyAgentSession> {
        let opened = runtime::enter(|| self.inner.session(workspace, options.map(|o| o.inner)))?;
        Ok(PyAgentSession {
            inner: opened.map_err(CoreError)?,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Agent(default_model={:?})",
            self.inner.config().default_model
        )
    }
}
