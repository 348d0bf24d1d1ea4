//! The task a worker receives and the result it sends back. These are also the wire payloads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tokio::time::Instant;

use crate::lane::SessionLane;

/// A unit of work handed to a worker: one tool call or custom command.
///
/// The deadline runs on the monotonic clock of the process holding the task. On the wire a task
/// carries `remaining_ms` as of the moment it was serialized; the receiver starts its own deadline
/// from its receipt time, so [`is_timed_out`](Self::is_timed_out) and
/// [`remaining_ms`](Self::remaining_ms) never compare two machines' wall clocks.
///
/// # Examples
///
/// ```
/// use a3s_code_core::{ExternalTask, queue::SessionLane};
/// let task = ExternalTask::new("t1", "s1", SessionLane::Query, "read",
///     serde_json::json!({"path": "README.md"}), 30_000);
/// assert!(!task.is_timed_out());
/// assert!(task.remaining_ms() <= 30_000);
///
/// // A serde round trip keeps the remaining time.
/// let wire = serde_json::to_string(&task).unwrap();
/// let back: ExternalTask = serde_json::from_str(&wire).unwrap();
/// assert_eq!(back.task_id, "t1");
/// assert!(back.remaining_ms() > 29_000);
/// ```
#[derive(Debug, Clone)]
pub struct ExternalTask {
    /// Unique id of the task; pass it to `complete_external_task`.
    pub task_id: String,
    /// The session that submitted the task.
    pub session_id: String,
    /// The lane the task runs in.
    pub lane: SessionLane,
    /// What to do: a built-in tool name (`read`, `bash`, ...) or a custom command type.
    pub command_type: String,
    /// The arguments, a JSON object whose keys are never renamed.
    pub payload: Value,
    /// The task's whole budget in milliseconds, across attempts.
    pub timeout_ms: u64,
    /// When the task was first dispatched, in milliseconds since the Unix epoch (informational:
    /// deadlines never use it).
    pub created_at: u64,
    /// 1 for the first attempt, incremented on every retry or redelivery.
    pub attempt: u32,
    deadline: Instant,
    /// The trace context it came with (a broker message's `traceparent`), if any.
    trace: Option<crate::trace::TraceContext>,
}

impl ExternalTask {
    /// A task whose deadline is `timeout_ms` from now, first attempt.
    pub fn new(
        task_id: impl Into<String>,
        session_id: impl Into<String>,
        lane: SessionLane,
        command_type: impl Into<String>,
        payload: Value,
        timeout_ms: u64,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            session_id: session_id.into(),
            lane,
            command_type: command_type.into(),
            payload,
            timeout_ms,
            created_at: epoch_ms(),
            attempt: 1,
            deadline: deadline_in(timeout_ms),
            trace: None,
        }
    }

    /// Builds a task with an explicit deadline (the scheduler's own clock).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        task_id: String,
        session_id: String,
        lane: SessionLane,
        command_type: String,
        payload: Value,
        timeout_ms: u64,
        created_at: u64,
        attempt: u32,
        deadline: Instant,
    ) -> Self {
        Self {
            task_id,
            session_id,
            lane,
            command_type,
            payload,
            timeout_ms,
            created_at,
            attempt,
            deadline,
            trace: None,
        }
    }

    /// Whether the task's deadline has passed: a worker should not start it.
    pub fn is_timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Milliseconds left before the deadline (0 once it has passed).
    pub fn remaining_ms(&self) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    }

    /// The deadline on this process's monotonic clock, for `tokio::time::timeout_at`.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The task's trace context: the one it arrived with (a broker message's `traceparent`
    /// header), else the session's own for this task (its span's, or
    /// [`TraceContext::for_task`]). A worker's spans of this task are its children.
    ///
    /// [`TraceContext::for_task`]: crate::trace::TraceContext::for_task
    pub fn trace_context(&self) -> crate::trace::TraceContext {
        self.trace
            .unwrap_or_else(|| crate::trace::task_context(&self.session_id, &self.task_id))
    }

    /// The span of one attempt of this task (see [`crate::trace`]).
    pub(crate) fn run_span(&self, parent: Option<&tracing::Span>) -> tracing::Span {
        crate::trace::run_span(
            crate::trace::RunOf {
                task_id: &self.task_id,
                lane: self.lane,
                command: &self.command_type,
                attempt: self.attempt,
                context: &|| self.trace_context(),
            },
            parent,
        )
    }

    /// The trace context set with [`with_trace_context`](Self::with_trace_context), if any: what
    /// a task message's `traceparent` header carries.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS broker
    pub(crate) fn carried_trace_context(&self) -> Option<crate::trace::TraceContext> {
        self.trace
    }

    /// Sets the trace context the task arrived with (a worker reading it from a message header).
    pub fn with_trace_context(mut self, cx: Option<crate::trace::TraceContext>) -> Self {
        self.trace = cx;
        self
    }
}

