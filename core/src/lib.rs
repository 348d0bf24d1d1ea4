//! # a3s-code core
//!
//! The part of an AI coding agent that runs its tool calls (read, grep, glob, ls, bash, write,
//! edit, model calls) through a per-session priority lane queue, and hands them to workers: in
//! this process, or on other machines.
//!
//! - Four lanes, highest priority first: Control (P0), Query (P1), Execute (P2), Generate (P3),
//!   each with its own concurrency limit.
//! - Per lane, a handler mode: Internal (run here), External (hand to workers), Hybrid (run here
//!   and publish lifecycle events).
//! - Timeouts, retries of lost attempts, a dead-letter queue, metrics, alerts and events.
//! - External workers poll [`AgentSession::pending_external_tasks`] (or the long-polling
//!   [`AgentSession::claim_external_tasks`]) and report with
//!   [`AgentSession::complete_external_task`]: each task goes to exactly one worker and completes
//!   exactly once.
//!
//! ## Quick start (in process, no broker)
//!
//! ```
//! use std::time::Duration;
//! use a3s_code_core::{Agent, AgentConfig, SessionOptions, SessionQueueConfig, ExternalTaskResult};
//! use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
//!
//! # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
//! let agent = Agent::from_config(AgentConfig::default());
//! let session = agent.session(".", Some(SessionOptions::new().with_queue_config(SessionQueueConfig {
//!     query_max_concurrency: 20,
//!     enable_metrics: true,
//!     ..Default::default()
//! })))?;
//! session.set_lane_handler(SessionLane::Query, LaneHandlerConfig {
//!     mode: TaskHandlerMode::External,
//!     timeout_ms: 120_000,
//! }).await?;
//!
//! // A worker: claim, run, complete.
//! let worker = session.clone();
//! tokio::spawn(async move {
//!     while let Ok(tasks) = worker.claim_external_tasks(32, Duration::from_secs(1)).await {
//!         for task in tasks {
//!             let result = ExternalTaskResult::ok(serde_json::json!({ "content": "..." }));
//!             let _ = worker.complete_external_task(&task.task_id, result).await;
//!         }
//!     }
//! });
//!
//! // Tool calls on the Query lane now go to the worker.
//! let result = session.tool("read", serde_json::json!({ "path": "Cargo.toml" })).await?;
//! assert!(result.success);
//! assert_eq!(session.queue_metrics().await.unwrap().total_processed, 1);
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod admin;
pub mod agent;
pub mod broker;
pub mod error;
pub mod lane;
pub mod observe;
pub mod queue;
pub mod task;
pub mod tools;
pub mod trace;
pub mod worker;

pub use agent::{Agent, AgentConfig};
pub use agent::{AgentSession, SessionOptions};
pub use error::{Error, Result};
pub use queue::SessionQueueConfig;
pub use queue::scheduler::{TaskHandle, TaskHandler};
pub use task::{ExternalTask, ExternalTaskResult};
