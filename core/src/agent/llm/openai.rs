//! The OpenAI Chat Completions wire format.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::{GenerateRequest, GenerateResponse, Message, ModelEndpoint, ToolCall, Usage};
use crate::error::Result;

pub(super) fn headers(endpoint: &ModelEndpoint) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &endpoint.api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            endpoint.error(None, "the api_key holds characters not allowed in a header")
        })?;
        value.set_sensitive(true);
        h.insert(AUTHORIZATION, value);
    }
    Ok(h)
}

pub(super) fn request_body(endpoint: &ModelEndpoint, req: &GenerateRequest) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &req.messages {
        messages.push(match m {
            Message::User { content } => json!({"role": "user", "content": content}),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut msg = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    if content.is_empty() {
                        msg["content"] = Value::Null;
                    }
                    msg["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            })
                        })
                        .collect();
                }
                msg
            }
            Message::Tool {
                tool_call_id,
                content,
                ..
            } => json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
        });
    }
    let mut body = json!({"model": endpoint.model, "messages": messages});
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                })
            })
            .collect();
    }
    if let Some(max) = endpoint.max_tokens {
        body["max_tokens"] = max.into();
    }
    if req.stream {
        body["stream"] = true.into();
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn usage(v: &Value) -> Usage {
    Usage {
        input_tokens: v["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: v["completion_tokens"].as_u64().unwrap_or(0),
    }
}

/// Text of a `content` that is a string or an array of `{type: "text", text}` parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Arguments as text: a string as is, anything else (some servers send an object) as JSON.
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) fn parse_response(body: &Value) -> Result<GenerateResponse, String> {
    let choice = body
        .pointer("/choices/0")
        .ok_or_else(|| format!("no choices in {}", super::excerpt(&body.to_string())))?;
    let message = &choice["message"];
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| ToolCall {
                    id: c["id"].as_str().unwrap_or_default().to_owned(),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: arguments_text(&c["function"]["arguments"]),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(GenerateResponse {
        content: text_of(&message["content"]),
        tool_calls,
        usage: usage(&body["usage"]),
        stop_reason: choice["finish_reason"].as_str().map(str::to_owned),
    })
}

/// A streamed reply being put together from its chunks.
#[derive(Default)]
pub(super) struct StreamState {
    content: String,
    /// Tool calls by their `index` in the reply.
    calls: Vec<(u64, ToolCall)>,
    usage: Usage,
    stop_reason: Option<String>,
    done: bool,
}

impl StreamState {
    /// Applies one `data:` payload; `Ok(true)` at `[DONE]`.
    pub(super) fn on_data(
        &mut self,
        data: &str,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<bool, String> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("{e}: {}", super::excerpt(data)))?;
        if let Some(err) = chunk.get("error") {
            let message = err["message"]
                .as_str()
                .map_or_else(|| err.to_string(), str::to_owned);
            return Err(format!("the stream reported an error: {message}"));
        }
        if chunk["usage"].is_object() {
            self.usage = usage(&chunk["usage"]);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return Ok(false);
        };
        let delta = &choice["delta"];
        let text = text_of(&delta["content"]);
        if !text.is_empty() {
            on_text(&text);
            self.content.push_str(&text);
        }
        for (pos, part) in delta["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = part["index"].as_u64().unwrap_or(pos as u64);
            let at = match self.calls.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    self.calls.push((
                        index,
                        ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        },
                    ));
                    self.calls.len() - 1
                }
            };
            let call = &mut self.calls[at].1;
            if let Some(id) = part["id"].as_str().filter(|s| !s.is_empty()) {
                call.id = id.to_owned();
            }
            if let Some(name) = part["function"]["name"].as_str().filter(|s| !s.is_empty()) {
                call.name = name.to_owned();
            }
            call.arguments
                .push_str(&arguments_text(&part["function"]["arguments"]));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.stop_reason = Some(reason.to_owned());
        }
        Ok(false)
    }

    /// The reply; an error when the stream ended before it was complete.
    pub(super) fn finish(self) -> Result<GenerateResponse, String> {
        if !self.done && self.stop_reason.is_none() {
            return Err("the stream ended before the reply was complete".into());
        }
        Ok(GenerateResponse {
            content: self.content,
            tool_calls: self.calls.into_iter().map(|(_, c)| c).collect(),
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
            provider: "openai".into(),
            api: Api::OpenAi,
            base_url: "http://h/v1".into(),
            api_key: Some("sk".into()),
            model: "gpt-4o".into(),
            max_tokens: None,
        }
    }

    #[test]
    fn request_maps_every_message_kind() {
        let req = GenerateRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::User {
                    content: "hi".into(),
                },
                Message::Assistant {
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "read".into(),
                        arguments: "{\"path\":\"a\"}".into(),
                    }],
                },
                Message::Tool {
                    tool_call_id: "c1".into(),
                    name: "read".into(),
                    content: "text".into(),
                    is_error: false,
                },
            ],
            tools: vec![ToolDefinition {
                name: "read".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            stream: true,
            ..Default::default()
        };
        let body = request_body(&endpoint(), &req);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{\"path\":\"a\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "text"},
                ],
                "tools": [{"type": "function", "function": {"name": "read", "description": "d", "parameters": {"type": "object"}}}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let h = headers(&endpoint()).unwrap();
        assert_eq!(h[AUTHORIZATION], "Bearer sk");
    }

    #[test]
    fn response_with_tool_calls() {
        let body = json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "grep", "arguments": "{\"pattern\":\"x\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "ls", "arguments": {"path": "."}}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        let r = parse_response(&body).unwrap();
        assert_eq!(r.content, "");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[1].arguments, "{\"path\":\".\"}");
        assert_eq!(r.usage.total_tokens(), 15);
        assert_eq!(r.stop_reason.as_deref(), Some("tool_calls"));
        assert!(parse_response(&json!({"object": "x"})).is_err());
    }

    #[test]
    fn stream_assembles_text_and_tool_calls() {
        let mut st = StreamState::default();
        let mut text = String::new();
        let mut sink = |t: &str| text.push_str(t);
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"read","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"pa"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c2","function":{"name":"ls","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\":\"a\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        ] {
            assert!(!st.on_data(data, &mut sink).unwrap());
        }
        assert!(st.on_data("[DONE]", &mut sink).unwrap());
        let r = st.finish().unwrap();
        assert_eq!(text, "Hello");
        assert_eq!(r.content, "Hello");
        assert_eq!(r.tool_calls[0].arguments, "{\"path\":\"a\"}");
        assert_eq!(
            (r.tool_calls[1].id.as_str(), r.tool_calls[1].name.as_str()),
            ("c2", "ls")
        );
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 3,
                output_tokens: 4
            }
        );
    }

    #[test]
    fn stream_errors() {
        let mut sink = |_: &str| {};
        let mut st = StreamState::default();
        let err = st
            .on_data(r#"{"error":{"message":"overloaded"}}"#, &mut sink)
            .unwrap_err();
        assert!(err.contains("overloaded"));
        assert!(st.on_data("{not json", &mut sink).is_err());
        assert!(StreamState::default().finish().is_err());
    }
}
