//! Compile-time checks that the public handles can be shared across tasks and threads, and that
//! the futures of their main async methods can be spawned on a multi-threaded runtime (after
//! tokio's `tests/async_send_sync.rs`). A regression fails the build, not a test run.

use a3s_code_core::worker::Worker;
use a3s_code_core::{Agent, AgentSession, TaskHandle};

const fn require_send_sync<T: Send + Sync>() {}

/// Holds only while `_value` (a future, never polled) is `Send`.
fn require_send<T: Send>(_value: &T) {}

const _: () = {
    require_send_sync::<Agent>();
    require_send_sync::<AgentSession>();
    require_send_sync::<TaskHandle>();
    require_send_sync::<Worker>();
    #[cfg(feature = "nats")]
    require_send_sync::<a3s_code_core::worker::WorkerClient>();
};

/// Never called: building these futures is enough to type-check them.
#[allow(dead_code)]
fn futures_are_send(session: &AgentSession, worker: Worker) {
    require_send(&Agent::new("agent.hcl"));
    require_send(&session.send("hello"));
    require_send(&session.pending_external_tasks());
    require_send(&session.queue_stats());
    require_send(&session.close());
    require_send(&worker.shutdown());
}

#[cfg(feature = "nats")]
#[allow(dead_code)]
fn worker_client_futures_are_send(client: &a3s_code_core::worker::WorkerClient) {
    require_send(&a3s_code_core::worker::WorkerClient::connect(
        "nats://127.0.0.1:4222",
        "session",
    ));
    require_send(&client.complete_external_task(
        "task",
        a3s_code_core::ExternalTaskResult::ok(serde_json::json!({})),
    ));
}

/// So the runner reports this file: the checks above already passed when it compiled.
#[test]
fn handles_are_send_and_sync() {
    require_send_sync::<AgentSession>();
}
