//! What a worker uses besides the session: the built-in tools.

use a3s_code_core as core;
use a3s_code_core::tools::{Workspace, execute_builtin as run_builtin};
use napi::Env;
use napi_derive::napi;

use crate::runtime::{Promise, spawned};
use crate::shapes::{ResultOut, TaskIn};

/// Options of `executeBuiltin`.
#[napi(object)]
#[derive(Debug)]
pub struct BuiltinOptions {
    /// Whether the `bash` tool may run (default false: tasks come from elsewhere, so running
    /// their commands is opt-in).
    pub allow_bash: Option<bool>,
}

/// Runs a task's built-in tool (`task.commandType` with `task.payload`) in `workspace` and
/// resolves to its result; it never fails for the tool's sake: an error (a path escaping the
/// workspace, a missing file, a timed-out task, ...) is `success: false` with
/// `result.error_code` set to its code. Rejects only when `workspace` is not a directory
/// (`InvalidConfig`).
#[napi(ts_return_type = "Promise<ExternalTaskResult>")]
pub fn execute_builtin(
    env: &Env,
    #[napi(ts_arg_type = "ExternalTask")] task: TaskIn,
    workspace: String,
    options: Option<BuiltinOptions>,
) -> napi::Result<Promise<ResultOut>> {
    let task = task.0;
    let allow_bash = options.and_then(|o| o.allow_bash).unwrap_or(false);
    spawned(env, async move {
        let ws = Workspace::new(workspace)?.with_bash(allow_bash);
        Ok::<_, core::Error>(ResultOut(run_builtin(&task, &ws).await))
    })
}
