//! [`AgentSession`]: one agent conversation with its own lane queue and workspace.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::agent::AgentConfig;
use crate::agent::llm::{GENERATE_COMMAND, Message};
use crate::agent::run::{AgentResponse, AgentStream, Conversation};
use crate::error::{Error, Result};
use crate::queue::scheduler::Scheduler;
use crate::queue::{
    DeadLetter, EventStream, LaneHandlerConfig, QueueMetrics, QueueStats, SessionLane,
    SessionQueueConfig,
};
use crate::task::{ExternalTask, ExternalTaskResult};
use crate::tools::{Workspace, execute_builtin};

use crate::queue::scheduler::{TaskHandle, TaskHandler};

/// Options of a new session.
///
/// # Examples
///
/// ```
/// use a3s_code_core::{SessionOptions, SessionQueueConfig};
/// let opts = SessionOptions::new()
///     .with_queue_config(SessionQueueConfig { query_max_concurrency: 20, ..Default::default() })
///     .with_session_id("build-42");
/// assert_eq!(opts.session_id.as_deref(), Some("build-42"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The queue configuration; `None` takes the agent's `queue { }` block, else the defaults.
    pub queue_config: Option<SessionQueueConfig>,
    /// The session id; `None` generates a random UUID v4 (unguessable, as remote workers
    /// address sessions by id). Letters, digits, `-` and `_` only.
    pub session_id: Option<String>,
    /// Whether the built-in `bash` tool may run in this process (default true).
    pub allow_bash: Option<bool>,
    /// Publish External lanes' tasks to NATS JetStream for remote workers. `None` takes the
    /// agent's `distribution { nats_url = ... }`, then `A3S_NATS_URL`, else stays in process.
    #[cfg(feature = "nats")]
    pub nats: Option<crate::broker::NatsConfig>,
    /// Serve `/metrics` and `/healthz` on this address (port 0 picks a free one; see
    /// [`AgentSession::metrics_addr`]). Turns `enable_metrics` on.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The tenant the session belongs to, with its weight and cap (`None`: the agent's
    /// `distribution { tenant = ... }`, else the default tenant). See [`Tenant`](crate::broker::Tenant).
    pub tenant: Option<crate::broker::Tenant>,
}

