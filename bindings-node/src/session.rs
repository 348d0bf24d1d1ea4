//! `AgentSession` (a lane queue and a workspace), its options, and `TaskHandle`.

use std::time::Duration;

use a3s_code_core as core;
use napi::bindgen_prelude::This;
use napi::{Env, JsValue};
use napi_derive::napi;

use crate::error::{count, non_negative};
use crate::queue::{
    DeadLetter, JsEventStream, LaneHandlerConfig, QueueMetrics, QueueStats, SessionLane,
    SessionQueueConfig, TaskPage, TaskQuery,
};
use crate::remote::NatsConfig;
use crate::runtime::{Promise, promise};
use crate::shapes::{CompletionsIn, HandleOut, JsonIn, ResultIn, ResultOut, SessionRef, Tasks};
use crate::source::{self, ClaimOptions};
use crate::task::CompletionError;

/// Options of a new session (`agent.session(workspace, options)`).
#[napi(object)]
#[derive(Debug)]
pub struct SessionOptions {
    /// The queue configuration; absent takes the agent's `queue { }` block, else the defaults.
    pub queue_config: Option<SessionQueueConfig>,
    /// The session id (letters, digits, `-`, `_`); absent generates a random UUID.
    pub session_id: Option<String>,
    /// Whether the built-in `bash` tool may run in this process (default true).
    pub allow_bash: Option<bool>,
    /// Publish the tasks of External lanes to NATS JetStream, for `WorkerClient` workers on
    /// other machines (absent: the agent's `distribution { }` block, then `A3S_NATS_URL`, else
    /// in process).
    pub nats: Option<NatsConfig>,
    /// Serve `/metrics` (Prometheus) and `/healthz` on this address, e.g. `'127.0.0.1:9464'`
    /// (port 0 picks a free one). Turns `enableMetrics` on.
    pub metrics_addr: Option<String>,
    /// The tenant this session belongs to (one subject token: letters, digits, `-`, `_`, not
    /// starting with `_`); absent: the default tenant, `'default'`.
    pub tenant: Option<String>,
    /// The tenant's share of a shared worker fleet (finite, > 0; default 1). Without `tenant`,
    /// weighs the default tenant.
    pub tenant_weight: Option<f64>,
    /// Caps the tenant's tasks in flight in each lane, across all its sessions and workers
    /// (at least 1).
    pub tenant_max_in_flight: Option<i64>,
}

impl SessionOptions {
    pub(crate) fn into_core(self) -> core::Result<core::SessionOptions> {
        let mut opts = core::SessionOptions {
            queue_config: self.queue_config.map(|c| c.into_core()).transpose()?,
            session_id: self.session_id,
            allow_bash: self.allow_bash,
            nats: self.nats.map(|n| n.into_core(None)).transpose()?,
            metrics_addr: self
                .metrics_addr
                .map(|a| {
                    a.parse().map_err(|e| core::Error::InvalidConfig {
                        reason: format!("metricsAddr {a:?}: {e}"),
                    })
                })
                .transpose()?,
            tenant: None,
        };
        let cap = self
            .tenant_max_in_flight
            .map(|n| count("tenantMaxInFlight", n))
            .transpose()?;
        opts = opts.with_tenant_parts(self.tenant, self.tenant_weight, cap)?;
        Ok(opts)
    }
}

/// A session: a lane queue, a workspace and its workers' entry points.
///
/// Every method may be called concurrently. Asynchronous methods reject with an `Error` whose
/// `code` is the core's stable code (`TaskNotFound`, `TaskTimedOut`, `ShutDown`, ...).
#[napi(js_name = "AgentSession")]
pub struct JsAgentSession {
    inner: core::AgentSession,
}

impl From<core::AgentSession> for JsAgentSession {
    fn from(inner: core::AgentSession) -> Self {
        Self { inner }
    }
}

