//! A ready-made worker loop: claim as many tasks as there are free slots, run them, report the
//! results in batches. It drives any [`TaskSource`]: an in-process [`AgentSession`] or a remote
//! one.
//!
//! Writing your own loop with `pending_external_tasks()` / `complete_external_task()` is just as
//! valid; this one adds long polling, a concurrency bound, batching and a graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::agent::AgentSession;
pub use crate::broker::wire::WorkerState;
use crate::error::{Error, Result};
pub use crate::observe::WorkerStats;
use crate::observe::prometheus::{WorkerLaneCounts, WorkerSnapshot};
use crate::observe::{Exporter, MetricsServer};
use crate::queue::SessionLane;
use crate::queue::scheduler::TaskHandler;
use crate::task::{ExternalTask, ExternalTaskResult};
use crate::tools::{OutputSink, ToolContext, Workspace, execute_builtin_with};

#[cfg(feature = "nats")]
pub use crate::broker::nats::worker::{WorkerClient, WorkerClientOptions};

/// The old name of [`WorkerClient`] (a worker's handle is not a session).
#[cfg(feature = "nats")]
#[deprecated(since = "0.2.0", note = "renamed `WorkerClient`")]
pub type RemoteSession = WorkerClient;

/// The old name of [`WorkerClientOptions`].
#[cfg(feature = "nats")]
#[deprecated(since = "0.2.0", note = "renamed `WorkerClientOptions`")]
pub type RemoteOptions = WorkerClientOptions;

/// Where a worker claims tasks and reports results.
pub trait TaskSource: Send + Sync + 'static {
    /// Claims up to `max` tasks, waiting up to `wait` for the first.
    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<ExternalTask>>>;
    /// Reports results; one outcome per result.
    fn complete(
        &self,
        results: Vec<(String, ExternalTaskResult)>,
    ) -> BoxFuture<'_, Result<Vec<Result<()>>>>;
    /// Ids of tasks to stop running (cancelled or timed out by their session), if the source
    /// can tell.
    fn cancellations(&self) -> Option<broadcast::Receiver<String>> {
        None
    }
    /// Where a task's output chunks go while it runs, if the source streams them.
    fn output_sink(&self, _task: &ExternalTask) -> Option<OutputSink> {
        None
    }
    /// How the source's connection stands, for the worker's `/metrics` and `/healthz`
    /// (default: connected, no worker id, no heartbeat).
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }
    /// The worker loop's slots and busy slots (a remote source announces them in its presence).
    fn report_load(&self, _slots: usize, _busy: usize) {}
    /// The worker takes no new tasks from now on (it finishes those it holds).
    fn drain(&self) {}
    /// Gives a claimed task back without a result: it is offered again after the retry policy's
    /// delay, or fails when it has no attempts left.
    fn abandon<'a>(&'a self, task_id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Ends a claimed task the worker will not run or report, because its deadline passed
    /// before it started or while it ran (its session has failed it already). Default:
    /// nothing to do (an in-process session times its tasks out itself).
    fn skip<'a>(&'a self, _task_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// How many tasks a claim takes when the caller gives no limit.
    fn default_claim_limit(&self) -> usize;
    /// Claims as `options` say: what the spec's `pending_external_tasks()` does without
    /// options (an in-process session answers `[]` once closed, so the spec's loop just finds
    /// nothing), and the bindings' `pending_external_tasks(limit=, wait_ms=)` with them (a
    /// closed session: [`Error::ShutDown`], so loops can stop).
    fn pending(&self, options: ClaimOptions) -> BoxFuture<'_, Result<Vec<ExternalTask>>> {
        let (max, wait) = options.resolve(self.default_claim_limit());
        self.claim(max, wait)
    }
}

/// How much one claim takes and how long it waits: the optional arguments of
/// `pending_external_tasks` in every language, resolved in one place.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use a3s_code_core::worker::ClaimOptions;
/// assert_eq!(ClaimOptions::default().resolve(256), (256, Duration::ZERO));
/// let opts = ClaimOptions::new().with_limit(8).with_wait(Duration::from_millis(500));
/// assert_eq!(opts.resolve(256), (8, Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    /// At most this many tasks (default: the source's [`TaskSource::default_claim_limit`]:
    /// every claimable task of an in-process session, 256 over NATS).
    pub limit: Option<usize>,
    /// Wait up to this long for the first task (default, and zero: return at once).
    pub wait: Option<Duration>,
}

