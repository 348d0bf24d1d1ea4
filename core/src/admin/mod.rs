//! The admin API: see and steer sessions from outside the code that opened them.
//!
//! Every session answers the same requests: its lanes, its tasks by state (pending, in flight
//! with the worker that holds them, recently finished), its dead letters, and the actions
//! (cancel a task, pause or resume a lane, retry, delete or purge dead letters). The session
//! stays the only owner of scheduling: an action is a request it applies and answers with a
//! typed result.
//!
//! Two ways in, one set of types:
//! - [`AdminClient::local`]: the sessions of this process (also those without a broker, which
//!   are visible nowhere else);
//! - [`AdminClient::connect`] (feature `nats`): every session of a NATS deployment, through
//!   the request-reply subjects of `docs/protocol.md` §13. Each process announces its sessions
//!   once per interval and per tenant (not per session), and lists them a page at a time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> a3s_code_core::Result<()> {
//! use a3s_code_core::admin::{Action, AdminClient, TaskQuery, TaskState};
//! use a3s_code_core::{Agent, AgentConfig, queue::SessionLane};
//! let session = Agent::from_config(AgentConfig::default()).session(".", None)?;
//! let admin = AdminClient::local();
//! let page = admin.sessions(None, None, 50).await?;
//! assert!(page.sessions.iter().any(|s| s.session_id == session.id()));
//! admin.act(session.id(), &Action::Pause { lane: SessionLane::Execute }, "me").await?;
//! let view = admin.session(session.id()).await?;
//! assert!(view.lanes.iter().any(|l| l.lane == SessionLane::Execute && l.paused));
//! let pending = admin.tasks(session.id(), &TaskQuery::new(TaskState::Pending)).await?;
//! assert!(pending.tasks.is_empty());
//! # Ok(()) }
//! ```

mod local;
#[cfg(feature = "nats")]
mod remote;

use serde::{Deserialize, Serialize};

pub use crate::broker::wire::{Announcement, Demand};
use crate::error::Result;
use crate::lane::SessionLane;
pub use crate::queue::DeadLetter;
use crate::queue::inspect::{self as view, check_limit};
pub use crate::queue::inspect::{
    Action, ActionOutcome, DEFAULT_FINISHED_HISTORY, DeadLetterPage, LaneView, LetterSource,
    MAX_PAGE, SessionPage, SessionSummary, SessionView, TaskOutcome, TaskPage, TaskQuery,
    TaskState, TaskView,
};

pub(crate) use local::{register, unregister};

/// A worker, as its latest presence announcement showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// What it announced.
    #[serde(flatten)]
    pub presence: crate::broker::wire::Presence,
    /// Milliseconds since its latest announcement.
    pub last_seen_ms: u64,
}

/// The admin API of one process or of a NATS deployment. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local,
    #[cfg(feature = "nats")]
    Nats(std::sync::Arc<remote::Remote>),
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Local => "local",
            #[cfg(feature = "nats")]
            Inner::Nats(_) => "nats",
        };
        f.debug_struct("AdminClient").field("kind", &kind).finish()
    }
}

impl AdminClient {
    /// The sessions of this process (open ones; a closed session leaves the list).
    pub fn local() -> Self {
        Self {
            inner: Inner::Local,
        }
    }

    /// Every session of a NATS deployment, with the permissions of `config`'s credential
    /// (`viewer` reads, `admin` also acts; both may be confined to one tenant).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached, [`Error::InvalidConfig`] for
    /// a bad configuration.
    #[cfg(feature = "nats")]
    pub async fn connect(config: crate::broker::NatsConfig) -> Result<Self> {
        Self::connect_tenant(config, None).await
    }

    /// [`connect`](Self::connect) for a credential confined to one tenant: it sees (and asks
    /// about) that tenant's sessions and workers only.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`Error::InvalidConfig`] for a bad tenant name.
    #[cfg(feature = "nats")]
    pub async fn connect_tenant(
        config: crate::broker::NatsConfig,
        tenant: Option<&str>,
    ) -> Result<Self> {
        Ok(Self {
            inner: Inner::Nats(remote::Remote::connect(config, tenant.map(str::to_owned)).await?),
        })
    }