#[napi]
impl JsAgentSession {
    /// The session id, which remote workers use to find its tasks.
    #[napi(getter)]
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// Waits until the session's broker (NATS) is connected and set up, so that remote workers
    /// find its tasks; resolves at once for a session without one. Rejects with
    /// `BrokerUnavailable` (the last connection error) after `timeoutMs` (default 10 000), or
    /// `ShutDown` once closed.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn broker_ready(&self, env: &Env, timeout_ms: Option<i64>) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move {
            let timeout = non_negative("timeoutMs", timeout_ms.unwrap_or(10_000))?;
            session.broker_ready(Duration::from_millis(timeout)).await
        })
    }

    /// The workspace root every built-in tool of this session is confined to (canonical path).
    #[napi(getter)]
    pub fn workspace(&self) -> String {
        self.inner.workspace().root().display().to_string()
    }

    /// The queue configuration the session was created with, every field filled in.
    #[napi]
    pub fn queue_config(&self) -> SessionQueueConfig {
        self.inner.queue_config().into()
    }

    /// Sets how a lane handles the tasks it dispatches from now on.
    ///
    /// Rejects with `InvalidConfig` (zero timeout) or `ShutDown`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_lane_handler(
        &self,
        env: &Env,
        lane: SessionLane,
        config: LaneHandlerConfig,
    ) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move {
            session
                .set_lane_handler(lane.into(), config.into_core()?)
                .await
        })
    }

    /// Claims tasks waiting for an external worker, highest-priority lane first; each task goes
    /// to exactly one caller.
    ///
    /// Without options: every claimable task, at once (an empty array when there is none, or
    /// the session is closed). With `{ limit, waitMs }`: at most `limit` tasks, waiting up to
    /// `waitMs` for the first one (a long poll), and rejecting with `ShutDown` once the session
    /// is closed so that worker loops can stop.
    #[napi(ts_return_type = "Promise<ExternalTask[]>")]
    pub fn pending_external_tasks(
        &self,
        env: &Env,
        options: Option<ClaimOptions>,
    ) -> napi::Result<Promise<Tasks>> {
        source::pending(env, &self.inner, options)
    }

    /// Reports the result of an external task. The first completion of a live task wins.
    ///
    /// Rejects (and changes nothing) with `TaskNotFound` for an unknown id,
    /// `TaskAlreadyCompleted` for a second completion, `TaskTimedOut` / `TaskCancelled` for a
    /// result that came too late.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn complete_external_task(
        &self,
        env: &Env,
        task_id: String,
        #[napi(ts_arg_type = "ExternalTaskResult")] result: ResultIn,
    ) -> napi::Result<Promise<()>> {
        source::complete_one(env, &self.inner, task_id, result.0)
    }

    /// Reports many results in one call. Resolves to one entry per result, in order: `null`
    /// when it was accepted, else why it was refused (`{ code, message }`).
    #[napi(ts_return_type = "Promise<Array<CompletionError | null>>")]
    pub fn complete_external_tasks(
        &self,
        env: &Env,
        #[napi(ts_arg_type = "ExternalTaskCompletion[]")] results: CompletionsIn,
    ) -> napi::Result<Promise<Vec<Option<CompletionError>>>> {
        source::complete_many(env, &self.inner, results)
    }

    /// Gives a claimed task back without a result: the attempt counts as lost, and the retry
    /// policy decides whether another attempt follows. Rejects as `completeExternalTask`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn abandon_external_task(
        &self,
        env: &Env,
        task_id: String,
        reason: String,
    ) -> napi::Result<Promise<()>> {
        source::abandon(env, &self.inner, task_id, reason)
    }

    /// Runs a built-in tool through its lane (`read`, `grep`, `glob`, `ls` → Query; `bash`,
    /// `write`, `edit` → Execute) and resolves to its result, `success: false` included.
    ///
    /// Rejects only for queue-level failures: `UnknownTool`, `InvalidPayload`, `QueueFull`,
    /// `TaskTimedOut`, `TaskCancelled`, `RetriesExhausted`, `ShutDown`.
    #[napi(ts_return_type = "Promise<ExternalTaskResult>")]
    pub fn tool(
        &self,
        env: &Env,
        name: String,
        #[napi(ts_arg_type = "Record<string, any>")] args: JsonIn,
    ) -> napi::Result<Promise<ResultOut>> {
        let session = self.inner.clone();
        promise(env, async move {
            Ok(ResultOut(session.tool(&name, args.0).await?))
        })
    }

    /// Queues a task in `lane` and resolves to its handle at once; `await handle.result()` for
    /// the outcome. Rejects with `InvalidPayload` (payload not an object), `QueueFull` or
    /// `ShutDown`.
    ///
    /// A submitted task keeps the process alive until it ends (completes, fails, times out, is
    /// cancelled, or the session closes), whether or not its result is awaited.
    #[napi(
        ts_args_type = "lane: SessionLane, commandType: string, payload: Record<string, any>",
        ts_return_type = "Promise<TaskHandle>"
    )]
    #[allow(unsafe_code)] // `this` is the live JS object of this call
    pub fn submit(
        &self,
        env: &Env,
        this: This,
        lane: SessionLane,
        command_type: String,
        payload: JsonIn,
    ) -> napi::Result<Promise<HandleOut>> {
        let session = self.inner.clone();
        let session_ref = unsafe { SessionRef::new(env.raw(), this.object.raw()) }?;
        promise(env, async move {
            let handle = session.submit(lane.into(), &command_type, payload.0).await;
            Ok(HandleOut {
                handle: handle?,
                session: session_ref,
            })
        })
    }

    /// Submits a dead letter's task again as a new task (a new id; the same lane, command and
    /// payload) and takes the letter out of the DLQ; resolves to the new task's handle.
    ///
    /// Rejects with `TaskNotFound` (no dead letter has this id), `QueueFull` (the letter stays)
    /// or `ShutDown`.
    #[napi(
        ts_args_type = "taskId: string",
        ts_return_type = "Promise<TaskHandle>"
    )]
    #[allow(unsafe_code)] // `this` is the live JS object of this call
    pub fn retry_dead_letter(
        &self,
        env: &Env,
        this: This,
        task_id: String,
    ) -> napi::Result<Promise<HandleOut>> {
        let session = self.inner.clone();
        let session_ref = unsafe { SessionRef::new(env.raw(), this.object.raw()) }?;
        promise(env, async move {
            let handle = session.retry_dead_letter(&task_id).await;
            Ok(HandleOut {
                handle: handle?,
                session: session_ref,
            })
        })
    }

    /// Deletes one dead letter. Rejects with `TaskNotFound` (no dead letter has this id) or
    /// `ShutDown`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete_dead_letter(&self, env: &Env, task_id: String) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(
            env,
            async move { session.delete_dead_letter(&task_id).await },
        )
    }

    /// Pauses a lane: nothing new is dispatched from it; tasks holding a slot finish, the
    /// backlog waits (without timing out). Idempotent. Rejects with `InvalidConfig` for the
    /// Control lane.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn pause_lane(&self, env: &Env, lane: SessionLane) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move { session.pause_lane(lane.into()).await })
    }

    /// Resumes a paused lane: its free slots fill from the backlog at once. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn resume_lane(&self, env: &Env, lane: SessionLane) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move { session.resume_lane(lane.into()).await })
    }

    /// Cancels a queued or running task; its submitter gets `TaskCancelled`.
    ///
    /// Rejects with `TaskNotFound`, or how the task already ended (`TaskAlreadyCompleted`, ...).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn cancel(&self, env: &Env, task_id: String) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move { session.cancel(&task_id).await })
    }

    /// What is in the queue now.
    #[napi]
    pub fn queue_stats(&self, env: &Env) -> napi::Result<Promise<QueueStats>> {
        let session = self.inner.clone();
        promise(env, async move { Ok(session.queue_stats().await.into()) })
    }

    /// Counters and latency percentiles (milliseconds), or `null` unless `enableMetrics` is set.
    #[napi(ts_return_type = "Promise<QueueMetrics | null>")]
    pub fn queue_metrics(&self, env: &Env) -> napi::Result<Promise<Option<QueueMetrics>>> {
        let session = self.inner.clone();
        promise(env, async move {
            Ok(session.queue_metrics().await.map(Into::into))
        })
    }

    /// The dead-letter queue's content, oldest first (empty unless `enableDlq` is set).
    #[napi]
    pub fn dead_letters(&self, env: &Env) -> napi::Result<Promise<Vec<DeadLetter>>> {
        let session = self.inner.clone();
        promise(env, async move {
            Ok(session
                .dead_letters()
                .await
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    /// A page of the session's tasks in one state: pending (dispatch order), in flight (oldest
    /// first, with the worker holding each when it sent a "taken" notice) or finished (newest
    /// first; the session keeps `finishedHistory` of them). Continue with `cursor: page.next`.
    ///
    /// Rejects with `InvalidConfig` for an unknown state, a bad cursor or a limit outside
    /// 1..1000.
    #[napi]
    pub fn tasks(&self, env: &Env, query: TaskQuery) -> napi::Result<Promise<TaskPage>> {
        let session = self.inner.clone();
        promise(env, async move {
            let query = query.into_core()?;
            Ok(session.tasks(&query).await?.into())
        })
    }

    /// Removes and returns every dead letter.
    #[napi]
    pub fn drain_dead_letters(&self, env: &Env) -> napi::Result<Promise<Vec<DeadLetter>>> {
        let session = self.inner.clone();
        promise(env, async move {
            Ok(session
                .drain_dead_letters()
                .await
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    /// Runs the agent loop on `prompt`: the model named by `default_model` in agent.hcl, its
    /// tool calls through the lanes, until it answers. Rejects with `ModelFailed` (bad key,
    /// unknown model, retries exhausted) or `InvalidConfig` (no model configured).
    #[napi(ts_return_type = "Promise<AgentResponse>")]
    pub fn send(
        &self,
        env: &Env,
        prompt: String,
    ) -> napi::Result<Promise<crate::agent::AgentResponse>> {
        let session = self.inner.clone();
        promise(env, async move { Ok(session.send(&prompt).await?.into()) })
    }

    /// The agent loop as it happens: text deltas, tool calls started and finished, queue events.
    #[napi]
    pub fn stream(&self, prompt: String) -> napi::Result<crate::agent::JsAgentStream> {
        // `stream` spawns the loop: run it in the runtime's context.
        let stream =
            napi::bindgen_prelude::within_runtime_if_available(|| self.inner.stream(&prompt));
        Ok(crate::agent::JsAgentStream::new(stream))
    }

    /// The conversation so far: `{ role: 'user' | 'assistant' | 'tool', ... }` messages (as the
    /// core records them: `tool_calls`, `tool_call_id`, `is_error` keep their snake_case).
    #[napi(ts_return_type = "Array<Record<string, any>>")]
    pub fn history(&self) -> Vec<serde_json::Value> {
        self.inner
            .history()
            .into_iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default())
            .collect()
    }

    /// Subscribes to the queue's events (lifecycle, retries, dead letters, alerts), from now on.
    #[napi]
    pub fn events(&self) -> JsEventStream {
        JsEventStream::new(self.inner.subscribe_events())
    }

    /// Whether `close()` was called.
    #[napi]
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the session: queued and running tasks fail with `ShutDown`, waiting workers
    /// return. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self, env: &Env) -> napi::Result<Promise<()>> {
        let session = self.inner.clone();
        promise(env, async move {
            session.close().await;
            Ok(())
        })
    }
}