impl ClaimOptions {
    /// The names the bindings accept (Python keywords; Node uses them in camelCase). `wait_ms` is
    /// milliseconds; Python also keeps its older `wait` in seconds.
    pub const FIELDS: &'static [&'static str] = &["limit", "wait_ms"];

    /// No limit, no wait.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes at most `limit` tasks.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Waits up to `wait` for the first task.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// `(max, wait)` for a source whose default limit is `default_limit`.
    pub fn resolve(self, default_limit: usize) -> (usize, Duration) {
        (
            self.limit.unwrap_or(default_limit),
            self.wait.unwrap_or(Duration::ZERO),
        )
    }
}

/// What a [`TaskSource`] tells about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHealth {
    /// Whether it can claim and report now (connected to its broker; an open session).
    pub connected: bool,
    /// The worker id it reports results with, if it has one.
    pub worker_id: Option<String>,
    /// Time since it last renewed its leases, if it holds leases.
    pub heartbeat_age: Option<Duration>,
    /// Whether work exists for it yet, or it drains (`Serving` for an in-process session).
    pub state: WorkerState,
}

impl Default for SourceHealth {
    fn default() -> Self {
        Self {
            connected: true,
            worker_id: None,
            heartbeat_age: None,
            state: WorkerState::Serving,
        }
    }
}

impl TaskSource for AgentSession {
    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<ExternalTask>>> {
        Box::pin(self.claim_external_tasks(max, wait))
    }

    fn complete(
        &self,
        results: Vec<(String, ExternalTaskResult)>,
    ) -> BoxFuture<'_, Result<Vec<Result<()>>>> {
        Box::pin(async move { Ok(self.complete_external_tasks(results).await) })
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            connected: !self.is_closed(),
            ..SourceHealth::default()
        }
    }

    fn abandon<'a>(&'a self, task_id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.abandon_external_task(task_id, reason))
    }

    fn default_claim_limit(&self) -> usize {
        usize::MAX
    }

    fn pending(&self, options: ClaimOptions) -> BoxFuture<'_, Result<Vec<ExternalTask>>> {
        // The spec's call without options: what `pending_external_tasks()` does (an empty list
        // once the session is closed, so its worker loop just finds nothing).
        if options == ClaimOptions::default() {
            return Box::pin(async move { Ok(self.pending_external_tasks().await) });
        }
        let (max, wait) = options.resolve(self.default_claim_limit());
        self.claim(max, wait)
    }
}

#[cfg(feature = "nats")]
impl TaskSource for WorkerClient {
    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<ExternalTask>>> {
        Box::pin(self.claim_external_tasks(max, wait))
    }

    fn complete(
        &self,
        results: Vec<(String, ExternalTaskResult)>,
    ) -> BoxFuture<'_, Result<Vec<Result<()>>>> {
        Box::pin(self.complete_external_tasks(results))
    }

    fn cancellations(&self) -> Option<broadcast::Receiver<String>> {
        Some(WorkerClient::cancellations(self))
    }

    fn output_sink(&self, task: &ExternalTask) -> Option<OutputSink> {
        Some(WorkerClient::output_sink(self, task))
    }

    fn abandon<'a>(&'a self, task_id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.abandon_external_task(task_id, reason))
    }

    fn skip<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = self.skip_external_task(task_id).await;
        })
    }

    fn default_claim_limit(&self) -> usize {
        WorkerClient::DEFAULT_CLAIM_LIMIT
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            connected: self.is_connected(),
            worker_id: Some(self.worker_id().to_owned()),
            heartbeat_age: Some(self.heartbeat_age()),
            state: self.state(),
        }
    }

    fn report_load(&self, slots: usize, busy: usize) {
        WorkerClient::report_load(self, slots, busy);
    }

    fn drain(&self) {
        WorkerClient::drain(self);
    }
}

/// What a [`Worker`] runs its tasks with.
#[derive(Clone)]
pub enum Executor {
    /// The built-in tools, confined to a workspace; `bash` output is streamed to the source.
    Builtin(Workspace),
    /// Your own handler.
    Handler(Arc<dyn TaskHandler>),
}

