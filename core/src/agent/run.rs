//! The agent loop behind [`AgentSession::send`] and [`AgentSession::stream`].
//!
//! One `send(prompt)`:
//!
//! 1. appends the prompt to the session's conversation and submits a model call to the
//!    **Generate lane** (command type [`GENERATE_COMMAND`], payload a [`GenerateRequest`]). On an
//!    Internal or Hybrid lane the session's own handler calls the provider named by
//!    `default_model`; on an External lane a worker gets the same payload and returns a
//!    [`GenerateResponse`] as the task's result;
//! 2. submits every tool call of the reply to its lane at once (Query for `read`, `grep`,
//!    `glob`, `ls`; Execute for `bash`, `write`, `edit`), so they run in parallel up to the lane
//!    limits, in this process or on workers;
//! 3. sends each task's result back to the model as a tool result (a failure too: malformed
//!    arguments, an unknown tool, a failed or timed-out task reach the model as an error it can
//!    react to), and goes on until the model answers without tool calls or `max_tool_rounds`
//!    (default 20) rounds of tool calls have run.
//!
//! Sends of one session run one after the other; the conversation is updated only when a send
//! succeeds, so a failed send can simply be retried.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::AgentConfig;
use super::llm::{
    GENERATE_COMMAND, GenerateRequest, GenerateResponse, Message, ModelClient, ModelEndpoint,
    ToolCall, Usage,
};
use super::tool_defs::builtin_tool_definitions;
use crate::agent::AgentSession;
use crate::error::{Error, Result};
use crate::queue::scheduler::TaskHandler;
use crate::queue::{QueueEvent, SessionLane};
use crate::task::{ExternalTask, ExternalTaskResult};

/// Rounds of tool calls per send when `max_tool_rounds` is not set.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 20;

/// What [`AgentSession::send`] returns.
///
/// # Examples
///
/// A Generate lane served by an in-process worker (no model provider needed): the worker answers
/// the first call with a tool call, the second with the final text.
///
/// ```
/// use std::time::Duration;
/// use a3s_code_core::{Agent, AgentConfig, ExternalTaskResult};
/// use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
///
/// # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("notes.txt"), "remember the milk\n").unwrap();
/// let session = Agent::from_config(AgentConfig::default()).session(dir.path(), None)?;
/// session.set_lane_handler(SessionLane::Generate,
///     LaneHandlerConfig { mode: TaskHandlerMode::External, timeout_ms: 30_000 }).await?;
///
/// let model = session.clone();
/// tokio::spawn(async move {
///     while let Ok(tasks) = model.claim_external_tasks(1, Duration::from_secs(5)).await {
///         for task in tasks {
///             let said_so_far = task.payload["messages"].as_array().unwrap().len();
///             let reply = if said_so_far == 1 {
///                 serde_json::json!({"tool_calls": [
///                     {"id": "c1", "name": "read", "arguments": "{\"path\": \"notes.txt\"}"}]})
///             } else {
///                 serde_json::json!({"content": "You wanted to remember the milk."})
///             };
///             model.complete_external_task(&task.task_id, ExternalTaskResult::ok(reply)).await.unwrap();
///         }
///     }
/// });
///
/// let response = session.send("What is in notes.txt?").await?;
/// assert_eq!(response.text, "You wanted to remember the milk.");
/// assert_eq!(response.tool_calls[0].name, "read");
/// assert_eq!(response.tool_calls[0].lane, Some(SessionLane::Query));
/// assert_eq!(response.tool_calls[0].result.result["content"], "remember the milk\n");
/// assert_eq!(session.history().len(), 4); // user, assistant (tool call), tool, assistant
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentResponse {
    /// The text of the model's last reply.
    pub text: String,
    /// Every tool call that was run, in the order the model asked for them.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Tokens of all the model calls of this send.
    pub usage: Usage,
    /// How many model calls were made.
    pub model_call_count: u32,
    /// Why the loop stopped.
    pub stop_reason: StopReason,
}

/// Why a send ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model answered without calling tools.
    #[default]
    Completed,
    /// The model still wanted tools after `max_tool_rounds` rounds; those calls were not run
    /// (the conversation records them as refused).
    MaxToolRounds,
}

/// One tool call of a send and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    /// The call's id (the provider's).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: the parsed object, or the model's text when it was not valid JSON.
    pub args: Value,
    /// The lane it ran in; `None` when it was not run (malformed arguments, unknown tool).
    pub lane: Option<SessionLane>,
    /// The id of its task; `None` when it was not run.
    pub task_id: Option<String>,
    /// The result the model was given: the worker's or tool's result, or a failure
    /// (`success: false`, `result: {"error_code": ...}`, `error`).
    pub result: ExternalTaskResult,
}

