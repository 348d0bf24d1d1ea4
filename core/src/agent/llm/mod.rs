//! Model providers: the provider-neutral request and reply of one model call, and the HTTP
//! clients of the two wire formats.
//!
//! - **OpenAI Chat Completions** (`POST {base_url}/chat/completions`, default base
//!   `https://api.openai.com/v1`): `tools` / `tool_calls`, SSE streaming. Any provider except
//!   `anthropic` speaks it, so OpenAI-compatible servers (vLLM, Ollama, OpenRouter, ...) work with
//!   a `base_url`.
//! - **Anthropic Messages** (`POST {base_url}/v1/messages`, default base
//!   `https://api.anthropic.com`): `tool_use` / `tool_result`, SSE streaming. Used for the provider
//!   named `anthropic`.
//!
//! A provider block may say which one it speaks with `api = "openai"` or `api = "anthropic"`, and a
//! model block may set `max_tokens` (sent to Anthropic always, default 4096; to OpenAI only when set):
//!
//! ```hcl
//! default_model = "claude/claude-sonnet-4-5"
//! providers {
//!   name     = "claude"
//!   api      = "anthropic"
//!   api_key  = env("ANTHROPIC_API_KEY")
//!   models {
//!     id         = "claude-sonnet-4-5"
//!     max_tokens = 8192
//!   }
//! }
//! ```
//!
//! [`GenerateRequest`] and [`GenerateResponse`] are also the payload and the result of a task on
//! the Generate lane (command type [`GENERATE_COMMAND`]), so an External Generate worker reads the
//! same JSON the built-in handler does.
//!
//! Requests time out at the task's deadline; 408, 409, 429 and 5xx answers (Anthropic's 529
//! included) and connection failures are retried up to 4 times with exponential backoff,
//! honouring `retry-after` and `retry-after-ms`, while the deadline allows; other answers become
//! [`Error::ModelFailed`] at once.

mod anthropic;
mod openai;
mod sse;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::agent::AgentConfig;
use crate::error::{Error, Result};

/// The command type of a model call on the Generate lane.
pub const GENERATE_COMMAND: &str = "generate";

/// One message of a conversation, in a provider-neutral shape (the system prompt travels apart,
/// in [`GenerateRequest::system`]).
///
/// Serialized with a `role` tag: `{"role": "user", "content": "..."}`,
/// `{"role": "assistant", "content": "...", "tool_calls": [...]}`,
/// `{"role": "tool", "tool_call_id": "...", "name": "read", "content": "...", "is_error": true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// What the user said.
    User {
        /// The text.
        content: String,
    },
    /// What the model answered: text, tool calls, or both.
    Assistant {
        /// The text (may be empty when the model only calls tools).
        #[serde(default)]
        content: String,
        /// The tools the model asked to run.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, sent back to the model.
    Tool {
        /// The [`ToolCall::id`] it answers.
        tool_call_id: String,
        /// The tool's name.
        #[serde(default)]
        name: String,
        /// The result as text (JSON for the built-in tools).
        content: String,
        /// Whether the call failed.
        #[serde(default, skip_serializing_if = "is_false")]
        is_error: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call (the loop makes one up when a reply has none).
    #[serde(default)]
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them: JSON text, possibly invalid. On deserialization a
    /// JSON object is accepted too (and kept as its text).
    #[serde(default, deserialize_with = "arguments_text")]
    pub arguments: String,
}

fn arguments_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A tool advertised to the model: its name, what it does and a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the argument object.
    pub parameters: Value,
}

/// Token counts of one or more model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (Anthropic: input plus cache reads and writes).
    #[serde(default)]
    pub input_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub output_tokens: u64,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// One model call: the payload of a Generate lane task.
///
/// # Examples
///
/// ```
/// use a3s_code_core::agent::llm::{GenerateRequest, Message};
/// let payload = serde_json::json!({
///     "model": "openai/gpt-4o",
///     "messages": [{"role": "user", "content": "hi"}],
/// });
/// let req: GenerateRequest = serde_json::from_value(payload).unwrap();
/// assert_eq!(req.messages, [Message::User { content: "hi".into() }]);
/// assert!(req.tools.is_empty() && !req.stream);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// `"provider/model"`; `None` takes the agent's `default_model`.
    #[serde(default)]
    pub model: Option<String>,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    /// Whether text should be streamed as it is generated (a worker may ignore it).
    #[serde(default)]
    pub stream: bool,
    /// Correlates streamed text with the session's `stream()` call; workers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What the model answered: the result of a Generate lane task.
