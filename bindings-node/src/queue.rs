//! Lanes, handler modes, the queue configuration, stats, metrics, dead letters and events:
//! `a3s_code_core::queue` in JavaScript shapes (camelCase fields, milliseconds as numbers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use a3s_code_core as core;
use a3s_code_core::queue as q;
use indexmap::IndexMap;
use napi::Env;
use napi::bindgen_prelude::AsyncGenerator;
use napi_derive::napi;
use serde_json::Value;

use crate::error::{count, non_negative, number};
use crate::runtime::{Promise, promise};

/// The four priority lanes of a session; a lower priority number runs first.
/// At run time each member is its lowercase name (`SessionLane.Query === 'query'`).
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum SessionLane {
    /// P0: control operations (cancel, pause, status).
    Control,
    /// P1: read-only, parallelizable tools (read, grep, glob, ls).
    Query,
    /// P2: tools with side effects (bash, write, edit).
    Execute,
    /// P3: model calls.
    Generate,
}

impl From<SessionLane> for q::SessionLane {
    fn from(lane: SessionLane) -> Self {
        match lane {
            SessionLane::Control => q::SessionLane::Control,
            SessionLane::Query => q::SessionLane::Query,
            SessionLane::Execute => q::SessionLane::Execute,
            SessionLane::Generate => q::SessionLane::Generate,
        }
    }
}

impl From<q::SessionLane> for SessionLane {
    fn from(lane: q::SessionLane) -> Self {
        match lane {
            q::SessionLane::Control => SessionLane::Control,
            q::SessionLane::Query => SessionLane::Query,
            q::SessionLane::Execute => SessionLane::Execute,
            q::SessionLane::Generate => SessionLane::Generate,
        }
    }
}

/// How a lane runs its tasks. At run time each member is its lowercase name.
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum TaskHandlerMode {
    /// Run in this process with the built-in tools (the default).
    Internal,
    /// Hand the task to workers: `pendingExternalTasks()` in process, or a broker.
    External,
    /// Run in this process and publish Started / Completed / Failed events.
    Hybrid,
}

impl From<TaskHandlerMode> for q::TaskHandlerMode {
    fn from(mode: TaskHandlerMode) -> Self {
        match mode {
            TaskHandlerMode::Internal => q::TaskHandlerMode::Internal,
            TaskHandlerMode::External => q::TaskHandlerMode::External,
            TaskHandlerMode::Hybrid => q::TaskHandlerMode::Hybrid,
        }
    }
}

impl From<q::TaskHandlerMode> for TaskHandlerMode {
    fn from(mode: q::TaskHandlerMode) -> Self {
        match mode {
            q::TaskHandlerMode::Internal => TaskHandlerMode::Internal,
            q::TaskHandlerMode::External => TaskHandlerMode::External,
            q::TaskHandlerMode::Hybrid => TaskHandlerMode::Hybrid,
        }
    }
}

/// How lost attempts are retried. At run time each member is its lowercase name.
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum RetryStrategy {
    /// A lost attempt fails the task.
    None,
    /// Wait `initialDelayMs` before every retry.
    Fixed,
    /// Wait `initialDelayMs`, then twice that, and so on, capped at `maxDelayMs`.
    Exponential,
}

impl From<RetryStrategy> for q::RetryStrategy {
    fn from(s: RetryStrategy) -> Self {
        match s {
            RetryStrategy::None => q::RetryStrategy::None,
            RetryStrategy::Fixed => q::RetryStrategy::Fixed,
            RetryStrategy::Exponential => q::RetryStrategy::Exponential,
        }
    }
}

impl From<q::RetryStrategy> for RetryStrategy {
    fn from(s: q::RetryStrategy) -> Self {
        match s {
            q::RetryStrategy::None => RetryStrategy::None,
            q::RetryStrategy::Fixed => RetryStrategy::Fixed,
            q::RetryStrategy::Exponential => RetryStrategy::Exponential,
        }
    }
}

/// How one lane handles its tasks and how long each may take. A field left out takes the
/// core's default (`LaneHandlerConfig::default()` in the core's docs).
#[napi(object)]
#[derive(Debug)]
pub struct LaneHandlerConfig {
    /// Internal, External or Hybrid.
    pub mode: Option<TaskHandlerMode>,
    /// The budget of each task of the lane in milliseconds, across attempts.
    pub timeout_ms: Option<i64>,
}