impl SessionOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the queue configuration.
    pub fn with_queue_config(mut self, config: SessionQueueConfig) -> Self {
        self.queue_config = Some(config);
        self
    }

    /// Sets the session id (workers use it to find the session's tasks).
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Allows or forbids the built-in `bash` tool on Internal and Hybrid lanes.
    pub fn with_bash(mut self, allowed: bool) -> Self {
        self.allow_bash = Some(allowed);
        self
    }

    /// Hands External lanes' tasks to remote workers through NATS JetStream.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use a3s_code_core::{Agent, SessionOptions, broker::NatsConfig};
    /// # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
    /// let agent = Agent::new("agent.hcl").await?;
    /// let session = agent.session(".", Some(SessionOptions::new().with_nats(NatsConfig::new("nats://127.0.0.1:4222"))))?;
    /// session.broker_ready(std::time::Duration::from_secs(5)).await?;
    /// println!("workers: a3s-code worker --session-id {}", session.id());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub fn with_nats(mut self, config: crate::broker::NatsConfig) -> Self {
        self.nats = Some(config);
        self
    }

    /// Serves the session's Prometheus metrics on `GET /metrics` and its health on
    /// `GET /healthz` (200 while it is open and its broker, if any, is ready; 503 otherwise),
    /// from when it opens until the last handle is dropped. Turns `enable_metrics` on.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::{Agent, AgentConfig, SessionOptions};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> a3s_code_core::Result<()> {
    /// let opts = SessionOptions::new().with_metrics_addr("127.0.0.1:0".parse().unwrap());
    /// let session = Agent::from_config(AgentConfig::default()).session(".", Some(opts))?;
    /// println!("scrape http://{}/metrics", session.metrics_addr().unwrap());
    /// assert!(session.metrics_text().contains("a3s_lane_pending_tasks"));
    /// # Ok(()) }
    /// ```
    pub fn with_metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Puts the session in tenant `name` with `weight` (its share of a saturated shared worker
    /// fleet; the default tenant has 1). A pool worker started with `--tenant name` serves only
    /// this tenant's sessions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a name that is not one subject token (letters, digits, `-`,
    /// `_`; not starting with `_`) or a weight that is not finite and > 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::SessionOptions;
    /// let opts = SessionOptions::new().with_tenant("acme", 3.0)?.with_tenant_max_in_flight(64)?;
    /// assert_eq!(opts.tenant.unwrap().max_in_flight(), Some(64));
    /// assert!(SessionOptions::new().with_tenant("a b", 1.0).is_err());
    /// # Ok::<(), a3s_code_core::Error>(())
    /// ```
    pub fn with_tenant(mut self, name: impl Into<String>, weight: f64) -> Result<Self> {
        let cap = self.tenant.as_ref().and_then(|t| t.max_in_flight());
        let mut tenant = crate::broker::Tenant::new(name, weight)?;
        if let Some(n) = cap {
            tenant = tenant.with_max_in_flight(n)?;
        }
        self.tenant = Some(tenant);
        Ok(self)
    }

    /// Sets the tenant from separate optional settings, as the bindings and agent.hcl give them
    /// (see [`Tenant::from_parts`](crate::broker::Tenant::from_parts)); none leaves it unset.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad name, weight or cap.
    pub fn with_tenant_parts(
        mut self,
        name: Option<String>,
        weight: Option<f64>,
        max_in_flight: Option<usize>,
    ) -> Result<Self> {
        if let Some(t) = crate::broker::Tenant::from_parts(name, weight, max_in_flight)? {
            self.tenant = Some(t);
        }
        Ok(self)
    }

    /// Caps the tenant's tasks in flight in each lane, across all its sessions and workers
    /// (at least 1). Without [`with_tenant`](Self::with_tenant), caps the default tenant.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for 0.
    pub fn with_tenant_max_in_flight(mut self, n: usize) -> Result<Self> {
        let tenant = self.tenant.take().unwrap_or_default();
        self.tenant = Some(tenant.with_max_in_flight(n)?);
        Ok(self)
    }
}

/// A session: a lane queue, a workspace and (with a model) a conversation.
///
/// Cloning is cheap and every clone drives the same session; it closes when the last clone is
/// dropped, or on [`close`](Self::close). All methods are safe to call concurrently from any
/// task. Methods that queue work must run inside a tokio runtime.
///
/// # Examples
///
/// A Query lane handed to an in-process worker:
///
/// ```
/// use std::time::Duration;
/// use a3s_code_core::{Agent, AgentConfig, ExternalTaskResult};
/// use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> a3s_code_core::Result<()> {
/// let agent = Agent::from_config(AgentConfig::default());
/// let session = agent.session(".", None)?;
/// session
///     .set_lane_handler(SessionLane::Query, LaneHandlerConfig { mode: TaskHandlerMode::External, timeout_ms: 5_000 })
///     .await?;
///
/// let worker = session.clone();
/// tokio::spawn(async move {
///     for task in worker.claim_external_tasks(16, Duration::from_secs(1)).await.unwrap() {
///         let result = ExternalTaskResult::ok(serde_json::json!({"content": "hello"}));
///         worker.complete_external_task(&task.task_id, result).await.unwrap();
///     }
/// });
///
/// let out = session.tool("read", serde_json::json!({"path": "README.md"})).await?;
/// assert_eq!(out.result["content"], "hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AgentSession {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    scheduler: Arc<Scheduler>,
    workspace: Workspace,
    agent: Arc<AgentConfig>,
    #[cfg(feature = "nats")]
    broker: Option<Arc<crate::broker::nats::session::NatsBroker>>,
    /// The agent loop's conversation ([`send`](AgentSession::send)).
    conversation: Conversation,
    /// `/metrics` and `/healthz`, when asked for; stops with the session.
    metrics_server: Option<crate::observe::MetricsServer>,
    /// Its tenant (`default` when it names none, and without a broker).
    tenant: String,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        crate::admin::unregister(&self.scheduler);
        // The broker (if any) finishes its clean-up in the background.
        drop(self.scheduler.close());
    }
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("id", &self.id())
            .field("workspace", &self.inner.workspace.root())
            .finish_non_exhaustive()
    }
}

