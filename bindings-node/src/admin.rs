//! `AdminClient`: the admin API (see and steer sessions) over this process's sessions or a NATS
//! deployment's (`docs/protocol.md` §13), with the core's answers as camelCase objects.

use a3s_code_core as core;
use a3s_code_core::admin as a;
use napi::Env;
use napi_derive::napi;

use crate::error::number;
use crate::queue::{DeadLetter, SessionLane, TaskHandlerMode, TaskPage, TaskQuery};
use crate::remote::NatsConfig;
use crate::runtime::{Promise, spawned};

/// A session in a list.
#[napi(object)]
#[derive(Debug)]
pub struct SessionSummary {
    pub session_id: String,
    pub tenant: String,
    /// The process (hub) hosting it, for sessions on NATS.
    pub hub: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub opened_at: i64,
    pub pending: i64,
    pub in_flight: i64,
    pub dead_letters: i64,
    pub paused: Vec<SessionLane>,
}

/// A page of sessions: `next` is absent on the last page.
#[napi(object)]
#[derive(Debug)]
pub struct SessionPage {
    pub sessions: Vec<SessionSummary>,
    pub next: Option<String>,
}

/// One lane of a session.
#[napi(object)]
#[derive(Debug)]
pub struct LaneView {
    pub lane: SessionLane,
    pub mode: TaskHandlerMode,
    pub paused: bool,
    pub pending: i64,
    pub oldest_pending_ms: i64,
    pub in_flight: i64,
    pub capacity: i64,
    pub timeout_ms: i64,
    pub processed: i64,
    pub failed: i64,
    pub timed_out: i64,
    pub retried: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A session, in full.
#[napi(object)]
#[derive(Debug)]
pub struct SessionView {
    pub session_id: String,
    pub tenant: String,
    pub hub: Option<String>,
    pub opened_at: i64,
    /// Whether counters and latencies are recorded (0 if not).
    pub metrics: bool,
    pub lanes: Vec<LaneView>,
    pub dead_letters: i64,
    pub finished_kept: i64,
}

/// A page of dead letters, oldest first.
#[napi(object)]
#[derive(Debug)]
pub struct DeadLetterPage {
    pub letters: Vec<DeadLetter>,
    pub next: Option<String>,
    /// `session` (the session's own DLQ), or `stream` (the session is gone: read only).
    #[napi(ts_type = "'session' | 'stream'")]
    pub source: String,
}

/// Something to do to a session (`adminClient.act(sessionId, action)`).
#[napi(object)]
#[derive(Debug)]
pub struct AdminAction {
    #[napi(
        ts_type = "'cancel' | 'pause' | 'resume' | 'retry_dead_letter' | 'delete_dead_letter' | 'purge_dead_letters'"
    )]
    pub action: String,
    /// For `cancel` and the dead-letter actions.
    pub task_id: Option<String>,
    /// For `pause` and `resume`.
    pub lane: Option<SessionLane>,
}

/// What an action did.
#[napi(object)]
#[derive(Debug)]
pub struct ActionOutcome {
    /// The new task (a retried dead letter).
    pub task_id: Option<String>,
    /// How many dead letters a purge deleted.
    pub purged: Option<i64>,
}

/// Worker slots needed for one lane and label set.
#[napi(object)]
#[derive(Debug)]
pub struct Demand {
    pub lane: SessionLane,
    /// `k=v,k=v` sorted; empty for none.
    pub labels: String,
    pub slots: i64,
}

/// A process hosting sessions of a tenant, as it announced itself.
#[napi(object)]
#[derive(Debug)]
pub struct Announcement {
    pub hub: String,
    pub tenant: String,
    pub sessions: i64,
    pub demand: Vec<Demand>,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub interval_s: i64,
}

/// A worker, as its latest presence showed it.
#[napi(object)]
#[derive(Debug)]
pub struct WorkerView {
    pub worker_id: String,
    pub tenant: Option<String>,
    pub session: Option<String>,
    pub lanes: Vec<SessionLane>,
    #[napi(ts_type = "Record<string, string>")]
    pub labels: serde_json::Value,
    pub slots: i64,
    pub busy: i64,
    pub version: String,
    #[napi(ts_type = "'waiting' | 'serving' | 'draining'")]
    pub state: String,
    pub interval_s: i64,
    pub last_seen_ms: i64,
}