/// Something that happened during [`AgentSession::stream`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentEvent {
    /// A piece of the model's text, as generated (a Generate lane that does not stream gives
    /// a reply's whole text at once).
    TextDelta {
        /// The text.
        text: String,
    },
    /// A tool call was submitted to its lane (or refused before that: `lane` is then `None`).
    ToolCallStarted {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments (see [`ToolCallRecord::args`]).
        args: Value,
        /// Its lane.
        lane: Option<SessionLane>,
        /// Its task.
        task_id: Option<String>,
    },
    /// A tool call finished; its result goes to the model.
    ToolCallFinished(ToolCallRecord),
    /// A queue event of the session (model calls and tool calls being submitted, started,
    /// completed, retried, ...).
    Queue(QueueEvent),
}

type Events = mpsc::UnboundedSender<AgentEvent>;

/// The events of a running [`AgentSession::stream`] call, and its outcome.
///
/// Read events with [`recv`](Self::recv) (or as a `futures` `Stream`) until `None`, then take
/// the response with [`finish`](Self::finish). Dropping it stops the loop (tasks already
/// submitted keep running). Poll it from one task.
#[derive(Debug)]
pub struct AgentStream {
    rx: mpsc::UnboundedReceiver<AgentEvent>,
    task: Option<JoinHandle<Result<AgentResponse>>>,
}

impl AgentStream {
    /// The next event; `None` once the loop has ended.
    pub async fn recv(&mut self) -> Option<AgentEvent> {
        self.rx.recv().await
    }

    /// Waits for the end of the loop and returns its response (events not read are dropped).
    ///
    /// # Errors
    ///
    /// As [`AgentSession::send`].
    pub async fn finish(mut self) -> Result<AgentResponse> {
        let task = self.task.take().expect("finish consumes the stream");
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::ShutDown),
        }
    }
}

impl futures_util::Stream for AgentStream {
    type Item = AgentEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AgentEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Where the Generate handler sends the text of one streamed request.
#[derive(Clone)]
struct DeltaSink {
    events: Events,
    /// Set when some text was streamed, so the loop need not send the whole text again.
    streamed: Arc<AtomicBool>,
}

/// The conversation state of a session: its history, and what the Generate handler shares
/// with the loop.
#[derive(Clone)]
pub(crate) struct Conversation {
    inner: Arc<Shared>,
}

struct Shared {
    agent: Arc<AgentConfig>,
    /// The committed conversation.
    history: parking_lot::Mutex<Vec<Message>>,
    /// Held for a whole send: sends of one session run one after the other.
    turn: tokio::sync::Mutex<()>,
    /// Streamed requests in flight, by request id.
    sinks: parking_lot::Mutex<HashMap<String, DeltaSink>>,
}

impl Conversation {
    pub(crate) fn new(agent: Arc<AgentConfig>) -> Self {
        Self {
            inner: Arc::new(Shared {
                agent,
                history: parking_lot::Mutex::new(Vec::new()),
                turn: tokio::sync::Mutex::new(()),
                sinks: parking_lot::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The handler of [`GENERATE_COMMAND`] tasks on Internal and Hybrid Generate lanes: calls
    /// the provider with the session's configuration.
    pub(crate) fn generate_handler(&self) -> Arc<dyn TaskHandler> {
        let shared = Arc::clone(&self.inner);
        Arc::new(move |task: ExternalTask| {
            let shared = Arc::clone(&shared);
            async move { shared.generate(task).await }
        })
    }

    pub(crate) fn history(&self) -> Vec<Message> {
        self.inner.history.lock().clone()
    }

    /// [`AgentSession::send`].
    pub(crate) async fn send(
        &self,
        session: &AgentSession,
        prompt: String,
    ) -> Result<AgentResponse> {
        self.run(session, prompt, None).await
    }

    /// [`AgentSession::stream`].
    pub(crate) fn stream(&self, session: &AgentSession, prompt: String) -> AgentStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conversation, session) = (self.clone(), session.clone());
        let task = tokio::spawn(async move {
            let mut queue = session.subscribe_events();
            let mut queue_open = true;
            let run = conversation.run(&session, prompt, Some(&tx));
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    event = queue.recv(), if queue_open => match event {
                        Some(event) => { let _ = tx.send(AgentEvent::Queue(event)); }
                        None => queue_open = false,
                    },
                    result = &mut run => {
                        while let Some(event) = queue.try_recv() {
                            let _ = tx.send(AgentEvent::Queue(event));
                        }
                        return result;
                    }
                }
            }
        });
        AgentStream {
            rx,
            task: Some(task),
        }
    }