impl LaneHandlerConfig {
    /// The core configuration: given fields over the core's defaults.
    pub(crate) fn into_core(self) -> core::Result<q::LaneHandlerConfig> {
        let mut c = q::LaneHandlerConfig::default();
        if let Some(mode) = self.mode {
            c.mode = mode.into();
        }
        if let Some(ms) = self.timeout_ms {
            c.timeout_ms = non_negative("timeoutMs", ms)?;
        }
        Ok(c)
    }
}

impl From<q::LaneHandlerConfig> for LaneHandlerConfig {
    fn from(c: q::LaneHandlerConfig) -> Self {
        Self {
            mode: Some(c.mode.into()),
            timeout_ms: Some(number(c.timeout_ms)),
        }
    }
}

/// Retries of lost attempts (worker crash, lease expiry, a failing handler). A field left out
/// takes the core's default (`RetryPolicy::default()` in the core's docs: exponential, up to 3
/// retries).
#[napi(object)]
#[derive(Debug)]
pub struct RetryPolicy {
    /// none, fixed or exponential.
    pub strategy: Option<RetryStrategy>,
    /// Retries after the first attempt (ignored with `none`).
    pub max_retries: Option<u32>,
    /// Delay before the first retry, in milliseconds.
    pub initial_delay_ms: Option<i64>,
    /// Upper bound of any delay, in milliseconds.
    pub max_delay_ms: Option<i64>,
}

impl RetryPolicy {
    fn into_core(self) -> core::Result<q::RetryPolicy> {
        let mut p = q::RetryPolicy::default();
        if let Some(s) = self.strategy {
            p.strategy = s.into();
        }
        if let Some(n) = self.max_retries {
            p.max_retries = n;
        }
        if let Some(ms) = self.initial_delay_ms {
            p.initial_delay_ms = non_negative("retryPolicy.initialDelayMs", ms)?;
        }
        if let Some(ms) = self.max_delay_ms {
            p.max_delay_ms = non_negative("retryPolicy.maxDelayMs", ms)?;
        }
        Ok(p)
    }
}

impl From<q::RetryPolicy> for RetryPolicy {
    fn from(p: q::RetryPolicy) -> Self {
        Self {
            strategy: Some(p.strategy.into()),
            max_retries: Some(p.max_retries),
            initial_delay_ms: Some(number(p.initial_delay_ms)),
            max_delay_ms: Some(number(p.max_delay_ms)),
        }
    }
}

/// The queue configuration of a session. Every field is optional: one left out takes the
/// core's default (`SessionQueueConfig::default()` in the core's docs; `queueConfig()` returns
/// every field filled in).
#[napi(object)]
#[derive(Debug)]
pub struct SessionQueueConfig {
    /// Control-lane tasks holding a slot at once.
    pub control_max_concurrency: Option<i64>,
    /// Query-lane tasks holding a slot at once.
    pub query_max_concurrency: Option<i64>,
    /// Execute-lane tasks holding a slot at once.
    pub execute_max_concurrency: Option<i64>,
    /// Generate-lane tasks holding a slot at once.
    pub generate_max_concurrency: Option<i64>,
    /// Per-lane bound of tasks waiting for a slot; beyond it `submit` rejects with
    /// `QueueFull`.
    pub max_pending: Option<i64>,
    /// Record counters and latency percentiles for `queueMetrics()`.
    pub enable_metrics: Option<bool>,
    /// Keep failed and timed-out tasks in a dead-letter queue.
    pub enable_dlq: Option<bool>,
    /// How many dead letters are kept.
    pub dlq_max_size: Option<i64>,
    /// Emit `alert` events when a threshold is crossed.
    pub enable_alerts: Option<bool>,
    /// Alert when a lane's backlog reaches this many tasks.
    pub queue_depth_alert_threshold: Option<i64>,
    /// Alert when a task's latency exceeds this many milliseconds.
    pub latency_alert_threshold_ms: Option<i64>,
    /// Timeout of lanes without their own `laneHandlers` entry, in milliseconds.
    pub default_timeout_ms: Option<i64>,
    /// Retries of lost attempts (default: the core's `RetryPolicy::default()`).
    pub retry_policy: Option<RetryPolicy>,
    /// Per-lane handler mode and timeout, keyed by lane (`{ query: { mode: 'external' } }`).
    #[napi(ts_type = "Partial<Record<SessionLane, LaneHandlerConfig>>")]
    pub lane_handlers: Option<IndexMap<String, LaneHandlerConfig>>,
    /// How many finished tasks the session keeps for `tasks({ state: 'finished' })` and the
    /// dashboard (default 64; 0 keeps none).
    pub finished_history: Option<i64>,
}

