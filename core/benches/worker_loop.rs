//! The Rust worker loop the bindings' loops are compared with: 100k no-op tasks submitted at once
//! on an External Query lane, one worker claiming batches (`claim_external_tasks(256, ..)`) and
//! completing them in one call (`complete_external_tasks`).
//!
//! `cargo bench -p a3s-code-core --bench worker_loop -- [TASKS]` (default 100 000). Prints one
//! line: `rust worker loop: <tasks> tasks in <secs> s = <rate> tasks/s`.

use std::time::{Duration, Instant};

use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, ExternalTaskResult, SessionOptions, SessionQueueConfig};
use serde_json::json;

fn main() {
    let tasks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = SessionQueueConfig {
            query_max_concurrency: 1024,
            max_pending: tasks + 1,
            lane_handlers: [(
                SessionLane::Query,
                LaneHandlerConfig {
                    mode: TaskHandlerMode::External,
                    timeout_ms: 600_000,
                },
            )]
            .into(),
            ..Default::default()
        };
        let session = Agent::from_config(AgentConfig::default())
            .session(".", Some(SessionOptions::new().with_queue_config(config)))
            .unwrap();
        let w = session.clone();
        let worker = tokio::spawn(async move {
            while let Ok(batch) = w
                .claim_external_tasks(256, Duration::from_millis(100))
                .await
            {
                let results: Vec<_> = batch
                    .into_iter()
                    .map(|t| (t.task_id, ExternalTaskResult::ok(json!({}))))
                    .collect();
                for r in w.complete_external_tasks(results).await {
                    r.unwrap();
                }
            }
        });
        let start = Instant::now();
        let mut handles = Vec::with_capacity(tasks);
        for i in 0..tasks {
            handles.push(
                session
                    .submit(SessionLane::Query, "noop", json!({ "i": i }))
                    .await
                    .unwrap(),
            );
        }
        for h in handles {
            assert!(h.await.unwrap().success);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "rust worker loop: {tasks} tasks in {secs:.3} s = {:.0} tasks/s",
            tasks as f64 / secs
        );
        session.close().await;
        worker.await.unwrap();
    });
}
