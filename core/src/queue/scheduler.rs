//! The scheduler of one session: lane backlogs, slots, dispatch, external claims, timers,
//! retries, the dead-letter queue and metrics, all behind one short-held lock.
//!
//! Life of a task:
//!
//! ```text
//! submit ──► backlog (per lane, FIFO, bounded by max_pending)
//!              │ a slot frees up (highest-priority lane first)
//!              ▼
//!           live entry, deadline armed ──► Internal/Hybrid: spawned handler
//!              │                        └► External: claimable ──claim──► claimed
//!              │ result / timeout / cancel / retries exhausted
//!              ▼
//!           terminal: reply to the submitter, slot freed, outcome remembered (late results
//!           are refused), DLQ when it failed
//! ```
//!
//! Nothing polls: submit, completion and the timer task wake exactly what they affect.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::dispatch::{Dispatcher, Ended, RemoteResult};
use super::dlq::{DeadLetter, DeadLetterQueue};
use super::events::{AlertKind, EventStream, QueueEvent};
use super::metrics::{LaneStats, MetricsRecorder, QueueMetrics, QueueStats};
use super::{LaneHandlerConfig, SessionLane, SessionQueueConfig, SubmitOptions, TaskHandlerMode};
use crate::error::{Error, Result};
use crate::lane::BUILTIN_TOOLS;
use crate::task::{ExternalTask, ExternalTaskResult, epoch_ms};

mod views;

/// Runs tasks of Internal and Hybrid lanes in this process.
///
/// Implemented for every `Fn(ExternalTask) -> impl Future<Output = ExternalTaskResult>`, so a
/// closure or an `async fn` can be registered with
/// [`AgentSession::register_handler`](crate::AgentSession::register_handler).
/// A panicking handler loses its attempt: the retry policy decides what follows.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt of `task`.
    fn handle(&self, task: ExternalTask) -> BoxFuture<'static, ExternalTaskResult>;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(ExternalTask) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ExternalTaskResult> + Send + 'static,
{
    fn handle(&self, task: ExternalTask) -> BoxFuture<'static, ExternalTaskResult> {
        Box::pin(self(task))
    }
}

type Reply = oneshot::Sender<Result<ExternalTaskResult>>;

/// Capacity of the event channel per subscriber before the slowest one starts to lag.
const EVENT_BUFFER: usize = 4096;
/// Most outcomes remembered to answer late or repeated completions precisely.
const MAX_REMEMBERED: usize = 1 << 16;

/// The receiving end of a submitted task.
///
/// Await it (or call [`result`](Self::result)) for the task's outcome. Dropping the handle does
/// not cancel the task; call [`cancel`](Self::cancel) for that.
#[derive(Debug)]
pub struct TaskHandle {
    task_id: InlineId,
    rx: oneshot::Receiver<Result<ExternalTaskResult>>,
    scheduler: Weak<Scheduler>,
}

impl TaskHandle {
    /// The id of the task.
    pub fn task_id(&self) -> &str {
        self.task_id.as_str()
    }

    /// Waits for the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::TaskTimedOut`], [`Error::TaskCancelled`], [`Error::RetriesExhausted`], or
    /// [`Error::ShutDown`] when the session closed first. A result with `success: false` is `Ok`.
    pub async fn result(self) -> Result<ExternalTaskResult> {
        self.await
    }

    /// Cancels the task: it leaves the backlog, or its running attempt is aborted (a `bash`
    /// child is killed), and [`result`](Self::result) returns [`Error::TaskCancelled`].
    ///
    /// # Errors
    ///
    /// [`Error::TaskAlreadyCompleted`] (or the error it ended with) when it already finished,
    /// [`Error::ShutDown`] when the session is gone.
    pub async fn cancel(&self) -> Result<()> {
        self.scheduler
            .upgrade()
            .ok_or(Error::ShutDown)?
            .cancel(self.task_id.as_str())
    }
}

impl Future for TaskHandle {
    type Output = Result<ExternalTaskResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ShutDown)))
    }
}

/// A command type: the built-in tool names need no allocation.
#[derive(Clone)]
enum Command {
    Builtin(&'static str),
    Custom(Box<str>),
}

impl Command {
    fn new(name: &str) -> Self {
        match BUILTIN_TOOLS.iter().find(|b| **b == name) {
            Some(b) => Command::Builtin(b),
            None => Command::Custom(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Command::Builtin(s) => s,
            Command::Custom(s) => s,
        }
    }
}

/// A task id formatted in place (`{tag:08x}-{seq:x}`, at most 25 bytes): no allocation per handle.
#[derive(Clone, Copy)]
struct InlineId {
    len: u8,
    buf: [u8; 25],
}

impl InlineId {
    fn new(tag: u32, seq: u64) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 25];
        let mut w = &mut buf[..];
        write!(w, "{tag:08x}-{seq:x}").expect("25 bytes hold any tag and seq");
        let len = (25 - w.len()) as u8;
        Self { len, buf }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or_default()
    }
}

impl std::fmt::Debug for InlineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A task waiting for a lane slot. Its payload is kept as compact JSON text while it waits
/// (a deep backlog costs tens of bytes per payload instead of hundreds).
struct Queued {
    seq: u64,
    command: Command,
    payload: Box<str>,
    reply: Option<Reply>,
    submitted_at: Instant,
    options: Option<Box<SubmitOptions>>,
}

/// A task getting its slot.
struct NewTask {
    seq: u64,
    command: Command,
    payload: Value,
    reply: Option<Reply>,
    submitted_at: Instant,
    options: Option<Box<SubmitOptions>>,
}

/// Where a live task's current attempt stands.
enum Phase {
    /// An internal handler runs it.
    Running(AbortHandle),
    /// Waiting for an external worker to claim it.
    Claimable,
    /// Claimed by an external worker.
    Claimed,
    /// Published to a broker for remote workers.
    Published,
    /// Waiting for a retry.
    Backoff(Instant),
    /// Between attempts, for the instant the scheduler decides what follows.
    Idle,
}