impl SessionQueueConfig {
    /// The core configuration: given fields over `SessionQueueConfig::default()`.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for a negative number or an unknown lane name.
    pub(crate) fn into_core(self) -> core::Result<core::SessionQueueConfig> {
        let mut c = core::SessionQueueConfig::default();
        let counts = [
            (
                self.control_max_concurrency,
                "controlMaxConcurrency",
                &mut c.control_max_concurrency,
            ),
            (
                self.query_max_concurrency,
                "queryMaxConcurrency",
                &mut c.query_max_concurrency,
            ),
            (
                self.execute_max_concurrency,
                "executeMaxConcurrency",
                &mut c.execute_max_concurrency,
            ),
            (
                self.generate_max_concurrency,
                "generateMaxConcurrency",
                &mut c.generate_max_concurrency,
            ),
            (self.max_pending, "maxPending", &mut c.max_pending),
            (self.dlq_max_size, "dlqMaxSize", &mut c.dlq_max_size),
            (
                self.finished_history,
                "finishedHistory",
                &mut c.finished_history,
            ),
            (
                self.queue_depth_alert_threshold,
                "queueDepthAlertThreshold",
                &mut c.queue_depth_alert_threshold,
            ),
        ];
        for (value, name, field) in counts {
            if let Some(v) = value {
                *field = count(name, v)?;
            }
        }
        let millis = [
            (
                self.latency_alert_threshold_ms,
                "latencyAlertThresholdMs",
                &mut c.latency_alert_threshold_ms,
            ),
            (
                self.default_timeout_ms,
                "defaultTimeoutMs",
                &mut c.default_timeout_ms,
            ),
        ];
        for (value, name, field) in millis {
            if let Some(v) = value {
                *field = non_negative(name, v)?;
            }
        }
        let flags = [
            (self.enable_metrics, &mut c.enable_metrics),
            (self.enable_dlq, &mut c.enable_dlq),
            (self.enable_alerts, &mut c.enable_alerts),
        ];
        for (value, field) in flags {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(p) = self.retry_policy {
            c.retry_policy = p.into_core()?;
        }
        for (lane, handler) in self.lane_handlers.unwrap_or_default() {
            c.lane_handlers.insert(lane.parse()?, handler.into_core()?);
        }
        Ok(c)
    }
}

impl From<&core::SessionQueueConfig> for SessionQueueConfig {
    fn from(c: &core::SessionQueueConfig) -> Self {
        Self {
            control_max_concurrency: Some(number(c.control_max_concurrency)),
            query_max_concurrency: Some(number(c.query_max_concurrency)),
            execute_max_concurrency: Some(number(c.execute_max_concurrency)),
            generate_max_concurrency: Some(number(c.generate_max_concurrency)),
            max_pending: Some(number(c.max_pending)),
            enable_metrics: Some(c.enable_metrics),
            enable_dlq: Some(c.enable_dlq),
            dlq_max_size: Some(number(c.dlq_max_size)),
            enable_alerts: Some(c.enable_alerts),
            queue_depth_alert_threshold: Some(number(c.queue_depth_alert_threshold)),
            latency_alert_threshold_ms: Some(number(c.latency_alert_threshold_ms)),
            default_timeout_ms: Some(number(c.default_timeout_ms)),
            retry_policy: Some(c.retry_policy.into()),
            finished_history: Some(number(c.finished_history)),
            lane_handlers: Some(
                q::SessionLane::ALL
                    .iter()
                    .filter_map(|lane| {
                        Some((
                            lane.as_str().to_owned(),
                            (*c.lane_handlers.get(lane)?).into(),
                        ))
                    })
                    .collect(),
            ),
        }
    }
}

/// What is in one lane now.
#[napi(object)]
#[derive(Debug)]
pub struct LaneStats {
    /// Tasks waiting for a slot.
    pub pending_count: i64,
    /// Tasks holding a slot.
    pub active_count: i64,
    /// Active tasks handed to workers.
    pub external_count: i64,
    /// External tasks claimed by a worker and not yet completed.
    pub claimed_count: i64,
    /// The lane's concurrency limit.
    pub max_concurrency: i64,
    /// The lane's handler mode.
    pub mode: TaskHandlerMode,
    /// The lane's task timeout in milliseconds.
    pub timeout_ms: i64,
    /// How long the oldest pending task has been waiting, in milliseconds (0 when none).
    pub oldest_pending_ms: i64,
    /// Whether the lane is paused (`session.pauseLane`).
    pub paused: bool,
}

/// What is in the queue now (`session.queueStats()`).
#[napi(object)]
#[derive(Debug)]
pub struct QueueStats {
    /// Tasks waiting for a lane slot.
    pub pending_count: i64,
    /// Tasks holding a lane slot (running, handed to workers, or between retries).
    pub active_count: i64,
    /// Active tasks of External lanes: waiting for a worker or claimed by one.
    pub external_count: i64,
    /// The same per lane, keyed by lane name.
    #[napi(ts_type = "Record<SessionLane, LaneStats>")]
    pub per_lane: IndexMap<String, LaneStats>,
}

impl From<q::QueueStats> for QueueStats {
    fn from(s: q::QueueStats) -> Self {
        Self {
            pending_count: number(s.pending_count),
            active_count: number(s.active_count),
            external_count: number(s.external_count),
            per_lane: s
                .per_lane
                .into_iter()
                .map(|(lane, l)| {
                    let stats = LaneStats {
                        pending_count: number(l.pending_count),
                        active_count: number(l.active_count),
                        external_count: number(l.external_count),
                        claimed_count: number(l.claimed_count),
                        max_concurrency: number(l.max_concurrency),
                        mode: l.mode.into(),
                        timeout_ms: number(l.timeout_ms),
                        oldest_pending_ms: number(l.oldest_pending_ms),
                        paused: l.paused,
                    };
                    (lane.as_str().to_owned(), stats)
                })
                .collect(),
        }
    }
}

/// A duration in milliseconds, fractional.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Counters and latency percentiles of one lane.
#[napi(object)]
#[derive(Debug)]
pub struct LaneMetrics {
    /// Tasks that reached an outcome.
    pub total_processed: i64,
    /// Tasks whose result reported failure, or that ran out of retries.
    pub total_failed: i64,
    /// Tasks whose deadline passed.
    pub total_timed_out: i64,
    /// Retries started.
    pub total_retried: i64,
    /// Successful share of processed tasks, 0 to 1.
    pub success_rate: f64,
    /// Mean submit-to-completion latency in milliseconds.
    pub avg_latency_ms: f64,
    /// Median latency in milliseconds.
    pub p50_latency_ms: f64,
    /// 95th percentile latency in milliseconds.
    pub p95_latency_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_latency_ms: f64,
}

/// Counters and latency percentiles since the session started (`session.queueMetrics()`,
/// with `enableMetrics`). Latencies are in milliseconds, submit to completion.
#[napi(object)]
#[derive(Debug)]
pub struct QueueMetrics {
    /// Tasks that reached an outcome: a result, a timeout or a failure (cancelled excluded).
    pub total_processed: i64,
    /// Tasks whose result reported failure, or that ran out of retries.
    pub total_failed: i64,
    /// Tasks whose deadline passed.
    pub total_timed_out: i64,
    /// Tasks cancelled before they completed.
    pub total_cancelled: i64,
    /// Retries started after lost attempts.
    pub total_retried: i64,
    /// Tasks added to the dead-letter queue.
    pub total_dead_lettered: i64,
    /// Completions refused because the task had already finished (late or repeated results).
    pub total_rejected_completions: i64,
    /// Successful share of processed tasks, 0 to 1.
    pub success_rate: f64,
    /// Mean latency in milliseconds.
    pub avg_latency_ms: f64,
    /// Median latency in milliseconds.
    pub p50_latency_ms: f64,
    /// 95th percentile latency in milliseconds.
    pub p95_latency_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_latency_ms: f64,
    /// Dead letters currently held.
    pub dlq_depth: i64,
    /// The same figures per lane, keyed by lane name.
    #[napi(ts_type = "Record<SessionLane, LaneMetrics>")]
    pub per_lane: IndexMap<String, LaneMetrics>,
}

impl From<q::QueueMetrics> for QueueMetrics {
    fn from(m: q::QueueMetrics) -> Self {
        Self {
            total_processed: number(m.total_processed),
            total_failed: number(m.total_failed),
            total_timed_out: number(m.total_timed_out),
            total_cancelled: number(m.total_cancelled),
            total_retried: number(m.total_retried),
            total_dead_lettered: number(m.total_dead_lettered),
            total_rejected_completions: number(m.total_rejected_completions),
            success_rate: m.success_rate,
            avg_latency_ms: ms(m.avg_latency),
            p50_latency_ms: ms(m.p50_latency),
            p95_latency_ms: ms(m.p95_latency),
            p99_latency_ms: ms(m.p99_latency),
            dlq_depth: number(m.dlq_depth),
            per_lane: m
                .per_lane
                .into_iter()
                .map(|(lane, l)| {
                    let metrics = LaneMetrics {
                        total_processed: number(l.total_processed),
                        total_failed: number(l.total_failed),
                        total_timed_out: number(l.total_timed_out),
                        total_retried: number(l.total_retried),
                        success_rate: l.success_rate,
                        avg_latency_ms: ms(l.avg_latency),
                        p50_latency_ms: ms(l.p50_latency),
                        p95_latency_ms: ms(l.p95_latency),
                        p99_latency_ms: ms(l.p99_latency),
                    };
                    (lane.as_str().to_owned(), metrics)
                })
                .collect(),
        }
    }
}

/// A task that timed out, ran out of retries or was otherwise failed by the queue.
#[napi(object)]
#[derive(Debug)]
pub struct DeadLetter {
    /// The task's id.
    pub task_id: String,
    /// Its lane.
    pub lane: SessionLane,
    /// Its command type.
    pub command_type: String,
    /// Its payload, as submitted (keys untouched).
    #[napi(ts_type = "Record<string, any>")]
    pub payload: Value,
    /// The stable code of the failure (`TaskTimedOut`, `RetriesExhausted`, ...).
    pub error_code: String,
    /// The failure, as a message.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub dead_lettered_at: i64,
}

impl From<q::DeadLetter> for DeadLetter {
    fn from(d: q::DeadLetter) -> Self {
        Self {
            task_id: d.task_id,
            lane: d.lane.into(),
            command_type: d.command_type,
            payload: d.payload,
            error_code: d.error_code,
            error: d.error,
            attempts: d.attempts,
            dead_lettered_at: number(d.dead_lettered_at),
        }
    }
}

/// Which alert threshold was crossed.
#[napi(string_enum = "snake_case")]
#[derive(Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// A lane's backlog reached `queueDepthAlertThreshold`.
    QueueDepth,
    /// A task took longer than `latencyAlertThresholdMs`.
    Latency,
}

