//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};

/// A session on a fresh temporary workspace (kept alive by the returned guard).
pub fn session(config: SessionQueueConfig) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Agent::from_config(AgentConfig::default());
    let session = agent
        .session(
            dir.path(),
            Some(SessionOptions::new().with_queue_config(config)),
        )
        .expect("session");
    (session, dir)
}

/// A session whose given lanes are External with `timeout_ms`.
pub fn external_session(
    config: SessionQueueConfig,
    lanes: &[SessionLane],
    timeout_ms: u64,
) -> (AgentSession, tempfile::TempDir) {
    let handlers = lanes
        .iter()
        .map(|&lane| {
            (
                lane,
                LaneHandlerConfig {
                    mode: TaskHandlerMode::External,
                    timeout_ms,
                },
            )
        })
        .collect();
    session(SessionQueueConfig {
        lane_handlers: handlers,
        ..config
    })
}
