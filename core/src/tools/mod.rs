//! Built-in tools: `read`, `write`, `edit`, `grep`, `glob`, `ls` and `bash`.
//!
//! Each tool takes a JSON object of arguments and returns a JSON object. Paths are relative to a
//! [`Workspace`] root and can never leave it. [`run_tool`] runs one tool and returns typed errors;
//! [`execute_builtin`] runs an [`ExternalTask`] and turns every outcome into an
//! [`ExternalTaskResult`].
//!
//! | tool | arguments | result |
//! | --- | --- | --- |
//! | `read` | `path`, `offset?` (1-based line, default 1), `limit?` (lines, default 2000) | `content`, `total_lines`, `start_line`, `end_line`, `truncated` |
//! | `write` | `path`, `content` | `bytes_written`, `unchanged?` |
//! | `edit` | `path`, `old_string`, `new_string`, `replace_all?` | `replacements`, `already_applied?` |
//! | `grep` | `pattern`, `path?`, `glob?`, `case_insensitive?`, `max_results?` (default 200) | `matches: [{path, line, text}]`, `truncated` |
//! | `glob` | `pattern`, `path?` | `paths`, `truncated` |
//! | `ls` | `path?` | `entries: [{name, kind, size}]` |
//! | `bash` | `command`, `timeout_ms?` | `stdout`, `stderr`, `exit_code`, `timed_out`, `truncated` |
//!
//! Unknown argument keys are ignored, and a `null` value counts as absent. See each tool's module
//! for the details.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::task::{ExternalTask, ExternalTaskResult};

mod bash;
mod edit;
mod glob;
mod grep;
mod ls;
mod read;
mod walk;
mod workspace;
mod write;

pub use workspace::Workspace;

pub use crate::lane::BUILTIN_TOOLS;

/// Whether `name` is one of [`BUILTIN_TOOLS`].
///
/// # Examples
///
/// ```
/// use a3s_code_core::tools::is_builtin;
/// assert!(is_builtin("grep"));
/// assert!(!is_builtin("deploy"));
/// ```
pub fn is_builtin(name: &str) -> bool {
    BUILTIN_TOOLS.contains(&name)
}

/// Streams output chunks of long tasks: (stream: "stdout" | "stderr", chunk).
pub type OutputSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Per-call options of a tool run: where to stream output and when to give up.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use a3s_code_core::tools::ToolContext;
/// let ctx = ToolContext::new()
///     .with_output(Arc::new(|stream: &str, chunk: &str| eprint!("[{stream}] {chunk}")))
///     .with_deadline(tokio::time::Instant::now() + Duration::from_secs(30));
/// assert!(ctx.deadline().is_some());
/// ```
#[derive(Clone, Default)]
pub struct ToolContext {
    output: Option<OutputSink>,
    deadline: Option<Instant>,
}

impl ToolContext {
    /// A context with no output sink and no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams `bash`'s output to `sink` as it arrives, chunk by chunk (lossy UTF-8; a character
    /// split across reads is delivered whole). Only the output kept in the result (up to the
    /// workspace's [`max_output_bytes`](Workspace::max_output_bytes)) is streamed.
    pub fn with_output(mut self, sink: OutputSink) -> Self {
        self.output = Some(sink);
        self
    }

    /// Gives up at `deadline`: `bash` kills its command's whole process group then.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The output sink, if any.
    pub(crate) fn output(&self) -> Option<&OutputSink> {
        self.output.as_ref()
    }
}

