//! `session.send(prompt)` and `session.stream(prompt)` against the scripted model server of
//! `test-support` (OpenAI and Anthropic wire formats, streamed and not): tool calls through the
//! lanes, External workers, retries, typed errors, malformed tool calls. Nothing leaves
//! 127.0.0.1.

use std::time::{Duration, Instant};

use a3s_code_core::agent::{AgentEvent, AgentResponse, StopReason};
use a3s_code_core::queue::{LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, Error, ExternalTask, ExternalTaskResult, Result,
    SessionOptions, SessionQueueConfig,
};
use serde_json::{Value, json};
use test_support::model_server::{INPUT_TOKENS, ModelServer, OUTPUT_TOKENS, Reply};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    OpenAi,
    Anthropic,
}

/// Every provider, streamed and not.
const CASES: [(Wire, bool); 4] = [
    (Wire::OpenAi, false),
    (Wire::OpenAi, true),
    (Wire::Anthropic, false),
    (Wire::Anthropic, true),
];

/// An agent whose default model is served by `server`, with `extra` top-level HCL.
fn agent_for(server: &ModelServer, wire: Wire, api_key: &str, extra: &str) -> Agent {
    let (provider, base_url) = match wire {
        Wire::OpenAi => ("openai", server.openai_base_url()),
        Wire::Anthropic => ("anthropic", server.anthropic_base_url()),
    };
    let src = format!(
        r#"
default_model = "{provider}/test-model"
{extra}
providers {{
  name     = "{provider}"
  api_key  = "{api_key}"
  base_url = "{base_url}"
  models {{
    id = "test-model"
  }}
}}
"#
    );
    Agent::from_config(AgentConfig::parse(&src, "agent.hcl").expect("valid agent.hcl"))
}

