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
    session(external_config(config, lanes, timeout_ms))
}

/// `config` with the given lanes External with `timeout_ms`.
pub fn external_config(
    config: SessionQueueConfig,
    lanes: &[SessionLane],
    timeout_ms: u64,
) -> SessionQueueConfig {
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
    SessionQueueConfig {
        lane_handlers: handlers,
        ..config
    }
}

/// A session on a fresh temporary workspace publishing its External lanes to NATS under
/// `prefix`, once its streams and consumers exist. `options` carries anything else (metrics
/// address, ...); the queue config and the broker are set here.
#[cfg(feature = "nats")]
pub async fn nats_session(
    url: &str,
    prefix: &str,
    config: SessionQueueConfig,
    options: SessionOptions,
) -> (AgentSession, tempfile::TempDir) {
    use a3s_code_core::broker::NatsConfig;
    let dir = tempfile::tempdir().expect("temp dir");
    let session = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(
                options
                    .with_queue_config(config)
                    .with_nats(NatsConfig::new(url).with_prefix(prefix)),
            ),
        )
        .expect("session");
    session
        .broker_ready(std::time::Duration::from_secs(10))
        .await
        .expect("broker ready");
    (session, dir)
}

/// The hub (session process) id of the only session process on `prefix`: the token in its
/// results subjects (`<prefix>.result.<tenant>.<hub>.<session>`), read from its results
/// consumer (`hub_<id>`).
#[cfg(feature = "nats")]
#[allow(dead_code)]
pub async fn hub_id(js: &async_nats::jetstream::Context, prefix: &str) -> String {
    use futures_util::StreamExt;
    let names = a3s_code_core::broker::wire::Names::new(prefix).unwrap();
    let results = js.get_stream(names.results_stream()).await.unwrap();
    let mut consumers = results.consumer_names();
    while let Some(Ok(name)) = consumers.next().await {
        if let Some(id) = name.strip_prefix("hub_") {
            return id.to_owned();
        }
    }
    panic!("no hub consumer on {}", names.results_stream())
}
