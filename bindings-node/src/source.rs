//! The worker-side methods `AgentSession` and `WorkerClient` share, written once over the core's
//! [`TaskSource`]: claim (`pendingExternalTasks`), complete one or many, abandon.

use a3s_code_core as core;
use a3s_code_core::worker::{ClaimOptions as CoreClaimOptions, TaskSource};
use napi::Env;
use napi_derive::napi;

use crate::error::{count, non_negative};
use crate::runtime::{Promise, promise};
use crate::shapes::{CompletionsIn, Tasks};
use crate::task::CompletionError;

/// Options of `pendingExternalTasks` (the core's `ClaimOptions`). A field left out takes the
/// core's default: no wait, and as many tasks as the source hands out at once (every claimable
/// task of an `AgentSession`; a `WorkerClient`'s default batch over NATS).
#[napi(object)]
#[derive(Debug)]
pub struct ClaimOptions {
    /// Claim at most this many tasks (pass your free slots).
    pub limit: Option<i64>,
    /// Wait up to this many milliseconds for the first task (a long poll).
    pub wait_ms: Option<i64>,
}

impl ClaimOptions {
    fn into_core(self) -> core::Result<CoreClaimOptions> {
        Ok(CoreClaimOptions {
            limit: self.limit.map(|n| count("limit", n)).transpose()?,
            wait: self
                .wait_ms
                .map(|ms| non_negative("waitMs", ms).map(std::time::Duration::from_millis))
                .transpose()?,
        })
    }
}

/// `pendingExternalTasks(options?)`: claims as the core's `TaskSource::pending` does (which also
/// decides what a closed session answers: `[]` for the spec's form without options, `ShutDown`
/// with `limit` or `waitMs`).
pub(crate) fn pending<S: TaskSource + Clone>(
    env: &Env,
    source: &S,
    options: Option<ClaimOptions>,
) -> napi::Result<Promise<Tasks>> {
    let source = source.clone();
    promise(env, async move {
        let opts = options.map(ClaimOptions::into_core).transpose()?;
        source.pending(opts.unwrap_or_default()).await.map(Tasks)
    })
}

/// `completeExternalTask(taskId, result)`: a batch of one, rejecting with its outcome.
pub(crate) fn complete_one<S: TaskSource + Clone>(
    env: &Env,
    source: &S,
    task_id: String,
    result: core::ExternalTaskResult,
) -> napi::Result<Promise<()>> {
    let source = source.clone();
    promise(env, async move {
        let mut outcomes = source.complete(vec![(task_id, result)]).await?;
        outcomes.pop().unwrap_or(Ok(()))
    })
}

/// `completeExternalTasks(results)`: one entry per result, `null` when it was accepted.
pub(crate) fn complete_many<S: TaskSource + Clone>(
    env: &Env,
    source: &S,
    results: CompletionsIn,
) -> napi::Result<Promise<Vec<Option<CompletionError>>>> {
    let source = source.clone();
    promise(env, async move {
        let outcomes = source.complete(results.0).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.err().map(Into::into))
            .collect())
    })
}

/// `abandonExternalTask(taskId, reason)`.
pub(crate) fn abandon<S: TaskSource + Clone>(
    env: &Env,
    source: &S,
    task_id: String,
    reason: String,
) -> napi::Result<Promise<()>> {
    let source = source.clone();
    promise(env, async move { source.abandon(&task_id, &reason).await })
}