/// Something that happened in a session's queue. `type` names the event as on the wire
/// (`'submitted'`, `'started'`, `'completed'`, `'failed'`, `'retrying'`, `'dead_lettered'`,
/// `'alert'`, `'output'`); the other fields are camelCase.
#[napi(
    discriminant = "type",
    discriminant_case = "snake_case",
    object_from_js = false
)]
#[derive(Debug)]
pub enum QueueEvent {
    /// A task entered its lane's backlog.
    Submitted {
        task_id: String,
        lane: SessionLane,
        command_type: String,
    },
    /// A task got a lane slot and began an attempt (running, or handed to workers).
    Started {
        task_id: String,
        lane: SessionLane,
        command_type: String,
        mode: TaskHandlerMode,
        attempt: u32,
    },
    /// A task finished with a successful result.
    Completed {
        task_id: String,
        lane: SessionLane,
        command_type: String,
        latency_ms: i64,
    },
    /// A task ended unsuccessfully: `code` is `ToolFailed` for a failed result, else the
    /// error code (`TaskTimedOut`, `TaskCancelled`, ...).
    Failed {
        task_id: String,
        lane: SessionLane,
        command_type: String,
        code: String,
        error: String,
    },
    /// An attempt was lost; another follows after `delayMs`.
    Retrying {
        task_id: String,
        lane: SessionLane,
        next_attempt: u32,
        delay_ms: i64,
        reason: String,
    },
    /// A failed task was added to the dead-letter queue.
    DeadLettered {
        task_id: String,
        lane: SessionLane,
        reason: String,
    },
    /// A threshold was crossed (with `enableAlerts`).
    Alert {
        kind: AlertKind,
        lane: SessionLane,
        value: i64,
        threshold: i64,
    },
    /// A chunk of a running task's output.
    Output {
        task_id: String,
        stream: String,
        chunk: String,
    },
    /// A dead letter was submitted again as a new task (`retryDeadLetter`).
    Resubmitted {
        task_id: String,
        retry_of: String,
        lane: SessionLane,
    },
    /// An event this version of the binding does not know (from a newer core).
    Unknown { description: String },
}