impl fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolContext")
            .field("output", &self.output.as_ref().map(|_| "<sink>"))
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Runs one built-in tool with `args` in `ws`.
///
/// `bash` runs on the calling task (dropping the future kills its command); the other tools run
/// on tokio's blocking pool. Safe to call concurrently.
///
/// # Errors
///
/// - [`Error::UnknownTool`] when `name` is not in [`BUILTIN_TOOLS`];
/// - [`Error::InvalidPayload`] when `args` is not an object, or a key is missing or ill-typed
///   (the message names the key);
/// - [`Error::PathEscapesWorkspace`] when a path leaves the workspace;
/// - [`Error::ToolFailed`] when the tool fails: missing file, binary file, non-unique edit, invalid
///   regex or glob, `bash` disabled, ...
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> a3s_code_core::Result<()> {
/// use a3s_code_core::tools::{run_tool, ToolContext, Workspace};
/// use serde_json::json;
/// let dir = tempfile::tempdir().unwrap();
/// let ws = Workspace::new(dir.path())?;
/// let ctx = ToolContext::new();
/// run_tool("write", &json!({"path": "a.txt", "content": "one\ntwo\n"}), &ws, &ctx).await?;
/// let out = run_tool("read", &json!({"path": "a.txt", "offset": 2}), &ws, &ctx).await?;
/// assert_eq!(out["content"], "two\n");
/// # Ok(())
/// # }
/// ```
pub async fn run_tool(
    name: &str,
    args: &Value,
    ws: &Workspace,
    ctx: &ToolContext,
) -> Result<Value> {
    let tool: &'static str = BUILTIN_TOOLS
        .iter()
        .copied()
        .find(|t| *t == name)
        .ok_or_else(|| Error::UnknownTool {
            name: name.to_string(),
        })?;
    let Some(map) = args.as_object() else {
        return Err(Error::invalid_payload(format!(
            "{tool}: arguments must be a JSON object, got {}",
            type_name(args)
        )));
    };
    let args = Args { tool, map };
    if tool == "bash" {
        return bash::run(&args, ws, ctx).await;
    }
    let map = map.clone();
    let ws = ws.clone();
    tokio::task::spawn_blocking(move || {
        let args = Args { tool, map: &map };
        match tool {
            "read" => read::run(&args, &ws),
            "write" => write::run(&args, &ws),
            "edit" => edit::run(&args, &ws),
            "grep" => grep::run(&args, &ws),
            "glob" => glob::run(&args, &ws),
            _ => ls::run(&args, &ws),
        }
    })
    .await
    .map_err(|e| tool_error(tool, format!("the tool did not complete: {e}")))?
}

/// Runs a task's built-in tool (`task.command_type` with `task.payload`) and never fails.
///
/// Same as [`execute_builtin_with`] with an empty [`ToolContext`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use a3s_code_core::{ExternalTask, queue::SessionLane, tools::{execute_builtin, Workspace}};
/// let dir = tempfile::tempdir().unwrap();
/// let ws = Workspace::new(dir.path()).unwrap();
/// let task = ExternalTask::new("t1", "s1", SessionLane::Query, "read",
///     serde_json::json!({"path": "missing.txt"}), 5_000);
/// let result = execute_builtin(&task, &ws).await;
/// assert!(!result.success);
/// assert_eq!(result.result["error_code"], "ToolFailed");
/// # }
/// ```
pub async fn execute_builtin(task: &ExternalTask, ws: &Workspace) -> ExternalTaskResult {
    execute_builtin_with(task, ws, &ToolContext::new()).await
}

/// Runs a task's built-in tool with `ctx` and never fails.
///
/// - A task whose deadline already passed is not run: `success: false`,
///   `result: {"error_code": "TaskTimedOut"}`, `error: "task timed out before execution"`.
/// - The tool's deadline is the earlier of the task's deadline and `ctx`'s.
/// - An error becomes `success: false`, `result: {"error_code": err.code()}`,
///   `error: err.to_string()`.
/// - Every tool that ran succeeds, except `bash`, which succeeds only with exit code 0; a
///   failed `bash` keeps its whole result (`stdout`, `stderr`, ...) and says why in `error`.
///
/// Safe to call concurrently.
pub async fn execute_builtin_with(
    task: &ExternalTask,
    ws: &Workspace,
    ctx: &ToolContext,
) -> ExternalTaskResult {
    if task.is_timed_out() {
        return ExternalTaskResult {
            success: false,
            result: json!({"error_code": "TaskTimedOut"}),
            error: Some("task timed out before execution".to_string()),
        };
    }
    let deadline = match ctx.deadline() {
        Some(d) => d.min(task.deadline()),
        None => task.deadline(),
    };
    let ctx = ctx.clone().with_deadline(deadline);
    match run_tool(&task.command_type, &task.payload, ws, &ctx).await {
        Ok(result) if task.command_type == "bash" => {
            let failure = bash::failure(&result);
            ExternalTaskResult {
                success: failure.is_none(),
                result,
                error: failure,
            }
        }
        Ok(result) => ExternalTaskResult::ok(result),
        Err(err) => ExternalTaskResult {
            success: false,
            result: json!({"error_code": err.code()}),
            error: Some(err.to_string()),
        },
    }
}

/// A [`Error::ToolFailed`] for `tool`.
pub(crate) fn tool_error(tool: &str, reason: impl Into<String>) -> Error {
    Error::ToolFailed {
        tool: tool.to_string(),
        reason: reason.into(),
    }
}

/// A tool's I/O failure on `path` (as the user wrote it) as an [`Error::ToolFailed`].
pub(crate) fn io_error(tool: &str, path: &str, err: &std::io::Error) -> Error {
    let what = match err.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => err.to_string(),
    };
    tool_error(tool, format!("{path}: {what}"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A tool's argument object, with typed accessors whose errors name the tool and key.
pub(crate) struct Args<'a> {
    pub(crate) tool: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn ill_typed(&self, key: &str, expected: &str, got: &Value) -> Error {
        Error::invalid_payload(format!(
            "{}: `{key}` must be {expected}, got {}",
            self.tool,
            type_name(got)
        ))
    }

    /// A required string.
    pub(crate) fn string(&self, key: &str) -> Result<&'a str> {
        self.opt_string(key)?.ok_or_else(|| {
            Error::invalid_payload(format!(
                "{}: missing required key `{key}` (a string)",
                self.tool
            ))
        })
    }

    /// An optional string.
    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.ill_typed(key, "a string", other)),
        }
    }

    /// An optional boolean (absent = `false`).
    pub(crate) fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.ill_typed(key, "a boolean", other)),
        }
    }

    /// An optional integer of at least `min`.
    pub(crate) fn opt_count(&self, key: &str, min: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= min => Ok(Some(n)),
                _ => Err(self.ill_typed(key, &format!("an integer >= {min}"), v)),
            },
        }
    }

    /// The workspace-relative path under `key` (the root, empty, when absent), with the path as
    /// the user wrote it for messages. Only the checks that need no file system access are made
    /// here; the tool opens the path beneath the workspace handle.
    pub(crate) fn path(
        &self,
        ws: &Workspace,
        key: &str,
        required: bool,
    ) -> Result<(std::path::PathBuf, &'a str)> {
        let raw = if required {
            self.string(key)?
        } else {
            self.opt_string(key)?.unwrap_or("")
        };
        Ok((ws.relative(raw)?, if raw.is_empty() { "." } else { raw }))
    }
}

