//! The Anthropic Messages wire format.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::{GenerateRequest, GenerateResponse, Message, ModelEndpoint, ToolCall, Usage};
use crate::error::Result;

const API_VERSION: &str = "2023-06-01";

pub(super) fn headers(endpoint: &ModelEndpoint) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    if let Some(key) = &endpoint.api_key {
        let mut value = HeaderValue::from_str(key).map_err(|_| {
            endpoint.error(None, "the api_key holds characters not allowed in a header")
        })?;
        value.set_sensitive(true);
        h.insert("x-api-key", value);
    }
    Ok(h)
}

/// The `input` object of a `tool_use` block: the arguments if they are a JSON object, else `{}`
/// (the loop already told the model its arguments were unusable).
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

pub(super) fn request_body(
    endpoint: &ModelEndpoint,
    req: &GenerateRequest,
    default_max_tokens: u64,
) -> Value {
    // Anthropic wants user and assistant turns alternating, with every tool result of a turn
    // in the one user message that follows it: consecutive same-role blocks are merged.
    let mut messages: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m {
            Message::User { content } => ("user", vec![json!({"type": "text", "text": content})]),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for c in tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input_of(&c.arguments)}));
                }
                if blocks.is_empty() {
                    blocks.push(json!({"type": "text", "text": "(no answer)"}));
                }
                ("assistant", blocks)
            }
            Message::Tool {
                tool_call_id,
                content,
                is_error,
                ..
            } => {
                let mut block =
                    json!({"type": "tool_result", "tool_use_id": tool_call_id, "content": content});
                if *is_error {
                    block["is_error"] = true.into();
                }
                ("user", vec![block])
            }
        };
        match messages.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let mut body = json!({
        "model": endpoint.model,
        "max_tokens": endpoint.max_tokens.unwrap_or(default_max_tokens),
        "messages": messages,
    });
    if let Some(system) = &req.system {
        body["system"] = system.as_str().into();
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    if req.stream {
        body["stream"] = true.into();
    }
    body
}

/// Input tokens include the prompt-cache reads and writes.
fn input_tokens(usage: &Value) -> Option<u64> {
    let n = |k: &str| usage[k].as_u64();
    n("input_tokens").map(|input| {
        input
            + n("cache_creation_input_tokens").unwrap_or(0)
            + n("cache_read_input_tokens").unwrap_or(0)
    })
}

pub(super) fn parse_response(body: &Value) -> Result<GenerateResponse, String> {
    let blocks = body["content"]
        .as_array()
        .ok_or_else(|| format!("no content in {}", super::excerpt(&body.to_string())))?;
    let mut out = GenerateResponse::default();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => out
                .content
                .push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => out.tool_calls.push(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_owned(),
                name: block["name"].as_str().unwrap_or_default().to_owned(),
                arguments: block["input"].to_string(),
            }),
            _ => {}
        }
    }
    out.usage = Usage {
        input_tokens: input_tokens(&body["usage"]).unwrap_or(0),
        output_tokens: body["usage"]["output_tokens"].as_u64().unwrap_or(0),
    };
    out.stop_reason = body["stop_reason"].as_str().map(str::to_owned);
    Ok(out)
}

/// A streamed reply being put together from its events.
#[derive(Default)]
pub(super) struct StreamState {
    content: String,
    /// Tool-use blocks by their content block index.
    calls: Vec<(u64, ToolCall)>,
    usage: Usage,
    stop_reason: Option<String>,
    done: bool,
}