    /// Sessions, a page at a time, ordered by (hub, session id); `tenant` keeps one tenant's.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad page size or cursor, [`Error::BrokerUnavailable`].
    pub async fn sessions(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage> {
        check_limit(limit)?;
        match &self.inner {
            Inner::Local => local::sessions(tenant, cursor, limit),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.sessions(tenant, cursor, limit).await,
        }
    }

    /// A session's lanes and figures.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`] when no process hosts it, [`Error::BrokerUnavailable`].
    pub async fn session(&self, session_id: &str) -> Result<SessionView> {
        match &self.inner {
            Inner::Local => local::session(session_id).map(|t| view::session(&t)),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.session(session_id).await,
        }
    }

    /// A session's tasks of one state, a page at a time.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`], [`Error::InvalidConfig`] for a bad page size or cursor,
    /// [`Error::BrokerUnavailable`].
    pub async fn tasks(&self, session_id: &str, query: &TaskQuery) -> Result<TaskPage> {
        query.validate()?;
        match &self.inner {
            Inner::Local => view::tasks(&local::session(session_id)?, query),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.tasks(session_id, query).await,
        }
    }

    /// A session's dead letters, a page at a time, oldest first. Over NATS, the letters of a
    /// session no process hosts any more are read from the dead-letter stream.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`] (in process, or when the stream holds none of it either),
    /// [`Error::InvalidConfig`] for a bad page size or cursor, [`Error::BrokerUnavailable`].
    pub async fn dead_letters(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        check_limit(limit)?;
        match &self.inner {
            Inner::Local => view::dead_letters(&local::session(session_id)?, cursor, limit),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.dead_letters(session_id, cursor, limit).await,
        }
    }

    /// Applies an action to a session; `actor` (a user or token name) is logged by the
    /// session with it.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`] when no process hosts the session (also for dead letters
    /// still readable from the stream), what the action itself refuses
    /// ([`Error::TaskNotFound`], [`Error::InvalidConfig`] for pausing Control,
    /// [`Error::QueueFull`], ...), [`Error::PermissionDenied`] when the credential may only
    /// read, [`Error::BrokerUnavailable`].
    pub async fn act(
        &self,
        session_id: &str,
        action: &Action,
        actor: &str,
    ) -> Result<ActionOutcome> {
        match &self.inner {
            Inner::Local => view::act(&local::session(session_id)?, action, actor),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.act(session_id, action, actor).await,
        }
    }

    /// The processes hosting sessions, as they last announced themselves (per tenant). In
    /// process: none.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`].
    pub async fn processes(&self) -> Result<Vec<Announcement>> {
        match &self.inner {
            Inner::Local => Ok(Vec::new()),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.processes().await,
        }
    }

    /// Workers, as their presence announcements (`docs/protocol.md` §9) showed them since
    /// this client connected; gone ones (three missed announcements) are left out. In
    /// process: none.
    pub fn workers(&self) -> Vec<WorkerView> {
        match &self.inner {
            Inner::Local => Vec::new(),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.workers(),
        }
    }

    /// Worker slots the whole fleet needs now, summed over the processes' latest
    /// announcements, per tenant, lane and label set. In process: summed over this process's
    /// sessions.
    pub async fn fleet_demand(&self) -> Result<Vec<FleetDemandRow>> {
        match &self.inner {
            Inner::Local => Ok(local::demand()),
            #[cfg(feature = "nats")]
            Inner::Nats(r) => r.fleet_demand().await,
        }
    }
}

/// Worker slots needed by a tenant's sessions for one lane and label set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDemandRow {
    /// The tenant.
    pub tenant: String,
    /// The lane.
    pub lane: SessionLane,
    /// Required labels, `k=v,k=v` sorted; empty for none.
    pub labels: String,
    /// Slots needed.
    pub slots: usize,
}