/// Worker slots a tenant's sessions need for one lane and label set.
#[napi(object)]
#[derive(Debug)]
pub struct FleetDemandRow {
    pub tenant: String,
    pub lane: SessionLane,
    pub labels: String,
    pub slots: i64,
}

fn summary(s: a::SessionSummary) -> SessionSummary {
    SessionSummary {
        session_id: s.session_id,
        tenant: s.tenant,
        hub: s.hub,
        opened_at: number(s.opened_at),
        pending: number(s.pending),
        in_flight: number(s.in_flight),
        dead_letters: number(s.dead_letters),
        paused: s.paused.into_iter().map(Into::into).collect(),
    }
}

fn view(v: a::SessionView) -> SessionView {
    SessionView {
        session_id: v.session_id,
        tenant: v.tenant,
        hub: v.hub,
        opened_at: number(v.opened_at),
        metrics: v.metrics,
        lanes: v
            .lanes
            .into_iter()
            .map(|l| LaneView {
                lane: l.lane.into(),
                mode: l.mode.into(),
                paused: l.paused,
                pending: number(l.pending),
                oldest_pending_ms: number(l.oldest_pending_ms),
                in_flight: number(l.in_flight),
                capacity: number(l.capacity),
                timeout_ms: number(l.timeout_ms),
                processed: number(l.processed),
                failed: number(l.failed),
                timed_out: number(l.timed_out),
                retried: number(l.retried),
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
            })
            .collect(),
        dead_letters: number(v.dead_letters),
        finished_kept: number(v.finished_kept),
    }
}

fn announcement(a: a::Announcement) -> Announcement {
    Announcement {
        hub: a.hub,
        tenant: a.tenant,
        sessions: number(a.sessions),
        demand: a
            .demand
            .into_iter()
            .map(|d| Demand {
                lane: d.lane.into(),
                labels: d.labels,
                slots: number(d.slots),
            })
            .collect(),
        host: a.host,
        pid: a.pid,
        version: a.version,
        interval_s: number(a.interval_s),
    }
}

impl AdminAction {
    /// The core's action, parsed by the core (the same rules and messages as in Python).
    fn into_core(self) -> core::Result<a::Action> {
        let mut fields = serde_json::Map::new();
        fields.insert("action".into(), self.action.into());
        if let Some(task_id) = self.task_id {
            fields.insert("task_id".into(), task_id.into());
        }
        if let Some(lane) = self.lane {
            fields.insert(
                "lane".into(),
                core::queue::SessionLane::from(lane).as_str().into(),
            );
        }
        a::Action::from_json(fields.into())
    }
}

/// The admin API: `AdminClient.local()` sees this process's sessions (also those without a
/// broker), `await AdminClient.connect(config)` every session of a NATS deployment (a viewer
/// credential reads, an admin credential also acts). Rejects with an `Error` whose `code` is
/// the core's (`SessionNotFound`, `PermissionDenied`, `TaskNotFound`, `InvalidConfig`, ...).
#[napi(js_name = "AdminClient")]
pub struct JsAdminClient {
    inner: a::AdminClient,
}

#[napi]
impl JsAdminClient {
    /// The sessions of this process.
    #[napi(factory)]
    pub fn local() -> Self {
        Self {
            inner: a::AdminClient::local(),
        }
    }

    /// Every session of the NATS deployment `config` reaches; `tenant` for a credential
    /// confined to one tenant. Rejects with `BrokerUnavailable`.
    #[napi(ts_return_type = "Promise<AdminClient>")]
    pub fn connect(
        env: &Env,
        config: NatsConfig,
        tenant: Option<String>,
    ) -> napi::Result<Promise<JsAdminClient>> {
        spawned(env, async move {
            let cfg = config.into_core(None)?;
            let inner = a::AdminClient::connect_tenant(cfg, tenant.as_deref()).await?;
            Ok(JsAdminClient { inner })
        })
    }