impl<H: TaskHandler> From<H> for Executor {
    fn from(handler: H) -> Self {
        Executor::Handler(Arc::new(handler))
    }
}

impl Executor {
    async fn run(&self, task: ExternalTask, output: Option<OutputSink>) -> ExternalTaskResult {
        match self {
            Executor::Builtin(ws) => {
                let mut ctx = ToolContext::new();
                if let Some(sink) = output {
                    ctx = ctx.with_output(sink);
                }
                execute_builtin_with(&task, ws, &ctx).await
            }
            Executor::Handler(h) => h.handle(task).await,
        }
    }
}

/// The built-in tools as an executor: what `a3s-code worker` runs.
///
/// # Examples
///
/// ```
/// # use a3s_code_core::{tools::Workspace, worker::builtin_handler};
/// let executor = builtin_handler(Workspace::new(".").unwrap().with_bash(false));
/// # let _ = executor;
/// ```
pub fn builtin_handler(workspace: Workspace) -> Executor {
    Executor::Builtin(workspace)
}

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks run at once (default 8).
    pub concurrency: usize,
    /// How long one claim waits for work before asking again (default 1 s).
    pub poll_wait: Duration,
    /// Wait after a failed claim (broker down) before trying again (default 500 ms).
    pub retry_delay: Duration,
    /// The `worker` label of its metrics (default: the source's worker id, else `local`).
    pub name: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            poll_wait: Duration::from_secs(1),
            retry_delay: Duration::from_millis(500),
            name: None,
        }
    }
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    skipped_expired: AtomicU64,
    rejected: AtomicU64,
    /// Told to stop: `/readyz` answers 503 while running tasks finish.
    draining: AtomicBool,
    /// Tasks running now (not counting the slot held while waiting for work).
    running: AtomicU64,
    /// The same per lane, for `/metrics`.
    lanes: [LaneCounters; 4],
}

/// Counts a running task in [`Counters::running`] until dropped (finished or aborted).
struct Running(Arc<Counters>);