impl From<q::QueueEvent> for QueueEvent {
    fn from(e: q::QueueEvent) -> Self {
        use q::QueueEvent as E;
        match e {
            E::Submitted {
                task_id,
                lane,
                command_type,
            } => QueueEvent::Submitted {
                task_id,
                lane: lane.into(),
                command_type,
            },
            E::Started {
                task_id,
                lane,
                command_type,
                mode,
                attempt,
            } => QueueEvent::Started {
                task_id,
                lane: lane.into(),
                command_type,
                mode: mode.into(),
                attempt,
            },
            E::Completed {
                task_id,
                lane,
                command_type,
                latency_ms,
            } => QueueEvent::Completed {
                task_id,
                lane: lane.into(),
                command_type,
                latency_ms: number(latency_ms),
            },
            E::Failed {
                task_id,
                lane,
                command_type,
                code,
                error,
            } => QueueEvent::Failed {
                task_id,
                lane: lane.into(),
                command_type,
                code,
                error,
            },
            E::Retrying {
                task_id,
                lane,
                next_attempt,
                delay_ms,
                reason,
            } => QueueEvent::Retrying {
                task_id,
                lane: lane.into(),
                next_attempt,
                delay_ms: number(delay_ms),
                reason,
            },
            E::DeadLettered {
                task_id,
                lane,
                reason,
            } => QueueEvent::DeadLettered {
                task_id,
                lane: lane.into(),
                reason,
            },
            E::Alert {
                kind,
                lane,
                value,
                threshold,
            } => QueueEvent::Alert {
                kind: match kind {
                    q::AlertKind::QueueDepth => AlertKind::QueueDepth,
                    q::AlertKind::Latency => AlertKind::Latency,
                },
                lane: lane.into(),
                value: number(value),
                threshold: number(threshold),
            },
            E::Output {
                task_id,
                stream,
                chunk,
            } => QueueEvent::Output {
                task_id,
                stream,
                chunk,
            },
            E::Resubmitted {
                task_id,
                retry_of,
                lane,
            } => QueueEvent::Resubmitted {
                task_id,
                retry_of,
                lane: lane.into(),
            },
            other => QueueEvent::Unknown {
                description: format!("{other:?}"),
            },
        }
    }
}

