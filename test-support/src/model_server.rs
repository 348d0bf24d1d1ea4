//! A scripted model server: a local HTTP server on `127.0.0.1:0` that speaks the OpenAI Chat
//! Completions (`POST /v1/chat/completions`) and the Anthropic Messages (`POST /v1/messages`)
//! wire formats, streaming (SSE, when the request says `"stream": true`) and not.
//!
//! It answers each model request with the next [`Reply`] of its script, whatever the path, and
//! records every request it receives so tests can assert on what the client sent. Every reply
//! reports 10 input and 5 output tokens.
//!
//! ```text
//! let server = ModelServer::start([
//!     Reply::tool_call("read", json!({"path": "a.txt"})),
//!     Reply::text("It says hello."),
//! ]).await;
//! // providers { name = "openai", base_url = server.openai_base_url() } ...
//! assert_eq!(server.requests().len(), 2);
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Input tokens reported by every reply.
pub const INPUT_TOKENS: u64 = 10;
/// Output tokens reported by every reply.
pub const OUTPUT_TOKENS: u64 = 5;

/// One tool call of a scripted reply.
#[derive(Debug, Clone)]
pub struct ScriptedCall {
    /// The call id.
    pub id: String,
    /// The tool name.
    pub name: String,
    /// The arguments as sent: JSON text, which may be deliberately invalid.
    pub arguments: String,
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An assistant message: text, tool calls, or both.
    Message {
        /// The text.
        text: String,
        /// The tool calls.
        calls: Vec<ScriptedCall>,
    },
    /// A raw response: an HTTP error, or a body sent as is.
    Status {
        /// The status code.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
}

impl Reply {
    /// A final answer.
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Message {
            text: text.into(),
            calls: Vec::new(),
        }
    }

    /// One tool call with these arguments.
    pub fn tool_call(name: &str, args: Value) -> Self {
        Self::tool_calls([(name, args)])
    }

    /// Several tool calls in one reply (ids `call_1`, `call_2`, ...).
    pub fn tool_calls<'a>(calls: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::raw_tool_calls(calls.into_iter().map(|(n, a)| (n, a.to_string())))
    }

    /// Tool calls whose arguments are given as text (so they can be invalid JSON).
    pub fn raw_tool_calls<'a>(calls: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Reply::Message {
            text: String::new(),
            calls: calls
                .into_iter()
                .enumerate()
                .map(|(i, (name, arguments))| ScriptedCall {
                    id: format!("call_{}", i + 1),
                    name: name.to_owned(),
                    arguments,
                })
                .collect(),
        }
    }

    /// Adds text before the tool calls of a message reply.
    pub fn with_text(mut self, with: impl Into<String>) -> Self {
        if let Reply::Message { text, .. } = &mut self {
            *text = with.into();
        }
        self
    }

    /// An HTTP error with a vendor-shaped JSON body `{"error": {"message": ...}}`.
    pub fn status(status: u16, message: &str) -> Self {
        Reply::Status {
            status,
            headers: Vec::new(),
            body: json!({"type": "error", "error": {"type": "error", "message": message}})
                .to_string(),
        }
    }

    /// A 200 answer with this JSON body, sent as is even to a streaming request (a server that
    /// ignores `"stream": true`).
    pub fn json(body: Value) -> Self {
        Reply::Status {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// Adds a response header to a status reply.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Status { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The path (`/v1/chat/completions`, `/v1/messages`).
    pub path: String,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request asked for a streamed reply.
    pub fn is_stream(&self) -> bool {
        self.body["stream"] == true
    }

    /// The tool results the request carries, in order, in either wire format:
    /// `(tool_call_id, content, is_error)` (`is_error` is always false for OpenAI, which has no
    /// such flag).
    pub fn tool_results(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for m in self.body["messages"].as_array().into_iter().flatten() {
            if m["role"] == "tool" {
                out.push((
                    m["tool_call_id"].as_str().unwrap_or_default().to_owned(),
                    m["content"].as_str().unwrap_or_default().to_owned(),
                    false,
                ));
            }
            for block in m["content"].as_array().into_iter().flatten() {
                if block["type"] == "tool_result" {
                    out.push((
                        block["tool_use_id"].as_str().unwrap_or_default().to_owned(),
                        block["content"].as_str().unwrap_or_default().to_owned(),
                        block["is_error"] == true,
                    ));
                }
            }
        }
        out
    }

    /// The names of the tools advertised in the request.
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer("/function/name").or_else(|| t.get("name")))
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    }
}

#[derive(Default)]
struct ServerState {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    api_key: Option<String>,
}

/// The running server; stopped when dropped.
pub struct ModelServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModelServer {
    /// Starts a server that accepts any API key and answers with `script`, in order.
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> Self {
        Self::spawn(None, script).await
    }

    /// Starts a server that answers 401 unless the request carries `api_key`
    /// (`authorization: Bearer ...` or `x-api-key`).
    pub async fn with_api_key(api_key: &str, script: impl IntoIterator<Item = Reply>) -> Self {
        Self::spawn(Some(api_key.to_owned()), script).await
    }