    async fn run(
        &self,
        session: &AgentSession,
        prompt: String,
        events: Option<&Events>,
    ) -> Result<AgentResponse> {
        let _turn = self.inner.turn.lock().await;
        let config = &self.inner.agent;
        let max_rounds = config.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS);
        let mut messages = self.history();
        messages.push(Message::User { content: prompt });
        let mut request = GenerateRequest {
            model: config.default_model.clone(),
            system: Some(system_prompt(config, session)),
            messages: Vec::new(),
            tools: builtin_tool_definitions(),
            stream: events.is_some(),
            request_id: None,
        };
        let sink = events.map(|events| {
            let id = uuid::Uuid::new_v4().to_string();
            request.request_id = Some(id.clone());
            let sink = DeltaSink {
                events: events.clone(),
                streamed: Arc::new(AtomicBool::new(false)),
            };
            self.inner.sinks.lock().insert(id.clone(), sink.clone());
            SinkGuard {
                shared: &self.inner,
                id,
                sink,
            }
        });
        let mut response = AgentResponse::default();
        let mut rounds = 0;
        loop {
            request.messages.clone_from(&messages);
            let reply = self.call_model(session, &request, sink.as_ref()).await?;
            response.model_call_count += 1;
            response.usage += reply.usage;
            let mut calls = reply.tool_calls;
            for (i, call) in calls.iter_mut().enumerate() {
                if call.id.is_empty() {
                    call.id = format!("call_{}_{i}", response.model_call_count);
                }
            }
            messages.push(Message::Assistant {
                content: reply.content.clone(),
                tool_calls: calls.clone(),
            });
            response.text = reply.content;
            if calls.is_empty() {
                break;
            }
            if rounds >= max_rounds {
                // Every tool call needs a result, or the next request would be refused.
                messages.extend(calls.iter().map(|c| {
                    Message::Tool {
                        tool_call_id: c.id.clone(),
                        name: c.name.clone(),
                        content: json!({"error": format!(
                            "not run: the limit of {max_rounds} tool rounds per request was reached"
                        )})
                        .to_string(),
                        is_error: true,
                    }
                }));
                response.stop_reason = StopReason::MaxToolRounds;
                break;
            }
            rounds += 1;
            for record in run_tool_calls(session, &calls, events).await? {
                messages.push(Message::Tool {
                    tool_call_id: record.id.clone(),
                    name: record.name.clone(),
                    content: tool_content(&record.result),
                    is_error: !record.result.success,
                });
                response.tool_calls.push(record);
            }
        }
        *self.inner.history.lock() = messages;
        Ok(response)
    }

    /// One model call through the Generate lane.
    async fn call_model(
        &self,
        session: &AgentSession,
        request: &GenerateRequest,
        sink: Option<&SinkGuard<'_>>,
    ) -> Result<GenerateResponse> {
        let payload = serde_json::to_value(request).expect("a GenerateRequest always serializes");
        let result = session
            .submit(SessionLane::Generate, GENERATE_COMMAND, payload)
            .await?
            .await?;
        if !result.success {
            let provider = request
                .model
                .as_deref()
                .and_then(|m| m.split_once('/'))
                .map_or("generate", |(p, _)| p);
            return Err(error_from_result(&result, provider));
        }
        let reply: GenerateResponse = serde_json::from_value(result.result).map_err(|e| {
            Error::invalid_payload(format!(
                "the result of a {GENERATE_COMMAND} task is not a model reply: {e}"
            ))
        })?;
        if let Some(guard) = sink
            && !guard.sink.streamed.swap(false, Ordering::Relaxed)
            && !reply.content.is_empty()
        {
            let _ = guard.sink.events.send(AgentEvent::TextDelta {
                text: reply.content.clone(),
            });
        }
        Ok(reply)
    }
}

/// Unregisters a streamed request's sink when the send ends, however it ends.
struct SinkGuard<'a> {
    shared: &'a Shared,
    id: String,
    sink: DeltaSink,
}

impl Drop for SinkGuard<'_> {
    fn drop(&mut self) {
        self.shared.sinks.lock().remove(&self.id);
    }
}