/// Converts a count to `usize`, saturating.
pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::SessionLane;

    fn args(v: &Value) -> Args<'_> {
        Args {
            tool: "t",
            map: v.as_object().unwrap(),
        }
    }

    #[test]
    fn builtin_names() {
        for name in BUILTIN_TOOLS {
            assert!(is_builtin(name));
        }
        assert!(!is_builtin("Read"));
        assert!(!is_builtin(""));
    }

    #[test]
    fn args_accessors() {
        let v = json!({"s": "x", "n": 5, "neg": -1, "f": 1.5, "b": true, "null": null});
        let a = args(&v);
        assert_eq!(a.string("s").unwrap(), "x");
        assert!(
            a.string("missing")
                .unwrap_err()
                .to_string()
                .contains("`missing`")
        );
        assert!(a.string("null").is_err());
        assert_eq!(a.opt_string("null").unwrap(), None);
        assert!(
            a.opt_string("n")
                .unwrap_err()
                .to_string()
                .contains("`n` must be a string")
        );
        assert_eq!(a.opt_count("n", 1).unwrap(), Some(5));
        assert!(a.opt_count("n", 6).is_err());
        assert!(
            a.opt_count("neg", 0)
                .unwrap_err()
                .to_string()
                .contains("`neg`")
        );
        assert!(a.opt_count("f", 0).is_err());
        assert!(a.flag("b").unwrap());
        assert!(!a.flag("missing").unwrap());
        assert_eq!(a.flag("s").unwrap_err().code(), "InvalidPayload");
    }

    #[test]
    fn context_debug_and_builders() {
        let ctx = ToolContext::new();
        assert!(ctx.deadline().is_none() && ctx.output().is_none());
        let ctx = ctx.with_output(Arc::new(|_: &str, _: &str| {}));
        assert!(format!("{ctx:?}").contains("<sink>"));
    }

    #[tokio::test]
    async fn dispatch_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        let ctx = ToolContext::new();
        let err = run_tool("nope", &json!({}), &ws, &ctx).await.unwrap_err();
        assert_eq!(err.code(), "UnknownTool");
        for bad in [json!(null), json!([1]), json!("x"), json!(3)] {
            let err = run_tool("ls", &bad, &ws, &ctx).await.unwrap_err();
            assert_eq!(err.code(), "InvalidPayload");
        }
    }

    #[tokio::test]
    async fn timed_out_task_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        let task = ExternalTask::new(
            "t",
            "s",
            SessionLane::Execute,
            "write",
            json!({"path": "f", "content": "x"}),
            0,
        );
        let res = execute_builtin(&task, &ws).await;
        assert!(!res.success);
        assert_eq!(
            res.error.as_deref(),
            Some("task timed out before execution")
        );
        assert!(!dir.path().join("f").exists());
    }
}