    async fn spawn(api_key: Option<String>, script: impl IntoIterator<Item = Reply>) -> Self {
        let state = Arc::new(ServerState {
            script: Mutex::new(script.into_iter().collect()),
            requests: Mutex::new(Vec::new()),
            api_key,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/v1`: the `base_url` of an OpenAI provider.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`: the `base_url` of an Anthropic provider.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends replies to the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().extend(replies);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    /// Replies not used yet.
    pub fn remaining(&self) -> usize {
        self.state.script.lock().len()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    OpenAi,
    Anthropic,
}

async fn openai(
    State(state): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    answer(&state, Wire::OpenAi, uri, &headers, &body)
}

async fn anthropic(
    State(state): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    answer(&state, Wire::Anthropic, uri, &headers, &body)
}

fn answer(state: &ServerState, wire: Wire, uri: Uri, headers: &HeaderMap, body: &str) -> Response {
    let request = RecordedRequest {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    };
    state.requests.lock().push(request.clone());
    if let Some(key) = &state.api_key {
        let given = match wire {
            Wire::OpenAi => request
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer ")),
            Wire::Anthropic => request.header("x-api-key"),
        };
        if given != Some(key.as_str()) {
            let message = match wire {
                Wire::OpenAi => "Incorrect API key provided.",
                Wire::Anthropic => "invalid x-api-key",
            };
            return json_response(
                401,
                &[],
                json!({"type": "error", "error": {"type": "authentication_error", "message": message}}),
            );
        }
    }
    let Some(reply) = state.script.lock().pop_front() else {
        return json_response(
            418,
            &[],
            json!({"error": {"message": "the model server's script is exhausted"}}),
        );
    };
    let (text, calls) = match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(status);
            for (n, v) in &headers {
                response = response.header(n, v);
            }
            return response
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("valid response");
        }
        Reply::Message { text, calls } => (text, calls),
    };
    let model = request.body["model"]
        .as_str()
        .unwrap_or("scripted")
        .to_owned();
    match (wire, request.is_stream()) {
        (Wire::OpenAi, false) => json_response(200, &[], openai_message(&model, &text, &calls)),
        (Wire::Anthropic, false) => {
            json_response(200, &[], anthropic_message(&model, &text, &calls))
        }
        (Wire::OpenAi, true) => {
            let usage = request.body.pointer("/stream_options/include_usage") == Some(&json!(true));
            sse_response(openai_events(&model, &text, &calls, usage))
        }
        (Wire::Anthropic, true) => sse_response(anthropic_events(&model, &text, &calls)),
    }
}

fn json_response(status: u16, headers: &[(&str, &str)], body: Value) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("content-type", "application/json");
    for (n, v) in headers {
        response = response.header(*n, *v);
    }
    response
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

/// An SSE body sent frame by frame, each event split in two frames to exercise reassembly.
fn sse_response(events: Vec<String>) -> Response {
    let frames: Vec<Result<String, Infallible>> = events
        .into_iter()
        .flat_map(|event| {
            let mut mid = event.len() / 2;
            while !event.is_char_boundary(mid) {
                mid += 1;
            }
            let (a, b) = event.split_at(mid);
            [Ok(a.to_owned()), Ok(b.to_owned())]
        })
        .collect();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(futures_util::stream::iter(frames)))
        .expect("valid response")
}

/// Text cut into pieces of at most 4 characters, the way a model streams it.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect()).collect()
}

/// Arguments cut in two, the way a model streams them.
fn halves(arguments: &str) -> [String; 2] {
    let mut mid = arguments.len() / 2;
    while !arguments.is_char_boundary(mid) {
        mid += 1;
    }
    let (a, b) = arguments.split_at(mid);
    [a.to_owned(), b.to_owned()]
}

fn openai_message(model: &str, text: &str, calls: &[ScriptedCall]) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" },
        }],
        "usage": {
            "prompt_tokens": INPUT_TOKENS,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        },
    })
}

fn openai_events(model: &str, text: &str, calls: &[ScriptedCall], usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({
            "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in pieces(text) {
        out.push(chunk(json!({"content": piece}), Value::Null));
    }
    for (i, c) in calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}),
            Value::Null,
        ));
        for half in halves(&c.arguments) {
            out.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": half}}]}),
                Value::Null,
            ));
        }
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    out.push(chunk(json!({}), json!(finish)));
    if usage {
        let c = json!({
            "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [],
            "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS},
        });
        out.push(format!("data: {c}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_owned());
    out
}

/// A `tool_use` block's `input`: the arguments when they are JSON, else the text as a string.
fn anthropic_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

fn anthropic_message(model: &str, text: &str, calls: &[ScriptedCall]) -> Value {
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for c in calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": anthropic_input(&c.arguments)}));
    }
    json!({
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
        "stop_sequence": null,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    })
}

fn anthropic_events(model: &str, text: &str, calls: &[ScriptedCall]) -> Vec<String> {
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap_or("message")
        )
    };
    let mut out = vec![event(json!({
        "type": "message_start",
        "message": {"id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}},
    }))];
    let mut index = 0;
    if !text.is_empty() {
        out.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        out.push(event(json!({"type": "ping"})));
        for piece in pieces(text) {
            out.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
        }
        out.push(event(json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    for c in calls {
        out.push(event(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}})));
        for half in halves(&c.arguments) {
            out.push(event(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": half}})));
        }
        out.push(event(json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    out.push(event(json!({
        "type": "message_delta",
        "delta": {"stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" }, "stop_sequence": null},
        "usage": {"output_tokens": OUTPUT_TOKENS},
    })));
    out.push(event(json!({"type": "message_stop"})));
    out
}