///
/// Only `content` is required from an External Generate worker: `{"content": "..."}` is a
/// complete final answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// The text of the reply.
    #[serde(default)]
    pub content: String,
    /// The tools the model asked to run; empty for a final answer.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Token counts of this call.
    #[serde(default)]
    pub usage: Usage,
    /// The provider's reason for stopping (`"stop"`, `"tool_calls"`, `"end_turn"`, ...).
    #[serde(default)]
    pub stop_reason: Option<String>,
}

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions (and compatible servers).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// Default `max_tokens` sent to Anthropic, which requires one.
const ANTHROPIC_DEFAULT_MAX_TOKENS: u64 = 4096;

/// A model and where to reach it, resolved from `agent.hcl`.
///
/// `Debug` never shows the API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelEndpoint {
    /// The provider's name (`"openai"`).
    pub provider: String,
    /// Its wire format.
    pub api: Api,
    /// The base URL, without a trailing `/`.
    pub base_url: String,
    /// The API key, if any.
    pub api_key: Option<String>,
    /// The model id sent to the provider (`"gpt-4o"`).
    pub model: String,
    /// `max_tokens` of the model block, if set.
    pub max_tokens: Option<u64>,
}

impl fmt::Debug for ModelEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelEndpoint")
            .field("provider", &self.provider)
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl ModelEndpoint {
    /// Resolves `"provider/model"` (or, for `None`, the config's `default_model`) against the
    /// config's `providers { }` blocks. The model id is everything after the first `/`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when no model is named, the reference has no `/`, the provider is
    /// not configured, the provider lists models and this is not one of them, a provider other
    /// than `openai` and `anthropic` has no `base_url`, or a provider using its vendor's endpoint
    /// has no API key (the message names the environment variable `agent.hcl` reads it from,
    /// when it can).
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::agent::AgentConfig;
    /// use a3s_code_core::agent::llm::{Api, ModelEndpoint};
    /// let cfg = AgentConfig::parse(r#"
    /// default_model = "local/qwen/qwen3-8b"
    /// providers {
    ///   name     = "local"
    ///   base_url = "http://127.0.0.1:8000/v1/"
    /// }
    /// "#, "agent.hcl")?;
    /// let ep = ModelEndpoint::resolve(&cfg, None)?;
    /// assert_eq!((ep.api, ep.model.as_str()), (Api::OpenAi, "qwen/qwen3-8b"));
    /// assert_eq!(ep.base_url, "http://127.0.0.1:8000/v1");
    ///
    /// let err = ModelEndpoint::resolve(&cfg, Some("openai/gpt-4o")).unwrap_err();
    /// assert_eq!(err.code(), "InvalidConfig");
    /// # Ok::<(), a3s_code_core::Error>(())
    /// ```
    pub fn resolve(config: &AgentConfig, model_ref: Option<&str>) -> Result<Self> {
        let model_ref = model_ref.or(config.default_model.as_deref()).ok_or_else(|| {
            Error::invalid_config(
                "no model: set default_model = \"provider/model\" in agent.hcl (e.g. \"openai/gpt-4o\")",
            )
        })?;
        let Some((provider_name, model_id)) = model_ref
            .split_once('/')
            .filter(|(p, m)| !p.is_empty() && !m.is_empty())
        else {
            return Err(Error::invalid_config(format!(
                "model {model_ref:?} must be written \"provider/model\" (e.g. \"openai/gpt-4o\")"
            )));
        };
        let provider = config.provider(provider_name).ok_or_else(|| {
            let known: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
            Error::invalid_config(format!(
                "model {model_ref:?} names provider {provider_name:?}, which has no providers {{ }} block in agent.hcl (configured: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ))
        })?;
        let model = provider.models.iter().find(|m| m.id == model_id);
        if model.is_none() && !provider.models.is_empty() {
            let ids: Vec<&str> = provider.models.iter().map(|m| m.id.as_str()).collect();
            return Err(Error::invalid_config(format!(
                "provider {provider_name:?} has no model {model_id:?} (its models: {})",
                ids.join(", ")
            )));
        }
        let api = match provider.extra.get("api").and_then(Value::as_str) {
            Some("anthropic") => Api::Anthropic,
            Some("openai") => Api::OpenAi,
            Some(other) => {
                return Err(Error::invalid_config(format!(
                    "provider {provider_name:?}: unknown api {other:?} (expected \"openai\" or \"anthropic\")"
                )));
            }
            None if provider_name == "anthropic" => Api::Anthropic,
            None => Api::OpenAi,
        };
        let base_url = match (&provider.base_url, provider_name) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, "openai") => "https://api.openai.com/v1".to_owned(),
            (None, "anthropic") => "https://api.anthropic.com".to_owned(),
            (None, _) => {
                return Err(Error::invalid_config(format!(
                    "provider {provider_name:?} needs base_url = \"...\" (only openai and anthropic have a default endpoint)"
                )));
            }
        };
        if provider.api_key.is_none() && provider.base_url.is_none() {
            return Err(Error::invalid_config(format!(
                "provider {provider_name:?} has no API key: {}",
                missing_key_hint(config, provider_name)
            )));
        }
        let max_tokens = model
            .and_then(|m| m.extra.get("max_tokens"))
            .and_then(Value::as_u64);
        Ok(Self {
            provider: provider_name.to_owned(),
            api,
            base_url,
            api_key: provider.api_key.clone(),
            model: model_id.to_owned(),
            max_tokens,
        })
    }

    /// The URL requests are posted to.
    pub fn url(&self) -> String {
        match self.api {
            Api::OpenAi => format!("{}/chat/completions", self.base_url),
            Api::Anthropic if self.base_url.ends_with("/v1") => {
                format!("{}/messages", self.base_url)
            }
            Api::Anthropic => format!("{}/v1/messages", self.base_url),
        }
    }

    fn error(&self, status: Option<u16>, message: impl Into<String>) -> Error {
        Error::ModelFailed {
            provider: self.provider.clone(),
            status,
            message: message.into(),
        }
    }
}