impl Shared {
    /// Runs one Generate task: resolves the model and calls its provider.
    async fn generate(&self, task: ExternalTask) -> ExternalTaskResult {
        let deadline = task.deadline();
        let request: GenerateRequest = match serde_json::from_value(task.payload) {
            Ok(r) => r,
            Err(e) => {
                return error_result(&Error::invalid_payload(format!("{GENERATE_COMMAND}: {e}")));
            }
        };
        let endpoint = match ModelEndpoint::resolve(&self.agent, request.model.as_deref()) {
            Ok(e) => e,
            Err(e) => return error_result(&e),
        };
        let client = match ModelClient::new() {
            Ok(c) => c,
            Err(e) => return error_result(&e),
        };
        let sink = request
            .request_id
            .as_ref()
            .and_then(|id| self.sinks.lock().get(id).cloned());
        let mut on_text = |text: &str| {
            if let Some(sink) = &sink {
                sink.streamed.store(true, Ordering::Relaxed);
                let _ = sink.events.send(AgentEvent::TextDelta {
                    text: text.to_owned(),
                });
            }
        };
        match client
            .generate(&endpoint, &request, Some(deadline), &mut on_text)
            .await
        {
            Ok(reply) => ExternalTaskResult::ok(
                serde_json::to_value(reply).expect("a GenerateResponse always serializes"),
            ),
            Err(e) => error_result(&e),
        }
    }
}

/// The system prompt: `system_prompt = "..."` from `agent.hcl`, else a short default.
fn system_prompt(config: &AgentConfig, session: &AgentSession) -> String {
    if let Some(prompt) = config.extra.get("system_prompt").and_then(Value::as_str) {
        return prompt.to_owned();
    }
    format!(
        "You are a coding agent working in the workspace {}. Use the tools to search, read and \
         change its files and to run commands; paths are relative to the workspace root. Tool \
         calls issued together in one reply run in parallel, so issue independent calls together. \
         When you are done, answer concisely.",
        session.workspace().root().display()
    )
}

/// Submits every call of a reply, then waits for all of them.
async fn run_tool_calls(
    session: &AgentSession,
    calls: &[ToolCall],
    events: Option<&Events>,
) -> Result<Vec<ToolCallRecord>> {
    let emit = |event: AgentEvent| {
        if let Some(events) = events {
            let _ = events.send(event);
        }
    };
    let mut started = Vec::with_capacity(calls.len());
    for call in calls {
        let (args, lane) = prepare(call);
        let mut record = ToolCallRecord {
            id: call.id.clone(),
            name: call.name.clone(),
            args,
            lane: None,
            task_id: None,
            result: ExternalTaskResult::ok(Value::Null),
        };
        let handle = match lane {
            Ok(lane) => match session.submit(lane, &call.name, record.args.clone()).await {
                Ok(handle) => {
                    record.lane = Some(lane);
                    record.task_id = Some(handle.task_id().to_owned());
                    Some(handle)
                }
                Err(Error::ShutDown) => return Err(Error::ShutDown),
                Err(e) => {
                    record.result = failure(&e);
                    None
                }
            },
            Err(e) => {
                record.result = failure(&e);
                None
            }
        };
        emit(AgentEvent::ToolCallStarted {
            id: record.id.clone(),
            name: record.name.clone(),
            args: record.args.clone(),
            lane: record.lane,
            task_id: record.task_id.clone(),
        });
        started.push((record, handle));
    }
    let finished = futures_util::future::join_all(started.into_iter().map(
        |(mut record, handle)| async move {
            if let Some(handle) = handle {
                record.result = match handle.await {
                    Ok(result) => result,
                    Err(Error::ShutDown) => return Err(Error::ShutDown),
                    Err(e) => failure(&e),
                };
            }
            emit(AgentEvent::ToolCallFinished(record.clone()));
            Ok(record)
        },
    ))
    .await;
    finished.into_iter().collect()
}

/// A call's arguments (parsed, or the raw text when invalid) and its lane, or why it cannot run.
fn prepare(call: &ToolCall) -> (Value, Result<SessionLane>) {
    let text = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    let args = match serde_json::from_str::<Value>(text) {
        Ok(args) => args,
        Err(e) => {
            let err = Error::invalid_payload(format!(
                "the arguments of this {:?} call are not valid JSON ({e}); call it again with a JSON object",
                call.name
            ));
            return (Value::String(call.arguments.clone()), Err(err));
        }
    };
    if !args.is_object() {
        let err = Error::invalid_payload(format!(
            "the arguments of this {:?} call must be a JSON object, not {args}",
            call.name
        ));
        return (args, Err(err));
    }
    let lane = SessionLane::for_tool(&call.name).ok_or_else(|| Error::UnknownTool {
        name: call.name.clone(),
    });
    (args, lane)
}

/// A call that failed before or instead of producing a result, in `execute_builtin`'s shape.
fn failure(err: &Error) -> ExternalTaskResult {
    ExternalTaskResult {
        success: false,
        result: json!({"error_code": err.code()}),
        error: Some(err.to_string()),
    }
}

