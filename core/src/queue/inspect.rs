//! What the admin API shows of a session and asks of it: tasks by state, lanes, dead letters,
//! actions. The types are re-exported by [`crate::admin`]; the functions build the answers
//! from a session's scheduler, for the in-process client and the NATS request handlers alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DeadLetter;
use super::scheduler::Scheduler;
use crate::error::{Error, Result};
use crate::lane::{SessionLane, TaskHandlerMode};

/// How many finished tasks a session keeps for the admin API by default
/// ([`SessionQueueConfig::finished_history`](super::SessionQueueConfig::finished_history)).
pub const DEFAULT_FINISHED_HISTORY: usize = 64;

/// The largest page a request may ask for.
pub const MAX_PAGE: usize = 1_000;

/// A task's state, as the admin API groups tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a lane slot (in the session's backlog).
    Pending,
    /// Holding a slot: running here, waiting for a worker, held by one, or between retries.
    InFlight,
    /// Ended, kept in the session's bounded ring of recently finished tasks.
    Finished,
}

impl std::str::FromStr for TaskState {
    type Err = Error;

    /// `pending`, `in_flight` or `finished`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(TaskState::Pending),
            "in_flight" => Ok(TaskState::InFlight),
            "finished" => Ok(TaskState::Finished),
            _ => Err(Error::invalid_config(format!(
                "unknown task state {s:?} (expected pending, in_flight or finished)"
            ))),
        }
    }
}

/// How a finished task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// A result with `success: true`.
    Completed,
    /// A result with `success: false`, or a failure of the queue (retries exhausted, ...).
    Failed,
    /// Its timeout passed.
    TimedOut,
    /// Cancelled.
    Cancelled,
}

/// One task as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub task_id: String,
    /// Its lane.
    pub lane: SessionLane,
    /// Its command type (`read`, `bash`, ...).
    pub command_type: String,
    /// Where it is.
    pub state: TaskState,
    /// When it was submitted, in milliseconds since the Unix epoch.
    pub submitted_at: u64,
    /// When it got its slot (in flight and finished tasks that got one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it ended (finished tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The current (or last) attempt, 0 before the first.
    pub attempt: u32,
    /// The lane's handler mode it runs under (in flight and finished tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TaskHandlerMode>,
    /// The worker holding it (in flight; from the worker's "taken" notice, absent when the
    /// worker sends none) or the one that ran it (finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// How it ended (finished tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TaskOutcome>,
    /// The stable code of its failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Its failure, as a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The dead letter it retries (a task submitted by [`Action::RetryDeadLetter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// Worker labels it requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its payload (pending and in-flight tasks; finished ones keep none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// Which tasks to list: one state, a page at a time, optionally one task id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQuery {
    /// The state.
    pub state: TaskState,
    /// Where the previous page ended ([`TaskPage::next`]); absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many tasks (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Only the task with this id, or whose id starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

impl TaskQuery {
    /// The first page (50 tasks) of `state`.
    pub fn new(state: TaskState) -> Self {
        Self {
            state,
            cursor: None,
            limit: 50,
            search: None,
        }
    }

    /// At most `limit` tasks per page.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Continues after a page.
    pub fn with_cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// Only tasks whose id starts with `search`.
    pub fn with_search(mut self, search: impl Into<String>) -> Self {
        self.search = Some(search.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_limit(self.limit)
    }
}

pub(crate) fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::invalid_config(format!(
            "a page holds 1 to {MAX_PAGE} items, not {limit}"
        )));
    }
    Ok(())
}

/// A page of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    /// The tasks: pending in dispatch order (highest lane first), in flight oldest first,
    /// finished newest first.
    pub tasks: Vec<TaskView>,
    /// The cursor of the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One lane of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneView {
    /// The lane.
    pub lane: SessionLane,
    /// Its handler mode.
    pub mode: TaskHandlerMode,
    /// Whether it is paused.
    pub paused: bool,
    /// Tasks waiting for a slot.
    pub pending: usize,
    /// How long the oldest of them has waited, in milliseconds.
    pub oldest_pending_ms: u64,
    /// Tasks holding a slot.
    pub in_flight: usize,
    /// Its concurrency limit.
    pub capacity: usize,
    /// Its task timeout.
    pub timeout_ms: u64,
    /// Tasks that ended with a result, since the session opened (with metrics enabled).
    pub processed: u64,
    /// Tasks that failed (results with `success: false` included).
    pub failed: u64,
    /// Tasks that timed out.
    pub timed_out: u64,
    /// Retries.
    pub retried: u64,
    /// Median latency (submit to outcome), in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
}

