//! `agent.hcl` parsing through the public API: the documented example, repetition, `env()`,
//! forward compatibility (`extra`), every error case, and secret redaction in `Debug`.

use std::path::Path;

use a3s_code_core::Error;
use a3s_code_core::SessionQueueConfig;
use a3s_code_core::agent::{AgentConfig, DistributionConfig, ModelConfig, ProviderConfig};
use a3s_code_core::queue::{
    LaneHandlerConfig, RetryPolicy, RetryStrategy, SessionLane, TaskHandlerMode,
};
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Line and reason of a `ConfigFile` error, after checking the code and the path.
#[track_caller]
fn config_error(src: &str) -> (Option<usize>, String, String) {
    let err = AgentConfig::parse(src, "agent.hcl").expect_err("the file should be rejected");
    assert_eq!(err.code(), "ConfigFile");
    let display = err.to_string();
    match err {
        Error::ConfigFile { path, line, reason } => {
            assert_eq!(path, Path::new("agent.hcl"));
            (line, reason, display)
        }
        other => panic!("expected ConfigFile, got {other:?}"),
    }
}

#[test]
fn urls_are_checked_when_the_file_loads() {
    for (src, line, needle) in [
        (
            "distribution {\n  nats_url = \"not a url\"\n}\n",
            2,
            "distribution.nats_url: \"not a url\" is not a NATS server address",
        ),
        (
            "\ndistribution {\n  nats_url = \"nats://a:4222, http://b:4222\"\n}\n",
            3,
            "unknown scheme \"http\"",
        ),
        (
            "distribution {\n  nats_url = \" , \"\n}\n",
            2,
            "no server address given",
        ),
        (
            "providers {\n  name = \"p\"\n  base_url = \"localhost:8080/v1\"\n}\n",
            3,
            "providers.base_url:",
        ),
    ] {
        let (got_line, reason, display) = config_error(src);
        assert_eq!(got_line, Some(line), "{src:?}: {display}");
        assert!(reason.contains(needle), "{src:?}: {reason}");
        assert!(display.contains(&format!("agent.hcl:{line}")), "{display}");
    }
    for urls in [
        "nats://a:4222",
        "nats://u:p@a:4222,tls://b:4443",
        "a:4222, b:4222",
        "ws://a:8080,wss://b/nats",
        "[::1]:4222",
    ] {
        let src = format!("distribution {{\n  nats_url = \"{urls}\"\n}}\n");
        let cfg = AgentConfig::parse(&src, "agent.hcl").unwrap_or_else(|e| panic!("{urls}: {e}"));
        assert_eq!(cfg.distribution.nats_url.as_deref(), Some(urls));
    }
}

#[test]
fn the_documented_example_parses_to_the_expected_values() {
    let path = fixture("agent.hcl");
    let cfg = AgentConfig::from_file(&path).unwrap();

    assert_eq!(cfg.source.as_deref(), Some(path.as_path()));
    assert_eq!(cfg.default_model.as_deref(), Some("openai/gpt-4o"));
    assert_eq!(cfg.max_tool_rounds, Some(20));
    assert!(cfg.extra.is_empty(), "{:?}", cfg.extra);

    assert_eq!(cfg.providers.len(), 1);
    let openai = cfg.provider("openai").unwrap();
    assert_eq!(openai.name, "openai");
    assert_eq!(openai.api_key, std::env::var("OPENAI_API_KEY").ok());
    assert_eq!(openai.base_url.as_deref(), Some("http://127.0.0.1:8080/v1"));
    assert_eq!(
        openai.models,
        [ModelConfig {
            id: "gpt-4o".into(),
            name: Some("GPT-4o".into()),
            extra: Default::default()
        }]
    );
    assert!(openai.extra.is_empty());

    assert_eq!(
        cfg.queue,
        SessionQueueConfig {
            query_max_concurrency: 20,
            enable_metrics: true,
            enable_dlq: true,
            retry_policy: RetryPolicy {
                strategy: RetryStrategy::Exponential,
                max_retries: 2,
                initial_delay_ms: 100,
                ..RetryPolicy::default()
            },
            lane_handlers: [(
                SessionLane::Query,
                LaneHandlerConfig {
                    mode: TaskHandlerMode::External,
                    timeout_ms: 30_000
                }
            )]
            .into(),
            ..Default::default()
        }
    );
    cfg.queue.validate().unwrap();

    assert_eq!(
        cfg.distribution,
        DistributionConfig {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..Default::default()
        }
    );

    // parse() gives the same configuration, without a source.
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = AgentConfig::parse(&text, &path).unwrap();
    assert_eq!(parsed.source, None);
    assert_eq!(parsed.queue, cfg.queue);
}

