//! `AdminClient`: the admin API (see and steer sessions) over this process's sessions or a NATS
//! deployment's. Answers are the core's types as plain dicts (`docs/protocol.md` §13 gives their
//! fields).

use a3s_code_core::admin::{Action, AdminClient, TaskQuery, TaskState};
use pyo3::prelude::*;

use crate::error::CoreError;
use crate::json;
use crate::remote::PyNatsConfig;
use crate::runtime;
use crate::session::Json;

/// The admin API: `AdminClient.local()` sees this process's sessions (also those without a
/// broker), `await AdminClient.connect(config)` every session of a NATS deployment (a viewer
/// credential reads, an admin credential also acts).
#[pyclass(frozen, name = "AdminClient", module = "a3s_code")]
pub(crate) struct PyAdminClient {
    inner: AdminClient,
}

struct Connected(AdminClient);

impl runtime::ToPy for Connected {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, PyAdminClient { inner: self.0 })?.into_any())
    }
}

fn to_json<T: serde::Serialize>(value: T) -> Json {
    Json(serde_json::to_value(value).expect("admin answers serialize"))
}

#[pymethods]
impl PyAdminClient {
    /// The sessions of this process.
    #[staticmethod]
    fn local() -> Self {
        Self {
            inner: AdminClient::local(),
        }
    }

    /// Every session of the NATS deployment `config` reaches; `tenant` for a credential
    /// confined to one tenant. Raises `BrokerUnavailableError`.
    #[staticmethod]
    #[pyo3(signature = (config, tenant = None))]
    fn connect<'py>(
        py: Python<'py>,
        config: PyNatsConfig,
        tenant: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::awaitable(py, async move {
            let inner = AdminClient::connect_tenant(config.inner, tenant.as_deref())
                .await
                .map_err(CoreError)?;
            Ok(Connected(inner))
        })
    }

    /// A page of sessions: `{"sessions": [...], "next": cursor}` (no `next` on the last page).
    #[pyo3(signature = (tenant = None, cursor = None, limit = 50))]
    fn sessions<'py>(
        &self,
        py: Python<'py>,
        tenant: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            let page = admin
                .sessions(tenant.as_deref(), cursor.as_deref(), limit)
                .await
                .map_err(CoreError)?;
            Ok(to_json(page))
        })
    }

    /// A session's lanes and figures. Raises `SessionNotFoundError`.
    fn session<'py>(&self, py: Python<'py>, session_id: String) -> PyResult<Bound<'py, PyAny>> {
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(to_json(
                admin.session(&session_id).await.map_err(CoreError)?,
            ))
        })
    }

    /// A page of a session's tasks in `state` (`"pending"`, `"in_flight"`, `"finished"`).
    #[pyo3(signature = (session_id, state, cursor = None, limit = 50, search = None))]
    fn tasks<'py>(
        &self,
        py: Python<'py>,
        session_id: String,
        state: String,
        cursor: Option<String>,
        limit: usize,
        search: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state: TaskState = state.parse().map_err(CoreError)?;
        let query = TaskQuery {
            state,
            cursor,
            limit,
            search,
        };
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(to_json(
                admin.tasks(&session_id, &query).await.map_err(CoreError)?,
            ))
        })
    }

    /// A page of a session's dead letters (`"source"`: `"session"`, or `"stream"` once the
    /// session is gone).
    #[pyo3(signature = (session_id, cursor = None, limit = 50))]
    fn dead_letters<'py>(
        &self,
        py: Python<'py>,
        session_id: String,
        cursor: Option<String>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            let page = admin
                .dead_letters(&session_id, cursor.as_deref(), limit)
                .await
                .map_err(CoreError)?;
            Ok(to_json(page))
        })
    }

    /// Applies an action, a dict such as `{"action": "pause", "lane": "execute"}`,
    /// `{"action": "cancel", "task_id": ...}`, `{"action": "retry_dead_letter", "task_id": ...}`,
    /// `{"action": "delete_dead_letter", "task_id": ...}`, `{"action": "purge_dead_letters"}`;
    /// `actor` is logged with it. Raises what the session refuses (`TaskNotFoundError`,
    /// `InvalidConfigError`, ...), `SessionNotFoundError`, `PermissionDeniedError`.
    #[pyo3(signature = (session_id, action, actor = "python"))]
    fn act<'py>(
        &self,
        py: Python<'py>,
        session_id: String,
        action: &Bound<'py, PyAny>,
        actor: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let action = Action::from_json(json::to_value(action, "action")?).map_err(CoreError)?;
        let (admin, actor) = (self.inner.clone(), actor.to_owned());
        runtime::awaitable(py, async move {
            let out = admin
                .act(&session_id, &action, &actor)
                .await
                .map_err(CoreError)?;
            Ok(to_json(out))
        })
    }

    /// The processes hosting sessions, one entry per process and tenant (empty in process).
    fn processes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(to_json(admin.processes().await.map_err(CoreError)?))
        })
    }

    /// Workers, from their presence announcements since this client connected.
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json::to_py(
            py,
            &serde_json::to_value(self.inner.workers()).unwrap_or_default(),
        )
    }

    /// Worker slots the fleet needs now, per tenant, lane and label set.
    fn fleet_demand<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let admin = self.inner.clone();
        runtime::awaitable(py, async move {
            Ok(to_json(admin.fleet_demand().await.map_err(CoreError)?))
        })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