/// Two tasks are equal when every public field is; the process-local deadline is not compared.
impl PartialEq for ExternalTask {
    fn eq(&self, other: &Self) -> bool {
        self.task_id == other.task_id
            && self.session_id == other.session_id
            && self.lane == other.lane
            && self.command_type == other.command_type
            && self.payload == other.payload
            && self.timeout_ms == other.timeout_ms
            && self.created_at == other.created_at
            && self.attempt == other.attempt
    }
}

#[derive(Serialize, Deserialize)]
struct TaskRepr<P> {
    task_id: String,
    session_id: String,
    lane: SessionLane,
    command_type: String,
    payload: P,
    timeout_ms: u64,
    #[serde(default)]
    created_at: u64,
    #[serde(default = "first_attempt")]
    attempt: u32,
    #[serde(default)]
    remaining_ms: Option<u64>,
}

fn first_attempt() -> u32 {
    1
}

impl Serialize for ExternalTask {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskRepr {
            task_id: self.task_id.clone(),
            session_id: self.session_id.clone(),
            lane: self.lane,
            command_type: self.command_type.clone(),
            payload: &self.payload,
            timeout_ms: self.timeout_ms,
            created_at: self.created_at,
            attempt: self.attempt,
            remaining_ms: Some(self.remaining_ms()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExternalTask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = TaskRepr::<Value>::deserialize(deserializer)?;
        let remaining = repr
            .remaining_ms
            .unwrap_or(repr.timeout_ms)
            .min(repr.timeout_ms);
        Ok(Self {
            task_id: repr.task_id,
            session_id: repr.session_id,
            lane: repr.lane,
            command_type: repr.command_type,
            payload: repr.payload,
            timeout_ms: repr.timeout_ms,
            created_at: repr.created_at,
            attempt: repr.attempt,
            deadline: deadline_in(remaining),
            trace: None,
        })
    }
}

/// What a worker reports for a task.
///
/// `success: false` is a result like any other: it reaches the submitter as is and is never
/// retried. `result` is free-form JSON (`{"content": ...}` for `read`, `{"stdout", "stderr",
/// "exit_code"}` for `bash`).
///
/// # Examples
///
/// ```
/// use a3s_code_core::ExternalTaskResult;
/// let ok = ExternalTaskResult { success: true, result: serde_json::json!({"content": "hi"}), error: None };
/// assert_eq!(ok, ExternalTaskResult::ok(serde_json::json!({"content": "hi"})));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalTaskResult {
    /// Whether the task did what it was asked.
    pub success: bool,
    /// The output, as JSON.
    #[serde(default)]
    pub result: Value,
    /// A human-readable error when `success` is false.
    #[serde(default)]
    pub error: Option<String>,
}

impl ExternalTaskResult {
    /// A successful result.
    pub fn ok(result: Value) -> Self {
        Self {
            success: true,
            result,
            error: None,
        }
    }

    /// A failed result with an empty object as `result`.
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            success: false,
            result: Value::Object(Default::default()),
            error: Some(error.into()),
        }
    }
}

pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` from now on the monotonic clock; a duration the platform's clock cannot represent (a
/// hostile `timeout_ms` near `u64::MAX`) is capped at 100 years instead of panicking.
fn deadline_in(ms: u64) -> Instant {
    const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(Duration::from_millis(ms).min(CAP))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn deadline_survives_a_round_trip_and_counts_from_receipt() {
        let task = ExternalTask::new(
            "t",
            "s",
            SessionLane::Query,
            "read",
            json!({"path": "a"}),
            1_000,
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        let wire = serde_json::to_value(&task).unwrap();
        assert_eq!(wire["remaining_ms"], 600);
        tokio::time::advance(Duration::from_millis(5_000)).await; // time in transit is not counted
        let back: ExternalTask = serde_json::from_value(wire).unwrap();
        assert_eq!(back.remaining_ms(), 600);
        assert!(!back.is_timed_out());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(back.is_timed_out());
        assert_eq!(back.remaining_ms(), 0);
        assert_eq!(back, task);
    }

    #[test]
    fn missing_optional_fields_get_defaults() {
        let t: ExternalTask = serde_json::from_value(json!({
            "task_id": "t", "session_id": "s", "lane": "execute", "command_type": "bash",
            "payload": {"command": "true"}, "timeout_ms": 50
        }))
        .unwrap();
        assert_eq!(t.attempt, 1);
        assert!(t.remaining_ms() <= 50);
        let r: ExternalTaskResult = serde_json::from_value(json!({"success": true})).unwrap();
        assert_eq!(
            r,
            ExternalTaskResult {
                success: true,
                result: Value::Null,
                error: None
            }
        );
    }

    #[test]
    fn bad_lane_is_an_error() {
        let bad = json!({"task_id": "t", "session_id": "s", "lane": "fast", "command_type": "x",
            "payload": {}, "timeout_ms": 1});
        assert!(serde_json::from_value::<ExternalTask>(bad).is_err());
    }
}