/// How to fix a missing key: the variable `api_key = env("...")` names in the config file when
/// it can be found, else the conventional one.
fn missing_key_hint(config: &AgentConfig, provider: &str) -> String {
    match config
        .source
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|src| api_key_env_var(&src, provider))
    {
        Some(var) => {
            format!("the environment variable {var} (read by api_key = env(\"{var}\")) is not set")
        }
        None => format!(
            "set api_key in its providers {{ }} block, e.g. api_key = env(\"{}_API_KEY\"), and export that variable",
            provider.to_ascii_uppercase().replace(['-', '.'], "_")
        ),
    }
}

/// The variable named by `api_key = env("NAME")` in the `providers` block called `provider`.
fn api_key_env_var(src: &str, provider: &str) -> Option<String> {
    use hcl_edit::expr::Expression;
    use hcl_edit::structure::Structure;
    let body = hcl_edit::parser::parse_body(src.strip_prefix('\u{feff}').unwrap_or(src)).ok()?;
    body.iter().find_map(|s| {
        let Structure::Block(block) = s else {
            return None;
        };
        if block.ident.as_str() != "providers" {
            return None;
        }
        let attr = |key: &str| {
            block.body.iter().find_map(|s| match s {
                Structure::Attribute(a) if a.key.as_str() == key => Some(a.value.clone()),
                _ => None,
            })
        };
        if attr("name")?.as_str() != Some(provider) {
            return None;
        }
        match attr("api_key")? {
            Expression::FuncCall(call) if call.name.name.as_str() == "env" => {
                call.args.get(0)?.as_str().map(str::to_owned)
            }
            _ => None,
        }
    })
}

/// Retries after the first attempt.
const MAX_RETRIES: u32 = 4;
/// First backoff; doubled on every retry up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Timeout of a request made without a deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for model providers: the shared connection pool, timeouts and retries.
///
/// Cheap to clone; every clone shares one connection pool. Safe to use concurrently.
#[derive(Debug, Clone)]
pub struct ModelClient {
    http: reqwest::Client,
}