/// A task holding a lane slot.
struct Entry {
    lane: SessionLane,
    mode: TaskHandlerMode,
    command: Command,
    payload: Value,
    reply: Option<Reply>,
    submitted_at: Instant,
    created_at: u64,
    timeout_ms: u64,
    deadline: Instant,
    attempt: u32,
    phase: Phase,
    /// Required worker labels (only when submitted with some).
    labels: std::collections::BTreeMap<String, String>,
    /// The task's span (`a3s.task`), from its slot to its outcome; disabled unless a
    /// subscriber wants `a3s::task` at DEBUG.
    span: tracing::Span,
    /// The worker that took its current attempt and that attempt (from a "taken" notice).
    worker: Option<(Arc<str>, u32)>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Deadline,
    Retry,
}

/// How a finished task ended, remembered to answer late completions.
#[derive(Clone, Copy)]
enum Outcome {
    Completed,
    TimedOut(u64),
    Cancelled,
    Failed,
}

/// Outcomes of recently finished tasks, indexed by sequence number; grows up to
/// [`MAX_REMEMBERED`] slots, then the oldest are overwritten.
struct Remembered {
    slots: Vec<(u64, Outcome)>,
}

impl Remembered {
    fn new() -> Self {
        Self {
            slots: vec![(u64::MAX, Outcome::Failed); 256],
        }
    }

    fn insert(&mut self, seq: u64, outcome: Outcome) {
        if seq >= self.slots.len() as u64 && self.slots.len() < MAX_REMEMBERED {
            let len = (seq as usize + 1).next_power_of_two().min(MAX_REMEMBERED);
            let mut grown = vec![(u64::MAX, Outcome::Failed); len];
            for &(s, o) in &self.slots {
                if s != u64::MAX {
                    grown[s as usize & (len - 1)] = (s, o);
                }
            }
            self.slots = grown;
        }
        let mask = self.slots.len() - 1;
        self.slots[seq as usize & mask] = (seq, outcome);
    }

    fn get(&self, seq: u64) -> Option<Outcome> {
        let (s, o) = self.slots[seq as usize & (self.slots.len() - 1)];
        (s == seq).then_some(o)
    }
}

struct LaneState {
    handler: LaneHandlerConfig,
    max_concurrency: usize,
    backlog: VecDeque<Queued>,
    /// Tasks holding a slot.
    active: usize,
    /// Active tasks dispatched in External mode.
    external: usize,
    claimed: usize,
    /// Sequence numbers of claimable tasks; may hold stale ones, skipped when popped.
    claimable: VecDeque<u64>,
    depth_alerted: bool,
    latency_alerted: bool,
    /// Paused: nothing new gets a slot (tasks holding one finish).
    paused: bool,
}

struct State {
    lanes: [LaneState; 4],
    live: FxHashMap<u64, Entry>,
    next_seq: u64,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    /// When the timer task plans to wake next; earlier timers must wake it.
    timer_wake: Option<Instant>,
    timer_task_started: bool,
    remembered: Remembered,
    dlq: Option<DeadLetterQueue>,
    metrics: Option<MetricsRecorder>,
    events: Option<broadcast::Sender<QueueEvent>>,
    /// Live [`EventStream`]s; events are only built when there is one.
    subscribers: Arc<AtomicUsize>,
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    closed: bool,
    /// Recently finished tasks for the admin API, bounded by `finished_history`.
    history: views::History,
    /// Tasks submitted to retry a dead letter: the letter's id.
    retry_of: FxHashMap<u64, Box<str>>,
}

impl State {
    fn emit(&self, event: impl FnOnce() -> QueueEvent) {
        if self.has_subscribers()
            && let Some(tx) = &self.events
        {
            let _ = tx.send(event());
        }
    }

    fn has_subscribers(&self) -> bool {
        self.subscribers.load(AtomicOrdering::Relaxed) > 0
    }
}

/// The scheduler of one session. See the module docs.
pub(crate) struct Scheduler {
    session_id: String,
    /// Random tag in every task id, so ids of another session are recognised as foreign.
    tag: u32,
    config: SessionQueueConfig,
    default_handler: Arc<dyn TaskHandler>,
    state: Mutex<State>,
    /// Wakes workers waiting in `claim` when tasks become claimable.
    claimable: Notify,
    /// Wakes the timer task when an earlier timer is armed, or the scheduler closes.
    timer_notify: Arc<Notify>,
    /// A monotonic instant and the wall clock at that instant: `created_at` without a clock read.
    base: (Instant, u64),
    /// The broker External tasks are published to; `None` keeps them claimable in process.
    dispatcher: OnceLock<Arc<dyn Dispatcher>>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.timer_notify.notify_one();
    }
}