/// A session on a fresh workspace, with the given lanes External.
fn open_session(agent: &Agent, external: &[SessionLane]) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SessionQueueConfig {
        query_max_concurrency: 8,
        lane_handlers: external
            .iter()
            .map(|&lane| {
                (
                    lane,
                    LaneHandlerConfig {
                        mode: TaskHandlerMode::External,
                        timeout_ms: 30_000,
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    let session = agent
        .session(
            dir.path(),
            Some(SessionOptions::new().with_queue_config(config)),
        )
        .expect("session");
    (session, dir)
}

/// `send`, or `stream` with every event collected.
async fn ask(
    session: &AgentSession,
    prompt: &str,
    streaming: bool,
) -> (Result<AgentResponse>, Vec<AgentEvent>) {
    if !streaming {
        return (session.send(prompt).await, Vec::new());
    }
    let mut stream = session.stream(prompt);
    let mut events = Vec::new();
    while let Some(event) = stream.recv().await {
        events.push(event);
    }
    (stream.finish().await, events)
}

fn usage_of(calls: u64) -> (u64, u64) {
    (calls * INPUT_TOKENS, calls * OUTPUT_TOKENS)
}

/// A worker that claims `n` tasks, and completes them only once it holds all of them: the
/// tasks were in flight at the same time.
async fn claim_all_then_complete(session: AgentSession, n: usize) -> Vec<ExternalTask> {
    let mut claimed = Vec::new();
    while claimed.len() < n {
        claimed.extend(
            session
                .claim_external_tasks(16, Duration::from_secs(5))
                .await
                .expect("claim"),
        );
    }
    for task in &claimed {
        let result = ExternalTaskResult::ok(json!({
            "content": format!("{} on a worker: {}", task.command_type, task.payload),
        }));
        session
            .complete_external_task(&task.task_id, result)
            .await
            .expect("complete");
    }
    claimed
}

#[tokio::test]
async fn a_turns_tool_calls_run_in_parallel_on_external_query_workers() {
    for (wire, streaming) in CASES {
        let case = format!("{wire:?}, streaming: {streaming}");
        let server = ModelServer::start([
            Reply::tool_calls([
                ("grep", json!({"pattern": "fn auth", "glob": "*.rs"})),
                ("read", json!({"path": "src/auth.rs"})),
                ("glob", json!({"pattern": "**/login*"})),
            ]),
            Reply::text("authenticate() in src/auth.rs and login() in src/login.rs."),
        ])
        .await;
        let agent = agent_for(&server, wire, "test-key", "");
        let (session, _dir) = open_session(&agent, &[SessionLane::Query]);
        let worker = tokio::spawn(tokio::time::timeout(
            Duration::from_secs(20),
            claim_all_then_complete(session.clone(), 3),
        ));

        let (response, events) = ask(
            &session,
            "Search for all authentication functions",
            streaming,
        )
        .await;
        let response = response.unwrap_or_else(|e| panic!("{case}: {e}"));
        let claimed = worker
            .await
            .unwrap()
            .expect("the three calls were in flight together");

        assert_eq!(
            response.text, "authenticate() in src/auth.rs and login() in src/login.rs.",
            "{case}"
        );
        assert_eq!(response.stop_reason, StopReason::Completed);
        assert_eq!(response.model_call_count, 2);
        assert_eq!(
            (response.usage.input_tokens, response.usage.output_tokens),
            usage_of(2)
        );
        let names: Vec<&str> = response
            .tool_calls
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["grep", "read", "glob"], "{case}");
        for call in &response.tool_calls {
            assert_eq!(call.lane, Some(SessionLane::Query));
            assert!(call.result.success);
            let task = claimed
                .iter()
                .find(|t| Some(&t.task_id) == call.task_id.as_ref())
                .expect("each call is one claimed task");
            assert_eq!(task.command_type, call.name);
            assert_eq!(
                task.payload, call.args,
                "the payload is the model's arguments"
            );
        }

        // The model got every worker result back, in call order.
        let requests = server.requests();
        assert_eq!(requests.len(), 2, "{case}");
        assert!(requests.iter().all(|r| r.is_stream() == streaming));
        let results = requests[1].tool_results();
        assert_eq!(results.len(), 3, "{case}");
        for ((id, content, is_error), name) in results.iter().zip(["grep", "read", "glob"]) {
            assert!(id.starts_with("call_"));
            assert!(!is_error);
            let content: Value = serde_json::from_str(content).unwrap();
            assert!(
                content["content"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{name} on a worker")),
                "{case}: {content}"
            );
        }
        assert_eq!(session.history().len(), 6); // user, assistant, 3 tool results, assistant
        if streaming {
            let finished = events
                .iter()
                .filter(|e| matches!(e, AgentEvent::ToolCallFinished(_)))
                .count();
            assert_eq!(finished, 3, "{case}");
        }
    }
}

#[tokio::test]
async fn execute_lane_calls_write_then_read_back() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = ModelServer::start([
            Reply::tool_call(
                "write",
                json!({"path": "notes/todo.txt", "content": "buy milk\n"}),
            )
            .with_text("Writing it down."),
            Reply::tool_call("read", json!({"path": "notes/todo.txt"})),
            Reply::tool_call("bash", json!({"command": "wc -l < notes/todo.txt"})),
            Reply::text("Saved and checked."),
        ])
        .await;
        let agent = agent_for(&server, wire, "k", "");
        let (session, dir) = open_session(&agent, &[]);

        let response = session.send("Note that I need milk").await.unwrap();

        assert_eq!(response.text, "Saved and checked.");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes/todo.txt")).unwrap(),
            "buy milk\n"
        );
        let lanes: Vec<_> = response.tool_calls.iter().map(|c| c.lane).collect();
        assert_eq!(
            lanes,
            [
                Some(SessionLane::Execute),
                Some(SessionLane::Query),
                Some(SessionLane::Execute)
            ]
        );
        assert!(response.tool_calls.iter().all(|c| c.result.success));
        let requests = server.requests();
        assert_eq!(requests.len(), 4);
        let written: Value = serde_json::from_str(&requests[1].tool_results()[0].1).unwrap();
        assert_eq!(written["bytes_written"], 9);
        let read: Value = serde_json::from_str(&requests[2].tool_results()[1].1).unwrap();
        assert_eq!(read["content"], "buy milk\n", "{wire:?}");
        let bash: Value = serde_json::from_str(&requests[3].tool_results()[2].1).unwrap();
        assert_eq!(bash["stdout"].as_str().unwrap().trim(), "1");
        assert_eq!(bash["exit_code"], 0);
    }
}

#[tokio::test]
async fn max_tool_rounds_stops_the_loop_and_keeps_the_conversation_valid() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = ModelServer::start([
            Reply::tool_call("ls", json!({})),
            Reply::tool_call("ls", json!({"path": "."})),
            Reply::tool_call("glob", json!({"pattern": "*"})).with_text("One more look."),
            Reply::text("Fine, stopping."),
        ])
        .await;
        let agent = agent_for(&server, wire, "k", "max_tool_rounds = 2");
        let (session, _dir) = open_session(&agent, &[]);

        let response = session.send("Look around forever").await.unwrap();

        assert_eq!(response.stop_reason, StopReason::MaxToolRounds);
        assert_eq!(response.text, "One more look.");
        assert_eq!(response.model_call_count, 3);
        assert_eq!(response.tool_calls.len(), 2, "the third round is not run");
        assert_eq!(server.requests().len(), 3);
        assert_eq!(session.history().len(), 7);

        // The next send carries a result for the refused call, so the provider accepts it.
        let next = session.send("Summarise").await.unwrap();
        assert_eq!(next.text, "Fine, stopping.");
        let results = server.requests()[3].tool_results();
        assert_eq!(results.len(), 3);
        assert!(results[2].1.contains("not run"), "{:?}", results[2]);
        assert_eq!(results[2].2, wire == Wire::Anthropic);
    }
}