impl ModelClient {
    /// A client on the process-wide connection pool (TLS by rustls with the ring provider, the
    /// system's root certificates).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the TLS backend cannot be set up.
    pub fn new() -> Result<Self> {
        static HTTP: OnceLock<std::result::Result<reqwest::Client, String>> = OnceLock::new();
        let http = HTTP.get_or_init(|| {
            // reqwest is built without a crypto provider; use ring unless the host process
            // installed one already.
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("a3s-code/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| error_chain(&e))
        });
        match http {
            Ok(http) => Ok(Self { http: http.clone() }),
            Err(e) => Err(Error::invalid_config(format!(
                "cannot set up the HTTP client: {e}"
            ))),
        }
    }

    /// Makes one model call. With `request.stream`, the reply is streamed and `on_text` gets
    /// each piece of text as it arrives; otherwise (or when the server answers with plain JSON
    /// anyway) it is not called.
    ///
    /// Gives up at `deadline` (at most 10 minutes without one). Safe to call concurrently.
    ///
    /// # Errors
    ///
    /// [`Error::ModelFailed`] with the HTTP status for a refused request (401/403 for a bad key,
    /// 404 or 400 for an unknown model, 429/5xx once retries are exhausted) and without one for
    /// a network failure, a timeout or an unreadable reply.
    pub async fn generate(
        &self,
        endpoint: &ModelEndpoint,
        request: &GenerateRequest,
        deadline: Option<Instant>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<GenerateResponse> {
        let (body, headers) = match endpoint.api {
            Api::OpenAi => (
                openai::request_body(endpoint, request),
                openai::headers(endpoint),
            ),
            Api::Anthropic => (
                anthropic::request_body(endpoint, request, ANTHROPIC_DEFAULT_MAX_TOKENS),
                anthropic::headers(endpoint),
            ),
        };
        let response = self
            .post(endpoint, headers?, body.to_string(), deadline)
            .await?;
        let unreadable = |e: String| endpoint.error(None, format!("unreadable reply: {e}"));
        // A server that ignores `stream` answers with plain JSON.
        let json_reply = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if request.stream && !json_reply {
            match endpoint.api {
                Api::OpenAi => {
                    let mut state = openai::StreamState::default();
                    sse::read(response, |_, data| state.on_data(data, on_text))
                        .await
                        .map_err(unreadable)?;
                    state.finish().map_err(unreadable)
                }
                Api::Anthropic => {
                    let mut state = anthropic::StreamState::default();
                    sse::read(response, |_, data| state.on_data(data, on_text))
                        .await
                        .map_err(unreadable)?;
                    state.finish().map_err(unreadable)
                }
            }
        } else {
            let text = response
                .text()
                .await
                .map_err(|e| unreadable(error_chain(&e)))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| unreadable(format!("{e}: {}", excerpt(&text))))?;
            match endpoint.api {
                Api::OpenAi => openai::parse_response(&json),
                Api::Anthropic => anthropic::parse_response(&json),
            }
            .map_err(unreadable)
        }
    }

    /// Posts `body`, retrying what can be retried while the deadline allows.
    async fn post(
        &self,
        endpoint: &ModelEndpoint,
        headers: HeaderMap,
        body: String,
        deadline: Option<Instant>,
    ) -> Result<reqwest::Response> {
        let url = endpoint.url();
        let mut retry = 0;
        loop {
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => DEFAULT_TIMEOUT,
            };
            if timeout.is_zero() {
                return Err(endpoint.error(None, "the deadline passed before the model answered"));
            }
            let sent = self
                .http
                .post(&url)
                .headers(headers.clone())
                .body(body.clone())
                .timeout(timeout)
                .send()
                .await;
            let (err, retryable, delay) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let delay = retry_delay(resp.headers(), retry);
                    let text = resp.text().await.unwrap_or_default();
                    (
                        status_error(endpoint, status, &text),
                        is_retryable(status),
                        delay,
                    )
                }
                Err(e) if e.is_timeout() => {
                    return Err(endpoint.error(
                        None,
                        format!("no answer from {url} within {} ms", timeout.as_millis()),
                    ));
                }
                Err(e) => (
                    endpoint.error(
                        None,
                        format!("request to {url} failed: {}", error_chain(&e)),
                    ),
                    e.is_connect() || e.is_request(),
                    retry_delay(&HeaderMap::new(), retry),
                ),
            };
            let in_time = deadline.is_none_or(|d| Instant::now() + delay < d);
            if !retryable || retry >= MAX_RETRIES || !in_time {
                return Err(err);
            }
            tracing::debug!(provider = %endpoint.provider, retry, ?delay, "retrying model request: {err}");
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }
}