impl Scheduler {
    /// A scheduler for `config` (already validated), running internal tasks it has no
    /// registered handler for with `default_handler`.
    pub(crate) fn new(
        session_id: String,
        config: SessionQueueConfig,
        default_handler: Arc<dyn TaskHandler>,
    ) -> Arc<Self> {
        let lanes = SessionLane::ALL.map(|lane| LaneState {
            handler: config.lane_handler(lane),
            max_concurrency: config.max_concurrency(lane),
            backlog: VecDeque::new(),
            active: 0,
            external: 0,
            claimed: 0,
            claimable: VecDeque::new(),
            depth_alerted: false,
            latency_alerted: false,
            paused: false,
        });
        let state = State {
            lanes,
            live: FxHashMap::default(),
            next_seq: 0,
            timers: BinaryHeap::new(),
            timer_wake: None,
            timer_task_started: false,
            remembered: Remembered::new(),
            dlq: config
                .enable_dlq
                .then(|| DeadLetterQueue::new(config.dlq_max_size)),
            metrics: config.enable_metrics.then(MetricsRecorder::new),
            events: Some(broadcast::channel(EVENT_BUFFER).0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            handlers: HashMap::new(),
            closed: false,
            history: views::History::new(config.finished_history),
            retry_of: FxHashMap::default(),
        };
        Arc::new(Self {
            session_id,
            tag: rand_tag(),
            config,
            default_handler,
            state: Mutex::new(state),
            claimable: Notify::new(),
            timer_notify: Arc::new(Notify::new()),
            base: (Instant::now(), epoch_ms()),
            dispatcher: OnceLock::new(),
        })
    }

    pub(crate) fn session_id(&self) -> &str {
        &self.session_id
    }

    /// When the session opened, in milliseconds since the Unix epoch.
    pub(crate) fn opened_at(&self) -> u64 {
        self.base.1
    }

    /// Dead letters in the DLQ.
    pub(crate) fn dead_letter_count(&self) -> usize {
        self.state
            .lock()
            .dlq
            .as_ref()
            .map_or(0, DeadLetterQueue::len)
    }

    pub(crate) fn config(&self) -> &SessionQueueConfig {
        &self.config
    }

    /// Hands External tasks to `dispatcher` from now on (set once, before the first submit).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS broker
    pub(crate) fn attach_dispatcher(&self, dispatcher: Arc<dyn Dispatcher>) {
        let _ = self.dispatcher.set(dispatcher);
    }

    /// Applies a result that came through the broker.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS broker
    pub(crate) fn remote_result(self: &Arc<Self>, env: RemoteResult) {
        let Ok(seq) = self.seq_of(&env.task_id) else {
            tracing::warn!(
                task_id = env.task_id,
                "dropping a result for a task this session never issued"
            );
            return;
        };
        let mut st = self.state.lock();
        let published = matches!(st.live.get(&seq), Some(e) if matches!(e.phase, Phase::Published));
        match env.exhausted {
            false => {
                if let Some(e) = st.live.get_mut(&seq) {
                    e.attempt = e.attempt.max(env.attempt);
                    // Who ran it, for the finished ring (a taken notice may not have come).
                    if !env.worker_id.is_empty()
                        && e.worker.as_ref().is_none_or(|(w, _)| **w != *env.worker_id)
                    {
                        e.worker = Some((env.worker_id.as_str().into(), env.attempt));
                    }
                    let lane = e.lane;
                    if published && let Some(m) = &mut st.metrics {
                        for _ in 1..env.attempt {
                            m.retried(lane);
                        }
                        if env.attempt > 1 {
                            m.redelivered(lane);
                        }
                    }
                }
                if let Err(err) = self.complete_locked(&mut st, seq, &env.task_id, env.result) {
                    tracing::debug!(task_id = env.task_id, error = %err, "ignoring a result: the task already ended");
                }
            }
            true if published => {
                let reason = env
                    .result
                    .error
                    .unwrap_or_else(|| "every attempt was lost".to_owned());
                // The delivery that found the task exhausted was not an attempt.
                let attempts = env.attempt.saturating_sub(1).max(1);
                if let Some(e) = st.live.get_mut(&seq) {
                    // The dead letter and the error say the same number.
                    e.attempt = e.attempt.max(attempts);
                }
                let err = Error::RetriesExhausted {
                    task_id: env.task_id,
                    attempts,
                    reason,
                };
                self.finish(&mut st, seq, Err(err));
            }
            true => {}
        }
    }

    /// Surfaces an output chunk a remote worker streamed.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS broker
    pub(crate) fn remote_output(&self, task_id: String, stream: String, chunk: String) {
        self.state.lock().emit(|| QueueEvent::Output {
            task_id,
            stream,
            chunk,
        });
    }

    fn task_id(&self, seq: u64) -> String {
        format!("{:08x}-{seq:x}", self.tag)
    }

    /// The sequence number of one of our task ids, or `TaskNotFound`.
    fn seq_of(&self, task_id: &str) -> Result<u64> {
        let not_found = || Error::TaskNotFound {
            task_id: task_id.to_owned(),
        };
        let (tag, seq) = task_id.split_once('-').ok_or_else(not_found)?;
        if tag.len() != 8 || u32::from_str_radix(tag, 16).ok() != Some(self.tag) {
            return Err(not_found());
        }
        u64::from_str_radix(seq, 16).map_err(|_| not_found())
    }

    // ----- configuration -------------------------------------------------------------------

    pub(crate) fn set_lane_handler(
        self: &Arc<Self>,
        lane: SessionLane,
        handler: LaneHandlerConfig,
    ) -> Result<()> {
        handler.validate()?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        st.lanes[lane.index()].handler = handler;
        Ok(())
    }

    /// Pauses or resumes `lane` (idempotent). Paused, nothing new gets one of its slots: tasks
    /// holding one finish, submitted ones wait in the backlog (their timeout counts from their
    /// slot, so waiting does not time them out). Resuming fills the free slots at once.
    pub(crate) fn set_paused(self: &Arc<Self>, lane: SessionLane, paused: bool) -> Result<()> {
        if lane == SessionLane::Control && paused {
            return Err(Error::invalid_config(
                "the Control lane cannot be paused (it carries cancels and other control work)",
            ));
        }
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        st.lanes[lane.index()].paused = paused;
        if !paused {
            self.fill_slots(&mut st, lane);
        }
        Ok(())
    }

    pub(crate) fn lane_handler(&self, lane: SessionLane) -> LaneHandlerConfig {
        self.state.lock().lanes[lane.index()].handler
    }

    pub(crate) fn register_handler(&self, command_type: String, handler: Arc<dyn TaskHandler>) {
        self.state.lock().handlers.insert(command_type, handler);
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        let st = self.state.lock();
        match &st.events {
            Some(tx) => EventStream::new(tx.subscribe(), st.subscribers.clone()),
            // Closed: a stream that ends at once.
            None => EventStream::new(broadcast::channel(1).1, Arc::new(AtomicUsize::new(1))),
        }
    }

    // ----- submit and dispatch -------------------------------------------------------------

    /// Queues a task. Must run inside a tokio runtime (internal handlers and timers are spawned).
    pub(crate) fn submit(
        self: &Arc<Self>,
        lane: SessionLane,
        command_type: &str,
        payload: Value,
        options: Option<SubmitOptions>,
    ) -> Result<TaskHandle> {
        self.submit_as(lane, command_type, payload, options, None)
    }

    /// [`submit`](Self::submit), recording the dead letter the task retries.
    fn submit_as(
        self: &Arc<Self>,
        lane: SessionLane,
        command_type: &str,
        payload: Value,
        options: Option<SubmitOptions>,
        retry_of: Option<Box<str>>,
    ) -> Result<TaskHandle> {
        if let Some(o) = &options {
            o.validate()?;
        }
        let options = options
            .filter(|o| *o != SubmitOptions::default())
            .map(Box::new);
        if !payload.is_object() {
            return Err(Error::invalid_payload(format!(
                "the payload of a {command_type:?} task must be a JSON object, not {}",
                json_kind(&payload)
            )));
        }
        // A broker limits what an External lane's task may carry (in process: no limit).
        if let Some(limit) = self.dispatcher.get().and_then(|d| d.max_payload_bytes())
            && self.lane_handler(lane).mode == TaskHandlerMode::External
        {
            let size = json_size(&payload);
            if size > limit {
                return Err(Error::PayloadTooLarge { size, limit });
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        if !st.timer_task_started {
            st.timer_task_started = true;
            self.start_timer_task();
        }
        let l = &st.lanes[lane.index()];
        let direct = !l.paused && l.backlog.is_empty() && l.active < l.max_concurrency;
        if !direct && l.backlog.len() >= self.config.max_pending {
            return Err(Error::QueueFull {
                lane,
                max_pending: self.config.max_pending,
            });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        if let Some(r) = retry_of {
            st.retry_of.insert(seq, r);
        }
        let task_id = InlineId::new(self.tag, seq);
        st.emit(|| QueueEvent::Submitted {
            task_id: task_id.as_str().to_owned(),
            lane,
            command_type: command_type.to_owned(),
        });
        let command = Command::new(command_type);
        let now = Instant::now();
        if direct {
            let task = NewTask {
                seq,
                command,
                payload,
                reply: Some(tx),
                submitted_at: now,
                options,
            };
            self.dispatch(&mut st, lane, task, now);
        } else {
            let compact = serde_json::to_string(&payload)
                .expect("a Value always serializes")
                .into_boxed_str();
            let l = &mut st.lanes[lane.index()];
            l.backlog.push_back(Queued {
                seq,
                command,
                payload: compact,
                reply: Some(tx),
                submitted_at: now,
                options,
            });
            let depth = l.backlog.len();
            if self.config.enable_alerts
                && depth >= self.config.queue_depth_alert_threshold
                && !l.depth_alerted
            {
                l.depth_alerted = true;
                let threshold = self.config.queue_depth_alert_threshold as u64;
                st.emit(|| QueueEvent::Alert {
                    kind: AlertKind::QueueDepth,
                    lane,
                    value: depth as u64,
                    threshold,
                });
            }
        }
        Ok(TaskHandle {
            task_id,
            rx,
            scheduler: Arc::downgrade(self),
        })
    }

    /// Dispatches backlog tasks of `lane` into its free slots.
    fn fill_slots(self: &Arc<Self>, st: &mut State, lane: SessionLane) {
        let mut now = None;
        loop {
            let l = &mut st.lanes[lane.index()];
            if l.paused || l.active >= l.max_concurrency {
                break;
            }
            let Some(q) = l.backlog.pop_front() else {
                break;
            };
            if l.depth_alerted && l.backlog.len() < self.config.queue_depth_alert_threshold / 2 {
                l.depth_alerted = false;
            }
            let payload = serde_json::from_str(&q.payload)
                .expect("the backlog holds JSON it serialized itself");
            let now = *now.get_or_insert_with(Instant::now);
            let task = NewTask {
                seq: q.seq,
                command: q.command,
                payload,
                reply: q.reply,
                submitted_at: q.submitted_at,
                options: q.options,
            };
            self.dispatch(st, lane, task, now);
        }
    }

    /// Gives a task a slot of `lane`: arms its deadline and starts its first attempt.
    fn dispatch(self: &Arc<Self>, st: &mut State, lane: SessionLane, task: NewTask, now: Instant) {
        let l = &mut st.lanes[lane.index()];
        l.active += 1;
        let handler = l.handler;
        if handler.mode == TaskHandlerMode::External {
            l.external += 1;
        }
        let (timeout_ms, labels) = match task.options {
            Some(o) => (o.timeout_ms.unwrap_or(handler.timeout_ms), o.labels),
            None => (handler.timeout_ms, Default::default()),
        };
        let deadline = now + Duration::from_millis(timeout_ms);
        let created_at = self.base.1 + now.duration_since(self.base.0).as_millis() as u64;
        let queue_wait = now.saturating_duration_since(task.submitted_at);
        if let Some(m) = &mut st.metrics {
            m.dispatched(lane, queue_wait);
        }
        let span = crate::trace::task_span(
            &self.session_id,
            || self.task_id(task.seq),
            lane,
            task.command.as_str(),
            queue_wait,
        );
        let entry = Entry {
            lane,
            mode: handler.mode,
            command: task.command,
            payload: task.payload,
            reply: task.reply,
            submitted_at: task.submitted_at,
            created_at,
            timeout_ms,
            deadline,
            attempt: 1,
            phase: Phase::Idle,
            labels,
            span,
            worker: None,
        };
        st.live.insert(task.seq, entry);
        self.arm_timer(st, deadline, task.seq, TimerKind::Deadline);
        self.start_attempt(st, task.seq);
    }

    /// Starts the current attempt of a live task according to its mode.
    fn start_attempt(self: &Arc<Self>, st: &mut State, seq: u64) {
        let Some(e) = st.live.get(&seq) else { return };
        let (lane, mode, attempt) = (e.lane, e.mode, e.attempt);
        tracing::debug!(
            target: "a3s::task",
            parent: &e.span,
            attempt,
            mode = mode.as_str(),
            "dispatched"
        );
        self.announce(st, mode, lane, || QueueEvent::Started {
            task_id: self.task_id(seq),
            lane,
            command_type: e.command.as_str().to_owned(),
            mode,
            attempt,
        });
        if mode == TaskHandlerMode::External {
            if let Some(dispatcher) = self.dispatcher.get() {
                let mut task = self.external_task(seq, e);
                if !e.span.is_disabled() {
                    // The session traces this task: its message carries the trace context.
                    let cx = crate::trace::task_context(&self.session_id, &task.task_id);
                    task = task.with_trace_context(Some(cx));
                }
                dispatcher.publish(task, (!e.labels.is_empty()).then_some(&e.labels));
                st.live.get_mut(&seq).expect("checked above").phase = Phase::Published;
                return;
            }
            st.live.get_mut(&seq).expect("checked above").phase = Phase::Claimable;
            st.lanes[lane.index()].claimable.push_back(seq);
            self.claimable.notify_one();
            return;
        }
        let task = self.external_task(seq, e);
        let run_span = task.run_span(Some(&e.span));
        let handler = st
            .handlers
            .get(e.command.as_str())
            .cloned()
            .unwrap_or_else(|| self.default_handler.clone());
        let me = Arc::clone(self);
        let join = tokio::spawn(async move {
            let run = AssertUnwindSafe(handler.handle(task)).catch_unwind();
            let outcome = tracing::Instrument::instrument(run, run_span).await;
            me.internal_attempt_done(seq, attempt, outcome.map_err(panic_message));
        });
        st.live.get_mut(&seq).expect("checked above").phase = Phase::Running(join.abort_handle());
    }

    fn external_task(&self, seq: u64, e: &Entry) -> ExternalTask {
        ExternalTask::from_parts(
            self.task_id(seq),
            self.session_id.clone(),
            e.lane,
            e.command.as_str().to_owned(),
            e.payload.clone(),
            e.timeout_ms,
            e.created_at,
            e.attempt,
            e.deadline,
        )
    }

    /// Emits a lifecycle event to subscribers, and to the broker for Hybrid lanes.
    fn announce(
        &self,
        st: &State,
        mode: TaskHandlerMode,
        lane: SessionLane,
        event: impl Fn() -> QueueEvent,
    ) {
        st.emit(&event);
        if mode == TaskHandlerMode::Hybrid
            && let Some(dispatcher) = self.dispatcher.get()
        {
            dispatcher.hybrid_event(lane, &event());
        }
    }

    fn internal_attempt_done(
        self: &Arc<Self>,
        seq: u64,
        attempt: u32,
        outcome: std::result::Result<ExternalTaskResult, String>,
    ) {
        let mut st = self.state.lock();
        match st.live.get(&seq) {
            Some(e) if e.attempt == attempt && matches!(e.phase, Phase::Running(_)) => {}
            _ => return, // timed out, cancelled or closed meanwhile
        }
        match outcome {
            Ok(result) => self.finish(&mut st, seq, Ok(result)),
            Err(panic) => self.attempt_lost(&mut st, seq, format!("handler panicked: {panic}")),
        }
    }

    // ----- external claims and completions -------------------------------------------------

    /// Claims up to `max` claimable tasks, highest-priority lane first; waits up to `wait` for
    /// the first one.
    pub(crate) async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<ExternalTask>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut until = None;
        let mut yielded = false;
        loop {
            let notified = self.claimable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.closed {
                    return Err(Error::ShutDown);
                }
                let tasks = self.take_claimable(&mut st, max);
                if !tasks.is_empty() || wait.is_zero() {
                    return Ok(tasks);
                }
                let now = Instant::now();
                if now >= *until.get_or_insert(now + wait) {
                    return Ok(tasks);
                }
            }
            // A producer on this thread often submits right after we yield: catch that without
            // arming a timer (arming one wakes the parked timer thread, a context switch).
            if !yielded {
                yielded = true;
                tokio::task::yield_now().await;
                if notified.as_mut().now_or_never().is_some() {
                    continue;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.expect("set before waiting")) => {}
            }
        }
    }

    fn take_claimable(&self, st: &mut State, max: usize) -> Vec<ExternalTask> {
        let mut out = Vec::new();
        for lane in SessionLane::ALL {
            while out.len() < max {
                let Some(seq) = st.lanes[lane.index()].claimable.pop_front() else {
                    break;
                };
                let Some(e) = st.live.get_mut(&seq) else {
                    continue;
                };
                if !matches!(e.phase, Phase::Claimable) {
                    continue;
                }
                e.phase = Phase::Claimed;
                tracing::debug!(
                    target: "a3s::task",
                    parent: &e.span,
                    attempt = e.attempt,
                    "claimed"
                );
                let task = self.external_task(seq, e);
                st.lanes[lane.index()].claimed += 1;
                out.push(task);
            }
        }
        // Tasks are left for other pollers: pass the wake-up on.
        if out.len() == max && st.lanes.iter().any(|l| !l.claimable.is_empty()) {
            self.claimable.notify_one();
        }
        out
    }

    /// Applies a worker's result: the first result of a live task wins.
    pub(crate) fn complete(
        self: &Arc<Self>,
        task_id: &str,
        result: ExternalTaskResult,
    ) -> Result<()> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        let seq = self.seq_of(task_id)?;
        self.complete_locked(&mut st, seq, task_id, result)
    }

    pub(crate) fn complete_many(
        self: &Arc<Self>,
        results: Vec<(String, ExternalTaskResult)>,
    ) -> Vec<Result<()>> {
        let mut st = self.state.lock();
        results
            .into_iter()
            .map(|(task_id, result)| {
                if st.closed {
                    return Err(Error::ShutDown);
                }
                let seq = self.seq_of(&task_id)?;
                self.complete_locked(&mut st, seq, &task_id, result)
            })
            .collect()
    }

    fn complete_locked(
        self: &Arc<Self>,
        st: &mut State,
        seq: u64,
        task_id: &str,
        result: ExternalTaskResult,
    ) -> Result<()> {
        match st.live.get(&seq) {
            Some(e) if e.mode == TaskHandlerMode::External => {
                self.finish(st, seq, Ok(result));
                Ok(())
            }
            _ => Err(self.refuse_completion(st, seq, task_id)),
        }
    }

    /// A worker gives a task back without a result: the attempt is lost and the retry policy
    /// decides whether another one follows.
    pub(crate) fn abandon(self: &Arc<Self>, task_id: &str, reason: &str) -> Result<()> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        let seq = self.seq_of(task_id)?;
        match st.live.get(&seq) {
            Some(e)
                if e.mode == TaskHandlerMode::External
                    && matches!(e.phase, Phase::Claimed | Phase::Claimable) =>
            {
                self.attempt_lost(&mut st, seq, reason.to_owned());
                Ok(())
            }
            _ => Err(self.refuse_completion(&mut st, seq, task_id)),
        }
    }