impl StreamState {
    /// Applies one event's data; `Ok(true)` at `message_stop`.
    pub(super) fn on_data(
        &mut self,
        data: &str,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<bool, String> {
        let event: Value =
            serde_json::from_str(data).map_err(|e| format!("{e}: {}", super::excerpt(data)))?;
        match event["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let usage = &event["message"]["usage"];
                self.usage.input_tokens = input_tokens(usage).unwrap_or(0);
                self.usage.output_tokens = usage["output_tokens"].as_u64().unwrap_or(0);
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => self.calls.push((
                        event["index"].as_u64().unwrap_or(0),
                        ToolCall {
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                            arguments: String::new(),
                        },
                    )),
                    Some("text") => self.text(block["text"].as_str().unwrap_or_default(), on_text),
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        self.text(delta["text"].as_str().unwrap_or_default(), on_text)
                    }
                    Some("input_json_delta") => {
                        let index = event["index"].as_u64().unwrap_or(0);
                        if let Some((_, call)) = self.calls.iter_mut().find(|(i, _)| *i == index) {
                            call.arguments
                                .push_str(delta["partial_json"].as_str().unwrap_or_default());
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                let usage = &event["usage"];
                if let Some(n) = usage["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                }
                if let Some(n) = input_tokens(usage) {
                    self.usage.input_tokens = n;
                }
            }
            "message_stop" => {
                self.done = true;
                return Ok(true);
            }
            "error" => {
                let message = event["error"]["message"]
                    .as_str()
                    .map_or_else(|| event["error"].to_string(), str::to_owned);
                return Err(format!("the stream reported an error: {message}"));
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(false)
    }

    fn text(&mut self, text: &str, on_text: &mut (dyn FnMut(&str) + Send)) {
        if !text.is_empty() {
            on_text(text);
            self.content.push_str(text);
        }
    }

    /// The reply; an error when the stream ended before it was complete.
    pub(super) fn finish(self) -> Result<GenerateResponse, String> {
        if !self.done && self.stop_reason.is_none() {
            return Err("the stream ended before the reply was complete".into());
        }
        Ok(GenerateResponse {
            content: self.content,
            tool_calls: self
                .calls
                .into_iter()
                .map(|(_, mut c)| {
                    if c.arguments.trim().is_empty() {
                        c.arguments = "{}".into();
                    }
                    c
                })
                .collect(),
            usage: self.usage,
            stop_reason: self.stop_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Api, ToolDefinition};
    use super::*;

    fn endpoint() -> ModelEndpoint {
        ModelEndpoint {
            provider: "anthropic".into(),
            api: Api::Anthropic,
            base_url: "http://h".into(),
            api_key: Some("key".into()),
            model: "claude-x".into(),
            max_tokens: None,
        }
    }

    #[test]
    fn request_merges_tool_results_into_one_user_turn() {
        let call = |id: &str, args: &str| ToolCall {
            id: id.into(),
            name: "read".into(),
            arguments: args.into(),
        };
        let result = |id: &str, is_error| Message::Tool {
            tool_call_id: id.into(),
            name: "read".into(),
            content: "r".into(),
            is_error,
        };
        let req = GenerateRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::User {
                    content: "hi".into(),
                },
                Message::Assistant {
                    content: "looking".into(),
                    tool_calls: vec![call("t1", "{\"path\":\"a\"}"), call("t2", "{bad")],
                },
                result("t1", false),
                result("t2", true),
                Message::User {
                    content: "next".into(),
                },
            ],
            tools: vec![ToolDefinition {
                name: "read".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            ..Default::default()
        };
        let body = request_body(&endpoint(), &req, 4096);
        assert_eq!(
            body,
            json!({
                "model": "claude-x",
                "max_tokens": 4096,
                "system": "sys",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "looking"},
                        {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a"}},
                        {"type": "tool_use", "id": "t2", "name": "read", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": "r", "is_error": true},
                        {"type": "text", "text": "next"},
                    ]},
                ],
                "tools": [{"name": "read", "description": "d", "input_schema": {"type": "object"}}],
            })
        );
        let h = headers(&endpoint()).unwrap();
        assert_eq!(h["x-api-key"], "key");
        assert_eq!(h["anthropic-version"], API_VERSION);
    }

    #[test]
    fn response_with_tool_use() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "tu1", "name": "grep", "input": {"pattern": "auth"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}
        });
        let r = parse_response(&body).unwrap();
        assert_eq!(r.content, "Let me look.");
        assert_eq!(r.tool_calls[0].arguments, "{\"pattern\":\"auth\"}");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 15,
                output_tokens: 7
            }
        );
        assert!(parse_response(&json!({"type": "error"})).is_err());
    }

    #[test]
    fn stream_assembles_text_and_tool_use() {
        let mut st = StreamState::default();
        let mut text = String::new();
        let mut sink = |t: &str| text.push_str(t);
        for data in [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu1","name":"read","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\": "}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"a\"}"}}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"tu2","name":"ls","input":{}}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
        ] {
            assert!(!st.on_data(data, &mut sink).unwrap());
        }
        assert!(st.on_data(r#"{"type":"message_stop"}"#, &mut sink).unwrap());
        let r = st.finish().unwrap();
        assert_eq!(
            (text.as_str(), r.content.as_str()),
            ("Hi there", "Hi there")
        );
        assert_eq!(r.tool_calls[0].arguments, "{\"path\": \"a\"}");
        assert_eq!(r.tool_calls[1].arguments, "{}");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 30
            }
        );
        assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
    }

    #[test]
    fn stream_errors() {
        let mut sink = |_: &str| {};
        let err = StreamState::default()
            .on_data(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut sink,
            )
            .unwrap_err();
        assert!(err.contains("Overloaded"));
        assert!(StreamState::default().finish().is_err());
    }
}