/// 408, 409, 429, 5xx and Anthropic's 529 (overloaded) are worth another try.
fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429 | 500..=599)
}

/// The wait before retry number `retry` (0-based): the server's `retry-after-ms` or
/// `retry-after` (seconds) when given, else exponential backoff with jitter.
fn retry_delay(headers: &HeaderMap, retry: u32) -> Duration {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = header("retry-after-ms") {
        return Duration::from_secs_f64(ms / 1000.0);
    }
    if let Some(secs) = header("retry-after") {
        return Duration::from_secs_f64(secs.min(3600.0));
    }
    let base = INITIAL_BACKOFF
        .saturating_mul(1 << retry.min(16))
        .min(MAX_BACKOFF);
    // Jitter in [0.75, 1.25) so concurrent clients do not retry in lockstep.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    base.mul_f64(0.75 + (random % 1000) as f64 / 2000.0)
}

/// An [`Error::ModelFailed`] for a refused request, with the provider's own message.
fn status_error(endpoint: &ModelEndpoint, status: StatusCode, body: &str) -> Error {
    let from_body = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let reason = status.canonical_reason().unwrap_or("error");
    let mut message = match from_body {
        Some(m) => format!("{reason}: {m}"),
        None if body.trim().is_empty() => reason.to_owned(),
        None => format!("{reason}: {}", excerpt(body)),
    };
    match status.as_u16() {
        401 | 403 => message.push_str(&format!(
            " (check the api_key of provider {:?})",
            endpoint.provider
        )),
        404 => message.push_str(&format!(
            " (model {:?} at {})",
            endpoint.model,
            endpoint.url()
        )),
        _ => {}
    }
    endpoint.error(Some(status.as_u16()), message)
}