    /// The error for an operation on a task that is not live: how it ended, if remembered.
    fn refusal(&self, st: &State, seq: u64, task_id: &str) -> Error {
        let task_id = task_id.to_owned();
        match st.remembered.get(seq) {
            Some(Outcome::Completed | Outcome::Failed) => Error::TaskAlreadyCompleted { task_id },
            Some(Outcome::TimedOut(timeout_ms)) => Error::TaskTimedOut {
                task_id,
                timeout_ms,
            },
            Some(Outcome::Cancelled) => Error::TaskCancelled { task_id },
            None => Error::TaskNotFound { task_id },
        }
    }

    /// [`refusal`](Self::refusal) of a result, counted when the task had already ended (one of
    /// ours whose outcome is remembered, or too old to be remembered).
    fn refuse_completion(&self, st: &mut State, seq: u64, task_id: &str) -> Error {
        let err = self.refusal(st, seq, task_id);
        let ended = seq < st.next_seq;
        if let (Some(m), true) = (&mut st.metrics, ended) {
            m.rejected_completion();
        }
        err
    }

    // ----- failure paths -------------------------------------------------------------------

    /// An attempt ended without a result: retry with backoff, or fail the task.
    fn attempt_lost(self: &Arc<Self>, st: &mut State, seq: u64, reason: String) {
        let policy = self.config.retry_policy;
        let e = st
            .live
            .get_mut(&seq)
            .expect("caller checked the task is live");
        if let Phase::Claimed = std::mem::replace(&mut e.phase, Phase::Idle) {
            st.lanes[e.lane.index()].claimed -= 1;
        }
        let now = Instant::now();
        if e.attempt >= policy.max_attempts() || now >= e.deadline {
            let task_id = self.task_id(seq);
            let attempts = e.attempt;
            return self.finish(
                st,
                seq,
                Err(Error::RetriesExhausted {
                    task_id,
                    attempts,
                    reason,
                }),
            );
        }
        let delay = policy.delay_before_retry(e.attempt);
        e.attempt += 1;
        let (lane, next_attempt) = (e.lane, e.attempt);
        if let Some(m) = &mut st.metrics {
            m.retried(lane);
        }
        st.emit(|| QueueEvent::Retrying {
            task_id: self.task_id(seq),
            lane,
            next_attempt,
            delay_ms: delay.as_millis() as u64,
            reason,
        });
        if delay.is_zero() {
            self.start_attempt(st, seq);
        } else {
            let at = now + delay;
            st.live.get_mut(&seq).expect("live").phase = Phase::Backoff(at);
            self.arm_timer(st, at, seq, TimerKind::Retry);
        }
    }