impl AgentSession {
    pub(crate) fn open(
        agent: Arc<AgentConfig>,
        workspace: &Path,
        options: SessionOptions,
    ) -> Result<Self> {
        let mut config = options.queue_config.unwrap_or_else(|| agent.queue.clone());
        config.validate()?;
        // Bound before anything starts, so a busy port fails the open.
        let metrics = match options.metrics_addr {
            Some(addr) => {
                config.enable_metrics = true;
                Some(crate::observe::Bound::bind(addr)?)
            }
            None => None,
        };
        let id = match options.session_id {
            Some(id) => validate_session_id(id)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let workspace = Workspace::new(workspace)?.with_bash(options.allow_bash.unwrap_or(true));
        let ws = workspace.clone();
        let builtin = move |task: ExternalTask| {
            let ws = ws.clone();
            async move { execute_builtin(&task, &ws).await }
        };
        let scheduler = Scheduler::new(id.clone(), config, Arc::new(builtin));
        // The agent loop: the model-call handler of the Generate lane.
        let conversation = Conversation::new(Arc::clone(&agent));
        scheduler.register_handler(GENERATE_COMMAND.into(), conversation.generate_handler());
        #[cfg(not(feature = "nats"))]
        let tenant_name = crate::broker::wire::DEFAULT_TENANT.to_owned();
        #[cfg(not(feature = "nats"))]
        crate::admin::register(&scheduler, &tenant_name);
        #[cfg(feature = "nats")]
        let mut tenant_name = crate::broker::wire::DEFAULT_TENANT.to_owned();
        #[cfg(feature = "nats")]
        let broker = match nats_config(options.nats, &agent) {
            Some(cfg) => {
                let tenant = match options.tenant {
                    Some(t) => t,
                    None => agent.distribution.tenant()?,
                };
                crate::admin::register(&scheduler, tenant.name());
                tenant_name = tenant.name().to_owned();
                let broker = crate::broker::nats::session::NatsBroker::start(
                    cfg,
                    tenant,
                    id,
                    Arc::downgrade(&scheduler),
                )?;
                scheduler.attach_dispatcher(broker.clone());
                Some(broker)
            }
            None => {
                crate::admin::register(&scheduler, crate::broker::wire::DEFAULT_TENANT);
                None
            }
        };
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<SessionInner>| SessionInner {
            scheduler,
            workspace,
            agent,
            #[cfg(feature = "nats")]
            broker,
            conversation,
            // The server holds the session weakly: dropping the session stops it.
            metrics_server: metrics
                .map(|bound| bound.serve(Arc::new(SessionExporter(weak.clone())))),
            tenant: tenant_name,
        });
        Ok(Self { inner })
    }

    /// Waits until the session's broker is connected and set up, so remote workers can find
    /// its tasks. Returns at once for a session without a broker.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] (with the last connection error) when it is not ready
    /// within `timeout`, [`Error::ShutDown`] after `close()`.
    pub async fn broker_ready(&self, timeout: Duration) -> Result<()> {
        #[cfg(feature = "nats")]
        if let Some(broker) = &self.inner.broker {
            return broker.ready(timeout).await;
        }
        let _ = timeout;
        Ok(())
    }

    /// The session id, which remote workers use to find its tasks.
    pub fn id(&self) -> &str {
        self.inner.scheduler.session_id()
    }