#[test]
fn providers_and_models_repeat() {
    let cfg = AgentConfig::parse(
        r#"
providers {
  name = "openai"
  models {
    id = "gpt-4o"
  }
  models {
    id   = "gpt-4o-mini"
    name = "GPT-4o mini"
    context_window = 128000
  }
}

providers {
  name    = "anthropic"
  api_key = "sk-ant-test"
  models { id = "claude-sonnet-4" }
}

providers {
  name = "local"
}
"#,
        "agent.hcl",
    )
    .unwrap();

    let names: Vec<&str> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["openai", "anthropic", "local"]);
    let ids: Vec<&str> = cfg.providers[0]
        .models
        .iter()
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(ids, ["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(
        cfg.providers[0].models[1].name.as_deref(),
        Some("GPT-4o mini")
    );
    assert_eq!(cfg.providers[0].models[1].extra["context_window"], 128000);
    assert_eq!(
        cfg.provider("anthropic").unwrap().api_key.as_deref(),
        Some("sk-ant-test")
    );
    assert_eq!(
        cfg.provider("anthropic").unwrap().models[0].id,
        "claude-sonnet-4"
    );
    assert!(cfg.provider("local").unwrap().models.is_empty());
    assert!(cfg.provider("mistral").is_none());
}

#[test]
fn env_reads_set_variables_and_gives_none_for_unset_ones() {
    // Cargo sets CARGO_PKG_NAME for the test process; setting variables here would be unsafe.
    let cfg = AgentConfig::parse(
        r#"
default_model = env("A3S_TEST_SURELY_UNSET_VARIABLE_7F3A")
providers {
  name     = env("CARGO_PKG_NAME")
  api_key  = env("A3S_TEST_SURELY_UNSET_VARIABLE_7F3A")
  base_url = "http://localhost"
  region   = env("A3S_TEST_SURELY_UNSET_VARIABLE_7F3A")
}
"#,
        "agent.hcl",
    )
    .unwrap();
    assert_eq!(cfg.default_model, None);
    let provider = cfg.provider("a3s-code-core").expect("env() was evaluated");
    assert_eq!(provider.api_key, None);
    assert_eq!(provider.base_url.as_deref(), Some("http://localhost"));
    assert_eq!(provider.extra["region"], serde_json::Value::Null);
}

#[test]
fn unknown_top_level_items_are_kept_in_extra() {
    let cfg = AgentConfig::parse(
        r#"
default_model = "openai/gpt-4o"
theme         = "dark"
max_cost_usd  = 2.5
allowed_tools = ["read", "grep"]
limits        = { per_day = 100, user = env("A3S_TEST_SURELY_UNSET_VARIABLE_7F3A") }

memory {
  backend = "sqlite"
  path    = "~/.a3s/memory.db"
}

mcp_server "filesystem" {
  command = "mcp-fs"
  args    = ["--root", "."]
}
mcp_server "git" {
  command = "mcp-git"
}

distribution {
  nats_url      = "nats://127.0.0.1:4222"
  stream_replicas = 3
}
"#,
        "agent.hcl",
    )
    .unwrap();
    assert_eq!(
        serde_json::Value::Object(cfg.extra.clone()),
        json!({
            "theme": "dark",
            "max_cost_usd": 2.5,
            "allowed_tools": ["read", "grep"],
            "limits": {"per_day": 100, "user": null},
            "memory": {"backend": "sqlite", "path": "~/.a3s/memory.db"},
            "mcp_server": [
                {"filesystem": {"command": "mcp-fs", "args": ["--root", "."]}},
                {"git": {"command": "mcp-git"}}
            ]
        })
    );
    // Key order follows the file.
    let keys: Vec<&str> = cfg.extra.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "theme",
            "max_cost_usd",
            "allowed_tools",
            "limits",
            "memory",
            "mcp_server"
        ]
    );
    assert_eq!(cfg.default_model.as_deref(), Some("openai/gpt-4o"));
    assert_eq!(cfg.distribution.extra["stream_replicas"], 3);
}