    /// Ends a live task: replies to the submitter, frees its slot, records the outcome.
    fn finish(self: &Arc<Self>, st: &mut State, seq: u64, outcome: Result<ExternalTaskResult>) {
        let Some(mut e) = st.live.remove(&seq) else {
            return;
        };
        let lane = e.lane;
        {
            let l = &mut st.lanes[lane.index()];
            l.active -= 1;
            if e.mode == TaskHandlerMode::External {
                l.external -= 1;
            }
            match &e.phase {
                Phase::Claimed => l.claimed -= 1,
                Phase::Running(abort) => abort.abort(),
                Phase::Published => {
                    let how = match &outcome {
                        Ok(_) => Ended::Completed,
                        Err(Error::TaskTimedOut { .. }) => Ended::Withdrawn("timed_out"),
                        Err(Error::TaskCancelled { .. }) => Ended::Withdrawn("cancelled"),
                        Err(Error::ShutDown) => Ended::Withdrawn("closed"),
                        Err(_) => Ended::Withdrawn("failed"),
                    };
                    if let Some(d) = self.dispatcher.get() {
                        d.task_ended(&self.task_id(seq), lane, how);
                    }
                }
                Phase::Claimable | Phase::Backoff(_) | Phase::Idle => {}
            }
        }
        let task_id = || self.task_id(seq);
        let remembered = match &outcome {
            Ok(result) => {
                let success = result.success;
                let measured =
                    st.metrics.is_some() || self.config.enable_alerts || st.has_subscribers();
                let latency = if measured {
                    e.submitted_at.elapsed()
                } else {
                    Duration::ZERO
                };
                if let Some(m) = &mut st.metrics {
                    // The slot was taken `timeout_ms` before the deadline.
                    let slot = e.deadline.checked_sub(Duration::from_millis(e.timeout_ms));
                    let run = slot.map_or(latency, |at| {
                        (e.submitted_at + latency).saturating_duration_since(at)
                    });
                    m.completed(lane, success, latency, run);
                }
                self.latency_alert(st, lane, latency);
                self.announce(st, e.mode, lane, || match success {
                    true => QueueEvent::Completed {
                        task_id: task_id(),
                        lane,
                        command_type: e.command.as_str().to_owned(),
                        latency_ms: latency.as_millis() as u64,
                    },
                    false => QueueEvent::Failed {
                        task_id: task_id(),
                        lane,
                        command_type: e.command.as_str().to_owned(),
                        code: "ToolFailed".to_owned(),
                        error: result.error.clone().unwrap_or_default(),
                    },
                });
                Outcome::Completed
            }
            Err(err) => {
                let remembered = match err {
                    Error::TaskTimedOut { timeout_ms, .. } => Outcome::TimedOut(*timeout_ms),
                    Error::TaskCancelled { .. } => Outcome::Cancelled,
                    _ => Outcome::Failed,
                };
                if let Some(m) = &mut st.metrics {
                    match remembered {
                        Outcome::TimedOut(_) => m.timed_out(lane),
                        Outcome::Cancelled => m.cancelled(lane),
                        _ => m.failed(lane),
                    }
                }
                self.announce(st, e.mode, lane, || QueueEvent::Failed {
                    task_id: task_id(),
                    lane,
                    command_type: e.command.as_str().to_owned(),
                    code: err.code().to_owned(),
                    error: err.to_string(),
                });
                let dead =
                    !matches!(remembered, Outcome::Cancelled) && !matches!(err, Error::ShutDown);
                if dead && let Some(dlq) = st.dlq.as_mut() {
                    let letter = DeadLetter {
                        task_id: task_id(),
                        lane,
                        command_type: e.command.as_str().to_owned(),
                        payload: std::mem::take(&mut e.payload),
                        error_code: err.code().to_owned(),
                        error: err.to_string(),
                        attempts: e.attempt,
                        dead_lettered_at: epoch_ms(),
                    };
                    if let Some(d) = self.dispatcher.get() {
                        d.dead_letter(&letter);
                    }
                    dlq.push(letter);
                    if let Some(m) = &mut st.metrics {
                        m.dead_lettered(lane);
                    }
                    st.emit(|| QueueEvent::DeadLettered {
                        task_id: task_id(),
                        lane,
                        reason: err.to_string(),
                    });
                }
                remembered
            }
        };
        st.remembered.insert(seq, remembered);
        self.record_finished(st, seq, &e, &outcome);
        if !e.span.is_disabled() {
            trace_outcome(&e, &outcome);
            crate::trace::task_ended(&self.session_id, || self.task_id(seq));
        }
        if let Some(reply) = e.reply.take() {
            let _ = reply.send(outcome);
        }
        if !st.closed {
            self.fill_slots(st, lane);
        }
    }

