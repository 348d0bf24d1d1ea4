//! `ExternalTask` (what a worker receives) and `ExternalTaskResult` (what it reports).

use a3s_code_core as core;
use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;
use serde_json::Value;

use crate::queue::SessionLane;

/// A unit of work handed to a worker: one tool call or custom command.
///
/// Its data fields are plain properties (`JSON.stringify(task)` prints them); `isTimedOut()`
/// and `remainingMs()` come from its prototype and read the task's deadline, which runs on this
/// process's monotonic clock (kept in a private field).
///
/// (This struct only describes the shape for `index.d.ts`: [`crate::shapes`] converts.)
#[napi(object, object_to_js = false, object_from_js = false)]
pub struct ExternalTask {
    /// Unique id of the task; pass it to `completeExternalTask`.
    pub task_id: String,
    /// The session that submitted the task.
    pub session_id: String,
    /// The lane the task runs in.
    pub lane: SessionLane,
    /// A built-in tool name (`read`, `bash`, ...) or a custom command type.
    pub command_type: String,
    /// The arguments: a JSON object whose keys are never renamed (`payload.path`).
    #[napi(ts_type = "Record<string, any>")]
    pub payload: Value,
    /// The task's whole budget in milliseconds, across attempts.
    pub timeout_ms: i64,
    /// When the task was first dispatched, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// 1 for the first attempt, incremented on every retry.
    pub attempt: u32,
    /// Whether the task's deadline has passed: a worker should not start it.
    #[napi(ts_type = "() => boolean")]
    pub is_timed_out: (),
    /// Milliseconds left before the deadline (0 once it has passed).
    #[napi(ts_type = "() => number")]
    pub remaining_ms: (),
}

/// What a worker reports for a task: `{ success, result, error }`.
///
/// `success: false` reaches the submitter as is (it is not retried). `result` is any JSON
/// value, its keys never renamed (`{ content }` for `read`, `{ stdout, stderr, exit_code }` for
/// `bash`); `error` is a message, `null` or absent on success.
///
/// (Only the shape for `index.d.ts`: [`crate::shapes`] converts.)
#[napi(object, object_to_js = false, object_from_js = false)]
pub struct ExternalTaskResult {
    /// Whether the task did what it was asked.
    pub success: bool,
    /// The output, as JSON (absent = `null`).
    #[napi(ts_type = "any")]
    pub result: Option<Value>,
    /// A human-readable error when `success` is false; `null` or absent otherwise.
    pub error: Option<Either<String, Null>>,
}

/// The handle of a submitted task (`await session.submit(...)`).
///
/// (Only the shape for `index.d.ts`: [`crate::shapes`] converts.)
#[napi(object, object_to_js = false, object_from_js = false)]
pub struct TaskHandle {
    /// The id of the task.
    pub task_id: String,
    /// The task's outcome: its result (`success: false` included), or a rejection with
    /// `TaskTimedOut`, `TaskCancelled`, `RetriesExhausted` or `ShutDown`. The same promise
    /// however often it is called.
    #[napi(ts_type = "() => Promise<ExternalTaskResult>")]
    pub result: (),
    /// Cancels the task (`session.cancel(taskId)`): it leaves the backlog, or its running
    /// attempt is aborted, and `result()` rejects with `TaskCancelled`.
    #[napi(ts_type = "() => Promise<void>")]
    pub cancel: (),
}

/// One entry of a batch for `completeExternalTasks`.
///
/// (Only the shape for `index.d.ts`: [`crate::shapes`] converts.)
#[napi(object, object_to_js = false, object_from_js = false)]
pub struct ExternalTaskCompletion {
    /// The task.
    pub task_id: String,
    /// Its result.
    pub result: ExternalTaskResult,
}

/// Why one completion of a batch was refused (`completeExternalTasks`).
#[napi(object)]
#[derive(Debug)]
pub struct CompletionError {
    /// The core's stable code: `TaskNotFound`, `TaskAlreadyCompleted`, `TaskTimedOut`, ...
    pub code: String,
    /// The error message.
    pub message: String,
}

impl From<core::Error> for CompletionError {
    fn from(err: core::Error) -> Self {
        Self {
            code: err.code().to_owned(),
            message: err.to_string(),
        }
    }
}
