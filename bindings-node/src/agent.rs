//! `Agent`: the configuration loaded from `agent.hcl`, and the sessions opened from it.

use a3s_code_core as core;
use napi::Env;
use napi_derive::napi;

use crate::error::{self, coded};
use crate::runtime::{Promise, spawned};
use crate::session::{JsAgentSession, SessionOptions};

/// An agent: its configuration, from which sessions are opened.
#[napi(js_name = "Agent")]
pub struct JsAgent {
    inner: core::Agent,
}

#[napi]
impl JsAgent {
    /// An agent with the default configuration (no `agent.hcl`).
    #[napi(constructor)]
    #[allow(clippy::new_without_default)] // a JS constructor, not a Rust API
    pub fn new() -> Self {
        Self {
            inner: core::Agent::from_config(core::AgentConfig::default()),
        }
    }

    /// Loads `agent.hcl` (or any file in its format). Rejects with `ConfigFile` naming the
    /// file and line for a missing file, a syntax error or an invalid setting.
    #[napi(ts_return_type = "Promise<Agent>")]
    pub fn create(env: &Env, path: String) -> napi::Result<Promise<JsAgent>> {
        spawned(env, async move {
            Ok(JsAgent {
                inner: core::Agent::new(path).await?,
            })
        })
    }

    /// Opens a session on `workspace` (every built-in tool is confined to it).
    ///
    /// Throws `InvalidConfig` for an invalid queue configuration, session id or `nats` setting,
    /// or when `workspace` is not a directory.
    #[napi(ts_return_type = "AgentSession")]
    pub fn session(
        &self,
        workspace: String,
        options: Option<SessionOptions>,
    ) -> error::Result<JsAgentSession> {
        let options = options
            .map(SessionOptions::into_core)
            .transpose()
            .map_err(coded)?;
        // A session with a broker starts its connection task: run it in the runtime's context.
        let session = napi::bindgen_prelude::within_runtime_if_available(|| {
            self.inner.session(workspace, options)
        })
        .map_err(coded)?;
        Ok(session.into())
    }
}

// ----- the agent loop: session.send / stream / history ---------------------------------------

/// Tokens of the model calls of one send.
#[napi(object)]
#[derive(Debug)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// A tool call the model asked for, and the result it was given.
#[napi(object, object_from_js = false)]
#[derive(Debug)]
pub struct ToolCallRecord {
    /// The provider's id of the call.
    pub id: String,
    pub name: String,
    /// The arguments (the model's text when they were not valid JSON); keys never renamed.
    #[napi(ts_type = "any")]
    pub args: serde_json::Value,
    /// The lane it ran in; absent when it was not run (malformed arguments, unknown tool).
    pub lane: Option<crate::queue::SessionLane>,
    pub task_id: Option<String>,
    #[napi(ts_type = "ExternalTaskResult")]
    pub result: serde_json::Value,
}

impl From<core::agent::run::ToolCallRecord> for ToolCallRecord {
    fn from(r: core::agent::run::ToolCallRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            args: r.args,
            lane: r.lane.map(Into::into),
            task_id: r.task_id,
            result: serde_json::to_value(r.result).unwrap_or_default(),
        }
    }
}

/// What `send` returns.
#[napi(object, object_from_js = false)]
#[derive(Debug)]
pub struct AgentResponse {
    /// The text of the model's last reply.
    pub text: String,
    /// Every tool call that was run, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: Usage,
    pub model_call_count: u32,
    /// `'completed'`, or `'max_tool_rounds'` when the model still wanted tools.
    #[napi(ts_type = "'completed' | 'max_tool_rounds'")]
    pub stop_reason: String,
}