    fn latency_alert(&self, st: &mut State, lane: SessionLane, latency: Duration) {
        if !self.config.enable_alerts {
            return;
        }
        let threshold = self.config.latency_alert_threshold_ms;
        let over = latency.as_millis() as u64 > threshold;
        let l = &mut st.lanes[lane.index()];
        if over && !l.latency_alerted {
            l.latency_alerted = true;
            let value = latency.as_millis() as u64;
            st.emit(|| QueueEvent::Alert {
                kind: AlertKind::Latency,
                lane,
                value,
                threshold,
            });
        } else if !over {
            l.latency_alerted = false;
        }
    }

    /// Cancels a queued or live task.
    pub(crate) fn cancel(self: &Arc<Self>, task_id: &str) -> Result<()> {
        let seq = self.seq_of(task_id)?;
        let mut st = self.state.lock();
        let cancelled = || {
            Err(Error::TaskCancelled {
                task_id: task_id.to_owned(),
            })
        };
        if st.live.contains_key(&seq) {
            self.finish(&mut st, seq, cancelled());
            return Ok(());
        }
        for lane in SessionLane::ALL {
            let backlog = &mut st.lanes[lane.index()].backlog;
            if let Some(pos) = backlog.iter().position(|q| q.seq == seq) {
                let mut q = backlog.remove(pos).expect("position is in range");
                st.remembered.insert(seq, Outcome::Cancelled);
                self.record_unstarted(&mut st, lane, &q, task_id);
                if let Some(m) = &mut st.metrics {
                    m.cancelled(lane);
                }
                st.emit(|| QueueEvent::Failed {
                    task_id: task_id.to_owned(),
                    lane,
                    command_type: q.command.as_str().to_owned(),
                    code: "TaskCancelled".into(),
                    error: format!("task {task_id} was cancelled"),
                });
                if let Some(reply) = q.reply.take() {
                    let _ = reply.send(cancelled());
                }
                return Ok(());
            }
        }
        Err(self.refusal(&st, seq, task_id))
    }