/// A session, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    /// The session.
    pub session_id: String,
    /// Its tenant (`default` without one; in-process sessions without a broker too).
    pub tenant: String,
    /// The process (hub) hosting it, for sessions on NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// When it opened, in milliseconds since the Unix epoch.
    pub opened_at: u64,
    /// Whether metrics are recorded (the counters and latencies of [`LaneView`] are 0 if not).
    pub metrics: bool,
    /// Its lanes, highest priority first.
    pub lanes: Vec<LaneView>,
    /// Dead letters in its DLQ.
    pub dead_letters: usize,
    /// Finished tasks kept for the admin API (at most its history size).
    pub finished_kept: usize,
}

/// A session in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session.
    pub session_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The process (hub) hosting it, for sessions on NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// When it opened, in milliseconds since the Unix epoch.
    pub opened_at: u64,
    /// Tasks waiting for a slot, all lanes.
    pub pending: usize,
    /// Tasks holding a slot, all lanes.
    pub in_flight: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Its paused lanes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paused: Vec<SessionLane>,
}

/// A page of sessions, ordered by (hub, session id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    /// The sessions.
    pub sessions: Vec<SessionSummary>,
    /// The cursor of the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Where dead letters were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LetterSource {
    /// The session's own DLQ (authoritative; the session is open).
    Session,
    /// The dead-letter stream, which mirrors it (the session is gone: read only).
    Stream,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// The letters.
    pub letters: Vec<DeadLetter>,
    /// The cursor of the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Where they were read from: actions are refused on letters read from the stream.
    pub source: LetterSource,
}

/// Something to do to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Cancel a pending or in-flight task.
    Cancel {
        /// The task.
        task_id: String,
    },
    /// Pause a lane (not Control): nothing new is dispatched; in-flight tasks finish.
    Pause {
        /// The lane.
        lane: SessionLane,
    },
    /// Resume a paused lane.
    Resume {
        /// The lane.
        lane: SessionLane,
    },
    /// Submit a dead letter's task again as a new task (`retry_of` = the letter's id).
    RetryDeadLetter {
        /// The dead letter's task id.
        task_id: String,
    },
    /// Delete one dead letter.
    DeleteDeadLetter {
        /// The dead letter's task id.
        task_id: String,
    },
    /// Delete every dead letter of the session.
    PurgeDeadLetters,
}

impl Action {
    /// An action from its JSON form (`{"action": "pause", "lane": "query"}`,
    /// `{"action": "cancel", "task_id": "..."}`): what the bindings and the dashboard receive.
    /// A missing field or an unknown action is an [`Error::InvalidPayload`] naming it.
    ///
    /// ```
    /// use a3s_code_core::admin::Action;
    /// let a = Action::from_json(serde_json::json!({"action": "purge_dead_letters"})).unwrap();
    /// assert_eq!(a, Action::PurgeDeadLetters);
    /// let err = Action::from_json(serde_json::json!({"action": "cancel"})).unwrap_err();
    /// assert_eq!(err.code(), "InvalidPayload");
    /// ```
    pub fn from_json(value: Value) -> Result<Action> {
        serde_json::from_value(value).map_err(|e| Error::InvalidPayload {
            reason: format!(
                "action: {e} (actions: cancel and the dead-letter actions need a task_id, pause \
                 and resume a lane; purge_dead_letters needs nothing)"
            ),
        })
    }

    /// The action's name as on the wire (`cancel`, `pause`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Cancel { .. } => "cancel",
            Action::Pause { .. } => "pause",
            Action::Resume { .. } => "resume",
            Action::RetryDeadLetter { .. } => "retry_dead_letter",
            Action::DeleteDeadLetter { .. } => "delete_dead_letter",
            Action::PurgeDeadLetters => "purge_dead_letters",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The new task (a retried dead letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// How many dead letters a purge deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<usize>,
}

/// A session the admin API speaks about.
pub(crate) struct Target {
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) tenant: String,
    pub(crate) hub: Option<String>,
}