#[tokio::test]
async fn rate_limits_and_overloads_are_retried_honouring_retry_after() {
    let server = ModelServer::start([
        Reply::status(429, "Rate limit reached").with_header("retry-after", "1"),
        Reply::text("after the wait"),
    ])
    .await;
    let agent = agent_for(&server, Wire::OpenAi, "k", "");
    let (session, _dir) = open_session(&agent, &[]);
    let started = Instant::now();
    let response = session.send("hi").await.unwrap();
    assert_eq!(response.text, "after the wait");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry-after: 1 was honoured"
    );
    assert_eq!(server.requests().len(), 2);

    let server = ModelServer::start([
        Reply::status(529, "Overloaded").with_header("retry-after-ms", "200"),
        Reply::status(503, "Unavailable").with_header("retry-after", "0"),
        Reply::text("at last"),
    ])
    .await;
    let agent = agent_for(&server, Wire::Anthropic, "k", "");
    let (session, _dir) = open_session(&agent, &[]);
    let started = Instant::now();
    let (response, _) = ask(&session, "hi", true).await;
    assert_eq!(response.unwrap().text, "at last");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn retries_end_with_a_typed_error() {
    let server = ModelServer::start(
        (0..6).map(|_| Reply::status(429, "Slow down").with_header("retry-after", "0")),
    )
    .await;
    let agent = agent_for(&server, Wire::OpenAi, "k", "");
    let (session, _dir) = open_session(&agent, &[]);
    let err = session.send("hi").await.unwrap_err();
    match &err {
        Error::ModelFailed {
            provider,
            status: Some(429),
            message,
        } => {
            assert_eq!(provider, "openai");
            assert!(message.contains("Slow down"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests().len(), 5, "the first try and 4 retries");
}

#[tokio::test]
async fn a_bad_key_is_a_typed_error_and_not_retried() {
    for (wire, streaming) in CASES {
        let server = ModelServer::with_api_key("right-key", [Reply::text("never")]).await;
        let agent = agent_for(&server, wire, "wrong-key", "");
        let (session, _dir) = open_session(&agent, &[]);

        let (result, _) = ask(&session, "hi", streaming).await;
        let err = result.unwrap_err();

        assert_eq!(err.code(), "ModelFailed");
        let Error::ModelFailed {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*status, Some(401), "{wire:?}");
        assert!(message.contains("check the api_key"), "{message}");
        assert_eq!(server.requests().len(), 1);
        assert_eq!(server.remaining(), 1);
        assert!(
            session.history().is_empty(),
            "a failed send changes nothing"
        );
    }
}

#[tokio::test]
async fn an_unknown_model_is_a_typed_error() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server =
            ModelServer::start([Reply::status(404, "The model `test-model` does not exist")]).await;
        let agent = agent_for(&server, wire, "k", "");
        let (session, _dir) = open_session(&agent, &[]);
        let err = session.send("hi").await.unwrap_err();
        let Error::ModelFailed {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*status, Some(404));
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains("model \"test-model\""), "{message}");
    }
}

