//! Memory held by queued tasks: 1M tasks waiting in one lane's backlog.
//!
//! `cargo bench -p a3s-code-core --bench queued_memory -- [TASKS]` (default 1 000 000).

use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, SessionOptions, SessionQueueConfig};
use serde_json::json;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let tasks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = SessionQueueConfig {
            query_max_concurrency: 1,
            max_pending: tasks + 1,
            lane_handlers: [(SessionLane::Query, LaneHandlerConfig { mode: TaskHandlerMode::External, timeout_ms: 600_000 })]
                .into(),
            ..Default::default()
        };
        let session = Agent::from_config(AgentConfig::default())
            .session(".", Some(SessionOptions::new().with_queue_config(config)))
            .unwrap();
        let before = rss_bytes();
        let mut handles = Vec::with_capacity(tasks);
        for i in 0..tasks {
            let payload = json!({"path": format!("src/module_{}.rs", i % 1000)});
            handles.push(session.submit(SessionLane::Query, "read", payload).await.unwrap());
        }
        let after = rss_bytes();
        let stats = session.queue_stats().await;
        assert_eq!(stats.pending_count, tasks - 1);
        let mb = (after - before) as f64 / (1024.0 * 1024.0);
        println!(
            "{tasks} queued tasks (payload {{\"path\": \"src/module_N.rs\"}}, handles kept): RSS +{mb:.0} MiB, {:.0} bytes/task (target < 512 MiB)",
            (after - before) as f64 / tasks as f64
        );
        session.close().await;
        drop(handles);
    });
}