    /// The workspace every built-in tool of this session is confined to.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.workspace
    }

    /// The queue configuration the session was created with.
    pub fn queue_config(&self) -> &SessionQueueConfig {
        self.inner.scheduler.config()
    }

    /// The agent configuration the session was opened from.
    pub fn agent_config(&self) -> &AgentConfig {
        &self.inner.agent
    }

    /// Sets how a lane handles the tasks it dispatches from now on (tasks already running keep
    /// their mode and deadline).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero timeout, [`Error::ShutDown`] after `close()`.
    pub async fn set_lane_handler(
        &self,
        lane: SessionLane,
        config: LaneHandlerConfig,
    ) -> Result<()> {
        self.inner.scheduler.set_lane_handler(lane, config)
    }

    /// The current handler of a lane.
    pub fn lane_handler(&self, lane: SessionLane) -> LaneHandlerConfig {
        self.inner.scheduler.lane_handler(lane)
    }

    /// Registers the handler of a custom command type for Internal and Hybrid lanes (it also
    /// replaces a built-in tool of that name).
    ///
    /// # Examples
    ///
    /// ```
    /// # use a3s_code_core::{Agent, AgentConfig, ExternalTask, ExternalTaskResult, queue::SessionLane};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> a3s_code_core::Result<()> {
    /// # let session = Agent::from_config(AgentConfig::default()).session(".", None)?;
    /// session.register_handler("double", |task: ExternalTask| async move {
    ///     let n = task.payload["n"].as_i64().unwrap_or(0);
    ///     ExternalTaskResult::ok(serde_json::json!({ "n": n * 2 }))
    /// });
    /// let out = session.submit(SessionLane::Execute, "double", serde_json::json!({"n": 21})).await?.await?;
    /// assert_eq!(out.result["n"], 42);
    /// # Ok(()) }
    /// ```
    pub fn register_handler(&self, command_type: impl Into<String>, handler: impl TaskHandler) {
        self.inner
            .scheduler
            .register_handler(command_type.into(), Arc::new(handler));
    }

    /// Queues a task in `lane` and returns its handle at once.
    ///
    /// The task runs by the lane's handler mode when a slot frees up: an External lane hands it
    /// to workers, Internal and Hybrid lanes run a registered handler or the built-in tool of
    /// that name. Await the handle for the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPayload`] when `payload` is not a JSON object, [`Error::QueueFull`] when
    /// the lane's backlog holds `max_pending` tasks, [`Error::PayloadTooLarge`] when the session
    /// uses NATS, the lane is External and the payload's JSON is over the `NatsConfig`'s
    /// `max_object_bytes`, [`Error::ShutDown`] after `close()`.
    pub async fn submit(
        &self,
        lane: SessionLane,
        command_type: impl AsRef<str>,
        payload: Value,
    ) -> Result<TaskHandle> {
        self.inner
            .scheduler
            .submit(lane, command_type.as_ref(), payload, None)
    }

    /// [`submit`](Self::submit) with per-task settings: required worker labels (routed by the
    /// broker to workers that have them) and a timeout of its own.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), plus [`Error::InvalidConfig`] for invalid options.
    pub async fn submit_with(
        &self,
        lane: SessionLane,
        command_type: impl AsRef<str>,
        payload: Value,
        options: crate::queue::SubmitOptions,
    ) -> Result<TaskHandle> {
        self.inner
            .scheduler
            .submit(lane, command_type.as_ref(), payload, Some(options))
    }

    /// Runs a built-in tool through its lane (`read`, `grep`, `glob`, `ls` → Query; `bash`,
    /// `write`, `edit` → Execute) and waits for its result.
    ///
    /// Returns `Ok` whatever the tool or worker reported, `success: false` included.
    ///
    /// # Errors
    ///
    /// Only queue-level failures: [`Error::UnknownTool`], [`Error::InvalidPayload`],
    /// [`Error::QueueFull`], [`Error::TaskTimedOut`], [`Error::TaskCancelled`],
    /// [`Error::RetriesExhausted`], [`Error::ShutDown`].
    pub async fn tool(&self, name: &str, args: Value) -> Result<ExternalTaskResult> {
        let lane = SessionLane::for_tool(name).ok_or_else(|| Error::UnknownTool {
            name: name.to_owned(),
        })?;
        self.submit(lane, name, args).await?.await
    }

    /// Claims every task waiting for an external worker, highest-priority lane first.
    ///
    /// Each task goes to exactly one caller, however many poll concurrently. Returns an empty
    /// list when there is none (or the session is closed). Prefer
    /// [`claim_external_tasks`](Self::claim_external_tasks) in loops: it waits without polling.
    pub async fn pending_external_tasks(&self) -> Vec<ExternalTask> {
        self.inner
            .scheduler
            .claim(usize::MAX, Duration::ZERO)
            .await
            .unwrap_or_default()
    }

    /// Claims at most `max` tasks, waiting up to `wait` for the first one (a long poll).
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] once the session is closed, so worker loops can stop.
    pub async fn claim_external_tasks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ExternalTask>> {
        self.inner.scheduler.claim(max, wait).await
    }

    /// Reports the result of an external task. The first completion of a live task wins.
    ///
    /// # Errors
    ///
    /// Nothing changes on error: [`Error::TaskNotFound`] for an unknown id (or one this session
    /// no longer remembers), [`Error::TaskAlreadyCompleted`] for a second completion,
    /// [`Error::TaskTimedOut`] / [`Error::TaskCancelled`] for a result that came too late.
    pub async fn complete_external_task(
        &self,
        task_id: &str,
        result: ExternalTaskResult,
    ) -> Result<()> {
        self.inner.scheduler.complete(task_id, result)
    }

    /// Reports many results in one call; returns one outcome per result, in order.
    pub async fn complete_external_tasks(
        &self,
        results: impl IntoIterator<Item = (String, ExternalTaskResult)>,
    ) -> Vec<Result<()>> {
        self.inner
            .scheduler
            .complete_many(results.into_iter().collect())
    }

    /// Gives a claimed task back without a result (the worker could not run it): the attempt
    /// counts as lost, and the retry policy decides whether another attempt follows.
    ///
    /// # Errors
    ///
    /// As [`complete_external_task`](Self::complete_external_task).
    pub async fn abandon_external_task(&self, task_id: &str, reason: &str) -> Result<()> {
        self.inner.scheduler.abandon(task_id, reason)
    }

    /// Cancels a queued or running task; its submitter gets [`Error::TaskCancelled`].
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`], or how the task already ended ([`Error::TaskAlreadyCompleted`],
    /// [`Error::TaskTimedOut`], ...).
    pub async fn cancel(&self, task_id: &str) -> Result<()> {
        self.inner.scheduler.cancel(task_id)
    }

    /// Pauses a lane: nothing new is dispatched from it (no new slot, nothing handed to
    /// workers); tasks already holding a slot finish. Submitted tasks wait in the backlog, and
    /// since a task's timeout counts from its slot, waiting does not time them out. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for the Control lane (it cannot be paused),
    /// [`Error::ShutDown`] after `close()`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> a3s_code_core::Result<()> {
    /// use a3s_code_core::{Agent, AgentConfig, queue::SessionLane};
    /// let session = Agent::from_config(AgentConfig::default()).session(".", None)?;
    /// session.pause_lane(SessionLane::Execute).await?;
    /// assert!(session.queue_stats().await.per_lane[&SessionLane::Execute].paused);
    /// session.resume_lane(SessionLane::Execute).await?;
    /// assert!(session.pause_lane(SessionLane::Control).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pause_lane(&self, lane: SessionLane) -> Result<()> {
        self.inner.scheduler.set_paused(lane, true)
    }

    /// Resumes a paused lane: its free slots fill from the backlog at once. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] after `close()`.
    pub async fn resume_lane(&self, lane: SessionLane) -> Result<()> {
        self.inner.scheduler.set_paused(lane, false)
    }

    /// What is in the queue now.
    pub async fn queue_stats(&self) -> QueueStats {
        self.inner.scheduler.stats()
    }

    /// Counters and latency percentiles, or `None` unless `enable_metrics` is set.
    pub async fn queue_metrics(&self) -> Option<QueueMetrics> {
        self.inner.scheduler.metrics()
    }

    /// The session's metrics in the Prometheus text format (0.0.4), what `/metrics` serves:
    /// per lane backlog, oldest pending age, in flight vs capacity, and (with
    /// `enable_metrics`) counters and latency histograms. Metric names are listed in
    /// `docs/ARCHITECTURE.md`. Safe to call concurrently; reads a snapshot under the queue's
    /// lock.
    pub fn metrics_text(&self) -> String {
        let broker_ready = {
            #[cfg(feature = "nats")]
            {
                self.inner.broker.as_ref().map(|b| broker_is_ready(b))
            }
            #[cfg(not(feature = "nats"))]
            {
                None
            }
        };
        crate::observe::prometheus::render_session(crate::observe::prometheus::SessionSnapshot {
            session_id: self.id().to_owned(),
            tenant: self.inner.tenant.clone(),
            open: !self.is_closed(),
            broker_ready,
            stats: self.inner.scheduler.stats(),
            metrics: self.inner.scheduler.export_metrics(),
            demand: self.inner.scheduler.worker_demand(),
        })
    }

    /// Where `/metrics` and `/healthz` are served
    /// ([`SessionOptions::with_metrics_addr`]), or `None`.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .metrics_server
            .as_ref()
            .map(crate::observe::MetricsServer::local_addr)
    }

    /// Whether `/healthz` would answer 200: the session is open and its broker, if any, is
    /// ready.
    pub async fn is_healthy(&self) -> bool {
        !self.is_closed() && self.broker_ready(Duration::ZERO).await.is_ok()
    }

    /// The dead-letter queue's content, oldest first (empty unless `enable_dlq` is set).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.scheduler.dead_letters()
    }

    /// Submits a dead letter's task again, as a new task (a new id, the same lane, command and
    /// payload), and takes the letter out of the DLQ. The original submitter already got its
    /// failure; the new task's outcome comes through the returned handle and the events.
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`] when no dead letter has this id, [`Error::QueueFull`] (the letter
    /// stays), [`Error::ShutDown`] after `close()`.
    pub async fn retry_dead_letter(&self, task_id: &str) -> Result<TaskHandle> {
        self.inner.scheduler.retry_dead_letter(task_id)
    }

    /// Deletes one dead letter.
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`] when no dead letter has this id, [`Error::ShutDown`] after
    /// `close()`.
    pub async fn delete_dead_letter(&self, task_id: &str) -> Result<()> {
        self.inner.scheduler.delete_dead_letter(task_id)
    }

    /// Removes and returns every dead letter (purges the DLQ).
    pub async fn drain_dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.scheduler.purge_dead_letters()
    }

    /// The session's tasks in one state, a page at a time: pending (in dispatch order), in
    /// flight (oldest first, with the worker holding each when it sent a "taken" notice), or
    /// recently finished (newest first; the session keeps `finished_history` of them).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a page size outside 1 to
    /// [`MAX_PAGE`](crate::admin::MAX_PAGE) or a cursor of another listing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> a3s_code_core::Result<()> {
    /// use a3s_code_core::admin::{TaskQuery, TaskState};
    /// use a3s_code_core::{Agent, AgentConfig};
    /// let session = Agent::from_config(AgentConfig::default()).session(".", None)?;
    /// session.tool("ls", serde_json::json!({"path": "."})).await?;
    /// let page = session.tasks(&TaskQuery::new(TaskState::Finished)).await?;
    /// assert_eq!(page.tasks[0].command_type, "ls");
    /// # Ok(()) }
    /// ```
    pub async fn tasks(&self, query: &crate::admin::TaskQuery) -> Result<crate::admin::TaskPage> {
        self.inner.scheduler.tasks(query)
    }

    /// Subscribes to the queue's events (lifecycle, retries, dead letters, alerts).
    pub fn subscribe_events(&self) -> EventStream {
        self.inner.scheduler.subscribe()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.scheduler.is_closed()
    }

    /// Closes the session: queued and running tasks fail with [`Error::ShutDown`], internal
    /// handlers are aborted, waiting workers return. Idempotent.
    pub async fn close(&self) {
        crate::admin::unregister(&self.inner.scheduler);
        self.inner.scheduler.close().await;
    }

    // ----- the agent loop (agent/run.rs) ----------------------------------------------------

    /// Sends `prompt` to the model and runs the tool calls it asks for, through the lanes,
    /// until it answers; see [`agent::run`](crate::agent::run) and the example of
    /// [`AgentResponse`].
    ///
    /// Sends of one session run one after the other; the conversation
    /// ([`history`](Self::history)) is updated only when a send succeeds.
    ///
    /// ```no_run
    /// # async fn f(session: a3s_code_core::AgentSession) -> a3s_code_core::Result<()> {
    /// let result = session.send("Search for all authentication functions").await?;
    /// println!("{} ({} tool calls, {} tokens)", result.text, result.tool_calls.len(), result.usage.total_tokens());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ModelFailed`] when the provider refuses or fails (bad key, unknown model, rate limit
    /// after retries), [`Error::InvalidConfig`] when the model or its API key is not configured,
    /// the Generate task's own failures ([`Error::TaskTimedOut`], ...), [`Error::ShutDown`]
    /// after `close()`. A failed tool call is not an error: the model gets it as a result.
    pub async fn send(&self, prompt: impl Into<String>) -> Result<AgentResponse> {
        self.inner.conversation.send(self, prompt.into()).await
    }

    /// Like [`send`](Self::send), but streams the model's text, the tool calls and the
    /// session's queue events as they happen. Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn f(session: a3s_code_core::AgentSession) -> a3s_code_core::Result<()> {
    /// use a3s_code_core::agent::AgentEvent;
    /// let mut stream = session.stream("Run all tests in parallel");
    /// while let Some(event) = stream.recv().await {
    ///     if let AgentEvent::TextDelta { text } = event {
    ///         print!("{text}");
    ///     }
    /// }
    /// let result = stream.finish().await?;
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, prompt: impl Into<String>) -> AgentStream {
        self.inner.conversation.stream(self, prompt.into())
    }

    /// The conversation so far (user, assistant and tool messages; the system prompt is not
    /// included).
    pub fn history(&self) -> Vec<Message> {
        self.inner.conversation.history()
    }
}