#[tokio::test]
async fn malformed_unknown_and_failing_calls_go_back_to_the_model() {
    for (wire, streaming) in CASES {
        let case = format!("{wire:?}, streaming: {streaming}");
        let server = ModelServer::start([
            Reply::raw_tool_calls([
                ("read", "{\"path\": \"a.txt\"".to_owned()),
                ("teleport", "{\"to\": \"mars\"}".to_owned()),
                ("read", "{\"path\": \"missing.txt\"}".to_owned()),
            ]),
            Reply::text("Recovered from three errors."),
        ])
        .await;
        let agent = agent_for(&server, wire, "k", "");
        let (session, _dir) = open_session(&agent, &[]);

        let (response, events) = ask(&session, "Do three things", streaming).await;
        let response = response.unwrap_or_else(|e| panic!("{case}: {e}"));

        assert_eq!(response.text, "Recovered from three errors.");
        assert!(response.tool_calls.iter().all(|c| !c.result.success));
        let codes: Vec<&Value> = response
            .tool_calls
            .iter()
            .map(|c| &c.result.result["error_code"])
            .collect();
        assert_eq!(
            codes,
            ["InvalidPayload", "UnknownTool", "ToolFailed"],
            "{case}"
        );
        assert_eq!(response.tool_calls[0].lane, None);
        assert_eq!(response.tool_calls[1].lane, None);
        assert!(response.tool_calls[2].task_id.is_some());

        let results = server.requests()[1].tool_results();
        assert_eq!(results.len(), 3, "{case}");
        assert!(results[0].1.contains("JSON"), "{case}: {}", results[0].1);
        assert!(
            results[1].1.contains("unknown tool"),
            "{case}: {}",
            results[1].1
        );
        assert!(
            results[2].1.contains("missing.txt"),
            "{case}: {}",
            results[2].1
        );
        if wire == Wire::Anthropic {
            assert!(results.iter().all(|r| r.2), "is_error is set");
        }
        if streaming {
            let started = events
                .iter()
                .filter(|e| matches!(e, AgentEvent::ToolCallStarted { .. }))
                .count();
            assert_eq!(started, 3, "{case}");
        }
    }
}

#[tokio::test]
async fn stream_yields_text_deltas_tool_events_and_queue_events_in_order() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server = ModelServer::start([
            Reply::tool_call("read", json!({"path": "hello.txt"})).with_text("Let me read it."),
            Reply::text("The file says hello."),
        ])
        .await;
        let agent = agent_for(&server, wire, "k", "");
        let (session, dir) = open_session(&agent, &[]);
        std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();

        let (response, events) = ask(&session, "What does hello.txt say?", true).await;
        let response = response.unwrap();

        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert!(deltas.len() > 2, "text arrives in pieces: {deltas:?}");
        assert_eq!(deltas.concat(), "Let me read it.The file says hello.");
        assert_eq!(response.text, "The file says hello.");

        let position = |pred: &dyn Fn(&AgentEvent) -> bool| {
            events.iter().position(pred).expect("event present")
        };
        let first_delta = position(&|e| matches!(e, AgentEvent::TextDelta { .. }));
        let started = position(
            &|e| matches!(e, AgentEvent::ToolCallStarted { name, lane: Some(SessionLane::Query), task_id: Some(_), .. } if name == "read"),
        );
        let finished = position(
            &|e| matches!(e, AgentEvent::ToolCallFinished(r) if r.result.result["content"] == "hello\n"),
        );
        let last_delta = events
            .iter()
            .rposition(|e| matches!(e, AgentEvent::TextDelta { .. }))
            .unwrap();
        assert!(first_delta < started && started < finished && finished < last_delta);

        let submitted: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Queue(QueueEvent::Submitted { command_type, .. }) => {
                    Some(command_type.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(submitted, ["generate", "read", "generate"], "{wire:?}");
        assert!(events.iter().any(|e| matches!(
            e,
            AgentEvent::Queue(QueueEvent::Completed {
                lane: SessionLane::Generate,
                ..
            })
        )));
    }
}