    // ----- timers --------------------------------------------------------------------------

    fn arm_timer(&self, st: &mut State, at: Instant, seq: u64, kind: TimerKind) {
        st.timers.push(Reverse((at, seq, kind)));
        if st.timer_wake.is_none_or(|wake| at < wake) {
            st.timer_wake = Some(at);
            self.timer_notify.notify_one();
        }
        // Timers of finished tasks stay in the heap until they fire; drop them in bulk when
        // they outnumber the live tasks.
        if st.timers.len() > 2 * st.live.len() + 1024 {
            let live = &st.live;
            st.timers
                .retain(|Reverse((_, seq, _))| live.contains_key(seq));
        }
    }

    fn start_timer_task(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let notify = Arc::clone(&self.timer_notify);
        tokio::spawn(async move {
            loop {
                let next = match weak.upgrade() {
                    Some(me) if !me.state.lock().closed => me.fire_timers(),
                    _ => return,
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = notify.notified() => {}
                        }
                    }
                    None => notify.notified().await,
                }
            }
        });
    }

    /// Fires due timers; returns when the next one is due.
    fn fire_timers(self: &Arc<Self>) -> Option<Instant> {
        let mut st = self.state.lock();
        let now = Instant::now();
        while let Some(&Reverse((at, seq, kind))) = st.timers.peek() {
            if at > now {
                break;
            }
            st.timers.pop();
            let Some(e) = st.live.get(&seq) else { continue };
            match kind {
                TimerKind::Deadline if e.deadline == at => {
                    let err = Error::TaskTimedOut {
                        task_id: self.task_id(seq),
                        timeout_ms: e.timeout_ms,
                    };
                    self.finish(&mut st, seq, Err(err));
                }
                TimerKind::Retry if matches!(e.phase, Phase::Backoff(t) if t == at) => {
                    self.start_attempt(&mut st, seq)
                }
                _ => {}
            }
        }
        let next = st.timers.peek().map(|Reverse((at, _, _))| *at);
        st.timer_wake = next;
        next
    }

    // ----- observation ---------------------------------------------------------------------

    pub(crate) fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        let now = Instant::now();
        let mut stats = QueueStats::default();
        for lane in SessionLane::ALL {
            let l = &st.lanes[lane.index()];
            let ls = LaneStats {
                pending_count: l.backlog.len(),
                active_count: l.active,
                external_count: l.external,
                claimed_count: l.claimed,
                max_concurrency: l.max_concurrency,
                mode: l.handler.mode,
                timeout_ms: l.handler.timeout_ms,
                oldest_pending_ms: l
                    .backlog
                    .front()
                    .map_or(0, |q| now.duration_since(q.submitted_at).as_millis() as u64),
                paused: l.paused,
            };
            stats.pending_count += ls.pending_count;
            stats.active_count += ls.active_count;
            stats.external_count += ls.external_count;
            stats.per_lane.insert(lane, ls);
        }
        stats
    }

    /// Worker slots each External lane needs now, by required label set (`k=v,k=v`, sorted;
    /// `""` for none): its backlog plus its tasks out at workers (claimable, claimed,
    /// published, or waiting for a retry). Every External lane has its `""` entry, 0 when idle.
    pub(crate) fn worker_demand(&self) -> Vec<(SessionLane, String, usize)> {
        let st = self.state.lock();
        let mut demand: std::collections::BTreeMap<(usize, String), usize> = Default::default();
        let key = |labels: &std::collections::BTreeMap<String, String>| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        for lane in SessionLane::ALL {
            let l = &st.lanes[lane.index()];
            if l.handler.mode != TaskHandlerMode::External {
                continue;
            }
            demand.entry((lane.index(), String::new())).or_default();
            for q in &l.backlog {
                let labels = q
                    .options
                    .as_ref()
                    .map(|o| key(&o.labels))
                    .unwrap_or_default();
                *demand.entry((lane.index(), labels)).or_default() += 1;
            }
        }
        for e in st.live.values() {
            if e.mode == TaskHandlerMode::External {
                *demand.entry((e.lane.index(), key(&e.labels))).or_default() += 1;
            }
        }
        demand
            .into_iter()
            .map(|((i, labels), n)| (SessionLane::ALL[i], labels, n))
            .collect()
    }

    pub(crate) fn metrics(&self) -> Option<QueueMetrics> {
        let st = self.state.lock();
        let depth = st.dlq.as_ref().map_or(0, DeadLetterQueue::len);
        st.metrics.as_ref().map(|m| m.snapshot(depth))
    }

    /// Counters and histogram buckets for the Prometheus exporter (`None` unless
    /// `enable_metrics`).
    pub(crate) fn export_metrics(&self) -> Option<super::metrics::MetricsExport> {
        let st = self.state.lock();
        let depth = st.dlq.as_ref().map_or(0, DeadLetterQueue::len);
        st.metrics.as_ref().map(|m| m.export(depth))
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state
            .lock()
            .dlq
            .as_ref()
            .map(DeadLetterQueue::snapshot)
            .unwrap_or_default()
    }

    /// Takes the dead letter of `task_id` out of the DLQ.
    pub(crate) fn take_dead_letter(&self, task_id: &str) -> Result<DeadLetter> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::ShutDown);
        }
        st.dlq
            .as_mut()
            .and_then(|dlq| dlq.remove(task_id))
            .ok_or_else(|| Error::TaskNotFound {
                task_id: task_id.to_owned(),
            })
    }

    /// Puts a dead letter back (its retry could not be submitted).
    pub(crate) fn restore_dead_letter(&self, letter: DeadLetter) {
        if let Some(dlq) = self.state.lock().dlq.as_mut() {
            dlq.restore(letter);
        }
    }

    pub(crate) fn drain_dead_letters(&self) -> Vec<DeadLetter> {
        self.state
            .lock()
            .dlq
            .as_mut()
            .map(DeadLetterQueue::drain)
            .unwrap_or_default()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Fails every queued and live task with [`Error::ShutDown`], aborts internal handlers and
    /// wakes every waiter. Idempotent. The future resolves when the broker (if any) has cleaned
    /// up; the closing itself does not depend on awaiting it.
    pub(crate) fn close(self: &Arc<Self>) -> BoxFuture<'static, ()> {
        let mut st = self.state.lock();
        if st.closed {
            return Box::pin(async {});
        }
        st.closed = true;
        for lane in SessionLane::ALL {
            for mut q in std::mem::take(&mut st.lanes[lane.index()].backlog) {
                if let Some(reply) = q.reply.take() {
                    let _ = reply.send(Err(Error::ShutDown));
                }
            }
        }
        let live: Vec<u64> = st.live.keys().copied().collect();
        for seq in live {
            self.finish(&mut st, seq, Err(Error::ShutDown));
        }
        st.timers.clear();
        st.events = None;
        drop(st);
        self.claimable.notify_waiters();
        self.timer_notify.notify_one();
        match self.dispatcher.get() {
            Some(d) => d.close(),
            None => Box::pin(async {}),
        }
    }
}

/// Closes a task's span with its outcome (only called when the span is enabled).
fn trace_outcome(e: &Entry, outcome: &Result<ExternalTaskResult>) {
    let outcome = match outcome {
        Ok(r) if r.success => "completed",
        Ok(_) => "failed",
        Err(err) => err.code(),
    };
    tracing::debug!(
        target: "a3s::task",
        parent: &e.span,
        outcome,
        attempts = e.attempt,
        latency_us = e.submitted_at.elapsed().as_micros() as u64,
        "completed"
    );
}

fn rand_tag() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The size of a value's JSON, without building it.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, value);
    n.0
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