/// A subscription to a session's queue events (`session.events()`).
///
/// Read it with `for await (const event of stream)`, or call `next()` until it resolves to
/// `null` (the session closed and every event was read). A subscriber that falls far behind
/// skips the oldest events; `lagged` counts them. Events are only produced while someone is
/// subscribed.
#[napi(async_iterator, js_name = "EventStream")]
pub struct JsEventStream {
    inner: Arc<tokio::sync::Mutex<q::EventStream>>,
}

impl JsEventStream {
    pub(crate) fn new(stream: q::EventStream) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(stream)),
        }
    }

    fn recv(&self) -> impl Future<Output = Option<QueueEvent>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.lock().await.recv().await.map(QueueEvent::from) }
    }
}

#[napi]
impl JsEventStream {
    /// The next event; `null` once the session is closed and every event was read.
    #[napi(js_name = "next", ts_return_type = "Promise<QueueEvent | null>")]
    pub fn next_event(&self, env: &Env) -> napi::Result<Promise<Option<QueueEvent>>> {
        let next = self.recv();
        promise(env, async move { Ok(next.await) })
    }

    /// The next event if one is ready now, else `null` (never waits).
    #[napi]
    pub fn try_next(&self) -> Option<QueueEvent> {
        let mut stream = self.inner.try_lock().ok()?;
        stream.try_recv().map(QueueEvent::from)
    }

