//! Brokers: how External tasks reach workers on other machines.
//!
//! In process (the default) a session keeps its claimable tasks itself: workers call
//! `pending_external_tasks()` / `claim_external_tasks()` on the session. With
//! [`SessionOptions::with_nats`](crate::SessionOptions::with_nats) an External lane instead
//! publishes each task to NATS JetStream once it holds a lane slot, and remote workers
//! ([`WorkerClient`](crate::worker::WorkerClient), `a3s-code worker`, or any client following
//! `docs/protocol.md`) pull it from there. Scheduling stays in the session either way.

pub mod wire;

#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "nats")]
mod nats_config;
#[cfg(feature = "nats")]
pub(crate) mod objects;

#[cfg(feature = "nats")]
pub use nats_config::{NatsAuth, NatsConfig, NatsOptions, NatsTls};

use std::collections::BTreeMap;

use crate::queue::{DeadLetter, QueueEvent, SessionLane};
use crate::task::ExternalTask;

/// How a published task ended, as the session tells its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A result was applied: the worker already removed the task.
    Completed,
    /// Cancelled, timed out, failed or closed: remove it and stop running copies.
    Withdrawn(&'static str),
}

/// The session's side of a broker. Called under the scheduler's lock: never blocks.
pub(crate) trait Dispatcher: Send + Sync {
    /// Publishes a task that holds a lane slot, for workers with `labels` (none: any worker).
    fn publish(&self, task: ExternalTask, labels: Option<&BTreeMap<String, String>>);
    /// A published task ended.
    fn task_ended(&self, task_id: &str, lane: SessionLane, how: Ended);
    /// The largest payload (as JSON) a task of an External lane may have, if limited.
    fn max_payload_bytes(&self) -> Option<usize>;
    /// A task was dead-lettered.
    fn dead_letter(&self, letter: &DeadLetter);
    /// A lifecycle event of a Hybrid lane, for external monitoring.
    fn hybrid_event(&self, lane: SessionLane, event: &QueueEvent);
    /// The session closed: withdraw its tasks, delete its consumers, stop. The future resolves
    /// when that is done; dropping it does not stop the work.
    fn close(&self) -> futures_util::future::BoxFuture<'static, ()>;
}