#[tokio::test]
async fn an_external_generate_lane_gets_the_request_and_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::parse("default_model = \"custom/llm\"\n", "agent.hcl").unwrap();
    let session = Agent::from_config(config)
        .session(dir.path(), None)
        .unwrap();
    session
        .set_lane_handler(
            SessionLane::Generate,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 30_000,
            },
        )
        .await
        .unwrap();
    let worker = session.clone();
    let model = tokio::spawn(async move {
        let task = worker
            .claim_external_tasks(1, Duration::from_secs(10))
            .await
            .unwrap()
            .pop()
            .expect("a generate task");
        let reply = ExternalTaskResult::ok(json!({
            "content": "Answered by my own GPU.",
            "usage": {"input_tokens": 7, "output_tokens": 3},
        }));
        worker
            .complete_external_task(&task.task_id, reply)
            .await
            .unwrap();
        task
    });

    let (response, events) = ask(&session, "hello", true).await;
    let response = response.unwrap();
    let task = model.await.unwrap();

    assert_eq!(task.lane, SessionLane::Generate);
    assert_eq!(task.command_type, "generate");
    assert_eq!(task.payload["model"], "custom/llm");
    assert_eq!(
        task.payload["messages"],
        json!([{"role": "user", "content": "hello"}])
    );
    let tools: Vec<&str> = task.payload["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["read", "write", "edit", "grep", "glob", "ls", "bash"]
    );
    assert!(
        task.payload["system"]
            .as_str()
            .unwrap()
            .contains("workspace")
    );
    assert_eq!(response.text, "Answered by my own GPU.");
    assert_eq!(response.usage.total_tokens(), 10);
    // A worker that does not stream still gives the text as a delta.
    assert!(events.contains(&AgentEvent::TextDelta {
        text: "Answered by my own GPU.".into()
    }));
}

#[tokio::test]
async fn requests_carry_model_key_tools_system_prompt_and_history() {
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let server =
            ModelServer::start([Reply::text("first answer"), Reply::text("second answer")]).await;
        let agent = agent_for(&server, wire, "test-key", "");
        let (session, _dir) = open_session(&agent, &[]);

        session.send("hello").await.unwrap();
        session.send("again").await.unwrap();

        let requests = server.requests();
        let r = &requests[1];
        assert_eq!(r.body["model"], "test-model");
        assert_eq!(
            r.tool_names(),
            ["read", "write", "edit", "grep", "glob", "ls", "bash"]
        );
        let messages = r.body["messages"].as_array().unwrap();
        match wire {
            Wire::OpenAi => {
                assert_eq!(r.path, "/v1/chat/completions");
                assert_eq!(r.header("authorization"), Some("Bearer test-key"));
                assert_eq!(messages[0]["role"], "system");
                let turns: Vec<(&str, &str)> = messages[1..]
                    .iter()
                    .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                    .collect();
                assert_eq!(
                    turns,
                    [
                        ("user", "hello"),
                        ("assistant", "first answer"),
                        ("user", "again")
                    ]
                );
            }
            Wire::Anthropic => {
                assert_eq!(r.path, "/v1/messages");
                assert_eq!(r.header("x-api-key"), Some("test-key"));
                assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
                assert!(r.body["system"].as_str().unwrap().contains("workspace"));
                assert_eq!(r.body["max_tokens"], 4096);
                let turns: Vec<(&str, &str)> = messages
                    .iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap(),
                            m["content"][0]["text"].as_str().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(
                    turns,
                    [
                        ("user", "hello"),
                        ("assistant", "first answer"),
                        ("user", "again")
                    ]
                );
            }
        }
        assert_eq!(session.history().len(), 4);
    }
}

#[tokio::test]
async fn a_missing_key_names_its_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.hcl");
    std::fs::write(
        &path,
        "default_model = \"openai/gpt-4o\"\nproviders {\n  name    = \"openai\"\n  api_key = env(\"A3S_AGENT_SEND_TEST_UNSET_KEY\")\n}\n",
    )
    .unwrap();
    let session = Agent::new(&path)
        .await
        .unwrap()
        .session(dir.path(), None)
        .unwrap();
    let err = session.send("hi").await.unwrap_err();
    assert_eq!(err.code(), "InvalidConfig");
    assert!(
        err.to_string().contains("A3S_AGENT_SEND_TEST_UNSET_KEY"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_ignores_stream_still_works() {
    let server = ModelServer::start([Reply::json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Plain JSON."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }))])
    .await;
    let agent = agent_for(&server, Wire::OpenAi, "k", "");
    let (session, _dir) = open_session(&agent, &[]);
    let (response, events) = ask(&session, "hi", true).await;
    assert!(server.requests()[0].is_stream());
    assert_eq!(response.unwrap().text, "Plain JSON.");
    assert!(events.contains(&AgentEvent::TextDelta {
        text: "Plain JSON.".into()
    }));
}