#[test]
fn distribution_reads_the_cluster_settings() {
    let cfg = AgentConfig::parse(
        "distribution {\n  nats_url = \"nats://a:4222,nats://b:4222,nats://c:4222\"\n  \
         subject_prefix = \"build\"\n  replicas = 3\n}\n",
        "agent.hcl",
    )
    .unwrap();
    assert_eq!(
        cfg.distribution,
        DistributionConfig {
            nats_url: Some("nats://a:4222,nats://b:4222,nats://c:4222".into()),
            subject_prefix: Some("build".into()),
            replicas: Some(3),
            ..Default::default()
        }
    );
}

#[test]
fn a_missing_file_is_a_config_file_error_without_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.hcl");
    let err = AgentConfig::from_file(&path).unwrap_err();
    assert_eq!(err.code(), "ConfigFile");
    let Error::ConfigFile {
        path: p,
        line,
        reason,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(p, &path);
    assert_eq!(*line, None);
    assert!(
        reason.starts_with(&format!("cannot read {}: ", path.display())),
        "{reason}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", path.display())),
        "{err}"
    );
}

#[test]
fn a_syntax_error_reports_the_parser_line() {
    let (line, reason, display) =
        config_error("default_model = \"a/b\"\n\nqueue {\n  enable_dlq = = true\n}\n");
    assert_eq!(line, Some(4));
    assert!(reason.starts_with("syntax error at column "), "{reason}");
    assert!(
        display.starts_with("agent.hcl:4: syntax error"),
        "{display}"
    );
}

#[test]
fn an_unknown_lane_is_named_with_its_line() {
    let src = "queue {\n  lane_handlers {\n    query {\n      mode = \"external\"\n    }\n    fast {\n      mode = \"external\"\n    }\n  }\n}\n";
    let (line, _, display) = config_error(src);
    assert_eq!(line, Some(6));
    assert_eq!(
        display,
        "agent.hcl:6: unknown lane \"fast\" in queue.lane_handlers (expected control, query, execute or generate)"
    );
}

#[test]
fn an_unknown_mode_is_named_with_its_line() {
    let (line, _, display) = config_error(
        "queue {\n  lane_handlers {\n    execute {\n      mode = \"remote\"\n    }\n  }\n}\n",
    );
    assert_eq!(line, Some(4));
    assert_eq!(
        display,
        "agent.hcl:4: unknown handler mode \"remote\" in queue.lane_handlers.execute.mode \
         (expected internal, external or hybrid)"
    );
}

#[test]
fn an_unknown_strategy_is_named_with_its_line() {
    let (line, _, display) = config_error(
        "queue {\n  retry_policy {\n    max_retries = 2\n    strategy = \"linear\"\n  }\n}\n",
    );
    assert_eq!(line, Some(4));
    assert_eq!(
        display,
        "agent.hcl:4: unknown retry strategy \"linear\" in queue.retry_policy.strategy \
         (expected none, fixed or exponential)"
    );
}

