//! The spec's Rust samples (multi-machine-distribution), as written. Only the imports they leave
//! out were added (`std::sync::Arc`, `anyhow::Result`, `serde_json::json`), plus `main`, which
//! drives them: it routes tool calls through `session.tool(...)` and checks that the spec's
//! worker loop completed them.
//!
//! Run from `examples/spec` (the samples load `agent.hcl` and read paths relative to `.`):
//! `cargo run -p spec-example`.
#![allow(unused_must_use)] // the spec discards set_lane_handler's Result

use std::sync::Arc;

use anyhow::Result;

// ----- Step 1: Configure Session (inside `configure`, as it awaits) -----------------------------
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, SessionOptions, SessionQueueConfig};

async fn configure() -> Result<a3s_code_core::AgentSession> {
    let agent = Agent::new("agent.hcl").await?;
    // Configure queue with high concurrency
    let queue_config = SessionQueueConfig {
        query_max_concurrency: 20,
        execute_max_concurrency: 5,
        enable_metrics: true,
        enable_dlq: true,
        ..Default::default()
    };
    let session = agent.session(
        ".",
        Some(SessionOptions::new().with_queue_config(queue_config)),
    )?;
    // Configure Query lane for external processing
    session
        .set_lane_handler(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 120_000, // 2 minutes
            },
        )
        .await;
    Ok(session)
}

// ----- Step 2: Implement Worker ------------------------------------------------------------------
use a3s_code_core::{AgentSession, ExternalTask, ExternalTaskResult};
use tokio::time::{Duration, sleep};
async fn worker_loop(session: Arc<AgentSession>) -> Result<()> {
    loop {
        // Poll for pending tasks
        let tasks = session.pending_external_tasks().await;
        if tasks.is_empty() {
            sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Process tasks in parallel
        let handles: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                let session = session.clone();
                tokio::spawn(async move {
                    let result = execute_task(&task).await;
                    session.complete_external_task(&task.task_id, result).await
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}
async fn execute_task(task: &ExternalTask) -> ExternalTaskResult {
    match task.command_type.as_str() {
        "read" => {
            let path = task.payload["path"].as_str().unwrap();
            match tokio::fs::read_to_string(path).await {
                Ok(content) => ExternalTaskResult {
                    success: true,
                    result: serde_json::json!({ "content": content }),
                    error: None,
                },
                Err(e) => ExternalTaskResult {
                    success: false,
                    result: serde_json::json!({}),
                    error: Some(e.to_string()),
                },
            }
        }
        "bash" => {
            let command = task.payload["command"].as_str().unwrap();
            match tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .output()
                .await
            {
                Ok(output) => ExternalTaskResult {
                    success: output.status.success(),
                    result: serde_json::json!({
                    "stdout": String::from_utf8_lossy(&output.stdout),
                    "stderr": String::from_utf8_lossy(&output.stderr),
                    "exit_code": output.status.code()
                    }),
                    error: None,
                },
                Err(e) => ExternalTaskResult {
                    success: false,
                    result: serde_json::json!({}),
                    error: Some(e.to_string()),
                },
            }
        }
        _ => ExternalTaskResult {
            success: false,
            result: serde_json::json!({}),
            error: Some(format!("Unknown command type: {}", task.command_type)),
        },
    }
}

// ----- Best Practices: Implement Retry Logic ------------------------------------------------------
async fn execute_task_with_retry(task: &ExternalTask, max_retries: u32) -> ExternalTaskResult {
    for attempt in 0..max_retries {
        let result = execute_task(task).await;
        if result.success {
            return result;
        }
        if attempt < max_retries - 1 {
            tokio::time::sleep(Duration::from_secs(2_u64.pow(attempt))).await;
        }
    }
    ExternalTaskResult {
        success: false,
        result: serde_json::json!({}),
        error: Some(format!("Failed after {} retries", max_retries)),
    }
}

// ----- The driver -------------------------------------------------------------------------------
#[tokio::main]
async fn main() -> Result<()> {
    let session = Arc::new(configure().await?);
    let worker = tokio::spawn(worker_loop(session.clone()));

    // Tool calls routed to the Query lane are completed by the spec's worker loop.
    let read = session
        .tool("read", serde_json::json!({ "path": "data/hello.txt" }))
        .await?;
    anyhow::ensure!(read.success, "read failed: {:?}", read.error);
    anyhow::ensure!(
        read.result["content"] == "hello from the spec example\nsecond line\n",
        "unexpected {read:?}"
    );
    println!("read via the spec worker: {:?}", read.result["content"]);

    let missing = session
        .tool("read", serde_json::json!({ "path": "data/missing.txt" }))
        .await?;
    anyhow::ensure!(
        !missing.success && missing.error.is_some(),
        "a failed read is reported, not an Err"
    );
    println!(
        "missing file reported by the worker: {}",
        missing.error.unwrap()
    );

    // Several at once: the worker claims them in one poll and runs them in parallel.
    let mut many = Vec::new();
    for _ in 0..10 {
        let s = session.clone();
        many.push(tokio::spawn(async move {
            s.tool("read", serde_json::json!({ "path": "data/hello.txt" }))
                .await
        }));
    }
    for h in many {
        anyhow::ensure!(h.await??.success);
    }

    // The spec's retry helper, used directly by a worker on a task of its own.
    let task = ExternalTask::new(
        "local-1",
        session.id(),
        SessionLane::Execute,
        "bash",
        serde_json::json!({ "command": "echo retried" }),
        10_000,
    );
    let out = execute_task_with_retry(&task, 3).await;
    anyhow::ensure!(
        out.success && out.result["stdout"] == "retried\n",
        "unexpected {out:?}"
    );

    // ----- Monitor Queue Metrics / Check Queue Stats / Monitor Task Latency (as written) ----------
    // Get queue statistics
    let stats = session.queue_stats().await;
    println!(
        "Pending: {}, Active: {}, External: {}",
        stats.pending_count, stats.active_count, stats.external_count
    );
    // Get detailed metrics
    if let Some(metrics) = session.queue_metrics().await {
        println!("Total processed: {}", metrics.total_processed);
        println!("Success rate: {:.2}%", metrics.success_rate * 100.0);
    }
    println!("Queue Stats:");
    println!(" Pending: {}", stats.pending_count);
    println!(" Active: {}", stats.active_count);
    println!(" External: {}", stats.external_count);
    println!(" Per lane: {:?}", stats.per_lane);
    if let Some(metrics) = session.queue_metrics().await {
        println!("Average latency: {:?}", metrics.avg_latency);
        println!("P95 latency: {:?}", metrics.p95_latency);
        println!("P99 latency: {:?}", metrics.p99_latency);
    }

    let metrics = session.queue_metrics().await.expect("metrics are enabled");
    anyhow::ensure!(
        metrics.total_processed == 12,
        "12 tasks went through the queue, got {}",
        metrics.total_processed
    );
    worker.abort();
    println!("spec sample OK");
    Ok(())
}