/// The start of a long text, for messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// An error and its sources, `: `-separated (reqwest's own message names no cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn config(src: &str) -> AgentConfig {
        AgentConfig::parse(src, "agent.hcl").unwrap()
    }

    #[test]
    fn resolve_picks_provider_model_and_defaults() {
        let cfg = config(
            r#"
default_model = "anthropic/claude-x"
providers {
  name    = "anthropic"
  api_key = "k"
  models {
    id         = "claude-x"
    max_tokens = 1000
  }
}
providers {
  name    = "openai"
  api_key = "k2"
}
"#,
        );
        let ep = ModelEndpoint::resolve(&cfg, None).unwrap();
        assert_eq!(ep.api, Api::Anthropic);
        assert_eq!(ep.url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(ep.max_tokens, Some(1000));
        let ep = ModelEndpoint::resolve(&cfg, Some("openai/gpt-4o")).unwrap();
        assert_eq!(ep.url(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(ep.api_key.as_deref(), Some("k2"));
        assert!(!format!("{ep:?}").contains("k2"));
        for (bad, needle) in [
            ("gpt-4o", "provider/model"),
            ("/x", "provider/model"),
            ("mistral/large", "no providers { } block"),
            ("anthropic/claude-y", "its models: claude-x"),
        ] {
            let err = ModelEndpoint::resolve(&cfg, Some(bad)).unwrap_err();
            assert_eq!(err.code(), "InvalidConfig");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let err = ModelEndpoint::resolve(&AgentConfig::default(), None).unwrap_err();
        assert!(err.to_string().contains("default_model"), "{err}");
    }

    #[test]
    fn missing_key_names_the_variable() {
        let src =
            "providers {\n  name = \"openai\"\n  api_key = env(\"A3S_TEST_SURELY_UNSET_KEY\")\n}\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.hcl");
        std::fs::write(&path, src).unwrap();
        let cfg = AgentConfig::from_file(&path).unwrap();
        let err = ModelEndpoint::resolve(&cfg, Some("openai/gpt-4o")).unwrap_err();
        assert!(
            err.to_string().contains("A3S_TEST_SURELY_UNSET_KEY"),
            "{err}"
        );
        // Without the file, the conventional name is suggested.
        let cfg = config(
            "providers {\n  name = \"my-openai\"\n  base_url = \"http://127.0.0.1:1/v1\"\n}\n",
        );
        assert!(ModelEndpoint::resolve(&cfg, Some("my-openai/m")).is_ok());
        let cfg = config("providers {\n  name = \"openai\"\n}\n");
        let err = ModelEndpoint::resolve(&cfg, Some("openai/m")).unwrap_err();
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        let cfg = config("providers {\n  name = \"deepseek\"\n  api_key = \"k\"\n}\n");
        let err = ModelEndpoint::resolve(&cfg, Some("deepseek/m")).unwrap_err();
        assert!(err.to_string().contains("base_url"), "{err}");
    }

    #[test]
    fn api_can_be_chosen_and_v1_is_not_doubled() {
        let cfg = config(
            "providers {\n  name = \"claude\"\n  api = \"anthropic\"\n  base_url = \"http://h/v1/\"\n}\nproviders {\n  name = \"x\"\n  api = \"soap\"\n  base_url = \"http://h\"\n}\n",
        );
        let ep = ModelEndpoint::resolve(&cfg, Some("claude/c")).unwrap();
        assert_eq!(
            (ep.api, ep.url().as_str()),
            (Api::Anthropic, "http://h/v1/messages")
        );
        let err = ModelEndpoint::resolve(&cfg, Some("x/m")).unwrap_err();
        assert!(err.to_string().contains("soap"), "{err}");
    }

    #[test]
    fn retry_delays() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_delay(&h, 0), Duration::from_secs(2));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_delay(&h, 3), Duration::from_millis(150));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let d = retry_delay(&h, 1);
        assert!(d >= Duration::from_millis(750) && d < Duration::from_millis(1250));
        assert!(retry_delay(&HeaderMap::new(), 30) <= MAX_BACKOFF.mul_f64(1.25));
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable(StatusCode::from_u16(529).unwrap()));
        assert!(!is_retryable(StatusCode::UNAUTHORIZED));
        assert!(!is_retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn status_errors_carry_the_provider_message() {
        let ep = ModelEndpoint {
            provider: "openai".into(),
            api: Api::OpenAi,
            base_url: "http://h/v1".into(),
            api_key: None,
            model: "gpt-x".into(),
            max_tokens: None,
        };
        let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}});
        let err = status_error(&ep, StatusCode::UNAUTHORIZED, &body.to_string());
        assert_eq!(err.code(), "ModelFailed");
        assert_eq!(
            err.to_string(),
            "openai: HTTP 401: Unauthorized: Incorrect API key provided (check the api_key of provider \"openai\")"
        );
        let err = status_error(&ep, StatusCode::NOT_FOUND, "no such thing");
        assert!(
            err.to_string().contains("no such thing (model \"gpt-x\""),
            "{err}"
        );
        let err = status_error(&ep, StatusCode::BAD_REQUEST, &"x".repeat(1000));
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn tool_call_arguments_accept_text_or_object() {
        let call: ToolCall =
            serde_json::from_value(json!({"name": "read", "arguments": {"path": "a"}})).unwrap();
        assert_eq!(call.arguments, r#"{"path":"a"}"#);
        assert_eq!(call.id, "");
        let call: ToolCall =
            serde_json::from_value(json!({"id": "1", "name": "ls", "arguments": "{bad"})).unwrap();
        assert_eq!(call.arguments, "{bad");
        let msg: Message =
            serde_json::from_value(json!({"role": "tool", "tool_call_id": "1", "content": "x"}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            json!({"role": "tool", "tool_call_id": "1", "name": "", "content": "x"})
        );
    }
}