#[test]
fn an_unknown_queue_key_is_named_with_its_line() {
    let (line, reason, _) = config_error("queue {\n  enable_dlq = true\n  enable_dql = true\n}\n");
    assert_eq!(line, Some(3));
    assert_eq!(
        reason,
        "unknown key \"enable_dql\" in queue (did you mean \"enable_dlq\"?)"
    );
}

#[test]
fn wrong_value_types_are_named_with_their_line() {
    let cases = [
        (
            "queue {\n  query_max_concurrency = \"20\"\n}\n",
            2,
            "queue.query_max_concurrency must be a non-negative integer, found a string",
        ),
        (
            "queue {\n  enable_metrics = true\n  max_pending = -5\n}\n",
            3,
            "queue.max_pending must not be negative, found -5",
        ),
        (
            "queue {\n\n  default_timeout_ms = 2.5\n}\n",
            3,
            "queue.default_timeout_ms must be an integer, found 2.5",
        ),
        (
            "queue {\n  enable_alerts = 1\n}\n",
            2,
            "queue.enable_alerts must be true or false, found 1",
        ),
        (
            "queue {\n  lane_handlers {\n    query {\n      timeout_ms = \"30s\"\n    }\n  }\n}\n",
            4,
            "queue.lane_handlers.query.timeout_ms must be a non-negative integer, found a string",
        ),
        (
            "max_tool_rounds = \"20\"\n",
            1,
            "max_tool_rounds must be a non-negative integer, found a string",
        ),
        (
            "\ndefault_model = 4\n",
            2,
            "default_model must be a string, found 4",
        ),
        (
            "distribution {\n  nats_url = [\"nats://a\"]\n}\n",
            2,
            "distribution.nats_url must be a string, found a list",
        ),
        (
            "distribution {\n  nats_url = \"nats://a\"\n\n  replicas = 7\n}\n",
            4,
            "distribution.replicas must be 1 to 5, found 7",
        ),
    ];
    for (src, want_line, want_reason) in cases {
        let (line, reason, _) = config_error(src);
        assert_eq!(
            (line, reason.as_str()),
            (Some(want_line), want_reason),
            "for {src:?}"
        );
    }
}

#[test]
fn zero_concurrency_fails_validation_at_its_line() {
    let (line, reason, display) = config_error(
        "default_model = \"a/b\"\n\nqueue {\n  enable_dlq = true\n  execute_max_concurrency = 0\n}\n",
    );
    assert_eq!(line, Some(5));
    assert_eq!(
        reason,
        "queue.execute_max_concurrency must be greater than 0"
    );
    assert_eq!(
        display,
        "agent.hcl:5: queue.execute_max_concurrency must be greater than 0"
    );
}

#[test]
fn an_unknown_function_is_an_error_with_line() {
    let (line, reason, _) =
        config_error("providers {\n  name = \"openai\"\n  api_key = file(\"~/.key\")\n}\n");
    assert_eq!(line, Some(3));
    assert_eq!(
        reason,
        "unknown function file() (the only function is env(\"NAME\"))"
    );
}

#[test]
fn debug_output_redacts_the_api_key() {
    let cfg = AgentConfig::parse(
        "providers {\n  name = \"openai\"\n  api_key = \"sk-live-0123456789abcdef\"\n}\n",
        "agent.hcl",
    )
    .unwrap();
    for debug in [
        format!("{cfg:?}"),
        format!("{cfg:#?}"),
        format!("{:?}", cfg.providers[0]),
    ] {
        assert!(!debug.contains("sk-live-0123456789abcdef"), "{debug}");
        assert!(debug.contains("openai"), "{debug}");
    }
    // The value is still there for the code that needs it.
    assert_eq!(
        cfg.providers[0].api_key.as_deref(),
        Some("sk-live-0123456789abcdef")
    );
}

#[test]
fn config_types_are_send_sync_clone_default() {
    fn check<T: Send + Sync + Clone + Default + std::fmt::Debug + 'static>() {}
    check::<AgentConfig>();
    check::<ProviderConfig>();
    check::<ModelConfig>();
    check::<DistributionConfig>();
}