impl From<core::agent::run::AgentResponse> for AgentResponse {
    fn from(r: core::agent::run::AgentResponse) -> Self {
        Self {
            text: r.text,
            tool_calls: r.tool_calls.into_iter().map(Into::into).collect(),
            usage: Usage {
                input_tokens: error::number(r.usage.input_tokens),
                output_tokens: error::number(r.usage.output_tokens),
            },
            model_call_count: r.model_call_count,
            stop_reason: match r.stop_reason {
                core::agent::run::StopReason::MaxToolRounds => "max_tool_rounds",
                _ => "completed",
            }
            .to_owned(),
        }
    }
}

/// Something that happened during `session.stream(prompt)`.
#[napi(
    discriminant = "type",
    discriminant_case = "snake_case",
    object_from_js = false
)]
#[derive(Debug)]
pub enum AgentEvent {
    /// A piece of the model's text.
    TextDelta { text: String },
    /// A tool call was submitted to its lane.
    ToolCallStarted {
        id: String,
        name: String,
        #[napi(ts_type = "any")]
        args: serde_json::Value,
        lane: Option<crate::queue::SessionLane>,
        task_id: Option<String>,
    },
    /// A tool call finished; its result goes to the model.
    ToolCallFinished { call: ToolCallRecord },
    /// A queue event of the session.
    Queue { event: crate::queue::QueueEvent },
}

impl AgentEvent {
    fn from_core(e: core::agent::run::AgentEvent) -> Option<Self> {
        use core::agent::run::AgentEvent as E;
        Some(match e {
            E::TextDelta { text } => AgentEvent::TextDelta { text },
            E::ToolCallStarted {
                id,
                name,
                args,
                lane,
                task_id,
            } => AgentEvent::ToolCallStarted {
                id,
                name,
                args,
                lane: lane.map(Into::into),
                task_id,
            },
            E::ToolCallFinished(record) => AgentEvent::ToolCallFinished {
                call: record.into(),
            },
            E::Queue(event) => AgentEvent::Queue {
                event: event.into(),
            },
            _ => return None,
        })
    }
}

/// `session.stream(prompt)`: `for await (const event of stream)`, then `await stream.finish()`.
#[napi(async_iterator, js_name = "AgentStream")]
pub struct JsAgentStream {
    inner: std::sync::Arc<tokio::sync::Mutex<Option<core::agent::run::AgentStream>>>,
}

impl JsAgentStream {
    pub(crate) fn new(stream: core::agent::run::AgentStream) -> Self {
        Self {
            inner: std::sync::Arc::new(tokio::sync::Mutex::new(Some(stream))),
        }
    }

    fn recv(&self) -> impl std::future::Future<Output = Option<AgentEvent>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let mut guard = inner.lock().await;
            let stream = guard.as_mut()?;
            loop {
                let event = stream.recv().await?;
                if let Some(e) = AgentEvent::from_core(event) {
                    return Some(e);
                }
            }
        }
    }
}

#[napi]
impl JsAgentStream {
    /// The next event; `null` when the loop ended.
    #[napi(js_name = "next", ts_return_type = "Promise<AgentEvent | null>")]
    pub fn next_event(&self, env: &Env) -> napi::Result<Promise<Option<AgentEvent>>> {
        let next = self.recv();
        crate::runtime::promise(env, async move { Ok(next.await) })
    }

    /// Waits for the loop to end: what `send` would have returned.
    #[napi(ts_return_type = "Promise<AgentResponse>")]
    pub fn finish(&self, env: &Env) -> napi::Result<Promise<AgentResponse>> {
        let inner = self.inner.clone();
        crate::runtime::promise(env, async move {
            let stream = inner.lock().await.take().ok_or(core::Error::ShutDown)?;
            Ok(stream.finish().await?.into())
        })
    }
}

#[napi]
impl napi::bindgen_prelude::AsyncGenerator for JsAgentStream {
    type Yield = AgentEvent;
    type Next = ();
    type Return = ();

    fn next(
        &mut self,
        _value: Option<Self::Next>,
    ) -> impl std::future::Future<Output = napi::Result<Option<Self::Yield>>> + Send + 'static {
        let next = self.recv();
        async move { Ok(next.await) }
    }
}