/// Whether the broker is ready, without waiting: `ready` with a zero timeout checks the status
/// before its timer (which needs the runtime's context).
#[cfg(feature = "nats")]
fn broker_is_ready(broker: &crate::broker::nats::session::NatsBroker) -> bool {
    use futures_util::FutureExt;
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let _context = handle.enter();
    broker
        .ready(Duration::ZERO)
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// A session's `/metrics` and `/healthz`; holds it weakly (the server must not keep it open).
struct SessionExporter(std::sync::Weak<SessionInner>);

impl crate::observe::Exporter for SessionExporter {
    fn render(&self) -> String {
        match self.0.upgrade() {
            Some(inner) => AgentSession { inner }.metrics_text(),
            None => String::new(),
        }
    }

    fn healthy(&self) -> futures_util::future::BoxFuture<'_, bool> {
        let session = self.0.upgrade().map(|inner| AgentSession { inner });
        Box::pin(async move {
            match session {
                Some(s) => s.is_healthy().await,
                None => false,
            }
        })
    }
}

/// The NATS settings of a new session: its options, else the agent's `distribution` block, else
/// `A3S_NATS_URL`.
#[cfg(feature = "nats")]
fn nats_config(
    explicit: Option<crate::broker::NatsConfig>,
    agent: &AgentConfig,
) -> Option<crate::broker::NatsConfig> {
    if explicit.is_some() {
        return explicit;
    }
    let dist = &agent.distribution;
    if let Some(url) = &dist.nats_url {
        let mut cfg = crate::broker::NatsConfig::new(url);
        if let Some(prefix) = &dist.subject_prefix {
            cfg = cfg.with_prefix(prefix.clone());
        }
        if let Some(creds) = &dist.credentials_file {
            cfg = cfg.with_credentials_file(creds.clone());
        }
        if let Some(replicas) = dist.replicas {
            cfg = cfg.with_replicas(replicas);
        }
        return Some(cfg);
    }
    crate::broker::NatsConfig::from_env().ok()
}

fn validate_session_id(id: String) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid_config(format!(
            "session_id {id:?} must be 1 to 128 letters, digits, '-' or '_' (it becomes a NATS subject token)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<AgentSession>();
        assert_send_sync::<TaskHandle>();
        assert_send_sync::<crate::Agent>();
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_distribution_block_gives_the_nats_settings() {
        let agent = AgentConfig::parse(
            "distribution {\n  nats_url = \"nats://a:1, nats://b:2\"\n  replicas = 3\n}\n",
            "agent.hcl",
        )
        .unwrap();
        let cfg = nats_config(None, &agent).unwrap();
        assert_eq!(cfg.servers, ["nats://a:1", "nats://b:2"]);
        assert_eq!(cfg.replicas, 3);
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(validate_session_id("abc-123_X".into()).is_ok());
        for bad in ["", "a.b", "a*", "a b", ">"] {
            assert_eq!(
                validate_session_id(bad.into()).unwrap_err().code(),
                "InvalidConfig"
            );
        }
    }
}