    /// How many events this subscriber missed because it fell behind.
    #[napi(getter)]
    pub fn lagged(&self) -> i64 {
        self.inner
            .try_lock()
            .map(|s| number(s.lagged()))
            .unwrap_or(0)
    }
}

#[napi]
impl AsyncGenerator for JsEventStream {
    type Yield = QueueEvent;
    type Next = ();
    type Return = ();

    fn next(
        &mut self,
        _value: Option<Self::Next>,
    ) -> impl Future<Output = napi::Result<Option<Self::Yield>>> + Send + 'static {
        let next = self.recv();
        async move { Ok(next.await) }
    }
}

/// Which of a session's tasks to list (`session.tasks(query)`).
#[napi(object)]
#[derive(Debug)]
pub struct TaskQuery {
    /// `pending` (waiting for a slot), `in_flight` (holding one) or `finished` (recently ended).
    #[napi(ts_type = "'pending' | 'in_flight' | 'finished'")]
    pub state: String,
    /// Where the previous page ended (its `next`).
    pub cursor: Option<String>,
    /// At most this many tasks, 1 to 1000 (default 50).
    pub limit: Option<u32>,
    /// Only tasks whose id starts with this.
    pub search: Option<String>,
}

impl TaskQuery {
    pub(crate) fn into_core(self) -> core::Result<core::admin::TaskQuery> {
        Ok(core::admin::TaskQuery {
            state: self.state.parse()?,
            cursor: self.cursor,
            limit: self.limit.map_or(50, |l| l as usize),
            search: self.search,
        })
    }
}

/// One task as `session.tasks()` shows it.
#[napi(object)]
#[derive(Debug)]
pub struct TaskView {
    pub task_id: String,
    pub lane: SessionLane,
    pub command_type: String,
    /// `pending`, `in_flight` or `finished`.
    pub state: String,
    /// Milliseconds since the Unix epoch.
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempt: u32,
    pub mode: Option<TaskHandlerMode>,
    /// The worker holding it (from its "taken" notice) or the one that ran it.
    pub worker_id: Option<String>,
    /// `completed`, `failed`, `timed_out` or `cancelled` (finished tasks).
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// The dead letter this task retries.
    pub retry_of: Option<String>,
    #[napi(ts_type = "Record<string, string>")]
    pub labels: Value,
    /// Pending and in-flight tasks only.
    #[napi(ts_type = "Record<string, any> | undefined")]
    pub payload: Option<Value>,
}

/// A page of tasks: `next` is absent on the last page.
#[napi(object)]
#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    pub next: Option<String>,
}

fn snake<T: serde::Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

impl From<core::admin::TaskPage> for TaskPage {
    fn from(p: core::admin::TaskPage) -> Self {
        Self {
            tasks: p
                .tasks
                .into_iter()
                .map(|t| TaskView {
                    task_id: t.task_id,
                    lane: t.lane.into(),
                    command_type: t.command_type,
                    state: snake(t.state),
                    submitted_at: number(t.submitted_at),
                    started_at: t.started_at.map(number),
                    finished_at: t.finished_at.map(number),
                    attempt: t.attempt,
                    mode: t.mode.map(Into::into),
                    worker_id: t.worker_id,
                    outcome: t.outcome.map(snake),
                    error_code: t.error_code,
                    error: t.error,
                    retry_of: t.retry_of,
                    labels: serde_json::to_value(t.labels).unwrap_or_default(),
                    payload: t.payload,
                })
                .collect(),
            next: p.next,
        }
    }
}