/// A tool result as the text the model reads: the result's JSON, with `error` first on failure.
fn tool_content(result: &ExternalTaskResult) -> String {
    if result.success {
        return match &result.result {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
    let mut out = Map::new();
    out.insert(
        "error".into(),
        result.error.as_deref().unwrap_or("the tool failed").into(),
    );
    match &result.result {
        Value::Object(fields) => {
            for (k, v) in fields {
                out.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Value::Null => {}
        other => {
            out.insert("result".into(), other.clone());
        }
    }
    Value::Object(out).to_string()
}

/// A failed Generate task's result, carrying what [`error_from_result`] needs to rebuild the
/// typed error on the other side of the lane.
fn error_result(err: &Error) -> ExternalTaskResult {
    let mut result = json!({"error_code": err.code()});
    match err {
        Error::ModelFailed {
            provider,
            status,
            message,
        } => {
            result["provider"] = provider.as_str().into();
            result["status"] = (*status).into();
            result["message"] = message.as_str().into();
        }
        Error::InvalidConfig { reason } | Error::InvalidPayload { reason } => {
            result["reason"] = reason.as_str().into();
        }
        _ => {}
    }
    ExternalTaskResult {
        success: false,
        result,
        error: Some(err.to_string()),
    }
}

/// The typed error of a failed Generate task (from this process's handler or a worker).
fn error_from_result(result: &ExternalTaskResult, provider: &str) -> Error {
    let field = |k: &str| result.result[k].as_str().map(str::to_owned);
    let error = result
        .error
        .clone()
        .unwrap_or_else(|| format!("the {GENERATE_COMMAND} task failed"));
    match (result.result["error_code"].as_str(), field("reason")) {
        (Some("InvalidConfig"), Some(reason)) => Error::InvalidConfig { reason },
        (Some("InvalidPayload"), Some(reason)) => Error::InvalidPayload { reason },
        (Some("ModelFailed"), _) => Error::ModelFailed {
            provider: field("provider").unwrap_or_else(|| provider.to_owned()),
            status: result.result["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok()),
            message: field("message").unwrap_or(error),
        },
        _ => Error::ModelFailed {
            provider: provider.to_owned(),
            status: None,
            message: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn prepare_checks_json_object_and_tool() {
        let (args, lane) = prepare(&call("read", "{\"path\": \"a\"}"));
        assert_eq!(
            (args, lane.unwrap()),
            (json!({"path": "a"}), SessionLane::Query)
        );
        let (args, lane) = prepare(&call("ls", " "));
        assert_eq!((args, lane.unwrap()), (json!({}), SessionLane::Query));
        let (args, lane) = prepare(&call("bash", "{\"command\": "));
        assert_eq!(args, json!("{\"command\": "));
        let err = lane.unwrap_err();
        assert_eq!(err.code(), "InvalidPayload");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let (_, lane) = prepare(&call("read", "[1]"));
        assert!(lane.unwrap_err().to_string().contains("JSON object"));
        let (_, lane) = prepare(&call("teleport", "{}"));
        assert_eq!(lane.unwrap_err().code(), "UnknownTool");
    }

    #[test]
    fn tool_content_keeps_the_error_first() {
        let ok = ExternalTaskResult::ok(json!({"content": "x"}));
        assert_eq!(tool_content(&ok), r#"{"content":"x"}"#);
        let failed = ExternalTaskResult {
            success: false,
            result: json!({"stdout": "", "exit_code": 1, "error": "shadowed"}),
            error: Some("exit code 1".into()),
        };
        assert_eq!(
            tool_content(&failed),
            r#"{"error":"exit code 1","stdout":"","exit_code":1}"#
        );
        let bare = ExternalTaskResult {
            success: false,
            result: Value::Null,
            error: None,
        };
        assert_eq!(tool_content(&bare), r#"{"error":"the tool failed"}"#);
    }

    #[test]
    fn errors_survive_the_lane() {
        for err in [
            Error::ModelFailed {
                provider: "openai".into(),
                status: Some(401),
                message: "Unauthorized".into(),
            },
            Error::invalid_config("no model"),
            Error::invalid_payload("bad"),
        ] {
            let back = error_from_result(&error_result(&err), "x");
            assert_eq!(back.to_string(), err.to_string());
            assert_eq!(back.code(), err.code());
        }
        // What an External worker may report.
        let back = error_from_result(&ExternalTaskResult::err("GPU on fire"), "local");
        assert_eq!(back.to_string(), "local: GPU on fire");
    }
}