    /// A page of sessions, ordered by (process, session id).
    #[napi]
    pub fn sessions(
        &self,
        env: &Env,
        tenant: Option<String>,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> napi::Result<Promise<SessionPage>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            let page = admin
                .sessions(
                    tenant.as_deref(),
                    cursor.as_deref(),
                    limit.map_or(50, |l| l as usize),
                )
                .await?;
            Ok(SessionPage {
                sessions: page.sessions.into_iter().map(summary).collect(),
                next: page.next,
            })
        })
    }

    /// A session's lanes and figures.
    #[napi]
    pub fn session(&self, env: &Env, session_id: String) -> napi::Result<Promise<SessionView>> {
        let admin = self.inner.clone();
        spawned(
            env,
            async move { Ok(view(admin.session(&session_id).await?)) },
        )
    }

    /// A page of a session's tasks in one state.
    #[napi]
    pub fn tasks(
        &self,
        env: &Env,
        session_id: String,
        query: TaskQuery,
    ) -> napi::Result<Promise<TaskPage>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            let query = query.into_core()?;
            Ok(admin.tasks(&session_id, &query).await?.into())
        })
    }

    /// A page of a session's dead letters (from the stream once the session is gone).
    #[napi]
    pub fn dead_letters(
        &self,
        env: &Env,
        session_id: String,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> napi::Result<Promise<DeadLetterPage>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            let page = admin
                .dead_letters(
                    &session_id,
                    cursor.as_deref(),
                    limit.map_or(50, |l| l as usize),
                )
                .await?;
            Ok(DeadLetterPage {
                letters: page.letters.into_iter().map(Into::into).collect(),
                next: page.next,
                source: match page.source {
                    a::LetterSource::Session => "session",
                    a::LetterSource::Stream => "stream",
                }
                .to_owned(),
            })
        })
    }

    /// Applies an action (`{ action: 'pause', lane: SessionLane.Execute }`,
    /// `{ action: 'cancel', taskId }`, ...); `actor` (default `node`) is logged with it.
    #[napi]
    pub fn act(
        &self,
        env: &Env,
        session_id: String,
        action: AdminAction,
        actor: Option<String>,
    ) -> napi::Result<Promise<ActionOutcome>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            let action = action.into_core()?;
            let actor = actor.unwrap_or_else(|| "node".to_owned());
            let out = admin.act(&session_id, &action, &actor).await?;
            Ok(ActionOutcome {
                task_id: out.task_id,
                purged: out.purged.map(number),
            })
        })
    }

    /// The processes hosting sessions, one entry per process and tenant (none in process).
    #[napi]
    pub fn processes(&self, env: &Env) -> napi::Result<Promise<Vec<Announcement>>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            Ok(admin
                .processes()
                .await?
                .into_iter()
                .map(announcement)
                .collect())
        })
    }

    /// Workers, from their presence announcements since this client connected.
    #[napi]
    pub fn workers(&self) -> Vec<WorkerView> {
        self.inner
            .workers()
            .into_iter()
            .map(|w| WorkerView {
                worker_id: w.presence.worker_id,
                tenant: w.presence.tenant,
                session: w.presence.session,
                lanes: w.presence.lanes.into_iter().map(Into::into).collect(),
                labels: serde_json::to_value(w.presence.labels).unwrap_or_default(),
                slots: number(w.presence.slots),
                busy: number(w.presence.busy),
                version: w.presence.version,
                state: w.presence.state.as_str().to_owned(),
                interval_s: number(w.presence.interval_s),
                last_seen_ms: number(w.last_seen_ms),
            })
            .collect()
    }

    /// Worker slots the fleet needs now, per tenant, lane and label set.
    #[napi]
    pub fn fleet_demand(&self, env: &Env) -> napi::Result<Promise<Vec<FleetDemandRow>>> {
        let admin = self.inner.clone();
        spawned(env, async move {
            Ok(admin
                .fleet_demand()
                .await?
                .into_iter()
                .map(|r| FleetDemandRow {
                    tenant: r.tenant,
                    lane: r.lane.into(),
                    labels: r.labels,
                    slots: number(r.slots),
                })
                .collect())
        })
    }
}