impl Running {
    fn start(counters: &Arc<Counters>) -> Self {
        counters.running.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct LaneCounters {
    claimed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    skipped_expired: AtomicU64,
    rejected: AtomicU64,
}

impl LaneCounters {
    fn snapshot(&self) -> WorkerLaneCounts {
        WorkerLaneCounts {
            claimed: self.claimed.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            skipped_expired: self.skipped_expired.load(Ordering::Relaxed),
        }
    }
}

impl Counters {
    fn snapshot(&self, busy: u64) -> WorkerStats {
        WorkerStats {
            claimed: self.claimed.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped_expired: self.skipped_expired.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            busy,
        }
    }
}

/// A running worker loop. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use a3s_code_core::{Agent, AgentConfig, tools::Workspace};
/// use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
/// use a3s_code_core::worker::{Worker, WorkerConfig, builtin_handler};
///
/// # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
/// let session = Agent::from_config(AgentConfig::default()).session(".", None)?;
/// session.set_lane_handler(SessionLane::Query,
///     LaneHandlerConfig { mode: TaskHandlerMode::External, timeout_ms: 30_000 }).await?;
/// let worker = Worker::spawn(Arc::new(session.clone()), builtin_handler(Workspace::new(".")?), WorkerConfig::default());
///
/// let out = session.tool("ls", serde_json::json!({})).await?;
/// assert!(out.success);
/// let stats = worker.shutdown().await;
/// assert_eq!((stats.claimed, stats.succeeded), (1, 1));
/// # Ok(()) }
/// ```
pub struct Worker {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
    counters: Arc<Counters>,
    concurrency: usize,
    source: Arc<dyn TaskSource>,
    name: Option<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the loop on the current tokio runtime.
    pub fn spawn(
        source: Arc<dyn TaskSource>,
        executor: impl Into<Executor>,
        config: WorkerConfig,
    ) -> Self {
        let concurrency = config.concurrency.max(1);
        let name = config.name.clone();
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let slots = Arc::new(Semaphore::new(concurrency));
        let join = tokio::spawn(run(
            source.clone(),
            executor.into(),
            config,
            stop_rx,
            counters.clone(),
            slots,
        ));
        Self {
            stop,
            join,
            counters,
            concurrency,
            source,
            name,
        }
    }

    /// The worker's counters now.
    pub fn stats(&self) -> WorkerStats {
        let busy = self.counters.running.load(Ordering::Relaxed);
        self.counters.snapshot(busy)
    }

    /// The worker's metrics in the Prometheus text format (what
    /// [`serve_metrics`](Self::serve_metrics) serves): tasks claimed / succeeded / failed /
    /// rejected / expired per lane, busy slots, heartbeat age, broker connection.
    pub fn metrics_text(&self) -> String {
        self.exporter().render()
    }

    /// What [`serve_metrics`](Self::serve_metrics) serves, to combine with other exporters.
    pub fn exporter(&self) -> Arc<dyn Exporter> {
        Arc::new(WorkerExporter {
            counters: self.counters.clone(),
            concurrency: self.concurrency,
            source: self.source.clone(),
            name: self.name.clone(),
        })
    }

    /// Serves `GET /metrics` and `GET /healthz` (200 while the source is connected, else 503)
    /// on `addr` until the returned server is dropped. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `addr` cannot be bound.
    pub fn serve_metrics(&self, addr: std::net::SocketAddr) -> Result<MetricsServer> {
        MetricsServer::start(addr, self.exporter())
    }

    /// Stops claiming new tasks; running ones finish and are reported.
    pub fn initiate_shutdown(&self) {
        self.counters.draining.store(true, Ordering::Relaxed);
        self.source.drain();
        let _ = self.stop.send(true);
    }

    /// Whether work exists for the worker yet (`Waiting` before its first session exists),
    /// or it drains.
    pub fn state(&self) -> WorkerState {
        self.source.health().state
    }

    /// Stops claiming, waits for running tasks to be reported, and returns the final counters.
    pub async fn shutdown(self) -> WorkerStats {
        self.initiate_shutdown();
        let _ = self.join.await;
        self.counters.snapshot(0)
    }

    /// Waits until the loop ends by itself (its source shut down), then returns the counters.
    pub async fn join(self) -> WorkerStats {
        let _ = self.join.await;
        self.counters.snapshot(0)
    }
}

/// A worker's `/metrics` and `/healthz`.
struct WorkerExporter {
    counters: Arc<Counters>,
    concurrency: usize,
    source: Arc<dyn TaskSource>,
    name: Option<String>,
}

impl Exporter for WorkerExporter {
    fn render(&self) -> String {
        let busy = self.counters.running.load(Ordering::Relaxed);
        let health = self.source.health();
        crate::observe::prometheus::render_worker(WorkerSnapshot {
            worker_id: self
                .name
                .clone()
                .or(health.worker_id)
                .unwrap_or_else(|| "local".to_owned()),
            stats: self.counters.snapshot(busy),
            lanes: SessionLane::ALL.map(|l| self.counters.lanes[l.index()].snapshot()),
            slots: self.concurrency,
            connected: health.connected,
            heartbeat_age: health.heartbeat_age,
            state: health.state,
        })
    }

    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.source.health().connected })
    }

    fn health_detail(&self) -> Option<String> {
        Some(self.state().as_str().to_owned())
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(
            async move { self.source.health().connected && self.state() != WorkerState::Draining },
        )
    }
}

impl WorkerExporter {
    /// The source's state, or draining once the worker was told to stop (an in-process source
    /// does not know).
    fn state(&self) -> WorkerState {
        match self.counters.draining.load(Ordering::Relaxed) {
            true => WorkerState::Draining,
            false => self.source.health().state,
        }
    }
}