/// The session's lanes and figures.
pub(crate) fn session(t: &Target) -> SessionView {
    let s = &t.scheduler;
    let stats = s.stats();
    let metrics = s.metrics();
    let lanes = SessionLane::ALL
        .iter()
        .map(|lane| {
            let l = &stats.per_lane[lane];
            let m = metrics.as_ref().and_then(|m| m.per_lane.get(lane));
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            LaneView {
                lane: *lane,
                mode: l.mode,
                paused: l.paused,
                pending: l.pending_count,
                oldest_pending_ms: l.oldest_pending_ms,
                in_flight: l.active_count,
                capacity: l.max_concurrency,
                timeout_ms: l.timeout_ms,
                processed: m.map_or(0, |m| m.total_processed),
                failed: m.map_or(0, |m| m.total_failed),
                timed_out: m.map_or(0, |m| m.total_timed_out),
                retried: m.map_or(0, |m| m.total_retried),
                p50_ms: m.map_or(0.0, |m| ms(m.p50_latency)),
                p99_ms: m.map_or(0.0, |m| ms(m.p99_latency)),
            }
        })
        .collect();
    SessionView {
        session_id: s.session_id().to_owned(),
        tenant: t.tenant.clone(),
        hub: t.hub.clone(),
        opened_at: s.opened_at(),
        metrics: metrics.is_some(),
        lanes,
        dead_letters: s.dead_letter_count(),
        finished_kept: s.finished_kept(),
    }
}

/// The session in a list.
pub(crate) fn summary(t: &Target) -> SessionSummary {
    let s = &t.scheduler;
    let stats = s.stats();
    SessionSummary {
        session_id: s.session_id().to_owned(),
        tenant: t.tenant.clone(),
        hub: t.hub.clone(),
        opened_at: s.opened_at(),
        pending: stats.pending_count,
        in_flight: stats.active_count,
        dead_letters: s.dead_letter_count(),
        paused: stats
            .per_lane
            .iter()
            .filter(|(_, l)| l.paused)
            .map(|(lane, _)| *lane)
            .collect(),
    }
}

pub(crate) fn tasks(t: &Target, query: &TaskQuery) -> Result<TaskPage> {
    t.scheduler.tasks(query)
}

/// A page of the session's own DLQ; the cursor is the position of the next letter.
pub(crate) fn dead_letters(
    t: &Target,
    cursor: Option<&str>,
    limit: usize,
) -> Result<DeadLetterPage> {
    check_limit(limit)?;
    let from = match cursor {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| Error::invalid_config(format!("{c:?} is not a cursor of this listing")))?,
    };
    let (letters, more) = t.scheduler.dead_letter_page(from, limit);
    Ok(DeadLetterPage {
        next: more.then(|| (from + letters.len()).to_string()),
        letters,
        source: LetterSource::Session,
    })
}

/// Applies an action; logged with who asked.
pub(crate) fn act(t: &Target, action: &Action, actor: &str) -> Result<ActionOutcome> {
    let s = &t.scheduler;
    let out = match action {
        Action::Cancel { task_id } => s.cancel(task_id).map(|()| ActionOutcome::default()),
        Action::Pause { lane } => s.set_paused(*lane, true).map(|()| ActionOutcome::default()),
        Action::Resume { lane } => s
            .set_paused(*lane, false)
            .map(|()| ActionOutcome::default()),
        Action::RetryDeadLetter { task_id } => {
            s.retry_dead_letter(task_id).map(|handle| ActionOutcome {
                task_id: Some(handle.task_id().to_owned()),
                purged: None,
            })
            // The handle is dropped: the new task's outcome reaches events and the ring.
        }
        Action::DeleteDeadLetter { task_id } => s
            .delete_dead_letter(task_id)
            .map(|()| ActionOutcome::default()),
        Action::PurgeDeadLetters => {
            if s.is_closed() {
                Err(Error::ShutDown)
            } else {
                Ok(ActionOutcome {
                    task_id: None,
                    purged: Some(s.purge_dead_letters().len()),
                })
            }
        }
    };
    match &out {
        Ok(_) => tracing::info!(
            session = s.session_id(),
            actor,
            action = action.name(),
            ?action,
            "admin action applied"
        ),
        Err(err) => tracing::info!(
            session = s.session_id(),
            actor,
            action = action.name(),
            ?action,
            error = %err,
            "admin action refused"
        ),
    }
    out
}