async fn run(
    source: Arc<dyn TaskSource>,
    executor: Executor,
    config: WorkerConfig,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
    slots: Arc<Semaphore>,
) {
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Report>();
    let reporter = tokio::spawn(report(source.clone(), done_rx, counters.clone()));
    // Running tasks by id, so a cancel from the session can abort them (a bash child is killed).
    let running: Arc<
        parking_lot::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    > = Default::default();
    let canceller = source.cancellations().map(|mut rx| {
        let running = running.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(id) => {
                        if let Some(h) = running.lock().remove(&id) {
                            h.abort();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    });
    loop {
        // Claim only what we have room for: wait for at least one free slot first.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        let free = slots.available_permits() + 1;
        source.report_load(config.concurrency.max(1), config.concurrency.max(1) - free);
        let claimed = tokio::select! {
            r = source.claim(free, config.poll_wait) => r,
            _ = stop.changed() => break,
        };
        let tasks = match claimed {
            Ok(tasks) => tasks,
            Err(Error::ShutDown) => break,
            Err(err) => {
                tracing::warn!(error = %err, "claiming tasks failed; retrying");
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(config.retry_delay) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        counters
            .claimed
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let mut first = Some(first);
        for task in tasks {
            let lane = &counters.lanes[task.lane.index()];
            lane.claimed.fetch_add(1, Ordering::Relaxed);
            let permit = match first.take() {
                Some(p) => p,
                None => slots.clone().acquire_owned().await.expect("never closed"),
            };
            if task.is_timed_out() {
                counters.skipped_expired.fetch_add(1, Ordering::Relaxed);
                lane.skipped_expired.fetch_add(1, Ordering::Relaxed);
                source.skip(&task.task_id).await;
                continue;
            }
            let (executor, done, running2) = (executor.clone(), done_tx.clone(), running.clone());
            let source2 = source.clone();
            let output = source.output_sink(&task);
            let id = task.task_id.clone();
            let mut guard = running.lock();
            let span = task.run_span(None);
            let counted = Running::start(&counters);
            let join = tokio::spawn(async move {
                let _permit = permit;
                let _running = counted;
                let deadline = task.deadline();
                let id = task.task_id.clone();
                let lane = task.lane;
                // Past the deadline the session has already failed the task: drop the attempt.
                let run = tokio::time::timeout_at(deadline, executor.run(task, output));
                let outcome = tracing::Instrument::instrument(run, span).await;
                running2.lock().remove(&id);
                match outcome {
                    Ok(result) => {
                        let _ = done.send(Report {
                            task_id: id,
                            lane,
                            result,
                            deadline,
                        });
                    }
                    // Past its deadline: the session failed it; end the delivery.
                    Err(_) => source2.skip(&id).await,
                }
            });
            guard.insert(id, join.abort_handle());
        }
    }
    // Graceful: wait for running tasks (their permits), then flush their results.
    let _ = slots.acquire_many(config.concurrency.max(1) as u32).await;
    drop(done_tx);
    let _ = reporter.await;
    if let Some(c) = canceller {
        c.abort();
    }
}

/// A finished task's result on its way to the source.
struct Report {
    task_id: String,
    lane: SessionLane,
    result: ExternalTaskResult,
    /// Past it the session has failed the task: stop trying to report.
    deadline: tokio::time::Instant,
}

/// Reports results in batches. A result the source could not take because the broker is
/// unreachable is retried until the task's deadline: dropping it would leave the task claimed.
async fn report(
    source: Arc<dyn TaskSource>,
    mut done: mpsc::UnboundedReceiver<Report>,
    counters: Arc<Counters>,
) {
    let mut retry: Vec<Report> = Vec::new();
    loop {
        // A retry goes out as it was, alone: the same results make the same messages (and
        // message ids), so what the server stored after all is not stored twice.
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() && done.recv_many(&mut batch, 256).await == 0 {
            return;
        }
        let request: Vec<_> = batch
            .iter()
            .map(|r| (r.task_id.clone(), r.result.clone()))
            .collect();
        let outcomes: Vec<Result<()>> = match source.complete(request).await {
            Ok(outcomes) => outcomes,
            Err(err) => batch
                .iter()
                .map(|_| {
                    Err(Error::BrokerUnavailable {
                        reason: err.to_string(),
                    })
                })
                .collect(),
        };
        let now = tokio::time::Instant::now();
        for (r, outcome) in batch.into_iter().zip(outcomes) {
            let lane = &counters.lanes[r.lane.index()];
            let (counter, per_lane) = match outcome {
                Ok(()) if r.result.success => (&counters.succeeded, &lane.succeeded),
                Ok(()) => (&counters.failed, &lane.failed),
                Err(Error::BrokerUnavailable { reason }) if now < r.deadline => {
                    tracing::debug!(
                        task_id = r.task_id,
                        reason,
                        "reporting a result failed; retrying"
                    );
                    retry.push(r);
                    continue;
                }
                Err(err) => {
                    tracing::debug!(task_id = r.task_id, error = %err, "result refused");
                    (&counters.rejected, &lane.rejected)
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            per_lane.fetch_add(1, Ordering::Relaxed);
        }
        if !retry.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
